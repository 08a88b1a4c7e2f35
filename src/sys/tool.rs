//! Running the few programs the backends need (`nft`, `iptables-restore`, ...): by absolute
//! path, with an argument vector and optional stdin, in an empty environment (`LC_ALL=C`),
//! never through a shell or PATH.

use std::io::Write;
use std::process::{Command, ExitStatus, Output, Stdio};

use crate::error::{Error, Result};

/// A program that ran and exited non-zero.
#[derive(Debug)]
pub struct Failure {
    /// The command line, for messages.
    pub shown: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Its stderr, folded onto one line.
    pub stderr: String,
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        Error::Kernel(format!("{} failed ({}): {}", f.shown, f.status, f.stderr))
    }
}

/// Runs `program args` with `input` on stdin; its output when it exits 0, else an error
/// with its one-line stderr.
pub fn run(program: &str, args: &[&str], input: Option<&[u8]>) -> Result<Output> {
    attempt(program, args, input)?.map_err(Error::from)
}

/// Like [`run`], but a non-zero exit is returned as a [`Failure`] for the caller to judge
/// (e.g. to retry on a held lock); the outer error is for a program that could not run.
pub fn attempt(program: &str, args: &[&str], input: Option<&[u8]>) -> Result<std::result::Result<Output, Failure>> {
    let shown = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("LC_ALL", "C")
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::kernel(format!("running {shown}"), e))?;
    let written = match (input, child.stdin.take()) {
        (Some(bytes), Some(mut stdin)) => stdin.write_all(bytes),
        _ => Ok(()),
    };
    let out = child
        .wait_with_output()
        .map_err(|e| Error::kernel(format!("waiting for {shown}"), e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        return Ok(Err(Failure {
            shown,
            status: out.status,
            stderr,
        }));
    }
    written.map_err(|e| Error::kernel(format!("writing to {shown}"), e))?;
    Ok(Ok(out))
}
