//! Unit tests of the nftables backend, without root.

use serde_json::{json, Value};

use super::live::rule_kind;
use super::*;
use crate::enforce::nft::{Elements, SetType, PRIORITY};
use crate::model::plan::fixtures::{bridge, plan, red};
use crate::model::plan::{PortPlan, Role};
use crate::sys::nftnl::Stmt;

fn port(name: &str, ifindex: u32, role: Role) -> PortPlan {
    crate::model::plan::fixtures::port(name, ifindex, role, Some(false))
}

fn lookup(key: u32, set: &str) -> [nftnl::Expr; 2] {
    [
        nftnl::Expr::Meta { key, dreg: 1 },
        nftnl::Expr::Lookup {
            set: set.into(),
            sreg: 1,
            inverted: false,
        },
    ]
}

fn counted_drop(packets: u64) -> [nftnl::Expr; 2] {
    [
        nftnl::Expr::Counter {
            packets,
            bytes: packets * 84,
        },
        nftnl::Expr::Verdict(nftnl::NF_DROP),
    ]
}

/// The drop rule of a bridge's chain as the reader returns it (`nft --debug=netlink`
/// shows `meta load iif => reg 1`, `lookup reg 1 set S`, `counter`, `immediate reg 0
/// drop`).
fn drop_rule(chain: &str, handle: u64, set: &str, comment: &str, packets: u64) -> nftnl::Rule {
    let mut exprs = lookup(nftnl::META_IIF, set).to_vec();
    exprs.extend(counted_drop(packets));
    nftnl::Rule {
        chain: chain.into(),
        handle,
        comment: Some(comment.into()),
        exprs,
    }
}

/// A rule of the previous shape in `forward`: `iif @S oif @S counter drop`.
fn legacy_rule(handle: u64, set: &str, comment: &str, packets: u64) -> nftnl::Rule {
    let mut exprs = lookup(nftnl::META_IIF, set).to_vec();
    exprs.extend(lookup(nftnl::META_OIF, set));
    exprs.extend(counted_drop(packets));
    nftnl::Rule {
        chain: CHAIN.into(),
        handle,
        comment: Some(comment.into()),
        exprs,
    }
}

/// `oif vmap @ports` (`meta load oif => reg 1`, `lookup reg 1 set ports dreg 0`): the
/// dispatch rule of the previous shape, without the gate.
fn ungated_rule(handle: u64) -> nftnl::Rule {
    nftnl::Rule {
        chain: CHAIN.into(),
        handle,
        comment: None,
        exprs: vec![
            nftnl::Expr::Meta {
                key: nftnl::META_OIF,
                dreg: 1,
            },
            nftnl::Expr::VerdictMap {
                map: MAP.into(),
                sreg: 1,
            },
        ],
    }
}

/// `meta oifgroup 0xb150 meta iifgroup 0xb150 oif vmap @ports` as `nft --debug=netlink`
/// shows it: `meta load oifgroup => reg 1`, `cmp eq reg 1 0x0000b150`, the same for
/// iifgroup, then the ungated rule's two expressions.
fn dispatch_rule(handle: u64) -> nftnl::Rule {
    let gate = |key| {
        [
            nftnl::Expr::Meta { key, dreg: 1 },
            nftnl::Expr::Cmp {
                sreg: 1,
                op: nftnl::CMP_EQ,
                data: GROUP.to_ne_bytes().to_vec(),
            },
        ]
    };
    let mut rule = ungated_rule(handle);
    let mut exprs = gate(nftnl::META_OIFGROUP).to_vec();
    exprs.extend(gate(nftnl::META_IIFGROUP));
    exprs.append(&mut rule.exprs);
    rule.exprs = exprs;
    rule
}

fn port_map(entries: &[(u32, &str)]) -> nftnl::Set {
    nftnl::Set {
        name: MAP.into(),
        flags: nftnl::SET_MAP,
        key_type: 20,
        key_len: 4,
        data_type: nftnl::DATA_TYPE_VERDICT,
        elements: entries
            .iter()
            .map(|(i, chain)| nftnl::Element {
                key: i.to_ne_bytes().to_vec(),
                verdict: Some(nftnl::Verdict {
                    code: nftnl::NFT_GOTO,
                    chain: Some(chain.to_string()),
                }),
                ..nftnl::Element::default()
            })
            .collect(),
    }
}

