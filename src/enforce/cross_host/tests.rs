//! Unit tests of the cross-host filter, without root.

use super::eb::owns_eb_chain;
use super::*;
use crate::enforce::nft::{Elements, SetType, PRIORITY};
use crate::model::plan::{BridgePlan, PortPlan, Role};
use crate::model::policy::{parse_peer_macs, parse_trusted_macs, NetworkPolicy};
use crate::model::port::Port;
use crate::sys::nftnl;

fn state() -> State {
    let mut s = State::default();
    s.networks.insert(
        "red".into(),
        NetworkPolicy {
            bridge: "red".into(),
            uplink: Some("eth1".into()),
            peer_macs: parse_peer_macs("56:6f:4c:ab:00:00/32").unwrap(),
            trusted_macs: parse_trusted_macs("56:6f:4c:ab:00:04").unwrap(),
            ..NetworkPolicy::default()
        },
    );
    s.networks.insert(
        "blue".into(),
        NetworkPolicy {
            bridge: "blue".into(),
            uplink: Some("eth2".into()),
            ..NetworkPolicy::default()
        },
    );
    s.networks.insert(
        "nicless".into(),
        NetworkPolicy {
            bridge: "nicless".into(),
            uplink: None,
            peer_macs: parse_peer_macs("56:6f:4c:ab:00:00/32").unwrap(),
            ..NetworkPolicy::default()
        },
    );
    s
}

fn plan() -> Plan {
    let port = |name: &str, ifindex, role| PortPlan {
        port: Port {
            name: name.into(),
            ifindex,
            mac: None,
            isolated: None,
        },
        role,
    };
    Plan {
        bridges: vec![BridgePlan {
            network: "red".into(),
            bridge: "red".into(),
            uplink: Some("eth1".into()),
            present: true,
            ports: vec![
                port("eth1", 2, Role::Uplink),
                port("vnet1", 5, Role::Vm),
                port("vnet4", 8, Role::Trusted),
            ],
        }],
        lifted: Vec::new(),
    }
}

#[test]
fn wants_one_rule_per_network_with_peers_and_an_uplink() {
    let s = state();
    assert_eq!(wanted_bridges(&s), BTreeSet::from(["red".to_string()]));
    let want = Ruleset::from_state(&s, &plan());
    assert_eq!(
        want.bridges,
        [PeerRules {
            bridge: "red".into(),
            uplink: "eth1".into(),
            peers: vec![(0x566f_4cab_0000, 0x566f_4cab_ffff)],
            trusted: vec![0x566f_4cab_0004],
            open: vec![("vnet4".into(), 8)],
            uplink_macs: Vec::new(),
        }]
    );
    assert_eq!(set_name(SetKind::Open, "my-net.10"), "open_my_2dnet_2e10");
}

#[test]
fn renders_the_table_in_one_transaction() {
    let want = Ruleset::from_state(&state(), &plan());
    let text = OURS.batch(&Live::default().diff(&want)).to_string();
    assert_eq!(
        text,
        concat!(
            r#"{"nftables":[{"add":{"table":{"family":"bridge","name":"bridge_isolation_peers"}}},"#,
            r#"{"add":{"chain":{"family":"bridge","hook":"forward","name":"forward","policy":"accept","prio":-200,"table":"bridge_isolation_peers","type":"filter"}}},"#,
            r#"{"add":{"set":{"family":"bridge","flags":["interval"],"name":"peers_red","table":"bridge_isolation_peers","type":"ether_addr"}}},"#,
            r#"{"add":{"element":{"elem":[{"range":["56:6f:4c:ab:00:00","56:6f:4c:ab:ff:ff"]}],"family":"bridge","name":"peers_red","table":"bridge_isolation_peers"}}},"#,
            r#"{"add":{"set":{"family":"bridge","flags":["interval"],"name":"trusted_red","table":"bridge_isolation_peers","type":"ether_addr"}}},"#,
            r#"{"add":{"element":{"elem":["56:6f:4c:ab:00:04"],"family":"bridge","name":"trusted_red","table":"bridge_isolation_peers"}}},"#,
            r#"{"add":{"set":{"family":"bridge","name":"open_red","table":"bridge_isolation_peers","type":"iface_index"}}},"#,
            r#"{"add":{"element":{"elem":[8],"family":"bridge","name":"open_red","table":"bridge_isolation_peers"}}},"#,
            r#"{"add":{"rule":{"chain":"forward","comment":"bridge red","expr":["#,
            r#"{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"eth1"}},"#,
            r#"{"match":{"left":{"meta":{"key":"oif"}},"op":"!=","right":"@open_red"}},"#,
            r#"{"match":{"left":{"payload":{"field":"saddr","protocol":"ether"}},"op":"==","right":"@peers_red"}},"#,
            r#"{"match":{"left":{"payload":{"field":"saddr","protocol":"ether"}},"op":"!=","right":"@trusted_red"}},"#,
            r#"{"counter":null},{"drop":null}],"family":"bridge","table":"bridge_isolation_peers"}}}]}"#
        )
    );
    // Nothing wanted, nothing there: nothing to do.
    assert!(Live::default().diff(&Ruleset::default()).is_empty());
}

