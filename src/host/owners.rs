//! Owner records: for each running VM, its name and the tap of each of its vNICs, one small
//! JSON file per VM in a runtime directory ([`crate::host::paths::OWNERS_DIR`], on tmpfs, so
//! a reboot leaves none). The VM hooks write them as whichever user VDSM runs them as
//! (`vdsm`, or root), `after_vm_destroy` removes them, and root runs prune what names no
//! live tap. `bridge-isolation status` reads them to show which VM owns each port.
//!
//! Display only: nothing is isolated, opened or trusted because of a record here (user
//! `vdsm` can write them, so they prove nothing). A record counts for a port only when its
//! tap has the recorded interface index, so a tap name reused by another VM later is never
//! shown under the VM that had it first.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::mac::Mac;
use crate::model::owner::{check_vm_id, printable_name, Owner, OwnerSource};

/// Format version of a record.
pub const VERSION: u32 = 1;
/// Largest record read, in bytes (512 vNICs fit in a quarter of it).
const MAX_RECORD: u64 = 128 * 1024;
const SUFFIX: &str = ".json";
/// Age after which a temporary file is taken for one a killed writer left.
const TEMP_FILE_LIFE: std::time::Duration = std::time::Duration::from_secs(60);

/// One VM's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRecord {
    /// Format version.
    pub version: u32,
    /// The VM (`vmId`); also the file's name.
    pub vm_id: String,
    /// The domain's `<name>`, once a hook with the whole domain saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    /// Its vNICs that have a tap.
    pub vnics: Vec<VnicRecord>,
}

/// One vNIC and the tap libvirt made for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VnicRecord {
    /// Guest MAC.
    pub mac: Mac,
    /// The tap, as libvirt's live XML names it.
    pub tap: String,
    /// The tap's interface index when the hook saw it.
    pub ifindex: u32,
}

impl VmRecord {
    /// A record for `vm_id` with no vNIC yet.
    pub fn new(vm_id: &str, vm_name: Option<&str>) -> VmRecord {
        VmRecord {
            version: VERSION,
            vm_id: vm_id.to_string(),
            vm_name: vm_name.map(printable_name),
            vnics: Vec::new(),
        }
    }

    /// Adds `vnic`, replacing what the record had for the same guest MAC or tap.
    pub fn put(&mut self, vnic: VnicRecord) {
        self.vnics.retain(|v| v.mac != vnic.mac && v.tap != vnic.tap);
        self.vnics.push(vnic);
        self.vnics.sort_by(|a, b| a.tap.cmp(&b.tap));
    }

    /// Checks what a reader must not take on trust: the id (it names the file), every tap
    /// name, the version; the name is made printable.
    fn checked(mut self, file_vm: &str) -> std::result::Result<VmRecord, String> {
        check_vm_id(&self.vm_id)?;
        if self.vm_id != file_vm {
            return Err(format!("names VM {} in the file of VM {file_vm}", self.vm_id));
        }
        if self.version != VERSION {
            return Err(format!("format {} (this release reads {VERSION})", self.version));
        }
        for v in &self.vnics {
            crate::model::ifname::validate(&v.tap)?;
        }
        self.vm_name = self.vm_name.as_deref().map(printable_name);
        Ok(self)
    }
}

/// The directory of the records.
#[derive(Clone, Debug)]
pub struct OwnerDir {
    dir: PathBuf,
}

impl OwnerDir {
    /// The records in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> OwnerDir {
        OwnerDir { dir: dir.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, vm: &str) -> Result<PathBuf> {
        check_vm_id(vm).map_err(Error::Payload)?;
        Ok(self.dir.join(format!("{vm}{SUFFIX}")))
    }

    /// The record of VM `vm`; `None` when there is none (or no directory).
    pub fn read(&self, vm: &str) -> Result<Option<VmRecord>> {
        if !self.checked_dir()? {
            return Ok(None);
        }
        self.read_in_checked_dir(vm)
    }

    /// Checks the directory as [`check_owner`] does; `false` when there is none.
    fn checked_dir(&self) -> Result<bool> {
        match std::fs::symlink_metadata(&self.dir) {
            Ok(meta) if meta.is_dir() => check_owner(&meta).map(|()| true),
            Ok(_) => Err("not a directory".to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.to_string()),
        }
        .map_err(|reason| Error::State {
            path: self.dir.clone(),
            reason,
        })
    }

