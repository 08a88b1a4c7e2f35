//! `bridge-isolation release-all`: lift every isolation this host applied and forget the
//! recorded policy, leaving the host as it was before the package. The RPM runs it when the
//! package is erased (`%preun`, `$1 == 0`); an administrator may run it by hand.
//!
//! Under the state lock: every bridge the state names (isolated networks and bridges whose
//! isolation was lifted but not yet cleared) is handed to the `remove` of the backend
//! recorded as having done the work, and of the backend that would act now if that is
//! another one, and each then applies the empty policy; the kernel is read back, and only
//! when nothing is left enforced are the state file, its lock, the last reconcile's stamp
//! and any leftover temporary file deleted, and the metrics in node_exporter's textfile
//! collector directory. On any failure the state is kept, so a second run (or `reconcile`) still
//! knows what to undo.

use std::path::{Path, PathBuf};

use crate::enforce;
use crate::error::{Error, Result};
use crate::host::config::Settings;
use crate::host::state::Store;
use crate::host::{reconciled, watcher};
use crate::model::backend::{BackendKind, Change};
use crate::model::plan::{BridgePlan, Plan};
use crate::reconcile;

/// The files of the state directory, as [`crate::host::state`] names them: the state, its lock,
/// and the temporary file of an interrupted atomic write (`.state.json.<pid>`).
const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "state.lock";
const TEMP_PREFIX: &str = ".state.json.";

/// What [`release_all`] did.
#[derive(Debug, Default)]
pub struct Released {
    /// The bridges the state named.
    pub bridges: Vec<String>,
    /// The backends asked to remove their enforcement.
    pub backends: Vec<BackendKind>,
    /// Ports whose enforcement was removed.
    pub changes: Vec<Change>,
    /// Files deleted: ours in the state directory, the metrics in the textfile collector
    /// directory.
    pub removed: Vec<PathBuf>,
    /// Files of the state directory that are not ours and were left alone.
    pub foreign: Vec<PathBuf>,
}

/// Lifts all isolation the state records and deletes the state (root only).
pub fn release_all(settings: &Settings) -> Result<Released> {
    if !settings.privileged {
        return Err(Error::Helper("release-all must run as root".into()));
    }
    let mut released = Released::default();
    if !settings.state_dir.exists() {
        return Ok(released);
    }
    let store = Store::new(&settings.state_dir);
    let locked = store.lock()?;
    let state = &locked.state;
    let plan = reconcile::plan(state)?;
    let all: Vec<BridgePlan> = plan.bridges.into_iter().chain(plan.lifted).collect();
    released.bridges = all.iter().map(|b| b.bridge.clone()).collect();
    released.bridges.dedup();

    if let Some(kind) = state.backend {
        released.backends.push(kind);
    }
    if !all.is_empty() {
        // The backend that would act now may differ from the recorded one (config changed
        // since, or the state was written before any reconcile succeeded).
        match reconcile::select_backend(settings) {
            Ok(b) if !released.backends.contains(&b.kind()) => released.backends.push(b.kind()),
            Ok(_) => {}
            Err(e) if released.backends.is_empty() => return Err(e),
            Err(e) => log::debug!("release-all: no current backend besides the recorded one: {e}"),
        }
    }
    let driver = enforce::DriverSettings::of(settings);
    for &kind in &released.backends {
        let mut backend = enforce::open(kind, &driver)?;
        // Remove the enforcement on every bridge we managed, then enforce the empty policy,
        // which drops whatever a backend keeps besides per-bridge state (a table, a chain).
        let mut changes = backend.remove(&all)?;
        changes.extend(backend.apply(&Plan::default())?);
        for c in &changes {
            log::info!("{kind}: bridge {} port {} opened (release-all)", c.bridge, c.port);
        }
        released.changes.extend(changes);
    }

    // Cross-host isolation: its table goes whatever the backends were.
    if state.cross_host && crate::enforce::cross_host::remove_all(&driver)? {
        log::info!(
            "cross-host table {} removed (release-all)",
            crate::enforce::cross_host::TABLE
        );
    }

    // Read the kernel back: nothing may be left enforced on any bridge we managed.
    let after = reconcile::plan(state)?;
    let everything = Plan {
        bridges: after.bridges.into_iter().chain(after.lifted).collect(),
        lifted: Vec::new(),
    };
    let mut left = Vec::new();
    for &kind in &released.backends {
        for o in enforce::open(kind, &driver)?.observe(&everything)? {
            if o.isolated {
                left.push(format!("{kind}: bridge {} port {}", o.bridge, o.port));
            }
        }
    }
    if !left.is_empty() {
        return Err(Error::Kernel(format!(
            "still isolated after release-all (state kept): {}",
            left.join("; ")
        )));
    }

    forget(&settings.state_dir, &mut released)?;
    // node_exporter would go on exporting the last metrics written, for ever.
    released.removed.extend(crate::app::metrics::remove_textfile(settings)?);
    // The lock file is gone; the descriptor is released when `locked` drops here.
    drop(locked);
    Ok(released)
}