fn base_chain() -> nftnl::Chain {
    nftnl::Chain {
        name: CHAIN.into(),
        hook: Some((nftnl::NF_BR_FORWARD, PRIORITY)),
        policy: Some(nftnl::NF_ACCEPT),
        kind: Some("filter".into()),
    }
}

fn regular(name: &str) -> nftnl::Chain {
    nftnl::Chain {
        name: name.into(),
        ..nftnl::Chain::default()
    }
}

/// Our table after `render` of red plus a bridge `my-net.10` with one VM port, and some
/// traffic, as [`nftnl::read_table`] returns it.
fn table() -> nftnl::Table {
    nftnl::Table {
        chains: vec![base_chain(), regular("br_red"), regular("br_my_2dnet_2e10")],
        sets: vec![
            nftnl::Set::of_ports("vm_red", &[7, 9]),
            nftnl::Set::of_ports("vm_my_2dnet_2e10", &[20]),
            port_map(&[(7, "br_red"), (9, "br_red"), (20, "br_my_2dnet_2e10")]),
        ],
        rules: vec![
            dispatch_rule(3),
            drop_rule("br_red", 4, "vm_red", "bridge red", 12),
            drop_rule("br_my_2dnet_2e10", 5, "vm_my_2dnet_2e10", "bridge my-net.10", 0),
        ],
        objects: 0,
    }
}

/// The same bridges in a table of the previous shape: one rule per bridge in `forward`.
fn legacy_table() -> nftnl::Table {
    nftnl::Table {
        chains: vec![base_chain()],
        sets: vec![
            nftnl::Set::of_ports("vm_red", &[7, 9]),
            nftnl::Set::of_ports("vm_my_2dnet_2e10", &[20]),
        ],
        rules: vec![
            legacy_rule(4, "vm_red", "bridge red", 12),
            legacy_rule(5, "vm_my_2dnet_2e10", "bridge my-net.10", 0),
        ],
        objects: 0,
    }
}

fn listing() -> Live {
    Live::from_table(Some(&table()))
}

fn two_bridges() -> Plan {
    plan(vec![red(), bridge("my-net.10", vec![port("tap0", 20, Role::Vm)])])
}

fn drop_cmd(bridge: &str) -> Cmd {
    Cmd::AddRule(Rule::Drop {
        chain: chain_name(bridge),
        set: set_name(bridge),
        comment: comment(bridge),
    })
}

fn verdicts(entries: &[(u32, &str)]) -> Cmd {
    Cmd::AddElements(
        MAP.into(),
        Elements::Gotos(entries.iter().map(|(i, c)| (*i, c.to_string())).collect()),
    )
}

/// The names themselves are tested with [`chain_name`](crate::enforce::chain_name); here,
/// that the map and the base chain are no bridge's.
#[test]
fn the_map_and_the_base_chain_are_no_bridges() {
    assert_ne!(set_name("ports"), MAP, "the map is no bridge's set");
    assert_eq!(bridge_of_set(MAP), None);
    assert_eq!(bridge_of_chain(CHAIN), None);
    assert_eq!(bridge_of_set(&chain_name("red")), None);
    assert_eq!(set_name("my-net.10"), "vm_my_2dnet_2e10");
    assert_eq!(chain_name("my-net.10"), "br_my_2dnet_2e10");
}

