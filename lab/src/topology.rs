//! The live lab of namespaces (`Lab`): building, hotplugging, inspecting, deleting.
//!
//! ```text
//!   {prefix}-gw          {prefix}-host                       {prefix}-vm1 ...
//!   eth0 (gw_ipv4) ===== uplink ─┐
//!                                ├─ bridge (host_ipv4)
//!                    vm.tap ─────┘  ===== eth0 (vm.ipv4, guest_mac)
//! ```

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::process::Output;

use anyhow::{anyhow, bail, Context, Result};

use super::mac::{format_mac, tap_mac};
use super::matrix::Matrix;
use super::netns;
use super::probe;
use super::spec::{check_ifname, check_vm, Endpoint, LabSpec, VmSpec, BRIDGE_MAC, GUEST_IF, GW, GW_MAC, HOST};
use super::tools::{ip_in, run, BRIDGE, CAT, IP};

/// A live lab: namespaces, bridge, uplink and VM ports. Dropping it deletes its namespaces.
#[derive(Debug)]
pub struct Lab {
    /// The shape, with the VMs currently plugged.
    spec: LabSpec,
    /// `{prefix}-host`.
    host_ns: String,
    /// `{prefix}-gw`.
    gw_ns: String,
    /// Namespaces this lab created and must delete.
    owned: Vec<String>,
}

impl Lab {
    /// Builds the lab of `spec`; on error, whatever was built is deleted again.
    pub fn create(spec: &LabSpec) -> Result<Lab> {
        spec.validate()?;
        let mut lab = Lab {
            spec: LabSpec {
                vms: Vec::new(),
                ..spec.clone()
            },
            host_ns: format!("{}-{HOST}", spec.prefix),
            gw_ns: format!("{}-{GW}", spec.prefix),
            owned: Vec::new(),
        };
        lab.build_core()
            .with_context(|| format!("building lab {}", spec.prefix))?;
        for vm in &spec.vms {
            lab.add_vm(vm)?;
        }
        Ok(lab)
    }

    /// Host namespace, bridge with its address, gateway namespace and uplink.
    fn build_core(&mut self) -> Result<()> {
        let (host, gw) = (self.host_ns.clone(), self.gw_ns.clone());
        self.add_namespace(&host)?;
        self.add_namespace(&gw)?;
        let s = &self.spec;
        let (bridge_mac, gw_mac) = (format_mac(BRIDGE_MAC), format_mac(GW_MAC));
        let (host_addr, gw_addr) = (cidr(s.host_ipv4, s.prefix_len), cidr(s.gw_ipv4, s.prefix_len));
        #[rustfmt::skip]
        let bridge = [
            "link", "add", &s.bridge, "address", &bridge_mac, "type", "bridge",
            "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0",
        ];
        #[rustfmt::skip]
        let uplink = [
            "link", "add", &s.uplink, "type", "veth",
            "peer", "name", GUEST_IF, "address", &gw_mac, "netns", &gw,
        ];
        ip_in(&host, &bridge)?;
        ip_in(&host, &["addr", "add", &host_addr, "dev", &s.bridge])?;
        ip_in(&host, &["link", "set", "dev", &s.bridge, "up"])?;
        ip_in(&host, &uplink)?;
        ip_in(&host, &["link", "set", "dev", &s.uplink, "master", &s.bridge])?;
        ip_in(&host, &["link", "set", "dev", &s.uplink, "up"])?;
        ip_in(&gw, &["addr", "add", &gw_addr, "dev", GUEST_IF])?;
        ip_in(&gw, &["link", "set", "dev", GUEST_IF, "up"])?;
        Ok(())
    }

