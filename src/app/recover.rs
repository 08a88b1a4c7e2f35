//! `bridge-isolation recover`: the way out of a broken state file without hand-editing.
//!
//! The bad file is moved aside (`state.json.broken-<UTC time>`, never deleted), the policy is
//! rebuilt from VDSM's running network config (the same per-network validation as the network
//! hooks, [`setup::change`]) or, where VDSM keeps none, from the kernel, and reconciled.
//! Trusted vNICs are not rebuilt from anything a user could influence: they come back at each
//! VM's next lifecycle hook.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::app::hook;
use crate::error::{Error, Result};
use crate::host::config::{self, Settings};
use crate::host::state::Store;
use crate::model::policy::{NetworkChange, NetworkPolicy};
use crate::model::port::Snapshot;
use crate::reconcile;
use crate::sys::bridge;
use crate::vdsm::netconf::RunningConfig;

/// Where the policy was rebuilt from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// VDSM's running network config, the directory holding `nets/`.
    VdsmNetconf(PathBuf),
    /// The kernel: bridges with VM ports whose isolated flag is set.
    Kernel,
}

/// What `recover` did.
#[derive(Debug)]
pub struct Recovery {
    /// Where the old state file went, if there was one.
    pub moved_to: Option<PathBuf>,
    /// Where the policy came from.
    pub source: Source,
    /// The isolated networks rebuilt.
    pub networks: BTreeMap<String, NetworkPolicy>,
    /// What could not be recovered, one line each.
    pub unrecovered: Vec<String>,
    /// The backend that reconciled, and how many ports it changed.
    pub reconciled: Option<(String, usize)>,
}

/// Rebuilds the policy (root). Refuses when the state file is readable and valid, unless
/// `force`.
pub fn recover(settings: &Settings, force: bool) -> Result<Recovery> {
    if !config::is_root() {
        return Err(Error::Helper("recover must run as root".into()));
    }
    let store = Store::new(&settings.state_dir);
    let suffix = match store.read() {
        Ok(_) if !force => {
            return Err(Error::State {
                path: store.path(),
                reason: "readable and valid: nothing to recover (--force rebuilds it anyway)".into(),
            })
        }
        Ok(_) => format!("replaced-{}", utc_stamp(std::time::SystemTime::now())),
        Err(_) => format!("broken-{}", utc_stamp(std::time::SystemTime::now())),
    };
    let (source, rebuilt) = match RunningConfig::read(&settings.vdsm_netconf)? {
        Some(config) => (Source::VdsmNetconf(config.dir.clone()), from_netconf(&config)),
        None => (Source::Kernel, from_kernel(&bridge::snapshot()?)),
    };
    let (mut locked, moved_to) = store.lock_and_set_aside(&suffix)?;
    for (name, policy) in &rebuilt.networks {
        hook::record(&mut locked.state, name, &NetworkChange::Isolate(policy.clone()));
    }
    let bridges: Vec<String> = rebuilt.networks.values().map(|p| p.bridge.clone()).collect();
    locked.record_intent(bridges.iter().map(String::as_str))?;
    let outcome = reconcile::run_and_commit(locked, settings)?;
    Ok(Recovery {
        moved_to,
        source,
        networks: rebuilt.networks,
        unrecovered: rebuilt.unrecovered,
        reconciled: outcome.backend.map(|b| (b.to_string(), outcome.changes.len())),
    })
}

/// The isolated networks found, and what could not be recovered.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Isolated networks by name.
    pub networks: BTreeMap<String, NetworkPolicy>,
    /// One line per thing left out.
    pub unrecovered: Vec<String>,
}

/// The isolated networks of VDSM's running config, and one line per network file that
/// could not be judged.
pub fn from_netconf(config: &RunningConfig) -> Rebuilt {
    let nets = config.dir.join("nets");
    Rebuilt {
        networks: config.isolated().map(|(n, p)| (n.to_string(), p.clone())).collect(),
        unrecovered: config
            .invalid
            .iter()
            .map(|(name, reason)| format!("{}: {reason}", nets.join(name).display()))
            .collect(),
    }
}

/// Bridges having a VM port (a tap, or a `vnetN` port) with the isolated flag set, each as
/// the network of the same name; the uplink only where exactly one port is neither isolated
/// nor a VM port.
pub fn from_kernel(snapshot: &Snapshot) -> Rebuilt {
    let mut rebuilt = Rebuilt::default();
    for name in snapshot.bridges() {
        let ports = snapshot.ports(name).unwrap_or_default();
        let vm_port = |p: &crate::model::port::Port| bridge::is_tap(&p.name) || is_vnet(&p.name);
        if !ports.iter().any(|p| p.isolated == Some(true) && vm_port(p)) {
            continue;
        }
        let others: Vec<&str> = ports
            .iter()
            .filter(|p| p.isolated != Some(true) && !vm_port(p))
            .map(|p| p.name.as_str())
            .collect();
        let uplink = match others.as_slice() {
            [one] => Some(one.to_string()),
            [] => {
                rebuilt
                    .unrecovered
                    .push(format!("bridge {name}: no uplink port found: recorded without one"));
                None
            }
            many => {
                rebuilt.unrecovered.push(format!(
                    "bridge {name}: uplink ambiguous ({}): recorded without one",
                    many.join(", ")
                ));
                None
            }
        };
        let policy = NetworkPolicy {
            bridge: name.to_string(),
            uplink,
            ..NetworkPolicy::default()
        };
        rebuilt.networks.insert(name.to_string(), policy);
    }
    rebuilt
        .unrecovered
        .push("network names (taken to be the bridge names) and cross-host MAC ranges".into());
    rebuilt
}

