//! The host's recorded policy: a small root-owned JSON file, written atomically under a lock.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::backend::BackendKind;
use crate::model::mac::Mac;
use crate::model::policy::{NetworkChange, NetworkPolicy};

/// Format version written to the file. Format 1 (release 0.1.0) recorded trusted vNICs by
/// guest MAC (`trusted`) and a `pending` map with nothing naming its request; both are read
/// and migrated (see [`State::legacy_trusted`], [`State::legacy_pending`]).
pub const VERSION: u32 = 2;
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
    /// Trusted vNICs by VM id (`vmId`), each bound to the tap libvirt made for it: only
    /// that tap (name and interface index) is exempt, whatever MAC another port has.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trusted_vnics: BTreeMap<String, Vec<TrustedPort>>,
    /// Format 1's trust records, by guest MAC: never trusted as such. A root run binds each
    /// to the one running tap whose MAC libvirt derives from it, where exactly one does
    /// ([`crate::host::trust::bind_legacy`]), and drops the rest; written back as
    /// [`State::trusted_vnics`].
    #[serde(default, rename = "trusted", skip_serializing_if = "BTreeMap::is_empty")]
    pub legacy_trusted: BTreeMap<Mac, TrustedVnic>,
    /// VM ports disabled (bridge port state) because enforcement failed, by bridge; a
    /// successful reconcile sets them forwarding again and clears the record.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blocked: BTreeMap<String, BTreeSet<String>>,
    /// True while the cross-host filter (nft table or firewalld direct rules) may exist, so
    /// hosts that never use peer ranges or uplink MACs never spawn `nft` or call firewalld
    /// for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cross_host: bool,
    /// The network setup under way: what its `before_network_setup` replaced, restored by
    /// `after_network_setup_fail` of that same request only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<PendingSetup>,
    /// Format 1's `pending` map: nothing names the request that made it, so it is never
    /// replayed; dropped at the next write.
    #[serde(default, rename = "pending", skip_serializing)]
    pub legacy_pending: Option<serde_json::Value>,
}

/// A format-1 trust record: the VM of a trusted guest MAC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedVnic {
    /// The VM that owns it (`vmId`).
    pub vm: String,
}

/// A trusted vNIC bound to its tap.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedPort {
    /// Guest MAC: which vNIC of its VM this is (never how its port is found).
    pub mac: Mac,
    /// The tap libvirt created for it.
    pub tap: String,
    /// The tap's interface index when it was bound: a later tap of the same name (another
    /// VM's, once this one is gone) has another index and is not trusted.
    pub ifindex: u32,
}

/// What one `before_network_setup` changed, for its own `after_network_setup_fail`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingSetup {
    /// Fingerprint of the request: its networks and what it asks of each
    /// ([`crate::vdsm::setup::SetupRequest::fingerprint`]).
    pub request: String,
    /// The process that ran the hooks (supervdsm or `vdsm-tool restore-nets`), so a record
    /// left by a runner that died is never taken for a later identical request's.
    pub runner: Option<Runner>,
    /// Policies the request replaced (`None`: the network was not isolated).
    pub previous: BTreeMap<String, Option<NetworkPolicy>>,
}

/// A process, told apart from a later one with the same pid by its start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runner {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/PID/stat`, field 22).
    pub start: u64,
}

impl Runner {
    /// The parent of this process: VDSM runs each hook as a direct child of the process
    /// doing the setup.
    pub fn parent() -> Option<Runner> {
        // SAFETY: getppid has no preconditions.
        let pid = u32::try_from(unsafe { libc::getppid() }).ok()?;
        Some(Runner {
            pid,
            start: start_time_of(pid)?,
        })
    }

    /// True while this very process runs (its pid is not reused: the start time matches).
    pub fn is_running(&self) -> bool {
        start_time_of(self.pid) == Some(self.start)
    }
}

