//! The hooks on a real kernel: each test builds a netns lab (docs/design.md §7), runs the
//! installed hook tree as VDSM runs it at each lifecycle point, emulates libvirt in between,
//! and checks the kernel's port flags and the reachability matrix. They need root; as
//! another user they skip (or fail under `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`).

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use bridge_isolation_lab::{self as lab, domain_xml, format_mac, interface_xml, LabSpec, NetSpec, NicSpec, Payload};
use common::{
    has_port_element, port_isolated_in, removed, tagged, untagged, vm_uuid, Fixture, Profile, NET, PLAIN, TRUSTED,
    UPLINK,
};
use serde_json::{json, Value};

/// Tagging the network of three running VMs isolates every VM port (not the uplink) and
/// blocks VM<->VM on every protocol while VM<->gateway/host passes; the restore-nets re-run
/// at boot changes no port flag and not one byte of state.json.
#[test]
fn tagging_isolates_running_vms_and_restore_nets_changes_nothing() {
    if !lab::root_tests_enabled("tagging_isolates_running_vms_and_restore_nets_changes_nothing") {
        return;
    }
    let fx = Fixture::new("bitag", 3);
    fx.assert_all_pass();

    fx.network_setup(&tagged("true"));
    fx.assert_isolated_ports(&["vnet1", "vnet2", "vnet3"]);
    fx.assert_isolation(&[]);
    assert_eq!(
        fx.state_json()["networks"],
        json!({ NET: { "bridge": NET, "uplink": UPLINK } })
    );

    let state = fx.state_bytes();
    let flags = fx.isolated_ports();
    let restore = lab::restore_nets_json(&[(NET, NetSpec::on_nic(UPLINK).with_isolation("true"))]);
    fx.network_setup(&restore);
    assert_eq!(fx.isolated_ports(), flags, "restore-nets changed port flags");
    assert_eq!(
        String::from_utf8_lossy(&fx.state_bytes()),
        String::from_utf8_lossy(&state),
        "restore-nets changed state.json"
    );
}

/// The uplink of a network on a VLAN of a bond is `bond0.100`: it stays open while the VM
/// ports are isolated, so the VMs still reach the gateway through it.
#[test]
fn vlan_uplink_on_a_bond_stays_open() {
    if !lab::root_tests_enabled("vlan_uplink_on_a_bond_stays_open") {
        return;
    }
    let mut spec = LabSpec::new(&lab::unique_prefix("bivlan")).with_vms(2);
    spec.uplink = "bond0.100".to_string();
    let fx = Fixture::from_spec(&spec);
    let net = NetSpec::on_bond("bond0").with_vlan(100).with_isolation("true");
    fx.network_setup(&lab::setup_networks_json(&[(NET, net)]));
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    assert_eq!(fx.state_json()["networks"][NET]["uplink"], json!("bond0.100"));
    fx.assert_isolation(&[]);
}

/// On a tagged network, `before_vm_start` adds `<port isolated="yes"/>` to a plain vNIC and
/// nothing else, leaves a trusted vNIC without it, and removes the engine's native one from
/// a trusted vNIC; the started VMs are isolated except the trusted ones, which reach every
/// VM. The admin CLI reports it (see [`assert_cli_reports_ports_and_drift`]).
#[test]
fn vm_start_isolates_plain_vnics_and_exempts_trusted_ones() {
    if !lab::root_tests_enabled("vm_start_isolates_plain_vnics_and_exempts_trusted_ones") {
        return;
    }
    let mut fx = Fixture::new("bistart", 0);
    fx.network_setup(&tagged("true"));

    let native = Profile {
        trusted: false,
        native_isolated: true,
    };
    let native_trusted = Profile {
        trusted: true,
        native_isolated: true,
    };
    let xml1 = fx.start_vm(1, PLAIN);
    assert!(port_isolated_in(&xml1), "vm1 not isolated:\n{xml1}");
    assert_eq!(xml1, fx.engine_domain(1, native), "only <port> may be added");
    fx.start_vm(2, PLAIN);
    let xml3 = fx.start_vm(3, TRUSTED);
    assert_eq!(
        xml3,
        fx.engine_domain(3, TRUSTED),
        "a trusted vNIC's XML stays as it was"
    );
    let xml4 = fx.start_vm(4, native_trusted);
    assert!(!has_port_element(&xml4), "native <port> kept on trusted vm4:\n{xml4}");
    assert_eq!(xml4, fx.engine_domain(4, TRUSTED), "only <port> may be removed");

    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    fx.assert_isolation(&["vm3", "vm4"]);

    assert_cli_reports_ports_and_drift(&fx);
}