#[test]
fn renders_a_set_and_a_chain_per_bridge_and_one_map() {
    let t = |mut o: Value| {
        o["family"] = json!("bridge");
        o["table"] = json!("bridge_isolation");
        o
    };
    let want = json!({"nftables": [
        {"add": {"table": {"family": "bridge", "name": "bridge_isolation"}}},
        {"add": {"chain": t(json!({"name": "forward",
            "type": "filter", "hook": "forward", "prio": -200, "policy": "accept"}))}},
        {"add": {"set": t(json!({"name": "vm_red", "type": "iface_index"}))}},
        {"add": {"element": t(json!({"name": "vm_red", "elem": [7, 9]}))}},
        {"add": {"chain": t(json!({"name": "br_red"}))}},
        {"add": {"rule": t(json!({"chain": "br_red", "comment": "bridge red",
            "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": "@vm_red"}},
                {"counter": null},
                {"drop": null}]}))}},
        {"add": {"map": t(json!({"name": "ports", "type": "iface_index", "map": "verdict"}))}},
        {"add": {"element": t(json!({"name": "ports", "elem": [
            [7, {"goto": {"target": "br_red"}}],
            [9, {"goto": {"target": "br_red"}}]]}))}},
        {"add": {"rule": t(json!({"chain": "forward",
            "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "oifgroup"}}, "right": 0xb150}},
                {"match": {"op": "==", "left": {"meta": {"key": "iifgroup"}}, "right": 0xb150}},
                {"vmap": {"key": {"meta": {"key": "oif"}}, "data": "@ports"}}]}))}}
    ]});
    assert_eq!(render(&plan(vec![red()])), want);
    // A bridge without VM ports keeps its (empty) set, its chain and rule, the map and
    // the dispatch rule, and no element command.
    let lonely = render(&plan(vec![bridge("blue", vec![port("eth2", 5, Role::Uplink)])]));
    let cmds = lonely["nftables"].as_array().unwrap();
    assert_eq!(cmds.len(), 7);
    assert!(cmds.iter().all(|c| c["add"].get("element").is_none()));
    assert_eq!(
        Cmd::DeleteElements(MAP.into(), Elements::Indexes(vec![7])).to_json(TABLE),
        json!({"delete": {"element": t(json!({"name": "ports", "elem": [7]}))}})
    );
    assert_eq!(
        Cmd::DeleteRule("br_red".into(), 4).to_json(TABLE),
        json!({"delete": {"rule": t(json!({"chain": "br_red", "handle": 4}))}})
    );
    assert_eq!(
        Cmd::FlushChain("br_red".into()).to_json(TABLE),
        json!({"flush": {"chain": t(json!({"name": "br_red"}))}})
    );
}

#[test]
fn reads_a_table() {
    let live = listing();
    assert!(live.exists && live.chain_hooked && live.chain_exact && !live.foreign);
    assert_eq!(
        live.bridges(),
        BTreeSet::from(["my-net.10".to_string(), "red".to_string()])
    );
    assert_eq!(live.rules.len(), 1);
    assert_eq!(live.rules[0].kind, RuleKind::Dispatch);
    assert_eq!(live.chains["br_red"][0].kind, RuleKind::Drop("vm_red".into()));
    assert_eq!(live.map.as_ref().unwrap()[&20].as_deref(), Some("br_my_2dnet_2e10"));
    assert_eq!(live.enforced("red"), BTreeSet::from([7, 9]));
    assert_eq!(live.enforced("my-net.10"), BTreeSet::from([20]));
    assert_eq!(
        live.counter("red"),
        Some(DropCounter {
            packets: 12,
            bytes: 1008
        })
    );
    assert_eq!(live.counter("my-net.10"), Some(DropCounter::default()));
    assert_eq!(live.counter("blue"), None);
    assert!(live.enforced("blue").is_empty());
    assert_eq!(Live::from_table(None), Live::default());
    // Someone else's chain (regular or hooked), map or object, and a chain of another
    // priority.
    for chain in [
        regular("mine"),
        nftnl::Chain {
            name: "br_blue".into(),
            ..base_chain()
        },
    ] {
        let mut other = table();
        other.chains.push(chain);
        assert!(Live::from_table(Some(&other)).foreign);
    }
    let mut map = table();
    map.sets[1].flags = nftnl::SET_MAP;
    let map = Live::from_table(Some(&map));
    assert!(map.foreign && !map.sets.contains_key("vm_my_2dnet_2e10"));
    let mut values = table();
    values.sets[2].data_type = 20;
    assert!(Live::from_table(Some(&values)).foreign, "a port map to values");
    let mut object = table();
    object.objects = 1;
    assert!(Live::from_table(Some(&object)).foreign);
    let mut late = table();
    late.chains[0].hook = Some((nftnl::NF_BR_FORWARD, 0));
    let late = Live::from_table(Some(&late));
    assert!(late.chain_hooked && !late.chain_exact);
}

