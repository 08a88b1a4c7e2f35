//! vNICs that do not plug a tap into the bridge, on a real kernel: a macvtap (`direct`) or an
//! SR-IOV VF (`hostdev`) on an isolated network bypasses the bridge and is refused at the
//! `before_*` points (or warned about under `on_failure = warn`); a `type='network'` vNIC on
//! VDSM's libvirt network of an isolated network is a bridge port like any other. They need
//! root; as another user they skip (or fail under `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`).

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use bridge_isolation_lab::{self as lab, domain_xml, format_mac, interface_xml, NicKind, NicSpec, Payload};
use common::{port_isolated_in, tagged, vm_uuid, Fixture, PLAIN, UPLINK};

/// A VF of the uplink's NIC, as the engine names it by PCI address.
const VF: &str = "0000:05:10.7";

/// VM `n`'s vNIC on the isolated network, plugged in as `kind`.
fn nic(fx: &Fixture, n: u8, kind: NicKind) -> NicSpec {
    NicSpec {
        kind,
        ..fx.engine_nic(n, PLAIN)
    }
}

/// Runs `point` for VM `n` on `xml` with `extra` env; returns the run, asserting our hook ran.
fn run(fx: &Fixture, point: &str, n: u8, xml: &str, extra: &[(String, String)]) -> lab::HookRun {
    let mut env = vec![("vmId".to_string(), vm_uuid(n))];
    env.extend_from_slice(extra);
    fx.run(point, Payload::DomXml(xml.to_string()), &env)
}

/// Asserts `run` refused VM `n`'s vNIC: exit 2, one stderr line naming the VM, the MAC,
/// the network and why, and the payload untouched.
#[track_caller]
fn assert_refused(fx: &Fixture, run: &lab::HookRun, n: u8, xml: &str, how: &str) {
    assert_eq!(run.codes[0].1, 2, "not refused:\n{}", run.stderr);
    let lines: Vec<&str> = run.last_stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", run.last_stderr);
    let mac = format_mac(fx.vm(n).guest_mac);
    let network = format!("network {}", common::NET);
    for part in [vm_uuid(n).as_str(), &mac, &network, how, "bypasses bridge"] {
        assert!(lines[0].contains(part), "{part:?} missing from: {}", lines[0]);
    }
    assert_eq!(run.payload_text(), xml, "a refused payload must stay as it was");
}

/// A fake `/sys/bus/pci/devices` where [`VF`] is a virtual function of the uplink NIC
/// (the lab has no SR-IOV hardware), passed to the hooks as root may.
fn fake_vf(fx: &Fixture) -> Vec<(String, String)> {
    let root = fx.state_dir().join("pci");
    std::fs::create_dir_all(root.join(VF).join("physfn/net").join(UPLINK)).expect("creating the fake VF");
    vec![(
        "BRIDGE_ISOLATION_SYS_PCI".to_string(),
        root.to_string_lossy().into_owned(),
    )]
}

/// Under `on_failure = block` (the default), a `direct` vNIC on the uplink and a `hostdev`
/// vNIC that VDSM's metadata puts on the isolated network stop the VM start with exit 2 and
/// one line; their hotplug and update are stopped too (the VF then known by its physical
/// function, the uplink NIC). The other VM ports stay isolated.
#[test]
fn bypassing_vnics_are_refused_at_start_and_hotplug() {
    if !lab::root_tests_enabled("bypassing_vnics_are_refused_at_start_and_hotplug") {
        return;
    }
    let fx = Fixture::new("bibyp", 1);
    fx.network_setup(&tagged("true"));
    for (kind, how) in [
        (
            NicKind::Direct(UPLINK.to_string()),
            format!("macvtap (type 'direct') on {UPLINK}"),
        ),
        (
            NicKind::Hostdev(VF.to_string()),
            format!("SR-IOV VF (type 'hostdev') {VF}"),
        ),
    ] {
        let vnic = nic(&fx, 2, kind.clone());
        let xml = domain_xml(&fx.vm(2).name, &vm_uuid(2), std::slice::from_ref(&vnic));
        let start = run(&fx, "before_vm_start", 2, &xml, &[]);
        assert_refused(&fx, &start, 2, &xml, &how);
        let one = interface_xml(&vnic);
        let env = fake_vf(&fx);
        let hotplug = run(&fx, "before_nic_hotplug", 2, &one, &env);
        assert_refused(&fx, &hotplug, 2, &one, &how);
        let update = run(&fx, "before_update_device", 2, &one, &env);
        assert_refused(&fx, &update, 2, &one, &how);
    }
    fx.assert_isolated_ports(&["vnet1"]);
}

