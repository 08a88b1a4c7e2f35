//! Enforcement backends behind one trait: each makes the kernel keep a [`Plan`]'s VM ports apart.

mod port_isolation;

use serde::{Deserialize, Serialize};

pub use port_isolation::PortIsolation;

use crate::error::{Error, Result};
use crate::reconcile::{BridgePlan, Plan};

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

/// An enforcement mechanism.
pub trait Backend {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Whether this host's kernel and tools can run it.
    fn available(&self) -> Result<()>;

    /// What the backend enforces now on the ports of the planned bridges.
    fn observe(&mut self, plan: &Plan) -> Result<Vec<Observed>>;

    /// Makes the kernel enforce `plan`: VM ports isolated, uplinks and trusted vNICs open.
    fn apply(&mut self, plan: &Plan) -> Result<Vec<Change>>;

    /// Removes everything this backend enforces on `bridges` (isolation lifted or handed over).
    fn remove(&mut self, bridges: &[BridgePlan]) -> Result<Vec<Change>>;
}

/// Opens the backend of that kind.
pub fn open(kind: BackendKind) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::PortIsolation => Ok(Box::new(PortIsolation::new())),
        other => Err(Error::Config(format!(
            "backend {other} is not available in this build; use port-isolation"
        ))),
    }
}
