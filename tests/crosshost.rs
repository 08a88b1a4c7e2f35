//! Cross-host isolation (issue 7) on a two-host netns fabric: two host namespaces with the
//! network's bridge and VMs, their uplinks joined by a switch namespace that holds the
//! gateway. The hooks run as VDSM runs them, one state directory per host, default backend
//! (port isolation) plus the cross-host table. They need root; as another user they skip
//! (or fail under `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`).

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use bridge_isolation::enforce::cross_host::TABLE;
use bridge_isolation_lab::{self as lab, format_mac, is_vm, Mac, NetSpec, Payload, Protocol, VmSpec, GW_MAC};
use common::backend::Backend;
use common::cluster::Cluster;
use common::{HOOK, NET, UPLINK};

const PEERS: &str = "bridge_isolation_peer_macs";
const TRUSTED_MACS: &str = "bridge_isolation_trusted_macs";
const UPLINK_MACS: &str = "bridge_isolation_uplink_macs";
/// The router VM (on h2): trusted vNIC there, trusted MAC on h1.
const ROUTER: &str = "vm4";

/// The two-host fabric with the default backend (port isolation) plus the cross-host table.
fn cluster(tag: &str) -> Cluster {
    Cluster::with_backend(tag, Backend::PortIsolation)
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
    let mut cluster = cluster("xha");
    let is_host = |n: &str| cluster.fabric.is_host(n);
    assert!(is_host("h1") && is_host("h2"));
    cluster.network_setup("h1", &setup(h1_net()));
    cluster.network_setup("h2", &setup(h2_net()));
    cluster.start_vm("h1", 1, false);
    cluster.start_vm("h1", 3, false);
    cluster.start_vm("h2", 2, false);
    cluster.start_vm("h2", 4, true);

    // Hosts count as non-VM endpoints: everyone reaches them and the gateway.
    let fabric = &cluster.fabric;
    let expected = |a: &str, b: &str| {
        let vm = |n: &str| is_vm(n) && !fabric.is_host(n);
        !(vm(a) && vm(b)) || a == ROUTER || b == ROUTER
    };
    let m = fabric.matrix().expect("probing");
    m.assert_expected(&expected);
    assert!(isolated_but_router("vm1", "vm4") && !isolated_but_router("vm1", "vm2"));

    let table = cluster.peers_table("h1").expect("h1 has the table");
    eprintln!("h1:\n{table}");
    assert!(table.contains(
        "iifname \"eth1\" oif != @open_isonet ether saddr @peers_isonet ether saddr != @trusted_isonet counter packets"
    ));
    assert!(table.contains("56:6f:4c:ab:00:00-56:6f:4c:ab:00:ff"));
    let h2 = cluster.peers_table("h2").expect("h2 has the table");
    assert!(h2.contains("elements = { \"vnet4\" }"), "{h2}");

    // status shows the ranges, trusted MACs and a moving drop counter.
    let v = cluster.status_json("h1");
    let c = &v["cross_host"][NET];
    assert_eq!(
        c["peer_macs"],
        serde_json::json!(["56:6f:4c:ab:00:00-56:6f:4c:ab:00:ff"])
    );
    assert_eq!(c["trusted_macs"], serde_json::json!(["56:6f:4c:ab:00:04"]));
    assert!(c["drops"]["packets"].as_u64().unwrap() > 0, "{v}");
    let text = String::from_utf8_lossy(&cluster.cli("h1", &["status"]).stdout).into_owned();
    assert!(
        text.contains(
            "cross-host isonet: peers 56:6f:4c:ab:00:00-56:6f:4c:ab:00:ff; trusted MACs 56:6f:4c:ab:00:04; dropped"
        ),
        "{text}"
    );
    // Same-host isolation is the backend's, untouched.
    assert_eq!(cluster.flagged("h1"), ["vnet1", "vnet3"]);
    assert_eq!(cluster.flagged("h2"), ["vnet2"]);

    // Idempotent: restore-nets and a reconcile change nothing (same handles).
    let before = cluster.peers_handles("h1");
    let restore = lab::restore_nets_json(&[(NET, h1_net())]);
    cluster.network_setup("h1", &restore);
    assert!(cluster.cli("h1", &["reconcile"]).status.success());
    assert_eq!(cluster.peers_handles("h1"), before);

    // verify: quiet when converged; an emptied peer set on h1 (VM2@h2 reaches VM1@h1) is
    // reported with exit 1, and a reconcile closes the hole.
    let verify = |cluster: &Cluster| {
        let out = cluster.cli("h1", &["verify"]);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, text) = verify(&cluster);
    assert_eq!(code, Some(0), "{text}");
    let ns = cluster.fabric.host_ns("h1").unwrap();
    let out = cluster
        .fabric
        .exec_in(ns, &[lab::NFT, "flush", "set", "bridge", TABLE, "peers_isonet"])
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // (h2 still drops VM1's replies: the one-way raw frame shows the hole.)
    let open = cluster.fabric.matrix().expect("probing");
    assert!(open.get("vm2", "vm1", lab::Protocol::Raw), "{open}");
    let (code, text) = verify(&cluster);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("drift: cross-host: table bridge bridge_isolation_peers: set peers_isonet holds other elements than recorded"),
        "{text}"
    );
    assert!(cluster.cli("h1", &["reconcile"]).status.success());
    assert_eq!(verify(&cluster).0, Some(0));
    cluster.fabric.matrix().expect("probing").assert_expected(&expected);
}