/// The start time of process `pid`, if it runs.
fn start_time_of(pid: u32) -> Option<u64> {
    stat_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field 22 (`starttime`) of a `/proc/PID/stat` line; the command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn stat_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl State {
    /// Records one network's change (isolated with a policy, or lifted: its bridge is then
    /// [`State::released`] until a reconcile clears it); returns the line saying what
    /// changed, if anything did.
    pub fn record(&mut self, network: &str, change: &NetworkChange) -> Option<String> {
        match change {
            NetworkChange::Isolate(policy) => {
                let old = self.networks.insert(network.to_string(), policy.clone());
                let said = (old.as_ref() != Some(policy)).then(|| {
                    format!(
                        "network {network}: bridge {} isolated (uplink {})",
                        policy.bridge,
                        policy.uplink.as_deref().unwrap_or("none")
                    )
                });
                if let Some(old) = old.filter(|o| o.bridge != policy.bridge) {
                    self.released.insert(old.bridge);
                }
                self.released.remove(&policy.bridge);
                said
            }
            NetworkChange::Lift => {
                let old = self.networks.remove(network)?;
                let said = format!("network {network}: isolation of bridge {} lifted", old.bridge);
                self.released.insert(old.bridge);
                Some(said)
            }
        }
    }

    /// The policy of the network whose bridge is `bridge`.
    pub fn network_of_bridge(&self, bridge: &str) -> Option<(&str, &NetworkPolicy)> {
        // The bridge is named after its network: look that up first (a 20,000-network
        // state is searched for every bridge of every plan).
        if let Some((n, p)) = self.networks.get_key_value(bridge).filter(|(_, p)| p.bridge == bridge) {
            return Some((n.as_str(), p));
        }
        self.networks
            .iter()
            .find(|(_, p)| p.bridge == bridge)
            .map(|(n, p)| (n.as_str(), p))
    }

    /// True when `bridge` is isolated.
    pub fn is_isolated(&self, bridge: &str) -> bool {
        self.network_of_bridge(bridge).is_some()
    }

    /// Every trusted port record, with its VM.
    pub fn trusted_ports(&self) -> impl Iterator<Item = (&str, &TrustedPort)> {
        self.trusted_vnics
            .iter()
            .flat_map(|(vm, ports)| ports.iter().map(move |p| (vm.as_str(), p)))
    }

    /// The uplinks a setup under way moves away from, by bridge: until its
    /// `after_network_setup`, the recorded and the requested uplink are both uplinks (the
    /// old one is still a port of the bridge until VDSM re-plumbs it).
    pub fn former_uplinks(&self) -> BTreeMap<&str, &str> {
        let Some(setup) = &self.setup else {
            return BTreeMap::new();
        };
        setup
            .previous
            .iter()
            .filter_map(|(network, old)| {
                let old = old.as_ref()?;
                let now = self.networks.get(network)?;
                let uplink = old.uplink.as_deref()?;
                (now.bridge == old.bridge && now.uplink.as_deref() != Some(uplink))
                    .then_some((old.bridge.as_str(), uplink))
            })
            .collect()
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
    /// A missing file is an empty state. A state file that someone other than root could
    /// have planted (see [`check_owner`]), a symbolic link or anything but a regular file is
    /// refused, as is a directory others may write.
    pub fn read(&self) -> Result<State> {
        let path = self.path();
        let err = |reason: String| Error::State {
            path: path.clone(),
            reason,
        };
        match std::fs::metadata(&self.dir) {
            Ok(meta) => check_dir(&meta).map_err(|reason| Error::State {
                path: self.dir.clone(),
                reason,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(Error::state(&self.dir, "checking", e)),
        }
        // O_NONBLOCK: a planted FIFO must not hang a hook that VDSM runs without a timeout.
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(err("is a symbolic link: refused".into()));
            }
            Err(e) => return Err(Error::state(&path, "opening", e)),
        };
        check_file(&file.metadata().map_err(|e| Error::state(&path, "checking", e))?).map_err(err)?;
        let state: State =
            serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| Error::state(&path, "malformed", e))?;
        if state.version > VERSION {
            return Err(err(format!("written by a newer version ({})", state.version)));
        }
        Ok(state)
    }

    /// Takes the exclusive lock (waiting for it) and reads the state.
    pub fn lock(&self) -> Result<Locked> {
        let lock = self.take_lock()?;
        let state = self.read()?;
        Ok(Locked {
            store: self.clone(),
            _lock: lock,
            original: state.clone(),
            state,
        })
    }

    /// Takes the exclusive lock and, without reading it, renames the state file to
    /// `state.json.<suffix>` (kept, never deleted); the state starts empty. Returns where the
    /// file went, `None` when there was none. For `bridge-isolation recover`.
    pub fn lock_and_set_aside(&self, suffix: &str) -> Result<(Locked, Option<PathBuf>)> {
        let lock = self.take_lock()?;
        let aside = self.dir.join(format!("{STATE_FILE}.{suffix}"));
        let moved = match std::fs::rename(self.path(), &aside) {
            Ok(()) => Some(aside),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Error::state(
                    self.path(),
                    format!("moving it to {}", aside.display()),
                    e,
                ))
            }
        };
        let locked = Locked {
            store: self.clone(),
            _lock: lock,
            original: State::default(),
            state: State::default(),
        };
        Ok((locked, moved))
    }

    /// Creates the state directory if needed, checks it, and takes the exclusive lock.
    fn take_lock(&self) -> Result<File> {
        let err = |what: &str, e: std::io::Error| Error::state(&self.dir, what, e);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .map_err(|e| err("creating", e))?;
        check_dir(&std::fs::metadata(&self.dir).map_err(|e| err("checking", e))?).map_err(|reason| Error::State {
            path: self.dir.clone(),
            reason,
        })?;
        let lock_path = self.dir.join(LOCK_FILE);
        let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        let lock = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(flags)
            .open(&lock_path)
        {
            Ok(lock) => lock,
            // A read-only state directory (a read-only /var, a full or failing disk
            // remounted read-only) still serialises readers on an existing lock file: a run
            // that changes nothing goes on, one that must write fails at its commit.
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => OpenOptions::new()
                .read(true)
                .custom_flags(flags)
                .open(&lock_path)
                .map_err(|_| err("opening the lock", e))?,
            Err(e) => return Err(err("opening the lock", e)),
        };
        check_file(&lock.metadata().map_err(|e| err("checking the lock", e))?).map_err(|reason| Error::State {
            path: lock_path.clone(),
            reason,
        })?;
        // SAFETY: flock on a valid, owned descriptor.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(err("locking", std::io::Error::last_os_error()));
        }
        Ok(lock)
    }
}

