//! The host's recorded policy: a small root-owned JSON file, written atomically under a lock.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::error::{Error, Result};
use crate::mac::Mac;
use crate::policy::NetworkPolicy;

/// Format version written to the file.
pub const VERSION: u32 = 1;
const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "state.lock";

/// What this host has been told and has done.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Format version.
    #[serde(default)]
    pub version: u32,
    /// The backend that enforced the policy last; its work is undone when another takes over.
    #[serde(default)]
    pub backend: Option<BackendKind>,
    /// Isolated networks by oVirt network name.
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkPolicy>,
    /// Bridges whose isolation was lifted and still has to be cleared from the kernel.
    #[serde(default)]
    pub released: BTreeSet<String>,
    /// Trusted vNICs by guest MAC.
    #[serde(default)]
    pub trusted: BTreeMap<Mac, TrustedVnic>,
    /// Policies a `before_network_setup` replaced, restored by `after_network_setup_fail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<BTreeMap<String, Option<NetworkPolicy>>>,
}

/// A vNIC exempt from isolation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedVnic {
    /// The VM that owns it (`vmId`).
    pub vm: String,
}

impl State {
    /// The policy of the network whose bridge is `bridge`.
    pub fn network_of_bridge(&self, bridge: &str) -> Option<(&str, &NetworkPolicy)> {
        self.networks
            .iter()
            .find(|(_, p)| p.bridge == bridge)
            .map(|(n, p)| (n.as_str(), p))
    }

    /// True when `bridge` is isolated.
    pub fn is_isolated(&self, bridge: &str) -> bool {
        self.network_of_bridge(bridge).is_some()
    }

    /// True when the guest MAC belongs to a trusted vNIC.
    pub fn is_trusted(&self, mac: Mac) -> bool {
        self.trusted.contains_key(&mac)
    }
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// The state held under the exclusive lock; [`Locked::commit`] writes it back if it changed.
pub struct Locked {
    store: Store,
    _lock: File,
    original: State,
    /// The state, to read and change.
    pub state: State,
}

impl Store {
    /// The store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Reads the state without the lock (it is replaced atomically, so a read is never torn).
    /// A missing file is an empty state.
    pub fn read(&self) -> Result<State> {
        let path = self.path();
        let err = |reason: String| Error::State {
            path: path.clone(),
            reason,
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(err(e.to_string())),
        };
        check_owner(&file.metadata().map_err(|e| err(e.to_string()))?).map_err(err)?;
        let state: State =
            serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| err(format!("malformed: {e}")))?;
        if state.version > VERSION {
            return Err(err(format!("written by a newer version ({})", state.version)));
        }
        Ok(state)
    }

    /// Takes the exclusive lock (waiting for it) and reads the state.
    pub fn lock(&self) -> Result<Locked> {
        let err = |what: &str, e: std::io::Error| Error::State {
            path: self.dir.clone(),
            reason: format!("{what}: {e}"),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .map_err(|e| err("creating", e))?;
        check_owner(&std::fs::metadata(&self.dir).map_err(|e| err("checking", e))?).map_err(|reason| Error::State {
            path: self.dir.clone(),
            reason,
        })?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.dir.join(LOCK_FILE))
            .map_err(|e| err("opening the lock", e))?;
        // SAFETY: flock on a valid, owned descriptor.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(err("locking", std::io::Error::last_os_error()));
        }
        let state = self.read()?;
        Ok(Locked {
            store: self.clone(),
            _lock: lock,
            original: state.clone(),
            state,
        })
    }
}

impl Locked {
    /// True when the state differs from what was read.
    pub fn changed(&self) -> bool {
        self.state != self.original
    }

    /// Writes the state if it changed (temp file, fsync, rename, fsync of the directory),
    /// then releases the lock.
    pub fn commit(mut self) -> Result<()> {
        if !self.changed() {
            return Ok(());
        }
        self.state.version = VERSION;
        write_atomically(&self.store.dir, STATE_FILE, &self.state)?;
        self.original = self.state.clone();
        Ok(())
    }
}

fn write_atomically(dir: &Path, name: &str, state: &State) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let err = |what: &str, e: std::io::Error| Error::State {
        path: path.clone(),
        reason: format!("{what}: {e}"),
    };
    let mut text = serde_json::to_vec_pretty(state).expect("state serializes");
    text.push(b'\n');
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| err("creating", e))?;
    file.write_all(&text)
        .and_then(|_| file.sync_all())
        .map_err(|e| err("writing", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| err("renaming", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err("syncing the directory", e))?;
    Ok(())
}

/// Refuses files and directories that someone other than root (or us) owns or may write:
/// a planted state file must not steer a root process.
fn check_owner(meta: &std::fs::Metadata) -> std::result::Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!("owned by uid {}, not root", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 && !(meta.is_dir() && meta.mode() & libc::S_ISVTX != 0 && meta.uid() == 0) {
        return Err(format!("writable by group or others (mode {:o})", meta.mode() & 0o7777));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state"));
        assert_eq!(store.read().unwrap(), State::default());
        let mut locked = store.lock().unwrap();
        assert!(!locked.changed());
        locked.state.networks.insert(
            "red".into(),
            NetworkPolicy {
                bridge: "red".into(),
                uplink: Some("eth1".into()),
            },
        );
        locked
            .state
            .trusted
            .insert("56:6f:1a:00:00:02".parse().unwrap(), TrustedVnic { vm: "vm-1".into() });
        locked.commit().unwrap();
        let read = store.read().unwrap();
        assert_eq!(read.version, VERSION);
        assert!(read.is_isolated("red"));
        assert!(read.is_trusted("56:6f:1a:00:00:02".parse().unwrap()));
        let mode = std::fs::metadata(store.path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }

    #[test]
    fn refuses_a_world_writable_or_malformed_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        std::fs::write(store.path(), "{\"networks\": 3}").unwrap();
        assert!(store.read().unwrap_err().to_string().contains("malformed"));
        std::fs::write(store.path(), "{}").unwrap();
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(store
            .read()
            .unwrap_err()
            .to_string()
            .contains("writable by group or others"));
    }
}
