//! The firewalld backend on a real kernel, against a real firewalld (docs/design.md §7):
//! each test runs its own `dbus-daemon` on a private socket and `firewalld --nofork --nopid
//! --system-config DIR` inside the lab's host namespace, with `DBUS_SYSTEM_BUS_ADDRESS`
//! pointing the hooks at it; the machine's `/etc/firewalld` and system bus are untouched.
//!
//! Checked: the core matrix (every protocol blocked between VMs, everything else passes),
//! the direct rules runtime and permanent (as `firewall-cmd` lists them), restore-nets
//! adding no duplicate, the rules surviving `firewall-cmd --reload` and a firewalld
//! restart, removal leaving nothing; the nftables backend's table surviving
//! `firewall-cmd --reload` under both firewalld backends; and the iptables backend refusing
//! to run beside firewalld without changing anything. They need root; as another user they skip (or fail
//! under `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bridge_isolation::enforce::iptables::SYSCTLS;
use bridge_isolation::enforce::nftables::{set_name, TABLE as NFT_TABLE};
use bridge_isolation_lab::{self as lab, domain_xml, is_vm, HookRun, Lab, LabSpec, NetSpec, NicSpec, Payload};
use serde_json::{json, Value};
use tempfile::TempDir;

const NET: &str = "isonet";
const UPLINK: &str = "eth1";
const HOOK: &str = "50_bridge_isolation";
const FIREWALLD: &str = "/usr/sbin/firewalld";
const FIREWALL_CMD: &str = "/usr/bin/firewall-cmd";
const DBUS_DAEMON: &str = "/usr/bin/dbus-daemon";
const SYSCTL: &str = "/usr/sbin/sysctl";

/// Whether this machine has what a firewalld test needs (CI installs it).
fn firewalld_tests_enabled(test: &str) -> bool {
    if !lab::root_tests_enabled(test) {
        return false;
    }
    let missing: Vec<&str> = [FIREWALLD, FIREWALL_CMD, DBUS_DAEMON, "/usr/sbin/ebtables", SYSCTL]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let reason = format!("missing programs: {}", missing.join(", "));
    if std::env::var(lab::REQUIRE_ROOT_TESTS).is_ok_and(|v| v == "1") {
        panic!("{test}: {reason}, and {}=1 forbids skipping", lab::REQUIRE_ROOT_TESTS);
    }
    eprintln!("skipping {test}: {reason}");
    false
}

/// A private system bus and a firewalld on it, inside network namespace `ns`.
struct Firewalld {
    dir: TempDir,
    ns: String,
    bus: Child,
    daemon: Option<Child>,
}

impl Firewalld {
    /// Starts the bus and firewalld with `FirewallBackend=backend`, and waits until it runs.
    fn start(ns: &str, backend: &str) -> Firewalld {
        let dir = tempfile::tempdir().expect("creating firewalld's directory");
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .unwrap();
        let bus = Command::new(DBUS_DAEMON)
            .arg("--nofork")
            .arg(format!("--config-file={}", config.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dbus-daemon");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "dbus-daemon did not create {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(
            etc.join("firewalld.conf"),
            format!("DefaultZone=public\nCleanupOnExit=yes\nFirewallBackend={backend}\nFlushAllOnReload=yes\n"),
        )
        .unwrap();
        let mut fw = Firewalld {
            dir,
            ns: ns.to_string(),
            bus,
            daemon: None,
        };
        fw.spawn();
        fw
    }

    fn address(&self) -> String {
        format!("unix:path={}", self.dir.path().join("bus").display())
    }

    fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("firewalld.log"))
            .unwrap();
        let child = Command::new(lab::IP)
            .args([
                "netns",
                "exec",
                &self.ns,
                FIREWALLD,
                "--nofork",
                "--nopid",
                "--log-target",
                "console",
            ])
            .arg("--system-config")
            .arg(self.etc())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.address())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting firewalld");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = self.cmd(&["--state"]);
            if String::from_utf8_lossy(&out.stdout).trim() == "running" {
                return;
            }
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!("firewalld exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "firewalld not running after 90 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("firewalld.log")).unwrap_or_default()
    }

