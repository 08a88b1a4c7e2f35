//! Reading nf_tables in-process, over netfilter netlink (`NETLINK_NETFILTER`): the tables of
//! [`crate::enforce::nftables`] and [`crate::enforce::cross_host`] are read without running `nft`, so a run
//! that finds them converged spawns no process. Writes stay with `nft -j -f -` (one atomic
//! transaction per run); the one message of another kind is [`check_base_chain`], a probe
//! that the kernel validates and then discards, as `nft -c` does.
//!
//! Only what those two tables need, hand-encoded (linux/netlink.h, linux/netfilter/nfnetlink.h,
//! linux/netfilter/nf_tables.h):
//!
//! - a message is an `nlmsghdr` (length, type, flags, sequence, port id: 16 bytes, host byte
//!   order) of type `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_*`, an `nfgenmsg` (family, version,
//!   resource id: 4 bytes), then attributes;
//! - an attribute is an `nlattr` (length, type: host byte order; the type's two top bits are
//!   flags) and its payload, padded to 4 bytes; nested attributes are attributes of attributes;
//! - integers inside nf_tables attributes are big-endian; set keys and compared data are raw
//!   register bytes in the datatype's own order (interface indexes host order, MAC addresses
//!   network order).
//!
//! [`read_table`] returns one table as plain data ([`Table`]: chains, sets and maps with their
//! elements (a verdict map's with their verdicts), rules with their expressions, a count of
//! other objects); a rule's expressions are folded into [`Stmt`]s (a load and the lookup,
//! verdict map or comparison of its register), close to what `nft list` prints.

use std::collections::BTreeSet;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::error::{Error, Result};

/// `NFPROTO_BRIDGE`: the bridge family.
pub const NFPROTO_BRIDGE: u8 = 7;
/// `NF_BR_FORWARD`: the bridge forward hook.
pub const NF_BR_FORWARD: u32 = 2;
/// `NF_DROP`, as a verdict code.
pub const NF_DROP: i32 = 0;
/// `NF_ACCEPT`, as a verdict code and a chain policy.
pub const NF_ACCEPT: i32 = 1;
/// `NFT_JUMP`: verdict code of `jump CHAIN`.
pub const NFT_JUMP: i32 = -3;
/// `NFT_GOTO`: verdict code of `goto CHAIN`.
pub const NFT_GOTO: i32 = -4;
/// `NFT_DATA_VERDICT`: the data type of a verdict map (`type KEY : verdict`).
pub const DATA_TYPE_VERDICT: u32 = 0xffff_ff00;
/// `NFT_META_IIF`: input interface index.
pub const META_IIF: u32 = 4;
/// `NFT_META_OIF`: output interface index.
pub const META_OIF: u32 = 5;
/// `NFT_META_IIFNAME`: input interface name.
pub const META_IIFNAME: u32 = 6;
/// `NFT_META_OIFNAME`: output interface name.
pub const META_OIFNAME: u32 = 7;
/// `NFT_META_IIFGROUP`: input interface's group (`ip link set dev X group G`).
pub const META_IIFGROUP: u32 = 21;
/// `NFT_META_OIFGROUP`: output interface's group.
pub const META_OIFGROUP: u32 = 22;
/// `NFT_PAYLOAD_LL_HEADER`: payload offsets from the link-layer header.
pub const PAYLOAD_LL: u32 = 0;
/// `NFT_CMP_EQ`.
pub const CMP_EQ: u32 = 0;
/// `NFT_SET_ANONYMOUS`: a set made for one rule (`{ ... }` inline).
pub const SET_ANONYMOUS: u32 = 0x1;
/// `NFT_SET_INTERVAL`: elements are ranges.
pub const SET_INTERVAL: u32 = 0x4;
/// `NFT_SET_MAP`: a map (key -> data).
pub const SET_MAP: u32 = 0x8;
/// `NFT_SET_OBJECT`: a map to stateful objects.
pub const SET_OBJECT: u32 = 0x40;
/// `NFT_SET_ELEM_INTERVAL_END`: the element closes a range (its key is the first one out).
pub const ELEM_INTERVAL_END: u32 = 0x1;

// netlink
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const HEADER: usize = 16;

// nfnetlink
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;

// NFT_MSG_*
const NEWTABLE: u16 = 0;
const GETTABLE: u16 = 1;
const NEWCHAIN: u16 = 3;
const GETCHAIN: u16 = 4;
const GETRULE: u16 = 7;
const GETSET: u16 = 10;
const GETSETELEM: u16 = 13;
const GETGEN: u16 = 16;
const GETOBJ: u16 = 19;
const GETFLOWTABLE: u16 = 23;

// Attributes (NFTA_*), per object.
const TABLE_NAME: u16 = 1;
const TABLE_FLAGS: u16 = 2;
const CHAIN_TABLE: u16 = 1;
const CHAIN_NAME: u16 = 3;
const CHAIN_HOOK: u16 = 4;
const CHAIN_POLICY: u16 = 5;
const CHAIN_TYPE: u16 = 7;
const HOOK_HOOKNUM: u16 = 1;
const HOOK_PRIORITY: u16 = 2;
const RULE_TABLE: u16 = 1;
const RULE_CHAIN: u16 = 2;
const RULE_HANDLE: u16 = 3;
const RULE_EXPRESSIONS: u16 = 4;
const RULE_USERDATA: u16 = 7;
const LIST_ELEM: u16 = 1;
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
const SET_TABLE: u16 = 1;
const SET_NAME: u16 = 2;
const SET_FLAGS: u16 = 3;
const SET_KEY_TYPE: u16 = 4;
const SET_KEY_LEN: u16 = 5;
const SET_DATA_TYPE: u16 = 6;
const SET_ELEM_LIST_TABLE: u16 = 1;
const SET_ELEM_LIST_SET: u16 = 2;
const SET_ELEM_LIST_ELEMENTS: u16 = 3;
const SET_ELEM_KEY: u16 = 1;
const SET_ELEM_DATA: u16 = 2;
const SET_ELEM_FLAGS: u16 = 3;
const SET_ELEM_KEY_END: u16 = 9;
const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;
const VERDICT_CODE: u16 = 1;
const VERDICT_CHAIN: u16 = 2;
const GEN_ID: u16 = 1;
const OBJ_TABLE: u16 = 1;
const FLOWTABLE_TABLE: u16 = 1;
/// `NFTNL_UDATA_RULE_COMMENT`: the comment in a rule's user data (type-length-value).
const UDATA_RULE_COMMENT: u8 = 0;

/// How often a listing is retried while others keep changing the ruleset.
const RETRIES: usize = 10;

// ---------------------------------------------------------------------------------------
// What a table holds.

/// One table as the kernel has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// Its chains.
    pub chains: Vec<Chain>,
    /// Its sets and maps, anonymous ones included, each with its elements.
    pub sets: Vec<Set>,
    /// Its rules, chain by chain, in order.
    pub rules: Vec<Rule>,
    /// Stateful objects and flowtables in it (neither of our tables has any).
    pub objects: usize,
}