    /// [`OwnerDir::read`] once the directory is checked.
    fn read_in_checked_dir(&self, vm: &str) -> Result<Option<VmRecord>> {
        let path = self.file(vm)?;
        let err = |reason: String| Error::State {
            path: path.clone(),
            reason,
        };
        let file = match open_record(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::state(&path, "opening", e)),
        };
        let meta = file.metadata().map_err(|e| Error::state(&path, "checking", e))?;
        if !meta.is_file() {
            return Err(err("not a regular file".into()));
        }
        check_owner(&meta).map_err(err)?;
        let mut text = Vec::new();
        file.take(MAX_RECORD + 1)
            .read_to_end(&mut text)
            .map_err(|e| Error::state(&path, "reading", e))?;
        if text.len() as u64 > MAX_RECORD {
            return Err(err(format!("larger than {MAX_RECORD} bytes")));
        }
        let record: VmRecord = serde_json::from_slice(&text).map_err(|e| Error::state(&path, "malformed", e))?;
        record.checked(vm).map(Some).map_err(err)
    }

    /// Writes `record` atomically (a temporary file renamed over the old one) unless the file
    /// already says the same, creating the directory when root may (see
    /// [`OwnerDir::ensure`]). Few system calls: a VM hook as `vdsm` does this at every VM
    /// start.
    pub fn write(&self, record: &VmRecord) -> Result<()> {
        let path = self.file(&record.vm_id)?;
        let tmp = self
            .dir
            .join(format!(".{}{SUFFIX}.{}", record.vm_id, std::process::id()));
        let err = |what: &str, e: std::io::Error| Error::state(&path, what, e);
        let mut text = serde_json::to_vec(record).expect("a record serializes");
        text.push(b'\n');
        // Written only when it changes: a hook run again for a running VM (a replayed
        // migration, an update) reads it and stops there.
        if self.bytes_of(&path).is_some_and(|old| old == text) {
            return Ok(());
        }
        // Truncated, not exclusive: a file of this name is a dead writer's (same pid).
        let create = || {
            OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
        };
        let file = match create() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.ensure().and_then(|()| create().map_err(|e| err("writing", e)))
            }
            opened => opened.map_err(|e| err("writing", e)),
        };
        let written = file
            .and_then(|mut f| f.write_all(&text).map_err(|e| err("writing", e)))
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| err("renaming", e)));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// The bytes of record file `path`, when it is a regular file no larger than a record
    /// (not following a link, not waiting on a FIFO: root reads a directory vdsm writes).
    fn bytes_of(&self, path: &Path) -> Option<Vec<u8>> {
        let file = open_record(path).ok()?;
        if !file.metadata().ok()?.is_file() {
            return None;
        }
        let mut bytes = Vec::new();
        file.take(MAX_RECORD + 1).read_to_end(&mut bytes).ok()?;
        Some(bytes)
    }

    /// Removes the record of VM `vm`; none is fine.
    pub fn remove(&self, vm: &str) -> Result<()> {
        let path = self.file(vm)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::state(&path, "removing", e)),
            _ => Ok(()),
        }
    }

    /// Every record that reads; each that does not is logged and skipped (display only).
    pub fn all(&self) -> Vec<VmRecord> {
        match self.checked_dir() {
            Ok(true) => {}
            Ok(false) => return Vec::new(),
            Err(e) => {
                log::warn!("owner records skipped: {e}");
                return Vec::new();
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut records: Vec<VmRecord> = entries
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let vm = name.strip_suffix(SUFFIX).filter(|vm| check_vm_id(vm).is_ok())?;
                match self.read_in_checked_dir(vm) {
                    Ok(record) => record,
                    Err(e) => {
                        log::warn!("owner record skipped: {e}");
                        None
                    }
                }
            })
            .collect();
        records.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
        records
    }

    /// The owner of each recorded tap, by tap name and interface index.
    pub fn owners(&self) -> HashMap<(String, u32), Owner> {
        self.all()
            .into_iter()
            .flat_map(|r| {
                r.vnics.into_iter().map(move |v| {
                    let owner = Owner {
                        vm_id: r.vm_id.clone(),
                        vm_name: r.vm_name.clone(),
                        vnic_mac: Some(v.mac),
                        source: OwnerSource::Hook,
                    };
                    ((v.tap, v.ifindex), owner)
                })
            })
            .collect()
    }

    /// Removes the records none of whose taps `alive(tap, ifindex)` still finds, and the
    /// temporary files of writers that died; returns the VMs forgotten. For root: the
    /// records of VMs that died without `after_vm_destroy` (a crash, a VDSM restart).
    pub fn prune(&self, alive: impl Fn(&str, u32) -> bool) -> Vec<String> {
        let mut gone = Vec::new();
        for record in self.all() {
            if !record.vnics.iter().any(|v| alive(&v.tap, v.ifindex)) && self.remove(&record.vm_id).is_ok() {
                gone.push(record.vm_id);
            }
        }
        // A writer renames its temporary file within milliseconds: one a minute old was left
        // by a writer that died (whose pid this process may not even see).
        let stale = |e: &std::fs::DirEntry| {
            let modified = e.metadata().and_then(|m| m.modified());
            modified.is_ok_and(|t| t.elapsed().is_ok_and(|age| age > TEMP_FILE_LIFE))
        };
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                if name.to_string_lossy().starts_with('.') && stale(&e) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        gone
    }

    /// Creates the directory when it is missing and this process is root: mode 0755, owned
    /// by user `vdsm` when that account exists (VDSM runs the VM hooks as it), else by root.
    /// The package's tmpfiles.d entry creates it at boot; this covers a host that has not
    /// run it since the install.
    pub fn ensure(&self) -> Result<()> {
        if self.dir.is_dir() || !crate::host::config::is_root() {
            return Ok(());
        }
        let err = |what: &str, e: std::io::Error| Error::state(&self.dir, what, e);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .map_err(|e| err("creating", e))?;
        if let Some(uid) = crate::sys::owner::uid_of(crate::host::paths::VDSM_USER) {
            std::os::unix::fs::chown(&self.dir, Some(uid), None).map_err(|e| err("handing over to vdsm", e))?;
        }
        Ok(())
    }
}

