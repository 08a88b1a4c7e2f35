//! Which taps a VM's qemu process holds: the host's proof of a hotplugged vNIC's tap, where
//! the payload names none, and the VM a port belongs to where no hook recorded it.
//!
//! libvirt starts qemu with `-uuid VMID` and hands it each tap's `/dev/net/tun` descriptor;
//! the kernel names the tap of every such descriptor in its fdinfo (`iff:`). Only processes
//! run by root or by the `qemu` user count, so no other local user can lend a tap an
//! identity. Reading another user's fdinfo needs root: the root hook or helper does this.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The user libvirt runs qemu as on EL.
pub const QEMU_USER: &str = "qemu";
/// The character device every tap descriptor is opened from.
const TUN: &str = "/dev/net/tun";

/// The taps held open by the qemu process of VM `vm` (its `-uuid`), found in `/proc`.
pub fn taps_of_vm(vm: &str) -> std::io::Result<BTreeSet<String>> {
    taps_in(Path::new("/proc"), vm, &qemu_uids())
}

/// [`taps_of_vm`] over the process tree `proc`, for processes whose effective uid is in `uids`.
pub fn taps_in(proc: &Path, vm: &str, uids: &[u32]) -> std::io::Result<BTreeSet<String>> {
    let mut taps = BTreeSet::new();
    for dir in processes(proc, uids)? {
        if args(&dir).is_some_and(|a| value_of(&a, "-uuid").is_some_and(|id| id.eq_ignore_ascii_case(vm))) {
            taps.extend(tun_devices(&dir));
        }
    }
    Ok(taps)
}

/// A VM as its qemu process's command line shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuVm {
    /// `-uuid`: the VM's id.
    pub uuid: String,
    /// `-name`'s guest name, when given.
    pub name: Option<String>,
}

/// The VM of each tap a qemu process (run by root or `qemu`) of this network namespace
/// holds, by tap name: the owner of a port that joined without a hook. Root only (another
/// user's descriptors); an empty map for anyone else.
pub fn vms_by_tap() -> std::io::Result<BTreeMap<String, QemuVm>> {
    let proc = Path::new("/proc");
    vms_in(proc, &qemu_uids(), net_namespace(&proc.join("self")).as_deref())
}

/// [`vms_by_tap`] over the process tree `proc`, for processes whose effective uid is in
/// `uids` and, when `netns` is given, whose network namespace it is (`net:[INODE]`): a tap
/// of the same name in another namespace is another interface.
pub fn vms_in(proc: &Path, uids: &[u32], netns: Option<&str>) -> std::io::Result<BTreeMap<String, QemuVm>> {
    let mut vms = BTreeMap::new();
    for dir in processes(proc, uids)? {
        if netns.is_some_and(|ns| net_namespace(&dir).as_deref() != Some(ns)) {
            continue;
        }
        let Some(args) = args(&dir) else { continue };
        let Some(uuid) = value_of(&args, "-uuid") else { continue };
        let vm = QemuVm {
            uuid: uuid.to_ascii_lowercase(),
            name: value_of(&args, "-name").and_then(guest_name),
        };
        for tap in tun_devices(&dir) {
            vms.insert(tap, vm.clone());
        }
    }
    Ok(vms)
}

/// The uids whose processes may be a VM's qemu: root and `qemu`.
fn qemu_uids() -> Vec<u32> {
    let mut uids = vec![0];
    uids.extend(uid_of(QEMU_USER));
    uids
}

/// The `/proc/PID` directories of processes whose effective uid is in `uids`.
fn processes(proc: &Path, uids: &[u32]) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(proc)? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let dir = entry.path();
        // A process may exit at any point of this walk: what cannot be read is skipped.
        if effective_uid(&dir).is_some_and(|uid| uids.contains(&uid)) {
            dirs.push(dir);
        }
    }
    Ok(dirs)
}

