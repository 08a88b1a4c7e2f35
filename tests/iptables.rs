//! The iptables backend on a real kernel: br_netfilter and physdev rules in iptables and
//! ip6tables. Its matrix differs from the layer-2 backends' on purpose: between VMs IPv4 and
//! IPv6 are blocked while **ARP and raw frames pass** (br_netfilter hands only IP to
//! iptables); everything to and from the uplink and the host passes. Restore-nets changes
//! no rule; lifting and removing leave no rule, no drop-in and the sysctls as they were.
//!
//! The lab host namespace starts with both `bridge-nf-call-*` sysctls at 0, as a host
//! without br_netfilter. They are per network namespace on the kernels this runs on (checked
//! below), and br_netfilter is built into the test machines' kernels, so nothing here
//! touches the machine's own netfilter; the drop-ins go to a temporary directory
//! (`BRIDGE_ISOLATION_MODULES_LOAD_DIR`, `BRIDGE_ISOLATION_SYSCTL_DIR`). The tests still
//! run one at a time: were the module not loaded, the first hook would load it for the
//! whole machine. They need root; as another user they skip (or fail under
//! `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use bridge_isolation::enforce::iptables::{MODULES_DROPIN, SYSCTLS, SYSCTL_DROPIN};
use bridge_isolation_lab::{
    self as lab, domain_xml, is_vm, HookRun, Lab, LabSpec, Matrix, NetSpec, NicSpec, Payload, Protocol,
};
use serde_json::{json, Value};
use tempfile::TempDir;

const NET: &str = "isonet";
const UPLINK: &str = "eth1";
const HOOK: &str = "50_bridge_isolation";
const IPT: &str = "iptables";
const SAVE: [&str; 2] = ["/usr/sbin/iptables-save", "/usr/sbin/ip6tables-save"];
const SYSCTL: &str = "/usr/sbin/sysctl";

/// One iptables test at a time (see the module documentation).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A lab, its own state directory, drop-in directories and hook tree.
struct Rig {
    lab: Lab,
    state: TempDir,
    etc: TempDir,
    hooks: TempDir,
}

impl Rig {
    /// A lab with VMs `vm1..=vms` plugged, nothing tagged, both sysctls 0 in its host.
    fn new(tag: &str, vms: u8) -> Rig {
        let lab = Lab::create(&LabSpec::new(&lab::unique_prefix(tag)).with_vms(vms)).expect("creating the lab");
        let hooks = tempfile::tempdir().expect("creating the hook tree");
        let points = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks");
        for entry in std::fs::read_dir(points).expect("listing hooks/") {
            let dir = hooks.path().join(entry.unwrap().file_name());
            std::fs::create_dir(&dir).unwrap();
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vdsm-hook-bridge-isolation"), dir.join(HOOK)).unwrap();
        }
        let rig = Rig {
            lab,
            state: tempfile::tempdir().expect("creating the state directory"),
            etc: tempfile::tempdir().expect("creating the drop-in directories"),
            hooks,
        };
        rig.set_sysctls(false);
        assert_eq!(rig.sysctls(), [false, false]);
        rig
    }

    fn modules_dir(&self) -> PathBuf {
        self.etc.path().join("modules-load.d")
    }

    fn sysctl_dir(&self) -> PathBuf {
        self.etc.path().join("sysctl.d")
    }

