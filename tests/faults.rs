//! Failure paths on a real kernel (issue 13, items 2, 3, 5 and 6): a pending setup record
//! restores only the request that made it; a network moving to another uplink keeps its
//! gateway during the setup; a read-only state directory does not abort setups that change
//! no isolated network; a trusted vNIC opens only once its record is on disk; `verify`
//! says when the recorded uplink left its bridge. Needs root; skips otherwise.

#[allow(dead_code)]
mod common;

use bridge_isolation_lab::{self as lab, NetSpec};
use common::{tagged, vm_uuid, Finished, Fixture, NET, TRUSTED, UPLINK};
use serde_json::json;

/// A setup request for `NET` on `nic`, tagged `value`.
fn on_nic(nic: &str, value: &str) -> String {
    lab::setup_networks_json(&[(NET, NetSpec::on_nic(nic).with_isolation(value))])
}

/// A request for another network, not tagged.
fn unrelated() -> String {
    lab::setup_networks_json(&[("other", NetSpec::on_nic("eth7"))])
}

/// Runs `point` as a grandchild of the test (another runner than the other hooks' parent):
/// a forked shell runs it, as after a supervdsm restart the hooks have another parent.
fn from_another_runner(fx: &Fixture, point: &str, json: &str) -> Finished {
    fx.run_scripted(point, json.as_bytes(), &[], "\"$0\"; exit $?")
}

/// A `before_network_setup` whose `after_network_setup` never ran (supervdsm died between
/// them) leaves a pending record. A later failed setup of another request (VDSM runs
/// after_network_setup_fail even when its own validation failed before any before hook), or
/// of the same request under another runner, does not replay it: the network stays
/// isolated and `verify` agrees. The failure of the very setup that made it restores it.
#[test]
fn a_stale_pending_record_is_never_replayed() {
    if !lab::root_tests_enabled("a_stale_pending_record_is_never_replayed") {
        return;
    }
    let fx = Fixture::new("bistale", 2);
    let tag = tagged("true");
    fx.run_ok("before_network_setup", lab::Payload::Json(tag.clone()), &[]);
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    assert!(fx.state_json()["setup"]["previous"].get(NET).is_some());

    let run = fx.run("after_network_setup_fail", lab::Payload::Json(unrelated()), &[]);
    assert_eq!(run.codes[0].1, 0, "{}", run.stderr);
    assert!(run.stderr.contains("dropped, not replayed"), "{}", run.stderr);
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    fx.assert_isolation(&[]);
    assert!(
        fx.state_json().get("setup").is_none(),
        "the record outlived the next setup"
    );
    assert!(fx.cli(&["verify"]).status.success());

    // The same request, failing under another runner: not replayed either.
    fx.run_ok("before_network_setup", lab::Payload::Json(tag.clone()), &[]);
    let run = from_another_runner(&fx, "after_network_setup_fail", &tag);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(fx.state_json()["networks"][NET]["uplink"], json!(UPLINK));
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);

    // An untag whose own setup fails is restored (the network stays isolated) ...
    let untag = tagged("false");
    fx.run_ok("before_network_setup", lab::Payload::Json(untag.clone()), &[]);
    fx.assert_isolated_ports(&[]);
    fx.run_ok("after_network_setup_fail", lab::Payload::Json(untag.clone()), &[]);
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    // ... and a tag whose own setup fails is taken back.
    let fx2 = Fixture::new("bistal2", 1);
    fx2.run_ok("before_network_setup", lab::Payload::Json(tag.clone()), &[]);
    fx2.run_ok("after_network_setup_fail", lab::Payload::Json(tag), &[]);
    fx2.assert_isolated_ports(&[]);
}

/// Moving the network from eth1 to eth2: until after_network_setup, the old uplink (still
/// in the bridge) stays open, so the VMs keep the gateway; once VDSM has re-plumbed (the
/// lab renames the port) the new uplink is open and nothing else changed.
#[test]
fn an_uplink_move_keeps_the_gateway_during_the_setup() {
    if !lab::root_tests_enabled("an_uplink_move_keeps_the_gateway_during_the_setup") {
        return;
    }
    let fx = Fixture::new("bimove", 2);
    fx.network_setup(&tagged("true"));
    let moved = on_nic("eth2", "true");
    fx.run_ok("before_network_setup", lab::Payload::Json(moved.clone()), &[]);
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    fx.assert_isolation(&[]);
    for args in [
        &["link", "set", UPLINK, "down"][..],
        &["link", "set", UPLINK, "name", "eth2"],
        &["link", "set", "eth2", "up"],
    ] {
        fx.lab.ip_in_host(args).unwrap();
    }
    fx.run_ok("after_network_setup", lab::Payload::Json(moved), &[]);
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    assert_eq!(fx.state_json()["networks"][NET]["uplink"], json!("eth2"));
    assert!(fx.state_json().get("setup").is_none());
    fx.assert_isolation(&[]);
    assert!(fx.cli(&["verify"]).status.success());
}