    /// `firewall-cmd ARGS` against this firewalld.
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new(FIREWALL_CMD)
            .args(args)
            .env_clear()
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.address())
            .stdin(Stdio::null())
            .output()
            .expect("running firewall-cmd")
    }

    /// Lines of `firewall-cmd ARGS` (sorted), asserting success.
    fn lines(&self, args: &[&str]) -> Vec<String> {
        let mut lines: Vec<String> = ok(self.cmd(args)).lines().map(str::to_string).collect();
        lines.sort();
        lines
    }

    /// Direct rules and chains, runtime and permanent.
    fn direct(&self) -> [Vec<String>; 4] {
        [
            self.lines(&["--direct", "--get-all-rules"]),
            self.lines(&["--permanent", "--direct", "--get-all-rules"]),
            self.lines(&["--direct", "--get-all-chains"]),
            self.lines(&["--permanent", "--direct", "--get-all-chains"]),
        ]
    }

    /// Stops firewalld (SIGTERM: it cleans up its rules, as `systemctl stop` would).
    fn stop(&mut self) {
        let Some(mut child) = self.daemon.take() else {
            return;
        };
        // SAFETY: plain kill(2) on the pid of a child we started and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.wait();
    }

    /// `systemctl restart firewalld`: stop, start, wait until it runs.
    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Firewalld {
    fn drop(&mut self) {
        self.stop();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

/// A lab (both `bridge-nf-call-*` at 0 in its host, as a host without br_netfilter:
/// otherwise firewalld would reject all bridged IPv4 from the start), state, hook tree,
/// firewalld.
struct Rig {
    fw: Firewalld,
    lab: Lab,
    state: TempDir,
    etc: TempDir,
    hooks: TempDir,
}

impl Rig {
    fn new(tag: &str, vms: u8, backend: &str) -> Rig {
        let lab = Lab::create(&LabSpec::new(&lab::unique_prefix(tag)).with_vms(vms)).expect("creating the lab");
        let args: Vec<String> = SYSCTLS.iter().map(|s| format!("net.bridge.{s}=0")).collect();
        let mut argv = vec![SYSCTL, "-qw"];
        argv.extend(args.iter().map(String::as_str));
        ok(lab.exec_in_host(&argv).expect("running sysctl"));
        let hooks = tempfile::tempdir().expect("creating the hook tree");
        let points = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks");
        for entry in std::fs::read_dir(points).expect("listing hooks/") {
            let dir = hooks.path().join(entry.unwrap().file_name());
            std::fs::create_dir(&dir).unwrap();
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vdsm-hook-bridge-isolation"), dir.join(HOOK)).unwrap();
        }
        let fw = Firewalld::start(lab.host_ns(), backend);
        Rig {
            fw,
            lab,
            state: tempfile::tempdir().unwrap(),
            etc: tempfile::tempdir().unwrap(),
            hooks,
        }
    }

    fn env(&self, backend: &str) -> Vec<(String, String)> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            ("BRIDGE_ISOLATION_STATE_DIR".into(), path(self.state.path())),
            ("BRIDGE_ISOLATION_CONFIG".into(), "/nonexistent".into()),
            ("BRIDGE_ISOLATION_BACKEND".into(), backend.into()),
            (
                "BRIDGE_ISOLATION_MODULES_LOAD_DIR".into(),
                path(&self.etc.path().join("modules-load.d")),
            ),
            (
                "BRIDGE_ISOLATION_SYSCTL_DIR".into(),
                path(&self.etc.path().join("sysctl.d")),
            ),
            ("DBUS_SYSTEM_BUS_ADDRESS".into(), self.fw.address()),
        ]
    }

    fn run(&self, backend: &str, point: &str, payload: Payload, vm: Option<u8>) -> HookRun {
        let mut env = self.env(backend);
        env.extend(vm.map(|n| ("vmId".to_string(), vm_uuid(n))));
        lab::run_hook_point(self.lab.host_ns(), self.hooks.path(), point, payload, &env)
            .unwrap_or_else(|e| panic!("running {point}: {e:#}"))
    }

    fn hook(&self, point: &str, payload: Payload, vm: Option<u8>) -> HookRun {
        self.hook_as("firewalld", point, payload, vm)
    }

    /// Runs `point` with `backend`, asserting our hook ran and exited 0.
    fn hook_as(&self, backend: &str, point: &str, payload: Payload, vm: Option<u8>) -> HookRun {
        let run = self.run(backend, point, payload, vm);
        assert_eq!(run.codes, [(HOOK.to_string(), 0)], "{point}; stderr:\n{}", run.stderr);
        run
    }

    fn network_setup(&self, json: &str) {
        self.network_setup_as("firewalld", json);
    }

    fn network_setup_as(&self, backend: &str, json: &str) {
        for point in ["before_network_setup", "after_network_setup"] {
            self.hook_as(backend, point, Payload::Json(json.to_string()), None);
        }
    }

    /// Starts VM `n` through the hooks, then clears the port flag libvirt set from the
    /// rewritten XML: the direct rules alone must keep the VMs apart.
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
        self.cli_as("firewalld", args)
    }

    fn cli_as(&self, backend: &str, args: &[&str]) -> Output {
        Command::new(lab::IP)
            .args([
                "netns",
                "exec",
                self.lab.host_ns(),
                env!("CARGO_BIN_EXE_bridge-isolation"),
            ])
            .args(args)
            .envs(self.env(backend))
            .output()
            .expect("running bridge-isolation")
    }

    fn state_json(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.state.path().join("state.json")).unwrap()).unwrap()
    }

    /// Our nftables table in the lab host (`nft -j list table`, metainfo and counters
    /// left out: what must not change), or `None`.
    fn nft_table(&self) -> Option<Value> {
        let out = self
            .lab
            .exec_in_host(&[lab::NFT, "-j", "list", "table", "bridge", NFT_TABLE])
            .expect("running nft");
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("No such file or directory"), "nft list failed: {err}");
            return None;
        }
        let mut v: Value = serde_json::from_slice(&out.stdout).expect("nft -j prints JSON");
        let items = v["nftables"].as_array_mut().unwrap();
        items.retain(|i| i.get("metainfo").is_none());
        for rule in items.iter_mut().filter_map(|i| i.get_mut("rule")) {
            for expr in rule["expr"].as_array_mut().into_iter().flatten() {
                if let Some(c) = expr.get_mut("counter") {
                    *c = json!({"packets": 0, "bytes": 0});
                }
            }
        }
        Some(v)
    }

    fn sysctls(&self) -> Vec<String> {
        SYSCTLS
            .iter()
            .map(|s| {
                let path = format!("/proc/sys/net/bridge/{s}");
                ok(self.lab.exec_in_host(&[lab::CAT, &path]).unwrap())
                    .trim()
                    .to_string()
            })
            .collect()
    }

    fn assert_isolation(&self, trusted: &[&str]) {
        let expected = |a: &str, b: &str| !(is_vm(a) && is_vm(b)) || trusted.contains(&a) || trusted.contains(&b);
        self.lab.matrix().expect("probing").assert_expected(&expected);
    }

    fn assert_all_pass(&self) {
        self.lab.matrix().expect("probing").assert_expected(&|_, _| true);
    }
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