/// Prefix of the temporary files [`write_atomically`] renames over the state file.
fn temp_prefix() -> String {
    format!(".{STATE_FILE}.")
}

/// Removes `.state.json.*` files: what writers killed between creating their temporary
/// file and renaming it left. Only called by a writer, under the lock: no other writer runs.
fn remove_stale_temp_files(dir: &Path) -> Result<()> {
    let err = |e: std::io::Error| Error::state(dir, "removing stale temporary files", e);
    let prefix = temp_prefix();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            log::debug!("removing {}, left by a writer that was killed", entry.path().display());
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(e)),
            }
        }
    }
    Ok(())
}

impl Locked {
    /// True when the state differs from what was read.
    pub fn changed(&self) -> bool {
        self.state != self.original
    }

    /// Writes the state if it changed (temp file, fsync, rename, fsync of the directory),
    /// then releases the lock.
    pub fn commit(mut self) -> Result<()> {
        self.save()
    }

    /// Writes the state if it changed, keeping the lock: a record that lets the kernel
    /// open a port is on disk before the port opens.
    pub fn save(&mut self) -> Result<()> {
        if !self.changed() {
            return Ok(());
        }
        self.state.version = VERSION;
        write_atomically(&self.store.dir, STATE_FILE, &self.state)?;
        self.original = self.state.clone();
        Ok(())
    }

    /// The state as it was last read or written.
    pub fn recorded(&self) -> &State {
        &self.original
    }

    /// Puts the state back as it was last read or written.
    pub fn revert(&mut self) {
        self.state = self.original.clone();
    }

    /// Write-ahead before touching the kernel: records `bridges` as released in the state
    /// file as read (leaving [`Locked::state`] alone), so that if this process dies before
    /// [`Locked::commit`], the next run finds every bridge it may have touched recorded and
    /// takes their flags back to the recorded policy. Writes nothing when the file already
    /// names them all.
    pub fn record_intent<'a>(&mut self, bridges: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let mut intent = self.original.clone();
        let isolated: std::collections::HashSet<&str> =
            self.original.networks.values().map(|p| p.bridge.as_str()).collect();
        for bridge in bridges {
            if !isolated.contains(bridge) {
                intent.released.insert(bridge.to_string());
            }
        }
        if intent == self.original {
            return Ok(());
        }
        intent.version = VERSION;
        write_atomically(&self.store.dir, STATE_FILE, &intent)?;
        self.original = intent;
        Ok(())
    }
}

