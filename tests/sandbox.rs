//! The units' sandbox (docs/security.md, "The units' sandbox") does not break the product:
//! the package is installed by `packaging/install.sh` into a systemd machine
//! ([`lab::container`]: the machine's OS tree booted by systemd-nspawn with systemd 252 as
//! its PID 1) that runs in a netns lab's host namespace, and its own systemd starts the
//! shipped units with the shipped drop-ins, every directive applied as on a host. Per backend:
//! `bridge-isolation-reconcile.service` adopts the network VDSM's running config tags
//! (`/var/lib/vdsm/staging/netconf`, owned as VDSM's package owns it) and isolates its VM
//! ports, `bridge-isolation-watch.service` isolates a VM plugged by hand, and the probes
//! judge it. The watcher is checked to run sandboxed (bounding set, no new privileges,
//! seccomp, `/` read-only). Negative controls: without CAP_NET_ADMIN, or without its state
//! directory writable, the unit fails and the VMs reach each other; the iptables backend
//! fails under the default sandbox and works with `sandbox-iptables.conf` linked in, as the
//! docs say. Root only; skipped (or failed under `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`)
//! without root or without systemd-nspawn. The last test runs `systemd-analyze verify` on the
//! installed units (packaging/verify-units.sh) and compares their exposure with the docs.

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bridge_isolation_lab::container::{self, Container};
use bridge_isolation_lab::{self as lab, NetSpec};
use common::backend::Backend;
use common::{install_package, wait_until, Fixture, NET, UPLINK};

/// The boot-time reconcile.
const RECONCILE: &str = "bridge-isolation-reconcile.service";
/// The resident watcher.
const WATCH: &str = "bridge-isolation-watch.service";
/// The reconcile after nftables.service loads its ruleset.
const NFTABLES: &str = "bridge-isolation-nftables.service";
/// The installed config file, under the machine's root.
const CONFIG: &str = "etc/vdsm-hook-bridge-isolation/bridge-isolation.conf";
/// Where docs/security.md says to link the iptables backend's drop-in, and what.
const IPTABLES_DROPIN: (&str, &str) = (
    "etc/systemd/system/bridge-isolation-.service.d/60-iptables.conf",
    "/usr/share/vdsm-hook-bridge-isolation/sandbox-iptables.conf",
);
/// A test's own drop-in for the reconcile unit (the negative controls).
const TEST_DROPIN: &str = "etc/systemd/system/bridge-isolation-reconcile.service.d/99-test.conf";
/// The uid and gid of user vdsm and group kvm on EL, owners of `/var/lib/vdsm`.
const VDSM_UID: u32 = 36;
/// How long a repair by the watcher may take (a busy 2-core machine gets room).
const REPAIR: Duration = Duration::from_secs(20);
/// libcap's `capsh`, which names the bits of a capability set.
const CAPSH: &str = "/usr/sbin/capsh";
/// systemd's `systemd-analyze`.
const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";
/// The columns of docs/security.md's exposure table that packaging/verify-units.sh measures.
const EXPOSURE_COLUMNS: [&str; 2] = ["as shipped", "with sandbox-iptables.conf"];

/// A lab host running the installed package in a systemd machine.
struct Host {
    // Declared first: the machine stops before the lab's namespaces go.
    machine: Container,
    fx: Fixture,
}

/// Whether test `test` may run here (root, the lab's programs, systemd-nspawn, capsh).
fn enabled(test: &str) -> bool {
    let obstacle = lab::root_test_obstacle()
        .or_else(container::obstacle)
        .or_else(|| (!Path::new(CAPSH).exists()).then(|| format!("missing {CAPSH} (package libcap2-bin)")));
    lab::tests_enabled_unless(test, obstacle)
}

