//! The watcher's presence in the state directory: `watch.pid`, holding the pid and start
//! time of `bridge-isolation watch`, exclusively locked (`flock`) by it for as long as it
//! runs. The kernel drops the lock when the process ends, however it ends, so a pid file
//! left behind by a killed watcher never reads as running. One watcher per state directory:
//! a second one waits for the lock ([`Claim::take`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

/// The watcher's pid file, in the state directory.
pub const PID_FILE: &str = "watch.pid";

/// A running watcher, as its pid file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presence {
    /// Its process id.
    pub pid: u32,
    /// When it started, in seconds since the Unix epoch.
    pub since: u64,
}

/// The watcher's hold on its pid file: the lock goes with the process.
#[derive(Debug)]
pub struct Claim {
    _file: File,
}

impl Claim {
    /// Opens (creating it, mode 0644, and the state directory `dir` if need be) the pid file,
    /// takes its exclusive lock and writes this process's pid and start time into it. While
    /// another watcher holds the lock, calls `waiting` with what its file says, then waits.
    pub fn take(dir: &Path, waiting: impl FnOnce(Option<Presence>)) -> Result<Claim> {
        let path = dir.join(PID_FILE);
        let err = |what: &str, e: std::io::Error| Error::state(&path, what, e);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| Error::state(dir, "creating", e))?;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| err("opening", e))?;
        if !file.metadata().map_err(|e| err("checking", e))?.is_file() {
            return Err(Error::State {
                path: path.clone(),
                reason: "not a regular file: refused".into(),
            });
        }
        // Readable by `status` as any user, whatever the umask.
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| err("setting the mode of", e))?;
        if !flock(&file, libc::LOCK_EX | libc::LOCK_NB).map_err(|e| err("locking", e))? {
            waiting(read(&mut file));
            flock(&file, libc::LOCK_EX).map_err(|e| err("locking", e))?;
        }
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        file.set_len(0)
            .and_then(|()| file.write_all(format!("{} {since}\n", std::process::id()).as_bytes()))
            .map_err(|e| err("writing", e))?;
        Ok(Claim { _file: file })
    }
}

/// The watcher of state directory `dir`, when one runs (holds the lock of its pid file).
/// Needs no privilege: the file is world-readable and a shared lock is only tried.
pub fn presence(dir: &Path) -> Option<Presence> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(dir.join(PID_FILE))
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    match flock(&file, libc::LOCK_SH | libc::LOCK_NB) {
        // Nobody holds it: a file left by a watcher that ended.
        Ok(true) | Err(_) => None,
        Ok(false) => read(&mut file),
    }
}

/// True when the pid file `path` belongs to no running watcher (nobody holds its lock), so it
/// may be deleted; false when one runs, or the file is not there.
pub fn is_stale(path: &Path) -> bool {
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    else {
        return false;
    };
    matches!(flock(&file, libc::LOCK_SH | libc::LOCK_NB), Ok(true))
}

/// `flock(operation)`: Ok(false) when a non-blocking try finds the lock held.
fn flock(file: &File, operation: libc::c_int) -> std::io::Result<bool> {
    loop {
        // SAFETY: flock on a valid, owned descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// `PID START` from the pid file.
fn read(file: &mut File) -> Option<Presence> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    let mut words = text.split_whitespace();
    Some(Presence {
        pid: words.next()?.parse().ok()?,
        since: words.next()?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_shows_while_held_and_a_second_one_waits() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert_eq!(presence(&state), None);
        let claim = Claim::take(&state, |_| panic!("nobody holds it")).unwrap();
        let seen = presence(&state).expect("held");
        assert_eq!(seen.pid, std::process::id());
        assert!(seen.since > 1_600_000_000, "{seen:?}");
        assert!(!is_stale(&state.join(PID_FILE)));
        // A second claim (another open file description, as another process has) waits
        // until the first goes, and says whose it waits for.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = state.clone();
        let second = std::thread::spawn(move || {
            Claim::take(&path, |other| tx.send(other).unwrap()).unwrap();
        });
        assert_eq!(rx.recv().unwrap(), Some(seen));
        assert!(!second.is_finished());
        drop(claim);
        second.join().unwrap();
        // The second claim ended with its thread: the file stays, stale.
        assert_eq!(presence(&state), None);
        assert!(is_stale(&state.join(PID_FILE)));
        assert!(!is_stale(&state.join("nosuch")));
    }
}