/// The admin CLI on the lab of `vm_start_isolates_plain_vnics_and_exempts_trusted_ones`
/// (uplink eth1, VM ports vnet1-2, trusted vnet3-4): `status --json` gives every port its
/// role and state with no drift and lists the trusted vNICs, `verify` exits 0; once vnet1's
/// flag is cleared behind our back, `verify` exits 1 with one drift line naming vnet1.
fn assert_cli_reports_ports_and_drift(fx: &Fixture) {
    let report = fx.status_json();
    let bridge = &report["bridges"][0];
    assert_eq!(
        (bridge["network"].as_str(), bridge["uplink"].as_str()),
        (Some(NET), Some(UPLINK))
    );
    let ports: Vec<(String, String, bool, bool)> = bridge["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            let text = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            (text("port"), text("role"), p["isolated"] == true, p["drift"] == true)
        })
        .collect();
    let expected = [
        ("eth1", "uplink", false),
        ("vnet1", "vm", true),
        ("vnet2", "vm", true),
        ("vnet3", "trusted", false),
        ("vnet4", "trusted", false),
    ]
    .map(|(port, role, isolated)| (port.to_string(), role.to_string(), isolated, false));
    assert_eq!(ports, expected, "status --json:\n{report:#}");
    for n in [3, 4] {
        let mac = format_mac(fx.vm(n).guest_mac);
        assert!(
            report["trusted"]
                .as_array()
                .expect("trusted")
                .iter()
                .any(|t| t["mac"] == json!(mac) && t["vm"] == json!(vm_uuid(n)) && t["tap"] == json!(fx.vm(n).tap)),
            "vm{n} not listed as trusted:\n{report:#}"
        );
    }
    let verify = fx.cli(&["verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "verify: {}",
        String::from_utf8_lossy(&verify.stdout)
    );

    fx.lab.set_port_isolated("vnet1", false).expect("clearing vnet1's flag");
    let verify = fx.cli(&["verify"]);
    let out = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(verify.status.code(), Some(1), "verify missed the drift:\n{out}");
    let drifts: Vec<&str> = out.lines().filter(|l| l.starts_with("drift")).collect();
    assert_eq!(drifts.len(), 1, "{out}");
    assert!(drifts[0].contains("port vnet1 "), "{out}");
}

/// A vNIC hotplugged onto a tagged network gets `<port isolated="yes"/>` and an isolated
/// tap; a trusted one (device custom property) gets neither, but `after_nic_hotplug` names
/// no tap and the lab has no qemu process to prove which port is its (see tests/identity.rs
/// for that proof): its port is isolated, with one warning, until a hook whose live XML
/// names the tap (`after_update_device` here) records it; then it reaches both other VMs
/// while those two stay apart.
#[test]
fn hotplugged_vnics_follow_the_policy() {
    if !lab::root_tests_enabled("hotplugged_vnics_follow_the_policy") {
        return;
    }
    let mut fx = Fixture::new("bihot", 1);
    fx.network_setup(&tagged("true"));
    fx.assert_isolated_ports(&["vnet1"]);

    let xml2 = fx.hotplug(2, PLAIN);
    assert!(port_isolated_in(&xml2), "hotplugged vm2 not isolated:\n{xml2}");
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);

    let xml3 = fx.hotplug(3, TRUSTED);
    assert!(!has_port_element(&xml3), "trusted vm3 got a <port>:\n{xml3}");
    fx.assert_isolated_ports(&["vnet1", "vnet2", "vnet3"]);
    assert!(fx.trusted_records().is_empty());
    let nic = fx.engine_nic(3, TRUSTED);
    let live = NicSpec {
        tap: Some(fx.vm(3).tap),
        ..nic.clone()
    };
    fx.run_vm_point("after_update_device", 3, interface_xml(&live), &nic.device_env());
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    let mac3 = format_mac(fx.vm(3).guest_mac);
    assert_eq!(fx.trusted_records(), [(vm_uuid(3), mac3, "vnet3".to_string())]);
    fx.assert_isolation(&["vm3"]);
}

