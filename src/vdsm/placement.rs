//! Where a vNIC lands on this host: on a Linux bridge, on an isolated network but around its
//! bridge, or somewhere this project does not act.
//!
//! What each interface type gives (VDSM 4.50 and ovirt-engine 4.5, see docs/how-it-works.md,
//! "vNICs that are not taps on the bridge"):
//!
//! - `bridge`: `<source bridge='NET'/>`, the bridge itself.
//! - `network`: `<source network='vdsm-NET'/>`. VDSM names the libvirt network of oVirt
//!   network NET `vdsm-NET`, and the one of a bridged network forwards in `bridge` mode to
//!   bridge NET; libvirt's live XML adds the bridge it used (`bridge='NET'`). Without that
//!   attribute (the engine's XML, hotplug) the bridge is the one recorded for NET; a network
//!   not recorded is not isolated.
//! - `direct`: `<source dev='eth1' mode='bridge'/>`, a macvtap on host device `eth1`: on
//!   an isolated network when that device is the network's recorded uplink (or its bridge).
//! - `hostdev`: an SR-IOV VF; the engine's XML names no network for it, only VDSM's own
//!   metadata does (`<ovirt-vm:network>`, written for every vNIC VDSM runs). Without it (the
//!   engine's XML, hotplug), the VF is on an isolated network when its physical function
//!   (`/sys/bus/pci/devices/<VF>/physfn/net/`) is the network's uplink NIC, or a slave of its
//!   uplink bond, and its `<vlan><tag>` is the uplink's VLAN: same wire, same VLAN.
//!
//! Whatever the type, the metadata's `<ovirt-vm:network>` naming an isolated network puts a
//! vNIC that is not on that network's bridge on the network.

use std::path::PathBuf;

use crate::host::state::State;
use crate::sys::SYS_CLASS_NET;
use crate::vdsm::domain::{Attachment, Document, Interface};

/// Overrides where the PCI devices are read (root only; for tests, which have no VFs).
pub const ENV_SYS_PCI: &str = "BRIDGE_ISOLATION_SYS_PCI";
/// The PCI devices of the host.
pub const SYS_PCI: &str = "/sys/bus/pci/devices";

/// Prefix VDSM gives the libvirt network of each oVirt network (`netname_o2l`).
pub const LIBVIRT_NET_PREFIX: &str = "vdsm-";

/// Where one vNIC lands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// A port of Linux bridge `0` (`type='bridge'`, or a libvirt network that is a bridge).
    Bridge(String),
    /// On isolated network `network`, without passing through its bridge.
    Bypass {
        /// The oVirt network.
        network: String,
        /// Its bridge.
        bridge: String,
        /// How the vNIC reaches it, e.g. "a macvtap (type 'direct') on eth1".
        how: String,
    },
    /// Nowhere this project acts: not an isolated network, or nothing tells which.
    Elsewhere,
}

impl Placement {
    /// The bridge of a vNIC on one.
    pub fn bridge(&self) -> Option<&str> {
        match self {
            Placement::Bridge(bridge) => Some(bridge),
            _ => None,
        }
    }
}

/// Where `iface` of `doc` lands, given the isolated networks of `state`.
pub fn place(iface: &Interface, doc: &Document, state: &State) -> Placement {
    place_with(iface, doc, state, &PciDevices::system())
}

/// The host's PCI devices and network interfaces, as sysfs shows them.
#[derive(Clone, Debug)]
pub struct PciDevices {
    /// `/sys/bus/pci/devices`.
    pub pci: PathBuf,
    /// `/sys/class/net`.
    pub net: PathBuf,
}

impl PciDevices {
    /// The running host's (the PCI root overridable by root, see [`ENV_SYS_PCI`]).
    pub fn system() -> PciDevices {
        PciDevices {
            pci: crate::host::config::dir_override(ENV_SYS_PCI).unwrap_or_else(|| PathBuf::from(SYS_PCI)),
            net: PathBuf::from(SYS_CLASS_NET),
        }
    }

    /// The network interfaces of the physical function of VF `vf` (`DDDD:BB:SS.F`, as the
    /// parser formats it), each with the bond it is a slave of, if any.
    fn parent_nics(&self, vf: &str) -> Vec<(String, Option<String>)> {
        let Ok(entries) = std::fs::read_dir(self.pci.join(vf).join("physfn").join("net")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .map(|nic| {
                let master = std::fs::read_link(self.net.join(&nic).join("master"))
                    .ok()
                    .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()));
                (nic, master)
            })
            .collect()
    }
}

