//! Cross-host isolation: frames that enter an isolated bridge **from its uplink** with a
//! source MAC of a VM on another host (`bridge_isolation_peer_macs`), or with any source
//! MAC outside the uplink allow-list (`bridge_isolation_uplink_macs`, private-VLAN style),
//! do not reach the bridge's untrusted VM ports. It runs beside whatever backend keeps the
//! VM ports of one host apart (port isolation by default), in a table of its own:
//!
//! ```text
//! table bridge bridge_isolation_peers {
//!     set peers_red {                        # bridge_isolation_peer_macs
//!         type ether_addr
//!         flags interval
//!         elements = { 56:6f:4c:ab:00:00-56:6f:4c:ab:ff:ff }
//!     }
//!     set trusted_red {                      # bridge_isolation_trusted_macs
//!         type ether_addr
//!         flags interval
//!         elements = { 56:6f:4c:ab:00:04 }
//!     }
//!     set open_red {                         # trusted vNICs of this host (taps)
//!         type iface_index
//!         elements = { "vnet4" }
//!     }
//!     set uplink_red {                       # bridge_isolation_uplink_macs
//!         type ether_addr
//!         flags interval
//!         elements = { 02:b1:00:00:00:fe }
//!     }
//!     chain forward {
//!         type filter hook forward priority filter; policy accept;
//!         iifname "eth1" oif != @open_red ether saddr @peers_red ether saddr != @trusted_red counter packets 0 bytes 0 drop comment "bridge red"
//!         iifname "eth1" oif != @open_red ether saddr != @uplink_red counter packets 0 bytes 0 drop comment "bridge red uplink_macs"
//!     }
//! }
//! ```
//!
//! Each rule is there only when its property is set ([`RuleKind`]); the sets of the peer
//! rule only with it, the uplink set only with the allow-list. A table without uplink
//! MACs is exactly the one of the releases before them. Both rules drop on their own: a
//! source passes only if neither drops it (in the allow-list, and in no peer range or
//! trusted). Every protocol, broadcast and multicast included (the bridge forward hook sees
//! each flooded copy); the gateway and other devices outside the ranges (or in the
//! allow-list) pass, as do frames to the host itself (delivered, not forwarded) and to
//! trusted vNICs. The uplink is matched
//! by name, so the rule is in place before VDSM creates the bridge; the open set holds
//! interface indexes, so a port not yet classified counts as untrusted (fail closed).
//!
//! Same shape as [`crate::enforce::nftables`]: [`Ruleset`] (wanted, plain data), [`Live`]
//! (read in-process, [`nftnl::read_table`]), [`Live::diff`], one `nft -j -f -` transaction
//! when something differs, no process when converged. The table is deleted when no network
//! has peer ranges or uplink MACs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use crate::enforce::chain_name::{self, PerBridge};
use crate::enforce::nftables::{FAMILY, NFT, PRIORITY};
use crate::error::{Error, Result};
use crate::host::state::State;
use crate::model::backend::{BackendKind, DropCounter};
use crate::model::plan::{Plan, Role};
use crate::model::policy::{mac_from_u64, mac_to_u64, merge_ranges, MacRange, NetworkPolicy};
use crate::sys::nftnl::{self, Operand, Stmt};

/// Our table (the port backends' table is [`crate::enforce::nftables::TABLE`]).
pub const TABLE: &str = "bridge_isolation_peers";
/// Our base chain.
pub const CHAIN: &str = "forward";
const MAC_TYPE: &str = "ether_addr";
const PORT_TYPE: &str = "iface_index";

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

    fn datatype(self) -> &'static str {
        match self {
            SetKind::Open => PORT_TYPE,
            _ => MAC_TYPE,
        }
    }
}

/// Set `kind` of `bridge`: its prefix and the name escaped ([`PerBridge::escaped`]).
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
    fn sets(self) -> &'static [SetKind] {
        match self {
            RuleKind::Peers => &[SetKind::Peers, SetKind::Trusted, SetKind::Open],
            RuleKind::Uplink => &[SetKind::Uplink, SetKind::Open],
        }
    }
}