/// A recorded uplink that is no longer a port of its bridge (the NIC behind it renamed or
/// replaced without a setup): the port leading to the gateway now is isolated as a VM port,
/// and `verify` exits 1 and says why instead of "ok".
#[test]
fn verify_says_when_the_recorded_uplink_left_the_bridge() {
    if !lab::root_tests_enabled("verify_says_when_the_recorded_uplink_left_the_bridge") {
        return;
    }
    let fx = Fixture::new("biupl", 1);
    fx.network_setup(&tagged("true"));
    for args in [
        &["link", "set", UPLINK, "down"][..],
        &["link", "set", UPLINK, "name", "eth3"],
        &["link", "set", "eth3", "up"],
    ] {
        fx.lab.ip_in_host(args).unwrap();
    }
    assert!(fx.cli(&["reconcile"]).status.success());
    let verify = fx.cli(&["verify"]);
    let out = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(verify.status.code(), Some(1), "{out}");
    assert!(
        out.contains("uplink: bridge isonet has no port eth1, the uplink recorded for network isonet"),
        "{out}"
    );
}

/// The state directory read-only (a bind mount in the hook's own mount namespace): a setup
/// that changes no isolated network goes on (exit 0, one warning at most); one that would
/// change an isolated network is aborted with one line, as it cannot be recorded.
#[test]
fn a_read_only_state_directory_aborts_only_setups_it_must_record() {
    if !lab::root_tests_enabled("a_read_only_state_directory_aborts_only_setups_it_must_record") {
        return;
    }
    let fx = Fixture::new("biro", 1);
    fx.network_setup(&tagged("true"));
    let dir = fx.state_dir().display().to_string();
    let read_only =
        format!("/usr/bin/mount --bind {dir} {dir} && /usr/bin/mount -o remount,bind,ro {dir} && exec \"$0\"");
    let state = fx.state_bytes();
    let run = fx.run_scripted("before_network_setup", unrelated().as_bytes(), &[], &read_only);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let untag = tagged("false");
    let run = fx.run_scripted("before_network_setup", untag.as_bytes(), &[], &read_only);
    assert_eq!(run.code(), Some(2), "{}", run.stderr);
    assert_eq!(run.lines().len(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("Read-only file system"), "{}", run.stderr);
    assert_eq!(fx.state_bytes(), state);
    fx.assert_isolated_ports(&["vnet1"]);
}

/// The state directory full (a tiny tmpfs, filled): a trusted vNIC whose record cannot be
/// written is not opened; libvirt brought it up open (no `<port isolated>` for a trusted
/// vNIC), so the hook isolates it and fails with one line; with room again, it opens.
#[test]
fn a_trusted_vnic_opens_only_once_its_record_is_written() {
    if !lab::root_tests_enabled("a_trusted_vnic_opens_only_once_its_record_is_written") {
        return;
    }
    let mut fx = Fixture::new("bifull", 0);
    fx.network_setup(&tagged("true"));
    fx.start_vm(1, common::PLAIN);
    let dir = fx.state_dir().display().to_string();
    // Copy the state into a 64 KiB tmpfs over the directory and fill it, then start the VM.
    let full = format!(
        "/usr/bin/cp -a {dir} /run/bifull-$$ && /usr/bin/mount -t tmpfs -o size=64k,mode=0755 tmpfs {dir} \
         && /usr/bin/cp -a /run/bifull-$$/. {dir}/ && /usr/bin/rm -rf /run/bifull-$$ \
         && (/usr/bin/dd if=/dev/zero of={dir}/.fill bs=4k 2>/dev/null; true) && exec \"$0\""
    );
    let vm = fx.vm(2);
    fx.lab.add_vm(&vm).unwrap();
    fx.assert_isolated_ports(&["vnet1"]);
    let live = bridge_isolation_lab::domain_xml(
        &vm.name,
        &vm_uuid(2),
        &[bridge_isolation_lab::NicSpec {
            tap: Some(vm.tap.clone()),
            ..fx.engine_nic(2, TRUSTED)
        }],
    );
    let env = [("vmId".to_string(), vm_uuid(2))];
    let run = fx.run_scripted("after_vm_start", live.as_bytes(), &env, &full);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("No space left on device"), "{}", run.stderr);
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    assert!(fx.state_json().get("trusted_vnics").is_none());

    fx.run_vm_point("after_vm_start", 2, live, &[]);
    fx.assert_isolated_ports(&["vnet1"]);
    fx.assert_isolation(&["vm2"]);
}
