//! 5. With the firewalld backend: `eb` direct rules instead of the table.

use std::collections::BTreeMap;

use super::ruleset::{PeerRules, RuleKind, Ruleset};
use super::wanted_rules;
use crate::enforce::chain_name;
use crate::enforce::firewalld::{Firewalld, Ours};
use crate::enforce::DriverSettings;
use crate::error::{Error, Result};
use crate::host::state::State;
use crate::model::backend::DropCounter;
use crate::model::policy::mac_from_u64;

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
pub(super) fn owns_eb_chain(chain: &str) -> bool {
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

/// What the cross-host filter asks of firewalld's direct rules: [`Firewalld`] answers, in a
/// binary that links it ([`crate::enforce::link_daemon_backends`]).
pub trait DirectRules {
    /// Whether firewalld runs.
    fn running(&self) -> bool;
    /// Makes the direct chains `owns` accepts equal to `want` (runtime and permanent).
    /// Returns the calls made.
    fn sync_part(&self, owns: fn(&str) -> bool, want: &Ours) -> Result<usize>;
    /// What differs between those chains and `want`, one line each.
    fn drift_part(&self, owns: fn(&str) -> bool, want: &Ours) -> Result<Vec<String>>;
    /// Frames dropped by direct chain `chain`; `None` when it has no drop rule.
    fn eb_drops(&self, chain: &str) -> Result<Option<DropCounter>>;
}

impl DirectRules for Firewalld {
    fn running(&self) -> bool {
        Firewalld::running(self)
    }
    fn sync_part(&self, owns: fn(&str) -> bool, want: &Ours) -> Result<usize> {
        Firewalld::sync_part(self, owns, want)
    }
    fn drift_part(&self, owns: fn(&str) -> bool, want: &Ours) -> Result<Vec<String>> {
        Firewalld::drift_part(self, owns, want)
    }
    fn eb_drops(&self, chain: &str) -> Result<Option<DropCounter>> {
        Firewalld::eb_drops(self, chain)
    }
}

/// Makes the firewalld variant `want` (runtime and permanent). Returns the calls made.
pub(super) fn eb_sync(fw: &dyn DirectRules, want: &Ruleset) -> Result<usize> {
    let ours = want.eb()?;
    fw.sync_part(owns_eb_chain, &ours)
        .map_err(|e| Error::Kernel(format!("cross-host firewalld direct rules: {e}")))
}

/// Removes the firewalld variant when firewalld runs. Returns the calls made. A binary
/// without the daemon backends (the hook's) leaves that to `bridge-isolation`: our direct
/// rules are only left behind by a move away from the firewalld backend, and that move runs
/// there (see `app::hook`).
pub(super) fn eb_clear(driver: &DriverSettings) -> Result<usize> {
    if !crate::enforce::daemon_backends_linked() {
        log::debug!("cross-host: firewalld direct rules not checked by this binary");
        return Ok(0);
    }
    let fw = crate::enforce::direct_rules(driver)?;
    if !fw.running() {
        return Ok(0);
    }
    eb_sync(fw.as_ref(), &Ruleset::default())
}

/// Frames dropped per bridge and rule by the firewalld variant's direct chains.
pub(super) fn eb_counters(state: &State, driver: &DriverSettings) -> BTreeMap<(String, RuleKind), DropCounter> {
    let fw = match crate::enforce::direct_rules(driver) {
        Ok(fw) => fw,
        Err(e) => {
            log::debug!("cross-host counters unreadable: {e}");
            return BTreeMap::new();
        }
    };
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
