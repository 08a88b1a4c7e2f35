//! A bridge port and a snapshot of every bridge's ports, as plain data: [`crate::sys::bridge`]
//! reads them from the kernel, everything above plans with them.

use std::collections::HashMap;

use crate::model::mac::Mac;

/// One port of a bridge as the kernel shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// Interface name.
    pub name: String,
    /// Interface index, for netlink.
    pub ifindex: u32,
    /// Its MAC address.
    pub mac: Option<Mac>,
    /// The port's `isolated` flag; `None` on kernels without it.
    pub isolated: Option<bool>,
}

/// Every bridge of the namespace and its ports, as one dump saw them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Bridge name -> ifindex.
    bridges: HashMap<String, u32>,
    /// Bridge ifindex -> its ports, sorted by name.
    ports: HashMap<u32, Vec<Port>>,
}

impl Snapshot {
    /// The names of every bridge, sorted.
    pub fn bridges(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.bridges.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The ports of `bridge`, sorted by name; `None` when there is no such bridge.
    pub fn ports(&self, bridge: &str) -> Option<&[Port]> {
        let index = self.bridges.get(bridge)?;
        Some(self.ports.get(index).map_or(&[], Vec::as_slice))
    }

    /// The bridge port named `name`, whichever bridge it is on.
    pub fn port(&self, name: &str) -> Option<&Port> {
        self.all_ports().find(|p| p.name == name)
    }

    /// Every port of every bridge.
    pub fn all_ports(&self) -> impl Iterator<Item = &Port> {
        self.ports.values().flatten()
    }

    /// A snapshot of `bridges` (name, interface index, ports), for unit tests of plans.
    #[cfg(test)]
    pub(crate) fn of(bridges: Vec<(&str, u32, Vec<Port>)>) -> Snapshot {
        let mut names = Vec::new();
        let mut ports = Vec::new();
        for (name, ifindex, members) in bridges {
            names.push((name.to_string(), ifindex));
            ports.extend(members.into_iter().map(|port| (ifindex, port)));
        }
        Snapshot::from_links(names, ports)
    }

    /// The snapshot of one dump's answers: each bridge (name, interface index) and each
    /// port with its bridge's index. A link enslaved while the dump ran may be answered
    /// twice: the last answer wins.
    pub fn from_links(bridges: Vec<(String, u32)>, ports: Vec<(u32, Port)>) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.bridges.extend(bridges);
        let mut by_index: HashMap<u32, (u32, Port)> = HashMap::new();
        for (master, port) in ports {
            by_index.insert(port.ifindex, (master, port));
        }
        for (master, port) in by_index.into_values() {
            snapshot.ports.entry(master).or_default().push(port);
        }
        for ports in snapshot.ports.values_mut() {
            ports.sort_by(|a, b| a.name.cmp(&b.name));
        }
        snapshot
    }
}
