//! What one of our tables holds as read, and the generic parts of the difference between
//! it and what its owner wants: the table as a whole, its sets and their elements, and the
//! rules of a chain kept by match or deleted by handle. The owner adds what is its own
//! (which rules are intact, chains and maps of its own) and orders the pieces.

use std::collections::{BTreeMap, BTreeSet};

use super::{Cmd, Elements, SetType, ETHER_ADDR};
use crate::model::backend::DropCounter;
use crate::model::policy::merge_ranges;
use crate::sys::nftnl::{self, Stmt};

/// One set as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveSet {
    /// Datatype.
    pub datatype: String,
    /// Whether it has `flags interval`.
    pub interval: bool,
    /// Elements: MAC sets as merged intervals, others as interface indexes, sorted.
    pub elements: Elements,
}

impl LiveSet {
    /// A set as [`nftnl::read_table`] returns it.
    pub fn read(set: &nftnl::Set) -> LiveSet {
        let datatype = set.datatype();
        let elements = if datatype == ETHER_ADDR {
            let top = (1u128 << 48) - 1;
            Elements::Macs(merge_ranges(
                set.intervals()
                    .into_iter()
                    .filter(|&(first, _)| first <= top)
                    .map(|(first, last)| (first as u64, last.min(top) as u64))
                    .collect(),
            ))
        } else {
            Elements::Indexes(set.host_u32_keys().into_iter().collect())
        };
        LiveSet {
            datatype,
            interval: set.flags & nftnl::SET_INTERVAL != 0,
            elements,
        }
    }

    /// Whether it can stand for a set of type `kind` (an interval set may hold single ports).
    pub fn is(&self, kind: SetType) -> bool {
        self.datatype == kind.datatype() && (!kind.interval() || self.interval)
    }
}

/// The plain sets of `table` by name.
pub fn read_sets(table: &nftnl::Table) -> BTreeMap<String, LiveSet> {
    table.plain_sets().map(|s| (s.name.clone(), LiveSet::read(s))).collect()
}

/// One rule as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveRule {
    /// Handle, to delete it.
    pub handle: u64,
    /// Comment.
    pub comment: Option<String>,
    /// Statements with the counter zeroed.
    pub stmts: Vec<Stmt>,
    /// The counter.
    pub counter: Option<DropCounter>,
}

impl LiveRule {
    /// A rule as [`nftnl::read_table`] returns it: its statements with the counter taken
    /// out (and zeroed in them).
    pub fn read(rule: &nftnl::Rule) -> LiveRule {
        let mut counter = None;
        let stmts = rule
            .statements()
            .into_iter()
            .map(|s| match s {
                Stmt::Counter { packets, bytes } => {
                    counter = Some(DropCounter { packets, bytes });
                    Stmt::Counter { packets: 0, bytes: 0 }
                }
                other => other,
            })
            .collect();
        LiveRule {
            handle: rule.handle,
            comment: rule.comment.clone(),
            stmts,
            counter,
        }
    }
}

/// The commands for the table as a whole, `None` when it is to be changed in place: it
/// goes when nothing is `wanted` (if it `exists`), is created by `create` when missing,
/// and rebuilt in one transaction when not `intact` (a base chain of another shape, objects
/// of others).
pub fn whole_table<R>(
    exists: bool,
    intact: bool,
    wanted: bool,
    create: impl FnOnce() -> Vec<Cmd<R>>,
) -> Option<Vec<Cmd<R>>> {
    match (wanted, exists, intact) {
        (false, true, _) => Some(Cmd::delete_table()),
        (false, false, _) => Some(Vec::new()),
        (true, false, _) => Some(create()),
        (true, true, false) => {
            let mut cmds = Cmd::delete_table();
            cmds.extend(create());
            Some(cmds)
        }
        (true, true, true) => None,
    }
}

/// A set as wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedSet {
    /// Its type.
    pub kind: SetType,
    /// Its elements.
    pub elements: Elements,
}

/// How a set whose elements differ is brought up to date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// Flushed and filled again.
    Refill,
    /// The elements it has and should not deleted, those it lacks added (interface indexes).
    Increment,
}

/// The commands making the sets `live` the sets `want` (both by name): first the sets not
/// wanted or of another type deleted, then the missing ones (or those just deleted) created
/// with their elements, and the others' elements brought up to date as `update` says.
pub fn sets<R>(live: &BTreeMap<String, LiveSet>, want: &BTreeMap<String, WantedSet>, update: Update) -> Vec<Cmd<R>> {
    let ok = |name: &String| live.get(name).zip(want.get(name)).is_some_and(|(l, w)| l.is(w.kind));
    let mut cmds: Vec<Cmd<R>> = live
        .keys()
        .filter(|name| !ok(name))
        .map(|name| Cmd::DeleteSet(name.clone()))
        .collect();
    for (name, w) in want {
        if !ok(name) {
            cmds.push(Cmd::AddSet(name.clone(), w.kind));
            cmds.extend(Cmd::add_elements(name.clone(), w.elements.clone()));
            continue;
        }
        let have = &live[name].elements;
        if *have == w.elements {
            continue;
        }
        match update {
            Update::Refill => {
                cmds.push(Cmd::FlushSet(name.clone()));
                cmds.extend(Cmd::add_elements(name.clone(), w.elements.clone()));
            }
            Update::Increment => {
                let (have, wanted): (BTreeSet<u32>, BTreeSet<u32>) = (
                    have.indexes().into_iter().collect(),
                    w.elements.indexes().into_iter().collect(),
                );
                let gone = Elements::Indexes(have.difference(&wanted).copied().collect());
                let new = Elements::Indexes(wanted.difference(&have).copied().collect());
                cmds.extend(Cmd::delete_elements(name.clone(), gone));
                cmds.extend(Cmd::add_elements(name.clone(), new));
            }
        }
    }
    cmds
}

/// Of the rules `live` of chain `chain`, in order, keeps the first that `matches` each of
/// `wanted` and deletes every other by its handle (`handle`). Returns the deletions and,
/// for each of `wanted`, whether a rule was kept for it.
pub fn keep_first<L, W, R>(
    chain: &str,
    live: &[L],
    handle: impl Fn(&L) -> u64,
    wanted: &[W],
    matches: impl Fn(&L, &W) -> bool,
) -> (Vec<Cmd<R>>, Vec<bool>) {
    let mut kept = vec![false; wanted.len()];
    let mut deletes = Vec::new();
    for rule in live {
        match (0..wanted.len()).find(|&i| !kept[i] && matches(rule, &wanted[i])) {
            Some(i) => kept[i] = true,
            None => deletes.push(Cmd::DeleteRule(chain.to_string(), handle(rule))),
        }
    }
    (deletes, kept)
}