/// The comment naming the rule of `kind` for `bridge` (the peer rule's is the one of the
/// releases before uplink MACs).
fn comment(bridge: &str, kind: RuleKind) -> String {
    match kind {
        RuleKind::Peers => format!("bridge {bridge}"),
        RuleKind::Uplink => format!("bridge {bridge} uplink_macs"),
    }
}

// ---------------------------------------------------------------------------------------
// 1. What we want.

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

    fn elements(&self, kind: SetKind) -> Elements {
        match kind {
            SetKind::Peers => Elements::Macs(self.peers.clone()),
            SetKind::Trusted => Elements::Macs(self.trusted.iter().map(|&m| (m, m)).collect()),
            SetKind::Open => Elements::Ports(self.open.iter().map(|&(_, i)| i).collect()),
            SetKind::Uplink => Elements::Macs(self.uplink_macs.clone()),
        }
    }

    fn fill(&self, kind: SetKind) -> Option<Cmd> {
        let name = set_name(kind, &self.bridge);
        match self.elements(kind) {
            Elements::Macs(m) => (!m.is_empty()).then_some(Cmd::AddMacs(name, m)),
            Elements::Ports(p) => (!p.is_empty()).then(|| Cmd::AddPorts(name, p.into_iter().collect())),
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
    /// bridges of [`wanted_bridges`]). A network without an uplink gets none.
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
        let mut cmds = vec![Cmd::AddTable, Cmd::AddChain];
        for b in &self.bridges {
            for kind in b.sets() {
                cmds.push(Cmd::AddSet(kind, set_name(kind, &b.bridge)));
                cmds.extend(b.fill(kind));
            }
        }
        cmds.extend(self.rules().map(|(b, k)| Cmd::AddRule(b.clone(), k)));
        cmds
    }

    /// Every set wanted, by name: its bridge and kind.
    fn sets(&self) -> BTreeMap<String, (&PeerRules, SetKind)> {
        self.bridges
            .iter()
            .flat_map(|b| b.sets().into_iter().map(move |k| (set_name(k, &b.bridge), (b, k))))
            .collect()
    }

    /// Every rule wanted: its bridge and kind.
    fn rules(&self) -> impl Iterator<Item = (&PeerRules, RuleKind)> {
        self.bridges
            .iter()
            .flat_map(|b| b.rules().into_iter().map(move |k| (b, k)))
    }
}

/// Whether network policy `p` asks for a cross-host rule (given an uplink).
fn filters(p: &NetworkPolicy) -> bool {
    !p.peer_macs.is_empty() || !p.uplink_macs.is_empty()
}

/// The bridges that get a cross-host rule.
pub fn wanted_bridges(state: &State) -> BTreeSet<String> {
    wanted_rules(state).into_iter().map(|(bridge, _)| bridge).collect()
}

// ---------------------------------------------------------------------------------------
// 2. What the kernel has.

/// A set's elements, normalized for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Elements {
    /// MAC intervals, sorted and merged.
    Macs(Vec<(u64, u64)>),
    /// Interface indexes (of ports that may be gone since).
    Ports(BTreeSet<u32>),
}

/// One set as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveSet {
    /// Datatype.
    pub datatype: String,
    /// Whether it has `flags interval`.
    pub interval: bool,
    /// Elements.
    pub elements: Elements,
}

/// One rule of our chain as read.
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

/// A set as read: MAC sets as merged intervals, others as interface indexes.
fn live_set(set: &nftnl::Set) -> LiveSet {
    let datatype = set.datatype();
    let elements = if datatype == MAC_TYPE {
        let top = (1u128 << 48) - 1;
        Elements::Macs(merge_ranges(
            set.intervals()
                .into_iter()
                .filter(|&(first, _)| first <= top)
                .map(|(first, last)| (first as u64, last.min(top) as u64))
                .collect(),
        ))
    } else {
        Elements::Ports(set.host_u32_keys())
    };
    LiveSet {
        datatype,
        interval: set.flags & nftnl::SET_INTERVAL != 0,
        elements,
    }
}

