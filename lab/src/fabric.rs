//! A two-or-more-host lab for cross-host isolation (`Fabric`): several host namespaces,
//! each with the network's bridge, its uplink and VMs, and a switch namespace whose bridge
//! joins the uplinks and holds the gateway address.
//!
//! ```text
//!   {prefix}-h1: bridge (10.77.0.1) ─ eth1 ══ p-h1 ─┐
//!                  └─ vnetN ══ {prefix}-vmN          ├─ sw0 (gateway 10.77.0.254)  {prefix}-sw
//!   {prefix}-h2: bridge (10.77.0.2) ─ eth1 ══ p-h2 ─┘
//!                  └─ vnetM ══ {prefix}-vmM
//! ```
//!
//! VMs of every host take MACs from one oVirt-like pool (`56:6f:4c:ab:00:NN`) and addresses
//! from one subnet, as on a real cluster. Endpoints are the VMs, [`GW`] and the hosts by
//! name, probed with the same code as [`super::Lab`] (`probe::measure`).

use std::net::Ipv4Addr;
use std::process::Output;

use anyhow::{anyhow, bail, Context, Result};

use super::mac::{format_mac, tap_mac, Mac};
use super::matrix::Matrix;
use super::netns;
use super::probe;
use super::spec::{check_ifname, is_vm, Endpoint, VmSpec, GUEST_IF, GW, GW_MAC};
use super::tools::{ip_in, run, CAT, IP};

/// Name of the switch bridge in the switch namespace.
pub const SWITCH_BRIDGE: &str = "sw0";

/// One host of a fabric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FabricHost {
    /// Endpoint name and namespace suffix (`h1`, `h2`, ...).
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Address of its bridge device.
    pub ipv4: Ipv4Addr,
    /// MAC of its bridge device (distinct per host: they share the wire).
    pub mac: Mac,
}

/// A live fabric: hosts, switch, VMs. Dropping it deletes its namespaces.
#[derive(Debug)]
pub struct Fabric {
    prefix: String,
    bridge: String,
    uplink: String,
    prefix_len: u8,
    gw_ipv4: Ipv4Addr,
    sw_ns: String,
    hosts: Vec<FabricHost>,
    /// (host name, VM).
    vms: Vec<(String, VmSpec)>,
    owned: Vec<String>,
}

impl Fabric {
    /// Hosts `h1..=hN` (N = `hosts`, 1..=9) with bridge `isonet` on uplink `eth1`, host
    /// addresses 10.77.0.N, gateway 10.77.0.254 on the switch; no VMs yet.
    pub fn create(prefix: &str, hosts: u8) -> Result<Fabric> {
        if !(1..=9).contains(&hosts) {
            bail!("a fabric has 1 to 9 hosts, not {hosts}");
        }
        netns::check_name(&format!("{prefix}-sw"))?;
        let mut fabric = Fabric {
            prefix: prefix.to_string(),
            bridge: "isonet".to_string(),
            uplink: "eth1".to_string(),
            prefix_len: 24,
            gw_ipv4: Ipv4Addr::new(10, 77, 0, 254),
            sw_ns: format!("{prefix}-sw"),
            hosts: Vec::new(),
            vms: Vec::new(),
            owned: Vec::new(),
        };
        fabric
            .build(hosts)
            .with_context(|| format!("building fabric {prefix}"))?;
        Ok(fabric)
    }