impl Table {
    /// True when the table holds anything but chain `chain`, its rules and named sets
    /// (other chains, maps, stateful objects, flowtables): what a table of our own, with
    /// one base chain, never has. Anonymous sets belong to rules, judged by their owner.
    pub fn has_other_than(&self, chain: &str) -> bool {
        self.objects > 0
            || self.chains.iter().any(|c| c.name != chain)
            || self.rules.iter().any(|r| r.chain != chain)
            || self.sets.iter().any(|s| s.flags & SET_ANONYMOUS == 0 && !s.is_plain())
    }

    /// Chain `name`, if the table has it.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// The named sets (not maps, not anonymous ones).
    pub fn plain_sets(&self) -> impl Iterator<Item = &Set> {
        self.sets.iter().filter(|s| s.is_plain())
    }

    /// The rules of chain `chain`, in order.
    pub fn rules_of<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a Rule> {
        self.rules.iter().filter(move |r| r.chain == chain)
    }
}

/// A chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// Its name.
    pub name: String,
    /// Hook number and priority, for a base chain.
    pub hook: Option<(u32, i32)>,
    /// Policy verdict of a base chain.
    pub policy: Option<i32>,
    /// Chain type of a base chain (`filter`, `nat`, `route`).
    pub kind: Option<String>,
}

impl Chain {
    /// True for a `filter` base chain on `hook` at `priority` with policy accept.
    pub fn is_filter(&self, hook: u32, priority: i32) -> bool {
        self.kind.as_deref() == Some("filter") && self.hook == Some((hook, priority)) && self.policy == Some(NF_ACCEPT)
    }
}

/// A set, with its elements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Set {
    /// Its name.
    pub name: String,
    /// `NFT_SET_*` flags.
    pub flags: u32,
    /// nft's datatype number of the key (see [`datatype_name`]).
    pub key_type: u32,
    /// Key length in bytes.
    pub key_len: u32,
    /// Data type of a map ([`DATA_TYPE_VERDICT`] for a verdict map; 0 for a set).
    pub data_type: u32,
    /// Elements, in the kernel's order.
    pub elements: Vec<Element>,
}

/// A set element.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    /// Key bytes.
    pub key: Vec<u8>,
    /// Last key of a range stored as one element (sets of concatenations).
    pub key_end: Option<Vec<u8>>,
    /// `NFT_SET_ELEM_*` flags.
    pub flags: u32,
    /// The verdict a verdict map's element maps its key to.
    pub verdict: Option<Verdict>,
}

/// A verdict as data: its code and, for a jump or goto, the chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// `NF_DROP`, `NF_ACCEPT` or a negative `NFT_*` code ([`NFT_GOTO`], [`NFT_JUMP`], ...).
    pub code: i32,
    /// The chain of a jump or goto.
    pub chain: Option<String>,
}

#[cfg(test)]
impl Set {
    /// A plain set of interface indexes (`type iface_index`) as read back, for tests.
    pub(crate) fn of_ports(name: &str, indexes: &[u32]) -> Set {
        Set {
            name: name.into(),
            key_type: 20,
            key_len: 4,
            elements: indexes
                .iter()
                .map(|i| Element {
                    key: i.to_ne_bytes().to_vec(),
                    ..Element::default()
                })
                .collect(),
            ..Set::default()
        }
    }
}

impl Set {
    /// True for a named set (not a map, not made inline for a rule).
    pub fn is_plain(&self) -> bool {
        self.flags & (SET_ANONYMOUS | SET_MAP | SET_OBJECT) == 0
    }

    /// The name of the key's datatype.
    pub fn datatype(&self) -> String {
        datatype_name(self.key_type)
    }

    /// True for a verdict map (`type KEY : verdict`, not anonymous).
    pub fn is_verdict_map(&self) -> bool {
        self.flags & (SET_ANONYMOUS | SET_OBJECT) == 0
            && self.flags & SET_MAP != 0
            && self.data_type == DATA_TYPE_VERDICT
    }

    /// The keys of 4-byte elements as host-order numbers (interface indexes).
    pub fn host_u32_keys(&self) -> BTreeSet<u32> {
        self.elements
            .iter()
            .filter_map(|e| Some(u32::from_ne_bytes(e.key.as_slice().try_into().ok()?)))
            .collect()
    }

    /// The elements as inclusive ranges of big-endian keys (MAC addresses), sorted: as the
    /// kernel matches an interval set, a key is in it when the greatest element at or below
    /// it is not a range end; a start with no end runs to the largest key. Elements of a
    /// set without `flags interval` are one-key ranges.
    pub fn intervals(&self) -> Vec<(u128, u128)> {
        let max = if self.key_len >= 16 {
            u128::MAX
        } else {
            (1u128 << (8 * self.key_len)) - 1
        };
        let mut out = Vec::new();
        let mut bounds = Vec::new();
        for e in &self.elements {
            let Some(key) = be_number(&e.key) else { continue };
            match &e.key_end {
                Some(end) => out.extend(be_number(end).map(|end| (key, end))),
                None if self.flags & SET_INTERVAL == 0 => out.push((key, key)),
                // Ends sort before starts of the same key.
                None => bounds.push((key, e.flags & ELEM_INTERVAL_END == 0)),
            }
        }
        bounds.sort_unstable();
        let mut open: Option<u128> = None;
        for (key, start) in bounds {
            if let Some(first) = open {
                if key > first {
                    out.push((first, key - 1));
                }
                open = None;
            }
            if start {
                open = Some(key);
            }
        }
        out.extend(open.map(|first| (first, max)));
        out.sort_unstable();
        out
    }
}

/// Bytes as a big-endian number, for keys of at most 16 bytes.
fn be_number(bytes: &[u8]) -> Option<u128> {
    (bytes.len() <= 16).then(|| bytes.iter().fold(0u128, |n, &b| (n << 8) | u128::from(b)))
}

/// nft's name of datatype `id` (nftables' include/datatype.h), for the ones we use.
pub fn datatype_name(id: u32) -> String {
    match id {
        9 => "ether_addr".into(),
        20 => "iface_index".into(),
        41 => "ifname".into(),
        n => format!("type {n}"),
    }
}

/// A rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Its chain.
    pub chain: String,
    /// Its handle.
    pub handle: u64,
    /// Its comment (nft keeps it in the rule's user data).
    pub comment: Option<String>,
    /// Its expressions, in order.
    pub exprs: Vec<Expr>,
}

impl Rule {
    /// The expressions folded into statements.
    pub fn statements(&self) -> Vec<Stmt> {
        statements(&self.exprs)
    }
}