/// A rule as read: its statements with the counter taken out (and zeroed in them).
fn live_rule(rule: &nftnl::Rule) -> LiveRule {
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

impl Live {
    /// Our table from what [`nftnl::read_table`] read (`None`: there is none).
    pub fn from_table(table: Option<&nftnl::Table>) -> Live {
        let Some(table) = table else {
            return Live::default();
        };
        Live {
            exists: true,
            chain_exact: table
                .chain(CHAIN)
                .is_some_and(|c| c.is_filter(nftnl::NF_BR_FORWARD, PRIORITY)),
            sets: table.plain_sets().map(|s| (s.name.clone(), live_set(s))).collect(),
            rules: table.rules_of(CHAIN).map(live_rule).collect(),
            foreign: table.has_other_than(CHAIN),
        }
    }

    fn set_ok(&self, kind: SetKind, bridge: &str) -> bool {
        self.sets
            .get(&set_name(kind, bridge))
            .is_some_and(|s| s.datatype == kind.datatype() && (kind == SetKind::Open || s.interval))
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
        let mut deletes = Vec::new();
        let mut kept = BTreeSet::new();
        for r in &self.rules {
            match want
                .rules()
                .find(|&(b, k)| !kept.contains(&(b.bridge.as_str(), k)) && self.rule_matches(r, b, k))
            {
                Some((b, k)) => {
                    kept.insert((b.bridge.as_str(), k));
                }
                None => deletes.push(Cmd::DeleteRule(r.handle)),
            }
        }
        let wanted = want.sets();
        for name in self.sets.keys() {
            match wanted.get(name) {
                Some((b, k)) if self.set_ok(*k, &b.bridge) => {}
                _ => deletes.push(Cmd::DeleteSet(name.clone())),
            }
        }
        let mut adds = Vec::new();
        for (name, (b, k)) in &wanted {
            if !self.set_ok(*k, &b.bridge) {
                adds.push(Cmd::AddSet(*k, name.clone()));
                adds.extend(b.fill(*k));
            } else if self.sets[name].elements != b.elements(*k) {
                adds.push(Cmd::FlushSet(name.clone()));
                adds.extend(b.fill(*k));
            }
        }
        let rules = want
            .rules()
            .filter(|&(b, k)| !kept.contains(&(b.bridge.as_str(), k)))
            .map(|(b, k)| Cmd::AddRule(b.clone(), k));
        deletes.into_iter().chain(adds).chain(rules).collect()
    }
}

// ---------------------------------------------------------------------------------------
// 3. Commands in nft's JSON schema.

/// One command of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd {
    /// `add table` (no-op when it exists, so a following delete cannot fail).
    AddTable,
    /// `delete table`.
    DeleteTable,
    /// `add chain forward { type filter hook forward priority filter; policy accept; }`.
    AddChain,
    /// `add set NAME { type ...; [flags interval;] }`.
    AddSet(SetKind, String),
    /// `delete set NAME`.
    DeleteSet(String),
    /// `flush set NAME`.
    FlushSet(String),
    /// `add element NAME { a-b, ... }`.
    AddMacs(String, Vec<(u64, u64)>),
    /// `add element NAME { ifindex, ... }`.
    AddPorts(String, Vec<u32>),
    /// A drop rule of a bridge.
    AddRule(PeerRules, RuleKind),
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
            Cmd::AddSet(kind, name) => {
                let mut s = json!({"family": FAMILY, "table": TABLE, "name": name, "type": kind.datatype()});
                if kind.datatype() == MAC_TYPE {
                    s["flags"] = json!(["interval"]);
                }
                json!({"add": {"set": s}})
            }
            Cmd::DeleteSet(name) => json!({"delete": {"set": set(name)}}),
            Cmd::FlushSet(name) => json!({"flush": {"set": set(name)}}),
            Cmd::AddMacs(name, ranges) => {
                let elem: Vec<Value> = ranges
                    .iter()
                    .map(|&(a, b)| {
                        if a == b {
                            json!(mac_from_u64(a).to_string())
                        } else {
                            json!({"range": [mac_from_u64(a).to_string(), mac_from_u64(b).to_string()]})
                        }
                    })
                    .collect();
                json!({"add": {"element": {"family": FAMILY, "table": TABLE, "name": name, "elem": elem}}})
            }
            Cmd::AddPorts(name, indexes) => json!({"add": {"element": {
                "family": FAMILY, "table": TABLE, "name": name, "elem": indexes
            }}}),
            Cmd::AddRule(b, kind) => json!({"add": {"rule": {
                "family": FAMILY, "table": TABLE, "chain": CHAIN, "comment": comment(&b.bridge, *kind), "expr": b.expr(*kind)
            }}}),
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

// ---------------------------------------------------------------------------------------
// 4. Running nft, and the entry points.

fn nft(args: &[&str], input: Option<&[u8]>) -> Result<std::process::Output> {
    crate::sys::tool::run(NFT, args, input)
}

/// Our table as the kernel has it (read in-process); empty when it does not exist.
pub fn list() -> Result<Live> {
    Ok(Live::from_table(
        nftnl::read_table(nftnl::NFPROTO_BRIDGE, TABLE)?.as_ref(),
    ))
}

fn apply(cmds: &[Cmd]) -> Result<()> {
    if !Path::new(NFT).exists() {
        return Err(Error::Kernel(format!(
            "{NFT} is missing: {}/{} need the nftables package (with every backend but firewalld)",
            crate::model::policy::PROP_PEER_MACS,
            crate::model::policy::PROP_UPLINK_MACS
        )));
    }
    let text = batch(cmds).to_string();
    log::debug!("nft -j -f -: {text}");
    nft(&["-j", "-f", "-"], Some(text.as_bytes()))
        .map(drop)
        .map_err(|e| Error::Kernel(format!("cross-host nftables transaction refused: {e}")))
}

// ---------------------------------------------------------------------------------------
// 5. With the firewalld backend: `eb` direct rules instead of the table.

/// Priority of the RETURN rules (trusted or allowed sources, trusted vNICs).
pub const EB_PRIORITY_RETURN: i32 = 0;
/// Priority of the DROP rules (after every RETURN).
pub const EB_PRIORITY_DROP: i32 = 1;

/// The direct chain of rule `kind` of `bridge` (`BRIDGE_PEERS_<bridge>`,
/// `BRIDGE_UPLINK_<bridge>`).
pub fn eb_chain_of(bridge: &str, kind: RuleKind) -> String {
    match kind {
        RuleKind::Peers => chain_name::EB_PEERS.name(bridge),
        RuleKind::Uplink => chain_name::EB_UPLINK.name(bridge),
    }
}

/// Whether direct chain `chain` is one of the filter's (never one of the firewalld
/// backend's own).
fn owns_eb_chain(chain: &str) -> bool {
    chain_name::EB_PEERS.owns(chain) || chain_name::EB_UPLINK.owns(chain)
}

/// The interval `first..=last` of 48-bit MACs as the fewest prefixes `(base, length)`,
/// in order: what `ebtables -s MAC/MASK` can match.
pub fn mac_prefixes(first: u64, last: u64) -> Vec<(u64, u32)> {
    const TOP: u64 = 1 << 48;
    let mut out = Vec::new();
    let (mut at, end) = (first, last.min(TOP - 1) + 1);
    while at < end {
        // The largest block aligned at `at` that does not pass `end`.
        let mut size = if at == 0 {
            TOP
        } else {
            1u64 << at.trailing_zeros().min(48)
        };
        while at + size > end {
            size >>= 1;
        }
        out.push((at, 48 - size.trailing_zeros()));
        at += size;
    }
    out
}

/// `-s` operand of a prefix: the MAC alone for /48, else `MAC/MASK` in MAC notation.
pub fn eb_source(base: u64, len: u32) -> String {
    if len >= 48 {
        return mac_from_u64(base).to_string();
    }
    let mask = ((1u64 << 48) - 1) & !((1u64 << (48 - len)) - 1);
    format!("{}/{}", mac_from_u64(base), mac_from_u64(mask))
}

impl Ruleset {
    /// The direct chains and rules of the firewalld backend's variant, one chain per bridge
    /// and rule, jumped to for frames from the uplink; trusted or allowed sources and trusted
    /// vNICs return first, then the DROPs:
    ///
    /// ```text
    /// eb filter FORWARD 0 -i eth1 -j BRIDGE_PEERS_red
    /// eb filter BRIDGE_PEERS_red 0 -s 56:6f:4c:ab:00:04 -j RETURN          # trusted MAC
    /// eb filter BRIDGE_PEERS_red 0 -o vnet4 -j RETURN                      # trusted vNIC
    /// eb filter BRIDGE_PEERS_red 1 -s 56:6f:4c:ab:00:00/ff:ff:ff:ff:00:00 -j DROP   # per prefix
    /// eb filter FORWARD 0 -i eth1 -j BRIDGE_UPLINK_red
    /// eb filter BRIDGE_UPLINK_red 0 -s 02:b1:00:00:00:fe -j RETURN         # per allowed prefix
    /// eb filter BRIDGE_UPLINK_red 0 -o vnet4 -j RETURN                     # trusted vNIC
    /// eb filter BRIDGE_UPLINK_red 1 -j DROP
    /// ```
    pub fn eb(&self) -> Result<crate::enforce::firewalld::Ours> {
        let mut ours = crate::enforce::firewalld::Ours::default();
        for b in &self.bridges {
            crate::model::ifname::validate(&b.bridge)
                .map_err(|e| Error::Kernel(format!("bridge {}: {e}", b.bridge)))?;
            crate::enforce::iptables::exact_port_name(&b.uplink)?;
            for kind in b.rules() {
                let chain = eb_chain_of(&b.bridge, kind);
                let fwd = crate::enforce::firewalld::FORWARD.to_string();
                ours.rules.insert((fwd, 0, args(&["-i", &b.uplink, "-j", &chain])));
                for (priority, rule) in b.eb_rules(kind)? {
                    ours.rules.insert((chain.clone(), priority, rule));
                }
                ours.chains.insert(chain);
            }
        }
        Ok(ours)
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

impl PeerRules {
    /// The rules of the direct chain of rule `kind`: (priority, arguments).
    fn eb_rules(&self, kind: RuleKind) -> Result<Vec<(i32, Vec<String>)>> {
        let mut out = Vec::new();
        let source = |first, last, verdict| {
            mac_prefixes(first, last)
                .into_iter()
                .map(move |(base, len)| args(&["-s", &eb_source(base, len), "-j", verdict]))
        };
        if kind == RuleKind::Peers {
            for &m in &self.trusted {
                out.extend(source(m, m, "RETURN").map(|a| (EB_PRIORITY_RETURN, a)));
            }
        }
        for (name, _) in &self.open {
            crate::enforce::iptables::exact_port_name(name)?;
            out.push((EB_PRIORITY_RETURN, args(&["-o", name, "-j", "RETURN"])));
        }
        match kind {
            RuleKind::Peers => {
                for &(first, last) in &self.peers {
                    out.extend(source(first, last, "DROP").map(|a| (EB_PRIORITY_DROP, a)));
                }
            }
            RuleKind::Uplink => {
                for &(first, last) in &self.uplink_macs {
                    out.extend(source(first, last, "RETURN").map(|a| (EB_PRIORITY_RETURN, a)));
                }
                out.push((EB_PRIORITY_DROP, args(&["-j", "DROP"])));
            }
        }
        Ok(out)
    }
}

/// Makes the firewalld variant `want` (runtime and permanent). Returns the calls made.
fn eb_sync(fw: &crate::enforce::firewalld::Firewalld, want: &Ruleset) -> Result<usize> {
    let ours = want.eb()?;
    fw.sync_part(owns_eb_chain, &ours)
        .map_err(|e| Error::Kernel(format!("cross-host firewalld direct rules: {e}")))
}

/// Removes the firewalld variant when firewalld runs. Returns the calls made.
fn eb_clear() -> Result<usize> {
    let fw = crate::enforce::firewalld::Firewalld::new();
    if !fw.running() {
        return Ok(0);
    }
    eb_sync(&fw, &Ruleset::default())
}

/// Makes the kernel's cross-host table match `state` (root): one listing, and one
/// transaction when something differs. Returns the number of commands applied.
///
/// With the firewalld backend the filter is `eb` direct rules instead (see [`Ruleset::eb`])
/// and the table is deleted; with any other backend (iptables included: br_netfilter cannot
/// see ARP and non-IP frames) the table is used and our direct rules, if firewalld runs,
/// are removed.
///
/// `plan` is a plan of the bridges of `state` (the one the backend just enforced): the
/// filter's open ports (trusted vNICs) come from it, without another port dump.
pub fn reconcile(state: &mut State, plan: &Plan) -> Result<usize> {
    let want = Ruleset::from_state(state, plan);
    if want.bridges.is_empty() && !state.cross_host {
        return Ok(0);
    }
    let changed = sync(state, &want)?;
    state.cross_host = !want.bridges.is_empty();
    Ok(changed)
}

/// Makes the filter of the active backend equal to `want` and removes the other one.
fn sync(state: &State, want: &Ruleset) -> Result<usize> {
    if state.backend == Some(BackendKind::Firewalld) {
        let fw = crate::enforce::firewalld::Firewalld::new();
        let mut n = eb_sync(&fw, want)?;
        if list()?.exists {
            apply(&[Cmd::AddTable, Cmd::DeleteTable])?;
            n += 2;
        }
        if n > 0 {
            log::info!("cross-host: firewalld direct rules updated ({n} change(s))");
        }
        return Ok(n);
    }
    match eb_clear() {
        Ok(0) => {}
        Ok(n) => log::info!("cross-host: firewalld direct rules removed ({n} change(s))"),
        Err(e) => log::warn!("cross-host: removing firewalld direct rules: {e}"),
    }
    let live = list()?;
    let cmds = live.diff(want);
    if cmds.is_empty() {
        return Ok(0);
    }
    apply(&cmds)?;
    let after = list()?;
    let left = after.diff(want);
    if !left.is_empty() {
        return Err(Error::Kernel(format!(
            "cross-host table still differs after reconcile ({} command(s))",
            left.len()
        )));
    }
    for b in &want.bridges {
        log::debug!(
            "cross-host: bridge {} uplink {}: {} peer range(s), {} trusted MAC(s), {} allowed uplink range(s), {} open port(s)",
            b.bridge,
            b.uplink,
            b.peers.len(),
            b.trusted.len(),
            b.uplink_macs.len(),
            b.open.len()
        );
    }
    if want.bridges.is_empty() {
        log::info!("cross-host: table {TABLE} removed");
    } else {
        log::info!("cross-host: table {TABLE} updated ({} command(s))", cmds.len());
    }
    Ok(cmds.len())
}

/// Deletes our table if it exists (release-all). Returns whether it existed.
pub fn remove_all() -> Result<bool> {
    let direct = eb_clear()? > 0;
    let live = list()?;
    if !live.exists {
        return Ok(direct);
    }
    apply(&[Cmd::AddTable, Cmd::DeleteTable])?;
    if list()?.exists {
        return Err(Error::Kernel(format!("table {FAMILY} {TABLE} still exists")));
    }
    Ok(true)
}

/// What `verify` reports of the cross-host filter (root): one line per difference a reconcile
/// would repair, none when the kernel (or firewalld, with its backend) holds exactly what
/// `state` asks for. Nothing is read when no network has peer ranges or uplink MACs and none
/// had. `plan` covers (at least) the [`wanted_bridges`].
pub fn drift(state: &State, plan: &Plan) -> Result<Vec<String>> {
    let want = Ruleset::from_state(state, plan);
    if want.bridges.is_empty() && !state.cross_host {
        return Ok(Vec::new());
    }
    if state.backend == Some(BackendKind::Firewalld) {
        let fw = crate::enforce::firewalld::Firewalld::new();
        let mut out: Vec<String> = fw
            .drift_part(owns_eb_chain, &want.eb()?)?
            .into_iter()
            .map(|d| format!("cross-host (firewalld direct rules): {d}"))
            .collect();
        if list()?.exists {
            out.push(format!(
                "cross-host: table {FAMILY} {TABLE} is left beside the firewalld direct rules"
            ));
        }
        return Ok(out);
    }
    let live = list()?;
    Ok(live.drift(&want))
}

impl Live {
    /// What differs from `want`, in words (see [`drift`]).
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
                Cmd::DeleteRule(h) => Some(format!(
                    "{table}: rule handle {h} in chain {CHAIN} is not ours or altered"
                )),
                // Wanted, but of the wrong type: re-added below, reported there.
                Cmd::DeleteSet(n) if wanted.contains_key(n) => None,
                Cmd::DeleteSet(n) => Some(format!("{table}: set {n} belongs to no rule of any network")),
                Cmd::AddSet(_, n) => Some(format!("{table}: set {n} is missing or has the wrong type")),
                Cmd::FlushSet(n) => Some(format!("{table}: set {n} holds other elements than recorded")),
                Cmd::AddRule(b, RuleKind::Peers) => Some(format!(
                    "{table}: bridge {}: the drop rule is missing or altered",
                    b.bridge
                )),
                Cmd::AddRule(b, RuleKind::Uplink) => Some(format!(
                    "{table}: bridge {}: the uplink_macs drop rule is missing or altered",
                    b.bridge
                )),
                _ => None,
            })
            .collect()
    }
}