/// Under `on_failure = warn` the same vNICs pass (exit 0, payload unchanged) with one
/// warning naming them.
#[test]
fn bypassing_vnics_pass_with_a_warning_under_warn() {
    if !lab::root_tests_enabled("bypassing_vnics_pass_with_a_warning_under_warn") {
        return;
    }
    let fx = Fixture::new("bibypw", 0);
    fx.network_setup(&tagged("true"));
    let conf = fx.state_dir().join("warn.conf");
    std::fs::write(&conf, "on_failure = warn\n").expect("writing the config");
    let warn = [(
        "BRIDGE_ISOLATION_CONFIG".to_string(),
        conf.to_string_lossy().into_owned(),
    )];
    let direct = nic(&fx, 2, NicKind::Direct(UPLINK.to_string()));
    let hostdev = nic(&fx, 3, NicKind::Hostdev(VF.to_string()));
    let cases = [
        (
            "before_vm_start",
            2,
            domain_xml(&fx.vm(2).name, &vm_uuid(2), std::slice::from_ref(&direct)),
        ),
        (
            "before_vm_start",
            3,
            domain_xml(&fx.vm(3).name, &vm_uuid(3), std::slice::from_ref(&hostdev)),
        ),
        ("before_nic_hotplug", 2, interface_xml(&direct)),
        ("before_nic_hotplug", 3, interface_xml(&hostdev)),
    ];
    let warn = [warn.as_slice(), &fake_vf(&fx)].concat();
    for (point, n, xml) in cases {
        let run = run(&fx, point, n, &xml, &warn);
        assert_eq!(run.codes[0].1, 0, "{point}: {}", run.stderr);
        assert_eq!(run.payload_text(), xml, "{point} changed the payload");
        let warnings: Vec<&str> = run.stderr.lines().filter(|l| l.contains("bypasses bridge")).collect();
        assert_eq!(warnings.len(), 1, "{point}: {}", run.stderr);
        assert!(
            warnings[0].contains("on_failure = warn") && warnings[0].contains(&format_mac(fx.vm(n).guest_mac)),
            "{}",
            warnings[0]
        );
    }
}

/// A `type='network'` vNIC on VDSM's libvirt network `vdsm-<net>` of an isolated network
/// gets `<port isolated="yes"/>` at `before_vm_start` (whose XML names no bridge), and its
/// port is isolated and reconciled from the live XML (`<source network=... bridge=...>`) at
/// `after_vm_start`: VM<->VM blocked on every protocol, the gateway and host reachable.
#[test]
fn libvirt_network_vnics_are_isolated_like_bridge_ones() {
    if !lab::root_tests_enabled("libvirt_network_vnics_are_isolated_like_bridge_ones") {
        return;
    }
    let mut fx = Fixture::new("bilvn", 0);
    fx.network_setup(&tagged("true"));
    for n in [1, 2] {
        let vnic = nic(&fx, n, NicKind::Network);
        let engine = domain_xml(&fx.vm(n).name, &vm_uuid(n), std::slice::from_ref(&vnic));
        assert!(engine.contains("<source network=\"vdsm-isonet\"/>"), "{engine}");
        let rewritten = fx.run_vm_point("before_vm_start", n, engine, &[]).payload_text();
        assert!(port_isolated_in(&rewritten), "vm{n} not isolated:\n{rewritten}");
        // libvirt creates the tap without the flag here: after_vm_start must set it.
        let vm = fx.vm(n);
        fx.lab.add_vm(&vm).expect("plugging the VM");
        let live = NicSpec {
            tap: Some(vm.tap.clone()),
            ..vnic
        };
        let live_xml = domain_xml(&vm.name, &vm_uuid(n), &[live]);
        assert!(
            live_xml.contains("<source network='vdsm-isonet' bridge='isonet'/>"),
            "{live_xml}"
        );
        fx.run_vm_point("after_vm_start", n, live_xml, &[]);
    }
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    fx.assert_isolation(&[]);
}
