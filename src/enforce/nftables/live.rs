//! 2. What the kernel has: our table as read, and the commands taking it to what we want.

use std::collections::{BTreeMap, BTreeSet};

use super::ruleset::{add_verdicts, BridgeRules, Rule, Ruleset};
use super::{bridge_of_chain, bridge_of_set, chain_name, comment, set_name, Cmd, CHAIN, GROUP, MAP};
use crate::enforce::nft::diff::{self, Update, WantedSet};
use crate::enforce::nft::{self, Elements, LiveSet, SetType};
use crate::model::backend::DropCounter;
use crate::sys::nftnl::{self, Operand, Stmt};

/// What a rule of our table does, as far as we tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleKind {
    /// `meta oifgroup GROUP meta iifgroup GROUP oif vmap @ports`: the one rule of chain
    /// `forward`.
    Dispatch,
    /// `oif vmap @ports`: the rule of `forward` of the previous shape, without the gate.
    Ungated,
    /// `iif @S counter drop`: the rule of a bridge's chain, with its set.
    Drop(String),
    /// `iif @S oif @S counter drop`: a rule in `forward` of the previous shape, with its set.
    Legacy(String),
    /// Anything else.
    Other,
}

/// One rule of our table as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveRule {
    /// Its handle, to delete it.
    pub handle: u64,
    /// What it does.
    pub kind: RuleKind,
    /// Its comment.
    pub comment: Option<String>,
    /// Its counter.
    pub counter: Option<DropCounter>,
}

impl LiveRule {
    /// A rule as read.
    fn read(rule: &nftnl::Rule) -> LiveRule {
        let read = nft::LiveRule::read(rule);
        LiveRule {
            handle: read.handle,
            kind: rule_kind(&read.stmts),
            comment: read.comment,
            counter: read.counter,
        }
    }

    /// The set of a drop rule of either shape.
    fn drop_set(&self) -> Option<&str> {
        match &self.kind {
            RuleKind::Drop(s) | RuleKind::Legacy(s) => Some(s),
            _ => None,
        }
    }
}

/// Our table as the kernel has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// Whether the table exists.
    pub exists: bool,
    /// Whether chain `forward` exists as a filter chain on the forward hook.
    pub chain_hooked: bool,
    /// Whether it also has our priority and policy accept.
    pub chain_exact: bool,
    /// Sets by name.
    pub sets: BTreeMap<String, LiveSet>,
    /// The port map, when it exists as an `iface_index : verdict` map: interface index ->
    /// the chain its element goes to (`None`: another verdict than a goto).
    pub map: Option<BTreeMap<u32, Option<String>>>,
    /// Rules of chain `forward`, in order.
    pub rules: Vec<LiveRule>,
    /// The bridges' chains (regular chains named `br_...`) by name, with their rules in order.
    pub chains: BTreeMap<String, Vec<LiveRule>>,
    /// Anything else in the table (other chains, maps, objects, a port map of another type).
    pub foreign: bool,
}

impl Live {
    /// Our table from what [`nftnl::read_table`] read (`None`: there is none).
    pub fn from_table(table: Option<&nftnl::Table>) -> Live {
        let Some(table) = table else {
            return Live::default();
        };
        let chain = table.chain(CHAIN);
        let rules_of = |chain: &str| -> Vec<LiveRule> { table.rules_of(chain).map(LiveRule::read).collect() };
        let mut foreign = table.objects > 0;
        let mut chains = BTreeMap::new();
        for c in table.chains.iter().filter(|c| c.name != CHAIN) {
            if c.hook.is_none() && bridge_of_chain(&c.name).is_some() {
                chains.insert(c.name.clone(), rules_of(&c.name));
            } else {
                foreign = true;
            }
        }
        let mut map = None;
        for s in table
            .sets
            .iter()
            .filter(|s| !s.is_plain() && s.flags & nftnl::SET_ANONYMOUS == 0)
        {
            if s.name == MAP && s.is_verdict_map() && s.datatype() == nft::IFACE_INDEX {
                let entries = s
                    .elements
                    .iter()
                    .filter_map(|e| {
                        let index = u32::from_ne_bytes(e.key.as_slice().try_into().ok()?);
                        let target = e
                            .verdict
                            .as_ref()
                            .filter(|v| v.code == nftnl::NFT_GOTO)
                            .and_then(|v| v.chain.clone());
                        Some((index, target))
                    })
                    .collect();
                map = Some(entries);
            } else {
                foreign = true;
            }
        }
        Live {
            exists: true,
            chain_hooked: chain.is_some_and(|c| {
                c.kind.as_deref() == Some("filter") && c.hook.map(|(hook, _)| hook) == Some(nftnl::NF_BR_FORWARD)
            }),
            chain_exact: nft::base_chain_exact(table),
            sets: diff::read_sets(table),
            map,
            rules: rules_of(CHAIN),
            chains,
            foreign,
        }
    }

    /// Whether set `name` exists with our datatype.
    fn set_ok(&self, name: &str) -> bool {
        self.sets.get(name).is_some_and(|s| s.is(SetType::Ports))
    }