/// The rules `state` asks for, by bridge and kind (without reading the kernel).
fn wanted_rules(state: &State) -> BTreeSet<(String, RuleKind)> {
    let mut out = BTreeSet::new();
    for p in state.networks.values().filter(|p| p.uplink.is_some()) {
        if !p.peer_macs.is_empty() {
            out.insert((p.bridge.clone(), RuleKind::Peers));
        }
        if !p.uplink_macs.is_empty() {
            out.insert((p.bridge.clone(), RuleKind::Uplink));
        }
    }
    out
}

/// Frames dropped per bridge and rule by the firewalld variant's direct chains.
fn eb_counters(state: &State) -> BTreeMap<(String, RuleKind), DropCounter> {
    let fw = crate::enforce::firewalld::Firewalld::new();
    let mut out = BTreeMap::new();
    for (bridge, kind) in wanted_rules(state) {
        match fw.eb_drops(&eb_chain_of(&bridge, kind)) {
            Ok(Some(c)) => {
                out.insert((bridge, kind), c);
            }
            Ok(None) => {}
            Err(e) => {
                log::debug!("cross-host counters unreadable: {e}");
                break;
            }
        }
    }
    out
}

/// What `status` shows of one network's cross-host isolation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    /// `bridge_isolation_peer_macs`, as recorded.
    pub peer_macs: Vec<MacRange>,
    /// `bridge_isolation_trusted_macs`, as recorded.
    pub trusted_macs: Vec<crate::model::mac::Mac>,
    /// Frames from peers dropped; `None` when the rule is not in the kernel or unreadable.
    pub drops: Option<DropCounter>,
    /// `bridge_isolation_uplink_macs`, as recorded: the only sources that may reach VM
    /// ports from the uplink when not empty.
    pub uplink_macs: Vec<MacRange>,
    /// Frames from other sources dropped; `None` when that rule is not in the kernel or
    /// unreadable.
    pub uplink_drops: Option<DropCounter>,
}

