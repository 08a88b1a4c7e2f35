//! The root helper: what an unprivileged VM hook reaches through `sudo -n`.
//!
//! It takes no arguments and honours no environment override: it reads one vNIC [`Report`]
//! on stdin, records it in the installed root-owned state and reconciles from that state
//! and the kernel. The sudoers drop-in lets user vdsm run it and nothing else.

use std::io::{Read, Write};
use std::process::{Command, ExitCode, Stdio};

use crate::error::{Error, Result};
use crate::host::config::{self, Settings};
use crate::host::paths;
use crate::host::state::Store;
use crate::vdsm::logging;
use crate::vdsm::vnic::Report;

/// Largest report accepted on stdin.
pub const MAX_REPORT: u64 = 1 << 20;

/// Asks the root helper, through sudo, to record `report` and reconcile.
pub fn request(report: &Report) -> Result<()> {
    let json = serde_json::to_vec(report).expect("report serializes");
    let mut child = Command::new(paths::SUDO)
        .args(["-n", paths::HELPER])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::helper(format!("running {} -n {}", paths::SUDO, paths::HELPER), e))?;
    let written = child.stdin.take().expect("piped").write_all(&json);
    let status = child
        .wait()
        .map_err(|e| Error::helper(format!("waiting for {}", paths::HELPER), e))?;
    written.map_err(|e| Error::helper(format!("writing to {}", paths::HELPER), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Helper(format!(
            "{} (through sudo) failed: {status}",
            paths::HELPER
        )))
    }
}

/// Entry point of the helper binary.
pub fn main() -> ExitCode {
    crate::enforce::link_daemon_backends();
    logging::init("helper");
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{}", crate::vdsm::protocol::one_line(&e.to_string()));
            ExitCode::from(2)
        }
    }
}

fn serve() -> Result<()> {
    if !config::is_root() {
        return Err(Error::Helper("must run as root (through sudo)".into()));
    }
    if std::env::args_os().len() > 1 {
        return Err(Error::Helper("takes no arguments".into()));
    }
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_REPORT + 1)
        .read_to_end(&mut input)
        .map_err(|e| Error::io("reading stdin", e))?;
    if input.len() as u64 > MAX_REPORT {
        return Err(Error::Payload("report too large".into()));
    }
    let report: Report = serde_json::from_slice(&input).map_err(|e| Error::payload("invalid report", e))?;
    report.validate()?;
    // The installed paths and config only: nothing from the caller's environment.
    let settings = Settings::system(true)?;
    let done = crate::reconcile::record_and_reconcile(Store::new(&settings.state_dir).lock()?, &report, &settings);
    crate::app::metrics::write_textfile(&settings);
    done
}
