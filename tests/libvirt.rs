//! The hooks against real libvirt and real qemu guests (docs/design.md §7): a private
//! libvirtd in the lab's host namespace creates the taps, and the guests themselves judge
//! what reaches them. Everything comes from Debian packages (`.ci/run` installs them and
//! downloads the guest kernel; see `bridge_isolation_lab::virt`). Root; never skipped in CI.
//!
//! The scenario, in VDSM's order:
//! 1. `before_network_setup` / `after_network_setup` tag the bridge;
//! 2. vm1 (plain vNIC), vm2 (trusted vNIC) and vm3 (no vNIC yet) start as VDSM starts a VM,
//!    concurrently: `before_vm_start`, `virsh create` of the XML the hook returned,
//!    `after_vm_start` with the live XML (`virsh dumpxml`); then vm4 starts with plain
//!    `virsh create` and no hook;
//! 3. from inside the guests (and the gateway and host namespaces), IPv4, IPv6 link-local
//!    and ARP between every pair: vm4 is not isolated, it reaches vm1 and vm1 reaches it;
//! 4. the watcher (`bridge-isolation watch`) isolates vm4's tap on its own (no hook, no
//!    reconcile), and stops after step 5;
//! 5. vm3 gets a vNIC hot-plugged: `before_nic_hotplug`, `attach-device --live` of the
//!    hook's output, `after_nic_hotplug`; every VM pair but those with vm2 is apart;
//! 6. vm1's vNIC is updated as VDSM does it (link down, then up; the XML has no `<port>`):
//!    the update hooks keep the flag throughout; a plain `update-device` of the same XML
//!    without hooks clears it (libvirt's behaviour the hooks guard against: the guests see
//!    vm1 reach vm3 and vm4 again), and `after_vm_migrate_destination` replayed with the
//!    live XML repairs it, as the guests see;
//! 7. stopping libvirtd takes every tap with it.
//!
//! It prints whether the guests ran on KVM or TCG, each step's time and every matrix.

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bridge_isolation_lab::virt::{self, Accel, GuestConsole, GuestImage, Libvirtd, Place, Station, GUEST_PROTOCOLS};
use bridge_isolation_lab::{
    self as lab, bootable_domain_xml, format_mac, interface_xml, GuestBoot, LabSpec, Matrix, NicSpec, VmSpec,
};
use common::{has_port_element, port_isolated_in, tagged, vm_uuid, wait_until, Fixture, Watcher, PLAIN, TRUSTED};
use tempfile::TempDir;

/// Guest memory, MiB.
const MEMORY_MIB: u32 = 96;
/// Kernel command line of the guests (console on ttyS0; a panic ends the domain).
const CMDLINE: &str = "console=ttyS0 quiet mitigations=off panic=-1";
/// How long a guest may take from `virsh create` to its shell answering (TCG, busy host).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long one guest command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a guest under KVM may take to boot and power off before KVM counts as unusable.
const KVM_PROBE_DEADLINE: Duration = Duration::from_secs(8);

/// Namespace tag of the lab (`bilv-PID-N-host`, `-gw`).
const NS_TAG: &str = "bilv";
/// Prefix of the test's directory under the temporary directory (`bi-libvirt-PID-XXXXXX`).
const DIR_PREFIX: &str = "bi-libvirt-";