/// Finds who owns a VM port: the hooks' record of that very tap (name and interface index)
/// first; else, for root, the qemu process of this network namespace that holds the tap (a
/// port that joined without a hook: plain virsh, or a VM started before this package).
pub struct Resolver {
    recorded: HashMap<(String, u32), Owner>,
    /// The walk of `/proc`, done once, on the first port no record names (root only).
    qemu: Option<std::collections::BTreeMap<String, crate::sys::owner::QemuVm>>,
}

impl Resolver {
    /// A resolver over the records in `dir`.
    pub fn new(dir: &OwnerDir) -> Resolver {
        Resolver {
            recorded: dir.owners(),
            qemu: None,
        }
    }

    /// The owner of port `tap` with interface index `ifindex`, when it can be found.
    pub fn owner_of(&mut self, tap: &str, ifindex: u32) -> Option<Owner> {
        if let Some(owner) = self.recorded.get(&(tap.to_string(), ifindex)) {
            return Some(owner.clone());
        }
        if !crate::host::config::is_root() {
            return None;
        }
        let qemu = self.qemu.get_or_insert_with(|| {
            crate::sys::owner::vms_by_tap().unwrap_or_else(|e| {
                log::warn!("reading the qemu processes' taps: {e}");
                Default::default()
            })
        });
        let vm = qemu.get(tap).filter(|vm| check_vm_id(&vm.uuid).is_ok())?;
        Some(Owner {
            vm_id: vm.uuid.clone(),
            vm_name: vm.name.as_deref().map(printable_name),
            vnic_mac: None,
            source: OwnerSource::Qemu,
        })
    }
}

/// Opens record file `path` for reading, not following a link and, for a FIFO planted in its
/// place, not waiting for a writer (it then fails the regular-file check).
fn open_record(path: &Path) -> std::io::Result<std::fs::File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// The users whose records count: root, user `vdsm`, and this process's.
fn trusted_writer(uid: u32) -> bool {
    static VDSM: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    // SAFETY: geteuid has no preconditions.
    uid == 0
        || uid == unsafe { libc::geteuid() }
        || *VDSM.get_or_init(|| crate::sys::owner::uid_of(crate::host::paths::VDSM_USER)) == Some(uid)
}