    fn env(&self) -> Vec<(String, String)> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            ("BRIDGE_ISOLATION_STATE_DIR".into(), path(self.state.path())),
            ("BRIDGE_ISOLATION_CONFIG".into(), "/nonexistent".into()),
            ("BRIDGE_ISOLATION_BACKEND".into(), IPT.into()),
            ("BRIDGE_ISOLATION_MODULES_LOAD_DIR".into(), path(&self.modules_dir())),
            ("BRIDGE_ISOLATION_SYSCTL_DIR".into(), path(&self.sysctl_dir())),
        ]
    }

    fn hook(&self, point: &str, payload: Payload, vm: Option<u8>) -> HookRun {
        let mut env = self.env();
        env.extend(vm.map(|n| ("vmId".to_string(), vm_uuid(n))));
        let run = lab::run_hook_point(self.lab.host_ns(), self.hooks.path(), point, payload, &env)
            .unwrap_or_else(|e| panic!("running {point}: {e:#}"));
        assert_eq!(run.codes, [(HOOK.to_string(), 0)], "{point}; stderr:\n{}", run.stderr);
        run
    }

    fn network_setup(&self, json: &str) {
        for point in ["before_network_setup", "after_network_setup"] {
            self.hook(point, Payload::Json(json.to_string()), None);
        }
    }

    /// Starts VM `n` as VDSM and libvirt do (see tests/nftables.rs), then clears the port
    /// flag libvirt set from the rewritten XML: the rules alone must keep the VMs apart.
    fn start_vm(&mut self, n: u8, trusted: bool) {
        let vm = self.lab.spec().numbered_vm(n);
        let nic = NicSpec {
            trusted,
            ..NicSpec::new(NET, vm.guest_mac)
        };
        let engine = domain_xml(&vm.name, &vm_uuid(n), std::slice::from_ref(&nic));
        let rewritten = self.hook("before_vm_start", Payload::DomXml(engine), Some(n));
        let flagged = rewritten.payload_text().contains("<port isolated=");
        self.lab.add_vm(&vm).expect("plugging the VM");
        if flagged {
            self.lab.set_port_isolated(&vm.tap, true).expect("flagging as libvirt");
        }
        let live = NicSpec {
            tap: Some(vm.tap.clone()),
            native_isolated: flagged,
            ..nic
        };
        self.hook(
            "after_vm_start",
            Payload::DomXml(domain_xml(&vm.name, &vm_uuid(n), &[live])),
            Some(n),
        );
        self.lab.set_port_isolated(&vm.tap, false).expect("clearing the flag");
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(lab::IP)
            .args([
                "netns",
                "exec",
                self.lab.host_ns(),
                env!("CARGO_BIN_EXE_bridge-isolation"),
            ])
            .args(args)
            .envs(self.env())
            .output()
            .expect("running bridge-isolation")
    }

    fn state_json(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.state.path().join("state.json")).unwrap()).unwrap()
    }

    fn set_sysctls(&self, on: bool) {
        let v = u8::from(on);
        let args: Vec<String> = SYSCTLS.iter().map(|s| format!("net.bridge.{s}={v}")).collect();
        let mut argv = vec![SYSCTL, "-qw"];
        argv.extend(args.iter().map(String::as_str));
        ok(self.lab.exec_in_host(&argv).expect("running sysctl"));
    }

    /// Both `bridge-nf-call-*` sysctls of the lab host.
    fn sysctls(&self) -> [bool; 2] {
        SYSCTLS.map(|s| {
            let path = format!("/proc/sys/net/bridge/{s}");
            ok(self.lab.exec_in_host(&[lab::CAT, &path]).unwrap()).trim() == "1"
        })
    }

    /// The filter table of both families in the lab host, counters and comments left out.
    fn tables(&self) -> [Vec<String>; 2] {
        SAVE.map(|save| {
            ok(self
                .lab
                .exec_in_host(&[save, "-t", "filter"])
                .expect("running *tables-save"))
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
        })
    }

    /// Lines of both families mentioning our chains.
    fn ours(&self) -> [Vec<String>; 2] {
        self.tables()
            .map(|t| t.into_iter().filter(|l| l.contains("BRIDGE-ISO")).collect())
    }

    fn dropins(&self) -> [bool; 2] {
        [
            self.modules_dir().join(MODULES_DROPIN).exists(),
            self.sysctl_dir().join(SYSCTL_DROPIN).exists(),
        ]
    }
}

/// The machine's own (initial namespace) sysctls, which no test may change.
fn own_sysctls_of_machine() -> Vec<Option<String>> {
    SYSCTLS
        .iter()
        .map(|s| std::fs::read_to_string(format!("/proc/sys/net/bridge/{s}")).ok())
        .collect()
}

fn vm_uuid(n: u8) -> String {
    format!("4d3a1f52-8a0b-4c8e-9a8f-2f7b3d1c00{n:02x}")
}

fn tagged() -> String {
    lab::setup_networks_json(&[(NET, NetSpec::on_nic(UPLINK).with_isolation("true"))])
}

fn restore_nets() -> String {
    lab::restore_nets_json(&[(NET, NetSpec::on_nic(UPLINK).with_isolation("true"))])
}

