//! nftables backend: a table of our own in the `bridge` family, for hosts without the port
//! isolation flag and administrators who want rules they can see and count.
//!
//! ```text
//! table bridge bridge_isolation {
//!     set vm_red {                           # one set per isolated bridge: its VM ports
//!         type iface_index
//!         elements = { "vnet1", "vnet2" }
//!     }
//!     map ports {                            # every isolated VM port -> its bridge's chain
//!         type iface_index : verdict
//!         elements = { "vnet1" : goto br_red, "vnet2" : goto br_red }
//!     }
//!     chain forward {
//!         type filter hook forward priority filter; policy accept;
//!         oifgroup 45392 iifgroup 45392 oif vmap @ports
//!     }
//!     chain br_red {                         # one regular chain per isolated bridge
//!         iif @vm_red counter packets 0 bytes 0 drop comment "bridge red"
//!     }
//! }
//! ```
//!
//! The bridge `forward` hook sees every frame the bridge forwards from one port to another
//! (each copy of a flooded frame too, with its own output port), before any protocol is
//! looked at: the drop covers IPv4, IPv6, ARP and raw ethertypes, needs no br_netfilter, and
//! leaves the uplink, trusted vNICs and the host (frames to or from the bridge itself are not
//! forwarded) open. A frame to a VM port goes to the chain of that port's bridge; there it is
//! dropped when it came in from a VM port of the same set. A bridge forwards only between its
//! own ports, so that is VM -> VM on one bridge. The sets stay per bridge: a chain a map's
//! verdict leads to cannot look that map up itself (the kernel refuses the loop). Sets are
//! scoped per bridge by their explicit members, not by `meta ibrname`, which needs
//! NFT_BRIDGE_META (docs/design.md §4). Members are interface *indexes*: like the kernel's
//! port flag they belong to one interface, so a tap name that libvirt reuses on another
//! bridge is never caught by a stale entry; `nft list` still prints them by name.
//!
//! **The gate.** Every isolated VM port is also put in interface group [`GROUP`] (0xb150 =
//! 45392: `ip link show group 45392` lists them), and the map is only looked up for a frame
//! between two ports of that group. The allowed paths (VM -> uplink, uplink -> VM, anything
//! with a trusted vNIC) cost one or two compares and no lookup: measured, a set or map lookup
//! per frame costs 3.5-9% of a 64-byte frame's path on this project's test machine
//! (retpolines and SRSO return thunks make each call dear), the compares 0-3.5%, the hook
//! itself 0-2.5% (`bench/README.md`). The group only opens the gate; the map and the sets
//! still decide, so a port left in the group by someone else is not isolated by it, and a
//! port not in the group is not isolated: [`Backend::observe`] checks both. Ports join the
//! group before the table changes and leave it after, so no frame passes between two VM
//! ports while either changes; a port leaving isolation gets group 0 (the kernel's default),
//! and only when it is in ours (a group set by someone else is overwritten only to isolate,
//! with a warning).
//!
//! Tables of the previous shapes are migrated in one transaction: one `iif @vm_X oif @vm_X`
//! rule per bridge in `forward` (one lookup per bridge per frame), then one `oif vmap @ports`
//! (one lookup per frame); their rules go, their sets and map stay.
//!
//! The shape every firewall backend follows (netavark's `src/firewall/` does the same):
//! 1. [`Ruleset`]: the rules wanted for a [`Plan`], as plain data;
//! 2. [`Live`]: what the kernel has, read in-process over netfilter netlink
//!    ([`nftnl::read_table`]: no `nft` process to read);
//! 3. [`Live::diff`]: the commands taking one to the other (none when converged), rendered
//!    into nft's JSON schema by [`batch`];
//! 4. [`Nft`]: one `nft -j -f -` process per run applies them as one atomic transaction,
//!    only when there is something to change.
//!
//! Steps 1 and 3 are pure and unit-tested without root, step 2 from the structures the
//! reader returns.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{json, Value};

use super::{chain_name, Backend};
use crate::error::{Error, Result};
use crate::host::config::is_root;
use crate::model::backend::{BackendKind, Change, DropCounter, Observed};
use crate::model::plan::{BridgePlan, Plan};
use crate::sys::bridge;
use crate::sys::netlink::RouteSocket;
use crate::sys::nftnl::{self, Operand, Stmt};