    /// Creates namespace `name` (owned by the lab), without DAD, loopback up.
    fn add_namespace(&mut self, name: &str) -> Result<()> {
        if netns::exists(name) {
            bail!("namespace {name} already exists (a stale lab? see Lab::cleanup_stale)");
        }
        netns::add(name)?;
        self.owned.push(name.to_string());
        // Before any interface exists, so every later one has usable link-local addresses
        // at once and derives them from its MAC.
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

    /// Hotplugs a VM: its namespace and a new port on the bridge.
    pub fn add_vm(&mut self, vm: &VmSpec) -> Result<()> {
        check_vm(&self.spec, &self.spec.vms, vm)?;
        let ns = self.ns_of(&vm.name);
        let added = self.add_namespace(&ns).and_then(|()| self.plug(vm));
        if let Err(e) = added {
            self.delete_namespace(&ns);
            return Err(e.context(format!("adding VM {}", vm.name)));
        }
        self.spec.vms.push(vm.clone());
        Ok(())
    }

    /// Creates the veth of `vm` and puts it on the bridge as libvirt does: tap added to the
    /// bridge, then brought up. On error, deletes the veth again.
    fn plug(&self, vm: &VmSpec) -> Result<()> {
        let (host, ns) = (&self.host_ns, self.ns_of(&vm.name));
        let tap_mac = format_mac(tap_mac(vm.guest_mac));
        let guest_mac = format_mac(vm.guest_mac);
        #[rustfmt::skip]
        let veth = [
            "link", "add", &vm.tap, "address", &tap_mac, "type", "veth",
            "peer", "name", GUEST_IF, "address", &guest_mac, "netns", &ns,
        ];
        ip_in(host, &veth)?;
        let address = cidr(vm.ipv4, self.spec.prefix_len);
        let configured = ip_in(host, &["link", "set", "dev", &vm.tap, "master", &self.spec.bridge])
            .and_then(|_| ip_in(host, &["link", "set", "dev", &vm.tap, "up"]))
            .and_then(|_| ip_in(&ns, &["addr", "add", &address, "dev", GUEST_IF]))
            .and_then(|_| ip_in(&ns, &["link", "set", "dev", GUEST_IF, "up"]));
        if let Err(e) = configured {
            let _ = ip_in(host, &["link", "del", "dev", &vm.tap]);
            return Err(e);
        }
        Ok(())
    }

    /// Unplugs VM `name`: deletes its tap, then its namespace.
    pub fn remove_vm(&mut self, name: &str) -> Result<()> {
        let vm = self.vm(name).cloned().ok_or_else(|| anyhow!("no VM named {name}"))?;
        let unplugged = ip_in(&self.host_ns, &["link", "del", "dev", &vm.tap]);
        let ns = self.ns_of(name);
        let deleted = netns::delete(&ns);
        self.owned.retain(|n| *n != ns);
        self.spec.vms.retain(|v| v.name != name);
        unplugged.and(deleted)
    }

    /// Deletes and re-creates the veth of VM `name` (a new tap with the same name, as after
    /// a VM restart or migration): fresh ifindex, no port flags.
    pub fn recreate_port(&self, name: &str) -> Result<()> {
        let vm = self.vm(name).ok_or_else(|| anyhow!("no VM named {name}"))?;
        ip_in(&self.host_ns, &["link", "del", "dev", &vm.tap])?;
        self.plug(vm)
    }

    /// Takes port `tap` off the bridge (it stays up).
    pub fn detach_port(&self, tap: &str) -> Result<()> {
        ip_in(&self.host_ns, &["link", "set", "dev", tap, "nomaster"]).map(drop)
    }

    /// Puts port `tap` back on the bridge and up.
    pub fn attach_port(&self, tap: &str) -> Result<()> {
        ip_in(&self.host_ns, &["link", "set", "dev", tap, "master", &self.spec.bridge])?;
        ip_in(&self.host_ns, &["link", "set", "dev", tap, "up"]).map(drop)
    }

    /// Sets the kernel isolation flag of port `tap` (`bridge link set dev TAP isolated on`),
    /// as libvirt does for `<port isolated='yes'/>`.
    pub fn set_port_isolated(&self, tap: &str, on: bool) -> Result<()> {
        let flag = if on { "on" } else { "off" };
        let out = self.exec_in_host(&[BRIDGE, "link", "set", "dev", tap, "isolated", flag])?;
        check_output(&out, &format!("bridge link set dev {tap} isolated {flag}"))
    }

    /// Reads `/sys/class/net/TAP/brport/isolated` in the host namespace.
    pub fn port_isolated(&self, tap: &str) -> Result<bool> {
        check_ifname(tap)?;
        let file = format!("/sys/class/net/{tap}/brport/isolated");
        let out = self.exec_in_host(&[CAT, &file])?;
        check_output(&out, &format!("reading {file}"))?;
        match String::from_utf8_lossy(&out.stdout).trim() {
            "0" => Ok(false),
            "1" => Ok(true),
            other => bail!("unexpected content {other:?} in {file}"),
        }
    }

    /// Reads `/sys/class/net/PORT/netdev_group` (its interface group) in the host namespace.
    pub fn port_group(&self, port: &str) -> Result<u32> {
        check_ifname(port)?;
        let file = format!("/sys/class/net/{port}/netdev_group");
        let out = self.exec_in_host(&[CAT, &file])?;
        check_output(&out, &format!("reading {file}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .with_context(|| format!("unexpected content {text:?} in {file}"))
    }

    /// Puts a port in interface group `group` behind the hooks' back (`ip link set dev PORT
    /// group G`), as an administrator or another tool would.
    pub fn set_port_group(&self, port: &str, group: u32) -> Result<()> {
        self.ip_in_host(&["link", "set", "dev", port, "group", &group.to_string()])
            .map(drop)
    }

    /// Names of the bridge's ports, sorted.
    pub fn bridge_ports(&self) -> Result<Vec<String>> {
        let json = ip_in(&self.host_ns, &["-j", "link", "show", "master", &self.spec.bridge])?;
        let mut ports = ifnames(&json)?;
        ports.sort();
        Ok(ports)
    }

    /// Runs `args` (program by absolute path, then its arguments) under
    /// `ip netns exec HOST`; returns its output whatever its exit status.
    pub fn exec_in_host(&self, args: &[&str]) -> Result<Output> {
        self.exec_in(&self.host_ns, args)
    }

    /// Runs `args` (program by absolute path, then its arguments) under `ip netns exec NS`.
    pub fn exec_in(&self, ns: &str, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", ns];
        full.extend_from_slice(args);
        run(IP, &full)
    }

    /// Runs `ip -n HOST args...`, failing unless it exits 0; returns its stdout.
    pub fn ip_in_host(&self, args: &[&str]) -> Result<String> {
        ip_in(&self.host_ns, args)
    }

    /// The host namespace (bridge, uplink, taps: where hooks run).
    pub fn host_ns(&self) -> &str {
        &self.host_ns
    }

    /// The gateway namespace.
    pub fn gw_ns(&self) -> &str {
        &self.gw_ns
    }

    /// The namespace of VM `vm`: `{prefix}-{vm}`.
    pub fn ns_of(&self, vm: &str) -> String {
        format!("{}-{vm}", self.spec.prefix)
    }

    /// The lab's shape, with the VMs currently plugged.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// The VMs currently plugged.
    pub fn vms(&self) -> &[VmSpec] {
        &self.spec.vms
    }

    /// VM `name`, if plugged.
    pub fn vm(&self, name: &str) -> Option<&VmSpec> {
        self.spec.vms.iter().find(|v| v.name == name)
    }

    /// Every VM, then the gateway, then the host.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut all: Vec<Endpoint> = self
            .spec
            .vms
            .iter()
            .map(|vm| Endpoint {
                name: vm.name.clone(),
                ns: self.ns_of(&vm.name),
                ifname: GUEST_IF.to_string(),
                mac: vm.guest_mac,
                ipv4: vm.ipv4,
            })
            .collect();
        all.push(Endpoint {
            name: GW.to_string(),
            ns: self.gw_ns.clone(),
            ifname: GUEST_IF.to_string(),
            mac: GW_MAC,
            ipv4: self.spec.gw_ipv4,
        });
        all.push(Endpoint {
            name: HOST.to_string(),
            ns: self.host_ns.clone(),
            ifname: self.spec.bridge.clone(),
            mac: BRIDGE_MAC,
            ipv4: self.spec.host_ipv4,
        });
        all
    }

    /// Probes every ordered pair of endpoints on IPv4, IPv6, ARP and a raw ethertype.
    pub fn matrix(&self) -> Result<Matrix> {
        probe::measure(&self.endpoints())
    }

    /// Like [`Lab::matrix`], between the named endpoints only.
    pub fn matrix_of(&self, names: &[&str]) -> Result<Matrix> {
        let all = self.endpoints();
        let known: HashSet<&str> = all.iter().map(|e| e.name.as_str()).collect();
        if let Some(unknown) = names.iter().find(|n| !known.contains(**n)) {
            bail!("no endpoint named {unknown}");
        }
        let chosen: Vec<Endpoint> = all.into_iter().filter(|e| names.contains(&e.name.as_str())).collect();
        probe::measure(&chosen)
    }

    /// Deletes every namespace of the lab, reporting the first failure.
    pub fn destroy(mut self) -> Result<()> {
        let mut first_error = None;
        for ns in std::mem::take(&mut self.owned).iter().rev() {
            if let Err(e) = netns::delete(ns) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Deletes the namespaces named `{prefix}-*` left by a lab that was never dropped (a
    /// killed process); returns their names. Use a prefix no running lab shares.
    pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
        let stale = netns::list_starting_with(&format!("{prefix}-"))?;
        for ns in &stale {
            netns::delete(ns)?;
        }
        Ok(stale)
    }

    /// Deletes namespace `name`, ignoring errors, and forgets it.
    fn delete_namespace(&mut self, name: &str) {
        if self.owned.iter().any(|n| n == name) {
            let _ = netns::delete(name);
            self.owned.retain(|n| n != name);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.owned.iter().rev() {
            if let Err(e) = netns::delete(ns) {
                log::warn!("lab cleanup: {e:#}");
            }
        }
    }
}

/// `addr/len`.
fn cidr(addr: Ipv4Addr, len: u8) -> String {
    format!("{addr}/{len}")
}

/// Fails with the command's stderr unless it exited 0.
fn check_output(out: &Output, what: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// The `ifname` fields of `ip -j link show` output.
fn ifnames(json: &str) -> Result<Vec<String>> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let links: Vec<serde_json::Value> = serde_json::from_str(json).context("parsing `ip -j link show` output")?;
    Ok(links
        .iter()
        .filter_map(|l| l.get("ifname").and_then(|n| n.as_str()).map(String::from))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifnames_reads_ip_json() {
        let json = r#"[{"ifindex":3,"ifname":"eth1"},{"ifindex":5,"ifname":"vnet1"}]"#;
        assert_eq!(ifnames(json).unwrap(), vec!["eth1", "vnet1"]);
        assert!(ifnames("").unwrap().is_empty());
        assert!(ifnames("[]").unwrap().is_empty());
    }
}
