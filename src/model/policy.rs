//! Policy: which bridges are isolated, through which uplink, and the property rules.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::ifname;
use crate::model::mac::Mac;

/// Network custom property that turns isolation on (`true`) or off (`false`).
pub const PROP_ISOLATION: &str = "bridge_isolation";
/// vNIC profile custom property that exempts one vNIC (`true`).
pub const PROP_TRUSTED: &str = "bridge_isolation_trusted";
/// Network custom property: MAC ranges of VMs on other hosts (cross-host isolation).
pub const PROP_PEER_MACS: &str = "bridge_isolation_peer_macs";
/// Network custom property: MACs exempt from cross-host isolation (router VMs elsewhere).
pub const PROP_TRUSTED_MACS: &str = "bridge_isolation_trusted_macs";
/// Network custom property: the only source MACs that may reach VM ports from the uplink
/// (gateways, routers, servers: the promiscuous side of a private VLAN).
pub const PROP_UPLINK_MACS: &str = "bridge_isolation_uplink_macs";
/// Most items any cross-host property may list.
pub const MAX_MAC_ITEMS: usize = 1024;

/// An isolated network as recorded in state: its bridge and the bridge's uplink port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// The Linux bridge VDSM builds for the network (named after it).
    pub bridge: String,
    /// The uplink port (`nic`, `bonding`, or `<nic|bonding>.<vlan>`); none for a nicless network.
    pub uplink: Option<String>,
    /// `bridge_isolation_peer_macs`: frames from the uplink with a source MAC in these
    /// ranges do not reach untrusted VM ports (sorted, merged; empty: no cross-host rule).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_macs: Vec<MacRange>,
    /// `bridge_isolation_trusted_macs`: source MACs exempt from the peer ranges (sorted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_macs: Vec<Mac>,
    /// `bridge_isolation_uplink_macs`: when not empty, frames from the uplink with a source
    /// MAC outside these ranges do not reach untrusted VM ports (sorted, merged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uplink_macs: Vec<MacRange>,
}

/// An inclusive range of MAC addresses, written `first-last` (state, status, messages).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacRange {
    /// Lowest address.
    pub first: Mac,
    /// Highest address (>= `first`).
    pub last: Mac,
}

/// A MAC as a 48-bit number.
pub fn mac_to_u64(mac: Mac) -> u64 {
    mac.0.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

/// The MAC of a 48-bit number (higher bits ignored).
pub fn mac_from_u64(n: u64) -> Mac {
    let b = n.to_be_bytes();
    Mac([b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl MacRange {
    /// The range as 48-bit numbers.
    pub fn bounds(self) -> (u64, u64) {
        (mac_to_u64(self.first), mac_to_u64(self.last))
    }

    /// The range of 48-bit numbers `first..=last`.
    pub fn from_bounds(first: u64, last: u64) -> MacRange {
        MacRange {
            first: mac_from_u64(first),
            last: mac_from_u64(last),
        }
    }

    /// Whether `mac` is in the range.
    pub fn contains(self, mac: Mac) -> bool {
        (self.first..=self.last).contains(&mac)
    }
}

impl std::fmt::Display for MacRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl std::fmt::Debug for MacRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for MacRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_mac_range(&text).map_err(serde::de::Error::custom)
    }
}

/// Sorts `ranges` and merges those that overlap or touch.
pub fn merge_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

fn parse_mac(text: &str) -> std::result::Result<Mac, String> {
    let t = text.trim();
    let ok = t.len() == 17
        && t.split(':').count() == 6
        && t.split(':')
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(format!("invalid MAC address {}", ifname::quoted(t)));
    }
    t.parse()
}

/// One item of `bridge_isolation_peer_macs`: `first-last`, `mac/len` (1..=48 leading bits,
/// no bits set after them) or a single MAC.
pub fn parse_mac_range(item: &str) -> std::result::Result<MacRange, String> {
    let item = item.trim();
    if let Some((first, last)) = item.split_once('-') {
        let (first, last) = (parse_mac(first)?, parse_mac(last)?);
        if first > last {
            return Err(format!("MAC range {} ends before it starts", ifname::quoted(item)));
        }
        return Ok(MacRange { first, last });
    }
    if let Some((base, len)) = item.split_once('/') {
        let mac = parse_mac(base)?;
        let len: u32 = match len.trim().parse() {
            Ok(n) if (1..=48).contains(&n) => n,
            _ => return Err(format!("invalid prefix length in {} (1 to 48)", ifname::quoted(item))),
        };
        let host = (1u64 << (48 - len)) - 1;
        let first = mac_to_u64(mac);
        if first & host != 0 {
            return Err(format!(
                "MAC prefix {} has bits set after the first {len}",
                ifname::quoted(item)
            ));
        }
        return Ok(MacRange::from_bounds(first, first | host));
    }
    let mac = parse_mac(item)?;
    Ok(MacRange { first: mac, last: mac })
}

/// Splits a comma-separated property value; empty or blank: no items.
fn items<'a>(prop: &str, value: &'a str) -> std::result::Result<Vec<&'a str>, String> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let items: Vec<&str> = value.split(',').map(str::trim).collect();
    if items.len() > MAX_MAC_ITEMS {
        return Err(format!("{prop}: {} items, at most {MAX_MAC_ITEMS}", items.len()));
    }
    if items.iter().any(|i| i.is_empty()) {
        return Err(format!("{prop}: empty item in {}", ifname::quoted(value)));
    }
    Ok(items)
}