/// `nft`, by absolute path: never looked up in PATH.
pub const NFT: &str = "/usr/sbin/nft";
/// nftables family of our table.
pub const FAMILY: &str = "bridge";
/// Our table; nothing else in it is anyone else's.
pub const TABLE: &str = "bridge_isolation";
/// Our base chain.
pub const CHAIN: &str = "forward";
/// Priority of the chain: `filter` of the bridge family.
pub const PRIORITY: i32 = -200;
/// Datatype of the port sets and the key of the port map.
pub const SET_TYPE: &str = "iface_index";
/// The verdict map from every isolated VM port to its bridge's chain. Not `vm_...`: sets and
/// maps share one namespace, and `vm_` and any name are some bridge's set.
pub const MAP: &str = "ports";
/// The interface group every isolated VM port is put in, the gate of the map lookup (see
/// the module's documentation). 0xb150: "b(r) iso(lation)"; unused by oVirt, libvirt and
/// NetworkManager, which leave every link in group 0.
pub const GROUP: u32 = 0xb150;
/// The kernel's default interface group, given back to a port leaving isolation.
pub const DEFAULT_GROUP: u32 = 0;

/// The set holding the VM ports of `bridge`: `vm_` and the name escaped
/// ([`chain_name::PerBridge::escaped`]: `my-net.10` -> `vm_my_2dnet_2e10`).
pub fn set_name(bridge: &str) -> String {
    chain_name::NFT_SET.name(bridge)
}

/// The bridge whose set is `set`, or `None` when `set` is not one of ours.
fn bridge_of_set(set: &str) -> Option<String> {
    chain_name::NFT_SET.bridge_of(set)
}

/// The regular chain of `bridge`, where frames to its VM ports go: `br_` and the name
/// escaped as in [`set_name`] (`my-net.10` -> `br_my_2dnet_2e10`).
pub fn chain_name(bridge: &str) -> String {
    chain_name::NFT_CHAIN.name(bridge)
}

/// The bridge whose chain is `chain`, or `None` when `chain` is not one of ours.
fn bridge_of_chain(chain: &str) -> Option<String> {
    chain_name::NFT_CHAIN.bridge_of(chain)
}

/// The rule comment naming the bridge, for the administrator reading `nft list`.
fn comment(bridge: &str) -> String {
    format!("bridge {bridge}")
}

// ---------------------------------------------------------------------------------------
// 1. What we want.

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
        let mut cmds = vec![Cmd::AddTable, Cmd::AddChain];
        for b in &self.bridges {
            cmds.push(Cmd::AddSet(b.set()));
            cmds.extend(add_elements(b.set(), b.indexes()));
        }
        for b in &self.bridges {
            cmds.push(Cmd::AddBridgeChain(b.chain()));
            cmds.push(b.add_rule());
        }
        cmds.push(Cmd::AddMap);
        cmds.extend(add_verdicts(self.verdicts()));
        cmds.push(Cmd::AddDispatch);
        cmds
    }
}

impl BridgeRules {
    /// The interface indexes its set holds.
    pub fn indexes(&self) -> BTreeSet<u32> {
        self.members.iter().map(|m| m.ifindex).collect()
    }

    fn add_rule(&self) -> Cmd {
        Cmd::AddRule {
            chain: self.chain(),
            set: self.set(),
            comment: comment(&self.bridge),
        }
    }
}

/// `add element` of `indexes` to `set`, unless there are none.
fn add_elements(set: String, indexes: impl IntoIterator<Item = u32>) -> Option<Cmd> {
    let indexes: Vec<u32> = indexes.into_iter().collect();
    (!indexes.is_empty()).then_some(Cmd::AddElements(set, indexes))
}

/// `delete element` of `indexes` from `set`, unless there are none.
fn delete_elements(set: String, indexes: impl IntoIterator<Item = u32>) -> Option<Cmd> {
    let indexes: Vec<u32> = indexes.into_iter().collect();
    (!indexes.is_empty()).then_some(Cmd::DeleteElements(set, indexes))
}

/// `add element` of `verdicts` to the map, unless there are none.
fn add_verdicts(verdicts: BTreeMap<u32, String>) -> Option<Cmd> {
    (!verdicts.is_empty()).then(|| Cmd::AddVerdicts(verdicts.into_iter().collect()))
}

// ---------------------------------------------------------------------------------------
// 2. What the kernel has.

