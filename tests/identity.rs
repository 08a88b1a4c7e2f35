//! Which port is a trusted vNIC's (issue 13, item 1) on a real kernel: trust is bound to
//! the tap the host proves is the vNIC's (named by libvirt's live XML, or held open by the
//! VM's own qemu process), never to a MAC a VM's user can choose. Each test is an attack
//! that opened a port before: a custom MAC colliding with a trusted vNIC's tap MAC, another
//! VM's destroy forgetting a trusted vNIC with the same MAC, a format-1 record carried over
//! to whichever port has the MAC. Needs root; skips otherwise.

#[allow(dead_code)]
mod common;

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use bridge_isolation_lab::{self as lab, domain_xml, interface_xml, parse_mac, LabSpec, NicSpec, VmSpec};
use common::{tagged, vm_uuid, Fixture, NET};
use serde_json::json;

/// A lab VM with a chosen guest MAC (its tap gets libvirt's MAC for it).
fn vm(n: u8, mac: &str) -> VmSpec {
    VmSpec::new(
        &format!("vm{n}"),
        &format!("vnet{n}"),
        parse_mac(mac).unwrap(),
        Ipv4Addr::new(10, 77, 0, 10 + n),
    )
}

fn lab_of(tag: &str, vms: &[VmSpec]) -> Fixture {
    let mut spec = LabSpec::new(&lab::unique_prefix(tag));
    spec.vms = vms.to_vec();
    Fixture::from_spec(&spec)
}

/// `after_vm_start` of lab VM `n` with libvirt's live XML: its one vNIC on `NET`, tap named.
fn started(fx: &Fixture, n: u8, vm: &VmSpec, trusted: bool) {
    let nic = NicSpec {
        trusted,
        ..NicSpec::of_vm(vm, NET)
    };
    fx.run_vm_point("after_vm_start", n, domain_xml(&vm.name, &vm_uuid(n), &[nic]), &[]);
}