#[test]
fn removal_leaves_no_residue() {
    if !lab::root_tests_enabled("removal_leaves_no_residue") {
        return;
    }
    let mut cluster = cluster("xhb");
    cluster.network_setup("h1", &setup(h1_net()));
    cluster.network_setup("h2", &setup(h2_net()));
    cluster.start_vm("h1", 1, false);
    cluster.start_vm("h2", 2, false);
    assert!(cluster.peers_table("h1").is_some() && cluster.peers_table("h2").is_some());

    // Peers dropped from h1's network, isolation kept: h1's table goes, flags stay.
    cluster.network_setup("h1", &setup(NetSpec::on_nic(UPLINK).with_isolation("true")));
    assert_eq!(cluster.peers_table("h1"), None);
    assert_eq!(cluster.flagged("h1"), ["vnet1"]);

    // The network removed on h1: no table, no flags.
    cluster.network_setup("h1", &lab::setup_networks_json(&[(NET, NetSpec::removed())]));
    assert_eq!(cluster.peers_table("h1"), None);
    assert!(cluster.flagged("h1").is_empty());

    // release-all on h2 removes its table and flags too.
    let out = cluster.cli("h2", &["release-all"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(cluster.peers_table("h2"), None);
    assert!(cluster.flagged("h2").is_empty());

    // Nothing left: VMs on both hosts reach each other again.
    cluster.fabric.matrix().expect("probing").assert_expected(&|_, _| true);
}

#[test]
fn invalid_values_are_rejected_at_before_network_setup() {
    if !lab::root_tests_enabled("invalid_values_are_rejected_at_before_network_setup") {
        return;
    }
    let cluster = cluster("xhc");
    for (key, value) in [
        (PEERS, "56:6f:4c:ab:00:00/24"),
        (PEERS, "56:6f:4c:ab:00:ff-56:6f:4c:ab:00:00"),
        (TRUSTED_MACS, "router"),
        (UPLINK_MACS, "gateway"),
        (UPLINK_MACS, "02:b1:00:00:00:fe/44"),
    ] {
        let json = setup(NetSpec::on_nic(UPLINK).with_isolation("true").with_custom(key, value));
        let run = cluster.run("h1", "before_network_setup", Payload::Json(json.clone()), None);
        assert_eq!(run.codes, [(HOOK.to_string(), 2)], "{key}={value}: {}", run.stderr);
        let line = run.last_stderr.trim();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(line.contains("network isonet: ") && line.contains(key), "{line}");
        assert!(line.contains(value.get(..8).unwrap_or(value)), "{line}");
        assert_eq!(run.payload_text(), json, "the payload is left as it was");
    }
    assert_eq!(cluster.peers_table("h1"), None);
    assert!(!cluster.state_dir("h1").join("state.json").exists());
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
    let mut cluster = cluster("xhd");
    cluster.network_setup("h1", &setup(h1_allow(false)));
    cluster.network_setup("h2", &setup(NetSpec::on_nic(UPLINK).with_isolation("true")));
    let custom = VmSpec::new("vm2", "vnet2", CUSTOM_MAC, "10.77.0.12".parse().unwrap());
    cluster.start("h2", 2, custom, false);
    cluster.start_vm("h1", 1, false);
    cluster.start_vm("h1", 3, true);
    // Peer ranges alone: the custom MAC is outside them, VM2@h2 reaches VM1@h1.
    cluster.fabric.matrix().expect("probing").assert_expected(&|_, _| true);
    let peer_rule = |text: &str| -> String {
        let line = text.lines().find(|l| l.contains("comment \"bridge isonet\""));
        line.expect("the peer rule").trim().to_string()
    };
    let before = peer_rule(&cluster.peers_handles("h1"));

    cluster.network_setup("h1", &setup(h1_allow(true)));
    let m = cluster.fabric.matrix().expect("probing");
    m.assert_each(&gateway_only);
    for vm in ["vm1", "vm2", "vm3"] {
        assert!(Protocol::ALL.iter().all(|&p| m.get("gw", vm, p)), "gw -> {vm}\n{m}");
    }
    // The peer rule of the table before is kept as it was (same handle).
    let text = cluster.peers_handles("h1");
    assert_eq!(peer_rule(&text), before, "{text}");
    let table = cluster.peers_table("h1").unwrap();
    assert!(
        table.contains("iifname \"eth1\" oif != @open_isonet ether saddr != @uplink_isonet counter packets"),
        "{table}"
    );
    assert!(table.contains("elements = { 02:b1:00:00:00:fe }"), "{table}");

    // status: the allowed MACs and a moving counter.
    let v = cluster.status_json("h1");
    let c = &v["cross_host"][NET];
    assert_eq!(
        c["uplink_macs"],
        serde_json::json!(["02:b1:00:00:00:fe-02:b1:00:00:00:fe"])
    );
    assert!(c["uplink_drops"]["packets"].as_u64().unwrap() > 0, "{v}");
    let text = String::from_utf8_lossy(&cluster.cli("h1", &["status"]).stdout).into_owned();
    assert!(
        text.contains("; uplink MACs 02:b1:00:00:00:fe-02:b1:00:00:00:fe; dropped from others "),
        "{text}"
    );

    // Idempotent; verify reports an emptied allow-list (which drops the gateway too: fail
    // closed) and a reconcile restores it.
    let handles = cluster.peers_handles("h1");
    cluster.network_setup("h1", &lab::restore_nets_json(&[(NET, h1_allow(true))]));
    assert_eq!(cluster.peers_handles("h1"), handles);
    assert_eq!(cluster.cli("h1", &["verify"]).status.code(), Some(0));
    let ns = cluster.fabric.host_ns("h1").unwrap();
    let out = cluster
        .fabric
        .exec_in(ns, &[lab::NFT, "flush", "set", "bridge", TABLE, "uplink_isonet"])
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cluster.cli("h1", &["verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("set uplink_isonet holds other elements than recorded"),
        "{text}"
    );
    assert!(cluster.cli("h1", &["reconcile"]).status.success());
    assert_eq!(cluster.cli("h1", &["verify"]).status.code(), Some(0));

    // Lifted: the rule and its set go, the peer rule stays; VM2 reaches VM1 again.
    cluster.network_setup("h1", &setup(h1_allow(false)));
    let table = cluster.peers_table("h1").unwrap();
    assert!(!table.contains("uplink"), "{table}");
    assert_eq!(peer_rule(&cluster.peers_handles("h1")), before);
    cluster.fabric.matrix().expect("probing").assert_expected(&|_, _| true);
    // Untagged: no table at all.
    cluster.network_setup("h1", &setup(NetSpec::on_nic(UPLINK)));
    assert_eq!(cluster.peers_table("h1"), None);
}
