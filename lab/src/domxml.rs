//! Realistic VDSM domain payloads (docs/design.md §2): a VM's domain XML and the single
//! `<interface>` element of device points.
//!
//! They come in two flavours, as on a real host. Without tap names it is what the engine
//! sends through VDSM (`before_vm_start`, `before_device_create`, hotplug, update): an XML
//! declaration and double quotes. With tap names it is libvirt's live XML
//! (`after_vm_start`, `after_vm_migrate_destination`): single quotes, a domain `id`, and
//! `<target dev='vnetN'/>`; the `<metadata>` children keep libxml2's double quotes.

use std::path::{Path, PathBuf};

use super::mac::{format_mac, Mac};
use super::spec::VmSpec;
use super::xml::XmlWriter;

/// Namespace of oVirt's VM metadata.
pub const OVIRT_VM_NS: &str = "http://ovirt.org/vm/1.0";
/// Namespace of oVirt's tuning metadata.
pub const OVIRT_TUNE_NS: &str = "http://ovirt.org/vm/tune/1.0";
/// vNIC profile custom property that exempts a vNIC.
pub const TRUSTED_PROPERTY: &str = "bridge_isolation_trusted";

/// How a vNIC is plugged in: the `type` of its `<interface>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NicKind {
    /// `type="bridge"`: a tap on the bridge (what oVirt writes).
    #[default]
    Bridge,
    /// `type="network"`: a port of VDSM's libvirt network `vdsm-<bridge>`, which forwards
    /// to the bridge; live XML names the bridge too.
    Network,
    /// `type="direct"`: a macvtap on this host device (bypasses the bridge).
    Direct(String),
    /// `type="hostdev"`: an SR-IOV VF at this PCI address (`0000:05:10.7`), which VDSM's
    /// metadata puts on the network (`<ovirt-vm:network>`).
    Hostdev(String),
}

/// One vNIC of a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicSpec {
    /// How it is plugged in.
    pub kind: NicKind,
    /// Bridge (network) it is on.
    pub bridge: String,
    /// Guest MAC.
    pub mac: Mac,
    /// Tap name, known only in libvirt's live XML.
    pub tap: Option<String>,
    /// Whether its profile has `bridge_isolation_trusted=true`.
    pub trusted: bool,
    /// Whether the engine wrote `<port isolated="yes"/>` (oVirt's native port_isolation).
    pub native_isolated: bool,
    /// `<link state="up"/>` (true) or `"down"` (the engine's link state of the vNIC).
    pub link_up: bool,
}

impl NicSpec {
    /// A plain vNIC on `bridge` (engine XML: no tap).
    pub fn new(bridge: &str, mac: Mac) -> NicSpec {
        NicSpec {
            kind: NicKind::Bridge,
            bridge: bridge.to_string(),
            mac,
            tap: None,
            trusted: false,
            native_isolated: false,
            link_up: true,
        }
    }

    /// The vNIC of lab VM `vm` on `bridge`, with its tap (live XML).
    pub fn of_vm(vm: &VmSpec, bridge: &str) -> NicSpec {
        NicSpec {
            tap: Some(vm.tap.clone()),
            ..NicSpec::new(bridge, vm.guest_mac)
        }
    }

    /// The device custom properties VDSM exports as environment variables for device
    /// points (`before_device_create`, hotplug, update).
    pub fn device_env(&self) -> Vec<(String, String)> {
        if self.trusted {
            vec![(TRUSTED_PROPERTY.to_string(), "true".to_string())]
        } else {
            Vec::new()
        }
    }

    /// A stable device alias, `ua-` + a UUID ending in the MAC.
    fn alias(&self) -> String {
        let hex: String = self.mac.iter().map(|b| format!("{b:02x}")).collect();
        format!("ua-6e1c5d2a-0b7e-4f3c-8a9d-{hex}")
    }
}