/// libvirt's tap names: `vnet` and a number.
fn is_vnet(name: &str) -> bool {
    name.strip_prefix("vnet")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `YYYYMMDDTHHMMSSZ` of `t`, in UTC.
pub fn utc_stamp(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.moved_to {
            Some(p) => writeln!(f, "state file moved aside to {}", p.display())?,
            None => writeln!(f, "no state file to move aside")?,
        }
        match &self.source {
            Source::VdsmNetconf(dir) => writeln!(f, "rebuilt from VDSM's running network config {}", dir.display())?,
            Source::Kernel => writeln!(
                f,
                "VDSM's running network config not found: rebuilt from the kernel's port flags"
            )?,
        }
        if self.networks.is_empty() {
            writeln!(f, "no isolated network found")?;
        }
        for (name, p) in &self.networks {
            writeln!(
                f,
                "network {name}: bridge {} isolated (uplink {})",
                p.bridge,
                p.uplink.as_deref().unwrap_or("none")
            )?;
        }
        for line in &self.unrecovered {
            writeln!(f, "not recovered: {line}")?;
        }
        writeln!(
            f,
            "not recovered: trusted vNICs; each comes back at its VM's next lifecycle hook (start, migration, hotplug, device update)"
        )?;
        match &self.reconciled {
            Some((backend, n)) => writeln!(f, "{backend}: {n} port(s) changed"),
            None => writeln!(f, "nothing to reconcile"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nets/` as VDSM 4.50 keeps it: one JSON object per network, `custom` included.
    fn netconf(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("nets")).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join("nets").join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn reads_vdsm_running_config() {
        let dir = netconf(&[
            (
                "red",
                r#"{"nic": "eth1", "vlan": 100, "bridged": true, "mtu": 1500, "stp": false, "switch": "legacy",
                    "bootproto": "none", "dhcpv6": false, "ipv6autoconf": false, "defaultRoute": false,
                    "nameservers": [], "custom": {"bridge_isolation": "true",
                    "bridge_isolation_peer_macs": "56:6f:4c:ab:00:00/32"}}"#,
            ),
            (
                "ovirtmgmt",
                r#"{"nic": "eth0", "bridged": true, "mtu": 1500, "switch": "legacy", "bootproto": "dhcp",
                    "defaultRoute": true, "nameservers": ["192.0.2.53"]}"#,
            ),
            (
                "blue",
                r#"{"bonding": "bond0", "bridged": true, "switch": "legacy", "custom": {"bridge_isolation": "false"}}"#,
            ),
            (
                "ovs1",
                r#"{"nic": "eth3", "bridged": true, "switch": "ovs", "custom": {"bridge_isolation": "true"}}"#,
            ),
            ("green", "{\"nic\": \"eth2\", \"custom\": {\"bridge_isolation\": \"tr"),
        ]);
        let rebuilt = from_netconf(&RunningConfig::read(dir.path()).unwrap().unwrap());
        let networks: Vec<(&str, &str, Option<&str>, usize)> = rebuilt
            .networks
            .iter()
            .map(|(n, p)| (n.as_str(), p.bridge.as_str(), p.uplink.as_deref(), p.peer_macs.len()))
            .collect();
        assert_eq!(networks, [("red", "red", Some("eth1.100"), 1)]);
        assert_eq!(rebuilt.unrecovered.len(), 2, "{:?}", rebuilt.unrecovered);
        assert!(
            rebuilt.unrecovered[0].ends_with(
                "nets/green: not a JSON object of attributes: EOF while parsing a string at line 1 column 50"
            ),
            "{:?}",
            rebuilt.unrecovered
        );
        assert!(
            rebuilt.unrecovered[1]
                .contains("nets/ovs1: network ovs1: bridge_isolation=true is for Linux bridge networks"),
            "{:?}",
            rebuilt.unrecovered
        );
    }

    #[test]
    fn libvirt_taps_are_vm_ports() {
        assert!(is_vnet("vnet0") && is_vnet("vnet127"));
        assert!(!is_vnet("vnet") && !is_vnet("vnetx") && !is_vnet("eth1"));
    }

    #[test]
    fn stamps_are_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_764_948_698);
        assert_eq!(utc_stamp(t), "20251205T153138Z");
        assert_eq!(utc_stamp(std::time::UNIX_EPOCH), "19700101T000000Z");
        let leap = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(utc_stamp(leap), "20000229T000000Z");
    }
}