/// The table above as [`nftnl::read_table`] returns it, with `open` in the open set and
/// `counter` frames dropped (what `nft --debug=netlink` shows nft 1.0.6 send: the peer
/// range added as two halves; interval sets with a leading range end at 0, and each
/// range's end the first key out of it).
fn table(counter: u64, open: &[u32]) -> nftnl::Table {
    let mac = |m: u64| m.to_be_bytes()[2..].to_vec();
    let elements = |keys: &[(u64, bool)]| {
        keys.iter()
            .map(|&(m, end)| nftnl::Element {
                key: mac(m),
                flags: if end { nftnl::ELEM_INTERVAL_END } else { 0 },
                ..nftnl::Element::default()
            })
            .collect()
    };
    let macs = |name: &str, keys: &[(u64, bool)]| nftnl::Set {
        name: name.into(),
        flags: nftnl::SET_INTERVAL,
        key_type: 9,
        key_len: 6,
        elements: elements(keys),
        ..nftnl::Set::default()
    };
    let ports = nftnl::Set::of_ports("open_red", open);
    let mut uplink = b"eth1".to_vec();
    uplink.resize(16, 0);
    let saddr = || nftnl::Expr::Payload {
        base: nftnl::PAYLOAD_LL,
        offset: 6,
        len: 6,
        dreg: 1,
    };
    let lookup = |set: &str, inverted| nftnl::Expr::Lookup {
        set: set.into(),
        sreg: 1,
        inverted,
    };
    nftnl::Table {
        chains: vec![nftnl::Chain {
            name: CHAIN.into(),
            hook: Some((nftnl::NF_BR_FORWARD, PRIORITY)),
            policy: Some(nftnl::NF_ACCEPT),
            kind: Some("filter".into()),
        }],
        sets: vec![
            macs(
                "peers_red",
                &[
                    (0x566f_4cac_0000, true),
                    (0x566f_4cab_8000, false),
                    (0x566f_4cab_8000, true),
                    (0x566f_4cab_0000, false),
                    (0, true),
                ],
            ),
            macs(
                "trusted_red",
                &[(0, true), (0x566f_4cab_0004, false), (0x566f_4cab_0005, true)],
            ),
            ports,
        ],
        rules: vec![nftnl::Rule {
            chain: CHAIN.into(),
            handle: 5,
            comment: Some("bridge red".into()),
            exprs: vec![
                nftnl::Expr::Meta {
                    key: nftnl::META_IIFNAME,
                    dreg: 1,
                },
                nftnl::Expr::Cmp {
                    sreg: 1,
                    op: nftnl::CMP_EQ,
                    data: uplink,
                },
                nftnl::Expr::Meta {
                    key: nftnl::META_OIF,
                    dreg: 1,
                },
                lookup("open_red", true),
                saddr(),
                lookup("peers_red", false),
                saddr(),
                lookup("trusted_red", true),
                nftnl::Expr::Counter {
                    packets: counter,
                    bytes: counter * 60,
                },
                nftnl::Expr::Verdict(nftnl::NF_DROP),
            ],
        }],
        objects: 0,
    }
}

fn listed(counter: u64, open: &[u32]) -> Live {
    Live::from_table(Some(&table(counter, open)))
}

const GW: u64 = 0x02b1_0000_00fe;

/// [`state`] with the gateway as the only source allowed from red's uplink.
fn allow_gateway(peers: bool) -> State {
    let mut s = state();
    let red = s.networks.get_mut("red").unwrap();
    red.uplink_macs = crate::model::policy::parse_uplink_macs("02:b1:00:00:00:fe").unwrap();
    if !peers {
        red.peer_macs.clear();
    }
    s
}

