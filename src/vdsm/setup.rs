//! The `setupNetworks` JSON payload of the network hook points.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::ifname;
use crate::model::mac::Mac;
use crate::model::policy::{
    self, MacRange, NetworkChange, NetworkPolicy, PROP_ISOLATION, PROP_PEER_MACS, PROP_TRUSTED_MACS, PROP_UPLINK_MACS,
};

/// The networks of one setup request, each with what it asks of isolation.
#[derive(Debug, PartialEq, Eq)]
pub struct SetupRequest {
    /// Network name and requested change, in name order.
    pub networks: Vec<(String, NetworkChange)>,
    /// Set by `vdsm-tool restore-nets` and rollbacks (`_inRollback`).
    pub in_rollback: bool,
}

impl SetupRequest {
    /// A fingerprint of what the request asks of isolation: its networks, in order, and
    /// each one's change (FNV-1a, 64 bits, of their JSON). Key order and attributes that
    /// do not matter to isolation (VDSM canonicalizes the request it hands
    /// `after_network_setup_fail`) leave it unchanged.
    pub fn fingerprint(&self) -> String {
        let text = serde_json::to_vec(&self.networks).expect("changes serialize");
        let hash = text.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{hash:016x}")
    }
}

#[derive(Deserialize)]
struct Payload {
    request: Request,
}

#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    networks: BTreeMap<String, BTreeMap<String, Value>>,
    #[serde(default)]
    options: BTreeMap<String, Value>,
}

/// Parses the payload and validates every network that asks for isolation.
///
/// Any network that cannot be honoured makes the whole request fail: nothing is applied.
pub fn parse(bytes: &[u8]) -> Result<SetupRequest> {
    let text = std::str::from_utf8(bytes).map_err(|e| Error::payload("not UTF-8", e))?;
    if text.trim().is_empty() {
        return Err(Error::Payload("empty setupNetworks JSON".into()));
    }
    let payload: Payload = serde_json::from_str(text).map_err(|e| Error::payload("invalid setupNetworks JSON", e))?;
    let in_rollback = payload.request.options.get("_inRollback").is_some_and(truthy);
    let networks = payload
        .request
        .networks
        .iter()
        .map(|(name, attrs)| Ok((name.clone(), change(name, attrs)?)))
        .collect::<Result<_>>()?;
    Ok(SetupRequest { networks, in_rollback })
}

fn truthy(v: &Value) -> bool {
    matches!(v, Value::Bool(true)) || matches!(v.as_str(), Some("true" | "True"))
}

