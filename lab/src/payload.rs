//! Realistic VDSM network payloads (docs/design.md §2): the setupNetworks JSON of
//! `before/after_network_setup`, and its `vdsm-tool restore-nets` variant.

use serde_json::{json, Map, Value};

/// Network custom property that isolates a network's bridge.
pub const ISOLATION_PROPERTY: &str = "bridge_isolation";

/// Attributes of one network in a setupNetworks request (a bridged legacy network).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetSpec {
    /// Uplink NIC (`"nic"`), unless `bonding` is set.
    pub nic: Option<String>,
    /// Uplink bond (`"bonding"`).
    pub bonding: Option<String>,
    /// VLAN id; the uplink port is then `<nic|bonding>.<vlan>`.
    pub vlan: Option<u16>,
    /// MTU.
    pub mtu: u32,
    /// Whether STP is on.
    pub stp: bool,
    /// Network custom properties; the `custom` key appears only when non-empty.
    pub custom: Vec<(String, String)>,
    /// A removal: rendered as exactly `{"remove": true}`.
    pub remove: bool,
}

impl NetSpec {
    /// A bridged network on NIC `nic`, MTU 1500, no STP, no properties.
    pub fn on_nic(nic: &str) -> NetSpec {
        NetSpec {
            nic: Some(nic.to_string()),
            mtu: 1500,
            ..NetSpec::default()
        }
    }

    /// A bridged network on bond `bond`, MTU 1500, no STP, no properties.
    pub fn on_bond(bond: &str) -> NetSpec {
        NetSpec {
            bonding: Some(bond.to_string()),
            mtu: 1500,
            ..NetSpec::default()
        }
    }

    /// The removal of a network: `{"remove": true}`.
    pub fn removed() -> NetSpec {
        NetSpec {
            remove: true,
            ..NetSpec::default()
        }
    }

    /// This network on VLAN `vlan`.
    pub fn with_vlan(mut self, vlan: u16) -> NetSpec {
        self.vlan = Some(vlan);
        self
    }

    /// This network with custom property `key` = `value`.
    pub fn with_custom(mut self, key: &str, value: &str) -> NetSpec {
        self.custom.push((key.to_string(), value.to_string()));
        self
    }

    /// This network with `bridge_isolation` = `value` (`"true"`, `"false"`, or anything).
    pub fn with_isolation(self, value: &str) -> NetSpec {
        self.with_custom(ISOLATION_PROPERTY, value)
    }

    /// The bridge port VDSM makes the uplink: `nic`, `bonding`, or either `.vlan`.
    pub fn uplink(&self) -> Option<String> {
        let base = self.nic.as_ref().or(self.bonding.as_ref())?;
        Some(match self.vlan {
            Some(vlan) => format!("{base}.{vlan}"),
            None => base.clone(),
        })
    }

    /// The attribute object VDSM passes for this network.
    pub fn attrs(&self) -> Value {
        if self.remove {
            return json!({ "remove": true });
        }
        let mut attrs = Map::new();
        if let Some(bond) = &self.bonding {
            attrs.insert("bonding".into(), json!(bond));
        } else if let Some(nic) = &self.nic {
            attrs.insert("nic".into(), json!(nic));
        }
        if let Some(vlan) = self.vlan {
            attrs.insert("vlan".into(), json!(vlan));
        }
        attrs.insert("bridged".into(), json!(true));
        attrs.insert("mtu".into(), json!(self.mtu));
        attrs.insert("stp".into(), json!(self.stp));
        attrs.insert("switch".into(), json!("legacy"));
        attrs.insert("bootproto".into(), json!("none"));
        attrs.insert("defaultRoute".into(), json!(false));
        attrs.insert("ipv6autoconf".into(), json!(false));
        attrs.insert("dhcpv6".into(), json!(false));
        if !self.custom.is_empty() {
            let custom: Map<String, Value> = self.custom.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            attrs.insert("custom".into(), Value::Object(custom));
        }
        Value::Object(attrs)
    }
}

/// The `before/after_network_setup` payload of an engine setupNetworks call.
pub fn setup_networks_json(networks: &[(&str, NetSpec)]) -> String {
    let options = json!({
        "connectivityCheck": "true",
        "connectivityTimeout": 120,
        "commitOnSuccess": true,
    });
    request(networks, options)
}

/// The payload `vdsm-tool restore-nets` gives at boot (VDSM sends one network per call).
pub fn restore_nets_json(networks: &[(&str, NetSpec)]) -> String {
    request(networks, json!({ "connectivityCheck": false, "_inRollback": true }))
}

/// `{"request": {"networks": ..., "bondings": {}, "options": ...}}`.
fn request(networks: &[(&str, NetSpec)], options: Value) -> String {
    let nets: Map<String, Value> = networks
        .iter()
        .map(|(name, spec)| (name.to_string(), spec.attrs()))
        .collect();
    json!({ "request": { "networks": nets, "bondings": {}, "options": options } }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_networks_json_has_vdsm_shape() {
        let nets = [
            ("isonet", NetSpec::on_nic("eth1").with_vlan(100).with_isolation("true")),
            ("plain", NetSpec::on_bond("bond0")),
            ("gone", NetSpec::removed()),
        ];
        let v: Value = serde_json::from_str(&setup_networks_json(&nets)).unwrap();
        let req = &v["request"];
        assert_eq!(req["bondings"], json!({}));
        assert_eq!(req["options"]["connectivityCheck"], json!("true"));
        assert_eq!(req["options"]["connectivityTimeout"], json!(120));
        assert_eq!(req["options"]["commitOnSuccess"], json!(true));
        let iso = &req["networks"]["isonet"];
        assert_eq!(iso["nic"], json!("eth1"));
        assert_eq!(iso["vlan"], json!(100));
        assert_eq!(iso["bridged"], json!(true));
        assert_eq!(iso["mtu"], json!(1500));
        assert_eq!(iso["stp"], json!(false));
        assert_eq!(iso["switch"], json!("legacy"));
        assert_eq!(iso["custom"], json!({"bridge_isolation": "true"}));
        let plain = &req["networks"]["plain"];
        assert_eq!(plain["bonding"], json!("bond0"));
        assert!(plain.get("custom").is_none() && plain.get("nic").is_none());
        assert!(plain.get("vlan").is_none());
        assert_eq!(req["networks"]["gone"], json!({"remove": true}));
        assert_eq!(nets[0].1.uplink().as_deref(), Some("eth1.100"));
        assert_eq!(nets[1].1.uplink().as_deref(), Some("bond0"));
        assert_eq!(nets[2].1.uplink(), None);
    }

    #[test]
    fn restore_nets_json_has_rollback_options() {
        let nets = [("isonet", NetSpec::on_nic("eth1").with_isolation("true"))];
        let v: Value = serde_json::from_str(&restore_nets_json(&nets)).unwrap();
        assert_eq!(
            v["request"]["options"],
            json!({"connectivityCheck": false, "_inRollback": true})
        );
        assert_eq!(v["request"]["networks"]["isonet"]["nic"], json!("eth1"));
    }
}