    fn build(&mut self, hosts: u8) -> Result<()> {
        let sw = self.sw_ns.clone();
        self.add_namespace(&sw)?;
        let gw_mac = format_mac(GW_MAC);
        #[rustfmt::skip]
        ip_in(&sw, &[
            "link", "add", SWITCH_BRIDGE, "address", &gw_mac, "type", "bridge",
            "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0",
        ])?;
        ip_in(&sw, &["addr", "add", &self.cidr(self.gw_ipv4), "dev", SWITCH_BRIDGE])?;
        ip_in(&sw, &["link", "set", "dev", SWITCH_BRIDGE, "up"])?;
        for n in 1..=hosts {
            let host = FabricHost {
                name: format!("h{n}"),
                ns: format!("{}-h{n}", self.prefix),
                ipv4: Ipv4Addr::new(10, 77, 0, n),
                mac: [0x02, 0xb1, 0x00, 0x00, n, 0x01],
            };
            self.add_namespace(&host.ns)?;
            let (ns, mac) = (&host.ns, format_mac(host.mac));
            let port = format!("p-{}", host.name);
            #[rustfmt::skip]
            ip_in(ns, &[
                "link", "add", &self.bridge, "address", &mac, "type", "bridge",
                "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0",
            ])?;
            ip_in(ns, &["addr", "add", &self.cidr(host.ipv4), "dev", &self.bridge])?;
            ip_in(ns, &["link", "set", "dev", &self.bridge, "up"])?;
            ip_in(
                ns,
                &[
                    "link",
                    "add",
                    &self.uplink,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &port,
                    "netns",
                    &sw,
                ],
            )?;
            ip_in(ns, &["link", "set", "dev", &self.uplink, "master", &self.bridge])?;
            ip_in(ns, &["link", "set", "dev", &self.uplink, "up"])?;
            ip_in(&sw, &["link", "set", "dev", &port, "master", SWITCH_BRIDGE])?;
            ip_in(&sw, &["link", "set", "dev", &port, "up"])?;
            self.hosts.push(host);
        }
        Ok(())
    }

    fn add_namespace(&mut self, name: &str) -> Result<()> {
        if netns::exists(name) {
            bail!("namespace {name} already exists (a stale fabric?)");
        }
        netns::add(name)?;
        self.owned.push(name.to_string());
        netns::write_sysctls(
            name,
            &[
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
                ("net.ipv6.conf.default.addr_gen_mode", "0"),
            ],
        )?;
        ip_in(name, &["link", "set", "dev", "lo", "up"]).map(drop)
    }

    fn cidr(&self, addr: Ipv4Addr) -> String {
        format!("{addr}/{}", self.prefix_len)
    }

    /// VM number `n` (1..=200): `vm{n}` on tap `vnet{n}`, MAC `56:6f:4c:ab:00:{n}` (one pool
    /// for the whole cluster), address 10.77.0.{10+n}.
    pub fn numbered_vm(&self, n: u8) -> VmSpec {
        VmSpec::new(
            &format!("vm{n}"),
            &format!("vnet{n}"),
            [0x56, 0x6f, 0x4c, 0xab, 0x00, n],
            Ipv4Addr::new(10, 77, 0, 10u8.saturating_add(n)),
        )
    }

    /// Plugs `vm` into `host`'s bridge as libvirt does (tap `fe:` + guest MAC, on the
    /// bridge, then up).
    pub fn add_vm(&mut self, host: &str, vm: &VmSpec) -> Result<()> {
        let host_ns = self.host(host)?.ns.clone();
        if !is_vm(&vm.name) || self.hosts.iter().any(|h| h.name == vm.name) {
            bail!("a VM cannot be named {:?}", vm.name);
        }
        check_ifname(&vm.tap)?;
        if self
            .vms
            .iter()
            .any(|(_, v)| v.name == vm.name || v.guest_mac == vm.guest_mac || v.ipv4 == vm.ipv4)
        {
            bail!("VM {} clashes with another VM (name, MAC or address)", vm.name);
        }
        let ns = self.ns_of(&vm.name);
        netns::check_name(&ns)?;
        self.add_namespace(&ns)?;
        let (tap_mac, guest_mac) = (format_mac(tap_mac(vm.guest_mac)), format_mac(vm.guest_mac));
        #[rustfmt::skip]
        let plugged = ip_in(&host_ns, &[
            "link", "add", &vm.tap, "address", &tap_mac, "type", "veth",
            "peer", "name", GUEST_IF, "address", &guest_mac, "netns", &ns,
        ])
        .and_then(|_| ip_in(&host_ns, &["link", "set", "dev", &vm.tap, "master", &self.bridge]))
        .and_then(|_| ip_in(&host_ns, &["link", "set", "dev", &vm.tap, "up"]))
        .and_then(|_| ip_in(&ns, &["addr", "add", &self.cidr(vm.ipv4), "dev", GUEST_IF]))
        .and_then(|_| ip_in(&ns, &["link", "set", "dev", GUEST_IF, "up"]));
        if let Err(e) = plugged {
            let _ = netns::delete(&ns);
            self.owned.retain(|o| *o != ns);
            return Err(e.context(format!("adding VM {} on {host}", vm.name)));
        }
        self.vms.push((host.to_string(), vm.clone()));
        Ok(())
    }