/// A domain XML of VM `vm_name` as oVirt 4.5 produces it: engine flavour when no vNIC has
/// a tap, libvirt's live flavour otherwise (see the module documentation).
pub fn domain_xml(vm_name: &str, vm_uuid: &str, nics: &[NicSpec]) -> String {
    let live = nics.iter().any(|n| n.tap.is_some());
    let mut x = XmlWriter::new(if live { '\'' } else { '"' });
    if !live {
        x.raw("<?xml version='1.0' encoding='utf-8'?>");
    }
    if live {
        x.open("domain", &[("type", "kvm"), ("id", "1")]);
    } else {
        x.open("domain", &[("type", "kvm")]);
    }
    x.text("name", &[], vm_name);
    x.text("uuid", &[], vm_uuid);
    x.text("memory", &[], "1048576");
    x.text("currentMemory", &[], "1048576");
    x.text("iothreads", &[], "1");
    x.text("maxMemory", &[("slots", "16")], "4194304");
    x.text("vcpu", &[("current", "1")], "16");
    x.open("sysinfo", &[("type", "smbios")]);
    x.open("system", &[]);
    x.text("entry", &[("name", "manufacturer")], "oVirt");
    x.text("entry", &[("name", "product")], "RHEL");
    x.text("entry", &[("name", "version")], "9.4-1.el9");
    x.text("entry", &[("name", "uuid")], vm_uuid);
    x.text("entry", &[("name", "family")], "oVirt");
    x.close("system");
    x.close("sysinfo");
    x.open("clock", &[("offset", "variable"), ("adjustment", "0")]);
    x.empty("timer", &[("name", "rtc"), ("tickpolicy", "catchup")]);
    x.empty("timer", &[("name", "pit"), ("tickpolicy", "delay")]);
    x.empty("timer", &[("name", "hpet"), ("present", "no")]);
    x.close("clock");
    x.open("features", &[]);
    x.empty("acpi", &[]);
    x.close("features");
    x.open("cpu", &[("match", "exact")]);
    x.text("model", &[], "Skylake-Client-noTSX-IBRS");
    x.empty("topology", &[("cores", "1"), ("threads", "1"), ("sockets", "16")]);
    x.close("cpu");
    x.open("os", &[]);
    x.text("type", &[("arch", "x86_64"), ("machine", "pc-q35-rhel8.6.0")], "hvm");
    x.empty("smbios", &[("mode", "sysinfo")]);
    x.close("os");
    metadata(&mut x, nics);
    devices(&mut x, vm_uuid, nics);
    x.close("domain");
    x.finish()
}

/// What a guest that really boots under libvirt needs besides its vNICs (see
/// [`crate::virt`]): its boot and where its two serial ports lead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestBoot {
    /// Domain type: `kvm`, or `qemu` (TCG).
    pub domain_type: String,
    /// Memory, in MiB.
    pub memory_mib: u32,
    /// Kernel image (direct kernel boot).
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// File receiving the first serial port, the kernel console.
    pub console_log: PathBuf,
    /// Unix socket, qemu listening, of the second serial port: the guest's command channel.
    pub command_socket: PathBuf,
}

