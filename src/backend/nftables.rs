//! nftables backend: a table of our own in the `bridge` family, for hosts without the port
//! isolation flag and administrators who want rules they can see and count.
//!
//! ```text
//! table bridge bridge_isolation {
//!     set vm_red {                           # one set per isolated bridge: its VM ports
//!         type iface_index
//!         elements = { "vnet1", "vnet2" }
//!     }
//!     chain forward {
//!         type filter hook forward priority filter; policy accept;
//!         iif @vm_red oif @vm_red counter packets 0 bytes 0 drop comment "bridge red"
//!     }
//! }
//! ```
//!
//! The bridge `forward` hook sees every frame the bridge forwards from one port to another
//! (each copy of a flooded frame too), before any protocol is looked at: the drop covers
//! IPv4, IPv6, ARP and raw ethertypes, needs no br_netfilter, and leaves the uplink, trusted
//! vNICs and the host (frames to or from the bridge itself are not forwarded) open. Sets are
//! scoped per bridge by their explicit members, not by `meta ibrname`, which needs
//! NFT_BRIDGE_META (DESIGN.md section 4). Members are interface *indexes*: like the kernel's
//! port flag they belong to one interface, so a tap name that libvirt reuses on another
//! bridge is never caught by a stale entry; `nft list` still prints them by name.
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

use super::{Backend, BackendKind, Change, DropCounter, Observed};
use crate::config::is_root;
use crate::error::{Error, Result};
use crate::nftnl::{self, Operand, Stmt};
use crate::reconcile::{BridgePlan, Plan};

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
/// Datatype of the port sets.
pub const SET_TYPE: &str = "iface_index";
const SET_PREFIX: &str = "vm_";

/// The set holding the VM ports of `bridge`: `vm_` and the name with every byte but ASCII
/// letters and digits escaped (`_` as `__`, others as `_` and two lowercase hex digits), so
/// any Linux interface name gives a distinct, valid nft identifier (`my-net.10` ->
/// `vm_my_2dnet_2e10`).
pub fn set_name(bridge: &str) -> String {
    let mut name = String::from(SET_PREFIX);
    for b in bridge.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => name.push(char::from(b)),
            b'_' => name.push_str("__"),
            _ => name.push_str(&format!("_{b:02x}")),
        }
    }
    name
}

/// The bridge whose set is `set`, or `None` when `set` is not one of ours.
pub fn bridge_of_set(set: &str) -> Option<String> {
    let mut rest = set.strip_prefix(SET_PREFIX)?.bytes();
    let mut bytes = Vec::new();
    while let Some(b) = rest.next() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => bytes.push(b),
            b'_' => match rest.next()? {
                b'_' => bytes.push(b'_'),
                hi => {
                    let hex = [hi, rest.next()?];
                    let hex = std::str::from_utf8(&hex).ok()?;
                    if hex.bytes().any(|c| c.is_ascii_uppercase()) {
                        return None;
                    }
                    bytes.push(u8::from_str_radix(hex, 16).ok()?);
                }
            },
            _ => return None,
        }
    }
    String::from_utf8(bytes).ok().filter(|b| !b.is_empty())
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

/// The set and rule of one isolated bridge.
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
}

/// Our table as it should be: one set and one rule per isolated bridge.
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

    /// The commands creating the whole table from nothing.
    pub fn create(&self) -> Vec<Cmd> {
        let mut cmds = vec![Cmd::AddTable, Cmd::AddChain];
        for b in &self.bridges {
            cmds.extend(b.create_set());
        }
        cmds.extend(self.bridges.iter().map(BridgeRules::add_rule));
        cmds
    }
}

impl BridgeRules {
    /// The interface indexes its set holds.
    pub fn indexes(&self) -> BTreeSet<u32> {
        self.members.iter().map(|m| m.ifindex).collect()
    }

    fn create_set(&self) -> Vec<Cmd> {
        let mut cmds = vec![Cmd::AddSet(self.set())];
        if !self.members.is_empty() {
            cmds.push(Cmd::AddElements(
                self.set(),
                self.members.iter().map(|m| m.ifindex).collect(),
            ));
        }
        cmds
    }