/// Our direct rules for VM ports `ports` of the lab bridge, sorted as `lines` sorts them.
fn rules(ports: &[&str]) -> Vec<String> {
    let mut lines = vec!["eb filter FORWARD 0 -j BRIDGE_ISOLATION".to_string()];
    for p in ports {
        lines.push(format!("eb filter BRIDGE_ISOLATION 0 -i {p} -j BRIDGE_ISO_{NET}"));
        lines.push(format!("eb filter BRIDGE_ISO_{NET} 0 -o {p} -j DROP"));
    }
    lines.sort();
    lines
}

fn chains() -> Vec<String> {
    vec![
        "eb filter BRIDGE_ISOLATION".to_string(),
        format!("eb filter BRIDGE_ISO_{NET}"),
    ]
}

/// Three running VMs, then the tag: every protocol blocked between them, uplink and host
/// open; our rules and chains runtime and permanent, nothing else. Restore-nets and
/// `reconcile` change nothing; `firewall-cmd --reload` and a firewalld restart keep the
/// rules and the isolation; removing the network removes them, runtime and permanent.
#[test]
fn firewalld_isolates_and_survives_reload_and_restart() {
    if !firewalld_tests_enabled("firewalld_isolates_and_survives_reload_and_restart") {
        return;
    }
    let mut rig = Rig::new("bifw", 3, "nftables");
    rig.assert_all_pass();
    let empty: [Vec<String>; 4] = Default::default();
    assert_eq!(rig.fw.direct(), empty);

    rig.network_setup(&tagged());
    assert_eq!(rig.state_json()["backend"], json!("firewalld"));
    let want = rules(&["vnet1", "vnet2", "vnet3"]);
    let full = [want.clone(), want.clone(), chains(), chains()];
    assert_eq!(rig.fw.direct(), full);
    assert_eq!(rig.sysctls(), ["0", "0"], "no br_netfilter needed");
    rig.assert_isolation(&[]);

    let state = rig.state_json();
    rig.network_setup(&restore_nets());
    assert_eq!(rig.fw.direct(), full, "restore-nets changed the rules");
    assert_eq!(rig.state_json(), state, "restore-nets changed the state");
    assert_eq!(ok(rig.cli(&["reconcile"])).trim(), "firewalld: 0 port(s) changed");
    ok(rig.cli(&["verify"]));

    ok(rig.fw.cmd(&["--reload"]));
    assert_eq!(rig.fw.direct(), full, "the reload lost rules");
    rig.assert_isolation(&[]);
    assert_eq!(ok(rig.cli(&["reconcile"])).trim(), "firewalld: 0 port(s) changed");

    rig.fw.restart();
    assert_eq!(rig.fw.direct(), full, "the restart lost rules");
    rig.assert_isolation(&[]);
    ok(rig.cli(&["verify"]));

    rig.network_setup(&lab::setup_networks_json(&[(NET, NetSpec::removed())]));
    assert_eq!(rig.fw.direct(), empty, "rules outlived the network");
    rig.assert_all_pass();
    let kernel = ok(rig.lab.exec_in_host(&["/usr/sbin/ebtables-save"]).unwrap());
    assert!(!kernel.contains("BRIDGE_ISO"), "ebtables kept our chains: {kernel}");
    let direct_xml = std::fs::read_to_string(rig.fw.etc().join("direct.xml")).unwrap_or_default();
    assert!(!direct_xml.contains("BRIDGE_ISO"), "{direct_xml}");
}

