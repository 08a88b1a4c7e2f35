//! `bridge-isolation demo`: a disposable netns lab that shows what the hooks do.
//!
//! It builds a host namespace with a bridge, three VMs and a gateway on the uplink, runs
//! the hooks from a VDSM hook tree exactly as VDSM does, and prints the reachability
//! matrix at each step. State goes to a temporary directory; the lab is removed at the end.

use std::path::PathBuf;

use crate::error::Result;

#[cfg(feature = "demo")]
mod show;

/// Options of `bridge-isolation demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// VDSM hook tree to run (default: the installed one if our hook is there, else the
    /// source tree's hooks/ next to target/release).
    #[arg(long, value_name = "DIR")]
    pub hooks_dir: Option<PathBuf>,
}

/// Runs the demo; fails if any step's matrix differs from what isolation promises. A build
/// without the `demo` cargo feature (the RPM's) has no lab in it: it says so.
pub fn run(args: &DemoArgs) -> Result<()> {
    #[cfg(feature = "demo")]
    return show::run(args);
    #[cfg(not(feature = "demo"))]
    {
        let _ = args;
        Err(crate::error::Error::Config(
            "this build has no demo (cargo feature `demo`, left out of the packaged binaries); \
             run it from a source checkout: cargo build --release && sudo ./target/release/bridge-isolation demo"
                .into(),
        ))
    }
}
