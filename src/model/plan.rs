//! The plan: each port of each managed bridge and the role the policy gives it, as plain
//! data that the backends enforce and the CLI shows (docs/design.md §5, the life of a port).

use serde::Serialize;

use crate::model::port::Port;

/// What a port of an isolated bridge is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The network's uplink: every VM reaches it.
    Uplink,
    /// A trusted vNIC: reaches and is reached by every VM.
    Trusted,
    /// A VM port (or anything else on the bridge): kept from the other VM ports.
    Vm,
}

impl Role {
    /// True when the port must be kept from the other VM ports.
    pub fn isolated(self) -> bool {
        self == Role::Vm
    }
}

/// A port and the role the policy gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPlan {
    /// The live port.
    pub port: Port,
    /// Its role.
    pub role: Role,
}

/// One bridge of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgePlan {
    /// The oVirt network (empty for a bridge whose isolation was lifted).
    pub network: String,
    /// The Linux bridge.
    pub bridge: String,
    /// Its uplink port, as recorded.
    pub uplink: Option<String>,
    /// False when the bridge does not exist (yet, or any more).
    pub present: bool,
    /// Its ports, by name.
    pub ports: Vec<PortPlan>,
}

/// The desired state of every bridge this host manages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Isolated bridges.
    pub bridges: Vec<BridgePlan>,
    /// Bridges whose isolation was lifted and must be cleared.
    pub lifted: Vec<BridgePlan>,
}

/// A port whose enforcement differs from the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// The bridge.
    pub bridge: String,
    /// The port.
    pub port: String,
    /// Its role.
    pub role: Role,
    /// Whether it should be isolated.
    pub expected: bool,
    /// Whether it is.
    pub actual: bool,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = |b: bool| if b { "isolated" } else { "open" };
        write!(
            f,
            "bridge {} port {} ({:?}) is {} but should be {}",
            self.bridge,
            self.port,
            self.role,
            word(self.actual),
            word(self.expected)
        )
    }
}

/// Plans built by hand, for the unit tests of reconcile and the backends.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A port of `role` with interface index `ifindex` and kernel flag `isolated`.
    pub fn port(name: &str, ifindex: u32, role: Role, isolated: Option<bool>) -> PortPlan {
        PortPlan {
            port: Port {
                name: name.into(),
                ifindex,
                mac: None,
                isolated,
            },
            role,
        }
    }

    /// An isolated bridge named like its network, with uplink eth1.
    pub fn bridge(name: &str, ports: Vec<PortPlan>) -> BridgePlan {
        BridgePlan {
            network: name.into(),
            bridge: name.into(),
            uplink: Some("eth1".into()),
            present: true,
            ports,
        }
    }

    /// Bridge `red`: uplink eth1 (index 4), VM ports vnet1 (7) and vnet2 (9), trusted vnet3 (11).
    pub fn red() -> BridgePlan {
        bridge(
            "red",
            vec![
                port("eth1", 4, Role::Uplink, Some(false)),
                port("vnet1", 7, Role::Vm, Some(false)),
                port("vnet2", 9, Role::Vm, Some(false)),
                port("vnet3", 11, Role::Trusted, Some(false)),
            ],
        )
    }

    /// A plan isolating `bridges`, with nothing lifted.
    pub fn plan(bridges: Vec<BridgePlan>) -> Plan {
        Plan {
            bridges,
            lifted: Vec::new(),
        }
    }
}