/// The network namespace of process directory `dir`, as its `ns/net` link reads.
fn net_namespace(dir: &Path) -> Option<String> {
    Some(
        std::fs::read_link(dir.join("ns/net"))
            .ok()?
            .to_string_lossy()
            .into_owned(),
    )
}

/// The guest name in qemu's `-name` value: `guest=NAME,...` or `NAME,...`, where `,,`
/// stands for a comma.
fn guest_name(value: &str) -> Option<String> {
    let value = value.strip_prefix("guest=").unwrap_or(value);
    let mut name = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() != Some(&',') {
                break;
            }
            chars.next();
        }
        name.push(c);
    }
    (!name.is_empty()).then_some(name)
}

/// The effective uid in `/proc/PID/status`.
fn effective_uid(dir: &Path) -> Option<u32> {
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The command line's arguments (lossy UTF-8).
fn args(dir: &Path) -> Option<Vec<String>> {
    let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
    Some(
        cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The argument after option `option` (as two arguments: `-uuid X`), its first occurrence.
fn value_of<'a>(args: &'a [String], option: &str) -> Option<&'a str> {
    args.windows(2).find(|w| w[0] == option).map(|w| w[1].as_str())
}

/// The interfaces named by the `/dev/net/tun` descriptors the process holds.
fn tun_devices(dir: &Path) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
        return Vec::new();
    };
    fds.filter_map(|fd| {
        let fd = fd.ok()?;
        if std::fs::read_link(fd.path()).ok()? != Path::new(TUN) {
            return None;
        }
        let info = std::fs::read_to_string(dir.join("fdinfo").join(fd.file_name())).ok()?;
        let iff = info.lines().find_map(|l| l.strip_prefix("iff:"))?.trim();
        crate::model::ifname::validate(iff).ok().map(|()| iff.to_string())
    })
    .collect()
}

/// The uid of user `name`, if there is one, from `/etc/passwd`: qemu is a local system
/// user, and a static hook binary cannot load glibc's NSS modules for `getpwnam`.
pub fn uid_of(name: &str) -> Option<u32> {
    uid_in(&std::fs::read_to_string("/etc/passwd").ok()?, name)
}

