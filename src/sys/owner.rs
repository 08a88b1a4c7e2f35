//! Which taps a VM's qemu process holds: the host's proof of a hotplugged vNIC's tap, where
//! the payload names none.
//!
//! libvirt starts qemu with `-uuid VMID` and hands it each tap's `/dev/net/tun` descriptor;
//! the kernel names the tap of every such descriptor in its fdinfo (`iff:`). Only processes
//! run by root or by the `qemu` user count, so no other local user can lend a tap an
//! identity. Reading another user's fdinfo needs root: the root hook or helper does this.

use std::collections::BTreeSet;
use std::path::Path;

/// The user libvirt runs qemu as on EL.
pub const QEMU_USER: &str = "qemu";
/// The character device every tap descriptor is opened from.
const TUN: &str = "/dev/net/tun";

/// The taps held open by the qemu process of VM `vm` (its `-uuid`), found in `/proc`.
pub fn taps_of_vm(vm: &str) -> std::io::Result<BTreeSet<String>> {
    let mut uids = vec![0];
    uids.extend(uid_of(QEMU_USER));
    taps_in(Path::new("/proc"), vm, &uids)
}

/// [`taps_of_vm`] over the process tree `proc`, for processes whose effective uid is in `uids`.
pub fn taps_in(proc: &Path, vm: &str, uids: &[u32]) -> std::io::Result<BTreeSet<String>> {
    let mut taps = BTreeSet::new();
    for entry in std::fs::read_dir(proc)? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let dir = entry.path();
        // A process may exit at any point of this walk: what cannot be read is skipped.
        let owned = effective_uid(&dir).is_some_and(|uid| uids.contains(&uid));
        if owned && runs_vm(&dir, vm) {
            taps.extend(tun_devices(&dir));
        }
    }
    Ok(taps)
}

/// The effective uid in `/proc/PID/status`.
fn effective_uid(dir: &Path) -> Option<u32> {
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// True when the command line has `-uuid VM` (as two arguments, case aside).
fn runs_vm(dir: &Path, vm: &str) -> bool {
    let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.windows(2)
        .any(|w| w[0] == b"-uuid" && w[1].eq_ignore_ascii_case(vm.as_bytes()))
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
fn uid_of(name: &str) -> Option<u32> {
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
}