/// The members of the lab bridge's set in a `nft_table` listing, as nft names them.
fn nft_members(v: &Value) -> Vec<String> {
    let name = set_name(NET);
    let set = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("set"))
        .find(|s| s["name"] == json!(name))
        .unwrap_or_else(|| panic!("no set {name} in {v:#}"));
    let mut members: Vec<String> = set
        .get("elem")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| e.as_str().expect("element name").to_string())
                .collect()
        })
        .unwrap_or_default();
    members.sort();
    members
}

/// The `nftables` backend beside a running firewalld, with each of firewalld's backends:
/// three running VMs, then the tag: our `bridge bridge_isolation` table holds their ports,
/// every protocol is blocked between them, uplink and host open, and firewalld has no direct
/// rule of ours. `firewall-cmd --reload` (FlushAllOnReload=yes) keeps the table as it was
/// (same handles, same members, same rule) and the matrix, and `verify` passes (docs/design.md
/// §4: a reload keeps foreign nftables tables).
#[test]
fn nftables_table_survives_firewalld_reload() {
    if !firewalld_tests_enabled("nftables_table_survives_firewalld_reload") {
        return;
    }
    for fw_backend in ["nftables", "iptables"] {
        let rig = Rig::new("bifwnft", 3, fw_backend);
        rig.network_setup_as("nftables", &tagged());
        assert_eq!(rig.state_json()["backend"], json!("nftables"), "{fw_backend}");
        let table = rig.nft_table().expect("our table exists");
        assert_eq!(nft_members(&table), ["vnet1", "vnet2", "vnet3"], "{fw_backend}");
        let empty: [Vec<String>; 4] = Default::default();
        assert_eq!(rig.fw.direct(), empty, "{fw_backend}: direct rules of ours");
        rig.assert_isolation(&[]);
        ok(rig.cli_as("nftables", &["verify"]));

        ok(rig.fw.cmd(&["--reload"]));
        assert_eq!(ok(rig.fw.cmd(&["--state"])).trim(), "running");
        let after = rig.nft_table();
        assert_eq!(
            after.as_ref(),
            Some(&table),
            "{fw_backend}: firewall-cmd --reload changed our table"
        );
        rig.assert_isolation(&[]);
        ok(rig.cli_as("nftables", &["verify"]));
    }
}

