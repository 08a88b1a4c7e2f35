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
//! Same shape as [`crate::enforce::nftables`], on the same table helper
//! ([`crate::enforce::nft`]): [`Ruleset`] (wanted, plain data, `ruleset.rs`), [`Live`] (read
//! in-process, `live.rs`), [`Live::diff`], one `nft -j -f -` transaction when something
//! differs, no process when converged. The table is deleted when no network has peer ranges
//! or uplink MACs. With the firewalld backend the filter is `eb` direct rules (`eb.rs`).

mod eb;
mod live;
mod ruleset;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

pub use eb::DirectRules;
pub use eb::{eb_chain_of, eb_source, mac_prefixes, EB_PRIORITY_DROP, EB_PRIORITY_RETURN};
use eb::{eb_clear, eb_counters, eb_sync, owns_eb_chain};
pub use live::Live;
use ruleset::filters;
pub use ruleset::{set_name, PeerRules, RuleKind, Ruleset, SetKind};

use crate::enforce::nft::{self, FAMILY, NFT};
use crate::enforce::DriverSettings;
use crate::error::{Error, Result};
use crate::host::state::State;
use crate::model::backend::{BackendKind, DropCounter};
use crate::model::plan::Plan;
use crate::model::policy::MacRange;

/// Our table (the port backends' table is [`crate::enforce::nftables::TABLE`]).
pub const TABLE: &str = "bridge_isolation_peers";
/// Our base chain.
pub const CHAIN: &str = nft::BASE_CHAIN;
/// The table, for [`nft`].
const OURS: nft::Table = nft::Table { name: TABLE };
/// One command of a transaction on our table.
pub type Cmd = nft::Cmd<(PeerRules, RuleKind)>;

/// The bridges that get a cross-host rule.
pub fn wanted_bridges(state: &State) -> BTreeSet<String> {
    wanted_rules(state).into_iter().map(|(bridge, _)| bridge).collect()
}

// ---------------------------------------------------------------------------------------
// 4. Running nft, and the entry points.

/// Our table as the kernel has it (read in-process); empty when it does not exist.
pub fn list() -> Result<Live> {
    Ok(Live::from_table(OURS.read()?.as_ref()))
}

fn apply(cmds: &[Cmd]) -> Result<()> {
    if !Path::new(NFT).exists() {
        return Err(Error::Kernel(format!(
            "{NFT} is missing: {}/{} need the nftables package (with every backend but firewalld)",
            crate::model::policy::PROP_PEER_MACS,
            crate::model::policy::PROP_UPLINK_MACS
        )));
    }
    OURS.apply(cmds)
        .map_err(|e| Error::Kernel(format!("cross-host nftables transaction refused: {e}")))
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
pub fn reconcile(state: &mut State, plan: &Plan, driver: &DriverSettings) -> Result<usize> {
    let want = Ruleset::from_state(state, plan);
    if want.bridges.is_empty() && !state.cross_host {
        return Ok(0);
    }
    let changed = sync(state, &want, driver)?;
    state.cross_host = !want.bridges.is_empty();
    Ok(changed)
}

/// Makes the filter of the active backend equal to `want` and removes the other one.
fn sync(state: &State, want: &Ruleset, driver: &DriverSettings) -> Result<usize> {
    if state.backend == Some(BackendKind::Firewalld) {
        let fw = super::direct_rules(driver)?;
        let mut n = eb_sync(fw.as_ref(), want)?;
        if list()?.exists {
            apply(&Cmd::delete_table())?;
            n += 2;
        }
        if n > 0 {
            log::info!("cross-host: firewalld direct rules updated ({n} change(s))");
        }
        return Ok(n);
    }
    match eb_clear(driver) {
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
pub fn remove_all(driver: &DriverSettings) -> Result<bool> {
    let direct = eb_clear(driver)? > 0;
    let live = list()?;
    if !live.exists {
        return Ok(direct);
    }
    apply(&Cmd::delete_table())?;
    if list()?.exists {
        return Err(Error::Kernel(format!("table {FAMILY} {TABLE} still exists")));
    }
    Ok(true)
}

/// What `verify` reports of the cross-host filter (root): one line per difference a reconcile
/// would repair, none when the kernel (or firewalld, with its backend) holds exactly what
/// `state` asks for. Nothing is read when no network has peer ranges or uplink MACs and none
/// had. `plan` covers (at least) the [`wanted_bridges`].
pub fn drift(state: &State, plan: &Plan, driver: &DriverSettings) -> Result<Vec<String>> {
    let want = Ruleset::from_state(state, plan);
    if want.bridges.is_empty() && !state.cross_host {
        return Ok(Vec::new());
    }
    if state.backend == Some(BackendKind::Firewalld) {
        let fw = super::direct_rules(driver)?;
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
/// drop counters. Reading the counters needs root ([`DriverSettings::privileged`]); without it
/// they are `None`. The kernel
/// is read only when some network has a rule; `plan` is asked then for a plan covering (at
/// least) the [`wanted_bridges`].
pub fn status(
    state: &State,
    driver: &DriverSettings,
    plan: impl FnOnce() -> Result<Plan>,
) -> BTreeMap<String, PeerStatus> {
    let readable = driver.privileged && !wanted_bridges(state).is_empty();
    let counters = if readable && state.backend == Some(BackendKind::Firewalld) {
        eb_counters(state, driver)
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
