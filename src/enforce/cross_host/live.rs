//! 2. What the kernel has: our table as read, and the commands taking it to what we want.

use std::collections::BTreeMap;

use super::ruleset::{comment, set_name, PeerRules, RuleKind, Ruleset, SetKind};
use super::{Cmd, CHAIN, TABLE};
use crate::enforce::nft::diff::{self, Update};
use crate::enforce::nft::{self, LiveRule, LiveSet, FAMILY};
use crate::model::backend::DropCounter;
use crate::sys::nftnl;

/// Our table as the kernel has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// Whether the table exists.
    pub exists: bool,
    /// Whether chain `forward` is a filter chain on the forward hook, our priority, accept.
    pub chain_exact: bool,
    /// Sets by name.
    pub sets: BTreeMap<String, LiveSet>,
    /// Rules of the chain.
    pub rules: Vec<LiveRule>,
    /// Anything else (other chains, maps, objects).
    pub foreign: bool,
}

impl Live {
    /// Our table from what [`nftnl::read_table`] read (`None`: there is none).
    pub fn from_table(table: Option<&nftnl::Table>) -> Live {
        let Some(table) = table else {
            return Live::default();
        };
        Live {
            exists: true,
            chain_exact: nft::base_chain_exact(table),
            sets: diff::read_sets(table),
            rules: table.rules_of(CHAIN).map(LiveRule::read).collect(),
            foreign: table.has_other_than(CHAIN),
        }
    }

    fn set_ok(&self, kind: SetKind, bridge: &str) -> bool {
        self.sets
            .get(&set_name(kind, bridge))
            .is_some_and(|s| s.is(kind.set_type()))
    }

    fn rule_matches(&self, rule: &LiveRule, want: &PeerRules, kind: RuleKind) -> bool {
        rule.comment.as_deref() == Some(comment(&want.bridge, kind).as_str())
            && rule.stmts == want.statements(kind)
            && kind.sets().iter().all(|&k| self.set_ok(k, &want.bridge))
    }

    /// Frames dropped per bridge and rule, for the rules intact in the kernel.
    pub fn counters(&self, want: &Ruleset) -> BTreeMap<(String, RuleKind), DropCounter> {
        let mut out = BTreeMap::new();
        for (b, kind) in want.rules() {
            if let Some(r) = self.rules.iter().find(|r| self.rule_matches(r, b, kind)) {
                out.insert((b.bridge.clone(), kind), r.counter.unwrap_or_default());
            }
        }
        out
    }

    /// The commands turning this table into `want`: none when it already is. Counters and
    /// handles stay when only set elements change.
    pub fn diff(&self, want: &Ruleset) -> Vec<Cmd> {
        let intact = self.chain_exact && !self.foreign;
        if let Some(cmds) = diff::whole_table(self.exists, intact, !want.bridges.is_empty(), || want.create()) {
            return cmds;
        }
        let rules: Vec<(&PeerRules, RuleKind)> = want.rules().collect();
        let matches = |r: &LiveRule, &(b, k): &(&PeerRules, RuleKind)| self.rule_matches(r, b, k);
        let (mut cmds, kept) = diff::keep_first(CHAIN, &self.rules, |r| r.handle, &rules, matches);
        cmds.extend(diff::sets(&self.sets, &want.sets(), Update::Refill));
        let missing = rules.iter().zip(kept).filter(|(_, kept)| !kept);
        cmds.extend(missing.map(|(&(b, k), _)| Cmd::AddRule((b.clone(), k))));
        cmds
    }
}

impl Live {
    /// What differs from `want`, in words (see [`super::drift`]).
    pub fn drift(&self, want: &Ruleset) -> Vec<String> {
        let table = format!("cross-host: table {FAMILY} {TABLE}");
        let cmds = self.diff(want);
        if cmds.is_empty() {
            return Vec::new();
        }
        if want.bridges.is_empty() {
            return vec![format!(
                "{table} is still there, but no network has peer ranges or uplink MACs"
            )];
        }
        if !self.exists {
            return vec![format!("{table} is missing")];
        }
        if cmds.contains(&Cmd::DeleteTable) {
            return vec![format!(
                "{table} has a changed chain {CHAIN} or objects not ours: it has to be rebuilt"
            )];
        }
        let wanted = want.sets();
        cmds.iter()
            .filter_map(|c| match c {
                Cmd::DeleteRule(_, h) => Some(format!(
                    "{table}: rule handle {h} in chain {CHAIN} is not ours or altered"
                )),
                // Wanted, but of the wrong type: re-added below, reported there.
                Cmd::DeleteSet(n) if wanted.contains_key(n) => None,
                Cmd::DeleteSet(n) => Some(format!("{table}: set {n} belongs to no rule of any network")),
                Cmd::AddSet(n, _) => Some(format!("{table}: set {n} is missing or has the wrong type")),
                Cmd::FlushSet(n) => Some(format!("{table}: set {n} holds other elements than recorded")),
                Cmd::AddRule((b, RuleKind::Peers)) => Some(format!(
                    "{table}: bridge {}: the drop rule is missing or altered",
                    b.bridge
                )),
                Cmd::AddRule((b, RuleKind::Uplink)) => Some(format!(
                    "{table}: bridge {}: the uplink_macs drop rule is missing or altered",
                    b.bridge
                )),
                _ => None,
            })
            .collect()
    }
}
