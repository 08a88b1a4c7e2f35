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

    /// The interface index of bridge `bridge`, when the snapshot has it.
    pub fn bridge_index(&self, bridge: &str) -> Option<u32> {
        self.bridges.get(bridge).copied()
    }

    /// The name of the bridge with interface index `ifindex`, when the snapshot has it.
    pub fn bridge_named(&self, ifindex: u32) -> Option<&str> {
        self.bridges
            .iter()
            .find(|(_, &i)| i == ifindex)
            .map(|(name, _)| name.as_str())
    }

    /// The bridge that port `ifindex` is on, when the snapshot has it.
    pub fn bridge_of_port(&self, ifindex: u32) -> Option<&str> {
        let master = self
            .ports
            .iter()
            .find(|(_, ports)| ports.iter().any(|p| p.ifindex == ifindex))
            .map(|(&m, _)| m)?;
        self.bridge_named(master)
    }

    /// Records bridge `bridge` with interface index `ifindex` (created, or renamed: another
    /// name with that index goes; another index under that name goes with its ports).
    /// Returns true when the snapshot did not have it so.
    pub fn set_bridge(&mut self, bridge: &str, ifindex: u32) -> bool {
        if self.bridges.get(bridge) == Some(&ifindex) {
            return false;
        }
        self.bridges.retain(|_, &mut i| i != ifindex);
        if let Some(old) = self.bridges.insert(bridge.to_string(), ifindex) {
            self.ports.remove(&old);
        }
        true
    }

    /// Forgets link `ifindex`: a bridge (with its ports) or a port. Returns the name of the
    /// bridge it was or was on, if any.
    pub fn remove_link(&mut self, ifindex: u32) -> Option<String> {
        if let Some(name) = self.bridge_named(ifindex).map(str::to_string) {
            self.bridges.remove(&name);
            self.ports.remove(&ifindex);
            return Some(name);
        }
        let bridge = self.bridge_of_port(ifindex).map(str::to_string);
        for ports in self.ports.values_mut() {
            ports.retain(|p| p.ifindex != ifindex);
        }
        bridge
    }

    /// Replaces the ports of `bridge` (interface index `ifindex`) with `ports`, as read
    /// from the kernel; they leave whatever other bridge the snapshot had them on. `None`:
    /// there is no such bridge any more.
    pub fn set_ports(&mut self, bridge: &str, ifindex: u32, ports: Option<Vec<Port>>) {
        let Some(mut ports) = ports else {
            if self.bridges.get(bridge) == Some(&ifindex) {
                self.bridges.remove(bridge);
            }
            self.ports.remove(&ifindex);
            return;
        };
        self.set_bridge(bridge, ifindex);
        let moved: std::collections::HashSet<u32> = ports.iter().map(|p| p.ifindex).collect();
        for (_, others) in self.ports.iter_mut().filter(|(&m, _)| m != ifindex) {
            others.retain(|p| !moved.contains(&p.ifindex));
        }
        ports.sort_by(|a, b| a.name.cmp(&b.name));
        self.ports.insert(ifindex, ports);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, ifindex: u32) -> Port {
        Port {
            name: name.into(),
            ifindex,
            mac: None,
            isolated: Some(false),
        }
    }

    fn names(s: &Snapshot, bridge: &str) -> Option<Vec<String>> {
        s.ports(bridge).map(|ps| ps.iter().map(|p| p.name.clone()).collect())
    }

    #[test]
    fn a_snapshot_follows_bridges_and_ports_as_they_change() {
        let mut s = Snapshot::of(vec![
            ("red", 2, vec![port("eth1", 4), port("vnet1", 7)]),
            ("blue", 3, vec![port("vnet2", 9)]),
        ]);
        assert_eq!((s.bridge_index("red"), s.bridge_named(3)), (Some(2), Some("blue")));
        assert_eq!(s.bridge_of_port(9), Some("blue"));
        assert_eq!(s.bridge_of_port(2), None, "a bridge is no port");
        // vnet2 moves to red: it leaves blue.
        s.set_ports(
            "red",
            2,
            Some(vec![port("vnet2", 9), port("eth1", 4), port("vnet1", 7)]),
        );
        assert_eq!(names(&s, "red").unwrap(), ["eth1", "vnet1", "vnet2"]);
        assert_eq!(names(&s, "blue").unwrap(), Vec::<String>::new());
        // A port deleted; then blue deleted with its ports.
        assert_eq!(s.remove_link(7).as_deref(), Some("red"));
        assert_eq!(names(&s, "red").unwrap(), ["eth1", "vnet2"]);
        assert_eq!(s.remove_link(3).as_deref(), Some("blue"));
        assert_eq!(names(&s, "blue"), None);
        assert_eq!(s.remove_link(99), None);
        // Renamed (same index), then re-created (new index: the old ports go).
        assert!(s.set_bridge("green", 2));
        assert_eq!((names(&s, "red"), names(&s, "green").unwrap().len()), (None, 2));
        assert!(!s.set_bridge("green", 2));
        assert!(s.set_bridge("green", 12));
        assert_eq!(names(&s, "green").unwrap(), Vec::<String>::new());
        // Read back as gone.
        s.set_ports("green", 12, None);
        assert_eq!(s.bridges(), Vec::<&str>::new());
    }
}
