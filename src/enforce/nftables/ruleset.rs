//! 1. What we want: our table for a [`Plan`], as plain data.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::{chain_name, comment, set_name, Cmd, CHAIN, GROUP, MAP};
use crate::enforce::nft::{self, Elements, SetType};
use crate::model::plan::Plan;

/// A port in a set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    /// Interface name (what `nft list` shows).
    pub name: String,
    /// Interface index (what the set holds).
    pub ifindex: u32,
}

/// The set, chain and map entries of one isolated bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeRules {
    /// The Linux bridge.
    pub bridge: String,
    /// Its VM ports, sorted by name.
    pub members: Vec<Member>,
}

impl BridgeRules {
    /// Its set's name.
    pub fn set(&self) -> String {
        set_name(&self.bridge)
    }

    /// Its chain's name.
    pub fn chain(&self) -> String {
        chain_name(&self.bridge)
    }

    /// The interface indexes its set holds.
    pub fn indexes(&self) -> BTreeSet<u32> {
        self.members.iter().map(|m| m.ifindex).collect()
    }

    /// Its set's elements.
    pub(super) fn elements(&self) -> Elements {
        Elements::Indexes(self.indexes().into_iter().collect())
    }

    /// The drop rule of its chain.
    pub(super) fn rule(&self) -> Rule {
        Rule::Drop {
            chain: self.chain(),
            set: self.set(),
            comment: comment(&self.bridge),
        }
    }
}

/// The rules of our table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `add rule C iif @S counter drop comment COMMENT`: a bridge's chain's drop rule.
    Drop {
        /// The bridge's chain.
        chain: String,
        /// Its set.
        set: String,
        /// The comment.
        comment: String,
    },
    /// `add rule forward meta oifgroup GROUP meta iifgroup GROUP oif vmap @ports`.
    Dispatch,
}

impl nft::Rule for Rule {
    fn chain(&self) -> String {
        match self {
            Rule::Drop { chain, .. } => chain.clone(),
            Rule::Dispatch => CHAIN.to_string(),
        }
    }

    fn comment(&self) -> Option<String> {
        match self {
            Rule::Drop { comment, .. } => Some(comment.clone()),
            Rule::Dispatch => None,
        }
    }

    fn expr(&self) -> Value {
        match self {
            Rule::Drop { set, .. } => json!([
                {"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": format!("@{set}")}},
                {"counter": null},
                {"drop": null}
            ]),
            Rule::Dispatch => json!([
                {"match": {"op": "==", "left": {"meta": {"key": "oifgroup"}}, "right": GROUP}},
                {"match": {"op": "==", "left": {"meta": {"key": "iifgroup"}}, "right": GROUP}},
                {"vmap": {"key": {"meta": {"key": "oif"}}, "data": format!("@{MAP}")}}
            ]),
        }
    }
}

/// Our table as it should be: one set and one chain per isolated bridge, and the map from
/// their VM ports to their chains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Isolated bridges, in plan order.
    pub bridges: Vec<BridgeRules>,
}

impl Ruleset {
    /// The rules `plan` asks for: every isolated bridge (even an absent one, with an empty
    /// set, so its counter survives a rebuild of the bridge) and the ports whose role is VM.
    pub fn from_plan(plan: &Plan) -> Ruleset {
        Ruleset {
            bridges: plan
                .bridges
                .iter()
                .map(|b| {
                    let mut members: Vec<Member> = b
                        .ports
                        .iter()
                        .filter(|p| p.role.isolated())
                        .map(|p| Member {
                            name: p.port.name.clone(),
                            ifindex: p.port.ifindex,
                        })
                        .collect();
                    members.sort();
                    BridgeRules {
                        bridge: b.bridge.clone(),
                        members,
                    }
                })
                .collect(),
        }
    }

    /// The map's elements: every VM port's index and its bridge's chain.
    pub fn verdicts(&self) -> BTreeMap<u32, String> {
        self.bridges
            .iter()
            .flat_map(|b| b.members.iter().map(move |m| (m.ifindex, b.chain())))
            .collect()
    }

    /// The commands creating the whole table from nothing.
    pub fn create(&self) -> Vec<Cmd> {
        let mut cmds = vec![Cmd::AddTable, Cmd::AddBaseChain];
        for b in &self.bridges {
            cmds.push(Cmd::AddSet(b.set(), SetType::Ports));
            cmds.extend(Cmd::add_elements(b.set(), b.elements()));
        }
        for b in &self.bridges {
            cmds.push(Cmd::AddChain(b.chain()));
            cmds.push(Cmd::AddRule(b.rule()));
        }
        cmds.push(Cmd::AddSet(MAP.into(), SetType::PortVerdicts));
        cmds.extend(add_verdicts(self.verdicts()));
        cmds.push(Cmd::AddRule(Rule::Dispatch));
        cmds
    }
}

/// `add element` of `verdicts` to the map, unless there are none.
pub(super) fn add_verdicts(verdicts: BTreeMap<u32, String>) -> Option<Cmd> {
    Cmd::add_elements(MAP.into(), Elements::Gotos(verdicts.into_iter().collect()))
}