#[test]
fn enforcement_needs_the_set_the_map_the_chain_and_the_dispatch_rule() {
    // A port the map sends elsewhere, or not at all, is not kept apart.
    let mut live = listing();
    let map = live.map.as_mut().unwrap();
    map.insert(9, Some("br_my_2dnet_2e10".into()));
    map.remove(&7);
    assert!(live.enforced("red").is_empty());
    let mut live = listing();
    live.map.as_mut().unwrap().insert(9, None);
    assert_eq!(live.enforced("red"), BTreeSet::from([7]));
    // No dispatch rule, no drop rule, a foreign rule in the bridge's chain or in forward.
    let mut live = listing();
    live.rules.clear();
    assert!(live.enforced("red").is_empty());
    let mut live = listing();
    live.chains.get_mut("br_red").unwrap().clear();
    assert!(live.enforced("red").is_empty());
    assert_eq!(live.enforced("my-net.10"), BTreeSet::from([20]));
    let accept = LiveRule {
        handle: 8,
        kind: RuleKind::Other,
        comment: None,
        counter: None,
    };
    let mut live = listing();
    live.chains.get_mut("br_red").unwrap().insert(0, accept.clone());
    assert!(live.enforced("red").is_empty());
    assert_eq!(live.enforced("my-net.10"), BTreeSet::from([20]));
    let mut live = listing();
    live.rules.insert(0, accept);
    assert!(live.enforced("my-net.10").is_empty(), "a foreign rule may accept first");
}

#[test]
fn converged_table_needs_no_transaction() {
    let live = listing();
    assert_eq!(live.diff(&Ruleset::from_plan(&two_bridges())), vec![]);
    assert_eq!(Live::default().diff(&Ruleset::default()), vec![]);
}

#[test]
fn a_vm_start_only_adds_its_port_to_the_set_and_the_map() {
    let live = listing();
    let mut p = two_bridges();
    p.bridges[0].ports.push(port("vnet4", 30, Role::Vm));
    assert_eq!(
        live.diff(&Ruleset::from_plan(&p)),
        vec![
            Cmd::AddElements("vm_red".into(), Elements::Indexes(vec![30])),
            verdicts(&[(30, "br_red")]),
        ]
    );
    // A VM stopped, another port made trusted: their elements go, nothing else.
    let mut p = two_bridges();
    p.bridges[0].ports[2].role = Role::Trusted; // vnet2 becomes trusted
    p.bridges[1].ports.clear();
    assert_eq!(
        live.diff(&Ruleset::from_plan(&p)),
        vec![
            Cmd::DeleteElements(MAP.into(), Elements::Indexes(vec![9, 20])),
            Cmd::DeleteElements("vm_my_2dnet_2e10".into(), Elements::Indexes(vec![20])),
            Cmd::DeleteElements("vm_red".into(), Elements::Indexes(vec![9])),
        ]
    );
}

#[test]
fn member_changes_only_touch_the_set_and_the_map() {
    // A VM port recreated under the same name: its old index no longer resolves.
    let mut stale = listing();
    stale.sets.get_mut("vm_red").unwrap().elements = Elements::Indexes(vec![9, 17]);
    let map = stale.map.as_mut().unwrap();
    map.remove(&7);
    map.insert(17, Some("br_red".into()));
    assert!(stale.enforced("red").contains(&17));
    assert_eq!(
        stale.diff(&Ruleset::from_plan(&two_bridges())),
        vec![
            Cmd::DeleteElements(MAP.into(), Elements::Indexes(vec![17])),
            Cmd::DeleteElements("vm_red".into(), Elements::Indexes(vec![17])),
            Cmd::AddElements("vm_red".into(), Elements::Indexes(vec![7])),
            verdicts(&[(7, "br_red")]),
        ]
    );
    // A port moved to another bridge keeping its index: its element changes its chain.
    let mut moved = listing();
    moved.map.as_mut().unwrap().insert(20, Some("br_red".into()));
    assert_eq!(
        moved.diff(&Ruleset::from_plan(&two_bridges())),
        vec![
            Cmd::DeleteElements(MAP.into(), Elements::Indexes(vec![20])),
            verdicts(&[(20, "br_my_2dnet_2e10")]),
        ]
    );
}