/// One expression of a rule, as far as we tell them apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `meta load KEY => reg DREG`.
    Meta {
        /// `NFT_META_*`.
        key: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `payload load LEN @ BASE + OFFSET => reg DREG`.
    Payload {
        /// `NFT_PAYLOAD_*_HEADER`.
        base: u32,
        /// Offset in bytes.
        offset: u32,
        /// Length in bytes.
        len: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `lookup reg SREG set MAP dreg 0`: a verdict map (`vmap @MAP`).
    VerdictMap {
        /// The map.
        map: String,
        /// Source register.
        sreg: u32,
    },
    /// `lookup reg SREG set SET`, inverted with `!=`.
    Lookup {
        /// The set.
        set: String,
        /// Source register.
        sreg: u32,
        /// True for a negated lookup (`!= @set`).
        inverted: bool,
    },
    /// `cmp OP reg SREG DATA`.
    Cmp {
        /// Source register.
        sreg: u32,
        /// `NFT_CMP_*`.
        op: u32,
        /// Compared bytes.
        data: Vec<u8>,
    },
    /// `counter`.
    Counter {
        /// Packets counted.
        packets: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// `immediate reg 0 VERDICT`: a verdict.
    Verdict(i32),
    /// Anything else (or one of the above used otherwise: a meta set, a lookup into a data
    /// register), by name.
    Other(String),
}

/// What a statement loads and matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operand {
    /// `meta KEY`.
    Meta(u32),
    /// Packet bytes `LEN @ BASE + OFFSET`.
    Payload {
        /// `NFT_PAYLOAD_*_HEADER`.
        base: u32,
        /// Offset in bytes.
        offset: u32,
        /// Length in bytes.
        len: u32,
    },
}

/// A rule statement: a load with the lookup or comparison of its register, a counter or a
/// verdict, as `nft list` prints them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stmt {
    /// `OPERAND [!=] @SET`.
    Lookup {
        /// What is looked up.
        left: Operand,
        /// The set.
        set: String,
        /// True for `!=`.
        inverted: bool,
    },
    /// `OPERAND vmap @MAP`: the verdict the map has for it, if any.
    VerdictMap {
        /// What is looked up.
        left: Operand,
        /// The map.
        map: String,
    },
    /// `OPERAND OP VALUE`. For interface names the trailing NUL bytes of an exact match
    /// are kept as one (nft pads the name to 16 bytes; without any NUL it is a wildcard).
    Cmp {
        /// What is compared.
        left: Operand,
        /// `NFT_CMP_*`.
        op: u32,
        /// The value.
        data: Vec<u8>,
    },
    /// `counter packets P bytes B`.
    Counter {
        /// Packets counted.
        packets: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// A verdict (`NF_DROP`, `NF_ACCEPT`, or a negative `NFT_*` one).
    Verdict(i32),
    /// Anything else, by expression name.
    Other(String),
}

/// Folds expressions into statements: each load with the lookup, verdict map or comparison
/// that reads its register right after it. A load used otherwise, or a lookup or comparison of
/// nothing loaded just before, becomes [`Stmt::Other`].
pub fn statements(exprs: &[Expr]) -> Vec<Stmt> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < exprs.len() {
        let load = match &exprs[i] {
            Expr::Meta { key, dreg } => Some((Operand::Meta(*key), *dreg)),
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => Some((
                Operand::Payload {
                    base: *base,
                    offset: *offset,
                    len: *len,
                },
                *dreg,
            )),
            _ => None,
        };
        if let Some((left, dreg)) = load {
            let folded = match exprs.get(i + 1) {
                Some(Expr::Lookup { set, sreg, inverted }) if *sreg == dreg => Some(Stmt::Lookup {
                    left,
                    set: set.clone(),
                    inverted: *inverted,
                }),
                Some(Expr::VerdictMap { map, sreg }) if *sreg == dreg => {
                    Some(Stmt::VerdictMap { left, map: map.clone() })
                }
                Some(Expr::Cmp { sreg, op, data }) if *sreg == dreg => {
                    let data = match left {
                        Operand::Meta(META_IIFNAME | META_OIFNAME) => ifname_bytes(data),
                        _ => data.clone(),
                    };
                    Some(Stmt::Cmp { left, op: *op, data })
                }
                _ => None,
            };
            match folded {
                Some(stmt) => {
                    out.push(stmt);
                    i += 2;
                }
                None => {
                    out.push(Stmt::Other(expr_name(&exprs[i]).into()));
                    i += 1;
                }
            }
            continue;
        }
        out.push(match &exprs[i] {
            Expr::Counter { packets, bytes } => Stmt::Counter {
                packets: *packets,
                bytes: *bytes,
            },
            Expr::Verdict(code) => Stmt::Verdict(*code),
            other => Stmt::Other(expr_name(other).into()),
        });
        i += 1;
    }
    out
}

/// An interface name compared exactly: the name and one NUL, as [`Stmt::Cmp`] keeps it.
pub fn ifname_exact(name: &str) -> Vec<u8> {
    let mut data = name.as_bytes().to_vec();
    data.push(0);
    data
}

/// `data` up to its first NUL and that NUL, when only NULs follow; else as it is.
fn ifname_bytes(data: &[u8]) -> Vec<u8> {
    match data.iter().position(|&b| b == 0) {
        Some(n) if data[n..].iter().all(|&b| b == 0) => data[..=n].to_vec(),
        _ => data.to_vec(),
    }
}

fn expr_name(e: &Expr) -> &str {
    match e {
        Expr::Meta { .. } => "meta",
        Expr::Payload { .. } => "payload",
        Expr::Lookup { .. } | Expr::VerdictMap { .. } => "lookup",
        Expr::Cmp { .. } => "cmp",
        Expr::Counter { .. } => "counter",
        Expr::Verdict(_) => "immediate",
        Expr::Other(name) => name,
    }
}

// ---------------------------------------------------------------------------------------
// Attributes.

/// The attributes of one level, by type (the last of a repeated type wins; lists of
/// repeated attributes are walked with [`each_attr`]).
#[derive(Default)]
struct Attrs<'a>([Option<&'a [u8]>; 32]);

/// The attributes in `data`, in order, as (type without flags, payload).
fn each_attr(data: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8])>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= data.len() {
            return None;
        }
        let rest = &data[at..];
        let len = rest
            .get(..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]) as usize)
            .unwrap_or(0);
        if rest.len() < 4 || len < 4 || len > rest.len() {
            at = data.len();
            return Some(Err(malformed("attribute length")));
        }
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        at += align(len);
        Some(Ok((ty, &rest[4..len])))
    })
}

impl<'a> Attrs<'a> {
    fn parse(data: &'a [u8]) -> Result<Attrs<'a>> {
        let mut attrs = Attrs::default();
        for attr in each_attr(data) {
            let (ty, payload) = attr?;
            if let Some(slot) = attrs.0.get_mut(usize::from(ty)) {
                *slot = Some(payload);
            }
        }
        Ok(attrs)
    }

    fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.0.get(usize::from(ty)).copied().flatten()
    }

    fn string(&self, ty: u16) -> Option<String> {
        let b = self.get(ty)?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        Some(String::from_utf8_lossy(&b[..end]).into_owned())
    }

    fn be32(&self, ty: u16) -> Option<u32> {
        Some(u32::from_be_bytes(self.get(ty)?.get(..4)?.try_into().ok()?))
    }

    fn be64(&self, ty: u16) -> Option<u64> {
        Some(u64::from_be_bytes(self.get(ty)?.get(..8)?.try_into().ok()?))
    }

    fn nested(&self, ty: u16) -> Result<Option<Attrs<'a>>> {
        self.get(ty).map(Attrs::parse).transpose()
    }
}

