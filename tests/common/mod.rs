//! Shared fixtures of the integration tests: a VDSM hook tree installed by
//! `packaging/install.sh`, and a [`Fixture`] that drives the hooks against a netns lab the
//! way VDSM and libvirt would (docs/design.md §2 and §7), with the backend as a parameter
//! ([`backend`]); [`cluster`] is the same on the two-host fabric.

pub mod backend;
pub mod cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use backend::{Backend, Firewalld};
use bridge_isolation_lab::{
    self as lab, domain_xml, interface_xml, is_vm, HookRun, Lab, LabSpec, NetSpec, NicSpec, Payload, VmSpec,
};
use serde_json::Value;
use tempfile::TempDir;

/// The file name of our hook in every hook-point directory.
pub const HOOK: &str = "50_bridge_isolation";
/// The points where a hook may rewrite its payload; everywhere else it must stay byte-identical.
const REWRITING_POINTS: [&str; 3] = ["before_vm_start", "before_nic_hotplug", "before_update_device"];
/// The lab's network, named like its bridge (`LabSpec::new`'s default).
pub const NET: &str = "isonet";
/// The network's uplink NIC, a port of the bridge (`LabSpec::new`'s default).
pub const UPLINK: &str = "eth1";

/// The hook tree of this test process: `<root>/usr/libexec/vdsm/hooks`, installed once.
pub fn hooks_dir() -> &'static Path {
    static TREE: OnceLock<PathBuf> = OnceLock::new();
    TREE.get_or_init(install_hook_tree)
}

