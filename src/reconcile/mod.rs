//! Reconcile: from the recorded policy and the live ports, decide each port's role and make
//! the backend's kernel state equal to it. Idempotent: a second run changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use crate::enforce::{self, Backend, DriverSettings};
use crate::error::{Error, Result};
use crate::host::config::{BackendChoice, OnFailure, Settings};
use crate::host::state::{Locked, State, Store};
use crate::host::trust::TrustedSet;
use crate::model::backend::{BackendKind, Change, Observed};
use crate::model::plan::{BridgePlan, Drift, Plan, PortPlan, Role};
use crate::model::port::{Port, Snapshot};
use crate::sys::bridge;
use crate::sys::netlink::{self, RouteSocket};
use crate::vdsm::vnic::Report;

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
    choose(settings.backend, &DriverSettings::of(settings))
}

/// [`choose_backend`] with the drivers' settings built already.
fn choose(choice: BackendChoice, driver: &DriverSettings) -> Result<(Box<dyn Backend>, String)> {
    match choice {
        BackendChoice::Fixed(kind) => {
            let backend = enforce::open(kind, driver)?;
            backend
                .available()
                .map_err(|e| Error::config(format!("backend {kind} (configured) cannot run here"), e))?;
            Ok((backend, "configured".to_string()))
        }
        BackendChoice::Auto => first_usable(BackendKind::ALL, |kind| {
            enforce::open(kind, driver).and_then(|b| b.available().map(|_| b))
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
///
/// Fails closed: when enforcement fails (no usable backend, the backend's apply errors, or
/// drift remains after it), the VM ports of isolated bridges not confirmed isolated are
/// disabled and recorded in [`State::blocked`] (or, with `on_failure = warn`, one warning
/// is logged), and the error is returned. A later successful run re-enables them. Use
/// [`run_and_commit`] so that the record survives the error.
pub fn run(state: &mut State, settings: &Settings) -> Result<Outcome> {
    run_with(state, settings, true)
}

/// Like [`run`], but an enforcement failure blocks nothing: for `before_network_setup`,
/// where the error aborts the whole setup, so nothing is recorded and no bridge changes
/// its policy.
pub fn run_or_abort(state: &mut State, settings: &Settings) -> Result<Outcome> {
    run_with(state, settings, false)
}

fn run_with(state: &mut State, settings: &Settings, block_on_failure: bool) -> Result<Outcome> {
    let fail = |state: &mut State, backend: Option<&mut dyn Backend>, e: Error| {
        if block_on_failure {
            fail_closed(state, settings, backend, e)
        } else {
            e
        }
    };
    // One port dump serves the trust records' upkeep and the first plan.
    let busy = !(state.networks.is_empty() && state.released.is_empty() && state.blocked.is_empty());
    let trusts = !(state.legacy_trusted.is_empty() && state.trusted_vnics.is_empty());
    let live = if busy || trusts {
        Some(bridge::snapshot()?)
    } else {
        None
    };
    migrate(state, live.as_ref());
    let Some(live) = live.filter(|_| busy) else {
        // Nothing is or was isolated: a host that never uses the property is never
        // touched, and a backend it cannot run never fails its network setups.
        return Ok(Outcome {
            backend: state.backend,
            changes: Vec::new(),
        });
    };
    let driver = DriverSettings::of(settings);
    let (mut backend, why) = match choose(settings.backend, &driver) {
        Ok(chosen) => chosen,
        Err(e) => return Err(fail(state, None, e)),
    };
    let (outcome, plan) = match enforce(state, &mut *backend, &why, &live, &driver) {
        Ok(done) => done,
        Err(e) => return Err(fail(state, Some(&mut *backend), e)),
    };
    unblock(state)?;
    // Cross-host isolation (bridge_isolation_peer_macs, bridge_isolation_uplink_macs): a
    // table of its own, beside the backend.
    crate::enforce::cross_host::reconcile(state, &plan, &driver)?;
    Ok(outcome)
}

/// Root, under the lock: carries format-1 records over (trusted vNICs bound to their taps,
/// the old `pending` dropped) and, given the ports, forgets trust records whose tap is gone.
fn migrate(state: &mut State, live: Option<&Snapshot>) {
    if state.legacy_pending.take().is_some() {
        log::info!("state: the previous release's pending setup record names no request: dropped, never replayed");
    }
    for (level, line) in live
        .map(|live| crate::host::trust::tidy(state, live))
        .unwrap_or_default()
    {
        log::log!(level, "{line}");
    }
}

/// Writes the locked state first, then [`run_and_commit`]: a record that lets the kernel open
/// a port (a trusted vNIC, a lifted network) is on disk before the port opens. When it
/// cannot be written, the kernel is reconciled with the state as recorded (so what the new
/// record would have opened stays isolated) and the write error is returned.
pub fn record_then_run(mut locked: Locked, settings: &Settings) -> Result<Outcome> {
    if let Err(e) = locked.save() {
        locked.revert();
        if let Err(r) = run(&mut locked.state, settings) {
            log::error!("reconciling with the recorded state: {r}");
        }
        return Err(e);
    }
    run_and_commit(locked, settings)
}

/// [`run`] on the locked state, then [`Locked::commit`]. When `run` fails, only its record of
/// blocked ports and of the setup under way is written (the rest of the state stays as
/// read, as before a failed run).
pub fn run_and_commit(mut locked: Locked, settings: &Settings) -> Result<Outcome> {
    match run(&mut locked.state, settings) {
        Ok(outcome) => locked.commit().map(|()| outcome),
        Err(e) => {
            // What a network hook decided about the setup under way stands too: a record
            // after_network_setup cleared must not come back to be replayed.
            let blocked = std::mem::take(&mut locked.state.blocked);
            let setup = locked.state.setup.take();
            match Store::new(&settings.state_dir).read() {
                Ok(mut as_read) if as_read.blocked != blocked || as_read.setup != setup => {
                    as_read.blocked = blocked;
                    as_read.setup = setup;
                    locked.state = as_read;
                    if let Err(c) = locked.commit() {
                        log::error!("recording the blocked ports: {c}");
                    }
                }
                Ok(_) => {}
                Err(r) => log::error!("recording the blocked ports: {r}"),
            }
            Err(e)
        }
    }
}

/// The body of [`run`] with the chosen backend. Also returns the newest plan it made, for the
/// cross-host filter (one port dump serves both).
fn enforce(
    state: &mut State,
    backend: &mut dyn Backend,
    why: &str,
    live: &Snapshot,
    driver: &DriverSettings,
) -> Result<(Outcome, Plan)> {
    let kind = backend.kind();
    if state.backend == Some(kind) {
        log::debug!("backend {kind} ({why})");
    } else {
        log::info!("backend {kind} ({why})");
    }
    let mut plan = plan_with(state, live, |_| true);
    let previous = state.backend.filter(|&p| p != kind);
    // The new backend enforces first, so a handover leaves no moment without isolation.
    let mut changes = backend.apply(&plan)?;
    changes.extend(backend.remove(&plan.lifted)?);
    if let Some(previous) = previous {
        log::info!("backend changes from {previous} to {kind}: removing {previous}'s enforcement");
        let everything: Vec<BridgePlan> = plan.bridges.iter().chain(&plan.lifted).cloned().collect();
        changes.extend(enforce::open(previous, driver)?.remove(&everything)?);
    }
    if kind != BackendKind::PortIsolation && previous != Some(BackendKind::PortIsolation) {
        changes.extend(enforce::open(BackendKind::PortIsolation, driver)?.remove(&contrary_flags(&plan))?);
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
    // Blocked ports are re-enabled only once enforcement is confirmed.
    if !changes.is_empty() || !state.blocked.is_empty() {
        let after = self::plan(state)?;
        let left = drift(&after, &backend.observe(&after)?);
        if !left.is_empty() {
            let list: Vec<String> = left.iter().map(ToString::to_string).collect();
            return Err(Error::Kernel(format!(
                "still drifting after reconcile: {}",
                list.join("; ")
            )));
        }
        plan = after;
    }
    let outcome = Outcome {
        backend: Some(kind),
        changes,
    };
    Ok((outcome, plan))
}

/// VM ports of present isolated bridges that `confirmed` does not show isolated, that we
/// have not blocked yet and that still forward (a port already disabled is left alone: it
/// forwards nothing, and it is not ours to re-enable later).
fn ports_to_block(
    plan: &Plan,
    confirmed: &BTreeSet<(String, String)>,
    blocked: &BTreeMap<String, BTreeSet<String>>,
    state_of: impl Fn(&str) -> Option<u8>,
) -> Vec<(String, Port)> {
    plan.bridges
        .iter()
        .filter(|b| b.present)
        .flat_map(|b| b.ports.iter().map(move |p| (b, p)))
        .filter(|(b, p)| {
            p.role.isolated()
                && !confirmed.contains(&(b.bridge.clone(), p.port.name.clone()))
                && !blocked.get(&b.bridge).is_some_and(|s| s.contains(&p.port.name))
                && state_of(&p.port.name).is_some_and(|s| s != netlink::BR_STATE_DISABLED)
        })
        .map(|(b, p)| (b.bridge.clone(), p.port.clone()))
        .collect()
}

/// Applies `on_failure` after enforcement failed with `err`; returns the error to report,
/// naming the bridges and ports blocked (or left forwarding).
fn fail_closed(state: &mut State, settings: &Settings, backend: Option<&mut dyn Backend>, err: Error) -> Error {
    let plan = match plan(state) {
        Ok(plan) => plan,
        Err(e) => return Error::Kernel(format!("{err}; fail-closed could not read the bridges: {e}")),
    };
    // A port whose kernel flag is set is isolated whatever backend was meant to act: it
    // is confirmed, never disabled (that would cut its VM off the gateway too).
    let flagged = plan.bridges.iter().flat_map(|b| {
        b.ports
            .iter()
            .filter(|p| p.port.isolated == Some(true))
            .map(move |p| (b.bridge.clone(), p.port.name.clone()))
    });
    let confirmed: BTreeSet<(String, String)> = backend
        .and_then(|b| b.observe(&plan).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|o| o.isolated)
        .map(|o| (o.bridge, o.port))
        .chain(flagged)
        .collect();
    let targets = ports_to_block(&plan, &confirmed, &state.blocked, |p| netlink::port_state(p).ok());
    let name_list = |ports: &[(String, Port)]| {
        let mut by_bridge: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (b, p) in ports {
            by_bridge.entry(b).or_default().push(&p.name);
        }
        let parts: Vec<String> = by_bridge
            .iter()
            .map(|(b, ps)| format!("bridge {b} ports {}", ps.join(", ")))
            .collect();
        parts.join("; ")
    };
    if targets.is_empty() {
        return err;
    }
    if OnFailure::of(&settings.config_file) == OnFailure::Warn {
        log::warn!(
            "enforcement failed; on_failure = warn: VM ports left forwarding: {}",
            name_list(&targets)
        );
        return Error::Kernel(format!("{err} (not blocked: on_failure = warn)"));
    }
    let mut socket = None;
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (bridge, port) in targets {
        match set_forwarding(&mut socket, &port, false) {
            Ok(()) => {
                state
                    .blocked
                    .entry(bridge.clone())
                    .or_default()
                    .insert(port.name.clone());
                done.push((bridge, port));
            }
            Err(e) => failed.push(format!("could not block {bridge} port {}: {e}", port.name)),
        }
    }
    let mut message = format!("{err}; fail-closed");
    if !done.is_empty() {
        message.push_str(&format!(": blocked {}", name_list(&done)));
    }
    for f in failed {
        message.push_str(&format!("; {f}"));
    }
    Error::Kernel(message)
}

/// Sets a port forwarding or disabled over netlink and reads the state back from sysfs.
fn set_forwarding(socket: &mut Option<RouteSocket>, port: &Port, forwarding: bool) -> Result<()> {
    if socket.is_none() {
        *socket = Some(RouteSocket::open()?);
    }
    socket
        .as_mut()
        .expect("opened above")
        .set_forwarding(port.ifindex, forwarding)?;
    let want = if forwarding {
        netlink::BR_STATE_FORWARDING
    } else {
        netlink::BR_STATE_DISABLED
    };
    let now = netlink::port_state(&port.name).map_err(|e| Error::io(format!("reading back {}", port.name), e))?;
    if now != want {
        return Err(Error::Kernel(format!(
            "port {}: state reads {now} after setting {want}",
            port.name
        )));
    }
    Ok(())
}

/// After a successful run: sets every port we blocked forwarding again and forgets it. A
/// port that left its bridge (VM gone) is forgotten untouched; one no longer disabled (its
/// link went down and up) is only forgotten.
fn unblock(state: &mut State) -> Result<()> {
    if state.blocked.is_empty() {
        return Ok(());
    }
    let live = bridge::snapshot()?;
    let mut socket = None;
    for (bridge, ports) in std::mem::take(&mut state.blocked) {
        let mut kept = BTreeSet::new();
        for name in ports {
            let Some(port) = live.ports(&bridge).unwrap_or_default().iter().find(|p| p.name == name) else {
                continue;
            };
            if netlink::port_state(&name).ok() != Some(netlink::BR_STATE_DISABLED) {
                continue;
            }
            match set_forwarding(&mut socket, port, true) {
                Ok(()) => log::info!("bridge {bridge} port {name}: enforcement confirmed, unblocked"),
                Err(e) => {
                    log::error!("bridge {bridge} port {name}: cannot unblock: {e}");
                    kept.insert(name);
                }
            }
        }
        if !kept.is_empty() {
            state.blocked.insert(bridge, kept);
        }
    }
    if state.blocked.is_empty() {
        Ok(())
    } else {
        Err(Error::Kernel(format!(
            "ports still blocked: {}",
            blocked_list(&state.blocked)
        )))
    }
}

/// `bridge B ports P, Q; ...` for a [`State::blocked`] record.
pub fn blocked_list(blocked: &BTreeMap<String, BTreeSet<String>>) -> String {
    let parts: Vec<String> = blocked
        .iter()
        .map(|(b, ps)| format!("bridge {b} ports {}", ps.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect();
    parts.join("; ")
}

/// For the `before_*` points (unprivileged, cheap): fails when no backend can enforce
/// isolation on this host, so a vNIC on an isolated bridge is not started unprotected.
/// Passes at once when port isolation may be used and the kernel has the flag (`uname`
/// only), or when the firewall backend recorded in `state` did the work and no port is blocked
/// (its last run succeeded); otherwise asks [`select_backend`] (without root, a firewall
/// backend only checks its tool is installed), and after a failed run (ports blocked) also
/// [`Backend::check_writer`].
pub fn check_enforceable(settings: &Settings, state: &State) -> Result<()> {
    let driver = DriverSettings::of(settings);
    enforceable(
        settings.backend,
        state,
        || enforce::open(BackendKind::PortIsolation, &driver)?.available(),
        || {
            let (backend, _) = choose(settings.backend, &driver)?;
            if state.blocked.is_empty() {
                Ok(())
            } else {
                backend.check_writer()
            }
        },
    )
}

fn enforceable(
    choice: BackendChoice,
    state: &State,
    port_isolation: impl FnOnce() -> Result<()>,
    select: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let allows = |kind| choice == BackendChoice::Auto || choice == BackendChoice::Fixed(kind);
    if allows(BackendKind::PortIsolation) && port_isolation().is_ok() {
        return Ok(());
    }
    // Port isolation is judged by the running kernel (it may have been downgraded) alone.
    let recorded = state.backend.filter(|&k| k != BackendKind::PortIsolation);
    if state.blocked.is_empty() && recorded.is_some_and(allows) {
        return Ok(());
    }
    select().map_err(|e| Error::config("isolation cannot be enforced on this host", e))
}

/// Root, under the lock: records `report` (trusted vNICs bound to their taps, see
/// [`Report::apply`]), then [`record_then_run`]: a trusted vNIC opens only once
/// its record is on disk; when it cannot be written, one that libvirt brought up open is
/// isolated and the error returned.
pub fn record_and_reconcile(mut locked: Locked, report: &Report, settings: &Settings) -> Result<()> {
    let live = bridge::snapshot()?;
    for line in report.apply(&mut locked.state, &live, || crate::sys::owner::taps_of_vm(&report.vm)) {
        log::warn!("{line}");
    }
    record_then_run(locked, settings).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backend::BackendKind::*;
    use crate::model::plan::fixtures::bridge;

    fn port(name: &str, role: Role, flag: Option<bool>) -> PortPlan {
        crate::model::plan::fixtures::port(name, 1, role, flag)
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
        enforce::link_daemon_backends();
        let driver = DriverSettings::of(&Settings {
            state_dir: "/nonexistent".into(),
            config_file: "/nonexistent".into(),
            backend: BackendChoice::Auto,
            privileged: false,
        });
        let none = |k: BackendKind| enforce::open(k, &driver).and_then(|_| Err::<(), _>(Error::Kernel("no".into())));
        let err = first_usable(BackendKind::ALL, none).unwrap_err().to_string();
        assert_eq!(
            err,
            "config: no backend is usable on this host (port-isolation: kernel: no; nftables: kernel: no; \
             firewalld: kernel: no; iptables: kernel: no)"
        );
    }

    #[test]
    fn configured_backend_wins() {
        enforce::link_daemon_backends();
        let settings = |choice| Settings {
            state_dir: "/nonexistent".into(),
            config_file: "/nonexistent".into(),
            backend: choice,
            privileged: false,
        };
        for kind in BackendKind::ALL {
            assert_eq!(
                enforce::open(kind, &DriverSettings::of(&settings(BackendChoice::Auto)))
                    .unwrap()
                    .kind(),
                kind
            );
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
        if std::path::Path::new(crate::enforce::nftables::NFT).exists() && !crate::host::config::is_root() {
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

    #[test]
    fn before_points_abort_only_when_no_backend_can_enforce() {
        let ok = || Ok(());
        let no = || Err(Error::Kernel("no".into()));
        let blocked = State {
            blocked: BTreeMap::from([("red".to_string(), BTreeSet::from(["vnet1".to_string()]))]),
            backend: Some(Nftables),
            ..State::default()
        };
        let recorded = |kind| State {
            backend: Some(kind),
            ..State::default()
        };
        let fixed = BackendChoice::Fixed;
        let auto = BackendChoice::Auto;
        // A healthy host: the kernel flag, or the recorded backend, suffices; nothing spawned.
        let never = || -> Result<()> { panic!("select_backend asked on a healthy host") };
        enforceable(auto, &State::default(), ok, never).unwrap();
        enforceable(fixed(PortIsolation), &blocked, ok, never).unwrap();
        enforceable(auto, &recorded(Nftables), no, never).unwrap();
        enforceable(fixed(Iptables), &recorded(Iptables), ok, never).unwrap();
        // Otherwise select_backend decides.
        enforceable(fixed(Nftables), &State::default(), ok, ok).unwrap();
        enforceable(fixed(Nftables), &blocked, ok, ok).unwrap();
        let err = enforceable(fixed(Nftables), &blocked, ok, no).unwrap_err().to_string();
        assert_eq!(err, "config: isolation cannot be enforced on this host: kernel: no");
        assert!(enforceable(auto, &State::default(), no, no).is_err());
        assert!(enforceable(fixed(PortIsolation), &recorded(PortIsolation), no, no).is_err());
        assert!(enforceable(fixed(Firewalld), &recorded(Nftables), ok, no).is_err());
    }

    #[test]
    fn fail_closed_blocks_unconfirmed_forwarding_vm_ports_only() {
        let plan = Plan {
            bridges: vec![
                bridge(
                    "red",
                    vec![
                        port("eth1", Role::Uplink, Some(false)),
                        port("vnet1", Role::Vm, Some(true)),
                        port("vnet2", Role::Vm, Some(false)),
                        port("vnet3", Role::Trusted, Some(false)),
                        port("vnet4", Role::Vm, Some(false)),
                        port("vnet5", Role::Vm, Some(false)),
                        port("vnet6", Role::Vm, Some(false)),
                    ],
                ),
                BridgePlan {
                    present: false,
                    ..bridge("gone", vec![])
                },
            ],
            lifted: vec![bridge("blue", vec![port("vnet9", Role::Vm, Some(false))])],
        };
        let confirmed = BTreeSet::from([("red".to_string(), "vnet1".to_string())]);
        let blocked = BTreeMap::from([("red".to_string(), BTreeSet::from(["vnet4".to_string()]))]);
        // vnet5 is already disabled (down): not ours; vnet6 vanished while we looked.
        let state_of = |p: &str| match p {
            "vnet5" => Some(netlink::BR_STATE_DISABLED),
            "vnet6" => None,
            _ => Some(netlink::BR_STATE_FORWARDING),
        };
        let got: Vec<(String, String)> = ports_to_block(&plan, &confirmed, &blocked, state_of)
            .into_iter()
            .map(|(b, p)| (b, p.name))
            .collect();
        assert_eq!(got, vec![("red".to_string(), "vnet2".to_string())]);
        let all = ports_to_block(&plan, &BTreeSet::new(), &BTreeMap::new(), |_| Some(3));
        assert_eq!(all.len(), 5, "every VM port when nothing is confirmed");
        assert_eq!(
            blocked_list(&BTreeMap::from([
                (
                    "red".to_string(),
                    BTreeSet::from(["vnet1".to_string(), "vnet2".to_string()])
                ),
                ("blue".to_string(), BTreeSet::from(["vnet9".to_string()])),
            ])),
            "bridge blue ports vnet9; bridge red ports vnet1, vnet2"
        );
    }

    #[test]
    fn old_state_files_load_without_blocked() {
        let state: State = serde_json::from_str(r#"{"version": 1, "networks": {}}"#).unwrap();
        assert!(state.blocked.is_empty());
        let text = serde_json::to_string(&state).unwrap();
        assert!(!text.contains("blocked"), "{text}");
    }
}
