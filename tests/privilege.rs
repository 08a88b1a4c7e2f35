//! The unprivileged path on a real kernel: VM hooks run as user `vdsm`, as VDSM runs them,
//! reach the root helper only through `/usr/bin/sudo -n` and the shipped sudoers drop-in,
//! and nothing in their environment (PATH, state dir, backend) can steer them.
//!
//! This test installs the helper and the sudoers drop-in at their real paths and uses the
//! real state directory, so it refuses to run on a host where the package is installed,
//! and removes all it installed when it ends.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use bridge_isolation::host::paths;
use bridge_isolation_lab::{self as lab, is_vm, Lab, LabSpec, NicSpec, Payload, RunAs};

#[allow(dead_code)]
mod common;

const SUDOERS: &str = "/etc/sudoers.d/50_vdsm_hook_bridge_isolation";

/// The tests that install into the system paths and use the system state directory take
/// this first: they must not run at the same time.
static SYSTEM: Mutex<()> = Mutex::new(());

fn system_guard() -> MutexGuard<'static, ()> {
    SYSTEM.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the test put on the host, removed on drop (also when an assertion fails).
struct SystemInstall {
    created_dirs: Vec<PathBuf>,
}

impl SystemInstall {
    fn new() -> SystemInstall {
        let state_dir = Path::new(paths::STATE_DIR);
        let helper_dir = Path::new(paths::HELPER).parent().unwrap();
        let run_dir = Path::new(paths::OWNERS_DIR).parent().unwrap();
        for p in [state_dir, helper_dir, run_dir, Path::new(SUDOERS)] {
            assert!(
                !p.exists(),
                "{} exists: vdsm-hook-bridge-isolation is installed on this host; run this test on a scratch machine",
                p.display()
            );
        }
        ensure_account();
        let mut install = SystemInstall {
            created_dirs: vec![helper_dir.to_path_buf(), state_dir.to_path_buf(), run_dir.to_path_buf()],
        };
        // The owner records' directory, made by the package's own tmpfiles.d entry.
        let tmpfiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/tmpfiles.conf");
        run_ok(Command::new("/usr/bin/systemd-tmpfiles").arg("--create").arg(tmpfiles));
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
    let _system = system_guard();
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
        (
            "BRIDGE_ISOLATION_METRICS_TEXTFILE_DIR",
            evil.join("prom").display().to_string(),
        ),
        ("BRIDGE_ISOLATION_OWNERS_DIR", evil.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // Where root would write the metrics if the helper heeded the environment.
    std::fs::create_dir(evil.join("prom")).unwrap();

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
    // The hook, as vdsm, recorded who owns the tap (the environment did not move it).
    let owners = bridge_isolation::host::owners::OwnerDir::new(paths::OWNERS_DIR);
    let record = owners.read(&env.last().unwrap().1).unwrap().expect("an owner record");
    assert_eq!(record.vm_name.as_deref(), Some(vm1.name.as_str()));
    assert_eq!(
        record.vnics.iter().map(|v| v.tap.as_str()).collect::<Vec<_>>(),
        [vm1.tap.as_str()]
    );
    let file = Path::new(paths::OWNERS_DIR).join(format!("{}.json", record.vm_id));
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(file).unwrap()),
        vdsm.uid
    );
    assert_eq!(
        std::fs::read_dir(evil.join("prom")).unwrap().count(),
        0,
        "the helper wrote metrics where the hook's environment said"
    );

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