/// VMs started through the hooks (flags cleared behind our back): a trusted vNIC has no
/// rule and reaches everyone; a foreign direct rule is left alone; lifting the property
/// removes exactly our rules.
#[test]
fn firewalld_trusted_vnic_and_untag_keep_others_rules() {
    if !firewalld_tests_enabled("firewalld_trusted_vnic_and_untag_keep_others_rules") {
        return;
    }
    let mut rig = Rig::new("bifwtr", 0, "nftables");
    let foreign = [
        "--direct",
        "--add-rule",
        "eb",
        "filter",
        "INPUT",
        "5",
        "-p",
        "0x88b6",
        "-j",
        "DROP",
    ];
    ok(rig.fw.cmd(&foreign));
    ok(rig.fw.cmd(&[&["--permanent"], &foreign[..]].concat()));
    let others = vec!["eb filter INPUT 5 -p 0x88b6 -j DROP".to_string()];

    rig.network_setup(&tagged());
    rig.start_vm(1, false);
    rig.start_vm(2, false);
    rig.start_vm(3, true);
    let mut want = rules(&["vnet1", "vnet2"]);
    want.extend(others.clone());
    want.sort();
    assert_eq!(rig.fw.direct(), [want.clone(), want, chains(), chains()]);
    ok(rig.cli(&["verify"]));
    rig.assert_isolation(&["vm3"]);

    rig.network_setup(&lab::setup_networks_json(&[(NET, NetSpec::on_nic(UPLINK))]));
    assert_eq!(
        rig.fw.direct(),
        [others.clone(), others, Vec::new(), Vec::new()],
        "only our rules go"
    );
    rig.assert_all_pass();
}

/// The iptables backend beside a running firewalld: with firewalld's nftables backend it
/// refuses at before_network_setup (exit 2, one line naming the other backends), turns no
/// sysctl on, writes no rule or drop-in, and every pair still passes. The same with
/// firewalld's iptables backend (whose FORWARD would reject bridged traffic just as well).
#[test]
fn iptables_refuses_beside_firewalld() {
    if !firewalld_tests_enabled("iptables_refuses_beside_firewalld") {
        return;
    }
    let mut rig = Rig::new("bifwipt", 2, "nftables");
    for backend in ["nftables", "iptables"] {
        if backend == "iptables" {
            let conf = rig.fw.etc().join("firewalld.conf");
            let text = std::fs::read_to_string(&conf)
                .unwrap()
                .replace("=nftables", "=iptables");
            std::fs::write(&conf, text).unwrap();
            rig.fw.restart();
            let saved = ok(rig.lab.exec_in_host(&["/usr/sbin/iptables-save"]).unwrap());
            assert!(
                saved.contains("FORWARD_ZONES"),
                "firewalld runs on iptables now: {saved}"
            );
        }
        let run = rig.run("iptables", "before_network_setup", Payload::Json(tagged()), None);
        assert_eq!(run.codes, [(HOOK.to_string(), 2)], "{backend}: {}", run.stderr);
        // VDSM shows the last script's stderr: one error line, last, saying why and what to use.
        let errors: Vec<&str> = run.last_stderr.lines().filter(|l| l.contains("] error: ")).collect();
        assert_eq!(errors.len(), 1, "one error line: {}", run.last_stderr);
        assert_eq!(run.last_stderr.lines().last(), Some(errors[0]));
        assert!(
            errors[0].contains("firewalld is running") && errors[0].contains("port-isolation, nftables or firewalld"),
            "{}",
            errors[0]
        );
        assert_eq!(rig.sysctls(), ["0", "0"], "{backend}: a sysctl changed");
        for save in ["/usr/sbin/iptables-save", "/usr/sbin/ip6tables-save"] {
            let saved = ok(rig.lab.exec_in_host(&[save]).unwrap());
            assert!(!saved.contains("BRIDGE-ISO"), "{backend}: {saved}");
        }
        assert!(
            std::fs::read_dir(rig.etc.path()).unwrap().next().is_none(),
            "{backend}: a drop-in was written"
        );
        rig.assert_all_pass();
    }
}

/// The two-host fabric of tests/crosshost.rs with the firewalld backend: each host
/// namespace runs its own bus and firewalld (nftables backend, `bridge-nf-call-*` at 0), and
/// has its own state and drop-in directories.
struct Cluster {
    // Declared first: firewalld stops before its namespace goes.
    fws: Vec<Firewalld>,
    fabric: lab::Fabric,
    states: Vec<(TempDir, TempDir)>,
    hooks: TempDir,
}