/// The engine's domain XML (engine flavour, see the module documentation) of VM `vm_name`
/// that really boots under libvirt: [`domain_xml`]'s metadata and `<interface>` elements
/// around `boot`'s direct kernel boot on an i440fx machine (ACPI hotplug on its root bus)
/// and two serial ports, instead of oVirt's disk and console.
pub fn bootable_domain_xml(vm_name: &str, vm_uuid: &str, nics: &[NicSpec], boot: &GuestBoot) -> String {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut x = XmlWriter::new('"');
    x.raw("<?xml version='1.0' encoding='utf-8'?>");
    x.open("domain", &[("type", &boot.domain_type)]);
    x.text("name", &[], vm_name);
    x.text("uuid", &[], vm_uuid);
    x.text("memory", &[("unit", "MiB")], &boot.memory_mib.to_string());
    x.text("vcpu", &[], "1");
    x.open("os", &[]);
    x.text("type", &[("arch", "x86_64"), ("machine", "pc")], "hvm");
    x.text("kernel", &[], &path(&boot.kernel));
    x.text("initrd", &[], &path(&boot.initrd));
    x.text("cmdline", &[], &boot.cmdline);
    x.close("os");
    x.open("features", &[]);
    x.empty("acpi", &[]);
    x.close("features");
    for event in ["on_poweroff", "on_reboot", "on_crash"] {
        x.text(event, &[], "destroy");
    }
    metadata(&mut x, nics);
    x.open("devices", &[]);
    x.open("serial", &[("type", "file")]);
    x.empty("source", &[("path", &path(&boot.console_log))]);
    x.empty("target", &[("port", "0")]);
    x.close("serial");
    x.open("serial", &[("type", "unix")]);
    x.empty("source", &[("mode", "bind"), ("path", &path(&boot.command_socket))]);
    x.empty("target", &[("port", "1")]);
    x.close("serial");
    x.empty("controller", &[("type", "usb"), ("model", "none")]);
    x.empty("memballoon", &[("model", "none")]);
    for (i, nic) in nics.iter().enumerate() {
        interface(&mut x, nic, i);
    }
    x.close("devices");
    x.close("domain");
    x.finish()
}

/// The single `<interface>` element VDSM passes to `before/after_nic_hotplug` and
/// `before/after_update_device` (engine flavour; live flavour if `nic.tap` is set).
pub fn interface_xml(nic: &NicSpec) -> String {
    let mut x = XmlWriter::new(if nic.tap.is_some() { '\'' } else { '"' });
    interface(&mut x, nic, 0);
    x.finish()
}

/// `<metadata>` with oVirt's VM element and per-vNIC custom properties.
fn metadata(x: &mut XmlWriter, nics: &[NicSpec]) {
    let outer = x.quote;
    x.open("metadata", &[]);
    x.quote = '"';
    x.empty("ovirt-tune:qos", &[("xmlns:ovirt-tune", OVIRT_TUNE_NS)]);
    x.open("ovirt-vm:vm", &[("xmlns:ovirt-vm", OVIRT_VM_NS)]);
    x.text("ovirt-vm:clusterVersion", &[], "4.7");
    x.empty("ovirt-vm:custom", &[]);
    let named = |n: &&NicSpec| matches!(n.kind, NicKind::Hostdev(_));
    for nic in nics.iter().filter(|n| n.trusted || named(n)) {
        let mac = format_mac(nic.mac);
        x.open("ovirt-vm:device", &[("mac_address", &mac)]);
        if named(&nic) {
            x.text("ovirt-vm:network", &[], &nic.bridge);
        }
        if nic.trusted {
            x.open("ovirt-vm:custom", &[]);
            x.text(&format!("ovirt-vm:{TRUSTED_PROPERTY}"), &[], "true");
            x.close("ovirt-vm:custom");
        } else {
            x.empty("ovirt-vm:custom", &[]);
        }
        x.close("ovirt-vm:device");
    }
    x.text("ovirt-vm:launchPaused", &[], "false");
    x.text("ovirt-vm:minGuaranteedMemoryMb", &[("type", "int")], "1024");
    x.text("ovirt-vm:resumeBehavior", &[], "auto_resume");
    x.close("ovirt-vm:vm");
    x.close("metadata");
    x.quote = outer;
}

