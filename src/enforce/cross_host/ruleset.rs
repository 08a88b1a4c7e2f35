//! 1. What we want: every bridge's cross-host rules, as plain data.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::{Cmd, CHAIN};
use crate::enforce::chain_name::{self, PerBridge};
use crate::enforce::nft::diff::WantedSet;
use crate::enforce::nft::{self, Elements, SetType};
use crate::host::state::State;
use crate::model::plan::{Plan, Role};
use crate::model::policy::{mac_to_u64, merge_ranges, NetworkPolicy};
use crate::sys::nftnl::{self, Operand, Stmt};

/// The sets a bridge may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SetKind {
    /// Peer MAC ranges.
    Peers,
    /// Trusted source MACs.
    Trusted,
    /// Trusted vNIC ports (destinations left open).
    Open,
    /// Source MACs allowed from the uplink (`bridge_isolation_uplink_macs`).
    Uplink,
}

impl SetKind {
    fn names(self) -> PerBridge {
        match self {
            SetKind::Peers => chain_name::PEERS_SET,
            SetKind::Trusted => chain_name::TRUSTED_SET,
            SetKind::Open => chain_name::OPEN_SET,
            SetKind::Uplink => chain_name::UPLINK_SET,
        }
    }

    /// The type of its set.
    pub fn set_type(self) -> SetType {
        match self {
            SetKind::Open => SetType::Ports,
            _ => SetType::MacRanges,
        }
    }
}

/// Set `kind` of `bridge`: its prefix and the name escaped (`PerBridge::escaped`).
pub fn set_name(kind: SetKind, bridge: &str) -> String {
    kind.names().name(bridge)
}

/// The drop rules a bridge may have, one per property.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RuleKind {
    /// Sources in the peer ranges and not trusted (`bridge_isolation_peer_macs`).
    Peers,
    /// Sources outside the allow-list (`bridge_isolation_uplink_macs`).
    Uplink,
}

impl RuleKind {
    /// The sets the rule looks up.
    pub(super) fn sets(self) -> &'static [SetKind] {
        match self {
            RuleKind::Peers => &[SetKind::Peers, SetKind::Trusted, SetKind::Open],
            RuleKind::Uplink => &[SetKind::Uplink, SetKind::Open],
        }
    }
}

/// The comment naming the rule of `kind` for `bridge` (the peer rule's is the one of the
/// releases before uplink MACs).
pub(super) fn comment(bridge: &str, kind: RuleKind) -> String {
    match kind {
        RuleKind::Peers => format!("bridge {bridge}"),
        RuleKind::Uplink => format!("bridge {bridge} uplink_macs"),
    }
}

/// The cross-host rules of one bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRules {
    /// The Linux bridge.
    pub bridge: String,
    /// Its uplink port (matched by name).
    pub uplink: String,
    /// Peer ranges, sorted and merged (48-bit numbers).
    pub peers: Vec<(u64, u64)>,
    /// Trusted source MACs, sorted (48-bit numbers).
    pub trusted: Vec<u64>,
    /// Trusted vNIC ports of this host: (name, ifindex), sorted by name.
    pub open: Vec<(String, u32)>,
    /// Sources allowed from the uplink, sorted and merged (48-bit numbers); empty: no
    /// allow-list rule.
    pub uplink_macs: Vec<(u64, u64)>,
}

impl PeerRules {
    /// The rules this bridge has: one per property set.
    pub fn rules(&self) -> Vec<RuleKind> {
        let mut kinds = Vec::new();
        if !self.peers.is_empty() {
            kinds.push(RuleKind::Peers);
        }
        if !self.uplink_macs.is_empty() {
            kinds.push(RuleKind::Uplink);
        }
        kinds
    }

    /// The sets its rules look up.
    pub fn sets(&self) -> BTreeSet<SetKind> {
        self.rules()
            .into_iter()
            .flat_map(|r| r.sets().iter().copied())
            .collect()
    }

    /// The expressions of rule `kind` in nft's JSON schema, for `add rule`.
    pub fn expr(&self, kind: RuleKind) -> Value {
        let saddr = json!({"payload": {"protocol": "ether", "field": "saddr"}});
        let set = |k: SetKind| format!("@{}", set_name(k, &self.bridge));
        let source = |op: &str, k: SetKind| json!({"match": {"op": op, "left": saddr, "right": set(k)}});
        let mut expr = vec![
            json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": self.uplink}}),
            json!({"match": {"op": "!=", "left": {"meta": {"key": "oif"}}, "right": set(SetKind::Open)}}),
        ];
        match kind {
            RuleKind::Peers => expr.extend([source("==", SetKind::Peers), source("!=", SetKind::Trusted)]),
            RuleKind::Uplink => expr.push(source("!=", SetKind::Uplink)),
        }
        expr.extend([json!({"counter": null}), json!({"drop": null})]);
        Value::Array(expr)
    }