/// VDSM's updateDevice drops `<port>`, and with it the flag: the VMs reach each other.
/// `before_update_device` puts `<port isolated="yes"/>` back into the XML, and
/// `after_update_device` repairs the kernel flag, closing the hole.
#[test]
fn device_update_restores_a_dropped_flag() {
    if !lab::root_tests_enabled("device_update_restores_a_dropped_flag") {
        return;
    }
    let fx = Fixture::new("biupd", 2);
    fx.network_setup(&tagged("true"));
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);

    fx.lab.set_port_isolated("vnet1", false).expect("clearing vnet1's flag");
    fx.assert_all_pass();

    let update = interface_xml(&fx.engine_nic(1, PLAIN));
    assert!(!has_port_element(&update));
    let rewritten = fx.run_vm_point("before_update_device", 1, update, &[]).payload_text();
    assert!(
        port_isolated_in(&rewritten),
        "no <port> after before_update_device:\n{rewritten}"
    );
    fx.assert_isolated_ports(&["vnet2"]);

    fx.run_vm_point("after_update_device", 1, rewritten, &[]);
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    fx.assert_isolation(&[]);
}

/// Moving a trusted vNIC to an ordinary vNIC profile is an updateDevice whose device custom
/// properties (the new profile's, complete, as VDSM passes them) lack
/// `bridge_isolation_trusted`: the vNIC must lose its exemption, get `<port isolated="yes"/>`
/// and be isolated again.
#[test]
fn device_update_to_an_ordinary_profile_revokes_trust() {
    if !lab::root_tests_enabled("device_update_to_an_ordinary_profile_revokes_trust") {
        return;
    }
    let mut fx = Fixture::new("biprof", 0);
    fx.network_setup(&tagged("true"));
    fx.start_vm(1, PLAIN);
    fx.start_vm(2, TRUSTED);
    fx.assert_isolated_ports(&["vnet1"]);

    let ordinary = fx.engine_nic(2, PLAIN);
    let env = ordinary.device_env();
    assert!(env.is_empty());
    let rewritten = fx
        .run_vm_point("before_update_device", 2, interface_xml(&ordinary), &env)
        .payload_text();
    assert!(port_isolated_in(&rewritten), "vm2 keeps an open port:\n{rewritten}");
    fx.lab.set_port_isolated("vnet2", true).expect("libvirt applies <port>");
    fx.run_vm_point("after_update_device", 2, rewritten, &env);
    assert!(fx.trusted_records().is_empty(), "vm2 is still recorded as trusted");
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    fx.assert_isolation(&[]);
}

/// VMs arriving by migration get their taps without the flag (VDSM ignores hook output on
/// the way in): `after_vm_migrate_destination` isolates a plain one, and records and leaves
/// open a trusted one.
#[test]
fn migration_destination_isolates_arriving_vms() {
    if !lab::root_tests_enabled("migration_destination_isolates_arriving_vms") {
        return;
    }
    let mut fx = Fixture::new("bimig", 1);
    fx.network_setup(&tagged("true"));

    for (n, trusted) in [(2, false), (3, true)] {
        let vm = fx.vm(n);
        fx.lab.add_vm(&vm).expect("plugging the arriving VM");
        let live = NicSpec {
            trusted,
            ..NicSpec::of_vm(&vm, NET)
        };
        fx.run_vm_point(
            "after_vm_migrate_destination",
            n,
            domain_xml(&vm.name, &vm_uuid(n), &[live]),
            &[],
        );
    }
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    let mac3 = format_mac(fx.vm(3).guest_mac);
    assert_eq!(fx.trusted_records(), [(vm_uuid(3), mac3, "vnet3".to_string())]);
    fx.assert_isolation(&["vm3"]);
}

