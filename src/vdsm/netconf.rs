//! VDSM's running network config (docs/design.md §2): `nets/NAME` in
//! `/var/lib/vdsm/staging/netconf`, one JSON object of each network's setupNetworks
//! attributes, `custom` included, written by VDSM after every setup. What it tags is what the
//! engine asked of this host, whatever our state file says: reconcile adopts it
//! ([`crate::reconcile::adopt`]) and `recover` rebuilds from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::policy::NetworkChange;
use crate::vdsm::protocol::one_line;
use crate::vdsm::setup;

/// Largest `nets/NAME` file read: VDSM's are a few hundred bytes.
const MAX_FILE: u64 = 1 << 20;

/// What VDSM's running config asks of isolation, network by network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunningConfig {
    /// The directory holding `nets/`.
    pub dir: PathBuf,
    /// Every network whose attributes could be judged: isolated (with its policy) or not.
    pub networks: BTreeMap<String, NetworkChange>,
    /// Networks whose file could not be read or judged, each with the reason: what they ask
    /// is unknown, so nothing is concluded about them.
    pub invalid: BTreeMap<String, String>,
}

impl RunningConfig {
    /// Reads `dir/nets/*`: `None` when there is no `nets/` directory (not an oVirt host, or
    /// VDSM never set up a network), an error when it cannot be listed. Each file is judged
    /// exactly as `before_network_setup` judges the same attributes ([`setup::change`]).
    pub fn read(dir: &Path) -> Result<Option<RunningConfig>> {
        let nets = dir.join("nets");
        let entries = match std::fs::read_dir(&nets) {
            Ok(entries) => entries,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(Error::io(format!("reading {}", nets.display()), e)),
        };
        let mut config = RunningConfig {
            dir: dir.to_path_buf(),
            ..RunningConfig::default()
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("reading {}", nets.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Hidden names are VDSM's (or an editor's) temporary files, never networks.
            if name.starts_with('.') {
                continue;
            }
            match network_of_file(&name, &entry.path()) {
                Ok(Some(change)) => {
                    config.networks.insert(name, change);
                }
                Ok(None) => {}
                Err(reason) => {
                    config.invalid.insert(name, reason);
                }
            }
        }
        Ok(Some(config))
    }

    /// The isolated networks, each with its policy.
    pub fn isolated(&self) -> impl Iterator<Item = (&str, &crate::model::policy::NetworkPolicy)> {
        self.networks.iter().filter_map(|(name, change)| match change {
            NetworkChange::Isolate(policy) => Some((name.as_str(), policy)),
            NetworkChange::Lift => None,
        })
    }
}

/// One `nets/NAME` file judged: `None` when it is not a regular file (skipped).
fn network_of_file(name: &str, path: &Path) -> std::result::Result<Option<NetworkChange>, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > MAX_FILE {
        return Err(format!("{} bytes: not a network's attributes", meta.len()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let attrs: BTreeMap<String, Value> =
        serde_json::from_str(&text).map_err(|e| format!("not a JSON object of attributes: {e}"))?;
    setup::change(name, &attrs)
        .map(Some)
        .map_err(|e| one_line(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::NetworkPolicy;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir.join("nets")).unwrap();
        std::fs::write(dir.join("nets").join(name), text).unwrap();
    }

    #[test]
    fn no_nets_directory_is_no_config() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RunningConfig::read(dir.path()).unwrap(), None);
        assert_eq!(RunningConfig::read(&dir.path().join("absent")).unwrap(), None);
    }

    #[test]
    fn judges_each_network_as_the_setup_hook_does() {
        let dir = tempfile::tempdir().unwrap();
        // As VDSM 4.50 writes them (lib/vdsm/network/netconfpersistence.py), after setupNetworks.
        write(
            dir.path(),
            "ovirtmgmt",
            r#"{"nic": "eth0", "ipaddr": "192.0.2.10", "netmask": "255.255.255.0", "gateway": "192.0.2.1",
                "defaultRoute": true, "bridged": true, "mtu": 1500, "switch": "legacy", "stp": false,
                "bootproto": "none", "dhcpv6": false, "ipv6autoconf": false, "nameservers": []}"#,
        );
        write(
            dir.path(),
            "red",
            r#"{"bonding": "bond0", "vlan": 100, "bridged": true, "mtu": 1500, "switch": "legacy",
                "stp": false, "bootproto": "none", "defaultRoute": false, "nameservers": [],
                "custom": {"bridge_isolation": "true", "bridge_isolation_peer_macs": "56:6f:4c:00:00:00-56:6f:4c:00:ff:ff"}}"#,
        );
        write(
            dir.path(),
            "blue",
            r#"{"nic": "eth2", "bridged": true, "switch": "legacy", "custom": {"bridge_isolation": "false"}}"#,
        );
        write(
            dir.path(),
            "bad",
            r#"{"nic": "eth3", "bridged": true, "custom": {"bridge_isolation": "yes"}}"#,
        );
        write(dir.path(), "broken", "{\"nic\": ");
        write(
            dir.path(),
            ".red.tmp",
            r#"{"nic": "eth9", "custom": {"bridge_isolation": "true"}}"#,
        );
        let config = RunningConfig::read(dir.path()).unwrap().unwrap();
        let isolated: Vec<(&str, &NetworkPolicy)> = config.isolated().collect();
        assert_eq!(isolated.len(), 1, "{config:?}");
        let (name, red) = isolated[0];
        assert_eq!(name, "red");
        assert_eq!(red.bridge, "red");
        assert_eq!(red.uplink.as_deref(), Some("bond0.100"));
        assert_eq!(red.peer_macs.len(), 1);
        assert_eq!(config.networks.get("ovirtmgmt"), Some(&NetworkChange::Lift));
        assert_eq!(config.networks.get("blue"), Some(&NetworkChange::Lift));
        assert_eq!(
            config.invalid.keys().map(String::as_str).collect::<Vec<_>>(),
            ["bad", "broken"]
        );
        assert!(
            config.invalid["bad"].contains("bridge_isolation"),
            "{:?}",
            config.invalid
        );
        assert!(!config.networks.contains_key(".red.tmp"));
    }
}