/// [`table`] plus what the uplink allow-list adds: set `uplink_red` (the gateway) and
/// the rule dropping other sources (handle 6) with `counter` frames.
fn table_with_uplink(counter: u64, open: &[u32]) -> nftnl::Table {
    let mut t = table(counter, open);
    let mac = |m: u64| m.to_be_bytes()[2..].to_vec();
    let key = |m, end| nftnl::Element {
        key: mac(m),
        flags: if end { nftnl::ELEM_INTERVAL_END } else { 0 },
        ..nftnl::Element::default()
    };
    t.sets.push(nftnl::Set {
        name: "uplink_red".into(),
        flags: nftnl::SET_INTERVAL,
        key_type: 9,
        key_len: 6,
        elements: vec![key(0, true), key(GW, false), key(GW + 1, true)],
        ..nftnl::Set::default()
    });
    let mut exprs = t.rules[0].exprs.clone();
    // iifname, cmp, oif, lookup open, then saddr != @uplink_red instead of the peer lookups.
    exprs.truncate(4);
    exprs.extend([
        nftnl::Expr::Payload {
            base: nftnl::PAYLOAD_LL,
            offset: 6,
            len: 6,
            dreg: 1,
        },
        nftnl::Expr::Lookup {
            set: "uplink_red".into(),
            sreg: 1,
            inverted: true,
        },
        nftnl::Expr::Counter {
            packets: counter + 1,
            bytes: (counter + 1) * 60,
        },
        nftnl::Expr::Verdict(nftnl::NF_DROP),
    ]);
    t.rules.push(nftnl::Rule {
        chain: CHAIN.into(),
        handle: 6,
        comment: Some("bridge red uplink_macs".into()),
        exprs,
    });
    t
}

#[test]
fn uplink_macs_are_added_to_a_table_of_the_release_before_without_a_gap() {
    let want = Ruleset::from_state(&allow_gateway(true), &plan());
    let red = &want.bridges[0];
    assert_eq!(red.uplink_macs, [(GW, GW)]);
    assert_eq!(red.rules(), [RuleKind::Peers, RuleKind::Uplink]);
    // The table as the release before uplink MACs left it: nothing deleted, the peer
    // rule keeps its handle and counter; one set and one rule are added.
    let old = listed(7, &[8]);
    let cmds = old.diff(&want);
    assert_eq!(
        cmds,
        [
            Cmd::AddSet("uplink_red".into(), SetType::MacRanges),
            Cmd::AddElements("uplink_red".into(), Elements::Macs(vec![(GW, GW)])),
            Cmd::AddRule((red.clone(), RuleKind::Uplink)),
        ]
    );
    assert_eq!(
        OURS.batch(&cmds).to_string(),
        concat!(
            r#"{"nftables":[{"add":{"set":{"family":"bridge","flags":["interval"],"name":"uplink_red","table":"bridge_isolation_peers","type":"ether_addr"}}},"#,
            r#"{"add":{"element":{"elem":["02:b1:00:00:00:fe"],"family":"bridge","name":"uplink_red","table":"bridge_isolation_peers"}}},"#,
            r#"{"add":{"rule":{"chain":"forward","comment":"bridge red uplink_macs","expr":["#,
            r#"{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"eth1"}},"#,
            r#"{"match":{"left":{"meta":{"key":"oif"}},"op":"!=","right":"@open_red"}},"#,
            r#"{"match":{"left":{"payload":{"field":"saddr","protocol":"ether"}},"op":"!=","right":"@uplink_red"}},"#,
            r#"{"counter":null},{"drop":null}],"family":"bridge","table":"bridge_isolation_peers"}}}]}"#
        )
    );
    let table = "cross-host: table bridge bridge_isolation_peers";
    assert_eq!(
        old.drift(&want),
        [
            format!("{table}: set uplink_red is missing or has the wrong type"),
            format!("{table}: bridge red: the uplink_macs drop rule is missing or altered"),
        ]
    );
    // The whole table for an empty kernel: the old table's commands, then the new ones.
    let create = want.create();
    let mut without = want.clone();
    without.bridges[0].uplink_macs.clear();
    assert_eq!(create.len(), without.create().len() + 3);
}