    fn add_rule(&self) -> Cmd {
        Cmd::AddRule {
            set: self.set(),
            comment: comment(&self.bridge),
        }
    }
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

/// One rule of our chain as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveRule {
    /// Its handle, to delete it.
    pub handle: u64,
    /// The set of `iif @S oif @S counter drop` when the rule has exactly that shape.
    pub set: Option<String>,
    /// Its comment.
    pub comment: Option<String>,
    /// Its counter.
    pub counter: Option<DropCounter>,
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
    /// Rules of chain `forward`, in order.
    pub rules: Vec<LiveRule>,
    /// Anything else in the table (other chains, rules elsewhere, maps, objects).
    pub foreign: bool,
}

impl Live {
    /// Our table from what [`nftnl::read_table`] read (`None`: there is none).
    pub fn from_table(table: Option<&nftnl::Table>) -> Live {
        let Some(table) = table else {
            return Live::default();
        };
        let chain = table.chain(CHAIN);
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
            rules: table
                .rules_of(CHAIN)
                .map(|r| {
                    let stmts = r.statements();
                    LiveRule {
                        handle: r.handle,
                        set: drop_rule_set(&stmts),
                        comment: r.comment.clone(),
                        counter: rule_counter(&stmts),
                    }
                })
                .collect(),
            foreign: table.has_other_than(CHAIN),
        }
    }

    /// Whether this rule is the drop rule of an intact set.
    fn rule_is_ours(&self, rule: &LiveRule) -> bool {
        rule.set.as_ref().is_some_and(|s| self.set_ok(s))
    }

    /// Whether set `name` exists with our datatype.
    fn set_ok(&self, name: &str) -> bool {
        self.sets.get(name).is_some_and(|s| s.kind == SET_TYPE)
    }

    /// True when rules of someone else sit in our chain: a foreign `accept` would let frames
    /// past our drops, so nothing counts as enforced until they are gone.
    fn foreign_rules(&self) -> bool {
        self.rules.iter().any(|r| r.set.is_none())
    }

    /// The ports the kernel keeps apart on `bridge` now: the interface indexes in its set,
    /// when the chain is hooked and the set's drop rule is in place.
    pub fn enforced(&self, bridge: &str) -> BTreeSet<u32> {
        let set = set_name(bridge);
        let active = self.exists
            && self.chain_hooked
            && !self.foreign_rules()
            && self.set_ok(&set)
            && self.rules.iter().any(|r| r.set.as_deref() == Some(set.as_str()));
        if active {
            self.sets[&set].elements.clone()
        } else {
            BTreeSet::new()
        }
    }

    /// Frames dropped between the VM ports of `bridge`, when its rule exists.
    pub fn counter(&self, bridge: &str) -> Option<DropCounter> {
        let set = set_name(bridge);
        let mut found = None;
        for r in self.rules.iter().filter(|r| r.set.as_deref() == Some(set.as_str())) {
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
    /// chain, handles and counters stay as they are when only set members change; a table
    /// with a chain of the wrong shape or objects of others is rebuilt in one transaction.
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
        let mut deletes = Vec::new();
        let mut kept = BTreeSet::new();
        for r in &self.rules {
            let keep = r.set.as_ref().filter(|s| {
                self.rule_is_ours(r)
                    && !kept.contains(*s)
                    && wanted
                        .get(*s)
                        .is_some_and(|b| r.comment.as_deref() == Some(comment(&b.bridge).as_str()))
            });
            match keep {
                Some(s) => {
                    kept.insert(s.clone());
                }
                None => deletes.push(Cmd::DeleteRule(r.handle)),
            }
        }
        for (name, set) in &self.sets {
            if !wanted.contains_key(name) || set.kind != SET_TYPE {
                deletes.push(Cmd::DeleteSet(name.clone()));
            }
        }
        let mut adds = Vec::new();
        let mut rules = Vec::new();
        for (name, b) in &wanted {
            if !self.set_ok(name) {
                adds.extend(b.create_set());
            } else if self.sets[name].elements != b.indexes() {
                adds.push(Cmd::FlushSet(name.clone()));
                if !b.members.is_empty() {
                    adds.push(Cmd::AddElements(
                        name.clone(),
                        b.members.iter().map(|m| m.ifindex).collect(),
                    ));
                }
            }
            if !kept.contains(name) {
                rules.push(b.add_rule());
            }
        }
        deletes.into_iter().chain(adds).chain(rules).collect()
    }

    /// The commands removing the sets and rules of `bridges`, or the whole table when no
    /// other bridge is left in it.
    pub fn removal(&self, bridges: &BTreeSet<String>) -> Vec<Cmd> {
        if !self.exists {
            return Vec::new();
        }
        if self.bridges().iter().all(|b| bridges.contains(b)) {
            return vec![Cmd::AddTable, Cmd::DeleteTable];
        }
        let sets: BTreeSet<String> = bridges.iter().map(|b| set_name(b)).collect();
        let rules = self
            .rules
            .iter()
            .filter(|r| r.set.as_ref().is_some_and(|s| sets.contains(s)))
            .map(|r| Cmd::DeleteRule(r.handle));
        let doomed = self
            .sets
            .keys()
            .filter(|s| sets.contains(*s))
            .map(|s| Cmd::DeleteSet(s.clone()));
        rules.chain(doomed).collect()
    }
}

