//! The backends this project knows, and what a backend reports of the ports it enforces.

use serde::{Deserialize, Serialize};

/// The backends this project knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// The kernel's bridge port `isolated` flag (default).
    PortIsolation,
    /// A table of our own in the nftables `bridge` family.
    Nftables,
    /// br_netfilter with iptables/ip6tables physdev rules (the classic recipe, fixed).
    Iptables,
    /// firewalld direct rules in the `eb` family, runtime and permanent.
    Firewalld,
}

impl BackendKind {
    /// Every backend, in order of preference.
    pub const ALL: [BackendKind; 4] = [
        BackendKind::PortIsolation,
        BackendKind::Nftables,
        BackendKind::Firewalld,
        BackendKind::Iptables,
    ];

    /// The name used in the config file, the environment and the state file.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::PortIsolation => "port-isolation",
            BackendKind::Nftables => "nftables",
            BackendKind::Iptables => "iptables",
            BackendKind::Firewalld => "firewalld",
        }
    }

    /// The backend called `name`.
    pub fn from_name(name: &str) -> Option<BackendKind> {
        BackendKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// True for the backends that speak to firewalld over D-Bus (firewalld's direct rules;
    /// iptables, which must know firewalld's backend): the hook binary leaves them to
    /// `bridge-isolation` (docs/design.md §6.1).
    pub fn needs_daemon(self) -> bool {
        matches!(self, BackendKind::Iptables | BackendKind::Firewalld)
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One port whose enforcement a backend changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The bridge.
    pub bridge: String,
    /// The port.
    pub port: String,
    /// True when the port is now kept from the other VM ports.
    pub isolated: bool,
}

/// What a backend enforces on one port right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The bridge.
    pub bridge: String,
    /// The port.
    pub port: String,
    /// True when the port is kept from the other VM ports.
    pub isolated: bool,
}

/// Frames a backend dropped between the VM ports of one bridge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DropCounter {
    /// Frames dropped.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
}
