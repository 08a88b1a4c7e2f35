//! Absolute paths of the programs the lab runs, and checked ways to run them.
//!
//! Nothing here goes through a shell or `PATH`: every program is spawned by its
//! Debian path with an argument vector.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// iproute2's `ip`.
pub const IP: &str = "/usr/sbin/ip";
/// iproute2's `bridge`.
pub const BRIDGE: &str = "/usr/sbin/bridge";
/// iputils' `ping` (handles IPv4 and IPv6).
pub const PING: &str = "/usr/bin/ping";
/// coreutils' `cat`, used to read sysfs inside a namespace.
pub const CAT: &str = "/usr/bin/cat";
/// nftables' `nft`.
pub const NFT: &str = "/usr/sbin/nft";
/// iptables' `iptables`.
pub const IPTABLES: &str = "/usr/sbin/iptables";

/// Programs the lab itself cannot work without.
pub const REQUIRED: [&str; 4] = [IP, BRIDGE, PING, CAT];

/// The programs the lab cannot work without (`ip`, `bridge`, `ping`, `cat`) that are missing.
pub fn missing_tools() -> Vec<&'static str> {
    REQUIRED
        .iter()
        .copied()
        .filter(|p| !std::path::Path::new(p).exists())
        .collect()
}

/// Renders an argument vector for messages.
pub(crate) fn show<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut line = program.to_string();
    for a in args {
        line.push(' ');
        line.push_str(&a.as_ref().to_string_lossy());
    }
    line
}

/// Runs `program args` with stdin from /dev/null and returns its output, whatever its status.
pub(crate) fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Output> {
    log::debug!("run: {}", show(program, args));
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", show(program, args)))
}

/// Runs `program args` and fails, with its stderr, unless it exits 0; returns its stdout.
pub(crate) fn run_ok<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String> {
    let out = run(program, args)?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            show(program, args),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip -n NS args...` and fails unless it exits 0; returns its stdout.
pub(crate) fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run_ok(IP, &full)
}