/// Runs `packaging/install.sh` into `CARGO_TARGET_TMPDIR/hook-tree-<pid>`, after removing the
/// trees of test processes that are gone; this process's tree is removed at exit.
fn install_hook_tree() -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    remove_stale_trees(base);
    let root = base.join(format!("hook-tree-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("creating the hook tree directory");
    install_package(&root);
    extern "C" fn remove_own_tree() {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hook-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(root);
    }
    // SAFETY: registers a plain function without captures to run at process exit.
    unsafe { libc::atexit(remove_own_tree) };
    root.join("usr/libexec/vdsm/hooks")
}

/// Runs `packaging/install.sh --destdir ROOT` with this build's binaries, asserting success.
pub fn install_package(root: &Path) {
    let bindir = Path::new(env!("CARGO_BIN_EXE_vdsm-hook-bridge-isolation"))
        .parent()
        .expect("binaries live in a directory");
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/install.sh"))
        .arg("--destdir")
        .arg(root)
        .arg("--bindir")
        .arg(bindir)
        .output()
        .expect("running packaging/install.sh");
    assert!(
        out.status.success(),
        "packaging/install.sh failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes `hook-tree-<pid>` directories whose process no longer runs.
fn remove_stale_trees(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("hook-tree-") else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The `vmId` (and domain `<uuid>`) of lab VM number `n`.
pub fn vm_uuid(n: u8) -> String {
    format!("4d3a1f52-8a0b-4c8e-9a8f-2f7b3d1c00{n:02x}")
}

/// What the engine says about a vNIC.
#[derive(Clone, Copy, Debug, Default)]
pub struct Profile {
    /// Its vNIC profile has `bridge_isolation_trusted=true`.
    pub trusted: bool,
    /// The engine wrote oVirt's native `<port isolated="yes"/>` (network `port_isolation`).
    pub native_isolated: bool,
}

/// An ordinary vNIC.
pub const PLAIN: Profile = Profile {
    trusted: false,
    native_isolated: false,
};
/// A trusted vNIC (a router VM).
pub const TRUSTED: Profile = Profile {
    trusted: true,
    native_isolated: false,
};

/// The payload of the network `NET` on `UPLINK` with `custom: {"bridge_isolation": value}`.
pub fn tagged(value: &str) -> String {
    lab::setup_networks_json(&[(NET, NetSpec::on_nic(UPLINK).with_isolation(value))])
}

/// The restore-nets payload (VDSM at boot) of the network `NET` on `UPLINK` with
/// `custom: {"bridge_isolation": value}`.
pub fn restored(value: &str) -> String {
    lab::restore_nets_json(&[(NET, NetSpec::on_nic(UPLINK).with_isolation(value))])
}

/// The payload of the network `NET` on `UPLINK` without custom properties.
pub fn untagged() -> String {
    lab::setup_networks_json(&[(NET, NetSpec::on_nic(UPLINK))])
}

/// The payload removing `NET`: `{"remove": true}`.
pub fn removed() -> String {
    lab::setup_networks_json(&[(NET, NetSpec::removed())])
}

/// The isolation promise: every pair passes except two VMs of which neither is trusted.
pub fn isolated_except<'a>(trusted: &'a [&'a str]) -> impl Fn(&str, &str) -> bool + 'a {
    move |a, b| !(is_vm(a) && is_vm(b)) || trusted.contains(&a) || trusted.contains(&b)
}

/// Whether every `<interface>` of `xml` carries `<port isolated="yes"/>` (either quote
/// style); false when any lacks it. Panics if there is no interface.
pub fn port_isolated_in(xml: &str) -> bool {
    let interfaces: Vec<&str> = xml
        .split("<interface")
        .skip(1)
        .map(|rest| rest.split("</interface>").next().unwrap_or(rest))
        .collect();
    assert!(!interfaces.is_empty(), "no <interface> in:\n{xml}");
    interfaces
        .iter()
        .all(|i| i.contains("<port isolated=\"yes\"/>") || i.contains("<port isolated='yes'/>"))
}

/// Whether `xml` has any `<port` element at all.
pub fn has_port_element(xml: &str) -> bool {
    xml.contains("<port ")
}

/// The environment every hook of a fixture gets: its state directory, no config file, the
/// backend, the iptables backend's drop-in directories under `dropins` (away from the
/// machine's `/etc`), and the installed CLI the hook hands firewalld and iptables runs to.
fn base_env(state: &Path, dropins: &Path, backend: Backend) -> Vec<(String, String)> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let root = hooks_dir().ancestors().nth(4).expect("<root>/usr/libexec/vdsm/hooks");
    vec![
        (
            "BRIDGE_ISOLATION_CLI".to_string(),
            path(&root.join("usr/sbin/bridge-isolation")),
        ),
        ("BRIDGE_ISOLATION_STATE_DIR".to_string(), path(state)),
        ("BRIDGE_ISOLATION_CONFIG".to_string(), "/nonexistent".to_string()),
        ("BRIDGE_ISOLATION_BACKEND".to_string(), backend.name().to_string()),
        (
            "BRIDGE_ISOLATION_MODULES_LOAD_DIR".to_string(),
            path(&dropins.join("modules-load.d")),
        ),
        (
            "BRIDGE_ISOLATION_SYSCTL_DIR".to_string(),
            path(&dropins.join("sysctl.d")),
        ),
        (
            "BRIDGE_ISOLATION_VDSM_NETCONF".to_string(),
            path(&dropins.join(VDSM_NETCONF)),
        ),
        (
            "BRIDGE_ISOLATION_METRICS_TEXTFILE_DIR".to_string(),
            path(&dropins.join(TEXTFILE_DIR)),
        ),
        ("BRIDGE_ISOLATION_OWNERS_DIR".to_string(), path(&dropins.join(OWNERS))),
    ]
}

/// The owner records of a fixture's VMs, under its drop-in directory.
pub const OWNERS: &str = "owners";

/// node_exporter's textfile collector directory of a fixture, under its drop-in directory:
/// absent (no metrics written) until a test creates it ([`Fixture::textfile_dir`]), so no
/// test writes into the machine's.
const TEXTFILE_DIR: &str = "textfile_collector";

/// VDSM's running network config of a fixture, under its drop-in directory: absent (no
/// VDSM on this host) until a test writes into it ([`Fixture::write_vdsm_config`]).
const VDSM_NETCONF: &str = "vdsm-netconf";

/// One test's world: a lab, its own state and drop-in directories, the backend its hooks
/// use, perhaps a private firewalld in the lab's host, and the environment every hook gets.
pub struct Fixture {
    // Declared first: firewalld stops before its namespace goes.
    firewalld: Option<Firewalld>,
    /// The namespaces: host with bridge `NET`, gateway on `UPLINK`, VMs.
    pub lab: Lab,
    state: TempDir,
    dropins: TempDir,
    backend: Backend,
    env: Vec<(String, String)>,
}

impl Fixture {
    /// A lab with VMs `vm1..=vms` already running (plugged, no flags), nothing tagged, with
    /// the port-isolation backend (the kernel-state checks read port flags).
    pub fn new(tag: &str, vms: u8) -> Fixture {
        Fixture::with_backend(tag, vms, Backend::PortIsolation)
    }

    /// Like [`Fixture::new`] with `backend`. The iptables and firewalld backends start with
    /// both `bridge-nf-call-*` sysctls at 0 in the lab host (a host without br_netfilter);
    /// the firewalld backend gets a private firewalld there (its own nftables backend).
    pub fn with_backend(tag: &str, vms: u8, backend: Backend) -> Fixture {
        Fixture::from_spec_with(&LabSpec::new(&lab::unique_prefix(tag)).with_vms(vms), backend)
    }

    /// Like [`Fixture::with_backend`], with a private firewalld in the lab host running its
    /// `FirewallBackend=fw_backend` (`nftables` or `iptables`), whatever `backend` is.
    pub fn beside_firewalld(tag: &str, vms: u8, backend: Backend, fw_backend: &str) -> Fixture {
        let spec = LabSpec::new(&lab::unique_prefix(tag)).with_vms(vms);
        Fixture::create(&spec, backend, Some(fw_backend))
    }

    /// A lab of `spec` (its bridge must be `NET`), nothing tagged, port-isolation backend.
    pub fn from_spec(spec: &LabSpec) -> Fixture {
        Fixture::from_spec_with(spec, Backend::PortIsolation)
    }

    /// A lab of `spec` (its bridge must be `NET`), nothing tagged, with `backend` (see
    /// [`Fixture::with_backend`]).
    pub fn from_spec_with(spec: &LabSpec, backend: Backend) -> Fixture {
        let firewalld = (backend == Backend::Firewalld).then_some("nftables");
        Fixture::create(spec, backend, firewalld)
    }

    /// Like [`Fixture::with_backend`], never with a private firewalld: for a test that runs
    /// its own (tests/sandbox.rs: the machine's firewalld.service in a systemd container).
    /// With the firewalld backend both `bridge-nf-call-*` sysctls start at 0 all the same.
    pub fn without_private_firewalld(tag: &str, vms: u8, backend: Backend) -> Fixture {
        let fx = Fixture::create(&LabSpec::new(&lab::unique_prefix(tag)).with_vms(vms), backend, None);
        if backend == Backend::Firewalld {
            fx.set_br_netfilter(false);
        }
        fx
    }

    fn create(spec: &LabSpec, backend: Backend, firewalld: Option<&str>) -> Fixture {
        assert_eq!(spec.bridge, NET);
        let lab = Lab::create(spec).expect("creating the lab");
        let state = tempfile::tempdir().expect("creating the state directory");
        let dropins = tempfile::tempdir().expect("creating the drop-in directory");
        let env = base_env(state.path(), dropins.path(), backend);
        let mut fx = Fixture {
            firewalld: None,
            lab,
            state,
            dropins,
            backend,
            env,
        };
        if firewalld.is_some() || backend == Backend::Iptables {
            // Otherwise firewalld would reject all bridged IPv4 from the start.
            fx.set_br_netfilter(false);
            assert_eq!(fx.br_netfilter(), [false, false]);
        }
        if let Some(fw_backend) = firewalld {
            let fw = Firewalld::start(fx.lab.host_ns(), fw_backend);
            fx.env.push(fw.env());
            fx.firewalld = Some(fw);
        }
        fx
    }

    /// Runs hook point `point` in the host namespace with `payload` and `extra` env vars.
    /// Asserts what holds at every point: our hook ran, and the payload is byte-identical
    /// unless the point may rewrite it.
    pub fn run(&self, point: &str, payload: Payload, extra: &[(String, String)]) -> HookRun {
        let input = match &payload {
            Payload::Json(t) | Payload::DomXml(t) => t.clone().into_bytes(),
            Payload::Empty => Vec::new(),
        };
        let mut env = self.env.clone();
        env.extend_from_slice(extra);
        let run = lab::run_hook_point(self.lab.host_ns(), hooks_dir(), point, payload, &env)
            .unwrap_or_else(|e| panic!("running {point}: {e:#}"));
        assert_eq!(
            run.codes.len(),
            1,
            "{point}: expected our hook alone, ran {:?}",
            run.codes
        );
        assert_eq!(run.codes[0].0, HOOK, "{point}");
        if !REWRITING_POINTS.contains(&point) {
            assert!(
                run.payload_after == input,
                "{point} changed its payload:\n{}",
                run.payload_text()
            );
        }
        run
    }

    /// Like [`Fixture::run`], asserting exit code 0.
    pub fn run_ok(&self, point: &str, payload: Payload, extra: &[(String, String)]) -> HookRun {
        let run = self.run(point, payload, extra);
        assert_eq!(run.codes[0].1, 0, "{point} failed; stderr:\n{}", run.stderr);
        run
    }

    /// Runs a VM or device point for VM number `n` (`vmId` set) on `xml`, asserting exit 0.
    pub fn run_vm_point(&self, point: &str, n: u8, xml: String, extra: &[(String, String)]) -> HookRun {
        let mut env = vec![("vmId".to_string(), vm_uuid(n))];
        env.extend_from_slice(extra);
        self.run_ok(point, Payload::DomXml(xml), &env)
    }

    /// `before_network_setup` then `after_network_setup` with `json`, each exiting 0 and
    /// leaving the payload byte-identical.
    pub fn network_setup(&self, json: &str) -> (HookRun, HookRun) {
        let before = self.run_ok("before_network_setup", Payload::Json(json.to_string()), &[]);
        let after = self.run_ok("after_network_setup", Payload::Json(json.to_string()), &[]);
        (before, after)
    }

    /// Lab VM number `n` (`vm{n}` on `vnet{n}`).
    pub fn vm(&self, n: u8) -> VmSpec {
        self.lab.spec().numbered_vm(n)
    }

    /// The engine-side vNIC (no tap yet) of VM `n` with `profile`.
    pub fn engine_nic(&self, n: u8, profile: Profile) -> NicSpec {
        NicSpec {
            trusted: profile.trusted,
            native_isolated: profile.native_isolated,
            ..NicSpec::new(NET, self.vm(n).guest_mac)
        }
    }

    /// The engine's domain XML of VM `n` with one vNIC on `NET` (no tap yet).
    pub fn engine_domain(&self, n: u8, profile: Profile) -> String {
        domain_xml(&self.vm(n).name, &vm_uuid(n), &[self.engine_nic(n, profile)])
    }

    /// Plugs VM `n`'s tap as libvirt does for its XML: created, then flagged at once when
    /// the XML says `<port isolated="yes"/>`.
    fn plug(&mut self, n: u8, isolated: bool) {
        let vm = self.vm(n);
        self.lab.add_vm(&vm).expect("plugging the VM");
        if isolated {
            self.lab.set_port_isolated(&vm.tap, true).expect("setting the flag");
        }
    }

    /// Starts VM `n` with one vNIC on `NET`: `before_vm_start` on the engine's domain XML,
    /// its tap created as the rewritten XML says, then `after_vm_start` on the live XML.
    /// Returns the rewritten XML.
    pub fn start_vm(&mut self, n: u8, profile: Profile) -> String {
        let engine = self.engine_domain(n, profile);
        let rewritten = self.run_vm_point("before_vm_start", n, engine, &[]).payload_text();
        let isolated = port_isolated_in(&rewritten);
        self.plug(n, isolated);
        let live = NicSpec {
            tap: Some(self.vm(n).tap),
            native_isolated: isolated,
            ..self.engine_nic(n, profile)
        };
        let live_xml = domain_xml(&self.vm(n).name, &vm_uuid(n), &[live]);
        self.run_vm_point("after_vm_start", n, live_xml, &[]);
        rewritten
    }

    /// Hotplugs VM `n`'s vNIC: `before_nic_hotplug` on its `<interface>` (device custom
    /// properties in the env), the tap created as the rewritten XML says, then
    /// `after_nic_hotplug` on that XML. Returns the rewritten XML.
    pub fn hotplug(&mut self, n: u8, profile: Profile) -> String {
        self.hotplug_into(n, n, profile)
    }

    /// Like [`Fixture::hotplug`], with VM `nic`'s vNIC (its tap and MAC) plugged into VM `vm`
    /// (the hooks get VM `vm`'s vmId): a VM's second vNIC.
    pub fn hotplug_into(&mut self, vm: u8, nic: u8, profile: Profile) -> String {
        let spec = self.engine_nic(nic, profile);
        let env = spec.device_env();
        let rewritten = self
            .run_vm_point("before_nic_hotplug", vm, interface_xml(&spec), &env)
            .payload_text();
        self.plug(nic, port_isolated_in(&rewritten));
        self.run_vm_point("after_nic_hotplug", vm, rewritten.clone(), &env);
        rewritten
    }

    /// Path of the state file.
    pub fn state_path(&self) -> PathBuf {
        self.state.path().join("state.json")
    }

    /// The state file's bytes (panics if it does not exist).
    pub fn state_bytes(&self) -> Vec<u8> {
        std::fs::read(self.state_path()).expect("reading state.json")
    }

    /// The state file, parsed.
    pub fn state_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.state_bytes()).expect("state.json is JSON")
    }

    /// The trusted vNICs recorded in state.json: (VM id, guest MAC, tap), sorted.
    pub fn trusted_records(&self) -> Vec<(String, String, String)> {
        let state = self.state_json();
        let Some(vms) = state.get("trusted_vnics").and_then(|t| t.as_object()) else {
            return Vec::new();
        };
        let text = |v: &serde_json::Value| v.as_str().expect("a string").to_string();
        let mut out: Vec<_> = vms
            .iter()
            .flat_map(|(vm, ports)| {
                ports
                    .as_array()
                    .expect("a list")
                    .iter()
                    .map(move |p| (vm.clone(), text(&p["mac"]), text(&p["tap"])))
            })
            .collect();
        out.sort();
        out
    }

    /// The ports of the bridge whose isolation flag is set.
    pub fn isolated_ports(&self) -> BTreeSet<String> {
        self.lab
            .bridge_ports()
            .expect("listing the bridge ports")
            .into_iter()
            .filter(|p| self.lab.port_isolated(p).expect("reading a port flag"))
            .collect()
    }

    /// Asserts that exactly `ports` of the bridge have the isolation flag set.
    #[track_caller]
    pub fn assert_isolated_ports(&self, ports: &[&str]) {
        let want: BTreeSet<String> = ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(self.isolated_ports(), want, "ports with the isolated flag");
    }

    /// Probes every pair and asserts the isolation promise of the fixture's backend with
    /// `trusted` VMs exempt: every protocol blocked between VMs, or with the iptables
    /// backend IPv4 and IPv6 only (see [`backend::assert_ip_blocked_between_vms`]).
    pub fn assert_isolation(&self, trusted: &[&str]) {
        let matrix = self.lab.matrix().expect("probing");
        if self.backend == Backend::Iptables {
            backend::assert_ip_blocked_between_vms(&matrix, trusted);
        } else {
            matrix.assert_expected(&isolated_except(trusted));
        }
    }

    /// Probes every pair and asserts that everything passes.
    pub fn assert_all_pass(&self) {
        self.lab.matrix().expect("probing").assert_expected(&|_, _| true);
    }

    /// `bridge-isolation status --json`, asserting it succeeds and prints JSON.
    pub fn status_json(&self) -> serde_json::Value {
        let status = self.cli(&["status", "--json"]);
        assert!(
            status.status.success(),
            "status: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        serde_json::from_slice(&status.stdout).expect("status --json prints JSON")
    }

    /// Runs the admin CLI `bridge-isolation ARGS` in the host namespace with the hooks' env.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().expect("running bridge-isolation")
    }

    /// The command [`Fixture::cli`] runs, to add to or to spawn.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.cli_in_host(args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// `ip netns exec HOST bridge-isolation ARGS`, its environment left to the caller.
    fn cli_in_host(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(lab::IP);
        cmd.args([
            "netns",
            "exec",
            self.lab.host_ns(),
            env!("CARGO_BIN_EXE_bridge-isolation"),
        ])
        .args(args);
        cmd
    }
}

/// A hook (or CLI) process started by [`Fixture::spawn`] or [`Fixture::spawn_cli`], not yet
/// waited for. Its payload and stderr live in a private directory under the target's tmp
/// directory (not `/tmp`), removed when it is dropped.
#[allow(dead_code)] // not every test binary uses every helper
pub struct Spawned {
    child: Child,
    dir: TempDir,
    payload: Option<PathBuf>,
    /// The hook point (or `cli`).
    pub point: String,
}

/// How a [`Spawned`] process ended.
#[allow(dead_code)] // not every test binary uses every helper
#[derive(Debug)]
pub struct Finished {
    /// The hook point (or `cli`).
    pub point: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// The payload file after it ran (empty for the CLI).
    pub payload_after: Vec<u8>,
}

#[allow(dead_code)] // not every test binary uses every helper
impl Finished {
    /// The exit code, `None` when a signal ended it.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The signal that ended it, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }

    /// The stderr lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }
}

#[allow(dead_code)] // not every test binary uses every helper
impl Spawned {
    /// Its process id (after `ip netns exec`, the hook itself: `ip` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL (a no-op if it already ended).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for it to end.
    pub fn wait(mut self) -> Finished {
        let status = self.child.wait().expect("waiting for a spawned process");
        self.finish(status)
    }

    /// Waits at most `limit`; kills it and panics if it runs longer (a hook must never hang:
    /// VDSM runs hooks without a timeout).
    pub fn wait_at_most(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling a spawned process") {
                return self.finish(status);
            }
            if Instant::now() > deadline {
                self.kill();
                let _ = self.child.wait();
                panic!("{} still ran after {limit:?}: killed", self.point);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn finish(self, status: ExitStatus) -> Finished {
        let stderr = std::fs::read(self.dir.path().join("stderr")).unwrap_or_default();
        let payload_after = self
            .payload
            .as_ref()
            .map(|p| std::fs::read(p).expect("reading the payload back"))
            .unwrap_or_default();
        Finished {
            point: self.point,
            status,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            payload_after,
        }
    }
}

/// A private directory for one spawned process, under the target's tmp directory.
#[allow(dead_code)] // not every test binary uses every helper
fn process_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("bi-proc-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a process directory")
}

#[allow(dead_code)] // not every test binary uses every helper
impl Fixture {
    /// The environment every hook of this fixture gets (state dir, config, backend, drop-in
    /// directories, and the private firewalld's bus when it has one).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// VDSM's running network config the hooks and the CLI read (the directory holding
    /// `nets/`; `BRIDGE_ISOLATION_VDSM_NETCONF`).
    pub fn vdsm_netconf(&self) -> PathBuf {
        self.dropins.path().join(VDSM_NETCONF)
    }

    /// The textfile collector directory the hooks, the CLI and the watcher write the
    /// metrics into once it exists (`BRIDGE_ISOLATION_METRICS_TEXTFILE_DIR`; not created).
    pub fn textfile_dir(&self) -> PathBuf {
        self.dropins.path().join(TEXTFILE_DIR)
    }

    /// Updates VDSM's running config as VDSM does after applying the setupNetworks `request`
    /// (a `before_network_setup` payload): `nets/NAME` holds each network's attributes, a
    /// removed network's file goes.
    pub fn write_vdsm_config(&self, request: &str) {
        let nets = self.vdsm_netconf().join("nets");
        std::fs::create_dir_all(&nets).expect("creating nets/");
        let payload: Value = serde_json::from_str(request).expect("a setupNetworks payload");
        let networks = payload["request"]["networks"].as_object().expect("request.networks");
        for (name, attrs) in networks {
            let file = nets.join(name);
            if attrs.get("remove").is_some_and(|r| r == true) {
                let _ = std::fs::remove_file(file);
            } else {
                std::fs::write(file, attrs.to_string()).expect("writing nets/NAME");
            }
        }
    }

    /// Starts hook point `point` in the host namespace the way VDSM does (no arguments,
    /// stdin from /dev/null, clean environment with `PATH`, the fixture's variables, the
    /// payload variable naming a mode-0600 file holding exactly `payload`, then `extra`),
    /// without waiting. Unlike [`Fixture::run`], the payload may be any bytes and no
    /// `vmId` is added: pass it in `extra`.
    pub fn spawn(&self, point: &str, payload: &[u8], extra: &[(String, String)]) -> Spawned {
        self.spawn_via(point, payload, extra, None)
    }

    /// Like [`Fixture::run_bytes`], through `/usr/bin/sh -c SCRIPT HOOK` in a mount namespace
    /// of its own (SCRIPT runs the hook as `"$0"`): to bind-mount over a tool or the state
    /// directory for this run only, or to run the hook as a grandchild of the test.
    pub fn run_scripted(&self, point: &str, payload: &[u8], extra: &[(String, String)], script: &str) -> Finished {
        self.spawn_via(point, payload, extra, Some(script))
            .wait_at_most(Duration::from_secs(60))
    }

    fn spawn_via(&self, point: &str, payload: &[u8], extra: &[(String, String)], script: Option<&str>) -> Spawned {
        let var = bridge_isolation::vdsm::protocol::Point::from_name(point)
            .unwrap_or_else(|| panic!("unknown hook point {point}"))
            .payload_var();
        let dir = process_dir();
        let file = dir.path().join("payload");
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .expect("creating the payload file");
        std::io::Write::write_all(&mut out, payload).expect("writing the payload file");
        drop(out);
        let mut cmd = Command::new(lab::IP);
        cmd.args(["netns", "exec", self.lab.host_ns()]);
        if let Some(script) = script {
            cmd.args(["/usr/bin/unshare", "--mount", "--", "/usr/bin/sh", "-c", script]);
        }
        cmd.arg(hooks_dir().join(point).join(HOOK))
            .env_clear()
            .env("PATH", lab::HOOK_PATH)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(var, &file)
            .envs(extra.iter().map(|(k, v)| (k, v)));
        let child = start(cmd, &dir);
        Spawned {
            child,
            dir,
            payload: Some(file),
            point: point.to_string(),
        }
    }

    /// [`Fixture::spawn`] and wait (at most a minute).
    pub fn run_bytes(&self, point: &str, payload: &[u8], extra: &[(String, String)]) -> Finished {
        self.spawn(point, payload, extra).wait_at_most(Duration::from_secs(60))
    }

    /// Starts the admin CLI `bridge-isolation ARGS` in the host namespace with the hooks'
    /// environment, without waiting.
    pub fn spawn_cli(&self, args: &[&str]) -> Spawned {
        self.spawn_cli_with(args, &[])
    }

    /// [`Fixture::spawn_cli`] with `extra` environment variables (which win).
    pub fn spawn_cli_with(&self, args: &[&str], extra: &[(String, String)]) -> Spawned {
        let dir = process_dir();
        let mut cmd = self.cli_in_host(args);
        cmd.env_clear()
            .env("PATH", lab::HOOK_PATH)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().map(|(k, v)| (k, v)));
        let child = start(cmd, &dir);
        Spawned {
            child,
            dir,
            payload: None,
            point: "cli".to_string(),
        }
    }

    /// The backend the hooks and the CLI are told to use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Tells every later hook and CLI run to use `backend` (as a config change would).
    pub fn set_backend(&mut self, backend: Backend) {
        self.backend = backend;
        for (key, value) in &mut self.env {
            if key == "BRIDGE_ISOLATION_BACKEND" {
                *value = backend.name().to_string();
            }
        }
    }

    /// The directory holding the iptables backend's drop-in directories (`modules-load.d`,
    /// `sysctl.d`); nothing else writes there.
    pub fn dropin_dir(&self) -> &Path {
        self.dropins.path()
    }

    /// The private firewalld of the lab host (panics when the fixture has none).
    pub fn firewalld(&self) -> &Firewalld {
        self.firewalld.as_ref().expect("this fixture runs no firewalld")
    }

    /// The private firewalld, to restart it.
    pub fn firewalld_mut(&mut self) -> &mut Firewalld {
        self.firewalld.as_mut().expect("this fixture runs no firewalld")
    }

    /// Starts VM `n` as [`Fixture::start_vm`] does, then clears the port flag libvirt set
    /// from the rewritten XML behind our back: the backend's rules alone must keep the VMs
    /// apart. Returns the rewritten XML.
    pub fn start_vm_unflagged(&mut self, n: u8, profile: Profile) -> String {
        let rewritten = self.start_vm(n, profile);
        self.lab
            .set_port_isolated(&self.vm(n).tap, false)
            .expect("clearing the flag");
        rewritten
    }

    /// The ports this fixture's backend enforces isolation on, read from the kernel (or
    /// firewalld): the flagged ports (port-isolation), the members of the bridge's set
    /// (nftables), the ports with a `--physdev-out` DROP rule in both families (iptables),
    /// the ports with an `-o` DROP direct rule (firewalld).
    pub fn enforced_ports(&self) -> BTreeSet<String> {
        match self.backend {
            Backend::PortIsolation => self.isolated_ports(),
            Backend::Nftables => self.nft_table().map(|t| backend::nft_members(&t)).unwrap_or_default(),
            Backend::Iptables => {
                let [v4, v6] = self.xtables_ours().map(|lines| {
                    let prefix = format!("-A BRIDGE-ISO-{NET} -m physdev --physdev-out ");
                    lines
                        .iter()
                        .filter_map(|l| l.strip_prefix(&prefix)?.strip_suffix(" -j DROP").map(str::to_string))
                        .collect::<BTreeSet<String>>()
                });
                assert_eq!(v4, v6, "iptables and ip6tables enforce different ports");
                v4
            }
            Backend::Firewalld => {
                let prefix = format!("eb filter BRIDGE_ISO_{NET} 0 -o ");
                self.firewalld().direct()[0]
                    .iter()
                    .filter_map(|l| l.strip_prefix(&prefix)?.strip_suffix(" -j DROP").map(str::to_string))
                    .collect()
            }
        }
    }

    /// Our nftables table in the lab host (`nft -j list table`, metainfo left out), or `None`.
    pub fn nft_table(&self) -> Option<Value> {
        use bridge_isolation::enforce::nftables::TABLE;
        let exec = |args: &[&str]| self.lab.exec_in_host(args).expect("running nft");
        backend::nft_table_with(exec, TABLE)
    }

    /// The bridge ports in the nftables gate's interface group.
    pub fn grouped_ports(&self) -> BTreeSet<String> {
        use bridge_isolation::enforce::nftables::GROUP;
        let ports = self.lab.bridge_ports().expect("listing the ports");
        ports
            .into_iter()
            .filter(|p| self.lab.port_group(p).expect("reading a port group") == GROUP)
            .collect()
    }

    /// The filter table of IPv4 and IPv6 in the lab host (`*tables-save -t filter`),
    /// comment lines left out.
    pub fn xtables(&self) -> [Vec<String>; 2] {
        backend::XTABLES_SAVE.map(|save| {
            let out = self
                .lab
                .exec_in_host(&[save, "-t", "filter"])
                .expect("running *tables-save");
            backend::ok(out)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect()
        })
    }

    /// The lines of [`Fixture::xtables`] naming our chains, per family.
    pub fn xtables_ours(&self) -> [Vec<String>; 2] {
        self.xtables()
            .map(|t| t.into_iter().filter(|l| l.contains("BRIDGE-ISO")).collect())
    }

    /// Both `bridge-nf-call-*` sysctls of the lab host (br_netfilter on for IPv4, IPv6).
    pub fn br_netfilter(&self) -> [bool; 2] {
        use bridge_isolation::enforce::iptables::SYSCTLS;
        SYSCTLS.map(|s| {
            let path = format!("/proc/sys/net/bridge/{s}");
            let out = self.lab.exec_in_host(&[lab::CAT, &path]).expect("reading a sysctl");
            backend::ok(out).trim() == "1"
        })
    }

    /// Sets both `bridge-nf-call-*` sysctls of the lab host.
    pub fn set_br_netfilter(&self, on: bool) {
        use bridge_isolation::enforce::iptables::SYSCTLS;
        let v = u8::from(on);
        let args: Vec<String> = SYSCTLS.iter().map(|s| format!("net.bridge.{s}={v}")).collect();
        let mut argv = vec![backend::SYSCTL, "-qw"];
        argv.extend(args.iter().map(String::as_str));
        backend::ok(self.lab.exec_in_host(&argv).expect("running sysctl"));
    }

    /// Whether the iptables backend's drop-ins exist: modules-load.d, sysctl.d.
    pub fn iptables_dropins(&self) -> [bool; 2] {
        use bridge_isolation::enforce::iptables::{MODULES_DROPIN, SYSCTL_DROPIN};
        [
            self.dropins.path().join("modules-load.d").join(MODULES_DROPIN).exists(),
            self.dropins.path().join("sysctl.d").join(SYSCTL_DROPIN).exists(),
        ]
    }

    /// Every port of the bridge and its isolation flag, read in one `ip -d -j link show`.
    pub fn port_flags(&self) -> BTreeMap<String, bool> {
        let json = self
            .lab
            .ip_in_host(&["-d", "-j", "link", "show", "master", NET])
            .expect("listing the bridge ports");
        let links: Vec<serde_json::Value> = serde_json::from_str(&json).expect("ip -j prints JSON");
        links
            .iter()
            .map(|l| {
                let name = l["ifname"].as_str().expect("ifname").to_string();
                let isolated = l["linkinfo"]["info_slave_data"]["isolated"].as_bool().unwrap_or(false);
                (name, isolated)
            })
            .collect()
    }
}

/// Spawns `cmd` with stdin from /dev/null, stdout discarded and stderr into `dir/stderr`
/// (a file, not a pipe: many concurrent processes must never block on a full pipe).
#[allow(dead_code)] // not every test binary uses every helper
fn start(mut cmd: Command, dir: &TempDir) -> Child {
    let stderr = std::fs::File::create(dir.path().join("stderr")).expect("creating the stderr file");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
}

/// `bridge-isolation watch` running in a fixture's host namespace, its stderr lines
/// forwarded to a channel; killed when dropped.
#[allow(dead_code)] // not every test binary uses every helper
pub struct Watcher {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line read so far and not yet matched by [`Watcher::wait_line`].
    pub seen: Vec<String>,
}

#[allow(dead_code)] // not every test binary uses every helper
impl Watcher {
    /// Starts `bridge-isolation ARGS` (`watch`, or the old `watch-firewalld`) with the
    /// fixture's environment, `BRIDGE_ISOLATION_LOG=info` and `extra` (which win), and
    /// waits until it says it watches the links.
    pub fn start(fx: &Fixture, args: &[&str], extra: &[(String, String)]) -> Watcher {
        use std::io::BufRead;
        let mut child = fx
            .cli_command(args)
            .env("BRIDGE_ISOLATION_LOG", "info")
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the watcher");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut watcher = Watcher {
            child,
            lines,
            seen: Vec::new(),
        };
        watcher.wait_line("watching the links of this network namespace", Duration::from_secs(30));
        watcher
    }

    /// Its process id (`ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits at most `limit` for a line containing `needle`, and takes it out of
    /// [`Watcher::seen`]; panics with every line seen when none comes.
    #[track_caller]
    pub fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = self.seen.iter().position(|l| l.contains(needle)) {
                return self.seen.remove(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("the watcher never logged {needle:?}; it logged: {:#?}", self.seen),
            }
        }
    }

    /// Every line logged until now (those already matched left out).
    pub fn drain(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    /// Sends `signal` to it.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid() as libc::pid_t, signal) }, 0, "kill");
    }

    /// SIGKILL, and waits for it to end.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 2 ms until it holds, for at most `limit`; panics naming `what`.
#[allow(dead_code)] // not every test binary uses every helper
#[track_caller]
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: still not so after {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
