//! Reconcile: from the recorded policy and the live ports, decide each port's role and make
//! the backend's kernel state equal to it. Idempotent: a second run changes nothing.

mod adopt;
mod choice;
mod fail_closed;
mod plan;

use std::collections::BTreeSet;

use crate::enforce::{self, Backend, DriverSettings};
use crate::error::{Error, Result};
use crate::host::config::Settings;
use crate::host::owners::OwnerDir;
use crate::host::state::{Locked, State, Store};
use crate::model::backend::{BackendKind, Change};
use crate::model::plan::{BridgePlan, Plan};
use crate::model::port::Snapshot;
use crate::sys::bridge;
use crate::vdsm::vnic::Report;

pub use adopt::{adopt, compare, Comparison, Disagreement};
pub use choice::{check_enforceable, choose_backend, select_backend};
pub use fail_closed::blocked_list;
pub use plan::{drift, flags_agree, plan, plan_for, plan_with};

use choice::choose;
use fail_closed::{fail_closed, unblock};
use plan::contrary_flags;

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
    run_with(state, settings, true, None)
}

/// Like [`run`], but an enforcement failure blocks nothing: for `before_network_setup`,
/// where the error aborts the whole setup, so nothing is recorded and no bridge changes
/// its policy.
pub fn run_or_abort(state: &mut State, settings: &Settings) -> Result<Outcome> {
    run_with(state, settings, false, None)
}

/// The watcher's run: like [`run`] (same plan, backend, fail-closed and cross-host filter),
/// on the ports `live` holds, which the watcher keeps from rtnetlink notifications, instead
/// of a dump of the namespace; after changes, only the bridges changed are read again (into
/// `live`) to confirm them. Trust records are not tidied here: `live` need not know the
/// ports of bridges nobody isolates, so a full [`run`] does it.
pub fn run_on(state: &mut State, settings: &Settings, live: &mut Snapshot) -> Result<Outcome> {
    run_with(state, settings, true, Some(live))
}

/// [`run_on`] on the locked state, then [`Locked::commit`], as [`run_and_commit`] does.
pub fn run_on_and_commit(locked: Locked, settings: &Settings, live: &mut Snapshot) -> Result<Outcome> {
    commit_run(locked, settings, |state| run_on(state, settings, live))
}

/// `known`: the ports the watcher keeps ([`run_on`]); `None`: a dump of the namespace.
fn run_with(
    state: &mut State,
    settings: &Settings,
    block_on_failure: bool,
    known: Option<&mut Snapshot>,
) -> Result<Outcome> {
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
    let nothing = |state: &State| Outcome {
        backend: state.backend,
        changes: Vec::new(),
    };
    let mut dumped;
    let (live, whole) = match known {
        Some(live) if busy => (live, false),
        // Nothing is or was isolated: a host that never uses the property is never
        // touched, and a backend it cannot run never fails its network setups.
        Some(_) => return Ok(nothing(state)),
        None => {
            let live = if busy || trusts {
                Some(bridge::snapshot()?)
            } else {
                None
            };
            migrate(state, live.as_ref());
            match live.filter(|_| busy) {
                Some(live) => {
                    dumped = live;
                    (&mut dumped, true)
                }
                None => {
                    succeeded(settings);
                    return Ok(nothing(state));
                }
            }
        }
    };
    let driver = DriverSettings::of(settings);
    let (mut backend, why) = match choose(settings.backend, &driver) {
        Ok(chosen) => chosen,
        Err(e) => return Err(fail(state, None, e)),
    };
    let (outcome, plan) = match enforce(state, &mut *backend, &why, live, whole, &driver) {
        Ok(done) => done,
        Err(e) => return Err(fail(state, Some(&mut *backend), e)),
    };
    unblock(state)?;
    // Cross-host isolation (bridge_isolation_peer_macs, bridge_isolation_uplink_macs): a
    // table of its own, beside the backend.
    crate::enforce::cross_host::reconcile(state, &plan, &driver)?;
    if whole {
        succeeded(settings);
    }
    Ok(outcome)
}

