//! The nftables backend on a real kernel: the core reachability matrix, unchanged, with
//! `BRIDGE_ISOLATION_BACKEND=nftables`; restore-nets leaves the table as it was (same
//! handles, same rules); lifting and removing leave no residue; the backend hands over to
//! port-isolation and back. They need root; as another user they skip (or fail under
//! `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use bridge_isolation::enforce::nftables::{chain_name, set_name, GROUP, MAP, TABLE};
use bridge_isolation_lab::{self as lab, domain_xml, is_vm, HookRun, Lab, LabSpec, NetSpec, NicSpec, Payload};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The lab's network (and bridge) and its uplink: `LabSpec::new`'s defaults.
const NET: &str = "isonet";
const UPLINK: &str = "eth1";
const HOOK: &str = "50_bridge_isolation";
const NFT: &str = "nftables";
const PORT_ISOLATION: &str = "port-isolation";

/// A lab, its own state directory and hook tree, and the backend each run asks for.
struct Rig {
    lab: Lab,
    state: TempDir,
    hooks: TempDir,
}

impl Rig {
    /// A lab with VMs `vm1..=vms` plugged (no flags), nothing tagged, and a hook tree whose
    /// `POINT/50_bridge_isolation` links to the built hook binary.
    fn new(tag: &str, vms: u8) -> Rig {
        let lab = Lab::create(&LabSpec::new(&lab::unique_prefix(tag)).with_vms(vms)).expect("creating the lab");
        let hooks = tempfile::tempdir().expect("creating the hook tree");
        let points = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks");
        for entry in std::fs::read_dir(points).expect("listing hooks/") {
            let dir = hooks.path().join(entry.unwrap().file_name());
            std::fs::create_dir(&dir).unwrap();
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vdsm-hook-bridge-isolation"), dir.join(HOOK)).unwrap();
        }
        let state = tempfile::tempdir().expect("creating the state directory");
        Rig { lab, state, hooks }
    }

    fn env(&self, backend: &str) -> Vec<(String, String)> {
        vec![
            (
                "BRIDGE_ISOLATION_STATE_DIR".into(),
                self.state.path().to_string_lossy().into_owned(),
            ),
            ("BRIDGE_ISOLATION_CONFIG".into(), "/nonexistent".into()),
            ("BRIDGE_ISOLATION_BACKEND".into(), backend.into()),
        ]
    }

    /// Runs `point` as VDSM does with `backend`, asserting our hook ran and exited 0.
    fn hook(&self, backend: &str, point: &str, payload: Payload, vm: Option<u8>) -> HookRun {
        let mut env = self.env(backend);
        env.extend(vm.map(|n| ("vmId".to_string(), vm_uuid(n))));
        let run = lab::run_hook_point(self.lab.host_ns(), self.hooks.path(), point, payload, &env)
            .unwrap_or_else(|e| panic!("running {point}: {e:#}"));
        assert_eq!(run.codes, [(HOOK.to_string(), 0)], "{point}; stderr:\n{}", run.stderr);
        run
    }

    /// `before_network_setup` then `after_network_setup` with `json`.
    fn network_setup(&self, backend: &str, json: &str) {
        for point in ["before_network_setup", "after_network_setup"] {
            self.hook(backend, point, Payload::Json(json.to_string()), None);
        }
    }

    /// Starts VM `n` as VDSM and libvirt do: `before_vm_start` on the engine's XML, the tap
    /// plugged and flagged as the rewritten XML says, `after_vm_start` on the live XML.
    fn start_vm(&mut self, backend: &str, n: u8, trusted: bool) {
        let vm = self.lab.spec().numbered_vm(n);
        let nic = NicSpec {
            trusted,
            ..NicSpec::new(NET, vm.guest_mac)
        };
        let engine = domain_xml(&vm.name, &vm_uuid(n), std::slice::from_ref(&nic));
        let rewritten = self.hook(backend, "before_vm_start", Payload::DomXml(engine), Some(n));
        let flagged = rewritten.payload_text().contains("<port isolated=");
        self.lab.add_vm(&vm).expect("plugging the VM");
        if flagged {
            self.lab
                .set_port_isolated(&vm.tap, true)
                .expect("setting the flag as libvirt");
        }
        let live = NicSpec {
            tap: Some(vm.tap.clone()),
            native_isolated: flagged,
            ..nic
        };
        self.hook(
            backend,
            "after_vm_start",
            Payload::DomXml(domain_xml(&vm.name, &vm_uuid(n), &[live])),
            Some(n),
        );
    }