/// The isolated network whose uplink a VF shares: its PF is the uplink's NIC (or a slave of
/// its bond) and its VLAN is the uplink's.
fn network_of_vf<'s>(vf: &str, vlan: Option<u16>, state: &'s State, pci: &PciDevices) -> Option<&'s str> {
    let parents = pci.parent_nics(vf);
    state.networks.iter().find_map(|(name, policy)| {
        let uplink = policy.uplink.as_deref()?;
        let (base, uplink_vlan) = match uplink.rsplit_once('.') {
            Some((base, id)) => (base, id.parse::<u16>().ok()),
            None => (uplink, None),
        };
        let shares = parents
            .iter()
            .any(|(nic, master)| nic == base || master.as_deref() == Some(base));
        (shares && uplink_vlan == vlan).then_some(name.as_str())
    })
}

/// [`place`], reading VFs' physical functions from `pci`.
pub fn place_with(iface: &Interface, doc: &Document, state: &State, pci: &PciDevices) -> Placement {
    if let Some(bridge) = bridge_of(&iface.attachment, state) {
        return Placement::Bridge(bridge);
    }
    let bypass = |network: &str, how: String| {
        state.networks.get(network).map(|policy| Placement::Bypass {
            network: network.to_string(),
            bridge: policy.bridge.clone(),
            how,
        })
    };
    let how = describe(&iface.attachment);
    if let Some(found) = doc.network_of(iface).and_then(|n| bypass(n, how.clone())) {
        return found;
    }
    if let Attachment::Hostdev(Some(vf)) = &iface.attachment {
        if let Some(found) = network_of_vf(vf, iface.vlan, state, pci).and_then(|n| bypass(n, how.clone())) {
            return found;
        }
    }
    if let Attachment::Direct(Some(dev)) = &iface.attachment {
        let on_dev = state
            .networks
            .iter()
            .find(|(_, p)| p.uplink.as_deref() == Some(dev.as_str()) || &p.bridge == dev);
        if let Some(found) = on_dev.and_then(|(n, _)| bypass(n, how)) {
            return found;
        }
    }
    Placement::Elsewhere
}

/// The Linux bridge of a `bridge` interface, or of a `network` one whose libvirt network is
/// a bridge (named in live XML, else VDSM's `vdsm-NET` of a recorded network NET).
fn bridge_of(attachment: &Attachment, state: &State) -> Option<String> {
    match attachment {
        Attachment::Bridge(bridge) => bridge.clone(),
        Attachment::Network {
            bridge: Some(bridge), ..
        } => Some(bridge.clone()),
        Attachment::Network {
            network: Some(network),
            bridge: None,
        } => {
            let name = network.strip_prefix(LIBVIRT_NET_PREFIX)?;
            state.networks.get(name).map(|p| p.bridge.clone())
        }
        _ => None,
    }
}