/// What one network's setupNetworks attributes ask of isolation, validated (also what VDSM
/// keeps of each network in its running config, see [`crate::app::recover`]).
pub fn change(network: &str, attrs: &BTreeMap<String, Value>) -> Result<NetworkChange> {
    // The name comes from the payload: quoted (escaped) in messages unless it is a sane one.
    let label = match ifname::validate(network) {
        Ok(()) => network.to_string(),
        Err(_) => ifname::quoted(network),
    };
    let reject = |reason: String| Error::Policy {
        network: label.clone(),
        reason,
    };
    if attrs.get("remove").is_some_and(truthy) {
        return Ok(NetworkChange::Lift);
    }
    let custom = match attrs.get("custom") {
        None | Some(Value::Null) => None,
        Some(Value::Object(custom)) => Some(custom),
        Some(_) => return Err(reject("custom is not an object".into())),
    };
    let wanted = custom.and_then(|c| c.get(PROP_ISOLATION)).cloned();
    // The cross-host properties are ours whatever bridge_isolation says: a bad value is
    // rejected even on a network that is not (yet) isolated, so a typo never lies dormant.
    let text_prop = |key: &str| -> Result<Option<&str>> {
        match custom.and_then(|c| c.get(key)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(reject(format!(
                "{key}: invalid value {}",
                ifname::cut(&other.to_string())
            ))),
        }
    };
    let peer_macs = match text_prop(PROP_PEER_MACS)? {
        Some(v) => policy::parse_peer_macs(v).map_err(&reject)?,
        None => Vec::new(),
    };
    let trusted_macs = match text_prop(PROP_TRUSTED_MACS)? {
        Some(v) => policy::parse_trusted_macs(v).map_err(&reject)?,
        None => Vec::new(),
    };
    let uplink_macs = match text_prop(PROP_UPLINK_MACS)? {
        Some(v) => policy::parse_uplink_macs(v).map_err(&reject)?,
        None => Vec::new(),
    };
    let isolate = match wanted {
        None => false,
        Some(Value::String(s)) => policy::parse_flag(&s).map_err(|e| reject(format!("{PROP_ISOLATION}: {e}")))?,
        Some(other) => {
            return Err(reject(format!(
                "{PROP_ISOLATION}: invalid value {}",
                ifname::cut(&other.to_string())
            )))
        }
    };
    if !isolate {
        if !peer_macs.is_empty() || !trusted_macs.is_empty() || !uplink_macs.is_empty() {
            log::warn!(
                "network {label}: {PROP_PEER_MACS}/{PROP_TRUSTED_MACS}/{PROP_UPLINK_MACS} ignored: they act only with {PROP_ISOLATION}=true"
            );
        }
        return Ok(NetworkChange::Lift);
    }
    policy::validate_network_name(network)?;
    if !attrs.get("bridged").is_none_or(truthy_or_default_true) {
        return Err(reject(format!("{PROP_ISOLATION}=true needs a bridged network")));
    }
    if let Some(switch) = attrs.get("switch").and_then(Value::as_str) {
        if switch != "legacy" {
            return Err(reject(format!(
                "{PROP_ISOLATION}=true is for Linux bridge networks, not switch type {}",
                ifname::quoted(switch)
            )));
        }
    }
    let text = |key: &str| -> Result<Option<&str>> {
        match attrs.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(other) => Err(reject(format!("invalid {key} {}", ifname::cut(&other.to_string())))),
        }
    };
    let vlan = match attrs.get("vlan") {
        None | Some(Value::Null) => None,
        Some(v) => Some(vlan_id(v).ok_or_else(|| reject(format!("invalid vlan {}", ifname::cut(&v.to_string()))))?),
    };
    let uplink = policy::uplink_name(network, text("nic")?, text("bonding")?, vlan)?;
    if uplink.is_none() && !peer_macs.is_empty() {
        log::warn!("network {label}: {PROP_PEER_MACS} ignored: the network has no uplink");
    }
    if uplink.is_none() && !uplink_macs.is_empty() {
        log::warn!("network {label}: {PROP_UPLINK_MACS} ignored: the network has no uplink");
    }
    if let Some(mac) = allowed_but_peer(&uplink_macs, &peer_macs, &trusted_macs) {
        log::warn!(
            "network {label}: {mac} is in {PROP_UPLINK_MACS} and in {PROP_PEER_MACS} but not in {PROP_TRUSTED_MACS}: the peer filter still drops it"
        );
    }
    Ok(NetworkChange::Isolate(NetworkPolicy {
        bridge: network.to_string(),
        uplink,
        peer_macs,
        trusted_macs,
        uplink_macs,
    }))
}

/// The first MAC both allowed from the uplink and in a peer range without being a trusted
/// MAC: both filters apply, so the peer filter still drops it (worth a warning).
fn allowed_but_peer(allowed: &[MacRange], peers: &[MacRange], trusted: &[Mac]) -> Option<Mac> {
    let trusted: Vec<u64> = trusted.iter().map(|&m| policy::mac_to_u64(m)).collect();
    for a in allowed {
        for p in peers {
            let (first, last) = (a.bounds().0.max(p.bounds().0), a.bounds().1.min(p.bounds().1));
            // Trusted MACs are sorted: the first gap among them inside the overlap.
            let mut at = first;
            for &t in trusted.iter().filter(|&&t| (first..=last).contains(&t)) {
                if t != at {
                    break;
                }
                at += 1;
            }
            if first <= last && at <= last {
                return Some(policy::mac_from_u64(at));
            }
        }
    }
    None
}

fn truthy_or_default_true(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => !matches!(s.as_str(), "false" | "False"),
        _ => true,
    }
}