#[test]
fn uplink_rule_reads_back_converged_and_counts() {
    let want = Ruleset::from_state(&allow_gateway(true), &plan());
    let live = Live::from_table(Some(&table_with_uplink(7, &[8])));
    assert_eq!(live.sets["uplink_red"].elements, Elements::Macs(vec![(GW, GW)]));
    assert_eq!(live.diff(&want), []);
    assert!(live.drift(&want).is_empty());
    let counters = live.counters(&want);
    assert_eq!(counters[&("red".to_string(), RuleKind::Peers)].packets, 7);
    assert_eq!(counters[&("red".to_string(), RuleKind::Uplink)].packets, 8);
    // Another allowed MAC: only the set changes.
    let mut more = want.clone();
    more.bridges[0].uplink_macs = vec![(GW, GW + 1)];
    assert_eq!(
        live.diff(&more),
        [
            Cmd::FlushSet("uplink_red".into()),
            Cmd::AddElements("uplink_red".into(), Elements::Macs(vec![(GW, GW + 1)]))
        ]
    );
    // The property lifted: its rule and set go, the peer rule stays.
    let old = Ruleset::from_state(&state(), &plan());
    assert_eq!(
        live.diff(&old),
        [Cmd::DeleteRule(CHAIN.into(), 6), Cmd::DeleteSet("uplink_red".into())]
    );
    // An allow-list without peer ranges: the peer rule and its sets go.
    let only = Ruleset::from_state(&allow_gateway(false), &plan());
    assert_eq!(only.bridges[0].sets(), BTreeSet::from([SetKind::Open, SetKind::Uplink]));
    assert_eq!(
        live.diff(&only),
        [
            Cmd::DeleteRule(CHAIN.into(), 5),
            Cmd::DeleteSet("peers_red".into()),
            Cmd::DeleteSet("trusted_red".into())
        ]
    );
    let table = "cross-host: table bridge bridge_isolation_peers";
    assert_eq!(
        live.drift(&only),
        [
            format!("{table}: rule handle 5 in chain forward is not ours or altered"),
            format!("{table}: set peers_red belongs to no rule of any network"),
            format!("{table}: set trusted_red belongs to no rule of any network"),
        ]
    );
    // An altered allow-list rule (the lookup no longer inverted) is replaced.
    let mut t = table_with_uplink(7, &[8]);
    if let nftnl::Expr::Lookup { inverted, .. } = &mut t.rules[1].exprs[5] {
        *inverted = false;
    }
    assert_eq!(
        Live::from_table(Some(&t)).diff(&want),
        [
            Cmd::DeleteRule(CHAIN.into(), 6),
            Cmd::AddRule((want.bridges[0].clone(), RuleKind::Uplink))
        ]
    );
    // A network with uplink MACs but no uplink gets nothing.
    let mut s = allow_gateway(false);
    s.networks.get_mut("red").unwrap().uplink = None;
    assert!(Ruleset::from_state(&s, &plan()).bridges.is_empty());
    assert!(wanted_bridges(&s).is_empty());
}

#[test]
fn renders_the_firewalld_variant_of_the_uplink_allow_list() {
    let mut want = Ruleset::from_state(&allow_gateway(true), &plan());
    want.bridges[0].uplink_macs = vec![(GW, GW), (0x5254_0000_0000, 0x5254_0001_ffff)];
    let eb = want.eb().unwrap();
    let lines: Vec<String> = eb
        .direct_rules()
        .iter()
        .map(|(_, _, c, p, a)| format!("{c} {p} {}", a.join(" ")))
        .filter(|l| l.contains("BRIDGE_UPLINK_"))
        .collect();
    assert_eq!(
        lines,
        [
            "BRIDGE_UPLINK_red 0 -o vnet4 -j RETURN",
            "BRIDGE_UPLINK_red 0 -s 02:b1:00:00:00:fe -j RETURN",
            "BRIDGE_UPLINK_red 0 -s 52:54:00:00:00:00/ff:ff:ff:fe:00:00 -j RETURN",
            "BRIDGE_UPLINK_red 1 -j DROP",
            "FORWARD 0 -i eth1 -j BRIDGE_UPLINK_red",
        ]
    );
    assert_eq!(
        eb.chains,
        BTreeSet::from(["BRIDGE_PEERS_red".to_string(), "BRIDGE_UPLINK_red".to_string()])
    );
    assert!(owns_eb_chain("BRIDGE_UPLINK_red") && !owns_eb_chain("BRIDGE_UPLINK_"));
    // The peer chain is the one of the release before.
    want.bridges[0].uplink_macs.clear();
    let old = want.eb().unwrap();
    assert_eq!(old.chains, BTreeSet::from(["BRIDGE_PEERS_red".to_string()]));
    assert!(eb.rules.is_superset(&old.rules));
    // Without peer ranges, no peer chain.
    let only = Ruleset::from_state(&allow_gateway(false), &plan()).eb().unwrap();
    assert_eq!(only.chains, BTreeSet::from(["BRIDGE_UPLINK_red".to_string()]));
    assert_eq!(eb_chain_of("red", RuleKind::Uplink), "BRIDGE_UPLINK_red");
}