    // The same vNIC as a `type='network'` one (VDSM's libvirt network `vdsm-<net>`, whose
    // live XML names the bridge) is a bridge port like any other: repaired as vdsm too.
    lab.set_port_isolated(&vm1.tap, false).unwrap();
    let uuid1 = format!("00000000-0000-4000-8000-0000000000{:02x}", vm1.guest_mac[5]);
    let nic = NicSpec {
        kind: lab::NicKind::Network,
        ..NicSpec::of_vm(&vm1, &net)
    };
    let xml = lab::domain_xml(&vm1.name, &uuid1, &[nic]);
    assert!(
        xml.contains(&format!("<source network='vdsm-{net}' bridge='{net}'/>")),
        "{xml}"
    );
    let run = as_vdsm("after_vm_start", Payload::DomXml(xml), &env);
    assert!(!run.failed, "{}", run.stderr);
    assert!(
        lab.port_isolated(&vm1.tap).unwrap(),
        "a type='network' vNIC was not repaired"
    );

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

/// Programs a hook, the helper or a backend might run, as trap scripts in a directory put
/// first in PATH: each leaves a marker if it ever runs.
fn trap_dir(dir: &Path) -> PathBuf {
    let marker = dir.join("a-program-ran-from-PATH");
    #[rustfmt::skip]
    let names = [
        "sudo", "sh", "bash", "ip", "bridge", "nft", "iptables", "ip6tables", "iptables-save",
        "iptables-restore", "ip6tables-save", "ip6tables-restore", "ebtables", "modprobe", "sysctl",
        "firewall-cmd", "systemctl", "bridge-isolation-helper", "cat", "true",
    ];
    for name in names {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho {name} >> {}\nexit 1\n", marker.display()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    marker
}

/// Runs the installed helper as root inside `ns` with exactly `env` and `args`, `input` on stdin.
fn helper_as_root(ns: &str, env: &[(String, String)], args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(lab::IP)
        .args(["netns", "exec", ns, paths::HELPER])
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The helper may refuse before reading: a broken pipe is an answer too.
    let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), input);
    child.wait_with_output().unwrap()
}

