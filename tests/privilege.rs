//! The unprivileged path on a real kernel: VM hooks run as user `vdsm`, as VDSM runs them,
//! reach the root helper only through `/usr/bin/sudo -n` and the shipped sudoers drop-in,
//! and nothing in their environment (PATH, state dir, backend) can steer them.
//!
//! This test installs the helper and the sudoers drop-in at their real paths and uses the
//! real state directory, so it refuses to run on a host where the package is installed,
//! and removes all it installed when it ends.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use bridge_isolation::lab::{self, is_vm, Lab, LabSpec, NicSpec, Payload, RunAs};
use bridge_isolation::paths;

#[allow(dead_code)]
mod common;

const SUDOERS: &str = "/etc/sudoers.d/50_vdsm_hook_bridge_isolation";

/// What the test put on the host, removed on drop (also when an assertion fails).
struct SystemInstall {
    created_dirs: Vec<PathBuf>,
}

impl SystemInstall {
    fn new() -> SystemInstall {
        let state_dir = Path::new(paths::STATE_DIR);
        let helper_dir = Path::new(paths::HELPER).parent().unwrap();
        for p in [state_dir, helper_dir, Path::new(SUDOERS)] {
            assert!(
                !p.exists(),
                "{} exists: vdsm-hook-bridge-isolation is installed on this host; run this test on a scratch machine",
                p.display()
            );
        }
        ensure_account();
        let mut install = SystemInstall {
            created_dirs: vec![helper_dir.to_path_buf(), state_dir.to_path_buf()],
        };
        std::fs::create_dir_all(helper_dir).unwrap();
        std::fs::copy(env!("CARGO_BIN_EXE_bridge-isolation-helper"), paths::HELPER).unwrap();
        std::fs::set_permissions(paths::HELPER, std::fs::Permissions::from_mode(0o755)).unwrap();
        install.enable_sudo();
        install.created_dirs.dedup();
        install
    }

    fn enable_sudo(&mut self) {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/sudoers");
        std::fs::copy(source, SUDOERS).unwrap();
        std::fs::set_permissions(SUDOERS, std::fs::Permissions::from_mode(0o440)).unwrap();
        run_ok(Command::new("/usr/sbin/visudo").args(["-cf", SUDOERS]));
    }

    fn disable_sudo(&mut self) {
        std::fs::remove_file(SUDOERS).unwrap();
    }
}