/// The attacker's vNIC 02:6f:1a:3e:00:07 and the trusted router's 56:6f:1a:3e:00:07 differ
/// only in the first byte: libvirt gives both taps fe:6f:1a:3e:00:07. Only the router's tap,
/// named by its live XML, opens; a trusted vNIC whose guest MAC starts with fe (tap fa:...)
/// opens too. Another VM's destroy, whose last XML lists the router's MAC, forgets nothing of
/// the router; the router's own destroy does.
#[test]
fn a_colliding_mac_never_opens_a_port() {
    if !lab::root_tests_enabled("a_colliding_mac_never_opens_a_port") {
        return;
    }
    let vms = [
        vm(1, "02:6f:1a:3e:00:07"),
        vm(2, "56:6f:1a:3e:00:07"),
        vm(3, "56:6f:4c:ab:00:03"),
        vm(4, "fe:6f:1a:3e:00:09"),
    ];
    let fx = lab_of("biid", &vms);
    fx.network_setup(&tagged("true"));
    fx.assert_isolated_ports(&["vnet1", "vnet2", "vnet3", "vnet4"]);

    started(&fx, 2, &vms[1], true);
    started(&fx, 1, &vms[0], false);
    started(&fx, 3, &vms[2], false);
    started(&fx, 4, &vms[3], true);
    fx.assert_isolated_ports(&["vnet1", "vnet3"]);
    fx.assert_isolation(&["vm2", "vm4"]);
    let trusted = &fx.state_json()["trusted_vnics"];
    assert_eq!(trusted[vm_uuid(2)][0]["tap"], json!("vnet2"), "{trusted}");
    assert_eq!(trusted[vm_uuid(4)][0]["tap"], json!("vnet4"), "{trusted}");
    assert!(trusted[vm_uuid(2)][0]["ifindex"].as_u64().is_some_and(|i| i > 0));

    // A root reconcile agrees; status names each trusted vNIC's tap.
    let out = fx.cli(&["reconcile"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fx.assert_isolated_ports(&["vnet1", "vnet3"]);
    let status = String::from_utf8_lossy(&fx.cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains(&format!(
            "trusted vNIC 56:6f:1a:3e:00:07 (VM vm2, {}) on tap vnet2",
            vm_uuid(2)
        )),
        "{status}"
    );

    // A VM that is gone, whose last XML had the router's MAC, takes nothing with it.
    let ghost = NicSpec::new(NET, vms[1].guest_mac);
    fx.run_vm_point("after_vm_destroy", 9, domain_xml("ghost", &vm_uuid(9), &[ghost]), &[]);
    fx.assert_isolated_ports(&["vnet1", "vnet3"]);
    fx.assert_isolation(&["vm2", "vm4"]);

    // The router's own destroy forgets it (its tap, still here in the lab, is isolated).
    let own = NicSpec::new(NET, vms[1].guest_mac);
    fx.run_vm_point("after_vm_destroy", 2, domain_xml("vm2", &vm_uuid(2), &[own]), &[]);
    fx.assert_isolated_ports(&["vnet1", "vnet2", "vnet3"]);
}

/// A state file of release 0.1.0 recorded trust by guest MAC. On upgrade, a record is
/// carried over to the one running tap with libvirt's MAC for it (the plain router vm3);
/// the record of 56:6f:1a:3e:00:07, which two taps match (the attacker's custom MAC
/// 02:6f:1a:3e:00:07 beside it), opens neither, with one warning; the router's next start
/// binds its tap by name.
#[test]
fn a_format_1_trust_record_is_carried_over_to_its_one_tap() {
    if !lab::root_tests_enabled("a_format_1_trust_record_is_carried_over_to_its_one_tap") {
        return;
    }
    let vms = [
        vm(1, "02:6f:1a:3e:00:07"),
        vm(2, "56:6f:1a:3e:00:07"),
        vm(3, "56:6f:4c:ab:00:03"),
        vm(5, "56:6f:4c:ab:00:05"),
    ];
    let fx = lab_of("biup", &vms);
    fx.network_setup(&tagged("true"));
    // What release 0.1.0 left: every port whose MAC matched a record opened (vnet1 too).
    for tap in ["vnet1", "vnet2", "vnet3"] {
        fx.lab.set_port_isolated(tap, false).unwrap();
    }
    let v1 = json!({
        "version": 1,
        "backend": "port-isolation",
        "networks": {NET: {"bridge": NET, "uplink": "eth1"}},
        "released": [],
        "trusted": {
            "56:6f:1a:3e:00:07": {"vm": vm_uuid(2)},
            "56:6f:4c:ab:00:03": {"vm": vm_uuid(3)},
        },
    });
    std::fs::write(fx.state_path(), serde_json::to_vec_pretty(&v1).unwrap()).unwrap();

    let out = fx.cli(&["reconcile"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("none opened")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("56:6f:1a:3e:00:07") && warnings[0].contains("vnet1, vnet2"),
        "{stderr}"
    );
    fx.assert_isolated_ports(&["vnet1", "vnet2", "vnet5"]);
    fx.assert_isolation(&["vm3"]);
    let state = fx.state_json();
    assert_eq!(state["version"], json!(2));
    assert!(state.get("trusted").is_none(), "{state}");
    assert_eq!(state["trusted_vnics"][vm_uuid(3)][0]["tap"], json!("vnet3"), "{state}");

    started(&fx, 2, &vms[1], true);
    fx.assert_isolated_ports(&["vnet1", "vnet5"]);
    fx.assert_isolation(&["vm2", "vm3"]);
}

/// A tap held open by a process started like libvirt's qemu (`-uuid VMID`), as a child of
/// this test: a shell waiting on its stdin, holding the tun descriptor as fd 3.
struct Qemu {
    child: Child,
}

impl Qemu {
    /// Creates tap `tap` in namespace `ns` and keeps it open in a process of VM `vm`.
    fn hold(ns: &str, tap: &str, vm: &str) -> Qemu {
        let netns = std::ffi::CString::new(format!("/run/netns/{ns}")).unwrap();
        let mut ifr = [0u8; 40];
        ifr[..tap.len()].copy_from_slice(tap.as_bytes());
        let flags: i16 = 0x0002 | 0x1000; // IFF_TAP | IFF_NO_PI
        ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", "read line", "/usr/libexec/qemu-kvm", "-uuid", vm])
            .stdin(Stdio::piped());
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let check = |r: libc::c_int| {
                    if r < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(r)
                    }
                };
                let ns = check(libc::open(netns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC))?;
                check(libc::setns(ns, libc::CLONE_NEWNET))?;
                let tun = check(libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR))?;
                const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
                check(libc::ioctl(tun, TUNSETIFF, ifr.as_mut_ptr()))?;
                check(libc::dup2(tun, 3))?;
                Ok(())
            });
        }
        Qemu {
            child: command.spawn().expect("starting the tap holder"),
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `after_nic_hotplug` names no tap: the hook proves which tap is the trusted vNIC's by the
/// VM's qemu process holding it (a real tap here), so the attacker's port with the same tap
/// MAC stays isolated; a trusted vNIC whose VM has no such process stays isolated too, with
/// one warning naming it.
#[test]
fn a_hotplugged_trusted_vnic_is_proven_by_its_qemu_process() {
    if !lab::root_tests_enabled("a_hotplugged_trusted_vnic_is_proven_by_its_qemu_process") {
        return;
    }
    let attacker = vm(8, "02:6f:4c:ab:00:09");
    let fx = lab_of("bihot", std::slice::from_ref(&attacker));
    fx.network_setup(&tagged("true"));
    fx.assert_isolated_ports(&["vnet8"]);

    let _qemu = Qemu::hold(fx.lab.host_ns(), "vnet9", &vm_uuid(9));
    fx.lab
        .ip_in_host(&[
            "link",
            "set",
            "vnet9",
            "address",
            "fe:6f:4c:ab:00:09",
            "master",
            NET,
            "up",
        ])
        .expect("plugging the tap");
    let router = NicSpec {
        trusted: true,
        ..NicSpec::new(NET, parse_mac("56:6f:4c:ab:00:09").unwrap())
    };
    let env = router.device_env();
    let xml = fx
        .run_vm_point("before_nic_hotplug", 9, interface_xml(&router), &env)
        .payload_text();
    assert!(!xml.contains("<port"), "a trusted vNIC gets no isolated port:\n{xml}");
    let run = fx.run_vm_point("after_nic_hotplug", 9, xml, &env);
    assert!(!run.stderr.contains("stays isolated"), "{}", run.stderr);
    fx.assert_isolated_ports(&["vnet8"]);
    let trusted = &fx.state_json()["trusted_vnics"][vm_uuid(9)];
    assert_eq!(trusted[0]["tap"], json!("vnet9"), "{trusted}");

    // The attacker's profile claims trust too, but no qemu of VM 8 holds a tap.
    let claim = NicSpec {
        trusted: true,
        ..NicSpec::new(NET, attacker.guest_mac)
    };
    let run = fx.run_vm_point("after_nic_hotplug", 8, interface_xml(&claim), &claim.device_env());
    let lines: Vec<&str> = run.stderr.lines().filter(|l| l.contains("stays isolated")).collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0].contains(&vm_uuid(8)) && lines[0].contains("02:6f:4c:ab:00:09"),
        "{}",
        run.stderr
    );
    fx.assert_isolated_ports(&["vnet8"]);
    assert!(fx.state_json()["trusted_vnics"].get(vm_uuid(8)).is_none());
}