fn malformed(what: &str) -> Error {
    Error::Kernel(format!("nf_tables netlink: malformed {what}"))
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

// ---------------------------------------------------------------------------------------
// Parsing the objects (the payload of a message after its nfgenmsg).

fn parse_chain(a: &Attrs) -> Result<Chain> {
    let hook = a
        .nested(CHAIN_HOOK)?
        .and_then(|h| Some((h.be32(HOOK_HOOKNUM)?, h.be32(HOOK_PRIORITY)? as i32)));
    Ok(Chain {
        name: a.string(CHAIN_NAME).unwrap_or_default(),
        hook,
        policy: a.be32(CHAIN_POLICY).map(|p| p as i32),
        kind: a.string(CHAIN_TYPE),
    })
}

fn parse_set(a: &Attrs) -> Set {
    Set {
        name: a.string(SET_NAME).unwrap_or_default(),
        flags: a.be32(SET_FLAGS).unwrap_or_default(),
        key_type: a.be32(SET_KEY_TYPE).unwrap_or_default(),
        key_len: a.be32(SET_KEY_LEN).unwrap_or_default(),
        data_type: a.be32(SET_DATA_TYPE).unwrap_or_default(),
        elements: Vec::new(),
    }
}

/// The elements of one NEWSETELEM message.
fn parse_elements(a: &Attrs, into: &mut Vec<Element>) -> Result<()> {
    let Some(list) = a.get(SET_ELEM_LIST_ELEMENTS) else {
        return Ok(());
    };
    for item in each_attr(list) {
        let (ty, payload) = item?;
        if ty != LIST_ELEM {
            continue;
        }
        let e = Attrs::parse(payload)?;
        let value =
            |ty| -> Result<Option<Vec<u8>>> { Ok(e.nested(ty)?.and_then(|d| d.get(DATA_VALUE)).map(<[u8]>::to_vec)) };
        into.push(Element {
            key: value(SET_ELEM_KEY)?.unwrap_or_default(),
            key_end: value(SET_ELEM_KEY_END)?,
            flags: e.be32(SET_ELEM_FLAGS).unwrap_or_default(),
            verdict: e.nested(SET_ELEM_DATA)?.map(|d| verdict(&d)).transpose()?.flatten(),
        });
    }
    Ok(())
}

/// The verdict in data attributes (`NFTA_DATA_VERDICT { CODE, CHAIN }`), if they hold one.
fn verdict(data: &Attrs) -> Result<Option<Verdict>> {
    let Some(v) = data.nested(DATA_VERDICT)? else {
        return Ok(None);
    };
    Ok(v.be32(VERDICT_CODE).map(|code| Verdict {
        code: code as i32,
        chain: v.string(VERDICT_CHAIN),
    }))
}

fn parse_rule(a: &Attrs) -> Result<Rule> {
    let mut exprs = Vec::new();
    if let Some(list) = a.get(RULE_EXPRESSIONS) {
        for item in each_attr(list) {
            let (ty, payload) = item?;
            if ty == LIST_ELEM {
                exprs.push(parse_expr(&Attrs::parse(payload)?)?);
            }
        }
    }
    Ok(Rule {
        chain: a.string(RULE_CHAIN).unwrap_or_default(),
        handle: a.be64(RULE_HANDLE).unwrap_or_default(),
        comment: a.get(RULE_USERDATA).and_then(comment),
        exprs,
    })
}

/// The comment in a rule's user data: type-length-value records of one byte each.
fn comment(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while let [ty, len, tail @ ..] = rest {
        let value = tail.get(..usize::from(*len))?;
        if *ty == UDATA_RULE_COMMENT {
            let end = value.iter().position(|&c| c == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        rest = &tail[usize::from(*len)..];
    }
    None
}

fn parse_expr(a: &Attrs) -> Result<Expr> {
    let name = a.string(EXPR_NAME).unwrap_or_default();
    let d = a.nested(EXPR_DATA)?.unwrap_or_default();
    let other = || Ok(Expr::Other(name.clone()));
    match name.as_str() {
        // NFTA_META_DREG 1, KEY 2, SREG 3 (a meta set)
        "meta" => match (d.be32(1), d.be32(2), d.get(3)) {
            (Some(dreg), Some(key), None) => Ok(Expr::Meta { key, dreg }),
            _ => other(),
        },
        // NFTA_PAYLOAD_DREG 1, BASE 2, OFFSET 3, LEN 4, SREG 5 (a payload write)
        "payload" => match (d.be32(1), d.be32(2), d.be32(3), d.be32(4), d.get(5)) {
            (Some(dreg), Some(base), Some(offset), Some(len), None) => Ok(Expr::Payload {
                base,
                offset,
                len,
                dreg,
            }),
            _ => other(),
        },
        // NFTA_LOOKUP_SET 1, SREG 2, DREG 3 (a map; 0: the verdict register), FLAGS 5
        // (NFT_LOOKUP_F_INV 1)
        "lookup" => match (d.string(1), d.be32(2), d.be32(3)) {
            (Some(set), Some(sreg), None) if d.get(3).is_none() => Ok(Expr::Lookup {
                set,
                sreg,
                inverted: d.be32(5).unwrap_or_default() & 1 != 0,
            }),
            (Some(map), Some(sreg), Some(0)) => Ok(Expr::VerdictMap { map, sreg }),
            _ => other(),
        },
        // NFTA_CMP_SREG 1, OP 2, DATA 3 { NFTA_DATA_VALUE }
        "cmp" => {
            let data = d.nested(3)?.and_then(|v| v.get(DATA_VALUE)).map(<[u8]>::to_vec);
            match (d.be32(1), d.be32(2), data) {
                (Some(sreg), Some(op), Some(data)) => Ok(Expr::Cmp { sreg, op, data }),
                _ => other(),
            }
        }
        // NFTA_COUNTER_BYTES 1, PACKETS 2
        "counter" => Ok(Expr::Counter {
            packets: d.be64(2).unwrap_or_default(),
            bytes: d.be64(1).unwrap_or_default(),
        }),
        // NFTA_IMMEDIATE_DREG 1 (0: the verdict register), DATA 2 { VERDICT { CODE } }
        "immediate" => {
            let verdict = d.nested(2)?.map(|v| v.nested(DATA_VERDICT)).transpose()?.flatten();
            match (d.be32(1), verdict.and_then(|v| v.be32(VERDICT_CODE))) {
                (Some(0), Some(code)) => Ok(Expr::Verdict(code as i32)),
                _ => other(),
            }
        }
        _ => other(),
    }
}

// ---------------------------------------------------------------------------------------
// Messages.

/// Appends attribute `ty` with `payload`, padded.
fn put(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = u16::try_from(4 + payload.len()).expect("attribute under 64 KiB");
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align(buf.len()), 0);
}

/// Appends a NUL-terminated string attribute.
fn put_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    put(buf, ty, &b);
}

/// One message: header, nfgenmsg of `family` (and resource id `res_id`), attributes.
fn message(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) -> Vec<u8> {
    let len = u32::try_from(HEADER + 4 + attrs.len()).expect("message under 4 GiB");
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, 0]);
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(attrs);
    m
}

fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// One reply message: its header fields and its payload after the nfgenmsg.
struct Reply<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    body: &'a [u8],
}

/// The messages of one datagram.
fn replies(data: &[u8]) -> impl Iterator<Item = Result<Reply<'_>>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at + HEADER > data.len() {
            return None;
        }
        let h = &data[at..];
        let len = u32::from_ne_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
        if len < HEADER || len > h.len() {
            at = data.len();
            return Some(Err(malformed("message length")));
        }
        at += align(len);
        Some(Ok(Reply {
            ty: u16::from_ne_bytes([h[4], h[5]]),
            flags: u16::from_ne_bytes([h[6], h[7]]),
            seq: u32::from_ne_bytes(h[8..12].try_into().expect("4 bytes")),
            body: &h[HEADER..len],
        }))
    })
}