/// Lifting isolation (`bridge_isolation: "false"`, or the property gone) clears every flag
/// and VMs reach each other again; tagging again isolates again; removing the network
/// clears every flag and leaves no network and no pending bridge in state.json.
#[test]
fn untagging_and_removal_leave_no_residue() {
    if !lab::root_tests_enabled("untagging_and_removal_leave_no_residue") {
        return;
    }
    let fx = Fixture::new("biuntag", 2);
    for lift in [tagged("false"), untagged(), removed()] {
        fx.network_setup(&tagged("true"));
        fx.assert_isolated_ports(&["vnet1", "vnet2"]);
        fx.network_setup(&lift);
        fx.assert_isolated_ports(&[]);
        fx.assert_all_pass();
    }
    let state = fx.state_json();
    assert_eq!(state["networks"], json!({}), "{state:#}");
    assert_eq!(state["released"], json!([]), "{state:#}");
}

/// `before_network_setup` refuses what it cannot honour (a bad value, a non-bridged or an
/// OVS network) with exit 2 and one stderr line naming the network and the reason, so VDSM
/// aborts the setup; the payload, the state directory and the port flags stay untouched.
#[test]
fn invalid_requests_are_rejected_without_side_effects() {
    if !lab::root_tests_enabled("invalid_requests_are_rejected_without_side_effects") {
        return;
    }
    let fx = Fixture::new("bireject", 2);
    // A flag set by someone else (oVirt's native port_isolation): it must survive too.
    fx.lab.set_port_isolated("vnet2", true).expect("setting a flag");
    let flags = fx.isolated_ports();

    let with_attr = |key: &str, value: Value| {
        let mut request: Value = serde_json::from_str(&tagged("true")).expect("JSON");
        request["request"]["networks"][NET][key] = value;
        request.to_string()
    };
    let cases = [
        (tagged("maybe"), "\"maybe\""),
        (with_attr("bridged", json!(false)), "bridged"),
        (with_attr("switch", json!("ovs")), "ovs"),
    ];
    for (request, reason) in cases {
        let run = fx.run("before_network_setup", Payload::Json(request.clone()), &[]);
        assert_eq!(run.codes[0].1, 2, "{request}\nstderr: {}", run.stderr);
        let lines: Vec<&str> = run.last_stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{request}\nstderr: {}", run.last_stderr);
        assert!(
            lines[0].contains(&format!("network {NET}")) && lines[0].contains(reason),
            "stderr should name {NET} and {reason}: {}",
            lines[0]
        );
        assert!(!fx.state_path().exists(), "{request} created the state file");
        assert_eq!(fx.isolated_ports(), flags, "{request} changed port flags");
    }
}

/// `after_network_setup_fail` puts back the policy the failed request replaced (no
/// isolation, or isolation), and `after_vm_destroy` forgets the VM's trusted vNIC.
#[test]
fn failed_setups_roll_back_and_destroyed_vms_are_forgotten() {
    if !lab::root_tests_enabled("failed_setups_roll_back_and_destroyed_vms_are_forgotten") {
        return;
    }
    let mut fx = Fixture::new("bifail", 2);
    let fail = |json: String| {
        fx.run_ok("before_network_setup", Payload::Json(json.clone()), &[]);
        let before = fx.isolated_ports();
        fx.run_ok("after_network_setup_fail", Payload::Json(json), &[]);
        before
    };

    let during = fail(tagged("true"));
    assert_eq!(
        Vec::from_iter(during),
        ["vnet1", "vnet2"],
        "before_network_setup applies at once"
    );
    fx.assert_isolated_ports(&[]);
    assert_eq!(fx.state_json()["networks"], json!({}));
    fx.assert_all_pass();

    fx.network_setup(&tagged("true"));
    let during = fail(tagged("false"));
    assert!(during.is_empty(), "before_network_setup lifts at once: {during:?}");
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);

    fx.start_vm(3, TRUSTED);
    let vm3 = fx.vm(3);
    let mac3 = format_mac(vm3.guest_mac);
    assert_eq!(fx.trusted_records(), [(vm_uuid(3), mac3, "vnet3".to_string())]);
    fx.lab.remove_vm("vm3").expect("removing vm3's tap");
    let last_xml = domain_xml(
        &vm3.name,
        &vm_uuid(3),
        &[NicSpec {
            trusted: true,
            ..NicSpec::of_vm(&vm3, NET)
        }],
    );
    fx.run_vm_point("after_vm_destroy", 3, last_xml, &[]);
    assert!(fx.trusted_records().is_empty(), "vm3's record survived");
}
