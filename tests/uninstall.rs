//! Lifting isolation on a real kernel: `bridge-isolation release-all` (what the RPM's
//! `%preun` runs on erase) and `bridge-isolation watch-firewalld` (what
//! bridge-isolation-firewalld.service runs), each in a netns lab (docs/design.md §7)
//! with its own state directory, driven through the hooks exactly as VDSM runs them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bridge_isolation::enforce::nftables::GROUP;
use bridge_isolation_lab::{self as lab, is_vm, Lab, LabSpec, NetSpec, NicSpec, Payload};

const CLI: &str = env!("CARGO_BIN_EXE_bridge-isolation");

/// The hook tree `packaging/install.sh` makes, in `dir`.
fn hook_tree(dir: &Path) -> PathBuf {
    let bindir = Path::new(CLI).parent().unwrap();
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/install.sh"))
        .arg("--destdir")
        .arg(dir)
        .arg("--bindir")
        .arg(bindir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("usr/libexec/vdsm/hooks")
}

/// A lab whose network is isolated through the hooks, VM 3's vNIC trusted.
struct Isolated {
    lab: Lab,
    state: PathBuf,
    backend: &'static str,
    _scratch: tempfile::TempDir,
}

impl Isolated {
    fn new(tag: &str, backend: &'static str) -> Isolated {
        let scratch = tempfile::tempdir().unwrap();
        let hooks = hook_tree(&scratch.path().join("root"));
        let state = scratch.path().join("state");
        let lab = Lab::create(&LabSpec::new(&lab::unique_prefix(tag)).with_vms(3)).unwrap();
        let env = vec![
            ("BRIDGE_ISOLATION_STATE_DIR".to_string(), state.display().to_string()),
            ("BRIDGE_ISOLATION_BACKEND".to_string(), backend.to_string()),
        ];
        let net = lab.spec().bridge.clone();
        let json = lab::setup_networks_json(&[(&net, NetSpec::on_nic(&lab.spec().uplink).with_isolation("true"))]);
        for point in ["before_network_setup", "after_network_setup"] {
            let run = lab::run_hook_point(lab.host_ns(), &hooks, point, Payload::Json(json.clone()), &env).unwrap();
            assert!(!run.failed, "{point}: {}", run.stderr);
        }
        // VM 3 starts with a trusted vNIC: its port must stay open.
        let vm3 = lab.vm("vm3").unwrap().clone();
        let nic = NicSpec {
            trusted: true,
            ..NicSpec::of_vm(&vm3, &net)
        };
        let xml = lab::domain_xml("vm3", "4d3a1f52-8a0b-4c8e-9a8f-2f7b3d1c0e33", &[nic]);
        let run = lab::run_hook_point(lab.host_ns(), &hooks, "after_vm_start", Payload::DomXml(xml), &env).unwrap();
        assert!(!run.failed, "after_vm_start: {}", run.stderr);
        let lab_ = Isolated {
            lab,
            state,
            backend,
            _scratch: scratch,
        };
        if backend == "port-isolation" {
            assert_eq!(
                lab_.flags(),
                [("eth1", false), ("vnet1", true), ("vnet2", true), ("vnet3", false)]
            );
        }
        lab_
    }

    /// The isolation flag of every port of the bridge.
    fn flags(&self) -> Vec<(&'static str, bool)> {
        ["eth1", "vnet1", "vnet2", "vnet3"]
            .into_iter()
            .map(|p| (p, self.lab.port_isolated(p).unwrap()))
            .collect()
    }

    /// The CLI inside the lab's host namespace, with this lab's state directory.
    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(lab::IP);
        cmd.args(["netns", "exec", self.lab.host_ns(), CLI])
            .args(args)
            .env("BRIDGE_ISOLATION_STATE_DIR", &self.state)
            .env("BRIDGE_ISOLATION_BACKEND", self.backend)
            .env_remove("BRIDGE_ISOLATION_CONFIG");
        cmd
    }

    fn state_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn release_all_lifts_every_flag_and_forgets_the_state() {
    if !lab::root_tests_enabled("release_all_lifts_every_flag_and_forgets_the_state") {
        return;
    }
    let iso = Isolated::new("rel", "port-isolation");
    let vms_apart = |a: &str, b: &str| !(is_vm(a) && is_vm(b)) || a == "vm3" || b == "vm3";
    iso.lab.matrix().unwrap().assert_expected(&vms_apart);
    assert_eq!(iso.state_files(), ["state.json", "state.lock"]);

    // Not root: refused, nothing changed.
    let (code, _, err) = output(
        Command::new(lab::IP)
            .args(["netns", "exec", iso.lab.host_ns(), lab::SETPRIV])
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                CLI,
                "release-all",
            ]),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bridge_isolation[cli] error: ") && err.contains("root"),
        "{err}"
    );
    assert_eq!(iso.flags()[1], ("vnet1", true));

    // Root: every flag cleared, the state forgotten, the host as it was.
    let (code, out, err) = output(&mut iso.cli(&["release-all"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("released 1 bridge(s) (port-isolation): 2 port(s) opened"),
        "{out}"
    );
    assert!(
        err.contains("port-isolation: bridge isonet port vnet1 opened (release-all)"),
        "{err}"
    );
    assert_eq!(
        iso.flags(),
        [("eth1", false), ("vnet1", false), ("vnet2", false), ("vnet3", false)]
    );
    assert!(iso.state_files().is_empty(), "{:?}", iso.state_files());
    iso.lab.matrix().unwrap().assert_expected(&|_, _| true);

    // Idempotent, and the CLI agrees nothing is managed any more.
    let (code, out, err) = output(&mut iso.cli(&["release-all"]));
    assert_eq!(
        (code, out.trim()),
        (0, "nothing recorded: no isolation to lift"),
        "{err}"
    );
    let (code, out, err) = output(&mut iso.cli(&["verify"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: 0 isolated bridge(s)"), "{out}");
    // A flag set by someone else afterwards (native port_isolation, an admin) is not ours.
    iso.lab.set_port_isolated("vnet2", true).unwrap();
    let (code, _, err) = output(&mut iso.cli(&["release-all"]));
    assert_eq!(code, 0, "{err}");
    assert!(iso.lab.port_isolated("vnet2").unwrap());
}

/// The nftables tables of the lab's host namespace.
fn nft_tables(iso: &Isolated) -> String {
    let out = iso.lab.exec_in_host(&[lab::NFT, "list", "tables"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn release_all_removes_the_nftables_table() {
    if !lab::root_tests_enabled("release_all_removes_the_nftables_table") {
        return;
    }
    let iso = Isolated::new("reln", "nftables");
    let vms_apart = |a: &str, b: &str| !(is_vm(a) && is_vm(b)) || a == "vm3" || b == "vm3";
    iso.lab.matrix().unwrap().assert_expected(&vms_apart);
    assert!(
        nft_tables(&iso).contains("table bridge bridge_isolation"),
        "{}",
        nft_tables(&iso)
    );
    assert!(iso.flags().iter().all(|(_, on)| !on), "nftables sets no port flag");
    let groups = || -> Vec<(String, u32)> {
        let ports = iso.lab.bridge_ports().unwrap();
        ports
            .into_iter()
            .map(|p| (p.clone(), iso.lab.port_group(&p).unwrap()))
            .collect()
    };
    let grouped: Vec<String> = groups()
        .into_iter()
        .filter(|(_, g)| *g == GROUP)
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        grouped,
        ["vnet1", "vnet2"],
        "the VM ports but the trusted one are in the gate's group"
    );

    let (code, out, err) = output(&mut iso.cli(&["release-all"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("released 1 bridge(s) (nftables"), "{out}");
    assert!(!nft_tables(&iso).contains("bridge_isolation"), "{}", nft_tables(&iso));
    assert!(groups().iter().all(|(_, g)| *g == 0), "{:?}", groups());
    assert!(iso.state_files().is_empty(), "{:?}", iso.state_files());
    iso.lab.matrix().unwrap().assert_expected(&|_, _| true);
}

/// A private system bus and a firewalld on it, in a namespace of their own.
struct Firewalld {
    dir: tempfile::TempDir,
    ns: String,
    bus: Child,
    daemon: Option<Child>,
}

impl Firewalld {
    fn address(dir: &Path) -> String {
        format!("unix:path={}", dir.join("bus").display())
    }

    fn start() -> Firewalld {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>{}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_type="*"/>
  </policy>
</busconfig>
"#,
                Firewalld::address(dir.path())
            ),
        )
        .unwrap();
        let bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (apt-get install dbus)");
        let ns = format!("{}-fw", lab::unique_prefix("fwd"));
        let ok = Command::new(lab::IP).args(["netns", "add", &ns]).status().unwrap();
        assert!(ok.success());
        let mut fw = Firewalld {
            dir,
            ns,
            bus,
            daemon: None,
        };
        wait_for("the private bus socket", Duration::from_secs(10), || {
            fw.dir.path().join("bus").exists()
        });
        fw.start_daemon();
        fw
    }

    fn env(&self) -> (&'static str, String) {
        ("DBUS_SYSTEM_BUS_ADDRESS", Firewalld::address(self.dir.path()))
    }

    fn start_daemon(&mut self) {
        std::fs::create_dir_all(self.dir.path().join("etc")).unwrap();
        let (k, v) = self.env();
        let child = Command::new(lab::IP)
            .args([
                "netns",
                "exec",
                &self.ns,
                "firewalld",
                "--nofork",
                "--nopid",
                "--log-target",
                "console",
            ])
            .arg("--system-config")
            .arg(self.dir.path().join("etc"))
            .env(k, v)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("firewalld (apt-get install firewalld)");
        self.daemon = Some(child);
        wait_for("firewalld to run", Duration::from_secs(60), || {
            self.firewall_cmd(&["--state"]).0 == 0
        });
    }

    fn stop_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // ip netns exec execs firewalld: the child is firewalld itself.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    fn firewall_cmd(&self, args: &[&str]) -> (i32, String, String) {
        let (k, v) = self.env();
        output(
            Command::new(lab::IP)
                .args(["netns", "exec", &self.ns, "firewall-cmd"])
                .args(args)
                .env(k, v),
        )
    }
}

impl Drop for Firewalld {
    fn drop(&mut self) {
        self.stop_daemon();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
        let _ = Command::new(lab::IP).args(["netns", "del", &self.ns]).status();
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The watcher, its stderr lines forwarded to a channel.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watcher {
    fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
                let l = l.clone();
                self.seen.retain(|s| *s != l);
                return l;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("watcher never logged {needle:?}; it logged: {:#?}", self.seen),
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_firewalld_reapplies_after_reload_and_restart() {
    if !lab::root_tests_enabled("watch_firewalld_reapplies_after_reload_and_restart") {
        return;
    }
    for tool in ["dbus-daemon", "firewalld", "firewall-cmd"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
            .unwrap_or(false);
        if !found {
            assert!(
                std::env::var_os(lab::REQUIRE_ROOT_TESTS).is_none(),
                "{tool} is missing (apt-get install dbus firewalld)"
            );
            eprintln!("skipping watch_firewalld_reapplies_after_reload_and_restart: {tool} is missing");
            return;
        }
    }
    let iso = Isolated::new("fwd", "port-isolation");
    let mut fw = Firewalld::start();

    let (k, v) = fw.env();
    let mut child = iso
        .cli(&["watch-firewalld"])
        .env(k, v)
        .env("BRIDGE_ISOLATION_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
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
    watcher.wait_line("watching firewalld on the system bus", Duration::from_secs(10));
    watcher.wait_line(
        "watcher started, firewalld is running: reconciled",
        Duration::from_secs(30),
    );

    // Someone clears a flag behind our back; firewall-cmd --reload makes us look again.
    iso.lab.set_port_isolated("vnet1", false).unwrap();
    let (code, _, err) = fw.firewall_cmd(&["--reload"]);
    assert_eq!(code, 0, "{err}");
    let line = watcher.wait_line("firewalld reloaded: reconciled", Duration::from_secs(30));
    assert!(line.contains("1 port(s) changed"), "{line}");
    assert!(iso.lab.port_isolated("vnet1").unwrap());

    // A reload with nothing to repair changes nothing.
    let (code, _, err) = fw.firewall_cmd(&["--reload"]);
    assert_eq!(code, 0, "{err}");
    let line = watcher.wait_line("firewalld reloaded: reconciled", Duration::from_secs(30));
    assert!(line.contains("0 port(s) changed"), "{line}");

    // firewalld stops and starts again: both are noticed, the second once it runs.
    iso.lab.set_port_isolated("vnet2", false).unwrap();
    fw.stop_daemon();
    watcher.wait_line("firewalld stopped: reconciled", Duration::from_secs(30));
    assert!(iso.lab.port_isolated("vnet2").unwrap());
    iso.lab.set_port_isolated("vnet2", false).unwrap();
    fw.start_daemon();
    let line = watcher.wait_line("firewalld started: reconciled", Duration::from_secs(60));
    assert!(line.contains("1 port(s) changed"), "{line}");
    assert!(iso.lab.port_isolated("vnet2").unwrap());
    assert_eq!(
        iso.flags(),
        [("eth1", false), ("vnet1", true), ("vnet2", true), ("vnet3", false)]
    );
    assert!(
        !watcher.seen.iter().any(|l| l.contains(" error: ")),
        "{:#?}",
        watcher.seen
    );
}
