//! The backends as the tests see them: which one a [`super::Fixture`] asks for, a private
//! firewalld on a private D-Bus system bus, and the readers of what each backend writes to
//! the kernel (nftables tables, iptables-save listings, firewalld direct rules).

#![allow(dead_code)] // not every test binary uses every helper

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bridge_isolation_lab::{self as lab, is_vm, Matrix, Protocol};
use serde_json::{json, Value};
use tempfile::TempDir;

use super::NET;

/// The backend a fixture's hooks and CLI are told to use (`BRIDGE_ISOLATION_BACKEND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The kernel's bridge port `isolated` flag (the default).
    PortIsolation,
    /// A table of our own in the nftables `bridge` family.
    Nftables,
    /// br_netfilter with iptables/ip6tables physdev rules.
    Iptables,
    /// firewalld `eb` direct rules, runtime and permanent.
    Firewalld,
}

impl Backend {
    /// The name in the environment, the config file and the state file.
    pub fn name(self) -> &'static str {
        match self {
            Backend::PortIsolation => "port-isolation",
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
            Backend::Firewalld => "firewalld",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Asserts that `out` succeeded and returns its stdout.
#[track_caller]
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A set of port names.
pub fn names(ports: &[&str]) -> BTreeSet<String> {
    ports.iter().map(|p| p.to_string()).collect()
}

/// What the iptables backend promises: between two VMs (neither in `trusted`) IPv4 and
/// IPv6 are blocked while ARP and raw frames pass (br_netfilter hands only IP to iptables);
/// every other probe passes.
pub fn assert_ip_blocked_between_vms(m: &Matrix, trusted: &[&str]) {
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

// --- nftables -------------------------------------------------------------------------

/// `nft -j list table bridge TABLE` run by `exec` (metainfo left out), or `None` when the
/// table does not exist (any other failure panics).
pub fn nft_table_with(exec: impl FnOnce(&[&str]) -> Output, table: &str) -> Option<Value> {
    let out = exec(&[lab::NFT, "-j", "list", "table", "bridge", table]);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No such file or directory"), "nft list failed: {err}");
        return None;
    }
    let mut v: Value = serde_json::from_slice(&out.stdout).expect("nft -j prints JSON");
    v["nftables"]
        .as_array_mut()
        .expect("an nftables array")
        .retain(|i| i.get("metainfo").is_none());
    Some(v)
}

/// A listing with every counter zeroed: what must not change when nothing changes.
pub fn without_counters(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(o) => {
                if let Some(c) = o.get_mut("counter") {
                    *c = json!({"packets": 0, "bytes": 0});
                }
                o.values_mut().for_each(walk);
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// Objects of `kind` (`set`, `map`, `rule`, `chain`) in an `nft -j` listing.
pub fn nft_objects<'a>(v: &'a Value, kind: &str) -> Vec<&'a Value> {
    v["nftables"]
        .as_array()
        .expect("an nftables array")
        .iter()
        .filter_map(|i| i.get(kind))
        .collect()
}

/// The elements of set or map `name` in a listing (panics when it is missing).
fn nft_elements<'a>(v: &'a Value, kind: &str, name: &str) -> Vec<&'a Value> {
    let object = nft_objects(v, kind)
        .into_iter()
        .find(|s| s["name"] == json!(name))
        .unwrap_or_else(|| panic!("no {kind} {name} in {v:#}"));
    object
        .get("elem")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// The members of the lab bridge's set in our table's listing, as nft names them.
pub fn nft_members(v: &Value) -> BTreeSet<String> {
    use bridge_isolation::enforce::nftables::set_name;
    nft_elements(v, "set", &set_name(NET))
        .into_iter()
        .map(|e| e.as_str().expect("element name").to_string())
        .collect()
}

/// The port map's elements in our table's listing: (port, chain its element goes to).
pub fn nft_map_entries(v: &Value) -> BTreeSet<(String, String)> {
    use bridge_isolation::enforce::nftables::MAP;
    nft_elements(v, "map", MAP)
        .into_iter()
        .map(|e| {
            let port = e[0].as_str().expect("element name").to_string();
            let chain = e[1]["goto"]["target"].as_str().expect("a goto").to_string();
            (port, chain)
        })
        .collect()
}

// --- iptables ---------------------------------------------------------------------------

/// `iptables-save` and `ip6tables-save`.
pub const XTABLES_SAVE: [&str; 2] = ["/usr/sbin/iptables-save", "/usr/sbin/ip6tables-save"];
/// The sysctl program.
pub const SYSCTL: &str = "/usr/sbin/sysctl";

/// The layout of the iptables backend for VM ports `ports` of the lab bridge, as
/// iptables-save lists it (the lines naming our chains).
pub fn iptables_layout(ports: &[&str]) -> Vec<String> {
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

/// The machine's own (initial namespace) `bridge-nf-call-*` sysctls, which no test may change.
pub fn own_sysctls_of_machine() -> Vec<Option<String>> {
    use bridge_isolation::enforce::iptables::SYSCTLS;
    SYSCTLS
        .iter()
        .map(|s| std::fs::read_to_string(format!("/proc/sys/net/bridge/{s}")).ok())
        .collect()
}

// --- firewalld --------------------------------------------------------------------------

/// The firewalld daemon.
pub const FIREWALLD: &str = "/usr/sbin/firewalld";
/// Its command-line client.
pub const FIREWALL_CMD: &str = "/usr/bin/firewall-cmd";
/// The D-Bus daemon that runs the private system bus.
pub const DBUS_DAEMON: &str = "/usr/bin/dbus-daemon";

/// Whether firewalld test `test` may run: root tests may (see `lab::root_tests_enabled`)
/// and the programs it needs are installed (CI installs them). When not, prints why and
/// returns false, or panics under `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`.
pub fn firewalld_tests_enabled(test: &str) -> bool {
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

/// Our direct rules (sorted as [`Firewalld::lines`] sorts them) for VM ports `ports` of
/// the lab bridge.
pub fn firewalld_rules(ports: &[&str]) -> Vec<String> {
    let mut lines = vec!["eb filter FORWARD 0 -j BRIDGE_ISOLATION".to_string()];
    for p in ports {
        lines.push(format!("eb filter BRIDGE_ISOLATION 0 -i {p} -j BRIDGE_ISO_{NET}"));
        lines.push(format!("eb filter BRIDGE_ISO_{NET} 0 -o {p} -j DROP"));
    }
    lines.sort();
    lines
}

/// Our direct chains.
pub fn firewalld_chains() -> Vec<String> {
    vec![
        "eb filter BRIDGE_ISOLATION".to_string(),
        format!("eb filter BRIDGE_ISO_{NET}"),
    ]
}

/// A private system bus and a firewalld on it (`--nofork --nopid --system-config DIR`)
/// inside a network namespace; the machine's `/etc/firewalld` and system bus are untouched.
/// Dropping it stops firewalld (cleaning up its rules), the bus, and the namespace when it
/// made one.
pub struct Firewalld {
    dir: TempDir,
    ns: String,
    own_ns: bool,
    bus: Child,
    daemon: Option<Child>,
}

impl Firewalld {
    /// Starts the bus and firewalld in namespace `ns` with `FirewallBackend=backend`
    /// (`nftables` or `iptables`), and waits until it runs.
    pub fn start(ns: &str, backend: &str) -> Firewalld {
        Firewalld::start_in(ns.to_string(), false, backend)
    }

    /// Like [`Firewalld::start`], in a namespace of its own named after `tag`.
    pub fn start_alone(tag: &str, backend: &str) -> Firewalld {
        let ns = format!("{}-fw", lab::unique_prefix(tag));
        let added = Command::new(lab::IP).args(["netns", "add", &ns]).status().unwrap();
        assert!(added.success(), "ip netns add {ns}");
        Firewalld::start_in(ns, true, backend)
    }

    fn start_in(ns: String, own_ns: bool, backend: &str) -> Firewalld {
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
        .expect("writing the bus configuration");
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
        let mut fw = Firewalld {
            dir,
            ns,
            own_ns,
            bus,
            daemon: None,
        };
        std::fs::create_dir(fw.etc()).expect("creating firewalld's configuration directory");
        fw.configure(backend);
        fw.start_daemon();
        fw
    }

    /// Writes `firewalld.conf` with `FirewallBackend=backend` (read at the next start).
    fn configure(&self, backend: &str) {
        std::fs::write(
            self.etc().join("firewalld.conf"),
            format!("DefaultZone=public\nCleanupOnExit=yes\nFirewallBackend={backend}\nFlushAllOnReload=yes\n"),
        )
        .expect("writing firewalld.conf");
    }

    /// The address of the private system bus (`DBUS_SYSTEM_BUS_ADDRESS`).
    pub fn address(&self) -> String {
        format!("unix:path={}", self.dir.path().join("bus").display())
    }

    /// `DBUS_SYSTEM_BUS_ADDRESS` for a process that should talk to this firewalld.
    pub fn env(&self) -> (String, String) {
        ("DBUS_SYSTEM_BUS_ADDRESS".to_string(), self.address())
    }

    /// Its `--system-config` directory (`firewalld.conf`, `direct.xml`).
    pub fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    /// Starts the daemon (after [`Firewalld::stop`]) and waits until it runs.
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "firewalld already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("firewalld.log"))
            .expect("opening firewalld's log");
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
            .env("PATH", lab::HOOK_PATH)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.address())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log file"))
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
    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new(FIREWALL_CMD)
            .args(args)
            .env_clear()
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.address())
            .stdin(Stdio::null())
            .output()
            .expect("running firewall-cmd")
    }

