//! When the last successful reconcile ended: `reconciled` in the state directory, an empty
//! file whose modification time is that moment. Kept apart from the state file, whose bytes
//! change only when the policy does: a reconcile that changes nothing writes no state, and
//! setting a time stamp is one `utimensat`, never a rewrite. `bridge-isolation metrics`
//! reads it (docs/monitoring.md).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The stamp's file name, in the state directory.
pub const FILE: &str = "reconciled";

/// Sets the stamp to now, creating the file (mode 0644) if need be. Root, after a
/// reconcile of the whole namespace succeeded; a failure is logged, never fatal (the
/// reconcile did its work). A state directory that does not exist is left so (a host
/// that never recorded anything has nothing to note).
pub fn mark(dir: &Path) {
    let path = dir.join(FILE);
    let marked = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
        .and_then(|file| file.set_modified(SystemTime::now()));
    match marked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log::debug!("not noting the reconcile in {}: {e}", path.display());
        }
        Err(e) => log::warn!("noting the reconcile in {}: {e}", path.display()),
    }
}

/// When the last successful reconcile ended, as time since the Unix epoch; `None` when
/// none is noted. Needs no privilege.
pub fn last(dir: &Path) -> Option<Duration> {
    let meta = std::fs::symlink_metadata(dir.join(FILE)).ok()?;
    if !meta.is_file() {
        return None;
    }
    meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_moves_the_stamp_forward_and_a_missing_directory_stays_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(last(dir.path()), None);
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        mark(dir.path());
        let first = last(dir.path()).expect("noted");
        assert!(first + Duration::from_millis(50) >= before, "{first:?} < {before:?}");
        // Back-dated by hand, then marked again: the stamp is now again, the file empty.
        let file = std::fs::File::options()
            .write(true)
            .open(dir.path().join(FILE))
            .unwrap();
        file.set_modified(UNIX_EPOCH + Duration::from_secs(1_000_000)).unwrap();
        assert_eq!(last(dir.path()), Some(Duration::from_secs(1_000_000)));
        mark(dir.path());
        assert!(last(dir.path()).unwrap() >= first);
        assert_eq!(std::fs::metadata(dir.path().join(FILE)).unwrap().len(), 0);

        let gone = dir.path().join("nosuch");
        mark(&gone);
        assert!(!gone.exists());
        assert_eq!(last(&gone), None);
    }
}
