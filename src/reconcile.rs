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
    choose_backend(settings).map(|(backend, _)| backend)
}

/// Like [`select_backend`], also saying why: `BRIDGE_ISOLATION_BACKEND` or the config file
/// wins; `auto` takes port-isolation when the kernel has the flag, else nftables, else
/// firewalld (when running), else iptables ([`BackendKind::ALL`]), and says what it skipped.
pub fn choose_backend(settings: &Settings) -> Result<(Box<dyn Backend>, String)> {
    match settings.backend {
        BackendChoice::Fixed(kind) => {
            let backend = backend::open(kind)?;
            backend
                .available()
                .map_err(|e| Error::Config(format!("backend {kind} (configured) cannot run here: {e}")))?;
            Ok((backend, "configured".to_string()))
        }
        BackendChoice::Auto => first_usable(BackendKind::ALL, |kind| {
            backend::open(kind).and_then(|b| b.available().map(|_| b))
        })
        .map(|(b, why)| {
            log::debug!("backend {} ({why})", b.kind());
            (b, why)
        }),
    }
}

/// The first of `kinds` that `open` accepts, and why: `auto`, plus what it skipped.
fn first_usable<T>(
    kinds: impl IntoIterator<Item = BackendKind>,
    mut open: impl FnMut(BackendKind) -> Result<T>,
) -> Result<(T, String)> {
    let mut reasons = Vec::new();
    for kind in kinds {
        match open(kind) {
            Ok(b) if reasons.is_empty() => return Ok((b, "auto".to_string())),
            Ok(b) => return Ok((b, format!("auto; skipped {}", reasons.join("; ")))),
            Err(e) => reasons.push(format!("{kind}: {e}")),
        }
    }
    Err(Error::Config(format!(
        "no backend is usable on this host ({})",
        reasons.join("; ")
    )))
}

/// Port flags that contradict the plan while a firewall backend enforces it: on the uplink
/// or a trusted vNIC of an isolated bridge, or on any port of a lifted bridge. libvirt sets
/// them from `<port isolated="yes"/>` (written by `before_vm_start` or by oVirt's native
/// `port_isolation`) whatever backend is in use; VM ports keep theirs, which only agree.
fn contrary_flags(plan: &Plan) -> Vec<BridgePlan> {
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
    let (mut backend, why) = choose_backend(settings)?;
    let kind = backend.kind();
    if state.backend == Some(kind) {
        log::debug!("backend {kind} ({why})");
    } else {
        log::info!("backend {kind} ({why})");
    }
    let plan = plan(state)?;
    let previous = state.backend.filter(|&p| p != kind);
    // The new backend enforces first, so a handover leaves no moment without isolation.
    let mut changes = backend.apply(&plan)?;
    changes.extend(backend.remove(&plan.lifted)?);
    if let Some(previous) = previous {
        log::info!("backend changes from {previous} to {kind}: removing {previous}'s enforcement");
        let everything: Vec<BridgePlan> = plan.bridges.iter().chain(&plan.lifted).cloned().collect();
        changes.extend(backend::open(previous)?.remove(&everything)?);
    }
    if kind != BackendKind::PortIsolation && previous != Some(BackendKind::PortIsolation) {
        changes.extend(backend::open(BackendKind::PortIsolation)?.remove(&contrary_flags(&plan))?);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind::*;

    fn port(name: &str, role: Role, flag: Option<bool>) -> PortPlan {
        PortPlan {
            port: Port {
                name: name.into(),
                ifindex: 1,
                mac: None,
                isolated: flag,
            },
            role,
        }
    }

    fn bridge(name: &str, ports: Vec<PortPlan>) -> BridgePlan {
        BridgePlan {
            network: name.into(),
            bridge: name.into(),
            uplink: Some("eth1".into()),
            present: true,
            ports,
        }
    }

    #[test]
    fn auto_prefers_port_isolation_then_nftables_then_firewalld_then_iptables() {
        assert_eq!(BackendKind::ALL, [PortIsolation, Nftables, Firewalld, Iptables]);
        let (kind, why) = first_usable(BackendKind::ALL, Ok).unwrap();
        assert_eq!((kind, why.as_str()), (PortIsolation, "auto"));

        // EL7: kernel 3.10 has no port flag.
        let old_kernel = |k| match k {
            PortIsolation => Err(Error::Kernel("kernel 3.10.0 has no bridge port isolation flag".into())),
            other => Ok(other),
        };
        let (kind, why) = first_usable(BackendKind::ALL, old_kernel).unwrap();
        assert_eq!(kind, Nftables);
        assert_eq!(
            why,
            "auto; skipped port-isolation: kernel: kernel 3.10.0 has no bridge port isolation flag"
        );

        // Nothing works: every reason is given, in order.
        let none = |k: BackendKind| backend::open(k).and_then(|_| Err::<(), _>(Error::Kernel("no".into())));
        let err = first_usable(BackendKind::ALL, none).unwrap_err().to_string();
        assert_eq!(
            err,
            "config: no backend is usable on this host (port-isolation: kernel: no; nftables: kernel: no; \
             firewalld: kernel: no; iptables: kernel: no)"
        );
    }

    #[test]
    fn configured_backend_wins() {
        let settings = |choice| Settings {
            state_dir: "/nonexistent".into(),
            config_file: "/nonexistent".into(),
            backend: choice,
            privileged: false,
        };
        for kind in BackendKind::ALL {
            assert_eq!(backend::open(kind).unwrap().kind(), kind);
            // Whether it can run depends on the host; when it cannot, the error says why.
            if let Err(err) = choose_backend(&settings(BackendChoice::Fixed(kind))) {
                assert!(
                    err.to_string()
                        .contains(&format!("backend {kind} (configured) cannot run here")),
                    "{err}"
                );
            }
        }
        // Unprivileged, nftables only needs its tool; as root it asks the kernel too.
        if std::path::Path::new(crate::backend::nftables::NFT).exists() && !crate::config::is_root() {
            let (b, why) = choose_backend(&settings(BackendChoice::Fixed(Nftables))).unwrap();
            assert_eq!((b.kind(), why.as_str()), (Nftables, "configured"));
        }
    }

    #[test]
    fn firewall_backends_clear_only_contrary_flags() {
        let plan = Plan {
            bridges: vec![bridge(
                "red",
                vec![
                    port("eth1", Role::Uplink, Some(true)),
                    port("vnet1", Role::Vm, Some(true)),
                    port("vnet2", Role::Vm, Some(false)),
                    port("vnet3", Role::Trusted, Some(true)),
                    port("vnet4", Role::Trusted, None),
                ],
            )],
            lifted: vec![
                bridge(
                    "blue",
                    vec![port("vnet5", Role::Vm, Some(true)), port("vnet6", Role::Vm, None)],
                ),
                bridge("green", vec![port("vnet7", Role::Vm, Some(false))]),
            ],
        };
        let got: Vec<(String, Vec<String>)> = contrary_flags(&plan)
            .into_iter()
            .map(|b| (b.bridge, b.ports.into_iter().map(|p| p.port.name).collect()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("red".to_string(), vec!["eth1".to_string(), "vnet3".to_string()]),
                ("blue".to_string(), vec!["vnet5".to_string()]),
            ]
        );
    }
}