    /// Lines of `firewall-cmd ARGS` (sorted), asserting success.
    pub fn lines(&self, args: &[&str]) -> Vec<String> {
        let mut lines: Vec<String> = ok(self.cmd(args)).lines().map(str::to_string).collect();
        lines.sort();
        lines
    }

    /// Direct rules and chains: runtime rules, permanent rules, runtime chains, permanent
    /// chains.
    pub fn direct(&self) -> [Vec<String>; 4] {
        [
            self.lines(&["--direct", "--get-all-rules"]),
            self.lines(&["--permanent", "--direct", "--get-all-rules"]),
            self.lines(&["--direct", "--get-all-chains"]),
            self.lines(&["--permanent", "--direct", "--get-all-chains"]),
        ]
    }

    /// Stops firewalld (SIGTERM: it cleans up its rules, as `systemctl stop` would).
    pub fn stop(&mut self) {
        let Some(mut child) = self.daemon.take() else {
            return;
        };
        // SAFETY: plain kill(2) on the pid of a child we started and have not reaped
        // (`ip netns exec` execs firewalld: the child is firewalld itself).
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
    pub fn restart(&mut self) {
        self.stop();
        self.start_daemon();
    }

    /// Restarts firewalld with `FirewallBackend=backend`.
    pub fn restart_with_backend(&mut self, backend: &str) {
        self.configure(backend);
        self.restart();
    }
}

impl Drop for Firewalld {
    fn drop(&mut self) {
        self.stop();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
        if self.own_ns {
            let _ = Command::new(lab::IP).args(["netns", "del", &self.ns]).status();
        }
    }
}