#[test]
fn bridges_come_and_go_without_touching_the_others() {
    let live = listing();
    let mut p = two_bridges();
    p.bridges.remove(1);
    p.bridges.push(bridge("blue", vec![port("vnet8", 40, Role::Vm)]));
    assert_eq!(
        live.diff(&Ruleset::from_plan(&p)),
        vec![
            Cmd::DeleteElements(MAP.into(), Elements::Indexes(vec![20])),
            Cmd::FlushChain("br_my_2dnet_2e10".into()),
            Cmd::DeleteChain("br_my_2dnet_2e10".into()),
            Cmd::DeleteSet("vm_my_2dnet_2e10".into()),
            Cmd::AddSet("vm_blue".into(), SetType::Ports),
            Cmd::AddElements("vm_blue".into(), Elements::Indexes(vec![40])),
            Cmd::AddChain("br_blue".into()),
            drop_cmd("blue"),
            verdicts(&[(40, "br_blue")]),
        ]
    );
    assert_eq!(
        live.diff(&Ruleset::default()),
        vec![Cmd::AddTable, Cmd::DeleteTable],
        "nothing isolated: the table goes"
    );
}

#[test]
fn repairs_duplicates_missing_rules_and_foreign_objects() {
    let mut live = listing();
    let want = Ruleset::from_plan(&two_bridges());
    let dup = LiveRule {
        handle: 9,
        ..live.chains["br_red"][0].clone()
    };
    live.chains.get_mut("br_red").unwrap().push(dup);
    let dispatch = LiveRule {
        handle: 10,
        ..live.rules[0].clone()
    };
    live.rules.push(dispatch);
    assert_eq!(
        live.diff(&want),
        vec![Cmd::DeleteRule(CHAIN.into(), 10), Cmd::DeleteRule("br_red".into(), 9)]
    );

    let mut missing = listing();
    missing.chains.get_mut("br_red").unwrap().clear();
    missing.rules.clear();
    assert_eq!(missing.diff(&want), vec![drop_cmd("red"), Cmd::AddRule(Rule::Dispatch)]);

    let mut no_chain = listing();
    no_chain.chains.remove("br_red");
    no_chain.map = None;
    assert!(no_chain.enforced("red").is_empty());
    assert_eq!(
        no_chain.diff(&want),
        vec![
            Cmd::DeleteRule(CHAIN.into(), 3),
            Cmd::AddChain("br_red".into()),
            drop_cmd("red"),
            Cmd::AddSet(MAP.into(), SetType::PortVerdicts),
            verdicts(&[(7, "br_red"), (9, "br_red"), (20, "br_my_2dnet_2e10")]),
            Cmd::AddRule(Rule::Dispatch),
        ],
        "a dispatch rule without its map is someone else's"
    );

    let mut renamed = listing();
    renamed.chains.get_mut("br_red").unwrap()[0].comment = Some("mine".into());
    assert_eq!(
        renamed.diff(&want),
        vec![Cmd::DeleteRule("br_red".into(), 4), drop_cmd("red")]
    );

    let mut accept = listing();
    accept.rules.insert(
        0,
        LiveRule {
            handle: 7,
            kind: RuleKind::Other,
            comment: None,
            counter: None,
        },
    );
    assert!(accept.enforced("red").is_empty(), "a foreign rule may accept first");
    assert_eq!(accept.diff(&want), vec![Cmd::DeleteRule(CHAIN.into(), 7)]);

    for mutate in [(|l: &mut Live| l.foreign = true) as fn(&mut Live), |l: &mut Live| {
        l.chain_exact = false
    }] {
        let mut odd = listing();
        mutate(&mut odd);
        let cmds = odd.diff(&want);
        assert_eq!(cmds[..2], [Cmd::AddTable, Cmd::DeleteTable]);
        assert_eq!(cmds[2..], want.create()[..]);
    }
}