    /// `bridge-isolation ARGS` in the lab host with this rig's state and `backend`.
    fn cli(&self, backend: &str, args: &[&str]) -> Output {
        Command::new(lab::IP)
            .args([
                "netns",
                "exec",
                self.lab.host_ns(),
                env!("CARGO_BIN_EXE_bridge-isolation"),
            ])
            .args(args)
            .envs(self.env(backend))
            .output()
            .expect("running bridge-isolation")
    }

    fn state_json(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.state.path().join("state.json")).unwrap()).unwrap()
    }

    /// The bridge ports whose isolation flag is set.
    fn flagged(&self) -> BTreeSet<String> {
        let ports = self.lab.bridge_ports().expect("listing the ports");
        ports
            .into_iter()
            .filter(|p| self.lab.port_isolated(p).unwrap())
            .collect()
    }

    /// The bridge ports in the gate's interface group.
    fn grouped(&self) -> BTreeSet<String> {
        let ports = self.lab.bridge_ports().expect("listing the ports");
        ports
            .into_iter()
            .filter(|p| self.lab.port_group(p).unwrap() == GROUP)
            .collect()
    }

    /// Our table in the lab host (`nft -j list table`, metainfo left out), or `None`.
    fn table(&self) -> Option<Value> {
        let out = self
            .lab
            .exec_in_host(&[lab::NFT, "-j", "list", "table", "bridge", TABLE])
            .expect("running nft");
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("No such file or directory"), "nft list failed: {err}");
            return None;
        }
        let mut v: Value = serde_json::from_slice(&out.stdout).expect("nft -j prints JSON");
        v["nftables"]
            .as_array_mut()
            .unwrap()
            .retain(|i| i.get("metainfo").is_none());
        Some(v)
    }

    /// Probes every pair: VM<->VM blocked unless one is in `trusted`, all else passes.
    fn assert_isolation(&self, trusted: &[&str]) {
        let expected = |a: &str, b: &str| !(is_vm(a) && is_vm(b)) || trusted.contains(&a) || trusted.contains(&b);
        self.lab.matrix().expect("probing").assert_expected(&expected);
    }

    fn assert_all_pass(&self) {
        self.lab.matrix().expect("probing").assert_expected(&|_, _| true);
    }
}

/// The `vmId` (and domain `<uuid>`) of lab VM number `n`.
fn vm_uuid(n: u8) -> String {
    format!("4d3a1f52-8a0b-4c8e-9a8f-2f7b3d1c00{n:02x}")
}

fn tagged() -> String {
    lab::setup_networks_json(&[(NET, NetSpec::on_nic(UPLINK).with_isolation("true"))])
}

fn restore_nets() -> String {
    lab::restore_nets_json(&[(NET, NetSpec::on_nic(UPLINK).with_isolation("true"))])
}

/// The table with every counter zeroed: what must not change when nothing changes.
fn without_counters(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(o) => {
                if let Some(c) = o.get_mut("counter") {
                    *c = json!({"packets": 0, "bytes": 0});
                }
                o.values_mut().for_each(walk);
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// Objects of `kind` (`set`, `rule`, `chain`) in a listing.
fn objects<'a>(v: &'a Value, kind: &str) -> Vec<&'a Value> {
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get(kind))
        .collect()
}

