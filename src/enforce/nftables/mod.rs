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
//! The shape every firewall backend follows (netavark's `src/firewall/` does the same), on
//! the table of our own that [`crate::enforce::nft`] keeps for this backend and the
//! cross-host filter alike:
//! 1. [`Ruleset`] (`ruleset.rs`): the rules wanted for a [`Plan`], as plain data;
//! 2. [`Live`] (`live.rs`): what the kernel has, read in-process over netfilter netlink
//!    ([`nft::Table::read`]: no `nft` process to read);
//! 3. [`Live::diff`]: the commands taking one to the other (none when converged), rendered
//!    into nft's JSON schema by [`nft::Table::batch`];
//! 4. [`nft::Table::apply`]: one `nft -j -f -` process per run applies them as one atomic
//!    transaction, only when there is something to change.
//!
//! The gate's interface group is `group.rs`. Steps 1 and 3 are pure and unit-tested without
//! root, step 2 from the structures the reader returns.

mod group;
mod live;
mod ruleset;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

pub use live::{Live, LiveRule, RuleKind};
pub use ruleset::{BridgeRules, Member, Rule, Ruleset};

use super::nft;
pub use super::nft::NFT;
use super::{chain_name, Backend, DriverSettings};
use crate::error::{Error, Result};
use crate::model::backend::{BackendKind, Change, DropCounter, Observed};
use crate::model::plan::{BridgePlan, Plan};
use crate::sys::bridge;
use crate::sys::nftnl;
use group::Ports;

/// Our table; nothing else in it is anyone else's.
pub const TABLE: &str = "bridge_isolation";
/// Our base chain.
pub const CHAIN: &str = nft::BASE_CHAIN;
/// The table, for [`nft`].
const OURS: nft::Table = nft::Table { name: TABLE };
/// One command of a transaction on our table.
pub type Cmd = nft::Cmd<Rule>;
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
/// (`chain_name::PerBridge::escaped`: `my-net.10` -> `vm_my_2dnet_2e10`).
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
// Changes, for the log.

/// What an empty kernel gets for `plan`: the whole table in one transaction.
pub fn render(plan: &Plan) -> Value {
    OURS.batch(&Ruleset::from_plan(plan).create())
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
// The backend.

/// The nftables backend. It reads the table once, in-process, and reuses what it read until
/// it changes the table: a run that finds nothing to do runs no `nft`, one that changes
/// something runs one.
#[derive(Debug)]
pub struct Nftables {
    privileged: bool,
    cache: RefCell<Option<Live>>,
}

impl Nftables {
    /// The backend, nothing run yet.
    pub fn new(driver: &DriverSettings) -> Nftables {
        Nftables {
            privileged: driver.privileged,
            cache: RefCell::new(None),
        }
    }

    fn live(&self) -> Result<Live> {
        if let Some(live) = self.cache.borrow().as_ref() {
            return Ok(live.clone());
        }
        let live = Live::from_table(OURS.read()?.as_ref());
        *self.cache.borrow_mut() = Some(live.clone());
        Ok(live)
    }

    /// Applies `cmds` (if any) and forgets the listing.
    fn commit(&self, cmds: &[Cmd]) -> Result<()> {
        if cmds.is_empty() {
            return Ok(());
        }
        self.cache.replace(None);
        OURS.apply(cmds)
            .map_err(|e| Error::Kernel(format!("nftables transaction refused: {e}")))
    }
}

impl Backend for Nftables {
    fn kind(&self) -> BackendKind {
        BackendKind::Nftables
    }

    fn available(&self) -> Result<()> {
        if !Path::new(NFT).exists() {
            return Err(Error::Kernel(format!("{NFT} is missing: install the nftables package")));
        }
        if !self.privileged {
            // Reading or checking rules needs CAP_NET_ADMIN; the root helper checks for real.
            return Ok(());
        }
        let live = self
            .live()
            .map_err(|e| Error::Kernel(format!("the kernel's nf_tables is not usable (nf_tables module?): {e}")))?;
        if live.exists {
            return Ok(());
        }
        nftnl::check_base_chain(nftnl::NFPROTO_BRIDGE, TABLE, CHAIN, nftnl::NF_BR_FORWARD, nft::PRIORITY).map_err(|e| {
            Error::Kernel(format!(
                "the kernel refuses a bridge-family nftables table (nf_tables, bridge filter chains?): {e}"
            ))
        })
    }

    fn check_writer(&self) -> Result<()> {
        if !self.privileged {
            return Ok(());
        }
        let probe = Ruleset {
            bridges: vec![BridgeRules {
                bridge: "probe".into(),
                members: Vec::new(),
            }],
        };
        OURS.check(&probe.create())
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
        if !self.privileged {
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