impl Cluster {
    fn new(tag: &str) -> Cluster {
        let fabric = lab::Fabric::create(&lab::unique_prefix(tag), 2).expect("creating the fabric");
        let args: Vec<String> = SYSCTLS.iter().map(|s| format!("net.bridge.{s}=0")).collect();
        let mut fws = Vec::new();
        let mut states = Vec::new();
        for host in ["h1", "h2"] {
            let ns = fabric.host_ns(host).unwrap().to_string();
            let mut argv = vec![SYSCTL, "-qw"];
            argv.extend(args.iter().map(String::as_str));
            ok(fabric.exec_in(&ns, &argv).expect("running sysctl"));
            fws.push(Firewalld::start(&ns, "nftables"));
            states.push((tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()));
        }
        let hooks = tempfile::tempdir().expect("creating the hook tree");
        for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks")).unwrap() {
            let dir = hooks.path().join(entry.unwrap().file_name());
            std::fs::create_dir(&dir).unwrap();
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vdsm-hook-bridge-isolation"), dir.join(HOOK)).unwrap();
        }
        Cluster {
            fws,
            fabric,
            states,
            hooks,
        }
    }

    fn idx(host: &str) -> usize {
        usize::from(host == "h2")
    }

    fn env(&self, host: &str) -> Vec<(String, String)> {
        let (state, etc) = &self.states[Cluster::idx(host)];
        let path = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            ("BRIDGE_ISOLATION_STATE_DIR".into(), path(state.path())),
            ("BRIDGE_ISOLATION_CONFIG".into(), "/nonexistent".into()),
            ("BRIDGE_ISOLATION_BACKEND".into(), "firewalld".into()),
            ("BRIDGE_ISOLATION_MODULES_LOAD_DIR".into(), path(&etc.path().join("m"))),
            ("BRIDGE_ISOLATION_SYSCTL_DIR".into(), path(&etc.path().join("s"))),
            ("DBUS_SYSTEM_BUS_ADDRESS".into(), self.fws[Cluster::idx(host)].address()),
        ]
    }

    fn hook(&self, host: &str, point: &str, payload: Payload, vm: Option<u8>) -> HookRun {
        let mut e = self.env(host);
        e.extend(vm.map(|n| ("vmId".to_string(), vm_uuid(n))));
        let ns = self.fabric.host_ns(host).unwrap();
        let run = lab::run_hook_point(ns, self.hooks.path(), point, payload, &e).unwrap();
        assert_eq!(run.codes, [(HOOK.to_string(), 0)], "{point} on {host}:\n{}", run.stderr);
        run
    }

    fn setup(&self, host: &str, net: NetSpec) {
        let json = lab::setup_networks_json(&[(NET, net)]);
        for point in ["before_network_setup", "after_network_setup"] {
            self.hook(host, point, Payload::Json(json.clone()), None);
        }
    }

    /// Starts `vm` (VM number `n`) on `host` as VDSM and libvirt do.
    fn start(&mut self, host: &str, n: u8, vm: &lab::VmSpec, trusted: bool) {
        let nic = NicSpec {
            trusted,
            ..NicSpec::new(NET, vm.guest_mac)
        };
        let engine = domain_xml(&vm.name, &vm_uuid(n), std::slice::from_ref(&nic));
        self.hook(host, "before_vm_start", Payload::DomXml(engine), Some(n));
        self.fabric.add_vm(host, vm).expect("plugging the VM");
        let live = NicSpec {
            tap: Some(vm.tap.clone()),
            ..nic
        };
        let xml = domain_xml(&vm.name, &vm_uuid(n), &[live]);
        self.hook(host, "after_vm_start", Payload::DomXml(xml), Some(n));
    }

    fn cli(&self, host: &str, args: &[&str]) -> Output {
        Command::new(lab::IP)
            .args(["netns", "exec", self.fabric.host_ns(host).unwrap()])
            .arg(env!("CARGO_BIN_EXE_bridge-isolation"))
            .args(args)
            .envs(self.env(host))
            .output()
            .unwrap()
    }

    /// The runtime direct rules of `host` naming chains `prefix*` (asserting that runtime
    /// and permanent agree and that chain `prefix{NET}` exists).
    fn direct_part(&self, host: &str, prefix: &str) -> Vec<String> {
        let [runtime, permanent, chains, pchains] = self.fws[Cluster::idx(host)].direct();
        assert_eq!(runtime, permanent, "{host}: runtime and permanent differ");
        assert_eq!(chains, pchains);
        assert!(chains.contains(&format!("eb filter {prefix}{NET}")), "{chains:?}");
        runtime.into_iter().filter(|l| l.contains(prefix)).collect()
    }

    /// Whether `host` has the cross-host nft table (never with firewalld).
    fn has_nft_table(&self, host: &str) -> bool {
        let ns = self.fabric.host_ns(host).unwrap();
        let table = bridge_isolation::enforce::cross_host::TABLE;
        let out = self
            .fabric
            .exec_in(ns, &[lab::NFT, "list", "table", "bridge", table])
            .unwrap();
        out.status.success()
    }
}

