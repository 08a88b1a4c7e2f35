//! Adoption of VDSM's running network config on a real kernel: a network VDSM tags that the
//! state lacks (the package installed after the tag, a lost state file) is isolated by the
//! next reconcile; one VDSM has untagged or removed is lifted; until then `status` shows the
//! disagreement and `verify` exits 1 naming it. No VDSM config changes nothing. They need
//! root; as another user they skip (or fail under `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`).

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use bridge_isolation_lab::{self as lab, NetSpec, Payload};
use std::time::Duration;

use common::{removed, tagged, untagged, wait_until, Fixture, Watcher, NET, PLAIN, UPLINK};
use serde_json::Value;

/// `verify`'s exit code and output.
fn verify(fx: &Fixture) -> (Option<i32>, String) {
    let out = fx.cli(&["verify"]);
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `reconcile`, asserting it succeeds.
fn reconcile(fx: &Fixture) {
    let out = fx.cli(&["reconcile"]);
    assert!(
        out.status.success(),
        "reconcile: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The kinds of disagreement `status --json` reports with VDSM's running config.
fn disagreements(fx: &Fixture) -> Vec<(String, String)> {
    let report = fx.status_json();
    report["vdsm"]["disagreements"]
        .as_array()
        .unwrap_or_else(|| panic!("status --json has vdsm.disagreements: {report:#}"))
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_string(),
                d["network"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A network tagged in VDSM's running config while the state knows nothing of it: `status`
/// and `verify` name it, the VMs still reach each other, and `reconcile` adopts it (every
/// protocol blocked between VMs, the gateway and the host reachable). Untagged in VDSM's
/// config, then removed from it, it is lifted the same way.
#[test]
fn reconcile_adopts_tag_untag_and_removal_from_vdsm_running_config() {
    if !lab::root_tests_enabled("reconcile_adopts_tag_untag_and_removal_from_vdsm_running_config") {
        return;
    }
    let fx = Fixture::new("biadopt", 3);
    // Tagged by the engine while the package was absent: only VDSM's config knows.
    fx.write_vdsm_config(&tagged("true"));
    assert_eq!(disagreements(&fx), [("untracked".to_string(), NET.to_string())]);
    let (code, out) = verify(&fx);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "vdsm: network {NET}: tagged bridge_isolation=true in VDSM's running config, bridge {NET} not isolated here"
        )),
        "{out}"
    );
    fx.assert_all_pass();

    reconcile(&fx);
    fx.assert_isolation(&[]);
    let state = fx.state_json();
    assert_eq!(state["networks"][NET]["uplink"], UPLINK, "{state:#}");
    assert!(disagreements(&fx).is_empty());
    assert_eq!(verify(&fx).0, Some(0));

    // The engine drops the property: VDSM's config has the network untagged.
    fx.write_vdsm_config(&untagged());
    assert_eq!(disagreements(&fx), [("stale".to_string(), NET.to_string())]);
    let (code, out) = verify(&fx);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not tagged in VDSM's running config"), "{out}");
    fx.assert_isolation(&[]);
    reconcile(&fx);
    fx.assert_all_pass();
    assert!(fx.isolated_ports().is_empty());
    assert_eq!(verify(&fx).0, Some(0));

    // Tagged again, adopted, then the network is removed from the host.
    fx.write_vdsm_config(&tagged("true"));
    reconcile(&fx);
    fx.assert_isolation(&[]);
    fx.write_vdsm_config(&removed());
    let (code, out) = verify(&fx);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("gone from VDSM's running config"), "{out}");
    reconcile(&fx);
    fx.assert_all_pass();
    assert_eq!(fx.state_json()["networks"], serde_json::json!({}));
}

/// The cross-host properties come with the adopted network (peer ranges here), and a root
/// VM hook adopts as the CLI does: the VM start after the tag isolates the network.
#[test]
fn a_vm_hook_adopts_the_network_with_its_peer_ranges() {
    if !lab::root_tests_enabled("a_vm_hook_adopts_the_network_with_its_peer_ranges") {
        return;
    }
    let mut fx = Fixture::new("biadoptvm", 2);
    let peers = "02:00:00:00:10:00-02:00:00:00:10:ff";
    let net = NetSpec::on_nic(UPLINK)
        .with_isolation("true")
        .with_custom("bridge_isolation_peer_macs", peers);
    fx.write_vdsm_config(&lab::setup_networks_json(&[(NET, net)]));
    fx.start_vm(3, PLAIN);
    fx.assert_isolation(&[]);
    let state = fx.state_json();
    assert_eq!(
        state["networks"][NET]["peer_macs"],
        serde_json::json!([peers]),
        "{state:#}"
    );
    assert_eq!(verify(&fx).0, Some(0));
}

/// Without VDSM's running config (not an oVirt host, the lab) nothing is adopted or lifted:
/// a network the hooks isolated stays isolated through a reconcile, and `status` says there
/// is no VDSM config.
#[test]
fn no_vdsm_config_changes_nothing() {
    if !lab::root_tests_enabled("no_vdsm_config_changes_nothing") {
        return;
    }
    let fx = Fixture::new("binoconf", 2);
    fx.network_setup(&tagged("true"));
    let before = fx.state_bytes();
    reconcile(&fx);
    assert_eq!(fx.state_bytes(), before);
    fx.assert_isolation(&[]);
    let report = fx.status_json();
    assert_eq!(report["vdsm"]["config"], Value::Null, "{report:#}");
    assert_eq!(verify(&fx).0, Some(0));
}

/// A network whose VDSM config cannot be judged (an invalid property value) stays as
/// recorded: isolated, and `verify` names the file; a network setup in VDSM's order
/// (before_network_setup, VDSM writes its config, after_network_setup) leaves nothing to
/// adopt.
#[test]
fn an_invalid_vdsm_entry_lifts_nothing_and_hooks_keep_in_step() {
    if !lab::root_tests_enabled("an_invalid_vdsm_entry_lifts_nothing_and_hooks_keep_in_step") {
        return;
    }
    let fx = Fixture::new("biadoptbad", 2);
    let json = tagged("true");
    fx.run_ok("before_network_setup", Payload::Json(json.clone()), &[]);
    fx.write_vdsm_config(&json);
    fx.run_ok("after_network_setup", Payload::Json(json), &[]);
    assert!(disagreements(&fx).is_empty());
    assert_eq!(verify(&fx).0, Some(0));

    fx.write_vdsm_config(&tagged("yes"));
    let (code, out) = verify(&fx);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("vdsm: network {NET}: VDSM's running config cannot be judged")),
        "{out}"
    );
    reconcile(&fx);
    fx.assert_isolation(&[]);
    // A VM hook's reconcile keeps it too.
    fx.run_vm_point("after_vm_destroy", 1, fx.engine_domain(1, PLAIN), &[]);
    fx.assert_isolation(&[]);
}

/// The watcher adopts too: started on a host whose state knows nothing while VDSM's config
/// tags the network (the package just installed), it isolates the VM ports at once, with
/// no hook and no `reconcile`; `status` then shows it running and nothing to adopt.
#[test]
fn the_watcher_adopts_at_its_start() {
    if !lab::root_tests_enabled("the_watcher_adopts_at_its_start") {
        return;
    }
    let fx = Fixture::new("biadoptw", 2);
    fx.write_vdsm_config(&tagged("true"));
    fx.assert_all_pass();
    let _watcher = Watcher::start(&fx, &["watch"], &[]);
    wait_until("the watcher isolates vnet1 and vnet2", Duration::from_secs(10), || {
        fx.isolated_ports().len() == 2
    });
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    fx.assert_isolation(&[]);
    let report = fx.status_json();
    assert_eq!(report["watcher"]["running"], true, "{report:#}");
    assert!(disagreements(&fx).is_empty());
}
