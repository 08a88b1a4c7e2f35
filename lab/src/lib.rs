//! The network-namespace test lab of docs/design.md §7, shared by the integration tests,
//! the benchmarks and the `bridge-isolation demo` command. A crate of its own: the product
//! library never links it, and the packaged binaries are built without the demo. Everything here needs root except the payload
//! builders, [`Matrix`] and the address helpers.
//!
//! # Topology ([`LabSpec`], [`VmSpec`], [`Lab`])
//!
//! [`Lab::create`] builds, with namespaces named `{prefix}-host`, `{prefix}-gw` and
//! `{prefix}-{vm}`:
//! - in the host namespace, bridge `spec.bridge` (STP off, multicast snooping off, fixed
//!   MAC [`BRIDGE_MAC`]) with `spec.host_ipv4` — the host endpoint;
//! - an uplink veth: `spec.uplink` on the bridge, `eth0` in the gateway namespace with
//!   `spec.gw_ipv4` and MAC [`GW_MAC`];
//! - per VM a veth: `vm.tap` on the bridge with MAC `fe:` + guest MAC (as libvirt), and
//!   `eth0` in the VM namespace with `vm.guest_mac` and `vm.ipv4`.
//!
//! DAD is off in every namespace and link-local addresses follow the MACs (EUI-64), so
//! IPv6 works at once. Hotplug with [`Lab::add_vm`] / [`Lab::remove_vm`], rebuild a tap
//! with [`Lab::recreate_port`], move it with [`Lab::detach_port`] / [`Lab::attach_port`].
//! Read the kernel with [`Lab::port_isolated`] and [`Lab::bridge_ports`]. Dropping the
//! lab deletes its namespaces; [`Lab::destroy`] does it reporting errors, and
//! [`Lab::cleanup_stale`] removes what a killed process left.
//!
//! # Reachability ([`Lab::matrix`], [`Matrix`], [`Protocol`])
//!
//! Endpoints are the VMs, [`GW`] and [`HOST`]. Each ordered pair gets four probes, all
//! concurrent: IPv4 ping, IPv6 link-local ping, an ARP request answered by the
//! destination, and a unicast frame of ethertype 0x88B5 whose random nonce must reach the
//! destination. Neighbour caches are flushed first; a failed probe is retried once before
//! it counts as blocked. A full matrix takes about 0.1 s when everything passes and about
//! 2 s when something is blocked (1 s timeout, once more on retry).
//!
//! # Hooks ([`run_hook_point`]) and payloads ([`setup_networks_json`], [`domain_xml`], ...)
//!
//! [`run_hook_point`] runs `HOOKS/POINT/*` inside a namespace exactly as VDSM does (sorted,
//! temp payload file, exit codes 0/1/2, clean environment) and returns a [`HookRun`].
//!
//! # Real libvirt and qemu guests ([`virt`])
//!
//! The same bridge with taps that a private libvirtd creates for real guests (a busybox
//! initramfs on Debian's kernel), driven through VDSM's hook points, judged from inside
//! the guests: see the [`virt`] module.
//!
//! # A systemd machine in the lab ([`container`])
//!
//! The machine's own OS tree booted by `systemd-nspawn` (systemd as PID 1, overlay root) in
//! a lab's host namespace, so that unit files run with their sandbox as on a host: see the
//! [`container`] module.
//!
//! # Use from a test
//!
//! ```ignore
//! use bridge_isolation_lab::{self as lab, is_vm, Lab, LabSpec};
//! if !lab::root_tests_enabled("my_test") { return; }
//! let lab = Lab::create(&LabSpec::new(&lab::unique_prefix("t")).with_vms(2))?;
//! let run = lab::run_hook_point(lab.host_ns(), hooks, "before_network_setup",
//!     lab::Payload::Json(lab::setup_networks_json(&[("isonet",
//!         lab::NetSpec::on_nic("eth1").with_isolation("true"))])), &[])?;
//! assert_eq!(run.codes, [("50_bridge_isolation".to_string(), 0)]);
//! lab.matrix()?.assert_expected(&|a, b| !(is_vm(a) && is_vm(b)));
//! ```
//!
//! # Use from a demo
//!
//! ```ignore
//! Lab::cleanup_stale("bidemo")?;
//! let lab = Lab::create(&LabSpec::new("bidemo").with_vms(3))?;
//! println!("before:\n{}", lab.matrix()?);
//! // run the hook points, then
//! println!("after:\n{}", lab.matrix()?);
//! lab.destroy()?;
//! ```

pub mod container;
mod domxml;
mod entropy;
mod fabric;
mod frame;
mod gate;
mod mac;
mod matrix;
mod netns;
mod payload;
mod probe;
mod runner;
mod spec;
mod tools;
mod topology;
pub mod virt;
mod xml;

#[cfg(test)]
mod tests;

pub use domxml::{
    bootable_domain_xml, domain_xml, interface_xml, GuestBoot, NicKind, NicSpec, OVIRT_TUNE_NS, OVIRT_VM_NS,
    TRUSTED_PROPERTY,
};
pub use fabric::{Fabric, FabricHost, SWITCH_BRIDGE};
pub use frame::RAW_ETHERTYPE;
pub use gate::{root_test_obstacle, root_tests_enabled, tests_enabled_unless, REQUIRE_ROOT_TESTS};
pub use mac::{format_mac, link_local, parse_mac, tap_mac, Mac};
pub use matrix::{Matrix, Protocol};
pub use netns::{exists as netns_exists, list_starting_with as netns_starting_with};
pub use payload::{restore_nets_json, setup_networks_json, NetSpec, ISOLATION_PROPERTY};
pub use runner::{
    hook_scripts, run_hook_point, run_hook_point_as, HookRun, Payload, RunAs, HOOK_PATH, LAB_VM_ID, SETPRIV,
};
pub use spec::{is_vm, unique_prefix, Endpoint, LabSpec, VmSpec, BRIDGE_MAC, GUEST_IF, GW, GW_MAC, HOST};
pub use tools::{missing_tools, BRIDGE, CAT, IP, IPTABLES, NFT, PING};
pub use topology::Lab;