/// `<devices>`: console, disk, one `<interface>` per vNIC.
fn devices(x: &mut XmlWriter, vm_uuid: &str, nics: &[NicSpec]) {
    x.open("devices", &[]);
    x.empty("input", &[("type", "tablet"), ("bus", "usb")]);
    x.open("console", &[("type", "pty")]);
    x.empty("target", &[("type", "serial"), ("port", "0")]);
    x.empty("alias", &[("name", "ua-c0a5a0e7-2b5d-4d0c-9c3e-1f2f6c7d8e01")]);
    x.close("console");
    x.open("disk", &[("type", "file"), ("device", "disk"), ("snapshot", "no")]);
    x.empty("target", &[("dev", "vda"), ("bus", "virtio")]);
    let image = format!("/rhev/data-center/mnt/nfs.example.com:_exports_data/6a1c/images/{vm_uuid}/0d5f7c11");
    x.empty("source", &[("file", &image)]);
    x.empty(
        "driver",
        &[
            ("name", "qemu"),
            ("io", "threads"),
            ("type", "qcow2"),
            ("error_policy", "stop"),
            ("cache", "none"),
        ],
    );
    x.empty("alias", &[("name", "ua-5b0d6f3e-8a2c-4e71-b9d4-0c3a2e1f7d62")]);
    x.empty("boot", &[("order", "1")]);
    x.text("serial", &[], "5b0d6f3e-8a2c-4e71-b9d4-0c3a2e1f7d62");
    x.close("disk");
    for (i, nic) in nics.iter().enumerate() {
        interface(x, nic, i);
    }
    x.close("devices");
}

/// One `<interface>`; `index` places it on its own PCI bus in live XML.
fn interface(x: &mut XmlWriter, nic: &NicSpec, index: usize) {
    let mac = format_mac(nic.mac);
    let alias = nic.alias();
    let link = if nic.link_up { "up" } else { "down" };
    match &nic.kind {
        NicKind::Bridge | NicKind::Network => {}
        NicKind::Direct(dev) => return direct_interface(x, nic, dev),
        NicKind::Hostdev(pci) => return hostdev_interface(x, nic, pci),
    }
    let kind = if nic.kind == NicKind::Network {
        "network"
    } else {
        "bridge"
    };
    x.open("interface", &[("type", kind)]);
    let libvirt_net = format!("vdsm-{}", nic.bridge);
    let source: Vec<(&str, &str)> = match (&nic.kind, &nic.tap) {
        (NicKind::Network, None) => vec![("network", &libvirt_net)],
        (NicKind::Network, Some(_)) => vec![("network", &libvirt_net), ("bridge", &nic.bridge)],
        _ => vec![("bridge", &nic.bridge)],
    };
    match &nic.tap {
        None => {
            x.empty("model", &[("type", "virtio")]);
            x.empty("link", &[("state", link)]);
            x.empty("source", &source);
            x.empty("mac", &[("address", &mac)]);
            x.empty("mtu", &[("size", "1500")]);
            x.empty("filterref", &[("filter", "vdsm-no-mac-spoofing")]);
            x.empty("alias", &[("name", &alias)]);
            if nic.native_isolated {
                x.empty("port", &[("isolated", "yes")]);
            }
        }
        Some(tap) => {
            // libvirt's own element order.
            x.empty("mac", &[("address", &mac)]);
            x.empty("source", &source);
            if nic.native_isolated {
                x.empty("port", &[("isolated", "yes")]);
            }
            x.empty("target", &[("dev", tap)]);
            x.empty("model", &[("type", "virtio")]);
            x.empty("filterref", &[("filter", "vdsm-no-mac-spoofing")]);
            x.empty("link", &[("state", link)]);
            x.empty("mtu", &[("size", "1500")]);
            x.empty("alias", &[("name", &alias)]);
            let bus = format!("{:#04x}", index + 1);
            x.empty(
                "address",
                &[
                    ("type", "pci"),
                    ("domain", "0x0000"),
                    ("bus", &bus),
                    ("slot", "0x00"),
                    ("function", "0x0"),
                ],
            );
        }
    }
    x.close("interface");
}

