//! The nftables backend on a real kernel: the core reachability matrix, unchanged, with
//! `BRIDGE_ISOLATION_BACKEND=nftables`; restore-nets leaves the table as it was (same
//! handles, same rules); lifting and removing leave no residue; the backend hands over to
//! port-isolation and back. They need root; as another user they skip (or fail under
//! `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`).

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use std::collections::BTreeSet;

use bridge_isolation::enforce::nftables::{chain_name, set_name, GROUP, MAP, TABLE};
use bridge_isolation_lab::{self as lab, Payload};
use common::backend::{names, nft_map_entries as map_entries, nft_members as members, nft_objects as objects};
use common::backend::{ok, without_counters, Backend};
use common::{restored, tagged, Fixture, NET, PLAIN, TRUSTED, UPLINK};
use serde_json::{json, Value};

/// Each port of `ports` sent to the lab bridge's chain.
fn to_chain(ports: &[&str]) -> BTreeSet<(String, String)> {
    ports.iter().map(|p| (p.to_string(), chain_name(NET))).collect()
}

/// Tagging the network of three running VMs puts their ports (not the uplink) in the
/// bridge's set and the port map, sets no port flag, and blocks VM<->VM on every protocol
/// while VM<->gateway/host passes. Restore-nets and `reconcile` change nothing in the table
/// (same handles, one rule in `forward` and one in the bridge's chain). A tap recreated under
/// the same name is drift until reconciled.
#[test]
fn nftables_isolates_running_vms_and_restore_nets_changes_nothing() {
    if !lab::root_tests_enabled("nftables_isolates_running_vms_and_restore_nets_changes_nothing") {
        return;
    }
    let fx = Fixture::with_backend("bint", 3, Backend::Nftables);
    fx.assert_all_pass();
    assert_eq!(fx.nft_table(), None);

    fx.network_setup(&tagged("true"));
    assert_eq!(fx.state_json()["backend"], json!("nftables"));
    assert_eq!(fx.isolated_ports(), names(&[]));
    let listed = fx.nft_table().expect("our table exists");
    assert_eq!(members(&listed), names(&["vnet1", "vnet2", "vnet3"]));
    assert_eq!(map_entries(&listed), to_chain(&["vnet1", "vnet2", "vnet3"]));
    let rules = objects(&listed, "rule");
    assert_eq!(rules.len(), 2, "{listed:#}");
    assert_eq!(rules[0]["expr"], gated_dispatch(), "{listed:#}");
    assert_eq!(rules[1]["chain"], json!(chain_name(NET)), "{listed:#}");
    assert_eq!(objects(&listed, "chain").len(), 2, "{listed:#}");
    assert_eq!(
        fx.grouped_ports(),
        names(&["vnet1", "vnet2", "vnet3"]),
        "the gate's group"
    );
    fx.assert_isolation(&[]);

    let before = without_counters(listed);
    let state = fx.state_json();
    fx.network_setup(&restored("true"));
    assert_eq!(
        without_counters(fx.nft_table().unwrap()),
        before,
        "restore-nets changed the table"
    );
    assert_eq!(fx.state_json(), state, "restore-nets changed the state");
    let out = ok(fx.cli(&["reconcile"]));
    assert_eq!(out.trim(), "nftables: 0 port(s) changed");
    assert_eq!(
        without_counters(fx.nft_table().unwrap()),
        before,
        "reconcile changed the table"
    );
    ok(fx.cli(&["verify"]));

    // A new tap under an old name has a new index: the set no longer holds it.
    fx.lab.recreate_port("vm2").expect("recreating vnet2");
    let stale = members(&fx.nft_table().unwrap());
    assert!(!stale.contains("vnet2"), "{stale:?}");
    assert_eq!(stale.len(), 3, "the old index stays, unnamed: {stale:?}");
    let verify = fx.cli(&["verify"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("port vnet2"));
    let out = ok(fx.cli(&["reconcile"]));
    assert_eq!(out.trim(), "nftables: 1 port(s) changed");
    let listed = fx.nft_table().unwrap();
    assert_eq!(members(&listed), names(&["vnet1", "vnet2", "vnet3"]));
    assert_eq!(map_entries(&listed), to_chain(&["vnet1", "vnet2", "vnet3"]));
    assert_eq!(fx.grouped_ports(), names(&["vnet1", "vnet2", "vnet3"]));
    fx.assert_isolation(&[]);

    // The group is half of the enforcement: a port taken out of it is open (to and from the
    // others) and reported, and put back by the next reconcile; the uplink put in it by
    // someone else isolates nothing (the map decides) and is taken out.
    fx.lab.set_port_group("vnet3", 0).expect("ungrouping vnet3");
    fx.lab.set_port_group(UPLINK, GROUP).expect("grouping the uplink");
    fx.assert_isolation(&["vm3"]);
    let verify = fx.cli(&["verify"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("port vnet3"));
    assert_eq!(ok(fx.cli(&["reconcile"])).trim(), "nftables: 1 port(s) changed");
    assert_eq!(fx.grouped_ports(), names(&["vnet1", "vnet2", "vnet3"]));
    assert_eq!(fx.lab.port_group(UPLINK).unwrap(), 0);
    fx.assert_isolation(&[]);
}

/// The dispatch rule as `nft -j list` prints it: the group gate, then the map.
fn gated_dispatch() -> Value {
    json!([
        {"match": {"op": "==", "left": {"meta": {"key": "oifgroup"}}, "right": GROUP}},
        {"match": {"op": "==", "left": {"meta": {"key": "iifgroup"}}, "right": GROUP}},
        {"vmap": {"key": {"meta": {"key": "oif"}}, "data": "@ports"}}
    ])
}

/// VMs started through the hooks: a trusted vNIC stays out of the set and the map and reaches
/// every VM; the others are kept apart by the rules alone (the flags libvirt set from the
/// rewritten XML cleared behind our back). A VM start adds elements only: the rules, their
/// handles and counters stay. `status` shows the bridge's drop counter, in text and JSON.
#[test]
fn nftables_trusted_vnic_stays_open_and_status_counts_drops() {
    if !lab::root_tests_enabled("nftables_trusted_vnic_stays_open_and_status_counts_drops") {
        return;
    }
    let mut fx = Fixture::with_backend("bintr", 0, Backend::Nftables);
    fx.network_setup(&tagged("true"));
    fx.start_vm(1, PLAIN);
    let rules = |v: &Value| without_counters(json!(objects(v, "rule")));
    let before = rules(&fx.nft_table().unwrap());
    fx.start_vm(2, PLAIN);
    fx.start_vm(3, TRUSTED);
    assert_eq!(
        fx.enforced_ports(),
        names(&["vnet1", "vnet2"]),
        "what the backend enforces"
    );
    let listed = fx.nft_table().unwrap();
    assert_eq!(rules(&listed), before, "a VM start changed a rule");
    assert_eq!(members(&listed), names(&["vnet1", "vnet2"]));
    assert_eq!(map_entries(&listed), to_chain(&["vnet1", "vnet2"]));
    assert_eq!(
        fx.grouped_ports(),
        names(&["vnet1", "vnet2"]),
        "the trusted vNIC is not in the group"
    );
    for tap in ["vnet1", "vnet2"] {
        fx.lab.set_port_isolated(tap, false).expect("clearing a flag");
    }
    ok(fx.cli(&["verify"]));
    fx.assert_isolation(&["vm3"]);

    let status: Value = serde_json::from_str(&ok(fx.cli(&["status", "--json"]))).expect("status --json");
    let bridge = &status["bridges"][0];
    assert_eq!(status["backend"], json!("nftables"));
    assert_eq!(bridge["bridge"], json!(NET));
    let dropped = bridge["drops"]["packets"].as_u64().expect("a drop counter");
    assert!(dropped > 0, "the matrix's VM<->VM probes were dropped: {status:#}");
    assert!(bridge["drops"]["bytes"].as_u64().unwrap() > 0);
    let roles: Vec<(&str, &str, bool)> = bridge["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap();
            (s("port"), s("role"), p["isolated"].as_bool().unwrap())
        })
        .collect();
    let want = [
        ("eth1", "uplink", false),
        ("vnet1", "vm", true),
        ("vnet2", "vm", true),
        ("vnet3", "trusted", false),
    ];
    assert_eq!(roles, want);
    let text = ok(fx.cli(&["status"]));
    assert!(text.contains("dropped between VM ports:"), "{text}");
    // port-isolation's status has no counters: its JSON is what it was.
    fx.set_backend(Backend::PortIsolation);
    let flags: Value = serde_json::from_str(&ok(fx.cli(&["status", "--json"]))).unwrap();
    assert_eq!(flags["bridges"][0].get("drops"), None);
}

/// Tables of the previous shapes enforce the same ports, so `verify` passes on them, and the
/// next run migrates each in one transaction, no port changing: from one `iif @vm_X oif @vm_X`
/// rule per bridge in `forward` (the old rule goes, the set stays, the map, the bridge's chain
/// and the gated dispatch rule arrive), and from `oif vmap @ports` without the group gate
/// (isolating on its own, with the ports in no group: they join the group, then the rule is
/// swapped).
#[test]
fn nftables_migrates_a_table_of_the_previous_shape() {
    if !lab::root_tests_enabled("nftables_migrates_a_table_of_the_previous_shape") {
        return;
    }
    let fx = Fixture::with_backend("binmig", 3, Backend::Nftables);
    fx.network_setup(&tagged("true"));
    let set = set_name(NET);
    let old = format!(
        "delete table bridge {TABLE}; add table bridge {TABLE}; \
         add set bridge {TABLE} {set} {{ type iface_index; elements = {{ \"vnet1\", \"vnet2\", \"vnet3\" }}; }}; \
         add chain bridge {TABLE} forward {{ type filter hook forward priority filter; policy accept; }}; \
         add rule bridge {TABLE} forward iif @{set} oif @{set} counter drop comment \"bridge {NET}\""
    );
    ok(fx.lab.exec_in_host(&[lab::NFT, &old]).expect("running nft"));
    let listed = fx.nft_table().unwrap();
    assert!(objects(&listed, "map").is_empty(), "{listed:#}");
    assert_eq!(objects(&listed, "rule").len(), 1, "{listed:#}");
    ok(fx.cli(&["verify"]));

    let out = ok(fx.cli(&["reconcile"]));
    assert_eq!(out.trim(), "nftables: 0 port(s) changed");
    let listed = fx.nft_table().unwrap();
    assert_eq!(members(&listed), names(&["vnet1", "vnet2", "vnet3"]));
    assert_eq!(map_entries(&listed), to_chain(&["vnet1", "vnet2", "vnet3"]));
    let rules = objects(&listed, "rule");
    assert_eq!(rules.len(), 2, "{listed:#}");
    assert_eq!(objects(&listed, "chain").len(), 2, "{listed:#}");
    assert!(
        rules.iter().all(|r| r["expr"].to_string().matches("@").count() == 1),
        "no rule of the old shape left: {listed:#}"
    );
    assert_eq!(rules[0]["expr"], gated_dispatch(), "{listed:#}");
    let handle = rules[0]["handle"].as_u64().expect("a handle");
    assert_eq!(fx.grouped_ports(), names(&["vnet1", "vnet2", "vnet3"]));
    fx.assert_isolation(&[]);
    let before = without_counters(listed);
    assert_eq!(ok(fx.cli(&["reconcile"])).trim(), "nftables: 0 port(s) changed");
    assert_eq!(without_counters(fx.nft_table().unwrap()), before, "not converged");

    // The shape before the gate: the same table with `oif vmap @ports` alone in `forward`.
    let ungated =
        format!("delete rule bridge {TABLE} forward handle {handle}; add rule bridge {TABLE} forward oif vmap @{MAP}");
    ok(fx.lab.exec_in_host(&[lab::NFT, &ungated]).expect("running nft"));
    for port in ["vnet1", "vnet2", "vnet3"] {
        fx.lab.set_port_group(port, 0).expect("ungrouping");
    }
    fx.assert_isolation(&[]);
    ok(fx.cli(&["verify"]));
    assert_eq!(ok(fx.cli(&["reconcile"])).trim(), "nftables: 0 port(s) changed");
    let listed = fx.nft_table().unwrap();
    let rules = objects(&listed, "rule");
    assert_eq!(rules.len(), 2, "{listed:#}");
    assert_eq!(rules[0]["expr"], gated_dispatch(), "{listed:#}");
    assert_eq!(map_entries(&listed), to_chain(&["vnet1", "vnet2", "vnet3"]));
    assert_eq!(fx.grouped_ports(), names(&["vnet1", "vnet2", "vnet3"]));
    fx.assert_isolation(&[]);
}

/// Lifting the property removes the table (no residue) and the port flags libvirt set from
/// the rewritten XML, so every pair passes; tagging again and removing the network do the
/// same.
#[test]
fn nftables_untag_and_remove_leave_no_residue() {
    if !lab::root_tests_enabled("nftables_untag_and_remove_leave_no_residue") {
        return;
    }
    let mut fx = Fixture::with_backend("binrm", 0, Backend::Nftables);
    fx.network_setup(&tagged("true"));
    fx.start_vm(1, PLAIN);
    fx.start_vm(2, PLAIN);
    assert_eq!(members(&fx.nft_table().unwrap()), names(&["vnet1", "vnet2"]));
    fx.assert_isolation(&[]);

    fx.network_setup(&common::untagged());
    assert_eq!(fx.nft_table(), None, "the table outlived the isolation");
    assert_eq!(
        fx.isolated_ports(),
        names(&[]),
        "libvirt's flags outlived the isolation"
    );
    assert_eq!(
        fx.grouped_ports(),
        names(&[]),
        "the gate's group outlived the isolation"
    );
    fx.assert_all_pass();
    assert_eq!(fx.state_json()["networks"], json!({}));

    fx.network_setup(&tagged("true"));
    assert_eq!(members(&fx.nft_table().unwrap()), names(&["vnet1", "vnet2"]));
    fx.assert_isolation(&[]);
    fx.network_setup(&common::removed());
    assert_eq!(fx.nft_table(), None, "the table outlived the network");
    assert_eq!(fx.grouped_ports(), names(&[]), "the gate's group outlived the network");
    fx.assert_all_pass();
    ok(fx.cli(&["verify"]));
}

/// port-isolation -> nftables -> port-isolation: each backend takes over before the other's
/// enforcement goes (flags cleared, table removed), the state records who did the work, and
/// the matrix holds at every step.
#[test]
fn backend_switch_port_isolation_nftables_and_back() {
    if !lab::root_tests_enabled("backend_switch_port_isolation_nftables_and_back") {
        return;
    }
    let mut fx = Fixture::with_backend("binsw", 3, Backend::PortIsolation);
    let all = names(&["vnet1", "vnet2", "vnet3"]);
    fx.network_setup(&tagged("true"));
    assert_eq!(fx.state_json()["backend"], json!("port-isolation"));
    assert_eq!(fx.isolated_ports(), all);
    assert_eq!(fx.nft_table(), None);
    fx.assert_isolation(&[]);

    fx.set_backend(Backend::Nftables);
    let out = ok(fx.cli(&["reconcile"]));
    assert_eq!(
        out.trim(),
        "nftables: 6 port(s) changed",
        "3 isolated by nftables, 3 flags cleared"
    );
    assert_eq!(fx.state_json()["backend"], json!("nftables"));
    assert_eq!(fx.isolated_ports(), names(&[]));
    assert_eq!(members(&fx.nft_table().unwrap()), all);
    assert_eq!(fx.grouped_ports(), all);
    fx.assert_isolation(&[]);
    ok(fx.cli(&["verify"]));

    // Back, through a hook this time (restore-nets at boot after a config change).
    fx.set_backend(Backend::PortIsolation);
    fx.run_ok("after_network_setup", Payload::Json(restored("true")), &[]);
    assert_eq!(fx.state_json()["backend"], json!("port-isolation"));
    assert_eq!(fx.isolated_ports(), all);
    assert_eq!(fx.nft_table(), None, "the nftables table outlived the handover");
    assert_eq!(fx.grouped_ports(), names(&[]), "the gate's group outlived the handover");
    fx.assert_isolation(&[]);
    ok(fx.cli(&["verify"]));
}