#[track_caller]
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What this backend promises: between two VMs (neither trusted) IPv4 and IPv6 are
/// blocked, ARP and raw frames pass; every other probe passes.
fn assert_ip_blocked_between_vms(m: &Matrix, trusted: &[&str]) {
    let mut wrong = Vec::new();
    for (src, dst) in m.pairs() {
        let apart = is_vm(&src) && is_vm(&dst) && !trusted.contains(&src.as_str()) && !trusted.contains(&dst.as_str());
        for proto in Protocol::ALL {
            let want = !(apart && matches!(proto, Protocol::Ipv4 | Protocol::Ipv6));
            let got = m.outcome(&src, &dst, proto);
            if got != Some(want) {
                wrong.push(format!("{src} -> {dst} {proto}: expected pass={want}, got {got:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}\n\n{m}", wrong.join("\n"));
}

fn names(ports: &[&str]) -> BTreeSet<String> {
    ports.iter().map(|p| p.to_string()).collect()
}

/// The layout for VM ports `ports` of the lab bridge, as iptables-save lists it.
fn layout(ports: &[&str]) -> Vec<String> {
    let mut lines = vec![
        format!(":BRIDGE-ISO-{NET} - [0:0]"),
        ":BRIDGE-ISOLATION - [0:0]".to_string(),
        "-A FORWARD -m physdev --physdev-is-bridged -j BRIDGE-ISOLATION".to_string(),
    ];
    lines.extend(
        ports
            .iter()
            .map(|p| format!("-A BRIDGE-ISO-{NET} -m physdev --physdev-out {p} -j DROP")),
    );
    lines.extend(
        ports
            .iter()
            .map(|p| format!("-A BRIDGE-ISOLATION -m physdev --physdev-in {p} -j BRIDGE-ISO-{NET}")),
    );
    lines
}

/// Tagging the network of three running VMs turns br_netfilter on in the lab host (drop-ins
/// written), puts the layout in both families and blocks IPv4/IPv6 between VMs only.
/// Restore-nets and `reconcile` change no rule. A rule inserted above our jump (what a
/// firewall reload may leave) is drift, and reconcile puts the jump back on top.
#[test]
fn iptables_blocks_ip_between_vms_and_restore_nets_changes_nothing() {
    if !lab::root_tests_enabled("iptables_blocks_ip_between_vms_and_restore_nets_changes_nothing") {
        return;
    }
    let _serial = serial();
    let machine = own_sysctls_of_machine();
    let rig = Rig::new("bipt", 3);
    let matrix = rig.lab.matrix().expect("probing");
    matrix.assert_expected(&|_, _| true);

    rig.network_setup(&tagged());
    assert_eq!(rig.state_json()["backend"], json!("iptables"));
    assert_eq!(rig.sysctls(), [true, true], "br_netfilter on in the lab host");
    assert_eq!(rig.dropins(), [true, true]);
    let dropin = std::fs::read_to_string(rig.sysctl_dir().join(SYSCTL_DROPIN)).unwrap();
    assert!(
        dropin.contains("net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0"),
        "{dropin}"
    );
    assert!(dropin.contains("net.bridge.bridge-nf-call-iptables = 1\n"), "{dropin}");
    let want = layout(&["vnet1", "vnet2", "vnet3"]);
    assert_eq!(rig.ours(), [want.clone(), want.clone()]);
    let tables = rig.tables();
    for t in &tables {
        let first = t.iter().find(|l| l.starts_with("-A FORWARD")).unwrap();
        assert!(
            first.contains("-j BRIDGE-ISOLATION"),
            "our jump is rule 1 of FORWARD: {t:?}"
        );
    }
    assert_ip_blocked_between_vms(&rig.lab.matrix().expect("probing"), &[]);

    let state = rig.state_json();
    rig.network_setup(&restore_nets());
    assert_eq!(rig.tables(), tables, "restore-nets changed the rules");
    assert_eq!(rig.state_json(), state, "restore-nets changed the state");
    assert_eq!(ok(rig.cli(&["reconcile"])).trim(), "iptables: 0 port(s) changed");
    assert_eq!(rig.tables(), tables, "reconcile changed the rules");
    ok(rig.cli(&["verify"]));

    let status: Value = serde_json::from_str(&ok(rig.cli(&["status", "--json"]))).expect("status --json");
    let drops = status["bridges"][0]["drops"]["packets"]
        .as_u64()
        .expect("a drop counter");
    assert!(drops > 0, "the VM<->VM probes were dropped: {status:#}");

    // Something inserts a rule above ours (a firewall reload can): the VMs reach each other.
    ok(rig
        .lab
        .exec_in_host(&["/usr/sbin/iptables", "-I", "FORWARD", "1", "-j", "ACCEPT"])
        .unwrap());
    let verify = rig.cli(&["verify"]);
    assert_eq!(
        verify.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert_eq!(ok(rig.cli(&["reconcile"])).trim(), "iptables: 3 port(s) changed");
    let v4 = &rig.tables()[0];
    let forward: Vec<&String> = v4.iter().filter(|l| l.starts_with("-A FORWARD")).collect();
    assert_eq!(
        forward,
        [
            "-A FORWARD -m physdev --physdev-is-bridged -j BRIDGE-ISOLATION",
            "-A FORWARD -j ACCEPT"
        ],
        "our jump back on top, the other rule kept"
    );
    assert_ip_blocked_between_vms(&rig.lab.matrix().expect("probing"), &[]);
    assert_eq!(own_sysctls_of_machine(), machine, "the machine's own sysctls changed");
}

/// VMs started through the hooks (their port flags cleared behind our back): a trusted vNIC
/// has no rule and reaches every VM over IP; the others are kept apart by the rules alone.
/// Hotplugging a VM adds exactly its two rules per family.
#[test]
fn iptables_trusted_vnic_stays_open() {
    if !lab::root_tests_enabled("iptables_trusted_vnic_stays_open") {
        return;
    }
    let _serial = serial();
    let mut rig = Rig::new("bipttr", 0);
    rig.network_setup(&tagged());
    assert_eq!(rig.ours(), [layout(&[]), layout(&[])], "an empty chain waits for VMs");
    rig.start_vm(1, false);
    rig.start_vm(2, false);
    rig.start_vm(3, true);
    assert_eq!(rig.ours(), [layout(&["vnet1", "vnet2"]), layout(&["vnet1", "vnet2"])]);
    ok(rig.cli(&["verify"]));
    assert_ip_blocked_between_vms(&rig.lab.matrix().expect("probing"), &["vm3"]);

    let status: Value = serde_json::from_str(&ok(rig.cli(&["status", "--json"]))).unwrap();
    let isolated: BTreeSet<String> = status["bridges"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["isolated"] == json!(true))
        .map(|p| p["port"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(isolated, names(&["vnet1", "vnet2"]));
}

/// Lifting the property removes every rule and chain of ours from both families, both
/// drop-ins, and puts the sysctls back to 0; all pairs pass. Tagging again and removing
/// the network do the same.
#[test]
fn iptables_untag_and_remove_leave_no_residue() {
    if !lab::root_tests_enabled("iptables_untag_and_remove_leave_no_residue") {
        return;
    }
    let _serial = serial();
    let rig = Rig::new("biptrm", 2);
    let pristine = rig.tables();
    rig.network_setup(&tagged());
    assert_eq!(rig.ours(), [layout(&["vnet1", "vnet2"]), layout(&["vnet1", "vnet2"])]);
    assert_ip_blocked_between_vms(&rig.lab.matrix().expect("probing"), &[]);

    rig.network_setup(&lab::setup_networks_json(&[(NET, NetSpec::on_nic(UPLINK))]));
    assert_eq!(
        rig.ours(),
        [Vec::<String>::new(), Vec::new()],
        "rules outlived the isolation"
    );
    assert_eq!(rig.dropins(), [false, false], "drop-ins outlived the backend");
    assert_eq!(rig.sysctls(), [false, false], "sysctls not put back");
    assert_eq!(rig.tables(), pristine);
    rig.lab.matrix().expect("probing").assert_expected(&|_, _| true);

    rig.network_setup(&tagged());
    assert_eq!(rig.sysctls(), [true, true]);
    assert_ip_blocked_between_vms(&rig.lab.matrix().expect("probing"), &[]);
    rig.network_setup(&lab::setup_networks_json(&[(NET, NetSpec::removed())]));
    assert_eq!(rig.tables(), pristine, "rules outlived the network");
    assert_eq!(rig.dropins(), [false, false]);
    assert_eq!(rig.sysctls(), [false, false]);
    rig.lab.matrix().expect("probing").assert_expected(&|_, _| true);
    let listed: Vec<_> = std::fs::read_dir(rig.etc.path())
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .collect();
    assert!(listed.is_empty(), "files left in the drop-in directories: {listed:?}");
}

/// The sysctls this backend turns on belong to the network namespace: turning them off in
/// one namespace leaves the machine's alone (what keeps these tests from touching it).
#[test]
fn br_netfilter_sysctls_are_per_namespace_here() {
    if !lab::root_tests_enabled("br_netfilter_sysctls_are_per_namespace_here") {
        return;
    }
    let _serial = serial();
    let machine = own_sysctls_of_machine();
    let rig = Rig::new("biptns", 0);
    rig.set_sysctls(true);
    rig.set_sysctls(false);
    assert_eq!(rig.sysctls(), [false, false]);
    assert_eq!(own_sysctls_of_machine(), machine);
}