/// One set of our table as read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveSet {
    /// Its datatype.
    pub kind: String,
    /// Its elements: interface indexes (of ports that may be gone since).
    pub elements: BTreeSet<u32>,
}

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
        let rules_of = |chain: &str| -> Vec<LiveRule> {
            table
                .rules_of(chain)
                .map(|r| {
                    let stmts = r.statements();
                    LiveRule {
                        handle: r.handle,
                        kind: rule_kind(&stmts),
                        comment: r.comment.clone(),
                        counter: rule_counter(&stmts),
                    }
                })
                .collect()
        };
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
            if s.name == MAP && s.is_verdict_map() && s.datatype() == SET_TYPE {
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
            chain_exact: chain.is_some_and(|c| c.is_filter(nftnl::NF_BR_FORWARD, PRIORITY)),
            sets: table
                .plain_sets()
                .map(|s| {
                    let set = LiveSet {
                        kind: s.datatype(),
                        elements: s.host_u32_keys(),
                    };
                    (s.name.clone(), set)
                })
                .collect(),
            map,
            rules: rules_of(CHAIN),
            chains,
            foreign,
        }
    }

    /// Whether set `name` exists with our datatype.
    fn set_ok(&self, name: &str) -> bool {
        self.sets.get(name).is_some_and(|s| s.kind == SET_TYPE)
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
        let elements = &self.sets[&set].elements;
        if self.rules.iter().any(|r| r.kind == RuleKind::Legacy(set.clone())) {
            return elements.clone();
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
        if want.bridges.is_empty() {
            return if self.exists {
                vec![Cmd::AddTable, Cmd::DeleteTable]
            } else {
                Vec::new()
            };
        }
        if !self.exists {
            return want.create();
        }
        if !self.chain_exact || self.foreign {
            let mut cmds = vec![Cmd::AddTable, Cmd::DeleteTable];
            cmds.extend(want.create());
            return cmds;
        }
        let wanted: BTreeMap<String, &BridgeRules> = want.bridges.iter().map(|b| (b.set(), b)).collect();
        let chains: BTreeMap<String, &BridgeRules> = want.bridges.iter().map(|b| (b.chain(), b)).collect();
        let verdicts = want.verdicts();
        let mut cmds = Vec::new();

        // Out first: rules in `forward` but one gated dispatch rule, map elements going
        // elsewhere, the chains of other bridges (emptied, no element leading to them any
        // more), extra rules in the wanted ones, then the sets no rule refers to any more.
        let mut dispatch = false;
        for r in &self.rules {
            if r.kind == RuleKind::Dispatch && self.map.is_some() && !dispatch {
                dispatch = true;
            } else {
                cmds.push(Cmd::DeleteRule(CHAIN.into(), r.handle));
            }
        }
        let map = self.map.clone().unwrap_or_default();
        let stale = map
            .iter()
            .filter(|(i, target)| target.as_ref() != verdicts.get(i))
            .map(|(i, _)| *i);
        cmds.extend(delete_elements(MAP.into(), stale));
        let mut kept = BTreeSet::new();
        for (name, rules) in &self.chains {
            let Some(b) = chains.get(name) else {
                cmds.push(Cmd::FlushChain(name.clone()));
                cmds.push(Cmd::DeleteChain(name.clone()));
                continue;
            };
            let set = b.set();
            for r in rules {
                let ours = r.kind == RuleKind::Drop(set.clone())
                    && self.set_ok(&set)
                    && r.comment.as_deref() == Some(comment(&b.bridge).as_str());
                if ours && kept.insert(name.clone()) {
                    continue;
                }
                cmds.push(Cmd::DeleteRule(name.clone(), r.handle));
            }
        }
        for (name, set) in &self.sets {
            if !wanted.contains_key(name) || set.kind != SET_TYPE {
                cmds.push(Cmd::DeleteSet(name.clone()));
            }
        }

        // Then in: sets and their elements, the bridges' chains and rules, the map and its
        // elements, the dispatch rule.
        for (name, b) in &wanted {
            let indexes = b.indexes();
            if !self.set_ok(name) {
                cmds.push(Cmd::AddSet(name.clone()));
                cmds.extend(add_elements(name.clone(), indexes));
            } else {
                let have = &self.sets[name].elements;
                cmds.extend(delete_elements(name.clone(), have.difference(&indexes).copied()));
                cmds.extend(add_elements(name.clone(), indexes.difference(have).copied()));
            }
        }
        for (name, b) in &chains {
            if !self.chains.contains_key(name) {
                cmds.push(Cmd::AddBridgeChain(name.clone()));
            }
            if !kept.contains(name) {
                cmds.push(b.add_rule());
            }
        }
        if self.map.is_none() {
            cmds.push(Cmd::AddMap);
        }
        let missing = verdicts
            .into_iter()
            .filter(|(i, chain)| map.get(i).and_then(Option::as_ref) != Some(chain))
            .collect();
        cmds.extend(add_verdicts(missing));
        if !dispatch {
            cmds.push(Cmd::AddDispatch);
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
            return vec![Cmd::AddTable, Cmd::DeleteTable];
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
        cmds.extend(delete_elements(MAP.into(), leading));
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
fn rule_kind(stmts: &[Stmt]) -> RuleKind {
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

fn rule_counter(stmts: &[Stmt]) -> Option<DropCounter> {
    stmts.iter().find_map(|s| match s {
        Stmt::Counter { packets, bytes } => Some(DropCounter {
            packets: *packets,
            bytes: *bytes,
        }),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------
// 3. Commands, rendered into nft's JSON schema.

/// One command of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd {
    /// `add table` (a no-op when it exists, so a following delete cannot fail).
    AddTable,
    /// `delete table`: everything in it goes.
    DeleteTable,
    /// `add chain forward { type filter hook forward priority filter; policy accept; }`.
    AddChain,
    /// `add chain C`: a bridge's regular chain.
    AddBridgeChain(String),
    /// `flush chain C`: its rules go.
    FlushChain(String),
    /// `delete chain C` (empty, and no element leading to it).
    DeleteChain(String),
    /// `add set S { type iface_index; }`.
    AddSet(String),
    /// `delete set S`.
    DeleteSet(String),
    /// `add element S { indexes }`.
    AddElements(String, Vec<u32>),
    /// `delete element S { indexes }` (of a set or, by key, of the map).
    DeleteElements(String, Vec<u32>),
    /// `add map ports { type iface_index : verdict; }`.
    AddMap,
    /// `add element ports { index : goto C, ... }`.
    AddVerdicts(Vec<(u32, String)>),
    /// `add rule C iif @S counter drop comment COMMENT`.
    AddRule {
        /// The bridge's chain.
        chain: String,
        /// Its set.
        set: String,
        /// The comment.
        comment: String,
    },
    /// `add rule forward meta oifgroup GROUP meta iifgroup GROUP oif vmap @ports`.
    AddDispatch,
    /// `delete rule C handle H`.
    DeleteRule(String, u64),
}

impl Cmd {
    /// The command in nft's JSON schema (libnftables-json(5)).
    pub fn to_json(&self) -> Value {
        let table = || json!({"family": FAMILY, "name": TABLE});
        let named = |name: &str| json!({"family": FAMILY, "table": TABLE, "name": name});
        let elements = |name: &str, elem: Value| json!({"family": FAMILY, "table": TABLE, "name": name, "elem": elem});
        match self {
            Cmd::AddTable => json!({"add": {"table": table()}}),
            Cmd::DeleteTable => json!({"delete": {"table": table()}}),
            Cmd::AddChain => json!({"add": {"chain": {
                "family": FAMILY, "table": TABLE, "name": CHAIN,
                "type": "filter", "hook": "forward", "prio": PRIORITY, "policy": "accept"
            }}}),
            Cmd::AddBridgeChain(name) => json!({"add": {"chain": named(name)}}),
            Cmd::FlushChain(name) => json!({"flush": {"chain": named(name)}}),
            Cmd::DeleteChain(name) => json!({"delete": {"chain": named(name)}}),
            Cmd::AddSet(name) => json!({"add": {"set": {
                "family": FAMILY, "table": TABLE, "name": name, "type": SET_TYPE
            }}}),
            Cmd::DeleteSet(name) => json!({"delete": {"set": named(name)}}),
            Cmd::AddElements(name, indexes) => json!({"add": {"element": elements(name, json!(indexes))}}),
            Cmd::DeleteElements(name, indexes) => json!({"delete": {"element": elements(name, json!(indexes))}}),
            Cmd::AddMap => json!({"add": {"map": {
                "family": FAMILY, "table": TABLE, "name": MAP, "type": SET_TYPE, "map": "verdict"
            }}}),
            Cmd::AddVerdicts(verdicts) => {
                let elem: Vec<Value> = verdicts
                    .iter()
                    .map(|(index, chain)| json!([index, {"goto": {"target": chain}}]))
                    .collect();
                json!({"add": {"element": elements(MAP, json!(elem))}})
            }
            Cmd::AddRule { chain, set, comment } => json!({"add": {"rule": {
                "family": FAMILY, "table": TABLE, "chain": chain, "comment": comment,
                "expr": [
                    {"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": format!("@{set}")}},
                    {"counter": null},
                    {"drop": null}
                ]
            }}}),
            Cmd::AddDispatch => json!({"add": {"rule": {
                "family": FAMILY, "table": TABLE, "chain": CHAIN,
                "expr": [
                    {"match": {"op": "==", "left": {"meta": {"key": "oifgroup"}}, "right": GROUP}},
                    {"match": {"op": "==", "left": {"meta": {"key": "iifgroup"}}, "right": GROUP}},
                    {"vmap": {"key": {"meta": {"key": "oif"}}, "data": format!("@{MAP}")}}
                ]
            }}}),
            Cmd::DeleteRule(chain, handle) => json!({"delete": {"rule": {
                "family": FAMILY, "table": TABLE, "chain": chain, "handle": handle
            }}}),
        }
    }
}

/// The transaction of `cmds`, as `nft -j -f` reads it.
pub fn batch(cmds: &[Cmd]) -> Value {
    json!({"nftables": cmds.iter().map(Cmd::to_json).collect::<Vec<_>>()})
}

/// What an empty kernel gets for `plan`: the whole table in one transaction.
pub fn render(plan: &Plan) -> Value {
    batch(&Ruleset::from_plan(plan).create())
}

/// Ports whose enforcement differs between `before` and `after` (bridge -> interface
/// indexes), named by `name_of`; indexes it cannot name (interfaces gone) are not ports any
/// more and are left out.
fn changes(
    before: &BTreeMap<String, BTreeSet<u32>>,
    after: &BTreeMap<String, BTreeSet<u32>>,
    name_of: impl Fn(u32) -> Option<String>,
) -> Vec<Change> {
    let empty = BTreeSet::new();
    let bridges: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let mut out = Vec::new();
    for bridge in bridges {
        let (old, new) = (
            before.get(bridge).unwrap_or(&empty),
            after.get(bridge).unwrap_or(&empty),
        );
        for (ports, isolated) in [(new.difference(old), true), (old.difference(new), false)] {
            let mut names: Vec<String> = ports.filter_map(|&i| name_of(i)).collect();
            names.sort();
            out.extend(names.into_iter().map(|port| Change {
                bridge: bridge.clone(),
                port,
                isolated,
            }));
        }
    }
    out
}

/// A namer of interface indexes: the ports of `bridges`, else the interface that has the
/// index now (`if_indextoname`), else none.
fn namer(bridges: &[BridgePlan]) -> impl Fn(u32) -> Option<String> {
    let known: BTreeMap<u32, String> = bridges
        .iter()
        .flat_map(|b| &b.ports)
        .map(|p| (p.port.ifindex, p.port.name.clone()))
        .collect();
    move |ifindex| known.get(&ifindex).cloned().or_else(|| ifname_of(ifindex))
}

/// The name of interface `ifindex` in this network namespace, `None` when there is none.
fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has the IF_NAMESIZE bytes if_indextoname writes at most.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

// ---------------------------------------------------------------------------------------
// The gate's interface group.

/// A port whose group [`Ports`] knows.
#[derive(Clone, Debug)]
struct GroupedPort {
    bridge: String,
    name: String,
    /// Its group when read; `None`: the link is gone.
    group: Option<u32>,
}

/// The ports one run may move in or out of [`GROUP`], by interface index, with their groups
/// as read: the ports of the bridges concerned, and the interfaces the table's sets still
/// hold that are no port of theirs any more (a tap moved to another bridge keeps its index).
/// Moves go over rtnetlink, each read back.
struct Ports {
    ports: BTreeMap<u32, GroupedPort>,
    socket: Option<RouteSocket>,
}

impl Ports {
    /// The ports of `bridges` and the table's other members, their groups read.
    fn of(live: &Live, bridges: &[BridgePlan]) -> Ports {
        let mut ports = BTreeMap::new();
        for b in bridges {
            for p in &b.ports {
                let port = GroupedPort {
                    bridge: b.bridge.clone(),
                    name: p.port.name.clone(),
                    group: bridge::group(&p.port.name),
                };
                ports.insert(p.port.ifindex, port);
            }
        }
        let planned: BTreeSet<&str> = bridges.iter().map(|b| b.bridge.as_str()).collect();
        for (set, members) in &live.sets {
            let Some(bridge) = bridge_of_set(set).filter(|b| planned.contains(b.as_str())) else {
                continue;
            };
            for &index in &members.elements {
                if ports.contains_key(&index) {
                    continue;
                }
                if let Some(name) = ifname_of(index) {
                    let group = bridge::group(&name);
                    let bridge = bridge.clone();
                    ports.insert(index, GroupedPort { bridge, name, group });
                }
            }
        }
        Ports { ports, socket: None }
    }

    /// Which ports must join [`GROUP`] for `wanted` to be kept apart, and which must leave
    /// it (every other port in it).
    fn moves(&self, wanted: &BTreeSet<u32>) -> (Vec<u32>, Vec<u32>) {
        let present = self.ports.iter().filter(|(_, p)| p.group.is_some());
        let (join, leave): (Vec<_>, Vec<_>) = present.partition(|(i, _)| wanted.contains(i));
        let join = join.into_iter().filter(|(_, p)| p.group != Some(GROUP));
        let leave = leave.into_iter().filter(|(_, p)| p.group == Some(GROUP));
        (join.map(|(i, _)| *i).collect(), leave.map(|(i, _)| *i).collect())
    }

    /// The ports the kernel keeps apart on `bridge` now: [`Live::enforced`], and in [`GROUP`]
    /// when the table is gated.
    fn kept_apart(&self, live: &Live, bridge: &str) -> BTreeSet<u32> {
        let gated = live.gated();
        let grouped = |i: &u32| self.ports.get(i).is_some_and(|p| p.group == Some(GROUP));
        live.enforced(bridge)
            .into_iter()
            .filter(|i| !gated || grouped(i))
            .collect()
    }

    /// Puts port `index` in `group` and reads it back.
    fn set(&mut self, index: u32, group: u32) -> Result<()> {
        let port = &self.ports[&index];
        let (bridge, name) = (&port.bridge, &port.name);
        if group == GROUP {
            if let Some(other) = port.group.filter(|&g| g != DEFAULT_GROUP) {
                log::warn!(
                    "{bridge} port {name}: moving it from interface group {other:#x} to {GROUP:#x} to isolate it"
                );
            }
        }
        RouteSocket::lazy(&mut self.socket)?
            .set_group(index, group)
            .map_err(|e| Error::Kernel(format!("{bridge} port {name}: interface group {group:#x}: {e}")))?;
        match bridge::group(name) {
            Some(now) if now == group => Ok(()),
            now => Err(Error::Kernel(format!(
                "{bridge} port {name}: interface group reads {now:?} after setting {group:#x}"
            ))),
        }
    }
}

// ---------------------------------------------------------------------------------------
// 4. Running nft.

/// The `nft` program: one process per transaction, JSON in, no shell. Reading is in-process
/// ([`nftnl::read_table`]).
#[derive(Clone, Debug)]
pub struct Nft {
    program: &'static str,
}

impl Default for Nft {
    fn default() -> Nft {
        Nft { program: NFT }
    }
}

impl Nft {
    fn run(&self, args: &[&str], input: Option<&[u8]>) -> Result<std::process::Output> {
        crate::sys::tool::run(self.program, args, input)
    }

    /// Applies `cmds` as one transaction: all or nothing.
    pub fn apply(&self, cmds: &[Cmd]) -> Result<()> {
        let text = batch(cmds).to_string();
        log::debug!("nft -j -f -: {text}");
        self.run(&["-j", "-f", "-"], Some(text.as_bytes())).map(drop)
    }

    /// Has the kernel check `cmds` without committing them.
    pub fn check(&self, cmds: &[Cmd]) -> Result<()> {
        self.run(&["-c", "-j", "-f", "-"], Some(batch(cmds).to_string().as_bytes()))
            .map(drop)
    }
}

// ---------------------------------------------------------------------------------------
// The backend.

/// The nftables backend. It reads the table once, in-process, and reuses what it read until
/// it changes the table: a run that finds nothing to do runs no `nft`, one that changes
/// something runs one.
#[derive(Debug, Default)]
pub struct Nftables {
    nft: Nft,
    cache: RefCell<Option<Live>>,
}

impl Nftables {
    /// The backend, nothing run yet.
    pub fn new() -> Nftables {
        Nftables::default()
    }

    fn live(&self) -> Result<Live> {
        if let Some(live) = self.cache.borrow().as_ref() {
            return Ok(live.clone());
        }
        let live = Live::from_table(nftnl::read_table(nftnl::NFPROTO_BRIDGE, TABLE)?.as_ref());
        *self.cache.borrow_mut() = Some(live.clone());
        Ok(live)
    }

    /// Applies `cmds` (if any) and forgets the listing.
    fn commit(&self, cmds: &[Cmd]) -> Result<()> {
        if cmds.is_empty() {
            return Ok(());
        }
        self.cache.replace(None);
        self.nft
            .apply(cmds)
            .map_err(|e| Error::Kernel(format!("nftables transaction refused: {e}")))
    }
}

impl Backend for Nftables {
    fn kind(&self) -> BackendKind {
        BackendKind::Nftables
    }

    fn available(&self) -> Result<()> {
        if !Path::new(self.nft.program).exists() {
            return Err(Error::Kernel(format!(
                "{} is missing: install the nftables package",
                self.nft.program
            )));
        }
        if !is_root() {
            // Reading or checking rules needs CAP_NET_ADMIN; the root helper checks for real.
            return Ok(());
        }
        let live = self
            .live()
            .map_err(|e| Error::Kernel(format!("the kernel's nf_tables is not usable (nf_tables module?): {e}")))?;
        if live.exists {
            return Ok(());
        }
        nftnl::check_base_chain(nftnl::NFPROTO_BRIDGE, TABLE, CHAIN, nftnl::NF_BR_FORWARD, PRIORITY).map_err(|e| {
            Error::Kernel(format!(
                "the kernel refuses a bridge-family nftables table (nf_tables, bridge filter chains?): {e}"
            ))
        })
    }

    fn check_writer(&self) -> Result<()> {
        if !is_root() {
            return Ok(());
        }
        let probe = Ruleset {
            bridges: vec![BridgeRules {
                bridge: "probe".into(),
                members: Vec::new(),
            }],
        };
        self.nft
            .check(&probe.create())
            .map_err(|e| Error::Kernel(format!("nft cannot write a bridge-family table: {e}")))
    }

    fn needs_root_to_observe(&self) -> bool {
        true
    }

    fn observe(&mut self, plan: &Plan) -> Result<Vec<Observed>> {
        let live = self.live()?;
        let gated = live.gated();
        Ok(plan
            .bridges
            .iter()
            .flat_map(|b| {
                let enforced = live.enforced(&b.bridge);
                b.ports.iter().map(move |p| Observed {
                    bridge: b.bridge.clone(),
                    port: p.port.name.clone(),
                    isolated: enforced.contains(&p.port.ifindex)
                        && (!gated || bridge::group(&p.port.name) == Some(GROUP)),
                })
            })
            .collect())
    }

    fn apply(&mut self, plan: &Plan) -> Result<Vec<Change>> {
        let live = self.live()?;
        let want = Ruleset::from_plan(plan);
        let cmds = live.diff(&want);
        let known: Vec<BridgePlan> = plan.bridges.iter().chain(&plan.lifted).cloned().collect();
        let mut ports = Ports::of(&live, &known);
        let wanted: BTreeSet<u32> = want.bridges.iter().flat_map(BridgeRules::indexes).collect();
        let (join, leave) = ports.moves(&wanted);
        if cmds.is_empty() && join.is_empty() && leave.is_empty() {
            return Ok(Vec::new());
        }
        let before = live
            .bridges()
            .into_iter()
            .map(|b| {
                let ports = ports.kept_apart(&live, &b);
                (b, ports)
            })
            .collect();
        let after = want.bridges.iter().map(|b| (b.bridge.clone(), b.indexes())).collect();
        // Into the group before the table changes, out of it after: never open in between.
        for index in join {
            ports.set(index, GROUP)?;
        }
        self.commit(&cmds)?;
        for index in leave {
            ports.set(index, DEFAULT_GROUP)?;
        }
        Ok(changes(&before, &after, namer(&known)))
    }

    fn remove(&mut self, bridges: &[BridgePlan]) -> Result<Vec<Change>> {
        if bridges.is_empty() {
            return Ok(Vec::new());
        }
        let live = self.live()?;
        let names: BTreeSet<String> = bridges.iter().map(|b| b.bridge.clone()).collect();
        let cmds = live.removal(&names);
        let mut ports = Ports::of(&live, bridges);
        let before = names.iter().map(|b| (b.clone(), ports.kept_apart(&live, b))).collect();
        self.commit(&cmds)?;
        let (_, leave) = ports.moves(&BTreeSet::new());
        for index in leave {
            ports.set(index, DEFAULT_GROUP)?;
        }
        Ok(changes(&before, &BTreeMap::new(), namer(bridges)))
    }

    fn drop_counters(&mut self, plan: &Plan) -> Result<BTreeMap<String, DropCounter>> {
        if !is_root() {
            return Ok(BTreeMap::new());
        }
        let live = self.live()?;
        Ok(plan
            .bridges
            .iter()
            .filter_map(|b| Some((b.bridge.clone(), live.counter(&b.bridge)?)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::plan::fixtures::{bridge, plan, red};
    use crate::model::plan::{PortPlan, Role};

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
        Cmd::AddRule {
            chain: chain_name(bridge),
            set: set_name(bridge),
            comment: comment(bridge),
        }
    }

    fn verdicts(entries: &[(u32, &str)]) -> Cmd {
        Cmd::AddVerdicts(entries.iter().map(|(i, c)| (*i, c.to_string())).collect())
    }

    #[test]
    fn set_and_chain_names_are_distinct_identifiers_for_any_bridge_name() {
        let names = [
            "red",
            "ovirtmgmt",
            "my-net",
            "my_2dnet",
            "br.100",
            "a_b",
            "a__b",
            "ünï",
            "x@y:z%",
            "a-b.c_d-e.f_g",
            "ports",
        ];
        let mut seen = BTreeSet::new();
        for n in names {
            let s = set_name(n);
            assert!(s.starts_with("vm_") && s.len() <= 3 + 3 * 15, "{s}");
            assert!(s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'), "{s}");
            assert_eq!(bridge_of_set(&s).as_deref(), Some(n), "{s}");
            assert!(seen.insert(s));
            let c = chain_name(n);
            assert_eq!(c[3..], set_name(n)[3..]);
            assert_eq!(bridge_of_chain(&c).as_deref(), Some(n), "{c}");
            assert_eq!(bridge_of_set(&c), None);
        }
        assert_ne!(set_name("ports"), MAP, "the map is no bridge's set");
        assert_eq!(bridge_of_set(MAP), None);
        assert_eq!(bridge_of_chain(CHAIN), None);
        assert_eq!(set_name("my-net.10"), "vm_my_2dnet_2e10");
        assert_eq!(chain_name("my-net.10"), "br_my_2dnet_2e10");
        assert_eq!(set_name("a_b"), "vm_a__b");
        for foreign in ["vm_", "other", "vm_a_", "vm_a_2", "vm_a_2D", "vm_a-b", "vm_a_zz"] {
            assert_eq!(bridge_of_set(foreign), None, "{foreign}");
        }
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
            Cmd::DeleteElements(MAP.into(), vec![7]).to_json(),
            json!({"delete": {"element": t(json!({"name": "ports", "elem": [7]}))}})
        );
        assert_eq!(
            Cmd::DeleteRule("br_red".into(), 4).to_json(),
            json!({"delete": {"rule": t(json!({"chain": "br_red", "handle": 4}))}})
        );
        assert_eq!(
            Cmd::FlushChain("br_red".into()).to_json(),
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
            vec![Cmd::AddElements("vm_red".into(), vec![30]), verdicts(&[(30, "br_red")]),]
        );
        // A VM stopped, another port made trusted: their elements go, nothing else.
        let mut p = two_bridges();
        p.bridges[0].ports[2].role = Role::Trusted; // vnet2 becomes trusted
        p.bridges[1].ports.clear();
        assert_eq!(
            live.diff(&Ruleset::from_plan(&p)),
            vec![
                Cmd::DeleteElements(MAP.into(), vec![9, 20]),
                Cmd::DeleteElements("vm_my_2dnet_2e10".into(), vec![20]),
                Cmd::DeleteElements("vm_red".into(), vec![9]),
            ]
        );
    }

    #[test]
    fn member_changes_only_touch_the_set_and_the_map() {
        // A VM port recreated under the same name: its old index no longer resolves.
        let mut stale = listing();
        stale.sets.get_mut("vm_red").unwrap().elements = BTreeSet::from([17, 9]);
        let map = stale.map.as_mut().unwrap();
        map.remove(&7);
        map.insert(17, Some("br_red".into()));
        assert!(stale.enforced("red").contains(&17));
        assert_eq!(
            stale.diff(&Ruleset::from_plan(&two_bridges())),
            vec![
                Cmd::DeleteElements(MAP.into(), vec![17]),
                Cmd::DeleteElements("vm_red".into(), vec![17]),
                Cmd::AddElements("vm_red".into(), vec![7]),
                verdicts(&[(7, "br_red")]),
            ]
        );
        // A port moved to another bridge keeping its index: its element changes its chain.
        let mut moved = listing();
        moved.map.as_mut().unwrap().insert(20, Some("br_red".into()));
        assert_eq!(
            moved.diff(&Ruleset::from_plan(&two_bridges())),
            vec![
                Cmd::DeleteElements(MAP.into(), vec![20]),
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
                Cmd::DeleteElements(MAP.into(), vec![20]),
                Cmd::FlushChain("br_my_2dnet_2e10".into()),
                Cmd::DeleteChain("br_my_2dnet_2e10".into()),
                Cmd::DeleteSet("vm_my_2dnet_2e10".into()),
                Cmd::AddSet("vm_blue".into()),
                Cmd::AddElements("vm_blue".into(), vec![40]),
                Cmd::AddBridgeChain("br_blue".into()),
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
        assert_eq!(missing.diff(&want), vec![drop_cmd("red"), Cmd::AddDispatch]);

        let mut no_chain = listing();
        no_chain.chains.remove("br_red");
        no_chain.map = None;
        assert!(no_chain.enforced("red").is_empty());
        assert_eq!(
            no_chain.diff(&want),
            vec![
                Cmd::DeleteRule(CHAIN.into(), 3),
                Cmd::AddBridgeChain("br_red".into()),
                drop_cmd("red"),
                Cmd::AddMap,
                verdicts(&[(7, "br_red"), (9, "br_red"), (20, "br_my_2dnet_2e10")]),
                Cmd::AddDispatch,
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
        live.sets.get_mut("vm_red").unwrap().kind = "ifname".into();
        assert!(live.enforced("red").is_empty());
        assert_eq!(
            live.diff(&Ruleset::from_plan(&two_bridges())),
            vec![
                Cmd::DeleteRule("br_red".into(), 4),
                Cmd::DeleteSet("vm_red".into()),
                Cmd::AddSet("vm_red".into()),
                Cmd::AddElements("vm_red".into(), vec![7, 9]),
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
                Cmd::AddBridgeChain("br_my_2dnet_2e10".into()),
                drop_cmd("my-net.10"),
                Cmd::AddBridgeChain("br_red".into()),
                drop_cmd("red"),
                Cmd::AddMap,
                verdicts(&[(7, "br_red"), (9, "br_red"), (20, "br_my_2dnet_2e10")]),
                Cmd::AddDispatch,
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
            vec![Cmd::DeleteRule(CHAIN.into(), 3), Cmd::AddDispatch]
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
                Cmd::DeleteElements(MAP.into(), vec![20]),
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
            rule_counter(&ours.statements()),
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
}