/// A lab of `vms` VMs with nothing isolated, and a machine in its host namespace with the
/// package installed, `backend = BACKEND` configured and VDSM's running config tagging the
/// lab's network (what the units adopt).
fn host(tag: &str, vms: u8, backend: Backend) -> Host {
    let fx = Fixture::without_private_firewalld(tag, vms, backend);
    let machine = Container::boot(fx.lab.host_ns(), fx.lab.host_ns(), |root| {
        install_package(root);
        set_backend(root, backend);
        vdsm_config(root);
        if backend == Backend::Firewalld {
            // The lab's firewalld settings (tests/common/backend.rs), for the machine's own.
            std::fs::write(
                root.join("etc/firewalld/firewalld.conf"),
                "DefaultZone=public\nCleanupOnExit=yes\nFirewallBackend=nftables\nFlushAllOnReload=yes\n",
            )?;
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("booting the machine: {e:#}"));
    Host { machine, fx }
}

/// Sets `backend = NAME` in the installed config file.
fn set_backend(root: &Path, backend: Backend) {
    let path = root.join(CONFIG);
    let text = std::fs::read_to_string(&path).expect("reading the installed config");
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("backend =") {
                format!("backend = {backend}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_ne!(lines.join("\n"), text.trim_end(), "no `backend =` line in {text}");
    std::fs::write(&path, lines.join("\n") + "\n").expect("writing the config");
}

/// VDSM's running config tagging the lab's network, owned as on an oVirt host: the
/// directory by vdsm:kvm (0755), the files by root (supervdsm writes them).
fn vdsm_config(root: &Path) {
    let vdsm = root.join("var/lib/vdsm");
    let nets = vdsm.join("staging/netconf/nets");
    std::fs::create_dir_all(&nets).unwrap();
    let attrs = NetSpec::on_nic(UPLINK).with_isolation("true").attrs();
    std::fs::write(nets.join(NET), attrs.to_string()).unwrap();
    std::os::unix::fs::chown(&vdsm, Some(VDSM_UID), Some(VDSM_UID)).unwrap();
    std::fs::set_permissions(&vdsm, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Host {
    /// `systemctl VERB UNIT`: `Ok` when it exits 0, else the unit's journal.
    fn systemctl(&self, verb: &str, unit: &str) -> Result<(), String> {
        let out = self.machine.systemctl(&[verb, unit]).expect("running systemctl");
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "systemctl {verb} {unit}: {}\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            self.machine.journal(unit)
        ))
    }

    /// `systemctl restart UNIT`, asserting that it succeeds.
    #[track_caller]
    fn run(&self, unit: &str) {
        if let Err(e) = self.systemctl("restart", unit) {
            panic!("{e}");
        }
    }

    /// `systemctl restart UNIT`, asserting that it fails; returns the unit's journal.
    #[track_caller]
    fn run_failing(&self, unit: &str) -> String {
        match self.systemctl("restart", unit) {
            Ok(()) => panic!("{unit} succeeded:\n{}", self.machine.journal(unit)),
            Err(journal) => journal,
        }
    }

    /// Writes a drop-in (`path` under the root, `text`) or removes it (`None`), then
    /// `systemctl daemon-reload`.
    fn drop_in(&self, path: &str, text: Option<&str>) {
        let file = self.machine.root().join(path);
        match text {
            Some(t) => {
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, t).unwrap();
            }
            None => std::fs::remove_file(&file).unwrap(),
        }
        self.machine.exec_ok(container::SYSTEMCTL, &["daemon-reload"]).unwrap();
    }

    /// Links the iptables backend's drop-in in, as docs/security.md says.
    fn link_iptables_dropin(&self) {
        let (link, target) = IPTABLES_DROPIN;
        let file = self.machine.root().join(link);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, &file).unwrap();
        self.machine.exec_ok(container::SYSTEMCTL, &["daemon-reload"]).unwrap();
    }

    /// Starts the watcher and waits until it watches the links.
    fn start_watcher(&self) {
        self.run(WATCH);
        wait_until("the watcher watching", REPAIR, || {
            self.machine.journal(WATCH).contains("watching the links")
        });
    }

    /// Asserts that the watcher runs as its unit says: bounding set, no new privileges,
    /// a seccomp filter, `/` read-only and the state directory writable.
    fn assert_watcher_sandboxed(&self) {
        let pid = self.show(WATCH, "MainPID");
        assert_ne!(pid, "0", "the watcher is not running:\n{}", self.machine.journal(WATCH));
        let proc_file = |name: &str| {
            self.machine
                .exec_ok("/usr/bin/cat", &[&format!("/proc/{pid}/{name}")])
                .unwrap()
        };
        let status = proc_file("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .unwrap_or_else(|| panic!("no {name} in {status}"))
                .trim()
                .to_string()
        };
        let unit_caps: BTreeSet<String> = self
            .show(WATCH, "CapabilityBoundingSet")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert!(!unit_caps.is_empty());
        assert_eq!(decode_caps(&field("CapBnd")), unit_caps, "the watcher's bounding set");
        assert_eq!(field("NoNewPrivs"), "1");
        assert_eq!(field("Seccomp"), "2", "a seccomp filter");
        let mounts = proc_file("mountinfo");
        // The topmost mount on `point` (the last listed) decides.
        let options = |point: &str| {
            mounts
                .lines()
                .rev()
                .find(|l| l.split_whitespace().nth(4) == Some(point))
                .and_then(|l| l.split_whitespace().nth(5))
                .unwrap_or_else(|| panic!("{point} is no mount point of the watcher:\n{mounts}"))
                .split(',')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(options("/"), "ro", "ProtectSystem=strict: / read-only");
        assert_eq!(
            options("/var/lib/vdsm-hook-bridge-isolation"),
            "rw",
            "the state directory"
        );
    }

    /// `systemctl show -p PROPERTY --value UNIT`.
    fn show(&self, unit: &str, property: &str) -> String {
        self.machine
            .exec_ok(container::SYSTEMCTL, &["show", "-p", property, "--value", unit])
            .unwrap()
            .trim()
            .to_string()
    }

    /// Whether `bridge-isolation verify` in the machine (root, outside any unit) finds
    /// nothing to report.
    fn verified(&self) -> bool {
        self.machine
            .exec("/usr/sbin/bridge-isolation", &["verify"])
            .is_ok_and(|o| o.status.success())
    }

    /// What every backend must do under the sandbox: the reconcile unit isolates the VMs
    /// (adopting VDSM's tag), the watcher runs sandboxed and isolates VM 3, plugged by hand.
    fn isolates_with_both_units(&mut self) {
        self.run(RECONCILE);
        self.fx.assert_isolation(&[]);
        self.start_watcher();
        self.assert_watcher_sandboxed();
        self.plug_and_wait(3);
        self.fx.assert_isolation(&[]);
    }

    /// Plugs VM `n` by hand (no hook) and waits until the watcher has isolated it.
    fn plug_and_wait(&mut self, n: u8) {
        let vm = self.fx.vm(n);
        self.fx.lab.add_vm(&vm).unwrap();
        let took = wait_until(&format!("{} isolated by the watcher", vm.tap), REPAIR, || {
            self.machine
                .journal(WATCH)
                .contains(&format!("port {} isolated", vm.tap))
                && self.verified()
        });
        eprintln!(
            "{}: isolated by the sandboxed watcher {took:?} after it was plugged",
            vm.tap
        );
    }
}

/// The names of the capabilities in hex mask `mask`, as systemd names them.
fn decode_caps(mask: &str) -> BTreeSet<String> {
    let out = Command::new(CAPSH).arg(format!("--decode={mask}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let names = text.trim().split_once('=').map_or("", |(_, names)| names);
    names.split(',').filter(|n| !n.is_empty()).map(str::to_string).collect()
}

#[test]
fn port_isolation_under_the_units_sandbox() {
    if !enabled("port_isolation_under_the_units_sandbox") {
        return;
    }
    let mut host = host("sbxpi", 2, Backend::PortIsolation);
    host.isolates_with_both_units();
    host.fx.assert_isolated_ports(&["vnet1", "vnet2", "vnet3"]);
}

#[test]
fn nftables_under_the_units_sandbox() {
    if !enabled("nftables_under_the_units_sandbox") {
        return;
    }
    let mut host = host("sbxnft", 2, Backend::Nftables);
    host.isolates_with_both_units();
    // nftables.service (re)loading its ruleset: the watcher's nf_tables notifications.
    let flushed = Command::new(lab::IP)
        .args(["netns", "exec", host.fx.lab.host_ns(), lab::NFT, "flush", "ruleset"])
        .status()
        .unwrap();
    assert!(flushed.success());
    wait_until("the table back", REPAIR, || host.verified());
    host.fx.assert_isolation(&[]);
    host.run(NFTABLES);
    assert!(host.verified());
}

#[test]
fn firewalld_under_the_units_sandbox() {
    if !enabled("firewalld_under_the_units_sandbox")
        || !common::backend::firewalld_tests_enabled("firewalld_under_the_units_sandbox")
    {
        return;
    }
    let mut host = host("sbxfw", 2, Backend::Firewalld);
    host.run("firewalld.service");
    host.isolates_with_both_units();
    // Its firewalld listener: the system bus (AF_UNIX) from inside the sandbox.
    wait_until("the watcher on the system bus", REPAIR, || {
        host.machine
            .journal(WATCH)
            .contains("watching firewalld on the system bus")
    });
}

#[test]
fn iptables_needs_its_dropin() {
    if !enabled("iptables_needs_its_dropin") {
        return;
    }
    let mut host = host("sbxipt", 2, Backend::Iptables);
    // Under the sandbox every backend shares, br_netfilter is out of reach (its sysctls are
    // hidden and read-only, modprobe impossible): the run fails, and fails closed.
    let journal = host.run_failing(RECONCILE);
    assert!(journal.contains("br_netfilter"), "{journal}");
    assert_eq!(host.fx.br_netfilter(), [false, false]);
    host.link_iptables_dropin();
    host.isolates_with_both_units();
    assert_eq!(host.fx.br_netfilter(), [true, true]);
    let persisted = host
        .machine
        .root()
        .join("etc/sysctl.d/99-vdsm-hook-bridge-isolation.conf");
    assert!(persisted.exists(), "{} missing", persisted.display());
}

#[test]
fn negative_controls_the_sandbox_can_break_the_unit() {
    if !enabled("negative_controls_the_sandbox_can_break_the_unit") {
        return;
    }
    let host = host("sbxneg", 2, Backend::PortIsolation);
    // Without its state directory writable (ProtectSystem=strict alone) it cannot even take
    // its lock: nothing changes.
    host.drop_in(TEST_DROPIN, Some("[Service]\nStateDirectory=\nReadWritePaths=\n"));
    let journal = host.run_failing(RECONCILE);
    assert!(journal.contains("Read-only file system"), "{journal}");
    host.fx.assert_isolated_ports(&[]);
    host.fx.assert_all_pass();
    // Without CAP_NET_ADMIN no port flag can be set, nor a port disabled: nothing changes.
    host.drop_in(TEST_DROPIN, Some("[Service]\nCapabilityBoundingSet=~CAP_NET_ADMIN\n"));
    let journal = host.run_failing(RECONCILE);
    assert!(journal.contains("Operation not permitted"), "{journal}");
    host.fx.assert_isolated_ports(&[]);
    host.fx.assert_all_pass();
    // As shipped, the same machine isolates.
    host.drop_in(TEST_DROPIN, None);
    host.run(RECONCILE);
    host.fx.assert_isolation(&[]);
}

/// The units with their drop-ins pass `systemd-analyze verify` (packaging/verify-units.sh,
/// which check-rpm.sh runs on the RPM's payload too), and their exposure
/// (`systemd-analyze security`) is what docs/security.md records. No root needed.
#[test]
fn units_verify_and_their_exposure_is_documented() {
    let obstacle =
        (!Path::new(SYSTEMD_ANALYZE).exists()).then(|| format!("missing {SYSTEMD_ANALYZE} (package systemd)"));
    if !lab::tests_enabled_unless("units_verify_and_their_exposure_is_documented", obstacle) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    install_package(dir.path());
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/verify-units.sh"))
        .arg(dir.path())
        .output()
        .expect("running packaging/verify-units.sh");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verify-units.sh ({}):\n{report}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{report}");
    // "exposure, as shipped: bridge-isolation-watch.service: 1.4 OK 🙂" -> (column, unit, "1.4 OK")
    let measured: BTreeSet<(String, String, String)> = report
        .lines()
        .filter_map(|l| l.strip_prefix("exposure, "))
        .map(|l| {
            let (column, rest) = l.split_once(": ").unwrap();
            let (unit, level) = rest.split_once(": ").unwrap();
            let level: Vec<&str> = level.split_whitespace().take(2).collect();
            (column.to_string(), unit.to_string(), level.join(" "))
        })
        .collect();
    assert_eq!(measured.len(), 2 * 3, "two columns of three units:\n{report}");
    let docs = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/security.md")).unwrap();
    // "| `bridge-isolation-watch.service` | 9.0 UNSAFE | 1.4 OK | 2.2 OK |"
    let documented: BTreeSet<(String, String, String)> = docs
        .lines()
        .filter(|l| l.starts_with("| `bridge-isolation-"))
        .flat_map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let unit = cells[0].trim_matches('`').to_string();
            EXPOSURE_COLUMNS
                .iter()
                .zip(&cells[2..])
                .map(|(column, level)| (column.to_string(), unit.clone(), level.to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        documented, measured,
        "docs/security.md's exposure table (columns {EXPOSURE_COLUMNS:?}) differs from systemd-analyze security"
    );
}