/// Parses `bridge_isolation_peer_macs`: sorted, overlapping and adjacent ranges merged.
pub fn parse_peer_macs(value: &str) -> std::result::Result<Vec<MacRange>, String> {
    parse_mac_ranges(PROP_PEER_MACS, value)
}

/// Parses `bridge_isolation_uplink_macs`: the syntax and limits of
/// `bridge_isolation_peer_macs` (see [`parse_peer_macs`]).
pub fn parse_uplink_macs(value: &str) -> std::result::Result<Vec<MacRange>, String> {
    parse_mac_ranges(PROP_UPLINK_MACS, value)
}

fn parse_mac_ranges(prop: &str, value: &str) -> std::result::Result<Vec<MacRange>, String> {
    let mut ranges = Vec::new();
    for item in items(prop, value)? {
        let r = parse_mac_range(item).map_err(|e| format!("{prop}: {e}"))?;
        ranges.push(r.bounds());
    }
    Ok(merge_ranges(ranges)
        .into_iter()
        .map(|(a, b)| MacRange::from_bounds(a, b))
        .collect())
}

/// Parses `bridge_isolation_trusted_macs`: unicast MACs, sorted, duplicates removed.
pub fn parse_trusted_macs(value: &str) -> std::result::Result<Vec<Mac>, String> {
    let mut macs = Vec::new();
    for item in items(PROP_TRUSTED_MACS, value)? {
        let mac = parse_mac(item).map_err(|e| format!("{PROP_TRUSTED_MACS}: {e}"))?;
        if mac.0[0] & 1 != 0 {
            return Err(format!(
                "{PROP_TRUSTED_MACS}: {mac} is a multicast address, never a source"
            ));
        }
        macs.push(mac);
    }
    macs.sort_unstable();
    macs.dedup();
    Ok(macs)
}