/// The uid of user `name` in the text of a passwd(5) file: the first entry of that name.
fn uid_in(passwd: &str, name: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        fields.nth(1)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "4d3a1f52-8a0b-4c8e-9a8f-2f7b3d1c0e11";

    /// A fake `/proc/PID` with a command line, an effective uid and tun descriptors.
    fn process(proc: &Path, pid: u32, uid: u32, args: &[&str], taps: &[(u32, &str)]) {
        let dir = proc.join(pid.to_string());
        std::fs::create_dir_all(dir.join("fd")).unwrap();
        std::fs::create_dir_all(dir.join("fdinfo")).unwrap();
        std::fs::write(dir.join("cmdline"), args.join("\0") + "\0").unwrap();
        std::fs::write(
            dir.join("status"),
            format!("Name:\tqemu-kvm\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.join("fd/0")).unwrap();
        for (fd, tap) in taps {
            std::os::unix::fs::symlink(TUN, dir.join(format!("fd/{fd}"))).unwrap();
            std::fs::write(
                dir.join(format!("fdinfo/{fd}")),
                format!("pos:\t0\nflags:\t0104002\nmnt_id:\t27\nino:\t1036\niff:\t{tap}\n"),
            )
            .unwrap();
        }
    }

    #[test]
    fn reads_a_uid_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      # a comment\n\
                      qemuuser:x:99:99::/:/sbin/nologin\n\
                      qemu:x:107:107:qemu user:/:/sbin/nologin\n\
                      qemu:x:108:108:second entry:/:/sbin/nologin\n\
                      bad:x:notanumber:1::/:\n";
        assert_eq!(uid_in(passwd, "qemu"), Some(107));
        assert_eq!(uid_in(passwd, "root"), Some(0));
        assert_eq!(uid_in(passwd, "qemu-kvm"), None);
        assert_eq!(uid_in(passwd, "bad"), None);
        assert_eq!(uid_in(passwd, ""), None);
        assert_eq!(uid_in("", "qemu"), None);
    }

    #[test]
    fn finds_the_taps_of_the_vms_own_qemu_only() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path();
        let qemu = 107;
        let args = [
            "/usr/libexec/qemu-kvm",
            "-name",
            "guest=router,debug-threads=on",
            "-uuid",
            VM,
            "-netdev",
            "tap,fds=34:35,id=hostua-net0",
        ];
        process(proc, 4242, qemu, &args, &[(34, "vnet7"), (35, "vnet7"), (40, "vnet9")]);
        // Another VM's qemu, and a process of another user claiming this VM's uuid.
        let other = ["/usr/libexec/qemu-kvm", "-uuid", "0b0e6c1d-0000-4000-8000-000000000001"];
        process(proc, 4300, qemu, &other, &[(34, "vnet8")]);
        process(proc, 5000, 1000, &["/tmp/fake", "-uuid", VM], &[(3, "vnet10")]);
        // `-uuid` as one argument's text is no match.
        process(proc, 5001, 0, &[&format!("-uuid {VM}")], &[(3, "vnet11")]);
        std::fs::create_dir_all(proc.join("self")).unwrap();

        let taps = taps_in(proc, VM, &[0, qemu]).unwrap();
        assert_eq!(taps, BTreeSet::from(["vnet7".to_string(), "vnet9".to_string()]));
        let upper = taps_in(proc, &VM.to_uppercase(), &[0, qemu]).unwrap();
        assert_eq!(upper, taps);
        assert!(taps_in(proc, "no-such-vm", &[0, qemu]).unwrap().is_empty());
    }

    #[test]
    fn names_the_vm_of_each_tap_in_this_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path();
        let qemu = 107;
        let args = [
            "/usr/libexec/qemu-kvm",
            "-name",
            "guest=web,,01,debug-threads=on",
            "-uuid",
            &VM.to_uppercase(),
        ];
        process(proc, 4242, qemu, &args, &[(34, "vnet7"), (35, "vnet9")]);
        process(
            proc,
            4300,
            qemu,
            &["/usr/bin/qemu-system-x86_64", "-uuid", "vm-2", "-name", "db"],
            &[(3, "vnet8")],
        );
        // In another network namespace: its vnet7 is another interface.
        process(proc, 4400, qemu, &["qemu", "-uuid", "vm-3"], &[(3, "vnet7")]);
        // Another user's process claiming a VM.
        process(proc, 5000, 1000, &["/tmp/fake", "-uuid", "vm-4"], &[(3, "vnet10")]);
        for (pid, ns) in [
            (4242, "net:[4026531840]"),
            (4300, "net:[4026531840]"),
            (4400, "net:[4026532999]"),
        ] {
            std::fs::create_dir_all(proc.join(format!("{pid}/ns"))).unwrap();
            std::os::unix::fs::symlink(ns, proc.join(format!("{pid}/ns/net"))).unwrap();
        }
        let vms = vms_in(proc, &[0, qemu], Some("net:[4026531840]")).unwrap();
        let web = QemuVm {
            uuid: VM.into(),
            name: Some("web,01".into()),
        };
        let db = QemuVm {
            uuid: "vm-2".into(),
            name: Some("db".into()),
        };
        let expected = BTreeMap::from([
            ("vnet7".to_string(), web.clone()),
            ("vnet8".into(), db),
            ("vnet9".into(), web),
        ]);
        assert_eq!(vms, expected);
        assert_eq!(
            vms_in(proc, &[0, qemu], None).unwrap().len(),
            3,
            "vnet7 twice: one wins"
        );
    }

    #[test]
    fn guest_names() {
        assert_eq!(guest_name("guest=router,debug-threads=on").as_deref(), Some("router"));
        assert_eq!(guest_name("plain").as_deref(), Some("plain"));
        assert_eq!(guest_name("guest=a,,b,,").as_deref(), Some("a,b,"));
        assert_eq!(guest_name("guest=,process=x"), None);
    }
}
