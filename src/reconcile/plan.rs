//! The plan: each live port of a managed bridge and its role (docs/design.md §6.3), and
//! where what a backend enforces differs from it.

use std::collections::BTreeSet;

use crate::error::Result;
use crate::host::state::State;
use crate::host::trust::TrustedSet;
use crate::model::backend::{BackendKind, Observed};
use crate::model::plan::{BridgePlan, Drift, Plan, PortPlan, Role};
use crate::model::port::{Port, Snapshot};
use crate::sys::bridge;

/// Reads the live ports of every bridge in `state` and classifies them.
pub fn plan(state: &State) -> Result<Plan> {
    plan_for(state, |_| true)
}

/// Like [`plan`], for the bridges `keep` accepts. The ports of all of them come from one
/// [`Snapshot`], read only when there is a bridge to plan.
pub fn plan_for(state: &State, keep: impl Fn(&str) -> bool) -> Result<Plan> {
    if !has_bridges(state, &keep) {
        return Ok(Plan::default());
    }
    Ok(plan_with(state, &bridge::snapshot()?, keep))
}

/// True when `state` has an isolated or lifted bridge that `keep` accepts.
fn has_bridges(state: &State, keep: &impl Fn(&str) -> bool) -> bool {
    state.networks.values().any(|p| keep(&p.bridge)) || state.released.iter().any(|b| !state.is_isolated(b) && keep(b))
}

/// Like [`plan_for`], on ports already read. A port is the uplink when it is the recorded
/// uplink or, while a setup moves the network to another one, the uplink it moves from
/// ([`State::former_uplinks`]); trusted when the host proved it is a trusted vNIC's tap
/// ([`TrustedSet`]); a VM port otherwise.
pub fn plan_with(state: &State, live: &Snapshot, keep: impl Fn(&str) -> bool) -> Plan {
    let trusted = TrustedSet::of(state, live);
    let former = state.former_uplinks();
    let classify = |port: &Port, bridge: &str, uplink: Option<&str>| {
        if uplink == Some(port.name.as_str()) || former.get(bridge) == Some(&port.name.as_str()) {
            Role::Uplink
        } else if trusted.contains(port) {
            Role::Trusted
        } else {
            Role::Vm
        }
    };
    let bridge_plan = |network: &str, bridge: &str, uplink: Option<&str>| {
        let ports = live.ports(bridge);
        BridgePlan {
            network: network.to_string(),
            bridge: bridge.to_string(),
            uplink: uplink.map(str::to_string),
            present: ports.is_some(),
            ports: ports
                .unwrap_or_default()
                .iter()
                .map(|p| PortPlan {
                    role: classify(p, bridge, uplink),
                    port: p.clone(),
                })
                .collect(),
        }
    };
    Plan {
        bridges: state
            .networks
            .iter()
            .filter(|(_, policy)| keep(&policy.bridge))
            .map(|(network, policy)| bridge_plan(network, &policy.bridge, policy.uplink.as_deref()))
            .collect(),
        lifted: state
            .released
            .iter()
            .filter(|b| !state.is_isolated(b) && keep(b))
            .map(|bridge| bridge_plan("", bridge, None))
            .collect(),
    }
}

/// The watcher's check before it takes the lock: true when the port-isolation backend did
/// the last run, nothing is blocked or left to lift, and every port of `bridges` that
/// `state` isolates has the flag its role wants in `live`. Anything else (another backend,
/// a flag that differs) is for a run under the lock to decide.
pub fn flags_agree(state: &State, live: &Snapshot, bridges: &BTreeSet<String>) -> bool {
    if state.backend != Some(BackendKind::PortIsolation) || !state.blocked.is_empty() || !state.released.is_empty() {
        return false;
    }
    plan_with(state, live, |b| bridges.contains(b))
        .bridges
        .iter()
        .flat_map(|b| &b.ports)
        .all(|p| p.port.isolated == Some(p.role.isolated()))
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

/// Port flags that contradict the plan while a firewall backend enforces it: on the uplink
/// or a trusted vNIC of an isolated bridge, or on any port of a lifted bridge. libvirt sets
/// them from `<port isolated="yes"/>` (written by `before_vm_start` or by oVirt's native
/// `port_isolation`) whatever backend is in use; VM ports keep theirs, which only agree.
pub(super) fn contrary_flags(plan: &Plan) -> Vec<BridgePlan> {
    let isolated = plan.bridges.iter().map(|b| (b, false));
    let lifted = plan.lifted.iter().map(|b| (b, true));
    isolated
        .chain(lifted)
        .map(|(b, lifted)| BridgePlan {
            ports: b
                .ports
                .iter()
                .filter(|p| p.port.isolated == Some(true) && (lifted || !p.role.isolated()))
                .cloned()
                .collect(),
            ..b.clone()
        })
        .filter(|b| !b.ports.is_empty())
        .collect()
}