/// What a setup request asks for one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
    fn peer_macs_ranges_prefixes_and_single_macs() {
        let r = parse_peer_macs("56:6f:4c:ab:00:00-56:6f:4c:ab:ff:ff, AA:BB:CC:00:00:00/24,02:00:00:00:00:01").unwrap();
        let shown: Vec<String> = r.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "02:00:00:00:00:01-02:00:00:00:00:01",
                "56:6f:4c:ab:00:00-56:6f:4c:ab:ff:ff",
                "aa:bb:cc:00:00:00-aa:bb:cc:ff:ff:ff"
            ]
        );
        // Overlapping and adjacent ranges merge; blank is no ranges.
        let r = parse_peer_macs("56:6f:4c:ab:00:00/40,56:6f:4c:ab:00:80-56:6f:4c:ab:01:ff,56:6f:4c:ab:02:00").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].to_string(), "56:6f:4c:ab:00:00-56:6f:4c:ab:02:00");
        assert!(parse_peer_macs(" ").unwrap().is_empty());
        assert!(r[0].contains("56:6f:4c:ab:01:00".parse().unwrap()));
        assert!(!r[0].contains("56:6f:4c:ab:02:01".parse().unwrap()));
        assert_eq!(
            parse_mac_range("00:00:00:00:00:00/1").unwrap().last.to_string(),
            "7f:ff:ff:ff:ff:ff"
        );
    }

    #[test]
    fn peer_macs_errors_name_the_bad_item() {
        for (value, want) in [
            ("56:6f:4c:ab:00:00-56:6f:4c:aa:ff:ff", "ends before it starts"),
            ("aa:bb:cc:00:00:01/24", "has bits set after the first 24"),
            ("aa:bb:cc:00:00:00/0", "invalid prefix length"),
            ("aa:bb:cc:00:00:00/49", "invalid prefix length"),
            ("aa:bb:cc:00:00:00/x", "invalid prefix length"),
            ("aa:bb:cc:00:00", "invalid MAC address \"aa:bb:cc:00:00\""),
            ("aa:bb:cc:00:00:0g", "invalid MAC address"),
            ("aa:bb:cc:00:00:00,,aa:bb:cc:00:00:01", "empty item"),
            ("aa-bb-cc-00-00-00", "invalid MAC address"),
            ("+a:bb:cc:00:00:00", "invalid MAC address"),
        ] {
            let err = parse_peer_macs(value).unwrap_err();
            assert!(err.starts_with("bridge_isolation_peer_macs: "), "{value}: {err}");
            assert!(err.contains(want), "{value}: {err}");
        }
        let many = vec!["aa:bb:cc:00:00:00"; MAX_MAC_ITEMS + 1].join(",");
        assert!(parse_peer_macs(&many).unwrap_err().contains("at most"));
    }

    #[test]
    fn uplink_macs_share_the_peer_syntax_and_limit() {
        let value = "02:b1:00:00:00:fe, 52:54:00:00:00:00/24,02:b1:00:00:00:fe";
        let shown: Vec<String> = parse_uplink_macs(value)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "02:b1:00:00:00:fe-02:b1:00:00:00:fe",
                "52:54:00:00:00:00-52:54:00:ff:ff:ff"
            ]
        );
        assert_eq!(
            parse_uplink_macs("gw").unwrap_err(),
            "bridge_isolation_uplink_macs: invalid MAC address \"gw\""
        );
        let many = vec!["aa:bb:cc:00:00:00"; MAX_MAC_ITEMS + 1].join(",");
        assert!(parse_uplink_macs(&many)
            .unwrap_err()
            .starts_with("bridge_isolation_uplink_macs: 1025 items"));
        assert!(parse_uplink_macs("").unwrap().is_empty());
    }

    #[test]
    fn trusted_macs() {
        let t = parse_trusted_macs("56:6f:4c:ab:00:04, 56:6f:4c:ab:00:02,56:6f:4c:ab:00:04").unwrap();
        assert_eq!(
            t.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["56:6f:4c:ab:00:02", "56:6f:4c:ab:00:04"]
        );
        assert!(parse_trusted_macs("").unwrap().is_empty());
        assert!(parse_trusted_macs("01:00:5e:00:00:01")
            .unwrap_err()
            .contains("multicast"));
        assert!(parse_trusted_macs("56:6f:4c:ab:00:00/40")
            .unwrap_err()
            .contains("invalid MAC address"));
    }

    #[test]
    fn old_state_entries_read_and_new_ones_round_trip() {
        let old: NetworkPolicy = serde_json::from_str(r#"{"bridge": "red", "uplink": "eth1"}"#).unwrap();
        assert!(old.peer_macs.is_empty() && old.trusted_macs.is_empty());
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"bridge":"red","uplink":"eth1"}"#
        );
        assert!(old.uplink_macs.is_empty());
        // A state file of the release before uplink_macs reads and writes back unchanged.
        let before = r#"{"bridge":"red","uplink":"eth1","peer_macs":["56:6f:4c:ab:00:00-56:6f:4c:ab:ff:ff"],"trusted_macs":["56:6f:4c:ab:00:04"]}"#;
        let new = NetworkPolicy {
            peer_macs: parse_peer_macs("56:6f:4c:ab:00:00/32").unwrap(),
            trusted_macs: parse_trusted_macs("56:6f:4c:ab:00:04").unwrap(),
            ..old.clone()
        };
        let text = serde_json::to_string(&new).unwrap();
        assert_eq!(text, before);
        assert_eq!(serde_json::from_str::<NetworkPolicy>(&text).unwrap(), new);
        let allow = NetworkPolicy {
            uplink_macs: parse_uplink_macs("02:b1:00:00:00:fe").unwrap(),
            ..new
        };
        let text = serde_json::to_string(&allow).unwrap();
        assert!(
            text.ends_with(
                r#""trusted_macs":["56:6f:4c:ab:00:04"],"uplink_macs":["02:b1:00:00:00:fe-02:b1:00:00:00:fe"]}"#
            ),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<NetworkPolicy>(&text).unwrap(), allow);
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