/// Per network with cross-host properties: its ranges, trusted MACs, allowed uplink MACs and
/// drop counters. Reading the counters needs root; without it they are `None`. The kernel
/// is read only when some network has a rule; `plan` is asked then for a plan covering (at
/// least) the [`wanted_bridges`].
pub fn status(state: &State, plan: impl FnOnce() -> Result<Plan>) -> BTreeMap<String, PeerStatus> {
    let readable = crate::host::config::is_root() && !wanted_bridges(state).is_empty();
    let counters = if readable && state.backend == Some(BackendKind::Firewalld) {
        eb_counters(state)
    } else if readable {
        match (plan().map(|plan| Ruleset::from_state(state, &plan)), list()) {
            (Ok(want), Ok(live)) => live.counters(&want),
            (Err(e), _) | (_, Err(e)) => {
                log::debug!("cross-host counters unreadable: {e}");
                BTreeMap::new()
            }
        }
    } else {
        BTreeMap::new()
    };
    state
        .networks
        .iter()
        .filter(|(_, p)| filters(p) || !p.trusted_macs.is_empty())
        .map(|(n, p)| {
            let drops = |kind| counters.get(&(p.bridge.clone(), kind)).copied();
            (
                n.clone(),
                PeerStatus {
                    peer_macs: p.peer_macs.clone(),
                    trusted_macs: p.trusted_macs.clone(),
                    drops: drops(RuleKind::Peers),
                    uplink_macs: p.uplink_macs.clone(),
                    uplink_drops: drops(RuleKind::Uplink),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::plan::{BridgePlan, PortPlan};
    use crate::model::policy::{parse_peer_macs, parse_trusted_macs, NetworkPolicy};
    use crate::model::port::Port;

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
        let text = batch(&Live::default().diff(&want)).to_string();
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
                Cmd::AddSet(SetKind::Uplink, "uplink_red".into()),
                Cmd::AddMacs("uplink_red".into(), vec![(GW, GW)]),
                Cmd::AddRule(red.clone(), RuleKind::Uplink),
            ]
        );
        assert_eq!(
            batch(&cmds).to_string(),
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
                Cmd::AddMacs("uplink_red".into(), vec![(GW, GW + 1)])
            ]
        );
        // The property lifted: its rule and set go, the peer rule stays.
        let old = Ruleset::from_state(&state(), &plan());
        assert_eq!(
            live.diff(&old),
            [Cmd::DeleteRule(6), Cmd::DeleteSet("uplink_red".into())]
        );
        // An allow-list without peer ranges: the peer rule and its sets go.
        let only = Ruleset::from_state(&allow_gateway(false), &plan());
        assert_eq!(only.bridges[0].sets(), BTreeSet::from([SetKind::Open, SetKind::Uplink]));
        assert_eq!(
            live.diff(&only),
            [
                Cmd::DeleteRule(5),
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
                Cmd::DeleteRule(6),
                Cmd::AddRule(want.bridges[0].clone(), RuleKind::Uplink)
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
                Cmd::AddPorts("open_red".into(), vec![8])
            ]
        );
        // The uplink renamed: the rule is replaced, sets stay.
        let mut moved = want.clone();
        moved.bridges[0].uplink = "bond0".into();
        let live = listed(7, &[8]);
        assert_eq!(
            live.diff(&moved),
            [
                Cmd::DeleteRule(5),
                Cmd::AddRule(moved.bridges[0].clone(), RuleKind::Peers)
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
}