/// The root helper honours nothing its caller controls: run as root with every override
/// set (state dir, config file naming another state dir and backend, backend, PATH full of
/// traps, TMPDIR, HOME), it records the report in the installed state directory only,
/// enforces with the installed backend, and runs nothing from PATH; with any argument it
/// refuses. Through sudo, user vdsm may run the helper and nothing else: not another
/// command, not as another user, not with a preserved or assigned environment, not a
/// shell, not with arguments; its environment does not reach the helper either.
#[test]
fn the_root_helper_ignores_overrides_arguments_and_sudo_tricks() {
    if !lab::root_tests_enabled("the_root_helper_ignores_overrides_arguments_and_sudo_tricks") {
        return;
    }
    let _system = system_guard();
    let _install = SystemInstall::new();
    let vdsm = RunAs::lookup("vdsm").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let evil = scratch.path().join("evil");
    std::fs::create_dir_all(evil.join("state")).unwrap();
    std::fs::create_dir_all(evil.join("tmp")).unwrap();
    let evil_state = b"{\"networks\": {}, \"released\": [\"isonet\"]}\n";
    std::fs::write(evil.join("state/state.json"), evil_state).unwrap();
    let other = evil.join("other-state");
    std::fs::write(
        evil.join("evil.conf"),
        format!("state_dir = {}\nbackend = nftables\n", other.display()),
    )
    .unwrap();
    let marker = trap_dir(&evil);
    let hostile: Vec<(String, String)> = [
        ("PATH", evil.display().to_string()),
        ("BRIDGE_ISOLATION_STATE_DIR", evil.join("state").display().to_string()),
        ("BRIDGE_ISOLATION_CONFIG", evil.join("evil.conf").display().to_string()),
        ("BRIDGE_ISOLATION_BACKEND", "nftables".to_string()),
        ("TMPDIR", evil.join("tmp").display().to_string()),
        ("HOME", evil.display().to_string()),
        ("BRIDGE_ISOLATION_LOG", "debug".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let untouched = || {
        assert_eq!(std::fs::read(evil.join("state/state.json")).unwrap(), evil_state);
        assert!(
            !evil.join("state/state.lock").exists(),
            "the helper locked the state dir of the environment"
        );
        assert!(!other.exists(), "the helper used the config file of the environment");
        assert_eq!(
            std::fs::read_dir(evil.join("tmp")).unwrap().count(),
            0,
            "files in the environment's TMPDIR"
        );
        assert!(
            !marker.exists(),
            "ran from PATH: {}",
            std::fs::read_to_string(&marker).unwrap_or_default()
        );
    };

    let lab = Lab::create(&LabSpec::new(&lab::unique_prefix("privhelp")).with_vms(2)).unwrap();
    let net = lab.spec().bridge.clone();
    let (vm1, vm2) = (lab.vm("vm1").unwrap().clone(), lab.vm("vm2").unwrap().clone());
    let json = lab::setup_networks_json(&[(&net, lab::NetSpec::on_nic(&lab.spec().uplink).with_isolation("true"))]);
    for point in ["before_network_setup", "after_network_setup"] {
        let run = lab::run_hook_point(
            lab.host_ns(),
            common::hooks_dir(),
            point,
            Payload::Json(json.clone()),
            &[],
        )
        .unwrap();
        assert!(!run.failed, "{point}: {}", run.stderr);
    }
    assert!(lab.port_isolated(&vm1.tap).unwrap() && lab.port_isolated(&vm2.tap).unwrap());
    let state_file = Path::new(paths::STATE_DIR).join("state.json");
    let report = |vm: &lab::VmSpec| {
        format!(
            r#"{{"vm": "00000000-0000-4000-8000-0000000000{:02x}", "event": "up", "vnics": [{{"mac": "{}", "trusted": true, "tap": "{}"}}]}}"#,
            vm.guest_mac[5],
            lab::format_mac(vm.guest_mac),
            vm.tap
        )
    };
    let nft_tables = || {
        let out = lab.exec_in_host(&[lab::NFT, "list", "tables"]).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // Root, every override set: the installed state and backend only.
    let out = helper_as_root(lab.host_ns(), &hostile, &[], report(&vm1).as_bytes());
    assert!(out.status.success(), "helper: {}", String::from_utf8_lossy(&out.stderr));
    let state = std::fs::read_to_string(&state_file).unwrap();
    assert!(state.contains(&lab::format_mac(vm1.guest_mac)), "{state}");
    assert!(state.contains("\"port-isolation\""), "{state}");
    assert!(!lab.port_isolated(&vm1.tap).unwrap(), "the trusted vNIC stays isolated");
    assert!(lab.port_isolated(&vm2.tap).unwrap());
    if Path::new(lab::NFT).exists() {
        assert_eq!(
            nft_tables().trim(),
            "",
            "the helper used the backend of the environment"
        );
    }
    untouched();

    // Arguments: refused, nothing done.
    for args in [&["--state-dir", "/tmp"][..], &["reconcile"], &[""], &["-"], &["--help"]] {
        let out = helper_as_root(lab.host_ns(), &hostile, args, report(&vm2).as_bytes());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("takes no arguments"),
            "{args:?}"
        );
        assert_eq!(
            std::fs::read_to_string(&state_file).unwrap(),
            state,
            "{args:?} changed the state"
        );
    }
    assert!(lab.port_isolated(&vm2.tap).unwrap());
    untouched();

    // Through sudo as vdsm.
    let as_vdsm = |env: &[(String, String)], args: &[&str], input: &[u8]| {
        let (uid, gid) = (vdsm.uid.to_string(), vdsm.gid.to_string());
        let mut child = Command::new(lab::IP)
            .args(["netns", "exec", lab.host_ns(), lab::SETPRIV])
            .args(["--reuid", &uid, "--regid", &gid, "--init-groups", "--", paths::SUDO])
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), input);
        child.wait_with_output().unwrap()
    };
    let listing = as_vdsm(&[], &["-n", "-l"], b"");
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.status.success(),
        "sudo -l: {}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let commands: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("NOPASSWD") || l.contains("(root)"))
        .collect();
    assert_eq!(commands.len(), 1, "sudo -l:\n{text}");
    assert!(commands[0].contains(paths::HELPER), "sudo -l:\n{text}");
    let assigned = format!("BRIDGE_ISOLATION_STATE_DIR={}", evil.join("state").display());
    #[rustfmt::skip]
    let refused: [&[&str]; 10] = [
        &["-n", "/bin/true"],
        &["-n", "/bin/sh", "-c", "id"],
        &["-n", "-s"],
        &["-n", "-i"],
        &["-n", "-u", "nobody", paths::HELPER],
        &["-n", "-E", paths::HELPER],
        &["-n", "--preserve-env=BRIDGE_ISOLATION_STATE_DIR", paths::HELPER],
        &["-n", &assigned, paths::HELPER],
        &["-n", paths::HELPER, "--state-dir=/tmp"],
        &["-n", "-e", paths::STATE_DIR],
    ];
    for args in refused {
        let out = as_vdsm(&hostile, args, report(&vm2).as_bytes());
        assert!(!out.status.success(), "sudo let vdsm run {args:?}");
        assert_eq!(
            std::fs::read_to_string(&state_file).unwrap(),
            state,
            "{args:?} changed the state"
        );
    }
    assert!(lab.port_isolated(&vm2.tap).unwrap());
    untouched();

    // The one thing allowed, with a hostile environment: it reaches the installed state.
    let out = as_vdsm(&hostile, &["-n", paths::HELPER], report(&vm2).as_bytes());
    assert!(
        out.status.success(),
        "sudo -n helper: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = std::fs::read_to_string(&state_file).unwrap();
    assert!(state.contains(&lab::format_mac(vm2.guest_mac)), "{state}");
    assert!(!lab.port_isolated(&vm2.tap).unwrap());
    untouched();
    lab.destroy().unwrap();
}

/// Every process the library starts outside the test lab is named by an absolute path (no
/// PATH lookup) and none is a shell: each `Command::new(X)` in `src/` (the lab is `lab/`) takes
/// a constant whose value starts with `/`, or a variable that every assignment in its file
/// feeds from such constants or from functions returning only absolute literals; no string
/// literal names a shell or sudo bare; nothing calls `execvp`, `system` or reads `PATH`.
/// (`backends_run_nothing_from_path` checks the same by running the hooks.)
#[test]
fn no_path_lookups_and_no_shell_in_the_library() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    // The `.rs` files below `root`, its subdirectories included.
    let rust_files = |root: &Path| {
        let mut files = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        files
    };
    let files = rust_files(&src);
    assert!(files.len() > 10, "{files:?}");
    let code = |path: &Path| -> String {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| if l.trim_start().starts_with("//") { "" } else { l })
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Every `const NAME: &str = "value";` of the crate, the lab's included.
    let mut consts = std::collections::BTreeMap::new();
    let mut all = files.clone();
    all.extend(rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/src")));
    for path in &all {
        for line in code(path).lines() {
            let line = line.trim().trim_start_matches("pub ").trim_start_matches("pub(crate) ");
            if let Some(rest) = line.strip_prefix("const ") {
                if let Some((name, value)) = rest.split_once(": &str = \"") {
                    consts.insert(name.trim().to_string(), value.trim_end_matches("\";").to_string());
                }
            }
        }
    }
    let is_const = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
    };
    let ident_end = |s: &str| s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    let mut spawns = 0;
    for path in &files {
        let text = code(path);
        let name = path.strip_prefix(&src).unwrap().display().to_string();
        for forbidden in [
            "execvp",
            "execlp",
            "libc::system",
            "posix_spawnp",
            "var(\"PATH\")",
            "var_os(\"PATH\")",
        ] {
            assert!(!text.contains(forbidden), "{name} uses {forbidden}");
        }
        for literal in text.split('"').skip(1).step_by(2) {
            let base = literal.rsplit('/').next().unwrap_or(literal);
            assert!(
                !["sh", "bash", "dash", "zsh"].contains(&base),
                "{name}: a shell: {literal:?}"
            );
            assert!(literal != "sudo", "{name}: sudo without its path");
        }
        // The absolute paths a value expression stands for: a constant, a literal, or a call
        // of a function of this file whose literals are all absolute.
        let values_of = |expr: &str| -> Vec<String> {
            let expr = expr.trim_start().trim_start_matches('&');
            let expr = &expr[..expr.find([',', ';', '\n']).unwrap_or(expr.len())];
            // An installed path root may override for tests (`config::dir_override`, never
            // honoured for anyone else): what it stands for is its installed default.
            const DEFAULT: &str = ".unwrap_or_else(|| ";
            let expr = match (expr.strip_prefix("config::dir_override("), expr.find(DEFAULT)) {
                (Some(_), Some(at)) => &expr[at + DEFAULT.len()..],
                _ => expr,
            };
            if let Some(lit) = expr.strip_prefix('"') {
                return vec![lit[..lit.find('"').unwrap_or(lit.len())].to_string()];
            }
            let path_len = expr
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(expr.len());
            let last = expr[..path_len].rsplit("::").next().unwrap();
            if is_const(last) {
                return vec![consts.get(last).cloned().unwrap_or_else(|| format!("<unknown {last}>"))];
            }
            // `x.method()`: the function `method` of this file.
            if let Some(method) = expr[path_len..].strip_prefix('.') {
                let method = &method[..ident_end(method)];
                if let Some(at) = text.find(&format!("fn {method}(")) {
                    let body = &text[at..];
                    let body = &body[..body.find("\n    }").unwrap_or(body.len())];
                    return body.split('"').skip(1).step_by(2).map(str::to_string).collect();
                }
            }
            Vec::new()
        };
        // Every spawn: `Command::new(PROGRAM)`, and `tool::run(PROGRAM, ..)` /
        // `tool::attempt(PROGRAM, ..)`, whose `Command::new(program)` runs what they are given.
        let sites: Vec<(usize, &str)> = ["Command::new(", "tool::run(", "tool::attempt("]
            .into_iter()
            .filter(|pat| !(name == "sys/tool.rs" && *pat == "Command::new("))
            .flat_map(|pat| text.match_indices(pat).map(move |(at, _)| (at, pat)))
            .collect();
        for (at, pat) in sites {
            spawns += 1;
            let arg = &text[at + pat.len()..];
            let arg = arg[..arg.find([')', ',']).unwrap()].trim();
            let mut values = values_of(arg);
            if values.is_empty() {
                // A variable: what every `var: VALUE` / `var = VALUE` of the file and every
                // call `f(VALUE` of a function taking it as its first parameter feed it.
                let var = arg.trim_start_matches('&').rsplit('.').next().unwrap();
                for pattern in [format!("{var}: "), format!("{var} = ")] {
                    for (i, _) in text.match_indices(&pattern) {
                        values.extend(values_of(&text[i + pattern.len()..]));
                    }
                }
                for (i, _) in text.match_indices(&format!("({var}: &")) {
                    let before = &text[..i];
                    let func = &before[before.rfind("fn ").unwrap() + 3..];
                    for (j, _) in text.match_indices(&format!("{func}(")) {
                        if !text[..j].ends_with("fn ") {
                            values.extend(values_of(&text[j + func.len() + 1..]));
                        }
                    }
                }
            }
            assert!(!values.is_empty(), "{name}: {pat}{arg}): nothing resolves it");
            for v in &values {
                assert!(v.starts_with('/'), "{name}: {pat}{arg}) may run {v:?}");
            }
        }
    }
    assert!(spawns >= 2, "found only {spawns} Command::new");
}