#[test]
fn wrong_set_type_is_replaced_with_its_rule() {
    let mut live = listing();
    live.sets.get_mut("vm_red").unwrap().datatype = "ifname".into();
    assert!(live.enforced("red").is_empty());
    assert_eq!(
        live.diff(&Ruleset::from_plan(&two_bridges())),
        vec![
            Cmd::DeleteRule("br_red".into(), 4),
            Cmd::DeleteSet("vm_red".into()),
            Cmd::AddSet("vm_red".into(), SetType::Ports),
            Cmd::AddElements("vm_red".into(), Elements::Indexes(vec![7, 9])),
            drop_cmd("red"),
        ]
    );
}

#[test]
fn a_table_of_the_previous_shape_is_migrated_keeping_its_sets() {
    let live = Live::from_table(Some(&legacy_table()));
    assert!(live.exists && live.chain_exact && !live.foreign && live.map.is_none());
    assert_eq!(live.rules[0].kind, RuleKind::Legacy("vm_red".into()));
    // What it enforces and counts until then.
    assert_eq!(live.enforced("red"), BTreeSet::from([7, 9]));
    assert_eq!(live.counter("red").unwrap().packets, 12);
    let want = Ruleset::from_plan(&two_bridges());
    assert_eq!(
        live.diff(&want),
        vec![
            Cmd::DeleteRule(CHAIN.into(), 4),
            Cmd::DeleteRule(CHAIN.into(), 5),
            Cmd::AddChain("br_my_2dnet_2e10".into()),
            drop_cmd("my-net.10"),
            Cmd::AddChain("br_red".into()),
            drop_cmd("red"),
            Cmd::AddSet(MAP.into(), SetType::PortVerdicts),
            verdicts(&[(7, "br_red"), (9, "br_red"), (20, "br_my_2dnet_2e10")]),
            Cmd::AddRule(Rule::Dispatch),
        ]
    );
    // Removing one bridge of it takes its rule before its set.
    assert_eq!(
        live.removal(&BTreeSet::from(["my-net.10".to_string()])),
        vec![
            Cmd::DeleteRule(CHAIN.into(), 5),
            Cmd::DeleteSet("vm_my_2dnet_2e10".into())
        ]
    );
}

#[test]
fn a_table_without_the_gate_gets_it_in_one_transaction() {
    let mut table = table();
    table.rules[0] = ungated_rule(3);
    let live = Live::from_table(Some(&table));
    assert_eq!(live.rules[0].kind, RuleKind::Ungated);
    // It enforces without the group until then, and is the only shape that does.
    assert!(!live.gated() && listing().gated());
    assert_eq!(live.enforced("red"), BTreeSet::from([7, 9]));
    assert_eq!(live.counter("red").unwrap().packets, 12);
    // The rule is swapped, nothing else: sets, map, chains and counters stay.
    assert_eq!(
        live.diff(&Ruleset::from_plan(&two_bridges())),
        vec![Cmd::DeleteRule(CHAIN.into(), 3), Cmd::AddRule(Rule::Dispatch)]
    );
    // Both rules at once (a transaction cut short by hand): the ungated one goes.
    table.rules.insert(1, dispatch_rule(8));
    let both = Live::from_table(Some(&table));
    assert!(!both.gated());
    assert_eq!(
        both.diff(&Ruleset::from_plan(&two_bridges())),
        vec![Cmd::DeleteRule(CHAIN.into(), 3)]
    );
}

#[test]
fn removal_deletes_only_what_is_asked_then_the_table() {
    let live = listing();
    assert_eq!(
        live.removal(&BTreeSet::from(["my-net.10".to_string()])),
        vec![
            Cmd::DeleteElements(MAP.into(), Elements::Indexes(vec![20])),
            Cmd::FlushChain("br_my_2dnet_2e10".into()),
            Cmd::DeleteChain("br_my_2dnet_2e10".into()),
            Cmd::DeleteSet("vm_my_2dnet_2e10".into())
        ]
    );
    assert_eq!(
        live.removal(&BTreeSet::from(["my-net.10".to_string(), "red".to_string()])),
        vec![Cmd::AddTable, Cmd::DeleteTable]
    );
    assert_eq!(live.removal(&BTreeSet::from(["blue".to_string()])), vec![]);
    assert_eq!(Live::default().removal(&BTreeSet::from(["red".to_string()])), vec![]);
}

