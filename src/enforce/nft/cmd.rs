//! The commands of a transaction on one of our tables, as data, and their rendering into
//! nft's JSON schema (libnftables-json(5)).

use serde_json::{json, Value};

use super::{BASE_CHAIN, ETHER_ADDR, FAMILY, IFACE_INDEX, PRIORITY};
use crate::model::policy::mac_from_u64;

/// A rule as its owner builds it: where it goes and what it does.
pub trait Rule {
    /// The chain it goes in.
    fn chain(&self) -> String;
    /// Its comment, if any.
    fn comment(&self) -> Option<String>;
    /// Its expressions in nft's JSON schema (an array).
    fn expr(&self) -> Value;
}

/// The types of sets our tables hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SetType {
    /// `type iface_index`: ports by interface index.
    Ports,
    /// `type ether_addr; flags interval`: MAC ranges.
    MacRanges,
    /// A map `type iface_index : verdict`.
    PortVerdicts,
}

impl SetType {
    /// The datatype of its keys.
    pub fn datatype(self) -> &'static str {
        match self {
            SetType::Ports | SetType::PortVerdicts => IFACE_INDEX,
            SetType::MacRanges => ETHER_ADDR,
        }
    }

    /// Whether it has `flags interval`.
    pub fn interval(self) -> bool {
        self == SetType::MacRanges
    }
}

/// Elements of a set or map, as added or deleted (and as read, normalized for comparison).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Elements {
    /// MAC intervals (48-bit numbers), sorted and merged.
    Macs(Vec<(u64, u64)>),
    /// Interface indexes (of ports that may be gone since), or a map's keys.
    Indexes(Vec<u32>),
    /// A verdict map's entries: interface index -> `goto` chain.
    Gotos(Vec<(u32, String)>),
}

impl Elements {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        match self {
            Elements::Macs(m) => m.is_empty(),
            Elements::Indexes(i) => i.is_empty(),
            Elements::Gotos(g) => g.is_empty(),
        }
    }

    /// The interface indexes (none for MAC ranges; a map's keys).
    pub fn indexes(&self) -> Vec<u32> {
        match self {
            Elements::Macs(_) => Vec::new(),
            Elements::Indexes(i) => i.clone(),
            Elements::Gotos(g) => g.iter().map(|(i, _)| *i).collect(),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Elements::Indexes(indexes) => json!(indexes),
            Elements::Macs(ranges) => ranges
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        json!(mac_from_u64(a).to_string())
                    } else {
                        json!({"range": [mac_from_u64(a).to_string(), mac_from_u64(b).to_string()]})
                    }
                })
                .collect(),
            Elements::Gotos(gotos) => gotos
                .iter()
                .map(|(index, chain)| json!([index, {"goto": {"target": chain}}]))
                .collect(),
        }
    }
}

/// One command of a transaction on one of our tables; `R` is its owner's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd<R> {
    /// `add table` (a no-op when it exists, so a following delete cannot fail).
    AddTable,
    /// `delete table`: everything in it goes.
    DeleteTable,
    /// `add chain forward { type filter hook forward priority filter; policy accept; }`.
    AddBaseChain,
    /// `add chain C`: a regular chain.
    AddChain(String),
    /// `flush chain C`: its rules go.
    FlushChain(String),
    /// `delete chain C` (empty, and nothing leading to it).
    DeleteChain(String),
    /// `add set S { type ...; }` or `add map S { type ... : verdict; }`.
    AddSet(String, SetType),
    /// `delete set S`.
    DeleteSet(String),
    /// `flush set S`.
    FlushSet(String),
    /// `add element S { ... }`.
    AddElements(String, Elements),
    /// `delete element S { ... }` (of a set or, by key, of a map).
    DeleteElements(String, Elements),
    /// `add rule C ... [comment ...]`.
    AddRule(R),
    /// `delete rule C handle H`.
    DeleteRule(String, u64),
}

impl<R> Cmd<R> {
    /// Deleting table and all (`add` first, so that the delete cannot fail).
    pub fn delete_table() -> Vec<Cmd<R>> {
        vec![Cmd::AddTable, Cmd::DeleteTable]
    }

    /// `add element` of `elements` to `set`, unless there are none.
    pub fn add_elements(set: String, elements: Elements) -> Option<Cmd<R>> {
        (!elements.is_empty()).then_some(Cmd::AddElements(set, elements))
    }

    /// `delete element` of `elements` from `set`, unless there are none.
    pub fn delete_elements(set: String, elements: Elements) -> Option<Cmd<R>> {
        (!elements.is_empty()).then_some(Cmd::DeleteElements(set, elements))
    }
}

impl<R: Rule> Cmd<R> {
    /// The command on table `table` in nft's JSON schema.
    pub fn to_json(&self, table: &str) -> Value {
        let named = |name: &str| json!({"family": FAMILY, "table": table, "name": name});
        let elements =
            |name: &str, e: &Elements| json!({"family": FAMILY, "table": table, "name": name, "elem": e.to_json()});
        match self {
            Cmd::AddTable => json!({"add": {"table": {"family": FAMILY, "name": table}}}),
            Cmd::DeleteTable => json!({"delete": {"table": {"family": FAMILY, "name": table}}}),
            Cmd::AddBaseChain => json!({"add": {"chain": {
                "family": FAMILY, "table": table, "name": BASE_CHAIN,
                "type": "filter", "hook": "forward", "prio": PRIORITY, "policy": "accept"
            }}}),
            Cmd::AddChain(name) => json!({"add": {"chain": named(name)}}),
            Cmd::FlushChain(name) => json!({"flush": {"chain": named(name)}}),
            Cmd::DeleteChain(name) => json!({"delete": {"chain": named(name)}}),
            Cmd::AddSet(name, SetType::PortVerdicts) => json!({"add": {"map": {
                "family": FAMILY, "table": table, "name": name, "type": IFACE_INDEX, "map": "verdict"
            }}}),
            Cmd::AddSet(name, kind) => {
                let mut set = named(name);
                set["type"] = json!(kind.datatype());
                if kind.interval() {
                    set["flags"] = json!(["interval"]);
                }
                json!({"add": {"set": set}})
            }
            Cmd::DeleteSet(name) => json!({"delete": {"set": named(name)}}),
            Cmd::FlushSet(name) => json!({"flush": {"set": named(name)}}),
            Cmd::AddElements(name, e) => json!({"add": {"element": elements(name, e)}}),
            Cmd::DeleteElements(name, e) => json!({"delete": {"element": elements(name, e)}}),
            Cmd::AddRule(rule) => {
                let mut r = json!({"family": FAMILY, "table": table, "chain": rule.chain(), "expr": rule.expr()});
                if let Some(comment) = rule.comment() {
                    r["comment"] = json!(comment);
                }
                json!({"add": {"rule": r}})
            }
            Cmd::DeleteRule(chain, handle) => json!({"delete": {"rule": {
                "family": FAMILY, "table": table, "chain": chain, "handle": handle
            }}}),
        }
    }
}
