//! Policy: which bridges are isolated, through which uplink, and the property rules.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ifname;

/// Network custom property that turns isolation on (`true`) or off (`false`).
pub const PROP_ISOLATION: &str = "bridge_isolation";
/// vNIC profile custom property that exempts one vNIC (`true`).
pub const PROP_TRUSTED: &str = "bridge_isolation_trusted";

/// An isolated network as recorded in state: its bridge and the bridge's uplink port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// The Linux bridge VDSM builds for the network (named after it).
    pub bridge: String,
    /// The uplink port (`nic`, `bonding`, or `<nic|bonding>.<vlan>`); none for a nicless network.
    pub uplink: Option<String>,
}

/// What a setup request asks for one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkChange {
    /// Isolate the VM ports of this bridge.
    Isolate(NetworkPolicy),
    /// No isolation: removed, untagged, or `bridge_isolation=false`.
    Lift,
}

/// Parses a boolean custom property the way the engine's `^(true|false)$` regex allows.
pub fn parse_flag(value: &str) -> std::result::Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!(
            "invalid value {} (expected \"true\" or \"false\")",
            ifname::quoted(other)
        )),
    }
}

/// Validates a network name used as a bridge name.
pub fn validate_network_name(network: &str) -> Result<()> {
    ifname::validate(network).map_err(|reason| Error::Policy {
        network: ifname::quoted(network),
        reason,
    })
}

/// Builds the uplink port name from VDSM's `nic`/`bonding` and `vlan` attributes.
pub fn uplink_name(
    network: &str,
    nic: Option<&str>,
    bonding: Option<&str>,
    vlan: Option<u16>,
) -> Result<Option<String>> {
    let reject = |reason: String| Error::Policy {
        network: network.into(),
        reason,
    };
    let base = match (nic, bonding) {
        (Some(_), Some(_)) => return Err(reject("has both nic and bonding".into())),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) if vlan.is_some() => return Err(reject("has a vlan but no nic or bonding".into())),
        (None, None) => return Ok(None),
    };
    ifname::validate(base).map_err(reject)?;
    let name = match vlan {
        Some(id) => format!("{base}.{id}"),
        None => base.to_string(),
    };
    ifname::validate(&name).map_err(reject)?;
    Ok(Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values() {
        assert_eq!(parse_flag("true"), Ok(true));
        assert_eq!(parse_flag("false"), Ok(false));
        assert!(parse_flag("yes").is_err());
        assert!(parse_flag("True").is_err());
        assert!(parse_flag("").is_err());
    }

    #[test]
    fn uplinks() {
        assert_eq!(
            uplink_name("n", Some("eth1"), None, None).unwrap().as_deref(),
            Some("eth1")
        );
        assert_eq!(
            uplink_name("n", None, Some("bond0"), Some(100)).unwrap().as_deref(),
            Some("bond0.100")
        );
        assert_eq!(uplink_name("n", None, None, None).unwrap(), None);
        assert!(uplink_name("n", Some("eth1"), Some("bond0"), None).is_err());
        assert!(uplink_name("n", Some("enp129s0f1np1"), None, Some(4000)).is_err());
        assert!(uplink_name("n", Some("../x"), None, None).is_err());
    }
}