    /// True when rules of someone else sit in chain `forward`: a foreign `accept` would let
    /// frames past our drops, so nothing counts as enforced until they are gone.
    fn foreign_rules(&self) -> bool {
        self.rules.iter().any(|r| r.kind == RuleKind::Other)
    }

    /// Whether a dispatch rule, gated or not, is in `forward`.
    fn dispatching(&self) -> bool {
        self.map.is_some()
            && self
                .rules
                .iter()
                .any(|r| matches!(r.kind, RuleKind::Dispatch | RuleKind::Ungated))
    }

    /// Whether a port [`Live::enforced`] names must also be in interface group [`GROUP`] to
    /// be kept apart: true unless a dispatch rule of the previous shape (no gate) is there.
    pub fn gated(&self) -> bool {
        !self.rules.iter().any(|r| r.kind == RuleKind::Ungated)
    }

    /// The ports the table keeps apart on `bridge` now: the interface indexes in its set
    /// that the map sends to its chain, when the chain is hooked, a dispatch rule in place
    /// and the bridge's chain holds its drop rule and nothing but drop rules (or, in a table
    /// of the first shape, the indexes in its set when its rule is in `forward`). Groups are
    /// not read here: when the table is [`Live::gated`], a port is only kept apart while in
    /// group [`GROUP`] too, which the backend checks.
    pub fn enforced(&self, bridge: &str) -> BTreeSet<u32> {
        let set = set_name(bridge);
        if !(self.exists && self.chain_hooked && !self.foreign_rules() && self.set_ok(&set)) {
            return BTreeSet::new();
        }
        let elements: BTreeSet<u32> = self.sets[&set].elements.indexes().into_iter().collect();
        if self.rules.iter().any(|r| r.kind == RuleKind::Legacy(set.clone())) {
            return elements;
        }
        let chain = chain_name(bridge);
        let chain_ok = self.chains.get(&chain).is_some_and(|rules| {
            rules.iter().all(|r| matches!(r.kind, RuleKind::Drop(_)))
                && rules.iter().any(|r| r.kind == RuleKind::Drop(set.clone()))
        });
        match &self.map {
            Some(map) if chain_ok && self.dispatching() => elements
                .iter()
                .copied()
                .filter(|i| map.get(i).is_some_and(|t| t.as_deref() == Some(chain.as_str())))
                .collect(),
            _ => BTreeSet::new(),
        }
    }

    /// Frames dropped between the VM ports of `bridge`, when its rule exists.
    pub fn counter(&self, bridge: &str) -> Option<DropCounter> {
        let set = set_name(bridge);
        let own = self.chains.get(&chain_name(bridge)).into_iter().flatten();
        let mut found = None;
        for r in own.chain(&self.rules).filter(|r| r.drop_set() == Some(set.as_str())) {
            let c = r.counter.unwrap_or_default();
            let sum = found.get_or_insert(DropCounter::default());
            sum.packets += c.packets;
            sum.bytes += c.bytes;
        }
        found
    }

    /// The bridges that have a set in the table.
    pub fn bridges(&self) -> BTreeSet<String> {
        self.sets.keys().filter_map(|s| bridge_of_set(s)).collect()
    }

    /// The commands turning this table into `want`: none when it already is. The table,
    /// chains, handles and counters stay as they are when only ports change (their elements
    /// are added to or deleted from the sets and the map); a table with a base chain of the
    /// wrong shape or objects of others is rebuilt in one transaction; one of the previous
    /// shape loses its rules in `forward` and gains the rest.
    pub fn diff(&self, want: &Ruleset) -> Vec<Cmd> {
        let intact = self.chain_exact && !self.foreign;
        if let Some(cmds) = diff::whole_table(self.exists, intact, !want.bridges.is_empty(), || want.create()) {
            return cmds;
        }
        let chains: BTreeMap<String, &BridgeRules> = want.bridges.iter().map(|b| (b.chain(), b)).collect();
        let verdicts = want.verdicts();

        // Out first: rules in `forward` but one gated dispatch rule, map elements going
        // elsewhere, the chains of other bridges (emptied, no element leading to them any
        // more), extra rules in the wanted ones, then the sets no rule refers to any more.
        let dispatch_ok = |r: &LiveRule, _: &Rule| r.kind == RuleKind::Dispatch && self.map.is_some();
        let (mut cmds, dispatch) = diff::keep_first(CHAIN, &self.rules, |r| r.handle, &[Rule::Dispatch], dispatch_ok);
        let map = self.map.clone().unwrap_or_default();
        let stale = map
            .iter()
            .filter(|(i, target)| target.as_ref() != verdicts.get(i))
            .map(|(i, _)| *i);
        cmds.extend(Cmd::delete_elements(MAP.into(), Elements::Indexes(stale.collect())));
        let mut kept = BTreeSet::new();
        for (name, rules) in &self.chains {
            let Some(b) = chains.get(name) else {
                cmds.push(Cmd::FlushChain(name.clone()));
                cmds.push(Cmd::DeleteChain(name.clone()));
                continue;
            };
            let set = b.set();
            let ours = |r: &LiveRule, _: &Rule| {
                r.kind == RuleKind::Drop(set.clone())
                    && self.set_ok(&set)
                    && r.comment.as_deref() == Some(comment(&b.bridge).as_str())
            };
            let (deletes, found) = diff::keep_first(name, rules, |r| r.handle, &[b.rule()], ours);
            cmds.extend(deletes);
            if found[0] {
                kept.insert(name.clone());
            }
        }
        let sets = want
            .bridges
            .iter()
            .map(|b| {
                let set = WantedSet {
                    kind: SetType::Ports,
                    elements: b.elements(),
                };
                (b.set(), set)
            })
            .collect();
        cmds.extend(diff::sets(&self.sets, &sets, Update::Increment));

        // Then in (the sets came above): the bridges' chains and rules, the map and its
        // elements, the dispatch rule.
        for (name, b) in &chains {
            if !self.chains.contains_key(name) {
                cmds.push(Cmd::AddChain(name.clone()));
            }
            if !kept.contains(name) {
                cmds.push(Cmd::AddRule(b.rule()));
            }
        }
        if self.map.is_none() {
            cmds.push(Cmd::AddSet(MAP.into(), SetType::PortVerdicts));
        }
        let missing = verdicts
            .into_iter()
            .filter(|(i, chain)| map.get(i).and_then(Option::as_ref) != Some(chain))
            .collect();
        cmds.extend(add_verdicts(missing));
        if !dispatch[0] {
            cmds.push(Cmd::AddRule(Rule::Dispatch));
        }
        cmds
    }

