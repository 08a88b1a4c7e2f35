//! Cross-host isolation (issue 7) on a two-host netns fabric: two host namespaces with the
//! network's bridge and VMs, their uplinks joined by a switch namespace that holds the
//! gateway. The hooks run as VDSM runs them, one state directory per host, default backend
//! (port isolation) plus the cross-host table. They need root; as another user they skip
//! (or fail under `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use bridge_isolation::enforce::cross_host::TABLE;
use bridge_isolation_lab::{
    self as lab, domain_xml, format_mac, is_vm, Fabric, HookRun, Mac, NetSpec, NicSpec, Payload, Protocol, VmSpec,
    GW_MAC,
};
use serde_json::Value;
use tempfile::TempDir;

const NET: &str = "isonet";
const UPLINK: &str = "eth1";
const HOOK: &str = "50_bridge_isolation";
const PEERS: &str = "bridge_isolation_peer_macs";
const TRUSTED_MACS: &str = "bridge_isolation_trusted_macs";
const UPLINK_MACS: &str = "bridge_isolation_uplink_macs";
/// The router VM (on h2): trusted vNIC there, trusted MAC on h1.
const ROUTER: &str = "vm4";

struct Rig {
    fabric: Fabric,
    hooks: TempDir,
    states: BTreeMap<String, TempDir>,
}

impl Rig {
    fn new(tag: &str) -> Rig {
        let fabric = Fabric::create(&lab::unique_prefix(tag), 2).expect("creating the fabric");
        let hooks = tempfile::tempdir().expect("creating the hook tree");
        let points = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks");
        for entry in std::fs::read_dir(points).expect("listing hooks/") {
            let dir = hooks.path().join(entry.unwrap().file_name());
            std::fs::create_dir(&dir).unwrap();
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vdsm-hook-bridge-isolation"), dir.join(HOOK)).unwrap();
        }
        let states = ["h1", "h2"]
            .into_iter()
            .map(|h| (h.to_string(), tempfile::tempdir().unwrap()))
            .collect();
        Rig { fabric, hooks, states }
    }

    fn env(&self, host: &str) -> Vec<(String, String)> {
        vec![
            (
                "BRIDGE_ISOLATION_STATE_DIR".into(),
                self.states[host].path().to_string_lossy().into_owned(),
            ),
            ("BRIDGE_ISOLATION_CONFIG".into(), "/nonexistent".into()),
        ]
    }

    fn run(&self, host: &str, point: &str, payload: Payload, vm: Option<u8>) -> HookRun {
        let mut env = self.env(host);
        env.extend(vm.map(|n| ("vmId".to_string(), vm_uuid(n))));
        let ns = self.fabric.host_ns(host).unwrap();
        lab::run_hook_point(ns, self.hooks.path(), point, payload, &env)
            .unwrap_or_else(|e| panic!("running {point} on {host}: {e:#}"))
    }

    fn hook(&self, host: &str, point: &str, payload: Payload, vm: Option<u8>) -> HookRun {
        let run = self.run(host, point, payload, vm);
        assert_eq!(
            run.codes,
            [(HOOK.to_string(), 0)],
            "{point} on {host}; stderr:\n{}",
            run.stderr
        );
        run
    }

    fn network_setup(&self, host: &str, json: &str) {
        for point in ["before_network_setup", "after_network_setup"] {
            self.hook(host, point, Payload::Json(json.to_string()), None);
        }
    }

    /// Starts VM `n` on `host` as VDSM and libvirt do (see tests/nftables.rs).
    fn start_vm(&mut self, host: &str, n: u8, trusted: bool) {
        let vm = self.fabric.numbered_vm(n);
        self.start(host, n, vm, trusted);
    }