/// A record owned by another user, or that others may write, is not read.
fn check_owner(meta: &std::fs::Metadata) -> std::result::Result<(), String> {
    if !trusted_writer(meta.uid()) {
        return Err(format!("owned by uid {}, not root or vdsm", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("writable by group or others (mode {:o})", meta.mode() & 0o7777));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "4d3a1f52-8a0b-4c8e-9a8f-2f7b3d1c0e11";

    fn vnic(mac: &str, tap: &str, ifindex: u32) -> VnicRecord {
        VnicRecord {
            mac: mac.parse().unwrap(),
            tap: tap.into(),
            ifindex,
        }
    }

    #[test]
    fn write_read_merge_remove() {
        let dir = tempfile::tempdir().unwrap();
        let owners = OwnerDir::new(dir.path().join("owners"));
        assert_eq!(owners.read(VM).unwrap(), None);
        let mut record = VmRecord::new(VM, Some("web\u{1b}01"));
        record.put(vnic("56:6f:1a:00:00:01", "vnet3", 31));
        record.put(vnic("56:6f:1a:00:00:02", "vnet4", 32));
        owners.write(&record).unwrap();
        let read = owners.read(VM).unwrap().unwrap();
        assert_eq!(read.vm_name.as_deref(), Some("web\u{fffd}01"));
        assert_eq!(read, record);

        // A hotplug replaces the vNIC's old tap.
        record.put(vnic("56:6f:1a:00:00:02", "vnet9", 40));
        assert_eq!(
            record.vnics.iter().map(|v| v.tap.as_str()).collect::<Vec<_>>(),
            ["vnet3", "vnet9"]
        );
        owners.write(&record).unwrap();
        let by_tap = owners.owners();
        assert_eq!(by_tap.len(), 2);
        let owner = &by_tap[&("vnet9".to_string(), 40)];
        assert_eq!((owner.vm_id.as_str(), owner.source), (VM, OwnerSource::Hook));
        assert!(!by_tap.contains_key(&("vnet4".to_string(), 32)));

        let inode = std::fs::metadata(owners.path().join(format!("{VM}.json")))
            .unwrap()
            .ino();
        owners.write(&record).unwrap();
        let same = std::fs::metadata(owners.path().join(format!("{VM}.json")))
            .unwrap()
            .ino();
        assert_eq!(same, inode, "an unchanged record is not written again");
        let left: Vec<_> = std::fs::read_dir(owners.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            [std::ffi::OsString::from(format!("{VM}.json"))],
            "no temporary file left"
        );
        owners.remove(VM).unwrap();
        owners.remove(VM).unwrap();
        assert!(owners.all().is_empty());
    }

    #[test]
    fn refuses_what_it_cannot_trust_to_describe_its_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let owners = OwnerDir::new(dir.path());
        assert!(owners.read("../state").is_err(), "an id is never a path");
        assert!(owners.write(&VmRecord::new("a/b", None)).is_err());
        let path = dir.path().join(format!("{VM}.json"));
        let other = "0b0e6c1d-0000-4000-8000-000000000001";
        std::fs::write(&path, format!(r#"{{"version":1,"vm_id":"{other}","vnics":[]}}"#)).unwrap();
        assert!(owners.read(VM).unwrap_err().to_string().contains("in the file of VM"));
        std::fs::write(
            &path,
            format!(
                r#"{{"version":1,"vm_id":"{VM}","vnics":[{{"mac":"56:6f:1a:00:00:01","tap":"a b","ifindex":1}}]}}"#
            ),
        )
        .unwrap();
        assert!(owners.read(VM).is_err(), "an invalid tap name");
        std::fs::write(&path, format!(r#"{{"version":1,"vm_id":"{VM}","vnics":[]}}"#)).unwrap();
        assert!(owners.read(VM).unwrap().is_some());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(owners
            .read(VM)
            .unwrap_err()
            .to_string()
            .contains("writable by group or others"));
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert!(owners.read(VM).is_err(), "a symbolic link is not followed");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, " ".repeat(MAX_RECORD as usize + 1)).unwrap();
        assert!(owners.read(VM).unwrap_err().to_string().contains("larger than"));
        assert!(owners.all().is_empty(), "what does not read is skipped");
    }

    #[test]
    fn a_planted_link_or_fifo_is_replaced_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let owners = OwnerDir::new(dir.path());
        let mut record = VmRecord::new(VM, Some("web01"));
        record.put(vnic("56:6f:1a:00:00:01", "vnet3", 31));
        let path = dir.path().join(format!("{VM}.json"));
        // A link to a file saying the same is not taken for the record.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(
            &elsewhere,
            [serde_json::to_vec(&record).unwrap(), b"\n".to_vec()].concat(),
        )
        .unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        owners.write(&record).unwrap();
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        // A FIFO does not hang the writer.
        std::fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        owners.write(&record).unwrap();
        assert_eq!(owners.read(VM).unwrap(), Some(record));
    }

    #[test]
    fn prune_forgets_vms_whose_taps_are_all_gone() {
        let dir = tempfile::tempdir().unwrap();
        let owners = OwnerDir::new(dir.path());
        let other = "0b0e6c1d-0000-4000-8000-000000000001";
        let mut one = VmRecord::new(VM, None);
        one.put(vnic("56:6f:1a:00:00:01", "vnet3", 31));
        one.put(vnic("56:6f:1a:00:00:02", "vnet4", 32));
        let mut two = VmRecord::new(other, None);
        two.put(vnic("56:6f:1a:00:00:03", "vnet5", 33));
        owners.write(&one).unwrap();
        owners.write(&two).unwrap();
        // A writer killed before its rename, two minutes ago; one writing now.
        let left = dir.path().join(format!(".{VM}.json.4194304"));
        std::fs::write(&left, "{").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        std::fs::File::options()
            .write(true)
            .open(&left)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let writing = format!(".{VM}.json.{}", std::process::id());
        std::fs::write(dir.path().join(&writing), "{").unwrap();
        // vnet3 is still there; vnet5's name now belongs to another interface.
        let gone = owners.prune(|tap, index| (tap, index) == ("vnet3", 31) || (tap, index) == ("vnet5", 50));
        assert_eq!(gone, [other]);
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, [writing, format!("{VM}.json")].map(std::ffi::OsString::from));
    }
}
