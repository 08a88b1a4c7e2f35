//! The shape of a lab (`LabSpec`, `VmSpec`), checked before anything is built, and the
//! endpoints probes run between.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Result};

use super::mac::{format_mac, link_local, Mac};
use super::netns;

/// Endpoint name of the gateway namespace in a reachability matrix.
pub const GW: &str = "gw";
/// Endpoint name of the host (the bridge device's address) in a reachability matrix.
pub const HOST: &str = "host";
/// Address of the bridge device. Set explicitly so it never follows its ports.
pub const BRIDGE_MAC: Mac = [0x02, 0xb1, 0x00, 0x00, 0x00, 0x01];
/// Address of the gateway's `eth0`.
pub const GW_MAC: Mac = [0x02, 0xb1, 0x00, 0x00, 0x00, 0xfe];
/// Name of the interface inside VM and gateway namespaces.
pub const GUEST_IF: &str = "eth0";

/// Whether a matrix endpoint name is a VM (not [`GW`] nor [`HOST`]).
pub fn is_vm(endpoint: &str) -> bool {
    endpoint != GW && endpoint != HOST
}

/// A namespace prefix unique to this process and call: `{tag}-{pid}-{n}`.
pub fn unique_prefix(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{tag}-{}-{n}", std::process::id())
}

/// One VM: its namespace `{prefix}-{name}`, its tap on the bridge, its guest side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// Endpoint name, also the namespace suffix (not `gw` nor `host`).
    pub name: String,
    /// Host end of its veth, on the bridge (libvirt's `vnetN`); at most 15 bytes.
    pub tap: String,
    /// MAC of the guest's `eth0`; the tap gets it with the first byte set to `0xfe`.
    pub guest_mac: Mac,
    /// Address of the guest's `eth0`, in the lab's subnet.
    pub ipv4: Ipv4Addr,
}

impl VmSpec {
    /// A VM from its four attributes.
    pub fn new(name: &str, tap: &str, guest_mac: Mac, ipv4: Ipv4Addr) -> VmSpec {
        VmSpec {
            name: name.to_string(),
            tap: tap.to_string(),
            guest_mac,
            ipv4,
        }
    }
}

/// The shape of a lab: names, addresses and VMs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSpec {
    /// Namespace prefix, short and unique per test (see [`unique_prefix`]).
    pub prefix: String,
    /// Name of the bridge in the host namespace (the oVirt network's name).
    pub bridge: String,
    /// Host end of the uplink veth, a bridge port (`eth1`, `bond0.100`, ...).
    pub uplink: String,
    /// Address of the bridge device (the host endpoint).
    pub host_ipv4: Ipv4Addr,
    /// Address of the gateway's `eth0`.
    pub gw_ipv4: Ipv4Addr,
    /// Prefix length of every address of the lab.
    pub prefix_len: u8,
    /// VMs created with the lab.
    pub vms: Vec<VmSpec>,
}

impl LabSpec {
    /// Bridge `isonet`, uplink `eth1`, host 10.77.0.1/24, gateway 10.77.0.254, no VMs.
    pub fn new(prefix: &str) -> LabSpec {
        LabSpec {
            prefix: prefix.to_string(),
            bridge: "isonet".to_string(),
            uplink: "eth1".to_string(),
            host_ipv4: Ipv4Addr::new(10, 77, 0, 1),
            gw_ipv4: Ipv4Addr::new(10, 77, 0, 254),
            prefix_len: 24,
            vms: Vec::new(),
        }
    }

    /// VM number `n` (1..=200): `vm{n}` on `vnet{n}`, MAC `56:6f:4c:ab:00:{n}` (oVirt's
    /// default pool), address `.{10+n}` in the host's /24.
    pub fn numbered_vm(&self, n: u8) -> VmSpec {
        let [a, b, c, _] = self.host_ipv4.octets();
        VmSpec::new(
            &format!("vm{n}"),
            &format!("vnet{n}"),
            [0x56, 0x6f, 0x4c, 0xab, 0x00, n],
            Ipv4Addr::new(a, b, c, 10u8.saturating_add(n)),
        )
    }

    /// This spec with VMs 1..=count added (see [`LabSpec::numbered_vm`]).
    pub fn with_vms(mut self, count: u8) -> LabSpec {
        for n in 1..=count {
            let vm = self.numbered_vm(n);
            self.vms.push(vm);
        }
        self
    }