/// `<interface type="direct">`: a macvtap on `dev` in `bridge` mode, as libvirt writes it.
fn direct_interface(x: &mut XmlWriter, nic: &NicSpec, dev: &str) {
    x.open("interface", &[("type", "direct")]);
    x.empty("mac", &[("address", &format_mac(nic.mac))]);
    x.empty("source", &[("dev", dev), ("mode", "bridge")]);
    if let Some(tap) = &nic.tap {
        x.empty("target", &[("dev", tap)]);
    }
    x.empty("model", &[("type", "virtio")]);
    x.empty("alias", &[("name", &nic.alias())]);
    x.close("interface");
}

/// `<interface type="hostdev" managed="no">`: an SR-IOV VF at PCI address `pci`
/// (`DDDD:BB:SS.F`), as the engine writes it.
fn hostdev_interface(x: &mut XmlWriter, nic: &NicSpec, pci: &str) {
    let (domain, rest) = pci.split_once(':').expect("DDDD:BB:SS.F");
    let (bus, rest) = rest.split_once(':').expect("DDDD:BB:SS.F");
    let (slot, function) = rest.split_once('.').expect("DDDD:BB:SS.F");
    let hex = |s: &str| format!("0x{s}");
    x.open("interface", &[("type", "hostdev"), ("managed", "no")]);
    x.empty("driver", &[("name", "vfio")]);
    x.open("source", &[]);
    x.empty(
        "address",
        &[
            ("type", "pci"),
            ("domain", &hex(domain)),
            ("bus", &hex(bus)),
            ("slot", &hex(slot)),
            ("function", &hex(function)),
        ],
    );
    x.close("source");
    x.empty("alias", &[("name", &nic.alias())]);
    x.empty("mac", &[("address", &format_mac(nic.mac))]);
    x.close("interface");
}

#[cfg(test)]
mod tests {
    use super::super::xml::elements;
    use super::*;

    const MAC1: Mac = [0x56, 0x6f, 0x4c, 0xab, 0x00, 0x01];
    const MAC2: Mac = [0x56, 0x6f, 0x4c, 0xab, 0x00, 0x02];

    #[test]
    fn engine_domain_xml_is_well_formed_and_carries_metadata() {
        let mut trusted = NicSpec::new("isonet", MAC2);
        trusted.trusted = true;
        let mut native = NicSpec::new("isonet", MAC1);
        native.native_isolated = true;
        let xml = domain_xml("vm<1>", "9d8e7f60-1a2b-4c3d-8e9f-0a1b2c3d4e5f", &[native, trusted]);
        let names = elements(&xml);
        assert_eq!(names.iter().filter(|n| *n == "interface").count(), 2);
        assert!(names.contains(&"disk".to_string()) && names.contains(&"console".to_string()));
        assert!(xml.starts_with("<?xml version='1.0' encoding='utf-8'?>\n<domain type=\"kvm\">"));
        assert!(xml.contains("<name>vm&lt;1&gt;</name>"));
        assert!(xml.contains("<ovirt-vm:vm xmlns:ovirt-vm=\"http://ovirt.org/vm/1.0\">"));
        assert!(xml.contains(
            "<ovirt-vm:device mac_address=\"56:6f:4c:ab:00:02\">\n                \
             <ovirt-vm:custom>\n                    \
             <ovirt-vm:bridge_isolation_trusted>true</ovirt-vm:bridge_isolation_trusted>"
        ));
        assert!(!xml.contains("mac_address=\"56:6f:4c:ab:00:01\""));
        assert_eq!(xml.matches("<port isolated=\"yes\"/>").count(), 1);
        assert!(xml.contains("<filterref filter=\"vdsm-no-mac-spoofing\"/>"));
        assert!(xml.contains("<source bridge=\"isonet\"/>"));
        assert!(!xml.contains("<target dev=\"vnet"));
    }