fn write_atomically(dir: &Path, name: &str, state: &State) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let tmp = dir.join(format!("{}{}", temp_prefix(), std::process::id()));
    let err = |what: &str, e: std::io::Error| Error::state(&path, what, e);
    let mut text = serde_json::to_vec_pretty(state).expect("state serializes");
    text.push(b'\n');
    // Every writer holds the lock: what is there was left by a writer that was killed.
    remove_stale_temp_files(dir)?;
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| err("creating", e))?;
    // Readable by the unprivileged VM hooks whatever the caller's umask.
    let written = file
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|()| file.write_all(&text))
        .and_then(|()| file.sync_all())
        .map_err(|e| err("writing", e))
        .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| err("renaming", e)));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
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
    if meta.mode() & 0o022 != 0 {
        return Err(format!("writable by group or others (mode {:o})", meta.mode() & 0o7777));
    }
    Ok(())
}

/// [`check_owner`], for the state directory. A sticky world-writable directory (`/tmp`) is
/// refused too: anyone could create the state or lock file there first.
fn check_dir(meta: &std::fs::Metadata) -> std::result::Result<(), String> {
    if !meta.is_dir() {
        return Err("not a directory".into());
    }
    check_owner(meta)
}

/// [`check_owner`], for the state and lock files: regular files only (a FIFO or a device
/// would block or mislead).
fn check_file(meta: &std::fs::Metadata) -> std::result::Result<(), String> {
    if !meta.is_file() {
        return Err("not a regular file: refused".into());
    }
    check_owner(meta)
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
                ..NetworkPolicy::default()
            },
        );
        let port = TrustedPort {
            mac: "56:6f:1a:00:00:02".parse().unwrap(),
            tap: "vnet7".into(),
            ifindex: 31,
        };
        locked.state.trusted_vnics.insert("vm-1".into(), vec![port.clone()]);
        locked.commit().unwrap();
        let read = store.read().unwrap();
        assert_eq!(read.version, VERSION);
        assert!(read.is_isolated("red"));
        assert_eq!(read.trusted_ports().collect::<Vec<_>>(), [("vm-1", &port)]);
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

    fn red() -> NetworkPolicy {
        NetworkPolicy {
            bridge: "red".into(),
            uplink: Some("eth1".into()),
            ..NetworkPolicy::default()
        }
    }

    #[test]
    fn refuses_what_another_user_could_plant() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state"));
        let mut locked = store.lock().unwrap();
        locked.state.networks.insert("red".into(), red());
        locked.commit().unwrap();
        let refused = |why: &str| {
            let read = store.read().unwrap_err().to_string();
            assert!(read.contains(why), "read: {read}");
            let lock = store.lock().err().expect("lock accepted a planted state").to_string();
            assert!(lock.contains(why), "lock: {lock}");
        };
        let real = store.path().with_extension("real");
        std::fs::rename(store.path(), &real).unwrap();
        std::os::unix::fs::symlink(&real, store.path()).unwrap();
        refused("symbolic link");
        std::fs::remove_file(store.path()).unwrap();

        let path = std::ffi::CString::new(store.path().to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        refused("not a regular file");
        std::fs::remove_file(store.path()).unwrap();

        std::fs::rename(&real, store.path()).unwrap();
        assert!(store.read().unwrap().is_isolated("red"));
        for mode in [0o775, 0o757, 0o1777] {
            std::fs::set_permissions(dir.path().join("state"), std::fs::Permissions::from_mode(mode)).unwrap();
            refused("writable by group or others");
        }
        std::fs::set_permissions(dir.path().join("state"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o664)).unwrap();
        refused("writable by group or others");
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(store.read().unwrap().is_isolated("red"));
    }

    #[test]
    fn a_write_removes_what_killed_writers_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        for pid in ["1", "4194304", &std::process::id().to_string()] {
            std::fs::write(dir.path().join(format!(".state.json.{pid}")), "{\"networks\": {").unwrap();
        }
        assert_eq!(
            store.read().unwrap(),
            State::default(),
            "temporary files are never read"
        );
        let mut locked = store.lock().unwrap();
        locked.state.networks.insert("red".into(), red());
        locked.commit().unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["state.json", "state.lock"]);
    }

    #[test]
    fn the_state_file_is_readable_by_all_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        // SAFETY: umask has no preconditions; restored below (tests of this module only
        // create files in their own private directories).
        let old = unsafe { libc::umask(0o077) };
        let mut locked = store.lock().unwrap();
        locked.state.networks.insert("red".into(), red());
        let committed = locked.commit();
        unsafe { libc::umask(old) };
        committed.unwrap();
        assert_eq!(std::fs::metadata(store.path()).unwrap().mode() & 0o777, 0o644);
    }

    /// A state file written by release 0.1.0 (format 1) reads: its trust records as
    /// legacy ones, its `pending` as a record nothing may replay; written back as format 2.
    #[test]
    fn format_1_reads_and_is_written_back_as_format_2() {
        let v1 = include_str!("../../tests/fixtures/state/v1.json");
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        std::fs::write(store.path(), v1).unwrap();
        let state = store.read().unwrap();
        assert_eq!(state.version, 1);
        assert_eq!(state.networks["red"].uplink.as_deref(), Some("eth1.100"));
        assert_eq!(state.legacy_trusted.len(), 2);
        assert!(state.trusted_vnics.is_empty());
        assert!(state.legacy_pending.is_some() && state.setup.is_none());
        assert!(
            state.former_uplinks().is_empty(),
            "format 1's pending never makes an uplink"
        );

        let mut locked = store.lock().unwrap();
        locked.state.legacy_trusted.clear();
        locked.state.legacy_pending = None;
        locked.commit().unwrap();
        let text = std::fs::read_to_string(store.path()).unwrap();
        let written: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(written["version"], 2);
        assert!(
            written.get("pending").is_none() && written.get("trusted").is_none(),
            "{text}"
        );
        assert_eq!(store.read().unwrap().networks, state.networks);
    }

    #[test]
    fn a_pending_setup_keeps_the_uplink_it_moves_from() {
        let mut state = State::default();
        state.networks.insert("red".into(), red());
        let moved = NetworkPolicy {
            uplink: Some("eth2".into()),
            ..red()
        };
        state.setup = Some(PendingSetup {
            request: "0123456789abcdef".into(),
            runner: Some(Runner { pid: 1, start: 2 }),
            previous: BTreeMap::from([("red".to_string(), Some(red()))]),
        });
        assert!(state.former_uplinks().is_empty(), "not moved yet");
        state.networks.insert("red".into(), moved);
        assert_eq!(state.former_uplinks(), BTreeMap::from([("red", "eth1")]));
        state.setup = None;
        assert!(state.former_uplinks().is_empty());
    }

    #[test]
    fn start_time_of_a_stat_line() {
        let stat = "4242 (supervdsmd (x) y) S 1 4242 4242 0 -1 4194560 5012 0 0 0 31 12 0 0 20 0 4 0 1183 \
                    812343296 10240 18446744073709551615";
        assert_eq!(stat_start_time(stat), Some(1183));
        assert_eq!(stat_start_time("garbage"), None);
        let me = Runner::parent().expect("this test's parent");
        assert_eq!(Runner::parent(), Some(me), "stable");
    }

    #[test]
    fn intent_names_new_bridges_as_released_and_commit_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut locked = store.lock().unwrap();
        locked.state.networks.insert("red".into(), red());
        locked.record_intent(["red"]).unwrap();
        let on_disk = store.read().unwrap();
        assert!(on_disk.networks.is_empty());
        assert_eq!(on_disk.released, BTreeSet::from(["red".to_string()]));
        assert!(locked.changed());
        locked.commit().unwrap();
        let on_disk = store.read().unwrap();
        assert!(on_disk.is_isolated("red"));

        // Already recorded: nothing is written.
        let mut locked = store.lock().unwrap();
        let inode = std::fs::metadata(store.path()).unwrap().ino();
        locked.record_intent(["red"]).unwrap();
        assert!(!locked.changed());
        locked.commit().unwrap();
        assert_eq!(std::fs::metadata(store.path()).unwrap().ino(), inode);
    }
}