#[test]
fn converged_table_needs_nothing_and_counts() {
    let want = Ruleset::from_state(&state(), &plan());
    let live = listed(7, &[8]);
    assert_eq!(
        live.sets["peers_red"].elements,
        Elements::Macs(vec![(0x566f_4cab_0000, 0x566f_4cab_ffff)])
    );
    assert_eq!(live.diff(&want), []);
    assert_eq!(
        live.counters(&want)[&("red".to_string(), RuleKind::Peers)],
        DropCounter { packets: 7, bytes: 420 }
    );
}

#[test]
fn member_changes_touch_only_their_set() {
    let want = Ruleset::from_state(&state(), &plan());
    let live = listed(7, &[12]);
    assert_eq!(
        live.diff(&want),
        [
            Cmd::FlushSet("open_red".into()),
            Cmd::AddElements("open_red".into(), Elements::Indexes(vec![8]))
        ]
    );
    // The uplink renamed: the rule is replaced, sets stay.
    let mut moved = want.clone();
    moved.bridges[0].uplink = "bond0".into();
    let live = listed(7, &[8]);
    assert_eq!(
        live.diff(&moved),
        [
            Cmd::DeleteRule(CHAIN.into(), 5),
            Cmd::AddRule((moved.bridges[0].clone(), RuleKind::Peers))
        ]
    );
    // Nothing wanted any more: the whole table goes.
    assert_eq!(live.diff(&Ruleset::default()), [Cmd::AddTable, Cmd::DeleteTable]);
}

#[test]
fn drift_names_what_reconcile_would_repair() {
    let want = Ruleset::from_state(&state(), &plan());
    assert_eq!(listed(7, &[8]).drift(&want), Vec::<String>::new());
    let table = "cross-host: table bridge bridge_isolation_peers";
    let live = listed(7, &[12]);
    assert_eq!(
        live.drift(&want),
        [format!("{table}: set open_red holds other elements than recorded")]
    );
    let mut moved = want.clone();
    moved.bridges[0].uplink = "bond0".into();
    assert_eq!(
        listed(7, &[8]).drift(&moved),
        [
            format!("{table}: rule handle 5 in chain forward is not ours or altered"),
            format!("{table}: bridge red: the drop rule is missing or altered"),
        ]
    );
    assert_eq!(Live::default().drift(&want), [format!("{table} is missing")]);
    assert_eq!(
        live.drift(&Ruleset::default()),
        [format!(
            "{table} is still there, but no network has peer ranges or uplink MACs"
        )]
    );
}

#[test]
fn foreign_objects_rebuild_the_table() {
    let want = Ruleset::from_state(&state(), &plan());
    let mut t = table(0, &[8]);
    t.chains.push(nftnl::Chain {
        name: "sneaky".into(),
        ..nftnl::Chain::default()
    });
    let live = Live::from_table(Some(&t));
    assert!(live.foreign);
    let cmds = live.diff(&want);
    assert_eq!(cmds[..2], [Cmd::AddTable, Cmd::DeleteTable]);
    assert_eq!(cmds[2..], want.create()[..]);
}