    #[test]
    fn live_domain_xml_has_tap_names_in_libvirt_style() {
        let vm = VmSpec::new("vm1", "vnet7", MAC1, std::net::Ipv4Addr::new(10, 77, 0, 11));
        let xml = domain_xml(
            "vm1",
            "9d8e7f60-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
            &[NicSpec::of_vm(&vm, "isonet")],
        );
        elements(&xml);
        assert!(xml.starts_with("<domain type='kvm' id='1'>"));
        assert!(xml.contains("<target dev='vnet7'/>"));
        assert!(xml.contains("<source bridge='isonet'/>"));
        assert!(xml.contains("<mac address='56:6f:4c:ab:00:01'/>"));
        assert!(xml.contains("<address type='pci' domain='0x0000' bus='0x01'"));
        assert!(xml.contains("<ovirt-vm:vm xmlns:ovirt-vm=\"http://ovirt.org/vm/1.0\">"));
    }

    #[test]
    fn interface_xml_is_one_element() {
        let mut nic = NicSpec::new("isonet", MAC1);
        nic.native_isolated = true;
        nic.trusted = true;
        let xml = interface_xml(&nic);
        let names = elements(&xml);
        assert_eq!(names[0], "interface");
        assert_eq!(
            names,
            [
                "interface",
                "model",
                "link",
                "source",
                "mac",
                "mtu",
                "filterref",
                "alias",
                "port"
            ]
        );
        assert!(xml.contains("<alias name=\"ua-6e1c5d2a-0b7e-4f3c-8a9d-566f4cab0001\"/>"));
        assert_eq!(
            nic.device_env(),
            vec![("bridge_isolation_trusted".to_string(), "true".to_string())]
        );
        assert!(NicSpec::new("isonet", MAC1).device_env().is_empty());
        nic.tap = Some("vnet3".into());
        let live = interface_xml(&nic);
        elements(&live);
        assert!(live.contains("<target dev='vnet3'/>") && live.contains("<port isolated='yes'/>"));
    }

    #[test]
    fn bootable_domain_xml_boots_a_kernel_and_keeps_the_engine_interfaces() {
        let mut trusted = NicSpec::new("isonet", MAC2);
        trusted.trusted = true;
        trusted.link_up = false;
        let boot = GuestBoot {
            domain_type: "qemu".to_string(),
            memory_mib: 96,
            kernel: PathBuf::from("/k/vmlinuz"),
            initrd: PathBuf::from("/k/initrd"),
            cmdline: "console=ttyS0 quiet".to_string(),
            console_log: PathBuf::from("/r/vm1.console"),
            command_socket: PathBuf::from("/r/vm1.sock"),
        };
        let nics = [NicSpec::new("isonet", MAC1), trusted];
        let xml = bootable_domain_xml("vm1", "9d8e7f60-1a2b-4c3d-8e9f-0a1b2c3d4e5f", &nics, &boot);
        let names = elements(&xml);
        assert!(xml.starts_with("<?xml version='1.0' encoding='utf-8'?>\n<domain type=\"qemu\">"));
        assert!(xml.contains("<memory unit=\"MiB\">96</memory>"));
        assert!(xml.contains("<kernel>/k/vmlinuz</kernel>") && xml.contains("<initrd>/k/initrd</initrd>"));
        assert!(xml.contains("<cmdline>console=ttyS0 quiet</cmdline>"));
        assert!(xml.contains("<source mode=\"bind\" path=\"/r/vm1.sock\"/>"));
        assert!(xml.contains("<source path=\"/r/vm1.console\"/>"));
        assert!(!names.contains(&"disk".to_string()));
        let ifaces: Vec<&str> = xml.split("<interface").skip(1).collect();
        assert_eq!(ifaces.len(), 2);
        assert!(ifaces[0].contains("<link state=\"up\"/>") && ifaces[1].contains("<link state=\"down\"/>"));
        assert!(xml.contains("<ovirt-vm:bridge_isolation_trusted>true</ovirt-vm:bridge_isolation_trusted>"));
        assert_eq!(xml.matches("<filterref filter=\"vdsm-no-mac-spoofing\"/>").count(), 2);
        assert_eq!(xml.matches("<source bridge=\"isonet\"/>").count(), 2);
    }
}