    /// The commands removing the sets, chains and map elements of `bridges`, or the whole
    /// table when no other bridge is left in it.
    pub fn removal(&self, bridges: &BTreeSet<String>) -> Vec<Cmd> {
        if !self.exists {
            return Vec::new();
        }
        if self.bridges().iter().all(|b| bridges.contains(b)) {
            return Cmd::delete_table();
        }
        let sets: BTreeSet<String> = bridges.iter().map(|b| set_name(b)).collect();
        let chains: BTreeSet<String> = bridges.iter().map(|b| chain_name(b)).collect();
        let mut cmds: Vec<Cmd> = self
            .rules
            .iter()
            .filter(|r| r.drop_set().is_some_and(|s| sets.contains(s)))
            .map(|r| Cmd::DeleteRule(CHAIN.into(), r.handle))
            .collect();
        let leading = self
            .map
            .iter()
            .flatten()
            .filter(|(_, target)| target.as_ref().is_some_and(|c| chains.contains(c)))
            .map(|(i, _)| *i);
        cmds.extend(Cmd::delete_elements(MAP.into(), Elements::Indexes(leading.collect())));
        for name in self.chains.keys().filter(|c| chains.contains(*c)) {
            cmds.push(Cmd::FlushChain(name.clone()));
            cmds.push(Cmd::DeleteChain(name.clone()));
        }
        cmds.extend(
            self.sets
                .keys()
                .filter(|s| sets.contains(*s))
                .map(|s| Cmd::DeleteSet(s.clone())),
        );
        cmds
    }
}

/// What a rule with `stmts` does.
pub(super) fn rule_kind(stmts: &[Stmt]) -> RuleKind {
    let lookup = |stmt: &Stmt, key: u32| match stmt {
        Stmt::Lookup {
            left: Operand::Meta(k),
            set,
            inverted: false,
        } if *k == key => Some(set.clone()),
        _ => None,
    };
    let in_group = |stmt: &Stmt, key: u32| {
        matches!(stmt, Stmt::Cmp { left: Operand::Meta(k), op: nftnl::CMP_EQ, data }
            if *k == key && data.as_slice() == GROUP.to_ne_bytes())
    };
    let dispatch =
        |stmt: &Stmt| matches!(stmt, Stmt::VerdictMap { left: Operand::Meta(nftnl::META_OIF), map } if map == MAP);
    match stmts {
        [vmap] if dispatch(vmap) => RuleKind::Ungated,
        [oif, iif, vmap]
            if in_group(oif, nftnl::META_OIFGROUP) && in_group(iif, nftnl::META_IIFGROUP) && dispatch(vmap) =>
        {
            RuleKind::Dispatch
        }
        [iif, Stmt::Counter { .. }, Stmt::Verdict(nftnl::NF_DROP)] => {
            lookup(iif, nftnl::META_IIF).map_or(RuleKind::Other, RuleKind::Drop)
        }
        [iif, oif, Stmt::Counter { .. }, Stmt::Verdict(nftnl::NF_DROP)] => {
            match (lookup(iif, nftnl::META_IIF), lookup(oif, nftnl::META_OIF)) {
                (Some(a), Some(b)) if a == b => RuleKind::Legacy(a),
                _ => RuleKind::Other,
            }
        }
        _ => RuleKind::Other,
    }
}