/// Notes that a reconcile of the whole namespace (not a watcher's repair of some bridges)
/// succeeded: the kernel matches the policy ([`crate::host::reconciled`]; root only).
fn succeeded(settings: &Settings) {
    if settings.privileged {
        crate::host::reconciled::mark(&settings.state_dir);
    }
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
pub fn run_and_commit(locked: Locked, settings: &Settings) -> Result<Outcome> {
    commit_run(locked, settings, |state| run(state, settings))
}

/// `run` on the locked state, then the commit of [`run_and_commit`].
fn commit_run(
    mut locked: Locked,
    settings: &Settings,
    run: impl FnOnce(&mut State) -> Result<Outcome>,
) -> Result<Outcome> {
    match run(&mut locked.state) {
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

/// The body of [`run`] with the chosen backend, on the ports `live` holds. Also returns the
/// newest plan it made, for the cross-host filter (one port dump serves both). To confirm
/// changes it reads the ports again: the whole namespace when `whole`, else only the
/// bridges changed (into `live`, for [`run_on`]).
fn enforce(
    state: &mut State,
    backend: &mut dyn Backend,
    why: &str,
    live: &mut Snapshot,
    whole: bool,
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
        let after = if whole {
            self::plan(state)?
        } else {
            let changed: BTreeSet<&str> = changes
                .iter()
                .map(|c| c.bridge.as_str())
                .chain(state.blocked.keys().map(String::as_str))
                .collect();
            bridge::refresh(live, changed)?;
            // Only the ports this run enforced on: one that joined since is no drift of
            // ours (its notification is queued; the watcher's next run takes it).
            let planned: BTreeSet<(&str, u32)> = plan
                .bridges
                .iter()
                .flat_map(|b| b.ports.iter().map(move |p| (b.bridge.as_str(), p.port.ifindex)))
                .collect();
            let mut after = plan_with(state, live, |_| true);
            for b in &mut after.bridges {
                b.ports
                    .retain(|p| planned.contains(&(b.bridge.as_str(), p.port.ifindex)));
            }
            after
        };
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

/// Root, under the lock, outside the network hooks: [`adopt`]s what VDSM's running config
/// asks, then [`record_then_run`] (a network it lifts opens only once that is on disk);
/// then forgets the owner records of VMs whose taps are all gone.
pub fn adopt_and_run(mut locked: Locked, settings: &Settings) -> Result<Outcome> {
    adopt(&mut locked, settings)?;
    let outcome = record_then_run(locked, settings);
    let owners = OwnerDir::new(&settings.owners_dir);
    for vm in owners.prune(|tap, index| bridge::ifindex(tap) == Some(index)) {
        log::info!("VM {vm}: its taps are gone (no after_vm_destroy ran): owner record forgotten");
    }
    outcome
}

/// Root, under the lock: records `report` (trusted vNICs bound to their taps, see
/// [`Report::apply`]), then [`adopt_and_run`]: a trusted vNIC opens only once
/// its record is on disk; when it cannot be written, one that libvirt brought up open is
/// isolated and the error returned.
pub fn record_and_reconcile(mut locked: Locked, report: &Report, settings: &Settings) -> Result<()> {
    let live = bridge::snapshot()?;
    for line in report.apply(&mut locked.state, &live, || crate::sys::owner::taps_of_vm(&report.vm)) {
        log::warn!("{line}");
    }
    adopt_and_run(locked, settings).map(drop)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::choice::{enforceable, first_usable};
    use super::fail_closed::ports_to_block;
    use super::*;
    use crate::host::config::BackendChoice;
    use crate::model::backend::BackendKind::*;
    use crate::model::plan::fixtures::bridge;
    use crate::model::plan::{BridgePlan, PortPlan, Role};
    use crate::sys::netlink;

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
            vdsm_netconf: "/nonexistent".into(),
            owners_dir: "/nonexistent".into(),
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
            vdsm_netconf: "/nonexistent".into(),
            owners_dir: "/nonexistent".into(),
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