    /// Checks names and addresses before anything is created.
    pub fn validate(&self) -> Result<()> {
        netns::check_name(&format!("{}-{HOST}", self.prefix))?;
        check_ifname(&self.bridge)?;
        check_ifname(&self.uplink)?;
        if self.bridge == self.uplink {
            bail!("bridge and uplink are both named {}", self.bridge);
        }
        if !(1..=30).contains(&self.prefix_len) {
            bail!("prefix length {} is not in 1..=30", self.prefix_len);
        }
        if self.host_ipv4 == self.gw_ipv4 {
            bail!("host and gateway share the address {}", self.host_ipv4);
        }
        let mut seen = Vec::new();
        for vm in &self.vms {
            check_vm(self, &seen, vm)?;
            seen.push(vm.clone());
        }
        Ok(())
    }
}

/// Fails unless `name` is a usable interface name (1..=15 bytes, no `/`, `:` or space).
pub(crate) fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace());
    if !ok {
        bail!("invalid interface name {name:?} (1..=15 bytes, no '/', ':' or spaces)");
    }
    Ok(())
}

/// Fails unless `vm` can join a lab of `spec` that already has `others`.
pub(crate) fn check_vm(spec: &LabSpec, others: &[VmSpec], vm: &VmSpec) -> Result<()> {
    if !is_vm(&vm.name) {
        bail!("a VM cannot be named {:?}", vm.name);
    }
    netns::check_name(&format!("{}-{}", spec.prefix, vm.name))?;
    check_ifname(&vm.tap)?;
    if vm.tap == spec.bridge || vm.tap == spec.uplink {
        bail!("VM {} uses tap name {}, taken by the bridge or uplink", vm.name, vm.tap);
    }
    if vm.guest_mac[0] & 1 != 0 {
        bail!("VM {} has a multicast MAC {}", vm.name, format_mac(vm.guest_mac));
    }
    if vm.ipv4 == spec.host_ipv4 || vm.ipv4 == spec.gw_ipv4 {
        bail!("VM {} uses the host's or gateway's address {}", vm.name, vm.ipv4);
    }
    for other in others {
        if other.name == vm.name || other.tap == vm.tap || other.guest_mac == vm.guest_mac || other.ipv4 == vm.ipv4 {
            bail!(
                "VM {} clashes with VM {} (name, tap, MAC or address)",
                vm.name,
                other.name
            );
        }
    }
    Ok(())
}

/// A place probes start from and aim at: a namespace, an interface, its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Matrix name: a VM name, [`GW`] or [`HOST`].
    pub name: String,
    /// Namespace it lives in.
    pub ns: String,
    /// Interface probes leave from and arrive on (`eth0`, or the bridge for the host).
    pub ifname: String,
    /// MAC of that interface.
    pub mac: Mac,
    /// IPv4 address of that interface.
    pub ipv4: Ipv4Addr,
}

impl Endpoint {
    /// Its IPv6 link-local address (EUI-64 of its MAC).
    pub fn ipv6(&self) -> Ipv6Addr {
        link_local(self.mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_valid_and_numbered_vms_follow_the_host_subnet() {
        let spec = LabSpec::new("t-1").with_vms(3);
        spec.validate().unwrap();
        assert_eq!(spec.vms[2].name, "vm3");
        assert_eq!(spec.vms[2].tap, "vnet3");
        assert_eq!(spec.vms[2].ipv4, Ipv4Addr::new(10, 77, 0, 13));
        assert_eq!(format_mac(spec.vms[2].guest_mac), "56:6f:4c:ab:00:03");
    }

    #[test]
    fn invalid_specs_are_rejected() {
        let base = LabSpec::new("t-1").with_vms(2);
        let mut s = base.clone();
        s.uplink = "bond0.100-toolong".into();
        assert!(s.validate().is_err());
        let mut s = base.clone();
        s.vms[1].tap = "vnet1".into();
        assert!(s.validate().is_err());
        let mut s = base.clone();
        s.vms[0].name = GW.into();
        assert!(s.validate().is_err());
        let mut s = base.clone();
        s.prefix = "a/b".into();
        assert!(s.validate().is_err());
        let mut s = base;
        s.uplink = "bond0.100".into();
        s.validate().unwrap();
    }

    #[test]
    fn unique_prefixes_differ() {
        assert_ne!(unique_prefix("bi"), unique_prefix("bi"));
    }
}