/// Cross-host isolation (issue 7) with the firewalld backend on the two-host fabric: the
/// peer filter is `eb` direct rules (runtime and permanent) instead of the nftables table.
/// VM1@h1 and VM2@h2 are blocked from each other, every VM reaches the gateway and hosts,
/// the router VM (trusted vNIC on h2, trusted MAC on h1) reaches everyone; removal and
/// release-all leave no rule.
#[test]
fn firewalld_blocks_peers_across_hosts() {
    if !firewalld_tests_enabled("firewalld_blocks_peers_across_hosts") {
        return;
    }
    const PEERS: &str = "bridge_isolation_peer_macs";
    const TRUSTED_MACS: &str = "bridge_isolation_trusted_macs";
    let mut c = Cluster::new("xhfw");
    let h1_net = NetSpec::on_nic(UPLINK)
        .with_isolation("true")
        .with_custom(PEERS, "56:6f:4c:ab:00:00-56:6f:4c:ab:00:ff")
        .with_custom(TRUSTED_MACS, "56:6f:4c:ab:00:04");
    let h2_net = NetSpec::on_nic(UPLINK)
        .with_isolation("true")
        .with_custom(PEERS, "56:6f:4c:ab:00:00/40");
    c.setup("h1", h1_net);
    c.setup("h2", h2_net);
    for (host, n, trusted) in [("h1", 1, false), ("h1", 3, false), ("h2", 2, false), ("h2", 4, true)] {
        let vm = c.fabric.numbered_vm(n);
        c.start(host, n, &vm, trusted);
    }

    let is_host = |n: &str| c.fabric.is_host(n);
    let expected = |a: &str, b: &str| {
        let vm = |n: &str| is_vm(n) && !is_host(n);
        !(vm(a) && vm(b)) || a == "vm4" || b == "vm4"
    };
    c.fabric.matrix().expect("probing").assert_expected(&expected);

    let peers = |host: &str| c.direct_part(host, "BRIDGE_PEERS_");
    let mut h1 = vec![
        format!("eb filter FORWARD 0 -i {UPLINK} -j BRIDGE_PEERS_{NET}"),
        format!("eb filter BRIDGE_PEERS_{NET} 0 -s 56:6f:4c:ab:00:04 -j RETURN"),
        format!("eb filter BRIDGE_PEERS_{NET} 1 -s 56:6f:4c:ab:00:00/ff:ff:ff:ff:ff:00 -j DROP"),
    ];
    h1.sort();
    assert_eq!(peers("h1"), h1);
    let mut h2 = vec![
        format!("eb filter FORWARD 0 -i {UPLINK} -j BRIDGE_PEERS_{NET}"),
        format!("eb filter BRIDGE_PEERS_{NET} 0 -o vnet4 -j RETURN"),
        format!("eb filter BRIDGE_PEERS_{NET} 1 -s 56:6f:4c:ab:00:00/ff:ff:ff:ff:ff:00 -j DROP"),
    ];
    h2.sort();
    assert_eq!(peers("h2"), h2);
    for host in ["h1", "h2"] {
        assert!(
            !c.has_nft_table(host),
            "{host}: the nft table is not used with firewalld"
        );
    }

    // status counts what the DROP rules took (the matrix sent VM2@h2 -> VM1@h1).
    let v: Value = serde_json::from_str(&ok(c.cli("h1", &["status", "--json"]))).unwrap();
    assert!(v["cross_host"][NET]["drops"]["packets"].as_u64().unwrap() > 0, "{v}");
    // verify: quiet when converged; a DROP rule removed behind our back is reported (exit
    // 1) and a reconcile puts it back.
    ok(c.cli("h1", &["verify"]));
    let chain = format!("BRIDGE_PEERS_{NET}");
    let drop_rule = ["1", "-s", "56:6f:4c:ab:00:00/ff:ff:ff:ff:ff:00", "-j", "DROP"];
    let mut remove = vec!["--direct", "--remove-rule", "eb", "filter", &chain];
    remove.extend(drop_rule);
    ok(c.fws[0].cmd(&remove));
    let out = c.cli("h1", &["verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "drift: cross-host (firewalld direct rules): runtime needs addRule eb filter {chain} {}",
            drop_rule.join(" ")
        )),
        "{text}"
    );
    ok(c.cli("h1", &["reconcile"]));
    ok(c.cli("h1", &["verify"]));

    // Removal on h1, release-all on h2: no rule of ours left, runtime or permanent.
    c.setup("h1", NetSpec::removed());
    let mut e = c.env("h2");
    e.retain(|(k, _)| k != "BRIDGE_ISOLATION_BACKEND");
    let out = Command::new(lab::IP)
        .args(["netns", "exec", c.fabric.host_ns("h2").unwrap()])
        .arg(env!("CARGO_BIN_EXE_bridge-isolation"))
        .arg("release-all")
        .envs(e)
        .output()
        .unwrap();
    ok(out);
    for fw in &c.fws {
        let empty: [Vec<String>; 4] = Default::default();
        assert_eq!(fw.direct(), empty);
    }
    c.fabric.matrix().expect("probing").assert_expected(&|_, _| true);
}