    /// Rule `kind` as the kernel holds it, folded into statements (counter zeroed): what a
    /// rule read back must equal.
    pub fn statements(&self, kind: RuleKind) -> Vec<Stmt> {
        let saddr = || Operand::Payload {
            base: nftnl::PAYLOAD_LL,
            offset: 6,
            len: 6,
        };
        let lookup = |left, kind, inverted| Stmt::Lookup {
            left,
            set: set_name(kind, &self.bridge),
            inverted,
        };
        let mut stmts = vec![
            Stmt::Cmp {
                left: Operand::Meta(nftnl::META_IIFNAME),
                op: nftnl::CMP_EQ,
                data: nftnl::ifname_exact(&self.uplink),
            },
            lookup(Operand::Meta(nftnl::META_OIF), SetKind::Open, true),
        ];
        match kind {
            RuleKind::Peers => stmts.extend([
                lookup(saddr(), SetKind::Peers, false),
                lookup(saddr(), SetKind::Trusted, true),
            ]),
            RuleKind::Uplink => stmts.push(lookup(saddr(), SetKind::Uplink, true)),
        }
        stmts.extend([Stmt::Counter { packets: 0, bytes: 0 }, Stmt::Verdict(nftnl::NF_DROP)]);
        stmts
    }

    /// The elements of its set `kind`.
    pub(super) fn elements(&self, kind: SetKind) -> Elements {
        match kind {
            SetKind::Peers => Elements::Macs(self.peers.clone()),
            SetKind::Trusted => Elements::Macs(self.trusted.iter().map(|&m| (m, m)).collect()),
            SetKind::Open => {
                let ports: BTreeSet<u32> = self.open.iter().map(|&(_, i)| i).collect();
                Elements::Indexes(ports.into_iter().collect())
            }
            SetKind::Uplink => Elements::Macs(self.uplink_macs.clone()),
        }
    }
}

/// Every bridge's cross-host rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// By bridge name.
    pub bridges: Vec<PeerRules>,
}

impl Ruleset {
    /// The rules `state` wants, with the trusted ports of `plan` (which must cover the
    /// bridges of [`super::wanted_bridges`]). A network without an uplink gets none.
    pub fn from_state(state: &State, plan: &Plan) -> Ruleset {
        let mut bridges: Vec<PeerRules> = state
            .networks
            .values()
            .filter(|p| filters(p))
            .filter_map(|p| {
                let open = plan
                    .bridges
                    .iter()
                    .filter(|b| b.bridge == p.bridge)
                    .flat_map(|b| &b.ports)
                    .filter(|port| port.role == Role::Trusted)
                    .map(|port| (port.port.name.clone(), port.port.ifindex))
                    .collect::<BTreeMap<_, _>>()
                    .into_iter()
                    .collect();
                Some(PeerRules {
                    bridge: p.bridge.clone(),
                    uplink: p.uplink.clone()?,
                    peers: merge_ranges(p.peer_macs.iter().map(|r| r.bounds()).collect()),
                    trusted: p.trusted_macs.iter().map(|&m| mac_to_u64(m)).collect(),
                    open,
                    uplink_macs: merge_ranges(p.uplink_macs.iter().map(|r| r.bounds()).collect()),
                })
            })
            .collect();
        bridges.sort_by(|a, b| a.bridge.cmp(&b.bridge));
        bridges.dedup_by(|a, b| a.bridge == b.bridge);
        Ruleset { bridges }
    }

    /// The whole table, for an empty kernel.
    pub fn create(&self) -> Vec<Cmd> {
        let mut cmds = vec![Cmd::AddTable, Cmd::AddBaseChain];
        for b in &self.bridges {
            for kind in b.sets() {
                let name = set_name(kind, &b.bridge);
                cmds.push(Cmd::AddSet(name.clone(), kind.set_type()));
                cmds.extend(Cmd::add_elements(name, b.elements(kind)));
            }
        }
        cmds.extend(self.rules().map(|(b, k)| Cmd::AddRule((b.clone(), k))));
        cmds
    }

    /// Every set wanted, by name: its type and elements.
    pub(super) fn sets(&self) -> BTreeMap<String, WantedSet> {
        self.bridges
            .iter()
            .flat_map(|b| {
                b.sets().into_iter().map(move |k| {
                    let set = WantedSet {
                        kind: k.set_type(),
                        elements: b.elements(k),
                    };
                    (set_name(k, &b.bridge), set)
                })
            })
            .collect()
    }

    /// Every rule wanted: its bridge and kind.
    pub(super) fn rules(&self) -> impl Iterator<Item = (&PeerRules, RuleKind)> {
        self.bridges
            .iter()
            .flat_map(|b| b.rules().into_iter().map(move |k| (b, k)))
    }
}

/// Whether network policy `p` asks for a cross-host rule (given an uplink).
pub(super) fn filters(p: &NetworkPolicy) -> bool {
    !p.peer_macs.is_empty() || !p.uplink_macs.is_empty()
}

impl nft::Rule for (PeerRules, RuleKind) {
    fn chain(&self) -> String {
        CHAIN.to_string()
    }

    fn comment(&self) -> Option<String> {
        Some(comment(&self.0.bridge, self.1))
    }

    fn expr(&self) -> Value {
        self.0.expr(self.1)
    }
}