/// The set `S` of a rule whose statements are exactly `iif @S oif @S counter drop`.
fn drop_rule_set(stmts: &[Stmt]) -> Option<String> {
    let lookup = |stmt: &Stmt, key: u32| match stmt {
        Stmt::Lookup {
            left: Operand::Meta(k),
            set,
            inverted: false,
        } if *k == key => Some(set.clone()),
        _ => None,
    };
    match stmts {
        [iif, oif, Stmt::Counter { .. }, Stmt::Verdict(nftnl::NF_DROP)] => {
            let set = lookup(iif, nftnl::META_IIF)?;
            (lookup(oif, nftnl::META_OIF)? == set).then_some(set)
        }
        _ => None,
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
    /// `add set S { type iface_index; }`.
    AddSet(String),
    /// `delete set S`.
    DeleteSet(String),
    /// `flush set S`: removes every element.
    FlushSet(String),
    /// `add element S { indexes }`.
    AddElements(String, Vec<u32>),
    /// `add rule forward iif @S oif @S counter drop comment C`.
    AddRule {
        /// The set.
        set: String,
        /// The comment.
        comment: String,
    },
    /// `delete rule forward handle H`.
    DeleteRule(u64),
}

impl Cmd {
    /// The command in nft's JSON schema (libnftables-json(5)).
    pub fn to_json(&self) -> Value {
        let table = || json!({"family": FAMILY, "name": TABLE});
        let set = |name: &str| json!({"family": FAMILY, "table": TABLE, "name": name});
        match self {
            Cmd::AddTable => json!({"add": {"table": table()}}),
            Cmd::DeleteTable => json!({"delete": {"table": table()}}),
            Cmd::AddChain => json!({"add": {"chain": {
                "family": FAMILY, "table": TABLE, "name": CHAIN,
                "type": "filter", "hook": "forward", "prio": PRIORITY, "policy": "accept"
            }}}),
            Cmd::AddSet(name) => json!({"add": {"set": {
                "family": FAMILY, "table": TABLE, "name": name, "type": SET_TYPE
            }}}),
            Cmd::DeleteSet(name) => json!({"delete": {"set": set(name)}}),
            Cmd::FlushSet(name) => json!({"flush": {"set": set(name)}}),
            Cmd::AddElements(name, indexes) => json!({"add": {"element": {
                "family": FAMILY, "table": TABLE, "name": name, "elem": indexes
            }}}),
            Cmd::AddRule { set, comment } => {
                let lookup = |key: &str| json!({"match": {"op": "==", "left": {"meta": {"key": key}}, "right": format!("@{set}")}});
                json!({"add": {"rule": {
                    "family": FAMILY, "table": TABLE, "chain": CHAIN, "comment": comment,
                    "expr": [lookup("iif"), lookup("oif"), {"counter": null}, {"drop": null}]
                }}})
            }
            Cmd::DeleteRule(handle) => json!({"delete": {"rule": {
                "family": FAMILY, "table": TABLE, "chain": CHAIN, "handle": handle
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
        crate::tool::run(self.program, args, input)
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
        Ok(plan
            .bridges
            .iter()
            .flat_map(|b| {
                let enforced = live.enforced(&b.bridge);
                b.ports.iter().map(move |p| Observed {
                    bridge: b.bridge.clone(),
                    port: p.port.name.clone(),
                    isolated: enforced.contains(&p.port.ifindex),
                })
            })
            .collect())
    }

    fn apply(&mut self, plan: &Plan) -> Result<Vec<Change>> {
        let live = self.live()?;
        let want = Ruleset::from_plan(plan);
        let cmds = live.diff(&want);
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let before = live
            .bridges()
            .into_iter()
            .map(|b| {
                let ports = live.enforced(&b);
                (b, ports)
            })
            .collect();
        let after = want.bridges.iter().map(|b| (b.bridge.clone(), b.indexes())).collect();
        self.commit(&cmds)?;
        let known: Vec<BridgePlan> = plan.bridges.iter().chain(&plan.lifted).cloned().collect();
        Ok(changes(&before, &after, namer(&known)))
    }

    fn remove(&mut self, bridges: &[BridgePlan]) -> Result<Vec<Change>> {
        if bridges.is_empty() {
            return Ok(Vec::new());
        }
        let live = self.live()?;
        let names: BTreeSet<String> = bridges.iter().map(|b| b.bridge.clone()).collect();
        let cmds = live.removal(&names);
        let before = names.iter().map(|b| (b.clone(), live.enforced(b))).collect();
        self.commit(&cmds)?;
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
    use crate::reconcile::fixtures::{bridge, plan, red};
    use crate::reconcile::{PortPlan, Role};

    fn port(name: &str, ifindex: u32, role: Role) -> PortPlan {
        crate::reconcile::fixtures::port(name, ifindex, role, Some(false))
    }

    /// The drop rule of set `set` as the reader returns it (`nft --debug=netlink` shows
    /// `meta load iif => reg 1`, `lookup reg 1 set S`, the same for oif, `counter`,
    /// `immediate reg 0 drop`).
    fn drop_rule(handle: u64, set: &str, comment: &str, packets: u64) -> nftnl::Rule {
        let lookup = |key| {
            [
                nftnl::Expr::Meta { key, dreg: 1 },
                nftnl::Expr::Lookup {
                    set: set.into(),
                    sreg: 1,
                    inverted: false,
                },
            ]
        };
        let mut exprs = lookup(nftnl::META_IIF).to_vec();
        exprs.extend(lookup(nftnl::META_OIF));
        exprs.push(nftnl::Expr::Counter {
            packets,
            bytes: packets * 84,
        });
        exprs.push(nftnl::Expr::Verdict(nftnl::NF_DROP));
        nftnl::Rule {
            chain: CHAIN.into(),
            handle,
            comment: Some(comment.into()),
            exprs,
        }
    }

    fn port_set(name: &str, indexes: &[u32]) -> nftnl::Set {
        nftnl::Set {
            name: name.into(),
            flags: 0,
            key_type: 20,
            key_len: 4,
            elements: indexes
                .iter()
                .map(|i| nftnl::Element {
                    key: i.to_ne_bytes().to_vec(),
                    ..nftnl::Element::default()
                })
                .collect(),
        }
    }

    /// Our table after `render` of red plus a bridge `my-net.10` with one VM port, and some
    /// traffic, as [`nftnl::read_table`] returns it.
    fn table() -> nftnl::Table {
        nftnl::Table {
            chains: vec![nftnl::Chain {
                name: CHAIN.into(),
                hook: Some((nftnl::NF_BR_FORWARD, PRIORITY)),
                policy: Some(nftnl::NF_ACCEPT),
                kind: Some("filter".into()),
            }],
            sets: vec![port_set("vm_red", &[7, 9]), port_set("vm_my_2dnet_2e10", &[20])],
            rules: vec![
                drop_rule(4, "vm_red", "bridge red", 12),
                drop_rule(5, "vm_my_2dnet_2e10", "bridge my-net.10", 0),
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

    #[test]
    fn set_names_are_distinct_identifiers_for_any_bridge_name() {
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
        ];
        let mut seen = BTreeSet::new();
        for n in names {
            let s = set_name(n);
            assert!(s.starts_with("vm_") && s.len() <= 3 + 3 * 15, "{s}");
            assert!(s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'), "{s}");
            assert_eq!(bridge_of_set(&s).as_deref(), Some(n), "{s}");
            assert!(seen.insert(s));
        }
        assert_eq!(set_name("my-net.10"), "vm_my_2dnet_2e10");
        assert_eq!(set_name("a_b"), "vm_a__b");
        for foreign in ["vm_", "other", "vm_a_", "vm_a_2", "vm_a_2D", "vm_a-b", "vm_a_zz"] {
            assert_eq!(bridge_of_set(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn renders_one_set_and_one_rule_per_bridge() {
        let want = json!({"nftables": [
            {"add": {"table": {"family": "bridge", "name": "bridge_isolation"}}},
            {"add": {"chain": {"family": "bridge", "table": "bridge_isolation", "name": "forward",
                "type": "filter", "hook": "forward", "prio": -200, "policy": "accept"}}},
            {"add": {"set": {"family": "bridge", "table": "bridge_isolation", "name": "vm_red", "type": "iface_index"}}},
            {"add": {"element": {"family": "bridge", "table": "bridge_isolation", "name": "vm_red", "elem": [7, 9]}}},
            {"add": {"rule": {"family": "bridge", "table": "bridge_isolation", "chain": "forward", "comment": "bridge red",
                "expr": [
                    {"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": "@vm_red"}},
                    {"match": {"op": "==", "left": {"meta": {"key": "oif"}}, "right": "@vm_red"}},
                    {"counter": null},
                    {"drop": null}]}}}
        ]});
        assert_eq!(render(&plan(vec![red()])), want);
        // A bridge without VM ports keeps its (empty) set and rule, and no element command.
        let lonely = render(&plan(vec![bridge("blue", vec![port("eth2", 5, Role::Uplink)])]));
        let cmds = lonely["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 4);
        assert!(cmds.iter().all(|c| c["add"].get("element").is_none()));
    }

    #[test]
    fn reads_a_table() {
        let live = listing();
        assert!(live.exists && live.chain_hooked && live.chain_exact && !live.foreign);
        assert_eq!(
            live.bridges(),
            BTreeSet::from(["my-net.10".to_string(), "red".to_string()])
        );
        assert_eq!(live.enforced("red"), BTreeSet::from([7, 9]));
        assert_eq!(
            live.counter("red"),
            Some(DropCounter {
                packets: 12,
                bytes: 1008
            })
        );
        assert_eq!(live.counter("blue"), None);
        assert!(live.enforced("blue").is_empty());
        assert_eq!(Live::from_table(None), Live::default());
        // Someone else's chain, map or object, and a chain of another priority.
        let mut other = table();
        other.chains.push(nftnl::Chain {
            name: "mine".into(),
            ..nftnl::Chain::default()
        });
        assert!(Live::from_table(Some(&other)).foreign);
        let mut map = table();
        map.sets[1].flags = nftnl::SET_MAP;
        let map = Live::from_table(Some(&map));
        assert!(map.foreign && !map.sets.contains_key("vm_my_2dnet_2e10"));
        let mut object = table();
        object.objects = 1;
        assert!(Live::from_table(Some(&object)).foreign);
        let mut late = table();
        late.chains[0].hook = Some((nftnl::NF_BR_FORWARD, 0));
        let late = Live::from_table(Some(&late));
        assert!(late.chain_hooked && !late.chain_exact);
    }

    #[test]
    fn converged_table_needs_no_transaction() {
        let live = listing();
        assert_eq!(live.diff(&Ruleset::from_plan(&two_bridges())), vec![]);
        assert_eq!(Live::default().diff(&Ruleset::default()), vec![]);
    }

    #[test]
    fn member_changes_only_touch_the_set() {
        let live = listing();
        let mut p = two_bridges();
        p.bridges[0].ports[2].role = Role::Trusted; // vnet2 becomes trusted
        p.bridges[0].ports.push(port("vnet4", 30, Role::Vm));
        assert_eq!(
            live.diff(&Ruleset::from_plan(&p)),
            vec![
                Cmd::FlushSet("vm_red".into()),
                Cmd::AddElements("vm_red".into(), vec![7, 30])
            ]
        );
        // A VM port recreated under the same name: its old index no longer resolves.
        let mut stale = live.clone();
        stale.sets.get_mut("vm_red").unwrap().elements = BTreeSet::from([17, 9]);
        assert_eq!(
            stale.diff(&Ruleset::from_plan(&two_bridges())),
            vec![
                Cmd::FlushSet("vm_red".into()),
                Cmd::AddElements("vm_red".into(), vec![7, 9])
            ]
        );
        assert!(stale.enforced("red").contains(&17));
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
                Cmd::DeleteRule(5),
                Cmd::DeleteSet("vm_my_2dnet_2e10".into()),
                Cmd::AddSet("vm_blue".into()),
                Cmd::AddElements("vm_blue".into(), vec![40]),
                Cmd::AddRule {
                    set: "vm_blue".into(),
                    comment: "bridge blue".into()
                },
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
            ..live.rules[0].clone()
        };
        live.rules.push(dup);
        assert_eq!(live.diff(&want), vec![Cmd::DeleteRule(9)]);

        let mut missing = listing();
        missing.rules.remove(0);
        assert!(
            missing.enforced("red").is_empty(),
            "a set without its rule enforces nothing"
        );
        assert_eq!(
            missing.diff(&want),
            vec![Cmd::AddRule {
                set: "vm_red".into(),
                comment: "bridge red".into()
            }]
        );

        let mut accept = listing();
        accept.rules.insert(
            0,
            LiveRule {
                handle: 7,
                set: None,
                comment: None,
                counter: None,
            },
        );
        assert!(accept.enforced("red").is_empty(), "a foreign rule may accept first");
        assert_eq!(accept.diff(&want), vec![Cmd::DeleteRule(7)]);

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
        assert_eq!(
            live.diff(&Ruleset::from_plan(&two_bridges())),
            vec![
                Cmd::DeleteRule(4),
                Cmd::DeleteSet("vm_red".into()),
                Cmd::AddSet("vm_red".into()),
                Cmd::AddElements("vm_red".into(), vec![7, 9]),
                Cmd::AddRule {
                    set: "vm_red".into(),
                    comment: "bridge red".into()
                },
            ]
        );
    }

    #[test]
    fn removal_deletes_only_what_is_asked_then_the_table() {
        let live = listing();
        assert_eq!(
            live.removal(&BTreeSet::from(["my-net.10".to_string()])),
            vec![Cmd::DeleteRule(5), Cmd::DeleteSet("vm_my_2dnet_2e10".into())]
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
    fn recognises_the_drop_rule_only() {
        let ours = drop_rule(1, "vm_a", "bridge a", 1).statements();
        assert_eq!(drop_rule_set(&ours).as_deref(), Some("vm_a"));
        assert_eq!(rule_counter(&ours), Some(DropCounter { packets: 1, bytes: 84 }));
        let mut crossed = drop_rule(1, "vm_a", "bridge a", 1);
        crossed.exprs[3] = nftnl::Expr::Lookup {
            set: "vm_b".into(),
            sreg: 1,
            inverted: false,
        };
        assert_eq!(drop_rule_set(&crossed.statements()), None);
        let mut accept = drop_rule(1, "vm_a", "bridge a", 1);
        accept.exprs[5] = nftnl::Expr::Verdict(nftnl::NF_ACCEPT);
        assert_eq!(drop_rule_set(&accept.statements()), None);
        let mut negated = drop_rule(1, "vm_a", "bridge a", 1);
        negated.exprs[1] = nftnl::Expr::Lookup {
            set: "vm_a".into(),
            sreg: 1,
            inverted: true,
        };
        assert_eq!(drop_rule_set(&negated.statements()), None);
        assert_eq!(drop_rule_set(&[Stmt::Verdict(nftnl::NF_ACCEPT)]), None);
    }
}