#[test]
fn changes_name_ports_not_stale_indexes() {
    let before = BTreeMap::from([("red".to_string(), BTreeSet::from([7, 17]))]);
    let after = BTreeMap::from([("red".to_string(), BTreeSet::from([9, 30]))]);
    let plan = two_bridges();
    let got: Vec<(String, bool)> = changes(&before, &after, namer(&plan.bridges))
        .into_iter()
        .map(|c| (c.port, c.isolated))
        .collect();
    // 17 is no port of the plan and (most likely) no interface at all; 30 neither.
    let gone = |i| ifname_of(i).is_none();
    assert!(gone(0));
    if gone(17) && gone(30) {
        assert_eq!(got, vec![("vnet2".to_string(), true), ("vnet1".to_string(), false)]);
    }
    assert_eq!(ifname_of(1).as_deref(), Some("lo"));
}

#[test]
fn recognises_our_rules_only() {
    let kind = |r: &nftnl::Rule| rule_kind(&r.statements());
    let ours = drop_rule("br_a", 1, "vm_a", "bridge a", 1);
    assert_eq!(kind(&ours), RuleKind::Drop("vm_a".into()));
    assert_eq!(
        nft::LiveRule::read(&ours).counter,
        Some(DropCounter { packets: 1, bytes: 84 })
    );
    assert_eq!(kind(&dispatch_rule(1)), RuleKind::Dispatch);
    assert_eq!(
        kind(&legacy_rule(1, "vm_a", "bridge a", 1)),
        RuleKind::Legacy("vm_a".into())
    );
    let mut crossed = legacy_rule(1, "vm_a", "bridge a", 1);
    crossed.exprs[3] = nftnl::Expr::Lookup {
        set: "vm_b".into(),
        sreg: 1,
        inverted: false,
    };
    assert_eq!(kind(&crossed), RuleKind::Other);
    let mut accept = drop_rule("br_a", 1, "vm_a", "bridge a", 1);
    accept.exprs[3] = nftnl::Expr::Verdict(nftnl::NF_ACCEPT);
    assert_eq!(kind(&accept), RuleKind::Other);
    let mut negated = drop_rule("br_a", 1, "vm_a", "bridge a", 1);
    negated.exprs[1] = nftnl::Expr::Lookup {
        set: "vm_a".into(),
        sreg: 1,
        inverted: true,
    };
    assert_eq!(kind(&negated), RuleKind::Other);
    let mut by_oif = drop_rule("br_a", 1, "vm_a", "bridge a", 1);
    by_oif.exprs[0] = nftnl::Expr::Meta {
        key: nftnl::META_OIF,
        dreg: 1,
    };
    assert_eq!(kind(&by_oif), RuleKind::Other);
    assert_eq!(kind(&ungated_rule(1)), RuleKind::Ungated);
    let mut other_map = dispatch_rule(1);
    other_map.exprs[5] = nftnl::Expr::VerdictMap {
        map: "theirs".into(),
        sreg: 1,
    };
    assert_eq!(kind(&other_map), RuleKind::Other);
    let mut by_iif = dispatch_rule(1);
    by_iif.exprs[4] = nftnl::Expr::Meta {
        key: nftnl::META_IIF,
        dreg: 1,
    };
    assert_eq!(kind(&by_iif), RuleKind::Other);
    // Another group, or one side of the gate only, is not our rule.
    let mut other_group = dispatch_rule(1);
    other_group.exprs[3] = nftnl::Expr::Cmp {
        sreg: 1,
        op: nftnl::CMP_EQ,
        data: 7u32.to_ne_bytes().to_vec(),
    };
    assert_eq!(kind(&other_group), RuleKind::Other);
    let mut half = dispatch_rule(1);
    half.exprs.drain(2..4);
    assert_eq!(kind(&half), RuleKind::Other);
    let mut swapped = dispatch_rule(1);
    swapped.exprs[0] = nftnl::Expr::Meta {
        key: nftnl::META_IIFGROUP,
        dreg: 1,
    };
    assert_eq!(kind(&swapped), RuleKind::Other);
    assert_eq!(rule_kind(&[Stmt::Verdict(nftnl::NF_ACCEPT)]), RuleKind::Other);
}