    /// Host `name`.
    pub fn host(&self, name: &str) -> Result<&FabricHost> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| anyhow!("no host named {name}"))
    }

    /// The hosts.
    pub fn hosts(&self) -> &[FabricHost] {
        &self.hosts
    }

    /// Namespace of host `name` (where its hooks run).
    pub fn host_ns(&self, name: &str) -> Result<&str> {
        self.host(name).map(|h| h.ns.as_str())
    }

    /// The switch namespace (bridge [`SWITCH_BRIDGE`] with the gateway address).
    pub fn switch_ns(&self) -> &str {
        &self.sw_ns
    }

    /// Namespace of VM `vm`.
    pub fn ns_of(&self, vm: &str) -> String {
        format!("{}-{vm}", self.prefix)
    }

    /// The network's bridge name on every host.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The uplink port name on every host.
    pub fn uplink(&self) -> &str {
        &self.uplink
    }

    /// (host, VM) of every plugged VM.
    pub fn vms(&self) -> &[(String, VmSpec)] {
        &self.vms
    }

    /// Runs `args` (program by absolute path first) under `ip netns exec NS`.
    pub fn exec_in(&self, ns: &str, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", ns];
        full.extend_from_slice(args);
        run(IP, &full)
    }

    /// `/sys/class/net/TAP/brport/isolated` on `host`.
    pub fn port_isolated(&self, host: &str, tap: &str) -> Result<bool> {
        check_ifname(tap)?;
        let file = format!("/sys/class/net/{tap}/brport/isolated");
        let out = self.exec_in(self.host_ns(host)?, &[CAT, &file])?;
        match String::from_utf8_lossy(&out.stdout).trim() {
            "0" => Ok(false),
            "1" => Ok(true),
            other => bail!("unexpected content {other:?} in {file} on {host}"),
        }
    }

    /// Every VM, then the gateway, then the hosts.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut all: Vec<Endpoint> = self
            .vms
            .iter()
            .map(|(_, vm)| Endpoint {
                name: vm.name.clone(),
                ns: self.ns_of(&vm.name),
                ifname: GUEST_IF.to_string(),
                mac: vm.guest_mac,
                ipv4: vm.ipv4,
            })
            .collect();
        all.push(Endpoint {
            name: GW.to_string(),
            ns: self.sw_ns.clone(),
            ifname: SWITCH_BRIDGE.to_string(),
            mac: GW_MAC,
            ipv4: self.gw_ipv4,
        });
        all.extend(self.hosts.iter().map(|h| Endpoint {
            name: h.name.clone(),
            ns: h.ns.clone(),
            ifname: self.bridge.clone(),
            mac: h.mac,
            ipv4: h.ipv4,
        }));
        all
    }

    /// Probes every ordered pair of endpoints on IPv4, IPv6, ARP and a raw ethertype.
    pub fn matrix(&self) -> Result<Matrix> {
        probe::measure(&self.endpoints())
    }

    /// Whether endpoint `name` is a host of this fabric.
    pub fn is_host(&self, name: &str) -> bool {
        self.hosts.iter().any(|h| h.name == name)
    }

    /// Deletes every namespace, reporting the first failure.
    pub fn destroy(mut self) -> Result<()> {
        let mut first = None;
        for ns in std::mem::take(&mut self.owned).iter().rev() {
            if let Err(e) = netns::delete(ns) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for ns in self.owned.iter().rev() {
            if let Err(e) = netns::delete(ns) {
                log::warn!("fabric cleanup: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_host_counts_before_building_anything() {
        assert!(Fabric::create("t-x", 0).is_err());
        assert!(Fabric::create("t-x", 10).is_err());
    }
}