/// Removes the namespaces and directories of earlier runs whose process is gone (killed
/// before it could clean up; its libvirtd and guests died with it).
fn remove_stale_leftovers() {
    let dead = |pid: &str| pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists();
    for ns in lab::netns_starting_with(&format!("{NS_TAG}-")).unwrap_or_default() {
        let pid = ns.split('-').nth(1).unwrap_or("");
        if dead(pid) {
            let _ = lab::Lab::cleanup_stale(&format!("{NS_TAG}-{pid}"));
        }
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix(DIR_PREFIX).and_then(|rest| rest.split('-').next());
        if pid.is_some_and(dead) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Everything the test made, dropped in this order: guest consoles, libvirtd (and with it
/// every qemu), the lab's namespaces, the directories.
struct World {
    consoles: BTreeMap<u8, GuestConsole>,
    daemon: Libvirtd,
    fx: Fixture,
    image: GuestImage,
    accel: Accel,
    script: PathBuf,
    dir: TempDir,
    started: Instant,
}

impl World {
    /// Lab, guest image, KVM or TCG, private libvirtd with VDSM's network filter.
    fn create() -> World {
        let started = Instant::now();
        remove_stale_leftovers();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("creating the test directory");
        for sub in ["guests", "libvirt"] {
            std::fs::create_dir(dir.path().join(sub)).expect("creating a test directory");
        }
        let fx = Fixture::from_spec(&LabSpec::new(&lab::unique_prefix(NS_TAG)));
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libvirt-guest");
        let image = GuestImage::prepare(&cache, dir.path()).unwrap_or_else(|e| panic!("guest image: {e:#}"));
        eprintln!(
            "guest image: kernel {} ({}), modules {}",
            image.kernel.display(),
            image.package,
            image.modules.join(" ")
        );
        // The KVM probe boots a guest while libvirtd starts and probes qemu (`version`).
        let (accel, daemon) = std::thread::scope(|s| {
            let probe = s.spawn(|| Accel::detect(&image, KVM_PROBE_DEADLINE));
            let daemon = Libvirtd::start(fx.lab.host_ns(), &dir.path().join("libvirt"))
                .unwrap_or_else(|e| panic!("starting libvirtd: {e:#}"));
            eprintln!("{}", virsh(&daemon, &["version"]).trim());
            // Private configuration: no libvirt network at all, so `default` cannot come up.
            let networks = virsh(&daemon, &["net-list", "--all", "--name"]);
            assert!(networks.trim().is_empty(), "libvirt networks defined: {networks}");
            // As vdsm-tool does on a host: VDSM's filter, referenced by every vNIC.
            let filter = daemon.xml_file("vdsm-no-mac-spoofing", virt::VDSM_NWFILTER).unwrap();
            virsh(&daemon, &["nwfilter-define", path(&filter)]);
            (probe.join().expect("the KVM probe panicked"), daemon)
        });
        eprintln!("guests run on {accel}");
        let script = dir.path().join("guest.sh");
        virt::write_script(&script).expect("writing the probe script");
        let world = World {
            consoles: BTreeMap::new(),
            daemon,
            fx,
            image,
            accel,
            script,
            dir,
            started,
        };
        world.step("lab, guest image, libvirtd");
        world
    }

    /// Prints a step with the time since the start.
    fn step(&self, what: &str) {
        eprintln!("[{:6.1} s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// Lab VM number `n`: name, MAC, address.
    fn vm(&self, n: u8) -> VmSpec {
        self.fx.vm(n)
    }

    /// The engine's domain XML of VM `n` with `nics`, booting the guest image.
    fn engine_domain(&self, n: u8, nics: &[NicSpec]) -> String {
        let guests = self.dir.path().join("guests");
        let boot = GuestBoot {
            domain_type: self.accel.domain_type().to_string(),
            memory_mib: MEMORY_MIB,
            kernel: self.image.kernel.clone(),
            initrd: self.image.initrd.clone(),
            cmdline: CMDLINE.to_string(),
            console_log: guests.join(format!("vm{n}.console")),
            command_socket: guests.join(format!("vm{n}.sock")),
        };
        bootable_domain_xml(&self.vm(n).name, &vm_uuid(n), nics, &boot)
    }

    /// Starts VM `n` as VDSM does: `before_vm_start`, `virsh create` of the hook's XML,
    /// `after_vm_start` on the live XML. Returns the XML the hook returned.
    fn start_with_hooks(&self, n: u8, nics: &[NicSpec]) -> String {
        let rewritten = self.create_with_hooks(n, nics);
        self.after_start(n);
        rewritten
    }

    /// The first half of [`World::start_with_hooks`]: `before_vm_start`, `virsh create`.
    fn create_with_hooks(&self, n: u8, nics: &[NicSpec]) -> String {
        let engine = self.engine_domain(n, nics);
        let rewritten = self.fx.run_vm_point("before_vm_start", n, engine, &[]).payload_text();
        let file = self.daemon.xml_file(&format!("vm{n}-start"), &rewritten).unwrap();
        virsh(&self.daemon, &["create", path(&file)]);
        rewritten
    }

    /// The second half: `after_vm_start` on the live XML.
    fn after_start(&self, n: u8) {
        let live = self.live_xml(n);
        self.fx.run_vm_point("after_vm_start", n, live, &[]);
    }

    /// Starts VM `n` with plain `virsh create` of the engine's XML: no hook runs.
    fn start_without_hooks(&self, n: u8, nics: &[NicSpec]) {
        let file = self
            .daemon
            .xml_file(&format!("vm{n}-plain"), &self.engine_domain(n, nics))
            .unwrap();
        virsh(&self.daemon, &["create", path(&file)]);
    }

    /// `virsh dumpxml` of VM `n`: libvirt's live XML.
    fn live_xml(&self, n: u8) -> String {
        virsh(&self.daemon, &["dumpxml", &self.vm(n).name])
    }

    /// Waits for VM `n`'s shell.
    fn connect(&mut self, n: u8) {
        let socket = self.dir.path().join("guests").join(format!("vm{n}.sock"));
        let console = GuestConsole::connect(&self.vm(n).name, &socket, BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e:#}\nconsole of vm{n}:\n{}", self.console_log(n)));
        self.consoles.insert(n, console);
    }

    /// Runs `command` in VM `n`, asserting exit 0; returns its output.
    fn guest(&mut self, n: u8, command: &str) -> String {
        let console = self.consoles.get_mut(&n).expect("a connected guest");
        console
            .run_ok(command, COMMAND_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Gives VM `n`'s vNIC (found by MAC, waiting for a hot-plugged one) its address;
    /// returns the guest's name for it.
    fn guest_nic_up(&mut self, n: u8) -> String {
        let vm = self.vm(n);
        let line = format!("bi up {} {}/24", format_mac(vm.guest_mac), vm.ipv4);
        self.guest(n, &line).trim().to_string()
    }

    /// The tap libvirt made for VM `n`'s vNIC (`virsh domiflist`).
    fn tap(&self, n: u8) -> String {
        let mac = format_mac(self.vm(n).guest_mac);
        let list = virsh(&self.daemon, &["domiflist", &self.vm(n).name]);
        list.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.last() == Some(&mac.as_str()))
            .and_then(|f| f.first().map(|t| t.to_string()))
            .unwrap_or_else(|| panic!("no vNIC with MAC {mac} in:\n{list}"))
    }

    /// Asserts the isolation flag of every bridge port: the uplink and the taps of VMs
    /// `vms` (`true` where it must be set).
    #[track_caller]
    fn assert_flags(&self, vms: &[(u8, bool)]) {
        let mut want = BTreeMap::from([(common::UPLINK.to_string(), false)]);
        for &(n, isolated) in vms {
            want.insert(self.tap(n), isolated);
        }
        assert_eq!(self.fx.port_flags(), want, "bridge ports and their isolation flags");
    }

    /// Probes every pair of the VMs `vms` (their shells, their addresses), the gateway and
    /// the host, from inside each; asserts that only pairs of two VMs of `apart` are blocked.
    fn assert_matrix(&mut self, what: &str, vms: &[(u8, String)], apart: &[u8]) -> Matrix {
        let started = Instant::now();
        let specs: Vec<VmSpec> = vms.iter().map(|(n, _)| self.vm(*n)).collect();
        let endpoints = self.fx.lab.endpoints();
        let script = self.script.clone();
        let mut stations: Vec<Station> = Vec::new();
        let mut consoles: Vec<(&u8, &mut GuestConsole)> = self.consoles.iter_mut().collect();
        for ((n, ifname), spec) in vms.iter().zip(&specs) {
            let at = consoles.iter().position(|(k, _)| *k == n).expect("a connected guest");
            let (_, console) = consoles.swap_remove(at);
            stations.push(Station {
                name: spec.name.clone(),
                ifname: ifname.clone(),
                mac: spec.guest_mac,
                ipv4: spec.ipv4,
                place: Place::Guest(console),
            });
        }
        for e in &endpoints {
            stations.push(Station {
                name: e.name.clone(),
                ifname: e.ifname.clone(),
                mac: e.mac,
                ipv4: e.ipv4,
                place: Place::Namespace {
                    ns: e.ns.clone(),
                    script: &script,
                },
            });
        }
        let matrix = virt::measure(&mut stations).unwrap_or_else(|e| panic!("probing from the guests: {e:#}"));
        let apart: Vec<String> = apart.iter().map(|n| format!("vm{n}")).collect();
        eprintln!(
            "{what} (probed from inside, {:.1} s):\n{matrix}",
            started.elapsed().as_secs_f64()
        );
        matrix.assert_expected_of(&GUEST_PROTOCOLS, &|a, b| {
            !(apart.iter().any(|v| v == a) && apart.iter().any(|v| v == b))
        });
        matrix
    }

    /// The end of VM `n`'s console log.
    fn console_log(&self, n: u8) -> String {
        let file = self.dir.path().join("guests").join(format!("vm{n}.console"));
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("libvirtd log (end):\n{}", self.daemon.log_tail(30));
            for n in 1..=4 {
                eprintln!("console of vm{n} (end):\n{}", self.console_log(n));
            }
        }
    }
}

/// `virsh ARGS` on `daemon`, panicking with libvirtd's log on failure.
fn virsh(daemon: &Libvirtd, args: &[&str]) -> String {
    daemon
        .virsh(args)
        .unwrap_or_else(|e| panic!("{e:#}\nlibvirtd log (end):\n{}", daemon.log_tail(20)))
}

/// A path as a `&str` argument.
fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The `<interface>` element of `mac` in a domain XML.
fn interface_of(xml: &str, mac: &str) -> String {
    xml.split("<interface")
        .skip(1)
        .map(|rest| rest.split("</interface>").next().unwrap_or(rest))
        .find(|i| i.contains(mac))
        .map(|i| format!("<interface{i}</interface>"))
        .unwrap_or_else(|| panic!("no <interface> with MAC {mac} in:\n{xml}"))
}

/// The guest's `carrier` of `ifname` (1 link up, 0 down).
fn carrier(w: &mut World, n: u8, ifname: &str) -> String {
    w.guest(n, &format!("cat /sys/class/net/{ifname}/carrier"))
        .trim()
        .to_string()
}

#[test]
fn real_guests_are_isolated_through_the_hooks() {
    const TEST: &str = "real_guests_are_isolated_through_the_hooks";
    if !lab::tests_enabled_unless(TEST, lab::root_test_obstacle().or_else(virt::obstacle)) {
        return;
    }
    let mut w = World::create();

    // 1. The network is tagged as VDSM's setupNetworks does it.
    w.fx.network_setup(&tagged("true"));
    w.step("network tagged (before/after_network_setup)");

    // 2. Four VMs boot at once. vm1 (plain vNIC) starts first, alone: between `virsh create`
    //    and after_vm_start no hook runs, so its flag can only come from libvirt applying
    //    the `<port isolated='yes'/>` of the hook's XML. vm2 (trusted vNIC) and vm3 (no vNIC
    //    yet) then start through the hooks concurrently, as VDSM may run them; vm4 with
    //    plain virsh comes last: any later hook reconciles the whole bridge and would
    //    isolate its tap.
    let vm1_nic = w.fx.engine_nic(1, PLAIN);
    let (vm2_nic, vm3_nic, vm4_nic) = (
        w.fx.engine_nic(2, TRUSTED),
        w.fx.engine_nic(3, PLAIN),
        w.fx.engine_nic(4, PLAIN),
    );
    let vm1_xml = w.create_with_hooks(1, std::slice::from_ref(&vm1_nic));
    assert!(
        port_isolated_in(&vm1_xml),
        "before_vm_start left vm1's vNIC without the flag:\n{vm1_xml}"
    );
    assert!(
        w.fx.lab.port_isolated(&w.tap(1)).unwrap(),
        "libvirt created vm1's tap without applying <port isolated='yes'/>"
    );
    w.after_start(1);
    assert!(port_isolated_in(&interface_of(
        &w.live_xml(1),
        &format_mac(vm1_nic.mac)
    )));
    let vm2_xml = std::thread::scope(|s| {
        let w = &w;
        let vm2 = s.spawn(|| w.start_with_hooks(2, std::slice::from_ref(&vm2_nic)));
        let vm3 = s.spawn(|| w.start_with_hooks(3, &[]));
        vm3.join().expect("starting vm3 panicked");
        vm2.join().expect("starting vm2 panicked")
    });
    assert!(
        !has_port_element(&vm2_xml),
        "before_vm_start flagged the trusted vNIC:\n{vm2_xml}"
    );
    w.start_without_hooks(4, std::slice::from_ref(&vm4_nic));
    w.step("vm1..vm3 created through the hooks, vm4 with plain virsh");
    w.assert_flags(&[(1, true), (2, false), (4, false)]);
    for n in 1..=4 {
        w.connect(n);
    }
    w.step("all four guests answer on their consoles");
    let mut ifs: BTreeMap<u8, String> = BTreeMap::new();
    for n in [1, 2, 4] {
        let name = w.guest_nic_up(n);
        ifs.insert(n, name);
    }

    // 3. From inside: vm4, started without any hook, is not isolated: it reaches vm1, the
    //    only isolated VM so far, and vm1 reaches it.
    let three: Vec<(u8, String)> = ifs.iter().map(|(n, i)| (*n, i.clone())).collect();
    w.assert_matrix("vm4 started without hooks", &three, &[1]);

    // 4. The watcher (`bridge-isolation watch`, root, in the namespace libvirtd runs in)
    //    isolates the tap that appeared without any hook, on its own: no hook, no reconcile.
    let watcher = Watcher::start(&w.fx, &["watch"], &[]);
    let took = wait_until("the watcher isolates vm4's tap", Duration::from_secs(20), || {
        w.fx.lab.port_isolated(&w.tap(4)).unwrap()
    });
    w.assert_flags(&[(1, true), (2, false), (4, true)]);
    w.step(&format!(
        "the watcher isolated vm4 ({} ms after it started)",
        took.as_millis()
    ));

    // 5. vm3's vNIC is hot-plugged as VDSM does it.
    let hooked =
        w.fx.run_vm_point("before_nic_hotplug", 3, interface_xml(&vm3_nic), &vm3_nic.device_env())
            .payload_text();
    assert!(
        port_isolated_in(&hooked),
        "before_nic_hotplug left the vNIC without the flag:\n{hooked}"
    );
    let file = w.daemon.xml_file("vm3-hotplug", &hooked).unwrap();
    virsh(&w.daemon, &["attach-device", "vm3", path(&file), "--live"]);
    assert!(
        w.fx.lab.port_isolated(&w.tap(3)).unwrap(),
        "libvirt hot-plugged vm3's tap without applying <port isolated='yes'/>"
    );
    w.fx.run_vm_point("after_nic_hotplug", 3, hooked, &vm3_nic.device_env());
    let name = w.guest_nic_up(3);
    ifs.insert(3, name);
    w.assert_flags(&[(1, true), (2, false), (3, true), (4, true)]);
    w.step("vNIC hot-plugged into vm3 through the hooks");
    let all: Vec<(u8, String)> = ifs.iter().map(|(n, i)| (*n, i.clone())).collect();
    w.assert_matrix("after the watcher and the hotplug", &all, &[1, 3, 4]);

    // The watcher stops here: step 6's control (a plain update-device clearing the flag, as
    // the guests see it) is what it would repair within milliseconds.
    drop(watcher);

    // 6. vm1's vNIC updated as VDSM does it: link down, then up, XML without <port>.
    let vm1_if = ifs[&1].clone();
    let tap1 = w.tap(1);
    for link_up in [false, true] {
        let update = NicSpec {
            link_up,
            ..vm1_nic.clone()
        };
        let xml = interface_xml(&update);
        assert!(!has_port_element(&xml));
        let hooked =
            w.fx.run_vm_point("before_update_device", 1, xml, &update.device_env())
                .payload_text();
        assert!(
            port_isolated_in(&hooked),
            "before_update_device dropped the flag:\n{hooked}"
        );
        let file = w.daemon.xml_file(&format!("vm1-update-{link_up}"), &hooked).unwrap();
        virsh(&w.daemon, &["update-device", "vm1", path(&file), "--live"]);
        // libvirt applied the hook's XML: the flag never dropped, not even before the
        // after_update_device hook runs.
        assert!(w.fx.lab.port_isolated(&tap1).unwrap(), "the update cleared vm1's flag");
        let live = w.live_xml(1);
        let iface = interface_of(&live, &format_mac(w.vm(1).guest_mac));
        assert!(port_isolated_in(&iface), "live XML lost the flag:\n{iface}");
        let state = if link_up { "up" } else { "down" };
        assert!(
            iface.contains(&format!("<link state='{state}'/>")),
            "link not {state}:\n{iface}"
        );
        w.fx.run_vm_point("after_update_device", 1, hooked, &update.device_env());
        assert!(w.fx.lab.port_isolated(&tap1).unwrap());
        assert_eq!(
            carrier(&mut w, 1, &vm1_if),
            if link_up { "1" } else { "0" },
            "vm1's link"
        );
    }
    w.step("vm1's vNIC updated (link down, up) through the update hooks: flag kept");

    // The same update without hooks: libvirt clears the flag, and the guests notice.
    let plain = interface_xml(&vm1_nic);
    let file = w.daemon.xml_file("vm1-update-plain", &plain).unwrap();
    virsh(&w.daemon, &["update-device", "vm1", path(&file), "--live"]);
    assert!(
        !w.fx.lab.port_isolated(&tap1).unwrap(),
        "a plain update-device kept the flag"
    );
    let live = w.live_xml(1);
    assert!(!has_port_element(&interface_of(&live, &format_mac(w.vm(1).guest_mac))));
    w.step("plain update-device without hooks: libvirt cleared vm1's flag");
    w.assert_matrix("vm1's flag cleared by a plain update", &all, &[3, 4]);

    // after_vm_migrate_destination, replayed with the live XML, repairs it.
    w.fx.run_vm_point("after_vm_migrate_destination", 1, live, &[]);
    w.assert_flags(&[(1, true), (2, false), (3, true), (4, true)]);
    w.step("after_vm_migrate_destination replayed: vm1 isolated again");
    w.assert_matrix("after the migration hook", &all, &[1, 3, 4]);
    let verify = w.fx.cli(&["verify"]);
    assert!(
        verify.status.success(),
        "verify found drift: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    // Who owns each port: vm1 and vm2 by their hooks' records (after_vm_start's live XML
    // names their taps); vm3's hot-plugged vNIC (after_nic_hotplug names no tap) and vm4,
    // which no hook saw, by the qemu process holding the tap.
    let status = w.fx.status_json();
    let owners: BTreeMap<String, [String; 3]> = status["bridges"][0]["ports"]
        .as_array()
        .expect("ports in status --json")
        .iter()
        .map(|p| {
            let field = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            (field("port"), [field("owner"), field("vm_id"), field("vm_name")])
        })
        .collect();
    for (n, source) in [(1, "hook"), (2, "hook"), (3, "qemu"), (4, "qemu")] {
        let expected = [source.to_string(), vm_uuid(n), w.vm(n).name];
        assert_eq!(owners[&w.tap(n)], expected, "owner of vm{n}'s tap: {status:#}");
    }
    w.step("status names each port's VM: vm1, vm2 from the hooks, vm3, vm4 from their qemu");

    // 7. Stopping libvirtd ends every qemu: their taps go with them, and with no
    //    after_vm_destroy, a root reconcile forgets their owner records.
    w.consoles.clear();
    w.daemon.stop().expect("stopping libvirtd");
    let ports = w.fx.lab.bridge_ports().expect("listing the bridge ports");
    assert_eq!(ports, [common::UPLINK], "taps left after libvirtd stopped");
    let owners = w.fx.dropin_dir().join(common::OWNERS);
    let records = || std::fs::read_dir(&owners).map(Iterator::count).unwrap_or(0);
    assert_eq!(records(), 2, "vm1's and vm2's records, before a reconcile");
    assert!(w.fx.cli(&["reconcile"]).status.success());
    assert_eq!(records(), 0, "records left after the VMs died and a reconcile ran");
    w.step(&format!("done on {}", w.accel));
}