/// Deletes our files from the state directory; anything else is reported and kept.
fn forget(dir: &Path, released: &mut Released) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    let mut ours = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name == STATE_FILE || name == LOCK_FILE || name == reconciled::FILE || name.starts_with(TEMP_PREFIX) {
            ours.push(path);
        } else if name == watcher::PID_FILE {
            // The watcher's: deleted once it has ended (the RPM stops it first), kept while
            // it runs (it holds the file locked, and `status` reads it).
            if watcher::is_stale(&path) {
                ours.push(path);
            }
        } else {
            released.foreign.push(path);
        }
    }
    // The state file first, the lock last: a hook waiting on the lock then finds no policy.
    ours.sort_by_key(|p| (p.ends_with(LOCK_FILE), p.clone()));
    for path in ours {
        std::fs::remove_file(&path).map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
        released.removed.push(path);
    }
    released.foreign.sort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::config::BackendChoice;
    use crate::model::policy::NetworkPolicy;

    fn settings(dir: &Path, privileged: bool) -> Settings {
        Settings {
            state_dir: dir.to_path_buf(),
            config_file: dir.join("none.conf"),
            backend: BackendChoice::Fixed(BackendKind::PortIsolation),
            privileged,
            vdsm_netconf: dir.join("no-vdsm"),
            owners_dir: dir.join("owners"),
        }
    }

    #[test]
    fn refuses_without_root_and_accepts_a_missing_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let err = release_all(&settings(dir.path(), false)).unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
        let gone = dir.path().join("never-created");
        let r = release_all(&settings(&gone, true)).unwrap();
        assert!(r.bridges.is_empty() && r.removed.is_empty());
        assert!(!gone.exists(), "release-all must not create the state directory");
    }

    #[test]
    fn forgets_the_state_files_and_keeps_foreign_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut locked = store.lock().unwrap();
        // A bridge that does not exist in this namespace: nothing to clear in the kernel.
        locked.state.networks.insert(
            "absentnet".into(),
            NetworkPolicy {
                bridge: "bi-absent0".into(),
                uplink: None,
                ..NetworkPolicy::default()
            },
        );
        locked.commit().unwrap();
        std::fs::write(dir.path().join(".state.json.999999"), "{}").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "admin's").unwrap();
        // A watcher that ended left its pid file: ours; so is the last reconcile's stamp.
        drop(watcher::Claim::take(dir.path(), |_| {}).unwrap());
        reconciled::mark(dir.path());
        // The metrics in the textfile collector directory go too (the config names one of
        // this test's own; the default is the machine's).
        let conf = tempfile::tempdir().unwrap();
        let prom = conf.path().join("textfile_collector");
        std::fs::create_dir(&prom).unwrap();
        std::fs::write(prom.join(crate::app::metrics::TEXTFILE), "# metrics\n").unwrap();
        let config_file = conf.path().join("c.conf");
        std::fs::write(&config_file, format!("metrics_textfile_dir = {}\n", prom.display())).unwrap();
        let settings = Settings {
            config_file,
            ..settings(dir.path(), true)
        };
        let r = release_all(&settings).unwrap();
        assert_eq!(r.bridges, ["bi-absent0"]);
        assert!(r.changes.is_empty());
        let names: Vec<String> = r
            .removed
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                ".state.json.999999",
                "reconciled",
                "state.json",
                "watch.pid",
                "state.lock",
                "bridge_isolation.prom"
            ]
        );
        assert_eq!(std::fs::read_dir(&prom).unwrap().count(), 0);
        assert_eq!(r.foreign, [dir.path().join("notes.txt")]);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["notes.txt"]);
        // Idempotent: a second run finds nothing to do. A running watcher's pid file is
        // ours, and kept.
        let running = watcher::Claim::take(dir.path(), |_| {}).unwrap();
        let again = release_all(&settings).unwrap();
        assert!(again.bridges.is_empty() && again.changes.is_empty());
        assert_eq!(again.foreign, [dir.path().join("notes.txt")]);
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["notes.txt", "watch.pid"]);
        drop(running);
    }
}