    /// Starts `vm` (VM number `n`) on `host`.
    fn start(&mut self, host: &str, n: u8, vm: VmSpec, trusted: bool) {
        let nic = NicSpec {
            trusted,
            ..NicSpec::new(NET, vm.guest_mac)
        };
        let engine = domain_xml(&vm.name, &vm_uuid(n), std::slice::from_ref(&nic));
        let rewritten = self.hook(host, "before_vm_start", Payload::DomXml(engine), Some(n));
        let flagged = rewritten.payload_text().contains("<port isolated=");
        self.fabric.add_vm(host, &vm).expect("plugging the VM");
        if flagged {
            let ns = self.fabric.host_ns(host).unwrap();
            let out = self
                .fabric
                .exec_in(ns, &[lab::BRIDGE, "link", "set", "dev", &vm.tap, "isolated", "on"])
                .unwrap();
            assert!(out.status.success(), "setting the flag as libvirt");
        }
        let live = NicSpec {
            tap: Some(vm.tap.clone()),
            native_isolated: flagged,
            ..nic
        };
        let xml = domain_xml(&vm.name, &vm_uuid(n), &[live]);
        self.hook(host, "after_vm_start", Payload::DomXml(xml), Some(n));
    }

    fn cli(&self, host: &str, args: &[&str]) -> Output {
        Command::new(lab::IP)
            .args(["netns", "exec", self.fabric.host_ns(host).unwrap()])
            .arg(env!("CARGO_BIN_EXE_bridge-isolation"))
            .args(args)
            .envs(self.env(host))
            .output()
            .expect("running bridge-isolation")
    }