fn vlan_id(v: &Value) -> Option<u16> {
    let id = match v {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    (id <= 4094).then_some(id as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    const REQUEST: &str = r#"{"request": {"networks": {
        "red": {"nic": "eth1", "vlan": 100, "bridged": true, "mtu": 1500, "stp": false,
                "switch": "legacy", "bootproto": "none", "defaultRoute": false,
                "ipv6autoconf": false, "dhcpv6": false,
                "custom": {"bridge_isolation": "true"}},
        "blue": {"bonding": "bond0", "bridged": true, "switch": "legacy",
                 "custom": {"bridge_isolation": "false", "other": "x"}},
        "ovirtmgmt": {"nic": "eth0", "bridged": true, "bootproto": "dhcp", "defaultRoute": true},
        "gone": {"remove": true}
      },
      "bondings": {"bond0": {"nics": ["eth2", "eth3"], "options": "mode=4"}},
      "options": {"connectivityCheck": "true", "connectivityTimeout": 120, "commitOnSuccess": true}}}"#;

    #[test]
    fn parses_a_realistic_request() {
        let r = parse(REQUEST.as_bytes()).unwrap();
        assert!(!r.in_rollback);
        let red = NetworkChange::Isolate(NetworkPolicy {
            bridge: "red".into(),
            uplink: Some("eth1.100".into()),
            ..NetworkPolicy::default()
        });
        assert_eq!(
            r.networks,
            vec![
                ("blue".into(), NetworkChange::Lift),
                ("gone".into(), NetworkChange::Lift),
                ("ovirtmgmt".into(), NetworkChange::Lift),
                ("red".into(), red),
            ]
        );
    }

    #[test]
    fn the_fingerprint_follows_what_isolation_sees() {
        let a = parse(REQUEST.as_bytes()).unwrap();
        // Canonicalized: keys reordered, defaults spelled out, VLAN as a string.
        let canonical = REQUEST
            .replace(r#""vlan": 100"#, r#""vlan": "100", "ipv6gateway": "::""#)
            .replace(
                r#""gone": {"remove": true}"#,
                r#""gone": {"remove": true, "bridged": true}"#,
            );
        let b = parse(canonical.as_bytes()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        // Another request (red untagged) is another fingerprint.
        let other = parse(
            REQUEST
                .replace(r#""bridge_isolation": "true""#, r#""bridge_isolation": "false""#)
                .as_bytes(),
        )
        .unwrap();
        assert_ne!(a.fingerprint(), other.fingerprint());
        let moved = parse(REQUEST.replace(r#""nic": "eth1""#, r#""nic": "eth2""#).as_bytes()).unwrap();
        assert_ne!(a.fingerprint(), moved.fingerprint());
    }

    #[test]
    fn restore_nets_is_a_rollback() {
        let p = r#"{"request": {"networks": {"red": {"bonding": "bond0", "custom": {"bridge_isolation": "true"}}},
            "bondings": {}, "options": {"connectivityCheck": false, "_inRollback": true}}}"#;
        let r = parse(p.as_bytes()).unwrap();
        assert!(r.in_rollback);
        assert_eq!(
            r.networks[0].1,
            NetworkChange::Isolate(NetworkPolicy {
                bridge: "red".into(),
                uplink: Some("bond0".into()),
                ..NetworkPolicy::default()
            })
        );
    }

    fn reject(attrs: &str) -> String {
        let p = format!(r#"{{"request": {{"networks": {{"red": {attrs}}}}}}}"#);
        parse(p.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn rejects_what_cannot_be_honoured() {
        assert!(reject(r#"{"nic": "eth1", "custom": {"bridge_isolation": "yes"}}"#)
            .contains("network red: bridge_isolation: invalid value \"yes\""));
        assert!(
            reject(r#"{"nic": "eth1", "bridged": false, "custom": {"bridge_isolation": "true"}}"#)
                .contains("needs a bridged network")
        );
        assert!(
            reject(r#"{"nic": "eth1", "switch": "ovs", "custom": {"bridge_isolation": "true"}}"#)
                .contains("not switch type \"ovs\"")
        );
        assert!(
            reject(r#"{"nic": "eth1", "vlan": 5000, "custom": {"bridge_isolation": "true"}}"#).contains("invalid vlan")
        );
        assert!(reject(r#"{"nic": "eth 1", "custom": {"bridge_isolation": "true"}}"#).contains("contains ' '"));
    }

    #[test]
    fn untagged_networks_are_not_validated_beyond_their_name() {
        let p = r#"{"request": {"networks": {"ovs1": {"nic": "eth1", "switch": "ovs", "bridged": false}}}}"#;
        assert_eq!(
            parse(p.as_bytes()).unwrap().networks,
            vec![("ovs1".into(), NetworkChange::Lift)]
        );
    }

    #[test]
    fn hostile_names_are_quoted_and_cut_in_messages() {
        let p = |name: &str, attrs: &str| {
            let v = serde_json::json!({"request": {"networks": {name: serde_json::from_str::<Value>(attrs).unwrap()}}});
            parse(v.to_string().as_bytes()).unwrap_err().to_string()
        };
        let tagged = r#"{"nic": "eth1", "custom": {"bridge_isolation": "true"}}"#;
        assert_eq!(
            p("r\nforged", tagged),
            "network \"r\\nforged\": interface name \"r\\nforged\" contains '\\n'"
        );
        let long = "x".repeat(10_000);
        let msg = p(&long, tagged);
        assert!(msg.len() < 200 && msg.contains("(10000 bytes)"), "{msg}");
        let msg = p(
            "red",
            &format!(r#"{{"nic": "eth1", "custom": {{"bridge_isolation": "{long}"}}}}"#),
        );
        assert!(
            msg.len() < 200 && msg.starts_with("network red: bridge_isolation: invalid value"),
            "{msg}"
        );
        // Untagged networks are not ours to judge, whatever their names.
        let v =
            serde_json::json!({"request": {"networks": {"../x y": {"remove": true}, long.clone(): {"nic": "a b"}}}});
        assert_eq!(parse(v.to_string().as_bytes()).unwrap().networks.len(), 2);
    }

    #[test]
    fn cross_host_properties_are_recorded() {
        let p = r#"{"request": {"networks": {"red": {"nic": "eth1", "custom": {"bridge_isolation": "true",
            "bridge_isolation_peer_macs": "56:6f:4c:ab:00:00/32, 56:6f:4c:ac:01:00-56:6f:4c:ac:01:ff",
            "bridge_isolation_trusted_macs": "56:6f:4c:ab:00:04"}}}}}"#;
        let NetworkChange::Isolate(red) = &parse(p.as_bytes()).unwrap().networks[0].1 else {
            panic!("not isolated");
        };
        let ranges: Vec<String> = red.peer_macs.iter().map(ToString::to_string).collect();
        assert_eq!(
            ranges,
            [
                "56:6f:4c:ab:00:00-56:6f:4c:ab:ff:ff",
                "56:6f:4c:ac:01:00-56:6f:4c:ac:01:ff"
            ]
        );
        assert_eq!(red.trusted_macs, ["56:6f:4c:ab:00:04".parse().unwrap()]);
        // Empty values (the engine may send them) are no ranges.
        let p = r#"{"request": {"networks": {"red": {"nic": "eth1", "custom": {"bridge_isolation": "true",
            "bridge_isolation_peer_macs": ""}}}}}"#;
        assert_eq!(
            parse(p.as_bytes()).unwrap().networks[0].1,
            NetworkChange::Isolate(NetworkPolicy {
                bridge: "red".into(),
                uplink: Some("eth1".into()),
                ..NetworkPolicy::default()
            })
        );
    }

    #[test]
    fn bad_cross_host_values_are_rejected_in_one_line() {
        let msg = reject(
            r#"{"nic": "eth1", "custom": {"bridge_isolation": "true", "bridge_isolation_peer_macs": "56:6f:4c:ab:00:00/33x"}}"#,
        );
        assert_eq!(
            msg,
            "network red: bridge_isolation_peer_macs: invalid prefix length in \"56:6f:4c:ab:00:00/33x\" (1 to 48)"
        );
        let msg = reject(
            r#"{"nic": "eth1", "custom": {"bridge_isolation": "true", "bridge_isolation_trusted_macs": "56:6f:4c:ab:00:04,router"}}"#,
        );
        assert_eq!(
            msg,
            "network red: bridge_isolation_trusted_macs: invalid MAC address \"router\""
        );
        // Validated even where isolation is off: the property is ours.
        let msg = reject(r#"{"nic": "eth1", "custom": {"bridge_isolation_peer_macs": "nope"}}"#);
        assert!(
            msg.starts_with("network red: bridge_isolation_peer_macs: invalid MAC address"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        // Off with valid values: nothing to do.
        let p = r#"{"request": {"networks": {"red": {"nic": "eth1", "custom": {"bridge_isolation": "false",
            "bridge_isolation_peer_macs": "56:6f:4c:ab:00:00/32"}}}}}"#;
        assert_eq!(parse(p.as_bytes()).unwrap().networks[0].1, NetworkChange::Lift);
    }

    #[test]
    fn uplink_macs_are_validated_and_recorded() {
        let p = r#"{"request": {"networks": {"red": {"nic": "eth1", "custom": {"bridge_isolation": "true",
            "bridge_isolation_uplink_macs": "02:b1:00:00:00:fe, 52:54:00:00:00:00/24"}}}}}"#;
        let NetworkChange::Isolate(red) = &parse(p.as_bytes()).unwrap().networks[0].1 else {
            panic!("not isolated");
        };
        let allowed: Vec<String> = red.uplink_macs.iter().map(ToString::to_string).collect();
        assert_eq!(
            allowed,
            [
                "02:b1:00:00:00:fe-02:b1:00:00:00:fe",
                "52:54:00:00:00:00-52:54:00:ff:ff:ff"
            ]
        );
        assert_eq!(
            reject(
                r#"{"nic": "eth1", "custom": {"bridge_isolation": "true", "bridge_isolation_uplink_macs": "gateway"}}"#
            ),
            "network red: bridge_isolation_uplink_macs: invalid MAC address \"gateway\""
        );
        // Validated with isolation off or absent, ignored when valid.
        for flag in [r#""bridge_isolation": "false", "#, ""] {
            let msg = reject(&format!(
                r#"{{"nic": "eth1", "custom": {{{flag}"bridge_isolation_uplink_macs": "02:b1:00:00:00:fe/44"}}}}"#
            ));
            assert_eq!(
                msg,
                "network red: bridge_isolation_uplink_macs: MAC prefix \"02:b1:00:00:00:fe/44\" has bits set after the first 44"
            );
        }
        let p = r#"{"request": {"networks": {"red": {"nic": "eth1", "custom": {"bridge_isolation": "false",
            "bridge_isolation_uplink_macs": "02:b1:00:00:00:fe"}}}}}"#;
        assert_eq!(parse(p.as_bytes()).unwrap().networks[0].1, NetworkChange::Lift);
        let p = r#"{"request": {"networks": {"red": {"nic": "eth1", "custom": {"bridge_isolation": "true",
            "bridge_isolation_uplink_macs": 5}}}}}"#;
        assert!(parse(p.as_bytes())
            .unwrap_err()
            .to_string()
            .starts_with("network red: bridge_isolation_uplink_macs: invalid value 5"));
    }

    #[test]
    fn finds_allowed_sources_the_peer_filter_still_drops() {
        let r = |v: &str| policy::parse_uplink_macs(v).unwrap();
        let t = |v: &str| policy::parse_trusted_macs(v).unwrap();
        let peers = r("56:6f:4c:ab:00:00/40");
        assert_eq!(allowed_but_peer(&r("02:b1:00:00:00:fe"), &peers, &[]), None);
        assert_eq!(
            allowed_but_peer(&r("56:6f:4c:ab:00:04"), &peers, &[]),
            Some("56:6f:4c:ab:00:04".parse().unwrap())
        );
        assert_eq!(
            allowed_but_peer(&r("56:6f:4c:ab:00:04"), &peers, &t("56:6f:4c:ab:00:04")),
            None
        );
        assert_eq!(
            allowed_but_peer(
                &r("56:6f:4c:ab:00:04-56:6f:4c:ab:00:06"),
                &peers,
                &t("56:6f:4c:ab:00:04,56:6f:4c:ab:00:05")
            ),
            Some("56:6f:4c:ab:00:06".parse().unwrap())
        );
    }

    #[test]
    fn rejects_broken_payloads() {
        for bad in ["", "{", "[]", "{\"request\": 1}", "{\"request\": {\"networks\": []}}"] {
            assert_eq!(parse(bad.as_bytes()).unwrap_err().kind(), Kind::Payload, "{bad:?}");
        }
        assert_eq!(parse(b"\xff\xfe").unwrap_err().kind(), Kind::Payload);
        let long = r#"{"request": {"networks": {"a234567890abcdef": {"nic": "eth1", "custom": {"bridge_isolation": "true"}}}}}"#;
        assert_eq!(parse(long.as_bytes()).unwrap_err().kind(), Kind::Policy);
    }
}
