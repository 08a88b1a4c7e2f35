//! Fail closed (docs/design.md §6.2): when enforcement fails, the VM ports not confirmed
//! isolated are disabled and recorded; a later successful run re-enables them.

use std::collections::{BTreeMap, BTreeSet};

use crate::enforce::Backend;
use crate::error::{Error, Result};
use crate::host::config::{OnFailure, Settings};
use crate::host::state::State;
use crate::model::plan::Plan;
use crate::model::port::Port;
use crate::sys::bridge;
use crate::sys::netlink::{self, RouteSocket};

use super::plan;

/// VM ports of present isolated bridges that `confirmed` does not show isolated, that we
/// have not blocked yet and that still forward (a port already disabled is left alone: it
/// forwards nothing, and it is not ours to re-enable later).
pub(super) fn ports_to_block(
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
pub(super) fn fail_closed(
    state: &mut State,
    settings: &Settings,
    backend: Option<&mut dyn Backend>,
    err: Error,
) -> Error {
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
pub(super) fn unblock(state: &mut State) -> Result<()> {
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