    /// `bridge-isolation status --json` on `host`, asserting success.
    fn status_json(&self, host: &str) -> Value {
        let out = self.cli(host, &["status", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `nft list table bridge bridge_isolation_peers` on `host` (text), or `None`.
    fn table(&self, host: &str) -> Option<String> {
        let ns = self.fabric.host_ns(host).unwrap();
        let out = self
            .fabric
            .exec_in(ns, &[lab::NFT, "list", "table", "bridge", TABLE])
            .unwrap();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("No such file or directory"), "nft list failed: {err}");
            return None;
        }
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn handles(&self, host: &str) -> String {
        let ns = self.fabric.host_ns(host).unwrap();
        let out = self
            .fabric
            .exec_in(ns, &[lab::NFT, "-a", "list", "table", "bridge", TABLE])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // Counters move with traffic; handles and everything else must not.
        text.lines()
            .map(|l| match l.find("counter packets") {
                Some(i) => format!("{}counter {}", &l[..i], &l[l.find(" drop").unwrap_or(i)..]),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn flagged(&self, host: &str) -> Vec<String> {
        let mut taps: Vec<String> = self
            .fabric
            .vms()
            .iter()
            .filter(|(h, _)| h == host)
            .map(|(_, vm)| vm.tap.clone())
            .filter(|tap| self.fabric.port_isolated(host, tap).unwrap())
            .collect();
        taps.sort();
        taps
    }
}

fn vm_uuid(n: u8) -> String {
    format!("4d3a1f52-8a0b-4c8e-9a8f-2f7b3d1c00{n:02x}")
}

/// h1's network: the pool as a range, the router on h2 trusted by MAC.
fn h1_net() -> NetSpec {
    NetSpec::on_nic(UPLINK)
        .with_isolation("true")
        .with_custom(PEERS, "56:6f:4c:ab:00:00-56:6f:4c:ab:00:ff")
        .with_custom(TRUSTED_MACS, "56:6f:4c:ab:00:04")
}

/// h2's network: the pool as a prefix; its router is a trusted vNIC there.
fn h2_net() -> NetSpec {
    NetSpec::on_nic(UPLINK)
        .with_isolation("true")
        .with_custom(PEERS, "56:6f:4c:ab:00:00/40")
}

fn setup(net: NetSpec) -> String {
    lab::setup_networks_json(&[(NET, net)])
}

/// VM <-> VM blocked (same host or not) unless one of them is the router.
fn isolated_but_router(a: &str, b: &str) -> bool {
    !(is_vm(a) && is_vm(b)) || a == ROUTER || b == ROUTER
}

#[test]
fn peers_are_blocked_across_hosts_gateway_and_router_stay_reachable() {
    if !lab::root_tests_enabled("peers_are_blocked_across_hosts_gateway_and_router_stay_reachable") {
        return;
    }
    let mut rig = Rig::new("xha");
    let is_host = |n: &str| rig.fabric.is_host(n);
    assert!(is_host("h1") && is_host("h2"));
    rig.network_setup("h1", &setup(h1_net()));
    rig.network_setup("h2", &setup(h2_net()));
    rig.start_vm("h1", 1, false);
    rig.start_vm("h1", 3, false);
    rig.start_vm("h2", 2, false);
    rig.start_vm("h2", 4, true);

    // Hosts count as non-VM endpoints: everyone reaches them and the gateway.
    let fabric = &rig.fabric;
    let expected = |a: &str, b: &str| {
        let vm = |n: &str| is_vm(n) && !fabric.is_host(n);
        !(vm(a) && vm(b)) || a == ROUTER || b == ROUTER
    };
    let m = fabric.matrix().expect("probing");
    m.assert_expected(&expected);
    assert!(isolated_but_router("vm1", "vm4") && !isolated_but_router("vm1", "vm2"));

    let table = rig.table("h1").expect("h1 has the table");
    eprintln!("h1:\n{table}");
    assert!(table.contains(
        "iifname \"eth1\" oif != @open_isonet ether saddr @peers_isonet ether saddr != @trusted_isonet counter packets"
    ));
    assert!(table.contains("56:6f:4c:ab:00:00-56:6f:4c:ab:00:ff"));
    let h2 = rig.table("h2").expect("h2 has the table");
    assert!(h2.contains("elements = { \"vnet4\" }"), "{h2}");

    // status shows the ranges, trusted MACs and a moving drop counter.
    let v = rig.status_json("h1");
    let c = &v["cross_host"][NET];
    assert_eq!(
        c["peer_macs"],
        serde_json::json!(["56:6f:4c:ab:00:00-56:6f:4c:ab:00:ff"])
    );
    assert_eq!(c["trusted_macs"], serde_json::json!(["56:6f:4c:ab:00:04"]));
    assert!(c["drops"]["packets"].as_u64().unwrap() > 0, "{v}");
    let text = String::from_utf8_lossy(&rig.cli("h1", &["status"]).stdout).into_owned();
    assert!(
        text.contains(
            "cross-host isonet: peers 56:6f:4c:ab:00:00-56:6f:4c:ab:00:ff; trusted MACs 56:6f:4c:ab:00:04; dropped"
        ),
        "{text}"
    );
    // Same-host isolation is the backend's, untouched.
    assert_eq!(rig.flagged("h1"), ["vnet1", "vnet3"]);
    assert_eq!(rig.flagged("h2"), ["vnet2"]);

    // Idempotent: restore-nets and a reconcile change nothing (same handles).
    let before = rig.handles("h1");
    let restore = lab::restore_nets_json(&[(NET, h1_net())]);
    rig.network_setup("h1", &restore);
    assert!(rig.cli("h1", &["reconcile"]).status.success());
    assert_eq!(rig.handles("h1"), before);

    // verify: quiet when converged; an emptied peer set on h1 (VM2@h2 reaches VM1@h1) is
    // reported with exit 1, and a reconcile closes the hole.
    let verify = |rig: &Rig| {
        let out = rig.cli("h1", &["verify"]);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, text) = verify(&rig);
    assert_eq!(code, Some(0), "{text}");
    let ns = rig.fabric.host_ns("h1").unwrap();
    let out = rig
        .fabric
        .exec_in(ns, &[lab::NFT, "flush", "set", "bridge", TABLE, "peers_isonet"])
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // (h2 still drops VM1's replies: the one-way raw frame shows the hole.)
    let open = rig.fabric.matrix().expect("probing");
    assert!(open.get("vm2", "vm1", lab::Protocol::Raw), "{open}");
    let (code, text) = verify(&rig);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("drift: cross-host: table bridge bridge_isolation_peers: set peers_isonet holds other elements than recorded"),
        "{text}"
    );
    assert!(rig.cli("h1", &["reconcile"]).status.success());
    assert_eq!(verify(&rig).0, Some(0));
    rig.fabric.matrix().expect("probing").assert_expected(&expected);
}

#[test]
fn removal_leaves_no_residue() {
    if !lab::root_tests_enabled("removal_leaves_no_residue") {
        return;
    }
    let mut rig = Rig::new("xhb");
    rig.network_setup("h1", &setup(h1_net()));
    rig.network_setup("h2", &setup(h2_net()));
    rig.start_vm("h1", 1, false);
    rig.start_vm("h2", 2, false);
    assert!(rig.table("h1").is_some() && rig.table("h2").is_some());

    // Peers dropped from h1's network, isolation kept: h1's table goes, flags stay.
    rig.network_setup("h1", &setup(NetSpec::on_nic(UPLINK).with_isolation("true")));
    assert_eq!(rig.table("h1"), None);
    assert_eq!(rig.flagged("h1"), ["vnet1"]);

    // The network removed on h1: no table, no flags.
    rig.network_setup("h1", &lab::setup_networks_json(&[(NET, NetSpec::removed())]));
    assert_eq!(rig.table("h1"), None);
    assert!(rig.flagged("h1").is_empty());

    // release-all on h2 removes its table and flags too.
    let out = rig.cli("h2", &["release-all"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rig.table("h2"), None);
    assert!(rig.flagged("h2").is_empty());

    // Nothing left: VMs on both hosts reach each other again.
    rig.fabric.matrix().expect("probing").assert_expected(&|_, _| true);
}

#[test]
fn invalid_values_are_rejected_at_before_network_setup() {
    if !lab::root_tests_enabled("invalid_values_are_rejected_at_before_network_setup") {
        return;
    }
    let rig = Rig::new("xhc");
    for (key, value) in [
        (PEERS, "56:6f:4c:ab:00:00/24"),
        (PEERS, "56:6f:4c:ab:00:ff-56:6f:4c:ab:00:00"),
        (TRUSTED_MACS, "router"),
        (UPLINK_MACS, "gateway"),
        (UPLINK_MACS, "02:b1:00:00:00:fe/44"),
    ] {
        let json = setup(NetSpec::on_nic(UPLINK).with_isolation("true").with_custom(key, value));
        let run = rig.run("h1", "before_network_setup", Payload::Json(json.clone()), None);
        assert_eq!(run.codes, [(HOOK.to_string(), 2)], "{key}={value}: {}", run.stderr);
        let line = run.last_stderr.trim();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(line.contains("network isonet: ") && line.contains(key), "{line}");
        assert!(line.contains(value.get(..8).unwrap_or(value)), "{line}");
        assert_eq!(run.payload_text(), json, "the payload is left as it was");
    }
    assert_eq!(rig.table("h1"), None);
    assert!(!rig.states["h1"].path().join("state.json").exists());
}

/// A VM of h2 whose user chose its MAC: outside every pool and peer range.
const CUSTOM_MAC: Mac = [0x02, 0xc0, 0xff, 0xee, 0x00, 0x02];

/// h1's network with the peer ranges of [`h2_net`] and, when `allow` is set, the gateway as
/// the only source allowed from the uplink.
fn h1_allow(allow: bool) -> NetSpec {
    let net = NetSpec::on_nic(UPLINK)
        .with_isolation("true")
        .with_custom(PEERS, "56:6f:4c:ab:00:00/40");
    if allow {
        net.with_custom(UPLINK_MACS, &format_mac(GW_MAC))
    } else {
        net
    }
}

/// With h1's allow-list: nothing from the uplink side but the gateway (h2's VM with its
/// custom MAC, h2 itself) reaches untrusted VM1 on h1. A raw frame goes one way, so VM1's
/// own frames still leave; a ping or ARP needs the answer back too.
fn gateway_only(a: &str, b: &str, proto: Protocol) -> bool {
    let dropped = |src: &str, dst: &str| dst == "vm1" && matches!(src, "vm2" | "h2");
    !dropped(a, b) && (proto == Protocol::Raw || !dropped(b, a))
}

/// `bridge_isolation_uplink_macs` (issue 13, item 7): the gateway still reaches every VM on
/// every protocol; a VM of another host with a custom MAC outside the peer ranges, and that
/// host, reach no untrusted VM; a trusted vNIC still gets their frames; the table of the
/// release before (peer rule only) gains the allow-list without losing its rule; lifting
/// the property, then the network, removes the rules.
#[test]
fn uplink_macs_admit_only_the_listed_sources() {
    if !lab::root_tests_enabled("uplink_macs_admit_only_the_listed_sources") {
        return;
    }
    let mut rig = Rig::new("xhd");
    rig.network_setup("h1", &setup(h1_allow(false)));
    rig.network_setup("h2", &setup(NetSpec::on_nic(UPLINK).with_isolation("true")));
    let custom = VmSpec::new("vm2", "vnet2", CUSTOM_MAC, "10.77.0.12".parse().unwrap());
    rig.start("h2", 2, custom, false);
    rig.start_vm("h1", 1, false);
    rig.start_vm("h1", 3, true);
    // Peer ranges alone: the custom MAC is outside them, VM2@h2 reaches VM1@h1.
    rig.fabric.matrix().expect("probing").assert_expected(&|_, _| true);
    let peer_rule = |text: &str| -> String {
        let line = text.lines().find(|l| l.contains("comment \"bridge isonet\""));
        line.expect("the peer rule").trim().to_string()
    };
    let before = peer_rule(&rig.handles("h1"));

    rig.network_setup("h1", &setup(h1_allow(true)));
    let m = rig.fabric.matrix().expect("probing");
    m.assert_each(&gateway_only);
    for vm in ["vm1", "vm2", "vm3"] {
        assert!(Protocol::ALL.iter().all(|&p| m.get("gw", vm, p)), "gw -> {vm}\n{m}");
    }
    // The peer rule of the table before is kept as it was (same handle).
    let text = rig.handles("h1");
    assert_eq!(peer_rule(&text), before, "{text}");
    let table = rig.table("h1").unwrap();
    assert!(
        table.contains("iifname \"eth1\" oif != @open_isonet ether saddr != @uplink_isonet counter packets"),
        "{table}"
    );
    assert!(table.contains("elements = { 02:b1:00:00:00:fe }"), "{table}");

    // status: the allowed MACs and a moving counter.
    let v = rig.status_json("h1");
    let c = &v["cross_host"][NET];
    assert_eq!(
        c["uplink_macs"],
        serde_json::json!(["02:b1:00:00:00:fe-02:b1:00:00:00:fe"])
    );
    assert!(c["uplink_drops"]["packets"].as_u64().unwrap() > 0, "{v}");
    let text = String::from_utf8_lossy(&rig.cli("h1", &["status"]).stdout).into_owned();
    assert!(
        text.contains("; uplink MACs 02:b1:00:00:00:fe-02:b1:00:00:00:fe; dropped from others "),
        "{text}"
    );

    // Idempotent; verify reports an emptied allow-list (which drops the gateway too: fail
    // closed) and a reconcile restores it.
    let handles = rig.handles("h1");
    rig.network_setup("h1", &lab::restore_nets_json(&[(NET, h1_allow(true))]));
    assert_eq!(rig.handles("h1"), handles);
    assert_eq!(rig.cli("h1", &["verify"]).status.code(), Some(0));
    let ns = rig.fabric.host_ns("h1").unwrap();
    let out = rig
        .fabric
        .exec_in(ns, &[lab::NFT, "flush", "set", "bridge", TABLE, "uplink_isonet"])
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = rig.cli("h1", &["verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("set uplink_isonet holds other elements than recorded"),
        "{text}"
    );
    assert!(rig.cli("h1", &["reconcile"]).status.success());
    assert_eq!(rig.cli("h1", &["verify"]).status.code(), Some(0));

    // Lifted: the rule and its set go, the peer rule stays; VM2 reaches VM1 again.
    rig.network_setup("h1", &setup(h1_allow(false)));
    let table = rig.table("h1").unwrap();
    assert!(!table.contains("uplink"), "{table}");
    assert_eq!(peer_rule(&rig.handles("h1")), before);
    rig.fabric.matrix().expect("probing").assert_expected(&|_, _| true);
    // Untagged: no table at all.
    rig.network_setup("h1", &setup(NetSpec::on_nic(UPLINK)));
    assert_eq!(rig.table("h1"), None);
}
