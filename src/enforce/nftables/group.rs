//! The gate's interface group: ports join [`GROUP`] to be isolated, and leave it after.

use std::collections::{BTreeMap, BTreeSet};

use super::{bridge_of_set, ifname_of, Live, DEFAULT_GROUP, GROUP};
use crate::error::{Error, Result};
use crate::model::plan::BridgePlan;
use crate::sys::bridge;
use crate::sys::netlink::RouteSocket;

/// A port whose group [`Ports`] knows.
#[derive(Clone, Debug)]
struct GroupedPort {
    bridge: String,
    name: String,
    /// Its group when read; `None`: the link is gone.
    group: Option<u32>,
}

/// The ports one run may move in or out of [`GROUP`], by interface index, with their groups
/// as read: the ports of the bridges concerned, and the interfaces the table's sets still
/// hold that are no port of theirs any more (a tap moved to another bridge keeps its index).
/// Moves go over rtnetlink, each read back.
pub(super) struct Ports {
    ports: BTreeMap<u32, GroupedPort>,
    socket: Option<RouteSocket>,
}

impl Ports {
    /// The ports of `bridges` and the table's other members, their groups read.
    pub(super) fn of(live: &Live, bridges: &[BridgePlan]) -> Ports {
        let mut ports = BTreeMap::new();
        for b in bridges {
            for p in &b.ports {
                let port = GroupedPort {
                    bridge: b.bridge.clone(),
                    name: p.port.name.clone(),
                    group: bridge::group(&p.port.name),
                };
                ports.insert(p.port.ifindex, port);
            }
        }
        let planned: BTreeSet<&str> = bridges.iter().map(|b| b.bridge.as_str()).collect();
        for (set, members) in &live.sets {
            let Some(bridge) = bridge_of_set(set).filter(|b| planned.contains(b.as_str())) else {
                continue;
            };
            for index in members.elements.indexes() {
                if ports.contains_key(&index) {
                    continue;
                }
                if let Some(name) = ifname_of(index) {
                    let group = bridge::group(&name);
                    let bridge = bridge.clone();
                    ports.insert(index, GroupedPort { bridge, name, group });
                }
            }
        }
        Ports { ports, socket: None }
    }

    /// Which ports must join [`GROUP`] for `wanted` to be kept apart, and which must leave
    /// it (every other port in it).
    pub(super) fn moves(&self, wanted: &BTreeSet<u32>) -> (Vec<u32>, Vec<u32>) {
        let present = self.ports.iter().filter(|(_, p)| p.group.is_some());
        let (join, leave): (Vec<_>, Vec<_>) = present.partition(|(i, _)| wanted.contains(i));
        let join = join.into_iter().filter(|(_, p)| p.group != Some(GROUP));
        let leave = leave.into_iter().filter(|(_, p)| p.group == Some(GROUP));
        (join.map(|(i, _)| *i).collect(), leave.map(|(i, _)| *i).collect())
    }

    /// The ports the kernel keeps apart on `bridge` now: [`Live::enforced`], and in [`GROUP`]
    /// when the table is gated.
    pub(super) fn kept_apart(&self, live: &Live, bridge: &str) -> BTreeSet<u32> {
        let gated = live.gated();
        let grouped = |i: &u32| self.ports.get(i).is_some_and(|p| p.group == Some(GROUP));
        live.enforced(bridge)
            .into_iter()
            .filter(|i| !gated || grouped(i))
            .collect()
    }

    /// Puts port `index` in `group` and reads it back.
    pub(super) fn set(&mut self, index: u32, group: u32) -> Result<()> {
        let port = &self.ports[&index];
        let (bridge, name) = (&port.bridge, &port.name);
        if group == GROUP {
            if let Some(other) = port.group.filter(|&g| g != DEFAULT_GROUP) {
                log::warn!(
                    "{bridge} port {name}: moving it from interface group {other:#x} to {GROUP:#x} to isolate it"
                );
            }
        }
        RouteSocket::lazy(&mut self.socket)?
            .set_group(index, group)
            .map_err(|e| Error::Kernel(format!("{bridge} port {name}: interface group {group:#x}: {e}")))?;
        match bridge::group(name) {
            Some(now) if now == group => Ok(()),
            now => Err(Error::Kernel(format!(
                "{bridge} port {name}: interface group reads {now:?} after setting {group:#x}"
            ))),
        }
    }
}