/// The members of the lab bridge's set, as nft names them.
fn members(v: &Value) -> BTreeSet<String> {
    let name = set_name(NET);
    let set = objects(v, "set")
        .into_iter()
        .find(|s| s["name"] == json!(name))
        .unwrap_or_else(|| panic!("no set {name} in {v:#}"));
    set.get("elem")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| e.as_str().expect("element name").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The port map's elements, as nft names them: (port, chain its element goes to).
fn map_entries(v: &Value) -> BTreeSet<(String, String)> {
    let map = objects(v, "map")
        .into_iter()
        .find(|m| m["name"] == json!(MAP))
        .unwrap_or_else(|| panic!("no map {MAP} in {v:#}"));
    map.get("elem")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| {
                    let port = e[0].as_str().expect("element name").to_string();
                    let chain = e[1]["goto"]["target"].as_str().expect("a goto").to_string();
                    (port, chain)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Each port of `ports` sent to the lab bridge's chain.
fn to_chain(ports: &[&str]) -> BTreeSet<(String, String)> {
    ports.iter().map(|p| (p.to_string(), chain_name(NET))).collect()
}

fn names(ports: &[&str]) -> BTreeSet<String> {
    ports.iter().map(|p| p.to_string()).collect()
}

#[track_caller]
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    let rig = Rig::new("bint", 3);
    rig.assert_all_pass();
    assert_eq!(rig.table(), None);

    rig.network_setup(NFT, &tagged());
    assert_eq!(rig.state_json()["backend"], json!("nftables"));
    assert_eq!(rig.flagged(), names(&[]));
    let listed = rig.table().expect("our table exists");
    assert_eq!(members(&listed), names(&["vnet1", "vnet2", "vnet3"]));
    assert_eq!(map_entries(&listed), to_chain(&["vnet1", "vnet2", "vnet3"]));
    let rules = objects(&listed, "rule");
    assert_eq!(rules.len(), 2, "{listed:#}");
    assert_eq!(rules[0]["expr"], gated_dispatch(), "{listed:#}");
    assert_eq!(rules[1]["chain"], json!(chain_name(NET)), "{listed:#}");
    assert_eq!(objects(&listed, "chain").len(), 2, "{listed:#}");
    assert_eq!(rig.grouped(), names(&["vnet1", "vnet2", "vnet3"]), "the gate's group");
    rig.assert_isolation(&[]);

    let before = without_counters(listed);
    let state = rig.state_json();
    rig.network_setup(NFT, &restore_nets());
    assert_eq!(
        without_counters(rig.table().unwrap()),
        before,
        "restore-nets changed the table"
    );
    assert_eq!(rig.state_json(), state, "restore-nets changed the state");
    let out = ok(rig.cli(NFT, &["reconcile"]));
    assert_eq!(out.trim(), "nftables: 0 port(s) changed");
    assert_eq!(
        without_counters(rig.table().unwrap()),
        before,
        "reconcile changed the table"
    );
    ok(rig.cli(NFT, &["verify"]));

    // A new tap under an old name has a new index: the set no longer holds it.
    rig.lab.recreate_port("vm2").expect("recreating vnet2");
    let stale = members(&rig.table().unwrap());
    assert!(!stale.contains("vnet2"), "{stale:?}");
    assert_eq!(stale.len(), 3, "the old index stays, unnamed: {stale:?}");
    let verify = rig.cli(NFT, &["verify"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("port vnet2"));
    let out = ok(rig.cli(NFT, &["reconcile"]));
    assert_eq!(out.trim(), "nftables: 1 port(s) changed");
    let listed = rig.table().unwrap();
    assert_eq!(members(&listed), names(&["vnet1", "vnet2", "vnet3"]));
    assert_eq!(map_entries(&listed), to_chain(&["vnet1", "vnet2", "vnet3"]));
    assert_eq!(rig.grouped(), names(&["vnet1", "vnet2", "vnet3"]));
    rig.assert_isolation(&[]);

    // The group is half of the enforcement: a port taken out of it is open (to and from the
    // others) and reported, and put back by the next reconcile; the uplink put in it by
    // someone else isolates nothing (the map decides) and is taken out.
    rig.lab.set_port_group("vnet3", 0).expect("ungrouping vnet3");
    rig.lab.set_port_group(UPLINK, GROUP).expect("grouping the uplink");
    rig.assert_isolation(&["vm3"]);
    let verify = rig.cli(NFT, &["verify"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("port vnet3"));
    assert_eq!(ok(rig.cli(NFT, &["reconcile"])).trim(), "nftables: 1 port(s) changed");
    assert_eq!(rig.grouped(), names(&["vnet1", "vnet2", "vnet3"]));
    assert_eq!(rig.lab.port_group(UPLINK).unwrap(), 0);
    rig.assert_isolation(&[]);
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
    let mut rig = Rig::new("bintr", 0);
    rig.network_setup(NFT, &tagged());
    rig.start_vm(NFT, 1, false);
    let rules = |v: &Value| without_counters(json!(objects(v, "rule")));
    let before = rules(&rig.table().unwrap());
    rig.start_vm(NFT, 2, false);
    rig.start_vm(NFT, 3, true);
    let listed = rig.table().unwrap();
    assert_eq!(rules(&listed), before, "a VM start changed a rule");
    assert_eq!(members(&listed), names(&["vnet1", "vnet2"]));
    assert_eq!(map_entries(&listed), to_chain(&["vnet1", "vnet2"]));
    assert_eq!(
        rig.grouped(),
        names(&["vnet1", "vnet2"]),
        "the trusted vNIC is not in the group"
    );
    for tap in ["vnet1", "vnet2"] {
        rig.lab.set_port_isolated(tap, false).expect("clearing a flag");
    }
    ok(rig.cli(NFT, &["verify"]));
    rig.assert_isolation(&["vm3"]);

    let status: Value = serde_json::from_str(&ok(rig.cli(NFT, &["status", "--json"]))).expect("status --json");
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
    let text = ok(rig.cli(NFT, &["status"]));
    assert!(text.contains("dropped between VM ports:"), "{text}");
    // port-isolation's status has no counters: its JSON is what it was.
    let flags: Value = serde_json::from_str(&ok(rig.cli(PORT_ISOLATION, &["status", "--json"]))).unwrap();
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
    let rig = Rig::new("binmig", 3);
    rig.network_setup(NFT, &tagged());
    let set = set_name(NET);
    let old = format!(
        "delete table bridge {TABLE}; add table bridge {TABLE}; \
         add set bridge {TABLE} {set} {{ type iface_index; elements = {{ \"vnet1\", \"vnet2\", \"vnet3\" }}; }}; \
         add chain bridge {TABLE} forward {{ type filter hook forward priority filter; policy accept; }}; \
         add rule bridge {TABLE} forward iif @{set} oif @{set} counter drop comment \"bridge {NET}\""
    );
    ok(rig.lab.exec_in_host(&[lab::NFT, &old]).expect("running nft"));
    let listed = rig.table().unwrap();
    assert!(objects(&listed, "map").is_empty(), "{listed:#}");
    assert_eq!(objects(&listed, "rule").len(), 1, "{listed:#}");
    ok(rig.cli(NFT, &["verify"]));

    let out = ok(rig.cli(NFT, &["reconcile"]));
    assert_eq!(out.trim(), "nftables: 0 port(s) changed");
    let listed = rig.table().unwrap();
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
    assert_eq!(rig.grouped(), names(&["vnet1", "vnet2", "vnet3"]));
    rig.assert_isolation(&[]);
    let before = without_counters(listed);
    assert_eq!(ok(rig.cli(NFT, &["reconcile"])).trim(), "nftables: 0 port(s) changed");
    assert_eq!(without_counters(rig.table().unwrap()), before, "not converged");

    // The shape before the gate: the same table with `oif vmap @ports` alone in `forward`.
    let ungated =
        format!("delete rule bridge {TABLE} forward handle {handle}; add rule bridge {TABLE} forward oif vmap @{MAP}");
    ok(rig.lab.exec_in_host(&[lab::NFT, &ungated]).expect("running nft"));
    for port in ["vnet1", "vnet2", "vnet3"] {
        rig.lab.set_port_group(port, 0).expect("ungrouping");
    }
    rig.assert_isolation(&[]);
    ok(rig.cli(NFT, &["verify"]));
    assert_eq!(ok(rig.cli(NFT, &["reconcile"])).trim(), "nftables: 0 port(s) changed");
    let listed = rig.table().unwrap();
    let rules = objects(&listed, "rule");
    assert_eq!(rules.len(), 2, "{listed:#}");
    assert_eq!(rules[0]["expr"], gated_dispatch(), "{listed:#}");
    assert_eq!(map_entries(&listed), to_chain(&["vnet1", "vnet2", "vnet3"]));
    assert_eq!(rig.grouped(), names(&["vnet1", "vnet2", "vnet3"]));
    rig.assert_isolation(&[]);
}

/// Lifting the property removes the table (no residue) and the port flags libvirt set from
/// the rewritten XML, so every pair passes; tagging again and removing the network do the
/// same.
#[test]
fn nftables_untag_and_remove_leave_no_residue() {
    if !lab::root_tests_enabled("nftables_untag_and_remove_leave_no_residue") {
        return;
    }
    let mut rig = Rig::new("binrm", 0);
    rig.network_setup(NFT, &tagged());
    rig.start_vm(NFT, 1, false);
    rig.start_vm(NFT, 2, false);
    assert_eq!(members(&rig.table().unwrap()), names(&["vnet1", "vnet2"]));
    rig.assert_isolation(&[]);

    rig.network_setup(NFT, &lab::setup_networks_json(&[(NET, NetSpec::on_nic(UPLINK))]));
    assert_eq!(rig.table(), None, "the table outlived the isolation");
    assert_eq!(rig.flagged(), names(&[]), "libvirt's flags outlived the isolation");
    assert_eq!(rig.grouped(), names(&[]), "the gate's group outlived the isolation");
    rig.assert_all_pass();
    assert_eq!(rig.state_json()["networks"], json!({}));

    rig.network_setup(NFT, &tagged());
    assert_eq!(members(&rig.table().unwrap()), names(&["vnet1", "vnet2"]));
    rig.assert_isolation(&[]);
    rig.network_setup(NFT, &lab::setup_networks_json(&[(NET, NetSpec::removed())]));
    assert_eq!(rig.table(), None, "the table outlived the network");
    assert_eq!(rig.grouped(), names(&[]), "the gate's group outlived the network");
    rig.assert_all_pass();
    ok(rig.cli(NFT, &["verify"]));
}

/// port-isolation -> nftables -> port-isolation: each backend takes over before the other's
/// enforcement goes (flags cleared, table removed), the state records who did the work, and
/// the matrix holds at every step.
#[test]
fn backend_switch_port_isolation_nftables_and_back() {
    if !lab::root_tests_enabled("backend_switch_port_isolation_nftables_and_back") {
        return;
    }
    let rig = Rig::new("binsw", 3);
    let all = names(&["vnet1", "vnet2", "vnet3"]);
    rig.network_setup(PORT_ISOLATION, &tagged());
    assert_eq!(rig.state_json()["backend"], json!("port-isolation"));
    assert_eq!(rig.flagged(), all);
    assert_eq!(rig.table(), None);
    rig.assert_isolation(&[]);

    let out = ok(rig.cli(NFT, &["reconcile"]));
    assert_eq!(
        out.trim(),
        "nftables: 6 port(s) changed",
        "3 isolated by nftables, 3 flags cleared"
    );
    assert_eq!(rig.state_json()["backend"], json!("nftables"));
    assert_eq!(rig.flagged(), names(&[]));
    assert_eq!(members(&rig.table().unwrap()), all);
    assert_eq!(rig.grouped(), all);
    rig.assert_isolation(&[]);
    ok(rig.cli(NFT, &["verify"]));

    // Back, through a hook this time (restore-nets at boot after a config change).
    rig.hook(
        PORT_ISOLATION,
        "after_network_setup",
        Payload::Json(restore_nets()),
        None,
    );
    assert_eq!(rig.state_json()["backend"], json!("port-isolation"));
    assert_eq!(rig.flagged(), all);
    assert_eq!(rig.table(), None, "the nftables table outlived the handover");
    assert_eq!(rig.grouped(), names(&[]), "the gate's group outlived the handover");
    rig.assert_isolation(&[]);
    ok(rig.cli(PORT_ISOLATION, &["verify"]));
}