/// `bridge_isolation_uplink_macs` (issue 13, item 7) with the firewalld backend: chain
/// `BRIDGE_UPLINK_isonet` (runtime and permanent) lets only the gateway from the uplink
/// reach untrusted VM1@h1, on every protocol; VM2@h2 with a custom MAC outside the peer
/// ranges, and h2 itself, are dropped; trusted VM3@h1 still gets their frames; lifting the
/// property removes the chain and keeps the peer chain; untagging removes everything.
#[test]
fn firewalld_uplink_macs_admit_only_the_listed_sources() {
    if !firewalld_tests_enabled("firewalld_uplink_macs_admit_only_the_listed_sources") {
        return;
    }
    let mut c = Cluster::new("xhfu");
    let gw = lab::format_mac(lab::GW_MAC);
    let peers = || {
        NetSpec::on_nic(UPLINK)
            .with_isolation("true")
            .with_custom("bridge_isolation_peer_macs", "56:6f:4c:ab:00:00/40")
    };
    c.setup("h1", peers().with_custom("bridge_isolation_uplink_macs", &gw));
    c.setup("h2", NetSpec::on_nic(UPLINK).with_isolation("true"));
    let custom = lab::VmSpec::new(
        "vm2",
        "vnet2",
        [0x02, 0xc0, 0xff, 0xee, 0x00, 0x02],
        "10.77.0.12".parse().unwrap(),
    );
    c.start("h2", 2, &custom, false);
    for (n, trusted) in [(1, false), (3, true)] {
        let vm = c.fabric.numbered_vm(n);
        c.start("h1", n, &vm, trusted);
    }
    // As tests/crosshost.rs: nothing from the uplink side but the gateway reaches VM1 (a raw
    // frame goes one way, a ping or ARP needs the answer too).
    let dropped = |src: &str, dst: &str| dst == "vm1" && matches!(src, "vm2" | "h2");
    let expected = |a: &str, b: &str, p: lab::Protocol| !dropped(a, b) && (p == lab::Protocol::Raw || !dropped(b, a));
    c.fabric.matrix().expect("probing").assert_each(&expected);

    let mut want = vec![
        format!("eb filter FORWARD 0 -i {UPLINK} -j BRIDGE_UPLINK_{NET}"),
        format!("eb filter BRIDGE_UPLINK_{NET} 0 -o vnet3 -j RETURN"),
        format!("eb filter BRIDGE_UPLINK_{NET} 0 -s {gw} -j RETURN"),
        format!("eb filter BRIDGE_UPLINK_{NET} 1 -j DROP"),
    ];
    want.sort();
    assert_eq!(c.direct_part("h1", "BRIDGE_UPLINK_"), want);
    assert!(!c.has_nft_table("h1"));
    let v: Value = serde_json::from_str(&ok(c.cli("h1", &["status", "--json"]))).unwrap();
    let status = &v["cross_host"][NET];
    assert_eq!(status["uplink_macs"], json!([format!("{gw}-{gw}")]));
    assert!(status["uplink_drops"]["packets"].as_u64().unwrap() > 0, "{v}");
    ok(c.cli("h1", &["verify"]));

    // Lifted: the allow-list chain goes, the peer chain stays; VM2 reaches VM1 again.
    c.setup("h1", peers());
    assert!(!c.direct_part("h1", "BRIDGE_PEERS_").is_empty());
    let [runtime, permanent, ..] = c.fws[0].direct();
    assert!(
        !runtime.iter().chain(&permanent).any(|l| l.contains("BRIDGE_UPLINK_")),
        "{runtime:?}"
    );
    c.fabric.matrix().expect("probing").assert_expected(&|_, _| true);
    // Untagged: nothing of ours left.
    c.setup("h1", NetSpec::on_nic(UPLINK));
    assert_eq!(c.fws[0].direct(), <[Vec<String>; 4]>::default());
}