/// Why a request failed.
#[derive(Debug)]
enum Failed {
    /// The kernel answered with this errno.
    Errno(i32),
    /// A dump saw the ruleset change while it ran: read again.
    Interrupted,
    /// The socket failed at this step (`send`, `recv`).
    Io(&'static str, std::io::Error),
    /// Anything else.
    Other(String),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Failed {
        match e {
            Error::Kernel(message) => Failed::Other(message),
            other => Failed::Other(other.to_string()),
        }
    }
}

impl Failed {
    fn into_error(self, what: &str) -> Error {
        match self {
            Failed::Errno(libc::EPERM) => Error::Kernel(format!(
                "{what}: operation not permitted (nf_tables needs CAP_NET_ADMIN)"
            )),
            Failed::Errno(code) => Error::kernel(what, std::io::Error::from_raw_os_error(code)),
            Failed::Interrupted => Error::Kernel(format!("{what}: the ruleset kept changing while it was read")),
            Failed::Io(step, e) => Error::kernel(format!("{what}: netlink {step}"), e),
            Failed::Other(e) => Error::Kernel(format!("{what}: {e}")),
        }
    }
}

type Wire<T> = std::result::Result<T, Failed>;

/// A netfilter netlink socket of the caller's network namespace.
struct Nfnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Nfnl {
    fn open() -> Result<Nfnl> {
        let unavailable =
            |what: &str, e| Error::kernel(format!("netfilter netlink {what} (no nfnetlink in this kernel?)"), e);
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| unavailable("socket", e))?;
        socket.bind_auto().map_err(|e| unavailable("bind", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| unavailable("connect", e))?;
        Ok(Nfnl {
            socket,
            seq: 0,
            buf: vec![0; 1 << 17],
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, bytes: &[u8]) -> Wire<()> {
        self.socket.send(bytes, 0).map(drop).map_err(|e| Failed::Io("send", e))
    }

    /// Receives one datagram into the buffer; its length.
    fn recv(&mut self) -> Wire<usize> {
        let n = self
            .socket
            .recv(&mut &mut self.buf[..], libc::MSG_TRUNC)
            .map_err(|e| Failed::Io("recv", e))?;
        if n > self.buf.len() {
            return Err(Failed::Other(format!("netlink reply of {n} bytes truncated")));
        }
        Ok(n)
    }

    /// Sends request `msg` (a dump with `dump`) and hands each reply's attributes to
    /// `each`: every part of a dump, or the one reply of a get.
    fn request(
        &mut self,
        msg: u16,
        dump: bool,
        family: u8,
        attrs: &[u8],
        mut each: impl FnMut(&Attrs) -> Result<()>,
    ) -> Wire<()> {
        let seq = self.next_seq();
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        self.send(&message(nft_type(msg), flags, seq, family, 0, attrs))?;
        let mut interrupted = false;
        loop {
            let n = self.recv()?;
            for reply in replies(&self.buf[..n]) {
                let reply = reply?;
                if reply.seq != seq {
                    continue;
                }
                interrupted |= reply.flags & NLM_F_DUMP_INTR != 0;
                match reply.ty {
                    NLMSG_ERROR | NLMSG_DONE => {
                        let code = reply
                            .body
                            .get(..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                            .unwrap_or(0);
                        return match code {
                            0 if interrupted => Err(Failed::Interrupted),
                            0 => Ok(()),
                            c => Err(Failed::Errno(-c)),
                        };
                    }
                    _ => {
                        let attrs = reply.body.get(4..).ok_or_else(|| malformed("nfgenmsg"))?;
                        each(&Attrs::parse(attrs)?)?;
                        if !dump {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// The ruleset's generation: it changes with every committed transaction.
    fn generation(&mut self) -> Wire<u32> {
        let mut gen = None;
        self.request(GETGEN, false, 0, &[], |a| {
            gen = a.be32(GEN_ID);
            Ok(())
        })?;
        gen.ok_or_else(|| malformed("generation").into())
    }

    /// One pass over table `name` of `family`.
    fn table(&mut self, family: u8, name: &str) -> Wire<Option<Table>> {
        let mut attr = Vec::new();
        put_str(&mut attr, TABLE_NAME, name);
        match self.request(GETTABLE, false, family, &attr, |_| Ok(())) {
            Err(Failed::Errno(libc::ENOENT)) => return Ok(None),
            other => other?,
        }
        // The chain, set and rule dumps take the same filter (the table is attribute 1 of
        // each); a kernel that ignores it lists the whole family, so each reply's table is
        // checked too.
        let ours = |a: &Attrs, ty| a.string(ty).as_deref() == Some(name);
        let mut table = Table::default();
        self.request(GETCHAIN, true, family, &attr, |a| {
            if ours(a, CHAIN_TABLE) {
                table.chains.push(parse_chain(a)?);
            }
            Ok(())
        })?;
        self.request(GETSET, true, family, &attr, |a| {
            if ours(a, SET_TABLE) {
                table.sets.push(parse_set(a));
            }
            Ok(())
        })?;
        for set in &mut table.sets {
            let mut filter = Vec::new();
            put_str(&mut filter, SET_ELEM_LIST_TABLE, name);
            put_str(&mut filter, SET_ELEM_LIST_SET, &set.name);
            let mut elements = Vec::new();
            self.request(GETSETELEM, true, family, &filter, |a| {
                if ours(a, SET_ELEM_LIST_TABLE) && a.string(SET_ELEM_LIST_SET).as_deref() == Some(set.name.as_str()) {
                    parse_elements(a, &mut elements)?;
                }
                Ok(())
            })?;
            set.elements = elements;
        }
        self.request(GETRULE, true, family, &attr, |a| {
            if ours(a, RULE_TABLE) {
                table.rules.push(parse_rule(a)?);
            }
            Ok(())
        })?;
        for (msg, table_attr) in [(GETOBJ, OBJ_TABLE), (GETFLOWTABLE, FLOWTABLE_TABLE)] {
            let mut filter = Vec::new();
            put_str(&mut filter, table_attr, name);
            let counted = self.request(msg, true, family, &filter, |a| {
                if ours(a, table_attr) {
                    table.objects += 1;
                }
                Ok(())
            });
            match counted {
                // A kernel without stateful objects or flowtables has none of them.
                Err(Failed::Errno(libc::EINVAL | libc::EOPNOTSUPP)) => {}
                other => other?,
            }
        }
        Ok(Some(table))
    }
}

/// `NFNLGRP_NFTABLES`: the multicast group of every committed nf_tables change.
const NFNLGRP_NFTABLES: u32 = 7;
/// `NFT_MSG_NEWGEN`: the end of a transaction (its attribute 1 is the generation, no table).
const NEWGEN: u16 = 15;
/// `NFT_MSG_TRACE`: a rule trace (another group; carries no table name at attribute 1).
const TRACE: u16 = 17;

/// A NETLINK_NETFILTER socket subscribed to nf_tables changes (NFNLGRP_NFTABLES, root): each
/// table, chain, rule, set, element, object or flowtable added or deleted in the caller's
/// network namespace, by anyone (`nft`, nftables.service, firewalld), once committed. For the
/// watcher, which repairs its own tables when someone else deletes or changes them.
/// Non-blocking; read it when it polls readable.
pub struct TableEvents {
    socket: Socket,
    buf: Vec<u8>,
}

impl TableEvents {
    /// Opens the socket, subscribed, with a receive buffer of `buffer` bytes (forced past
    /// `net.core.rmem_max` when the caller may).
    pub fn open(buffer: usize) -> Result<TableEvents> {
        let unavailable =
            |what: &str, e| Error::kernel(format!("netfilter netlink {what} (no nfnetlink in this kernel?)"), e);
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| unavailable("socket", e))?;
        socket.bind_auto().map_err(|e| unavailable("bind", e))?;
        socket
            .add_membership(NFNLGRP_NFTABLES)
            .map_err(|e| unavailable("nf_tables notifications", e))?;
        socket
            .set_non_blocking(true)
            .map_err(|e| unavailable("non-blocking", e))?;
        crate::sys::netlink::receive_buffer(&socket, buffer).map_err(|e| unavailable("receive buffer", e))?;
        Ok(TableEvents {
            socket,
            buf: vec![0; 1 << 17],
        })
    }

    /// Reads every notification queued, calling `each` with the family and the table name
    /// of each change; returns true when the kernel dropped notifications (ENOBUFS).
    pub fn drain(&mut self, mut each: impl FnMut(u8, &str)) -> Result<bool> {
        let mut lost = false;
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n.min(self.buf.len()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(lost),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    lost = true;
                    continue;
                }
                Err(e) => return Err(Error::kernel("reading nf_tables notifications", e)),
            };
            for message in replies(&self.buf[..n]).map_while(std::result::Result::ok) {
                if let Some((family, table)) = changed_table(message.ty, message.body) {
                    each(family, &table);
                }
            }
        }
    }
}

impl std::os::fd::AsRawFd for TableEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

/// The family and table of an nf_tables notification of type `ty` (body: nfgenmsg, then
/// attributes): every object names its table in attribute 1 (NFTA_TABLE_NAME,
/// NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE, ...); the end of a transaction and
/// traces name none.
fn changed_table(ty: u16, body: &[u8]) -> Option<(u8, String)> {
    if ty >> 8 != NFNL_SUBSYS_NFTABLES || matches!(ty & 0xff, NEWGEN | TRACE) {
        return None;
    }
    let family = *body.first()?;
    let table = Attrs::parse(body.get(4..)?).ok()?.string(TABLE_NAME)?;
    Some((family, table))
}

/// Reads table `name` of `family` (root: CAP_NET_ADMIN); `None` when it does not exist.
/// Consistent: read again while another process commits changes under it.
pub fn read_table(family: u8, name: &str) -> Result<Option<Table>> {
    let what = format!("reading nftables table {name}");
    let mut nl = Nfnl::open()?;
    for _ in 0..RETRIES {
        let gen = nl.generation().map_err(|e| e.into_error(&what))?;
        let read = nl.table(family, name);
        if matches!(read, Err(Failed::Interrupted)) {
            continue;
        }
        if nl.generation().map_err(|e| e.into_error(&what))? != gen {
            continue;
        }
        return read.map_err(|e| e.into_error(&what));
    }
    Err(Failed::Interrupted.into_error(&what))
}

/// Whether the kernel would create table `table` of `family` with a `filter` base chain
/// `chain` on `hook` at `priority`, policy accept (nf_tables and the family's filter
/// chain type, loading their modules if need be), committing nothing: the two messages go
/// in a batch without its end, so the kernel validates them, acknowledges or rejects each,
/// and aborts the transaction, as `nft -c` does.
pub fn check_base_chain(family: u8, table: &str, chain: &str, hook: u32, priority: i32) -> Result<()> {
    let what = "checking an nftables table";
    let mut nl = Nfnl::open()?;
    let begin = nl.next_seq();
    let mut batch = message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin, 0, NFNL_SUBSYS_NFTABLES, &[]);
    let create = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK;
    let mut attrs = Vec::new();
    put_str(&mut attrs, TABLE_NAME, table);
    put(&mut attrs, TABLE_FLAGS, &0u32.to_be_bytes());
    let table_seq = nl.next_seq();
    batch.extend(message(nft_type(NEWTABLE), create, table_seq, family, 0, &attrs));
    let mut hook_attrs = Vec::new();
    put(&mut hook_attrs, HOOK_HOOKNUM, &hook.to_be_bytes());
    put(&mut hook_attrs, HOOK_PRIORITY, &priority.to_be_bytes());
    let mut attrs = Vec::new();
    put_str(&mut attrs, CHAIN_TABLE, table);
    put_str(&mut attrs, CHAIN_NAME, chain);
    put(&mut attrs, CHAIN_HOOK | NLA_F_NESTED, &hook_attrs);
    put(&mut attrs, CHAIN_POLICY, &NF_ACCEPT.to_be_bytes());
    put_str(&mut attrs, CHAIN_TYPE, "filter");
    let chain_seq = nl.next_seq();
    batch.extend(message(nft_type(NEWCHAIN), create, chain_seq, family, 0, &attrs));
    nl.send(&batch).map_err(|e| e.into_error(what))?;
    // One acknowledgement (or error) per message; an error on the batch itself ends it.
    let mut answers: Vec<(u32, i32)> = Vec::new();
    while answers.len() < 2 {
        let n = nl.recv().map_err(|e| e.into_error(what))?;
        for reply in replies(&nl.buf[..n]) {
            let reply = reply?;
            if reply.ty != NLMSG_ERROR || reply.body.len() < 4 {
                continue;
            }
            let code = i32::from_ne_bytes(reply.body[..4].try_into().expect("4 bytes"));
            if reply.seq == begin && code != 0 {
                return Err(Failed::Errno(-code).into_error(what));
            }
            if reply.seq == table_seq || reply.seq == chain_seq {
                answers.push((reply.seq, code));
            }
        }
    }
    answers.sort_unstable();
    match answers.iter().find(|(_, code)| *code != 0) {
        Some((_, code)) => Err(Failed::Errno(-code).into_error(what)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn notifications_name_their_table() {
        let mut attrs = Vec::new();
        put_str(&mut attrs, TABLE_NAME, "bridge_isolation");
        let deleted = message(nft_type(2), 0, 0, NFPROTO_BRIDGE, 0, &attrs);
        let body = &deleted[HEADER..];
        assert_eq!(
            changed_table(nft_type(2), body),
            Some((NFPROTO_BRIDGE, "bridge_isolation".to_string()))
        );
        // A rule deleted (NFTA_RULE_TABLE is attribute 1 too).
        assert_eq!(
            changed_table(nft_type(8), body).map(|(_, t)| t).as_deref(),
            Some("bridge_isolation")
        );
        let mut gen = Vec::new();
        put_str(&mut gen, GEN_ID, "x");
        assert_eq!(
            changed_table(nft_type(NEWGEN), &message(nft_type(NEWGEN), 0, 0, 0, 0, &gen)[HEADER..]),
            None
        );
        assert_eq!(changed_table(0x0200, body), None, "another subsystem");
        assert_eq!(changed_table(nft_type(0), &[]), None);
    }

    use super::*;

    /// An attribute as the kernel writes it.
    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        put(&mut b, ty, payload);
        b
    }

    fn nest(ty: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(ty | NLA_F_NESTED, &parts.concat())
    }

    fn s(ty: u16, v: &str) -> Vec<u8> {
        let mut b = Vec::new();
        put_str(&mut b, ty, v);
        b
    }

    fn be32(ty: u16, v: u32) -> Vec<u8> {
        attr(ty, &v.to_be_bytes())
    }

    fn expr(name: &str, data: &[Vec<u8>]) -> Vec<u8> {
        nest(LIST_ELEM, &[s(EXPR_NAME, name), nest(EXPR_DATA, data)])
    }

    /// What the kernel sends for `iifname "eth1" oif != @open_red ether saddr @peers_red
    /// counter packets 7 bytes 420 drop comment "bridge red"` (as `nft --debug=netlink` shows
    /// it: meta load iifname => reg 1, cmp eq reg 1 "eth1" padded to 16 bytes, ...).
    fn peer_rule() -> Vec<u8> {
        let reg1 = || be32(1, 1); // a load's destination, a comparison's source
        let mut ifname = b"eth1".to_vec();
        ifname.resize(16, 0);
        let exprs = [
            expr("meta", &[be32(2, META_IIFNAME), reg1()]),
            expr("cmp", &[reg1(), be32(2, CMP_EQ), nest(3, &[attr(DATA_VALUE, &ifname)])]),
            expr("meta", &[be32(2, META_OIF), reg1()]),
            expr("lookup", &[s(1, "open_red"), be32(2, 1), be32(5, 1)]),
            expr("payload", &[reg1(), be32(2, PAYLOAD_LL), be32(3, 6), be32(4, 6)]),
            expr("lookup", &[s(1, "peers_red"), be32(2, 1)]),
            expr(
                "counter",
                &[attr(1, &420u64.to_be_bytes()), attr(2, &7u64.to_be_bytes())],
            ),
            expr(
                "immediate",
                &[be32(1, 0), nest(2, &[nest(DATA_VERDICT, &[be32(VERDICT_CODE, 0)])])],
            ),
        ];
        let mut udata = vec![UDATA_RULE_COMMENT, 11];
        udata.extend_from_slice(b"bridge red\0");
        [
            s(RULE_TABLE, "bridge_isolation_peers"),
            s(RULE_CHAIN, "forward"),
            attr(RULE_HANDLE, &5u64.to_be_bytes()),
            nest(RULE_EXPRESSIONS, &exprs),
            attr(RULE_USERDATA, &udata),
        ]
        .concat()
    }

    #[test]
    fn parses_a_rule_and_folds_its_statements() {
        let rule = parse_rule(&Attrs::parse(&peer_rule()).unwrap()).unwrap();
        assert_eq!((rule.chain.as_str(), rule.handle), ("forward", 5));
        assert_eq!(rule.comment.as_deref(), Some("bridge red"));
        assert_eq!(rule.exprs.len(), 8);
        let saddr = Operand::Payload {
            base: PAYLOAD_LL,
            offset: 6,
            len: 6,
        };
        assert_eq!(
            rule.statements(),
            [
                Stmt::Cmp {
                    left: Operand::Meta(META_IIFNAME),
                    op: CMP_EQ,
                    data: ifname_exact("eth1")
                },
                Stmt::Lookup {
                    left: Operand::Meta(META_OIF),
                    set: "open_red".into(),
                    inverted: true
                },
                Stmt::Lookup {
                    left: saddr,
                    set: "peers_red".into(),
                    inverted: false
                },
                Stmt::Counter { packets: 7, bytes: 420 },
                Stmt::Verdict(NF_DROP),
            ]
        );
    }

    #[test]
    fn loads_without_their_match_and_unknown_expressions_are_other() {
        let exprs = [
            Expr::Meta { key: META_IIF, dreg: 1 },
            Expr::Lookup {
                set: "a".into(),
                sreg: 2,
                inverted: false,
            },
            Expr::Other("log".into()),
            Expr::Verdict(NF_ACCEPT),
        ];
        assert_eq!(
            statements(&exprs),
            [
                Stmt::Other("meta".into()),
                Stmt::Other("lookup".into()),
                Stmt::Other("log".into()),
                Stmt::Verdict(NF_ACCEPT)
            ]
        );
        // A wildcard interface name has no NUL and stays as it is.
        assert_eq!(ifname_bytes(b"eth"), b"eth");
        assert_eq!(ifname_bytes(b"eth1\0\0\0"), b"eth1\0");
        assert_eq!(ifname_bytes(b"a\0b"), b"a\0b");
        // A meta set (with a source register) and a map lookup are not loads or lookups.
        let meta_set = expr("meta", &[be32(2, 3), be32(3, 1)]);
        let meta_set = Attrs::parse(&meta_set).unwrap();
        let inner = Attrs::parse(meta_set.get(LIST_ELEM).unwrap()).unwrap();
        assert_eq!(parse_expr(&inner).unwrap(), Expr::Other("meta".into()));
        assert_eq!(comment(&[1, 2, 9, 9, 0, 3, b'a', b'b', 0]).as_deref(), Some("ab"));
        assert_eq!(comment(&[0, 9, b'a']), None);
    }

    #[test]
    fn parses_a_chain() {
        let msg = [
            s(CHAIN_TABLE, "t"),
            attr(2, &1u64.to_be_bytes()),
            s(CHAIN_NAME, "forward"),
            nest(
                CHAIN_HOOK,
                &[be32(HOOK_HOOKNUM, NF_BR_FORWARD), be32(HOOK_PRIORITY, -200i32 as u32)],
            ),
            be32(CHAIN_POLICY, 1),
            s(CHAIN_TYPE, "filter"),
        ]
        .concat();
        let chain = parse_chain(&Attrs::parse(&msg).unwrap()).unwrap();
        assert_eq!(chain.hook, Some((NF_BR_FORWARD, -200)));
        assert!(chain.is_filter(NF_BR_FORWARD, -200));
        assert!(!chain.is_filter(NF_BR_FORWARD, 0));
        let regular = parse_chain(&Attrs::parse(&[s(CHAIN_TABLE, "t"), s(CHAIN_NAME, "x")].concat()).unwrap()).unwrap();
        assert_eq!((regular.hook, regular.policy, regular.kind), (None, None, None));
    }

    fn element(key: &[u8], flags: u32) -> Vec<u8> {
        let mut parts = vec![nest(SET_ELEM_KEY, &[attr(DATA_VALUE, key)])];
        if flags != 0 {
            parts.push(be32(SET_ELEM_FLAGS, flags));
        }
        nest(LIST_ELEM, &parts)
    }

    fn elements(set: &mut Set, items: &[Vec<u8>]) {
        let msg = [
            s(SET_ELEM_LIST_TABLE, "t"),
            s(SET_ELEM_LIST_SET, &set.name),
            nest(SET_ELEM_LIST_ELEMENTS, items),
        ]
        .concat();
        parse_elements(&Attrs::parse(&msg).unwrap(), &mut set.elements).unwrap();
    }

    #[test]
    fn reads_interval_sets_as_the_kernel_matches_them() {
        // nft 1.0.6 for `elements = { 56:6f:4c:ab:00:00-56:6f:4c:ab:ff:ff, 00:00:00:00:00:01 }`:
        // a leading end at 0, then start/end pairs (ends are the first key out), as the
        // kernel's rbtree dumps them.
        let msg = [
            s(SET_TABLE, "t"),
            s(SET_NAME, "peers_red"),
            be32(SET_FLAGS, SET_INTERVAL),
            be32(SET_KEY_TYPE, 9),
            be32(SET_KEY_LEN, 6),
        ]
        .concat();
        let mut set = parse_set(&Attrs::parse(&msg).unwrap());
        assert_eq!(set.datatype(), "ether_addr");
        assert!(set.is_plain());
        elements(
            &mut set,
            &[
                element(&[0x56, 0x6f, 0x4c, 0xac, 0, 0], ELEM_INTERVAL_END),
                element(&[0x56, 0x6f, 0x4c, 0xab, 0, 0], 0),
                element(&[0, 0, 0, 0, 0, 2], ELEM_INTERVAL_END),
                element(&[0, 0, 0, 0, 0, 1], 0),
                element(&[0, 0, 0, 0, 0, 0], ELEM_INTERVAL_END),
            ],
        );
        assert_eq!(set.intervals(), [(1, 1), (0x566f_4cab_0000, 0x566f_4cab_ffff)]);
        // A range up to the last address has no end element.
        set.elements.clear();
        elements(&mut set, &[element(&[0xff, 0xff, 0xff, 0xff, 0xff, 0], 0)]);
        assert_eq!(set.intervals(), [(0xffff_ffff_ff00, 0xffff_ffff_ffff)]);
        // Ranges stored whole (key and key end) and sets without intervals.
        set.elements = vec![Element {
            key: vec![0, 0, 0, 0, 0, 4],
            key_end: Some(vec![0, 0, 0, 0, 0, 9]),
            ..Element::default()
        }];
        assert_eq!(set.intervals(), [(4, 9)]);
        set.flags = 0;
        set.elements = vec![Element {
            key: vec![0, 0, 0, 0, 0, 4],
            ..Element::default()
        }];
        assert_eq!(set.intervals(), [(4, 4)]);
    }

    #[test]
    fn reads_interface_index_sets_in_host_order() {
        let mut set = Set {
            name: "vm_red".into(),
            key_type: 20,
            key_len: 4,
            ..Set::default()
        };
        elements(
            &mut set,
            &[element(&7u32.to_ne_bytes(), 0), element(&9u32.to_ne_bytes(), 0)],
        );
        assert_eq!(set.datatype(), "iface_index");
        assert_eq!(set.host_u32_keys(), BTreeSet::from([7, 9]));
        set.flags = SET_ANONYMOUS;
        assert!(!set.is_plain());
    }

    #[test]
    fn reads_verdict_maps_and_their_lookup() {
        // `map ports { type iface_index : verdict; elements = { "vnet1" : goto br_red,
        // "vnet2" : accept } }`: NFT_SET_MAP, data type NFT_DATA_VERDICT, each element's
        // data a verdict (NFTA_SET_ELEM_DATA { NFTA_DATA_VERDICT { CODE, CHAIN } }).
        let msg = [
            s(SET_TABLE, "t"),
            s(SET_NAME, "ports"),
            be32(SET_FLAGS, SET_MAP),
            be32(SET_KEY_TYPE, 20),
            be32(SET_KEY_LEN, 4),
            be32(SET_DATA_TYPE, DATA_TYPE_VERDICT),
            be32(7, 0), // NFTA_SET_DATA_LEN
        ]
        .concat();
        let mut map = parse_set(&Attrs::parse(&msg).unwrap());
        assert!(map.is_verdict_map() && !map.is_plain());
        let verdict = |code: i32, chain: Option<&str>| {
            let mut v = vec![be32(VERDICT_CODE, code as u32)];
            v.extend(chain.map(|c| s(VERDICT_CHAIN, c)));
            nest(SET_ELEM_DATA, &[nest(DATA_VERDICT, &v)])
        };
        let item = |index: u32, data: Vec<u8>| {
            nest(
                LIST_ELEM,
                &[nest(SET_ELEM_KEY, &[attr(DATA_VALUE, &index.to_ne_bytes())]), data],
            )
        };
        elements(
            &mut map,
            &[
                item(7, verdict(NFT_GOTO, Some("br_red"))),
                item(9, verdict(NF_ACCEPT, None)),
            ],
        );
        assert_eq!(map.host_u32_keys(), BTreeSet::from([7, 9]));
        let verdicts: Vec<_> = map.elements.iter().map(|e| e.verdict.clone()).collect();
        assert_eq!(
            verdicts,
            [
                Some(Verdict {
                    code: NFT_GOTO,
                    chain: Some("br_red".into())
                }),
                Some(Verdict {
                    code: NF_ACCEPT,
                    chain: None
                })
            ]
        );
        // A plain set's elements have none; a map to values is no verdict map.
        let plain = Set {
            flags: SET_MAP,
            data_type: 20,
            ..map.clone()
        };
        assert!(!plain.is_verdict_map());

        // `oif vmap @ports`: meta load oif => reg 1, lookup reg 1 set ports dreg 0.
        let rule = [
            s(RULE_TABLE, "t"),
            s(RULE_CHAIN, "forward"),
            attr(RULE_HANDLE, &3u64.to_be_bytes()),
            nest(
                RULE_EXPRESSIONS,
                &[
                    expr("meta", &[be32(2, META_OIF), be32(1, 1)]),
                    expr("lookup", &[s(1, "ports"), be32(2, 1), be32(3, 0)]),
                ],
            ),
        ]
        .concat();
        let rule = parse_rule(&Attrs::parse(&rule).unwrap()).unwrap();
        assert_eq!(
            rule.statements(),
            [Stmt::VerdictMap {
                left: Operand::Meta(META_OIF),
                map: "ports".into()
            }]
        );
        // A lookup into a data register is something else.
        let data_map = expr("lookup", &[s(1, "m"), be32(2, 1), be32(3, 1)]);
        let data_map = Attrs::parse(&data_map).unwrap();
        let inner = Attrs::parse(data_map.get(LIST_ELEM).unwrap()).unwrap();
        assert_eq!(parse_expr(&inner).unwrap(), Expr::Other("lookup".into()));
    }

    #[test]
    fn splits_datagrams_and_rejects_bad_lengths() {
        let a = message(
            nft_type(GETTABLE),
            NLM_F_REQUEST,
            7,
            NFPROTO_BRIDGE,
            0,
            &s(TABLE_NAME, "t"),
        );
        assert_eq!(a.len(), 16 + 4 + 8);
        assert_eq!(&a[16..20], &[NFPROTO_BRIDGE, 0, 0, 0]);
        let two = [a.clone(), a.clone()].concat();
        let got: Vec<u32> = replies(&two).map(|r| r.unwrap().seq).collect();
        assert_eq!(got, [7, 7]);
        let mut bad = a.clone();
        bad[0] = 200;
        assert!(replies(&bad).next().unwrap().is_err());
        assert!(Attrs::parse(&[9, 0, 1, 0]).is_err());
        let attrs = Attrs::parse(&a[20..]).unwrap();
        assert_eq!(attrs.string(TABLE_NAME).as_deref(), Some("t"));
        // The batch begin names the subsystem in network byte order.
        let begin = message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 1, 0, NFNL_SUBSYS_NFTABLES, &[]);
        assert_eq!(&begin[16..20], &[0, 0, 0, 10]);
    }
}