/// The hooks run no program from PATH with any backend this host can run: with PATH full
/// of trap scripts, tagging and lifting a network works and no trap fires.
#[test]
fn backends_run_nothing_from_path() {
    if !lab::root_tests_enabled("backends_run_nothing_from_path") {
        return;
    }
    let traps = tempfile::tempdir().unwrap();
    let marker = trap_dir(traps.path());
    let fx = common::Fixture::new("bipath", 2);
    for backend in bridge_isolation::model::backend::BackendKind::ALL {
        // The iptables backend's drop-ins go to the fixture's own directory.
        let env = [
            ("PATH".to_string(), traps.path().display().to_string()),
            ("BRIDGE_ISOLATION_BACKEND".to_string(), backend.to_string()),
        ];
        let mut ran = true;
        for value in ["true", "false"] {
            for point in ["before_network_setup", "after_network_setup"] {
                let run = fx.run_bytes(point, common::tagged(value).as_bytes(), &env);
                if run.code() != Some(0)
                    && (run.stderr.contains("cannot run here") || run.stderr.contains("not implemented"))
                {
                    eprintln!("backend {backend} skipped: {}", run.stderr.trim());
                    ran = false;
                    break;
                }
                assert_eq!(run.code(), Some(0), "{backend} {point} {value}: {}", run.stderr);
            }
            if !ran {
                break;
            }
        }
        assert!(
            !marker.exists(),
            "{backend} ran {}",
            std::fs::read_to_string(&marker).unwrap_or_default()
        );
    }
}