#[test]
fn splits_ranges_into_prefixes() {
    // A prefix stays one.
    assert_eq!(
        mac_prefixes(0x566f_4cab_0000, 0x566f_4cab_ffff),
        [(0x566f_4cab_0000, 32)]
    );
    // One MAC.
    assert_eq!(
        mac_prefixes(0x566f_4cab_0004, 0x566f_4cab_0004),
        [(0x566f_4cab_0004, 48)]
    );
    // :00:01-:00:0e is 1/48, 2/47, 4/46, 8/45 up, then down 4, 2 (and nothing at 1).
    assert_eq!(
        mac_prefixes(0x01, 0x0e),
        [(0x01, 48), (0x02, 47), (0x04, 46), (0x08, 46), (0x0c, 47), (0x0e, 48)]
    );
    // Everything.
    assert_eq!(mac_prefixes(0, (1 << 48) - 1), [(0, 0)]);
    // Any range: the prefixes tile it exactly, in order, each aligned.
    for (first, last) in [
        (0x566f_4cab_0003u64, 0x566f_4cab_fffd),
        (0x0000_0000_0000, 0x7fff_ffff_ffff),
        (0x1234_5678_9abc, 0x1234_5678_9abc),
        (0xffff_ffff_fff0, 0xffff_ffff_ffff),
        (0x0000_0000_0001, 0xffff_ffff_fffe),
    ] {
        let p = mac_prefixes(first, last);
        let mut at = first;
        for &(base, len) in &p {
            let size = 1u64 << (48 - len);
            assert_eq!(base, at);
            assert_eq!(base % size, 0, "{base:x}/{len} is aligned");
            at = base + size;
        }
        assert_eq!(at, last + 1);
        assert!(p.len() <= 2 * 48);
    }
    assert_eq!(eb_source(0x566f_4cab_0000, 32), "56:6f:4c:ab:00:00/ff:ff:ff:ff:00:00");
    assert_eq!(eb_source(0x566f_4cab_8000, 33), "56:6f:4c:ab:80:00/ff:ff:ff:ff:80:00");
    assert_eq!(eb_source(0x566f_4cab_0004, 48), "56:6f:4c:ab:00:04");
}

#[test]
fn renders_the_firewalld_variant() {
    use crate::enforce::firewalld::{diff_part, part_of_direct, DirectRule, Ours, IPV, TABLE};
    let mut want = Ruleset::from_state(&state(), &plan());
    want.bridges[0].peers = vec![
        (0x566f_4cab_0000, 0x566f_4cab_ffff),
        (0x566f_4cac_0000, 0x566f_4cac_7fff),
    ];
    let eb = want.eb().unwrap();
    let lines: Vec<String> = eb
        .direct_rules()
        .iter()
        .map(|(_, _, c, p, a)| format!("{c} {p} {}", a.join(" ")))
        .collect();
    assert_eq!(
        lines,
        [
            "BRIDGE_PEERS_red 0 -o vnet4 -j RETURN",
            "BRIDGE_PEERS_red 0 -s 56:6f:4c:ab:00:04 -j RETURN",
            "BRIDGE_PEERS_red 1 -s 56:6f:4c:ab:00:00/ff:ff:ff:ff:00:00 -j DROP",
            "BRIDGE_PEERS_red 1 -s 56:6f:4c:ac:00:00/ff:ff:ff:ff:80:00 -j DROP",
            "FORWARD 0 -i eth1 -j BRIDGE_PEERS_red",
        ]
    );
    assert_eq!(eb.chains, BTreeSet::from(["BRIDGE_PEERS_red".to_string()]));
    // Listed among the backend's own rules and others', each part sees only itself.
    let mut rules: Vec<DirectRule> = eb.direct_rules();
    let backend = Ours::from_plan(&plan()).unwrap();
    rules.extend(backend.direct_rules());
    rules.push((
        IPV.into(),
        TABLE.into(),
        "FORWARD".into(),
        0,
        vec!["-j".into(), "ACCEPT".into()],
    ));
    let mut chains = eb.direct_chains();
    chains.extend(backend.direct_chains());
    assert_eq!(part_of_direct(&chains, &rules, owns_eb_chain), eb);
    assert_eq!(Ours::of_direct(&chains, &rules), backend);
    // Chains first, the jump last; removal the other way round.
    let add: Vec<String> = diff_part(&Ours::default(), &eb, owns_eb_chain)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(add.first().unwrap(), "addChain eb filter BRIDGE_PEERS_red");
    assert_eq!(
        add.last().unwrap(),
        "addRule eb filter FORWARD 0 -i eth1 -j BRIDGE_PEERS_red"
    );
    let del: Vec<String> = diff_part(&eb, &Ours::default(), owns_eb_chain)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        del.first().unwrap(),
        "removeRule eb filter FORWARD 0 -i eth1 -j BRIDGE_PEERS_red"
    );
    assert_eq!(del.last().unwrap(), "removeChain eb filter BRIDGE_PEERS_red");
    assert!(diff_part(&eb, &eb, owns_eb_chain).is_empty());
    // A wildcard uplink cannot be matched exactly.
    want.bridges[0].uplink = "eth+".into();
    assert!(want.eb().is_err());
}