impl Drop for SystemInstall {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(SUDOERS);
        for d in &self.created_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Group kvm and user vdsm, as the vdsm package creates them.
fn ensure_account() {
    if RunAs::lookup("vdsm").is_ok() {
        return;
    }
    let group = Command::new("/usr/bin/getent").args(["group", "kvm"]).output().unwrap();
    if !group.status.success() {
        run_ok(Command::new("/usr/sbin/groupadd").args(["--system", "kvm"]));
    }
    run_ok(Command::new("/usr/sbin/useradd").args([
        "--system",
        "--gid",
        "kvm",
        "--no-create-home",
        "--shell",
        "/sbin/nologin",
        "vdsm",
    ]));
}

#[test]
fn vm_hooks_as_vdsm_repair_only_through_sudo_and_ignore_their_environment() {
    if !lab::root_tests_enabled("vm_hooks_as_vdsm_repair_only_through_sudo_and_ignore_their_environment") {
        return;
    }
    let mut install = SystemInstall::new();
    let scratch = tempfile::tempdir().unwrap();
    let hooks = common::hooks_dir();
    let vdsm = RunAs::lookup("vdsm").unwrap();

    // A hostile environment, as a VM custom property could make it: a PATH whose `sudo`
    // leaves a marker, a state dir that says nothing is isolated, another backend.
    let evil = scratch.path().join("evil");
    std::fs::create_dir_all(evil.join("state")).unwrap();
    std::fs::write(evil.join("state/state.json"), "{\"networks\": {}}\n").unwrap();
    let marker = evil.join("fake-sudo-ran");
    std::fs::write(evil.join("sudo"), format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    std::fs::set_permissions(evil.join("sudo"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let hostile: Vec<(String, String)> = [
        ("PATH", evil.display().to_string()),
        ("BRIDGE_ISOLATION_STATE_DIR", evil.join("state").display().to_string()),
        ("BRIDGE_ISOLATION_BACKEND", "nftables".to_string()),
        ("BRIDGE_ISOLATION_CONFIG", evil.join("none.conf").display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    let lab = Lab::create(&LabSpec::new(&lab::unique_prefix("priv")).with_vms(2)).unwrap();
    let net = lab.spec().bridge.clone();
    let vm = |n: &str| lab.vm(n).unwrap().clone();
    let (vm1, vm2) = (vm("vm1"), vm("vm2"));

    // Network points run as root with the installed paths (no overrides).
    let json = lab::setup_networks_json(&[(&net, lab::NetSpec::on_nic(&lab.spec().uplink).with_isolation("true"))]);
    for point in ["before_network_setup", "after_network_setup"] {
        let run = lab::run_hook_point(lab.host_ns(), hooks, point, Payload::Json(json.clone()), &[]).unwrap();
        assert!(!run.failed, "{point}: {}", run.stderr);
    }
    assert!(lab.port_isolated(&vm1.tap).unwrap() && lab.port_isolated(&vm2.tap).unwrap());
    let as_vdsm = |point: &str, payload: Payload, env: &[(String, String)]| {
        lab::run_hook_point_as(lab.host_ns(), hooks, point, payload, env, Some(&vdsm)).unwrap()
    };
    let live = |spec: &lab::VmSpec, trusted: bool| {
        let uuid = format!("00000000-0000-4000-8000-0000000000{:02x}", spec.guest_mac[5]);
        let nic = NicSpec {
            trusted,
            ..NicSpec::of_vm(spec, &net)
        };
        (Payload::DomXml(lab::domain_xml(&spec.name, &uuid, &[nic])), uuid)
    };

    // Drift (a tap came up without the flag): after_vm_start as vdsm repairs it through sudo.
    lab.set_port_isolated(&vm1.tap, false).unwrap();
    let (payload, uuid) = live(&vm1, false);
    let mut env = hostile.clone();
    env.push(("vmId".into(), uuid));
    let run = as_vdsm("after_vm_start", payload.clone(), &env);
    assert_eq!(run.codes, [(paths::HOOK_NAME.to_string(), 0)], "{}", run.stderr);
    assert!(lab.port_isolated(&vm1.tap).unwrap(), "the helper isolated vnet1 again");
    assert!(!marker.exists(), "a VM hook ran `sudo` from PATH");

    // Steady state needs no privilege at all: with the sudoers rule gone the hook still
    // succeeds, because it spawns nothing; a real repair then fails, loudly.
    install.disable_sudo();
    let run = as_vdsm("after_vm_start", payload.clone(), &env);
    assert_eq!(run.codes, [(paths::HOOK_NAME.to_string(), 0)], "{}", run.stderr);
    lab.set_port_isolated(&vm1.tap, false).unwrap();
    let run = as_vdsm("after_vm_start", payload.clone(), &env);
    assert_eq!(run.codes, [(paths::HOOK_NAME.to_string(), 1)]);
    assert!(run.stderr.contains(paths::HELPER), "{}", run.stderr);
    assert_eq!(
        run.stderr.lines().filter(|l| l.contains("error")).count(),
        1,
        "{}",
        run.stderr
    );
    install.enable_sudo();
    let run = as_vdsm("after_vm_start", payload, &env);
    assert!(!run.failed, "{}", run.stderr);
    assert!(lab.port_isolated(&vm1.tap).unwrap());

    // before_vm_start as vdsm reads the installed state, not the one the environment names.
    let (payload, _) = live(&vm2, false);
    let Payload::DomXml(xml) = &payload else { unreachable!() };
    let xml = xml.replace(&format!("<target dev='{}'/>", vm2.tap), "");
    let run = as_vdsm("before_vm_start", Payload::DomXml(xml), &hostile);
    assert!(!run.failed, "{}", run.stderr);
    assert!(
        run.payload_text().contains("<port isolated=\"yes\"/>"),
        "{}",
        run.payload_text()
    );

    // A trusted vNIC is recorded by the helper and opened; the matrix proves it.
    let (payload, uuid2) = live(&vm2, true);
    let mut env2 = hostile.clone();
    env2.push(("vmId".into(), uuid2.clone()));
    let run = as_vdsm("after_vm_start", payload.clone(), &env2);
    assert!(!run.failed, "{}", run.stderr);
    assert!(!lab.port_isolated(&vm2.tap).unwrap());
    let state = std::fs::read_to_string(Path::new(paths::STATE_DIR).join("state.json")).unwrap();
    assert!(state.contains(&lab::format_mac(vm2.guest_mac)), "{state}");
    lab.matrix()
        .unwrap()
        .assert_expected(&|a, b| !(is_vm(a) && is_vm(b)) || a == "vm2" || b == "vm2");

    // after_vm_destroy as vdsm makes the helper forget the VM.
    let run = as_vdsm("after_vm_destroy", payload, &env2);
    assert!(!run.failed, "{}", run.stderr);
    let state = std::fs::read_to_string(Path::new(paths::STATE_DIR).join("state.json")).unwrap();
    assert!(!state.contains(&lab::format_mac(vm2.guest_mac)), "{state}");

    // The sudoers rule allows the helper with no arguments only, and the helper itself
    // refuses to run without root.
    let as_vdsm_cmd = || {
        let mut cmd = Command::new(lab::SETPRIV);
        let (uid, gid) = (vdsm.uid.to_string(), vdsm.gid.to_string());
        cmd.args(["--reuid", &uid, "--regid", &gid, "--init-groups", "--"]);
        cmd
    };
    let with_arg = as_vdsm_cmd()
        .args([paths::SUDO, "-n", paths::HELPER, "--state-dir=/tmp"])
        .output()
        .unwrap();
    assert!(!with_arg.status.success(), "sudo let vdsm pass arguments to the helper");
    let direct = as_vdsm_cmd().arg(paths::HELPER).output().unwrap();
    assert_eq!(direct.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&direct.stderr).contains("must run as root"));
    lab.destroy().unwrap();
}
