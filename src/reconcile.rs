//! Reconcile: from the recorded policy and the live ports, decide each port's role and make
//! the backend's kernel state equal to it. Idempotent: a second run changes nothing.

use std::collections::{BTreeSet, HashSet};

use serde::Serialize;

use crate::backend::{self, Backend, BackendKind, Change, Observed};
use crate::bridge::{self, Port};
use crate::config::{BackendChoice, Settings};
use crate::error::{Error, Result};
use crate::mac::Mac;
use crate::state::State;

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

/// Reads the live ports of every bridge in `state` and classifies them.
pub fn plan(state: &State) -> Result<Plan> {
    plan_for(state, |_| true)
}

/// Like [`plan`], for the bridges `keep` accepts.
pub fn plan_for(state: &State, keep: impl Fn(&str) -> bool) -> Result<Plan> {
    let trusted_taps: HashSet<Mac> = state.trusted.keys().map(|m| m.tap()).collect();
    let classify = |port: &Port, uplink: Option<&str>| {
        if uplink == Some(port.name.as_str()) {
            Role::Uplink
        } else if port.mac.is_some_and(|m| trusted_taps.contains(&m)) {
            Role::Trusted
        } else {
            Role::Vm
        }
    };
    let bridge_plan = |network: &str, bridge: &str, uplink: Option<&str>| -> Result<BridgePlan> {
        let ports = bridge::ports(bridge)?;
        Ok(BridgePlan {
            network: network.to_string(),
            bridge: bridge.to_string(),
            uplink: uplink.map(str::to_string),
            present: ports.is_some(),
            ports: ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| PortPlan {
                    role: classify(&p, uplink),
                    port: p,
                })
                .collect(),
        })
    };
    let mut plan = Plan::default();
    for (network, policy) in &state.networks {
        if keep(&policy.bridge) {
            plan.bridges
                .push(bridge_plan(network, &policy.bridge, policy.uplink.as_deref())?);
        }
    }
    for bridge in state.released.iter().filter(|b| !state.is_isolated(b) && keep(b)) {
        plan.lifted.push(bridge_plan("", bridge, None)?);
    }
    Ok(plan)
}

/// Ports where what the backend enforces differs from the plan.
pub fn drift(plan: &Plan, observed: &[Observed]) -> Vec<Drift> {
    let isolated: BTreeSet<(&str, &str)> = observed
        .iter()
        .filter(|o| o.isolated)
        .map(|o| (o.bridge.as_str(), o.port.as_str()))
        .collect();
    plan.bridges
        .iter()
        .flat_map(|b| b.ports.iter().map(move |p| (b, p)))
        .filter_map(|(b, p)| {
            let actual = isolated.contains(&(b.bridge.as_str(), p.port.name.as_str()));
            (actual != p.role.isolated()).then(|| Drift {
                bridge: b.bridge.clone(),
                port: p.port.name.clone(),
                role: p.role,
                expected: p.role.isolated(),
                actual,
            })
        })
        .collect()
}

/// Opens the backend the settings ask for; with `auto`, the first this host supports.
pub fn select_backend(settings: &Settings) -> Result<Box<dyn Backend>> {
    match settings.backend {
        BackendChoice::Fixed(kind) => {
            let backend = backend::open(kind)?;
            backend.available()?;
            Ok(backend)
        }
        BackendChoice::Auto => {
            let mut reasons = Vec::new();
            for kind in BackendKind::ALL {
                match backend::open(kind).and_then(|b| b.available().map(|_| b)) {
                    Ok(b) => {
                        log::debug!("backend auto: chose {kind}");
                        return Ok(b);
                    }
                    Err(e) => reasons.push(format!("{kind}: {e}")),
                }
            }
            Err(Error::Config(format!(
                "no backend is usable on this host ({})",
                reasons.join("; ")
            )))
        }
    }
}

/// What a reconcile did.
#[derive(Debug)]
pub struct Outcome {
    /// The backend that did the work; `None` when there was nothing to do.
    pub backend: Option<BackendKind>,
    /// Ports changed, in order.
    pub changes: Vec<Change>,
}

/// Makes the kernel match `state`, recording in it which backend did the work and
/// forgetting lifted bridges once cleared. The caller holds the state lock.
pub fn run(state: &mut State, settings: &Settings) -> Result<Outcome> {
    if state.networks.is_empty() && state.released.is_empty() {
        // Nothing is or was isolated: a host that never uses the property is never
        // touched, and a backend it cannot run never fails its network setups.
        return Ok(Outcome {
            backend: state.backend,
            changes: Vec::new(),
        });
    }
    let mut backend = select_backend(settings)?;
    let kind = backend.kind();
    let mut changes = Vec::new();
    let mut plan = plan(state)?;
    if let Some(previous) = state.backend.filter(|&p| p != kind) {
        log::info!("backend changes from {previous} to {kind}: removing {previous}'s enforcement");
        let everything: Vec<BridgePlan> = plan.bridges.iter().chain(&plan.lifted).cloned().collect();
        changes.extend(backend::open(previous)?.remove(&everything)?);
        plan = self::plan(state)?;
    }
    changes.extend(backend.apply(&plan)?);
    changes.extend(backend.remove(&plan.lifted)?);
    state.released.clear();
    state.backend = Some(kind);
    for c in &changes {
        log::info!(
            "{kind}: bridge {} port {} {}",
            c.bridge,
            c.port,
            if c.isolated { "isolated" } else { "opened" }
        );
    }
    if !changes.is_empty() {
        let after = self::plan(state)?;
        let left = drift(&after, &backend.observe(&after)?);
        if !left.is_empty() {
            let list: Vec<String> = left.iter().map(ToString::to_string).collect();
            return Err(Error::Kernel(format!(
                "still drifting after reconcile: {}",
                list.join("; ")
            )));
        }
    }
    Ok(Outcome {
        backend: Some(kind),
        changes,
    })
}