/// How a vNIC that is not on a bridge reaches the network, for messages.
fn describe(attachment: &Attachment) -> String {
    match attachment {
        Attachment::Direct(Some(dev)) => format!("a macvtap (type 'direct') on {dev}"),
        Attachment::Direct(None) => "a macvtap (type 'direct')".to_string(),
        Attachment::Hostdev(Some(pci)) => format!("an SR-IOV VF (type 'hostdev') {pci}"),
        Attachment::Hostdev(None) => "an SR-IOV VF (type 'hostdev')".to_string(),
        Attachment::Network { network, .. } => format!(
            "libvirt network {} (type 'network'), not a bridge",
            network.as_deref().unwrap_or("?")
        ),
        Attachment::Unknown => "an interface without a type".to_string(),
        other => format!("an interface of type '{}'", crate::model::ifname::cut(other.kind())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::NetworkPolicy;
    use crate::vdsm::domain;

    fn state() -> State {
        let mut state = State::default();
        state.networks.insert(
            "red".into(),
            NetworkPolicy {
                bridge: "red".into(),
                uplink: Some("eth1.100".into()),
                ..NetworkPolicy::default()
            },
        );
        state
    }

    fn places(xml: &str) -> Vec<Placement> {
        let doc = domain::parse(xml.as_bytes()).unwrap();
        let state = state();
        let no_vfs = PciDevices {
            pci: PathBuf::from("/nonexistent"),
            net: PathBuf::from("/nonexistent"),
        };
        doc.interfaces
            .iter()
            .map(|i| place_with(i, &doc, &state, &no_vfs))
            .collect()
    }

    const START: &str = include_str!("../../tests/fixtures/bypass_vm_start.xml");

    #[test]
    fn every_kind_of_vnic_of_an_engine_domain() {
        let bypass = |how: &str| Placement::Bypass {
            network: "red".into(),
            bridge: "red".into(),
            how: how.into(),
        };
        assert_eq!(
            places(START),
            [
                Placement::Bridge("red".into()),
                Placement::Bridge("red".into()),
                bypass("a macvtap (type 'direct') on eth1.100"),
                bypass("an SR-IOV VF (type 'hostdev') 0000:05:10.7"),
                Placement::Elsewhere,
                Placement::Elsewhere,
                Placement::Bridge("ovirtmgmt".into()),
                Placement::Elsewhere,
            ]
        );
    }

    #[test]
    fn live_network_interfaces_name_their_bridge() {
        let live = "<interface type='network'><mac address='56:6f:1a:00:00:21'/>\
                    <source network='vdsm-blue' portid='6d4a' bridge='blue'/><target dev='vnet7'/></interface>";
        assert_eq!(places(live), [Placement::Bridge("blue".into())]);
        let engine = "<interface type=\"network\"><source network=\"vdsm-blue\"/></interface>";
        assert_eq!(places(engine), [Placement::Elsewhere], "blue is not isolated");
        let foreign = "<interface type='network'><source network='red'/></interface>";
        assert_eq!(places(foreign), [Placement::Elsewhere], "not a VDSM network");
    }

    /// A fake sysfs: VF 0000:05:10.7 of PF eth1, VF 0000:06:02.1 of PF eth4, a slave of bond0.
    fn sysfs() -> (tempfile::TempDir, PciDevices) {
        let dir = tempfile::tempdir().unwrap();
        let pci = dir.path().join("bus/pci/devices");
        let net = dir.path().join("class/net");
        std::fs::create_dir_all(pci.join("0000:05:10.7/physfn/net/eth1")).unwrap();
        std::fs::create_dir_all(pci.join("0000:06:02.1/physfn/net/eth4")).unwrap();
        std::fs::create_dir_all(net.join("eth4")).unwrap();
        std::fs::create_dir_all(net.join("bond0")).unwrap();
        std::os::unix::fs::symlink("../bond0", net.join("eth4/master")).unwrap();
        (dir, PciDevices { pci, net })
    }

    #[test]
    fn a_hostdev_without_metadata_is_placed_by_its_physical_function() {
        let (_dir, pci) = sysfs();
        let hotplug = |addr: &str, vlan: &str| {
            let (bus, rest) = addr.split_once(':').unwrap();
            let (slot, function) = rest.split_once('.').unwrap();
            format!(
                "<interface type='hostdev' managed='no'><mac address='56:6f:1a:00:00:31'/>\
                 <source><address type='pci' domain='0x0000' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/></source>\
                 {vlan}</interface>"
            )
        };
        let mut state = state();
        state.networks.insert(
            "green".into(),
            NetworkPolicy {
                bridge: "green".into(),
                uplink: Some("bond0".into()),
                ..NetworkPolicy::default()
            },
        );
        let place = |xml: String| {
            let doc = domain::parse(xml.as_bytes()).unwrap();
            match place_with(&doc.interfaces[0], &doc, &state, &pci) {
                Placement::Bypass { network, .. } => Some(network),
                _ => None,
            }
        };
        let tag = "<vlan><tag id='100'/></vlan>";
        assert_eq!(
            place(hotplug("05:10.7", tag)),
            Some("red".into()),
            "eth1.100 is red's uplink"
        );
        assert_eq!(place(hotplug("05:10.7", "")), None, "untagged: not red's VLAN");
        assert_eq!(place(hotplug("05:10.7", "<vlan><tag id='200'/></vlan>")), None);
        assert_eq!(
            place(hotplug("06:02.1", "")),
            Some("green".into()),
            "eth4 is a slave of green's bond0"
        );
        assert_eq!(place(hotplug("07:00.1", tag)), None, "not a VF this host knows");
    }
}
