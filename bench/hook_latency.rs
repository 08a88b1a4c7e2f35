//! hook_latency: how long VDSM waits for our hook at two steady-state points, against the
//! classic recipe written as a Python hook (bench/recipe_hook.py) and a plain exec of
//! /bin/true (the floor of any hook VDSM runs).
//!
//! Run: `sudo bench/run-all.sh --bench hook_latency` (BENCH_ROUNDS=200 by default): it
//! measures the binaries as packaging/build.sh makes them (BENCH_BINDIR), the hook a static
//! PIE. A bare `cargo bench --bench hook_latency` measures cargo's build, a dynamic hook: the
//! report says which.
//!
//! Outer part (root namespace): builds a netns lab (bridge `isonet` with uplink eth1 and VM
//! tap vnet1 for port-isolation; bridge `nftnet` with eth2 and vnet2 for nftables), installs
//! the package into a scratch DESTDIR with packaging/install.sh, and re-executes itself under
//! `ip netns exec HOST`.
//!
//! Inner part (host namespace, private mount namespace): overlays /etc, /usr/libexec and
//! /var/lib with the scratch install (so the hooks, config, sudoers drop-in, helper and state
//! sit at their installed paths, invisible outside this process and gone when it exits),
//! converges once, then times spawn+wait of each program directly (no `ip netns exec` in the
//! measured path), round-robin in rotating order, and prints medians, p25/p75 and ratios.
//! Child processes on the steady path are counted once per program under `strace -f`.

mod common;

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bridge_isolation::enforce;
use bridge_isolation::host::paths;
use bridge_isolation::model::backend::BackendKind;
use bridge_isolation_lab::{self as lab, domain_xml, Lab, LabSpec, NetSpec, NicSpec};
use common::*;

const NAME: &str = "hook_latency";
const TAG: &str = "bhl";
const PYTHON: &str = "/usr/bin/python3";
const TRUE: &str = "/bin/true";
const IPTABLES: &str = "/usr/sbin/iptables";
const SYSCTL: &str = "/usr/sbin/sysctl";
const HOOKS: &str = "/usr/libexec/vdsm/hooks";
const CONF: &str = "/etc/vdsm-hook-bridge-isolation/bridge-isolation.conf";
const SYSTEM_STATE: &str = "/var/lib/vdsm-hook-bridge-isolation/state.json";
const HOOK_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
const VM1_UUID: &str = "4d3a1f52-8a0b-4c8e-9a8f-2f7b3d1c0001";
const VM2_UUID: &str = "4d3a1f52-8a0b-4c8e-9a8f-2f7b3d1c0002";
const WARMUP: usize = 5;

fn main() -> ExitCode {
    let args = args();
    if args.first().map(String::as_str) == Some(INNER) {
        catch_signals();
        return match inner(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{NAME} (inner): {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if !may_run(NAME, &[IP, PYTHON, TRUE, IPTABLES, SYSCTL]) {
        return ExitCode::SUCCESS;
    }
    catch_signals();
    match outer() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

// ---------------------------------------------------------------------------------------
// Outer: lab, install tree, re-exec.

fn outer() -> Result<()> {
    cleanup_stale(TAG);
    let prefix = format!("{TAG}-{}", std::process::id());
    let lab = Lab::create(&LabSpec::new(&prefix).with_vms(1)).context("building the lab")?;
    let host = lab.host_ns().to_string();
    // A second bridge for the nftables backend, its VM port's peer left in the host namespace.
    ip_batch(
        &host,
        "link add nftnet address 02:b1:00:00:00:02 type bridge stp_state 0 forward_delay 0\n\
         link set nftnet up\n\
         link add eth2 type veth peer name eth2p\n\
         link set eth2 master nftnet\nlink set eth2 up\nlink set eth2p up\n\
         link add vnet2 address fe:6f:4c:ab:00:02 type veth peer name vnet2p address 56:6f:4c:ab:00:02\n\
         link set vnet2 master nftnet\nlink set vnet2 up\nlink set vnet2p up\n",
    )?;
    let ((uid, gid), created) = ensure_vdsm_account()?;
    // The recipe runs `modprobe br_netfilter`, which is machine-wide: unload it afterwards
    // if this run is what loaded it (built-in here: then there is nothing to unload).
    let br_nf_before = Path::new("/sys/module/br_netfilter").exists();
    let result = (|| {
        let scratch = scratch_dir("bench-hook-latency")?;
        install_tree(scratch.path())?;
        check_stop()?;
        let status = reexec_in(
            &host,
            &[
                "hook-latency".to_string(),
                scratch.path().display().to_string(),
                uid.to_string(),
                gid.to_string(),
            ],
            &[],
        )?;
        if !status.success() {
            bail!("the measuring process failed ({status})");
        }
        Ok(())
    })();
    if created {
        remove_vdsm_account();
    }
    if !br_nf_before && Path::new("/sys/module/br_netfilter/refcnt").exists() {
        let _ = run_ok("/usr/sbin/modprobe", &["-r", "br_netfilter"]);
    }
    lab.destroy().context("deleting the lab")?;
    result
}

/// packaging/install.sh into SCRATCH/root, and the recipe hook into SCRATCH/recipe/<point>/.
fn install_tree(scratch: &Path) -> Result<()> {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = scratch.join("root");
    let bindir = bin_dir();
    run_ok(
        &top.join("packaging/install.sh").display().to_string(),
        &[
            "--destdir",
            &root.display().to_string(),
            "--bindir",
            &bindir.display().to_string(),
        ],
    )?;
    for point in ["before_network_setup", "after_vm_start"] {
        let dir = scratch.join("recipe").join(point);
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("50_recipe");
        std::fs::copy(top.join("bench/recipe_hook.py"), &file)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
    }
    for d in ["recipe", "recipe/before_network_setup", "recipe/after_vm_start"] {
        std::fs::set_permissions(scratch.join(d), std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Inner: in the host namespace.

/// One program timed by the loop.
struct Prog {
    label: String,
    path: String,
    env: Vec<(String, String)>,
    /// (uid, gid) to run as; root otherwise.
    user: Option<(u32, u32)>,
    samples: Vec<f64>,
    failures: usize,
    stderr: PathBuf,
}

impl Prog {
    fn new(label: &str, path: &str, env: Vec<(String, String)>, user: Option<(u32, u32)>, scratch: &Path) -> Prog {
        let n = label.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        Prog {
            label: label.to_string(),
            path: path.to_string(),
            env,
            user,
            samples: Vec::new(),
            failures: 0,
            stderr: scratch.join(format!("stderr-{n}.log")),
        }
    }

    /// One run: spawn + wait, in ms. Every program is spawned the same way (fork + setgid +
    /// setuid + exec, which std uses whenever uid/gid are set), root ones with uid 0.
    fn time_once(&mut self) -> Result<()> {
        let err = File::options().create(true).append(true).open(&self.stderr)?;
        let (uid, gid) = self.user.unwrap_or((0, 0));
        let mut cmd = Command::new(&self.path);
        cmd.env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .uid(uid)
            .gid(gid);
        let t = Instant::now();
        let status = cmd.spawn().with_context(|| format!("spawning {}", self.path))?.wait()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if status.success() {
            self.samples.push(ms);
        } else {
            self.failures += 1;
        }
        Ok(())
    }
}

/// Runs every program once per round, rotating the order; the first WARMUP rounds are dropped.
fn measure(progs: &mut [Prog], rounds: usize) -> Result<()> {
    for round in 0..rounds + WARMUP {
        check_stop()?;
        for i in rotation(progs.len(), round) {
            progs[i].time_once()?;
        }
        if round + 1 == WARMUP {
            for p in progs.iter_mut() {
                p.samples.clear();
            }
        }
    }
    for p in progs.iter() {
        let err = std::fs::read_to_string(&p.stderr).unwrap_or_default();
        if p.failures > 0 || !err.trim().is_empty() {
            let first: Vec<&str> = err.lines().take(3).collect();
            eprintln!(
                "warning: {}: {} failed run(s); stderr: {}",
                p.label,
                p.failures,
                first.join(" | ")
            );
        }
    }
    Ok(())
}

/// Runs an installed hook (or any program) once, as root, checking exit 0.
fn run_once(path: &str, env: &[(String, String)]) -> Result<()> {
    let out = Command::new(path)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {path}"))?;
    if !out.status.success() {
        bail!(
            "{path} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn hook(point: &str) -> String {
    format!("{HOOKS}/{point}/50_bridge_isolation")
}

fn env_of(var: &str, file: &Path, vm: Option<&str>, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_string(), HOOK_PATH.to_string()),
        (var.to_string(), file.display().to_string()),
    ];
    if let Some(id) = vm {
        env.push(("vmId".to_string(), id.to_string()));
    }
    env.extend_from_slice(extra);
    env
}

/// Writes a payload file (mode 0600), owned by `owner` when given, as VDSM's temp files.
fn payload(dir: &Path, name: &str, text: &str, owner: Option<(u32, u32)>) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    if let Some((u, g)) = owner {
        std::os::unix::fs::chown(&path, Some(u), Some(g))?;
    }
    Ok(path)
}

fn port_flag(port: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{port}/brport/isolated"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("? ({e})"))
}

fn inner(args: &[String]) -> Result<()> {
    let [what, scratch, uid, gid] = args else {
        bail!("usage: --inner hook-latency SCRATCH UID GID");
    };
    if what != "hook-latency" {
        bail!("unknown inner job {what}");
    }
    let scratch = PathBuf::from(scratch);
    let vdsm = (uid.parse::<u32>()?, gid.parse::<u32>()?);
    private_mounts()?;
    let root = scratch.join("root");
    for (target, sub) in [
        ("/etc", "etc"),
        ("/usr/libexec", "usr/libexec"),
        ("/var/lib", "var/lib"),
    ] {
        overlay(target, &root.join(sub), &scratch.join("ovl-work").join(sub))?;
    }
    // The owner records' directory, as the package's tmpfiles.d entry makes it at boot, on
    // tmpfs as /run is on a host (overlayfs on disk would make the hook's write dearer).
    overlay("/run", &root.join("run"), &scratch.join("ovl-work").join("run"))?;
    let run_dir = Path::new(paths::OWNERS_DIR).parent().expect("/run/...");
    std::fs::create_dir_all(run_dir)?;
    tmpfs(run_dir)?;
    std::fs::create_dir_all(paths::OWNERS_DIR)?;
    std::os::unix::fs::chown(paths::OWNERS_DIR, Some(vdsm.0), Some(vdsm.1))?;
    let pay = scratch.join("payload");
    std::fs::create_dir_all(&pay)?;
    std::fs::set_permissions(&pay, std::fs::Permissions::from_mode(0o755))?;

    // Payloads: restore-nets JSON of one network; libvirt's live XML of a running VM.
    let net_json = |net: &str, nic: &str| lab::restore_nets_json(&[(net, NetSpec::on_nic(nic).with_isolation("true"))]);
    let vm_xml = |name: &str, uuid: &str, bridge: &str, n: u8| {
        let spec = LabSpec::new("x").numbered_vm(n);
        domain_xml(name, uuid, &[NicSpec::of_vm(&spec, bridge)])
    };
    let iso_json = payload(&pay, "iso.json", &net_json("isonet", "eth1"), None)?;
    let nft_json = payload(&pay, "nft.json", &net_json("nftnet", "eth2"), None)?;
    let vm1_xml = vm_xml("vm1", VM1_UUID, "isonet", 1);
    let vm2_xml = vm_xml("vm2", VM2_UUID, "nftnet", 2);
    let vm1_root = payload(&pay, "vm1-root.xml", &vm1_xml, None)?;
    let vm1_vdsm = payload(&pay, "vm1-vdsm.xml", &vm1_xml, Some(vdsm))?;
    let vm2_root = payload(&pay, "vm2-root.xml", &vm2_xml, None)?;
    let vm2_vdsm = payload(&pay, "vm2-vdsm.xml", &vm2_xml, Some(vdsm))?;
    let originals: Vec<(PathBuf, Vec<u8>)> = [&iso_json, &nft_json, &vm1_root, &vm1_vdsm, &vm2_root, &vm2_vdsm]
        .iter()
        .map(|p| Ok(((*p).clone(), std::fs::read(p)?)))
        .collect::<Result<_>>()?;

    let nft_state = scratch.join("state-nft");
    let nft_env: Vec<(String, String)> = vec![
        ("BRIDGE_ISOLATION_STATE_DIR".into(), nft_state.display().to_string()),
        ("BRIDGE_ISOLATION_BACKEND".into(), "nftables".into()),
        ("BRIDGE_ISOLATION_CONFIG".into(), "/nonexistent".into()),
    ];
    let nft_ok = match enforce::open(BackendKind::Nftables, &driver()).and_then(|b| b.available()) {
        Ok(()) => true,
        Err(e) => {
            println!("nftables backend not usable here ({e}): its rows are skipped");
            false
        }
    };

    // Converge: what restore-nets and the VM starts did before the steady state.
    let recipe = |point: &str| {
        scratch
            .join("recipe")
            .join(point)
            .join("50_recipe")
            .display()
            .to_string()
    };
    for point in ["before_network_setup", "after_network_setup"] {
        run_once(&hook(point), &env_of("_hook_json", &iso_json, None, &[]))?;
        if nft_ok {
            run_once(&hook(point), &env_of("_hook_json", &nft_json, None, &nft_env))?;
        }
    }
    run_once(
        &hook("after_vm_start"),
        &env_of("_hook_domxml", &vm1_root, Some(VM1_UUID), &[]),
    )?;
    if nft_ok {
        run_once(
            &hook("after_vm_start"),
            &env_of("_hook_domxml", &vm2_root, Some(VM2_UUID), &nft_env),
        )?;
    }
    // A repeated before_network_setup keeps the previous policy as `setup` (for
    // after_network_setup_fail): one more run records it, so the measured runs write nothing.
    run_once(
        &hook("before_network_setup"),
        &env_of("_hook_json", &iso_json, None, &[]),
    )?;
    if nft_ok {
        run_once(
            &hook("before_network_setup"),
            &env_of("_hook_json", &nft_json, None, &nft_env),
        )?;
    }
    run_once(
        &recipe("before_network_setup"),
        &env_of("_hook_json", &iso_json, None, &[]),
    )?;
    run_once(
        &recipe("after_vm_start"),
        &env_of("_hook_domxml", &vm1_root, Some(VM1_UUID), &[]),
    )?;
    if port_flag("vnet1") != "1" {
        bail!("vnet1 is not isolated after convergence ({})", port_flag("vnet1"));
    }
    let state_before = std::fs::read(SYSTEM_STATE).context("reading the system state")?;

    let n = rounds();
    println!(
        "== {NAME}: {n} rounds (+{WARMUP} warm-up), programs interleaved in rotating order; loadavg {}",
        loadavg()
    );
    println!("   times are spawn+wait of the program from inside the lab's host namespace, in ms");

    // before_network_setup, restore-nets payload, steady state (policy recorded, flags set).
    let mut bns = vec![
        Prog::new(
            "exec floor: /bin/true",
            TRUE,
            env_of("_hook_json", &iso_json, None, &[]),
            None,
            &scratch,
        ),
        Prog::new(
            "recipe (python)",
            &recipe("before_network_setup"),
            env_of("_hook_json", &iso_json, None, &[]),
            None,
            &scratch,
        ),
        Prog::new(
            "ours, port-isolation",
            &hook("before_network_setup"),
            env_of("_hook_json", &iso_json, None, &[]),
            None,
            &scratch,
        ),
    ];
    if nft_ok {
        bns.push(Prog::new(
            "ours, nftables",
            &hook("before_network_setup"),
            env_of("_hook_json", &nft_json, None, &nft_env),
            None,
            &scratch,
        ));
    }
    measure(&mut bns, n)?;

    // after_vm_start, VM on an isolated bridge, steady state.
    let vm1 = |file: &Path| env_of("_hook_domxml", file, Some(VM1_UUID), &[]);
    let mut avs = vec![
        Prog::new("exec floor: /bin/true (root)", TRUE, vm1(&vm1_root), None, &scratch),
        Prog::new(
            "exec floor: /bin/true (vdsm)",
            TRUE,
            vm1(&vm1_vdsm),
            Some(vdsm),
            &scratch,
        ),
        Prog::new(
            "recipe (python, root)",
            &recipe("after_vm_start"),
            vm1(&vm1_root),
            None,
            &scratch,
        ),
        Prog::new(
            "ours, port-isolation (vdsm)",
            &hook("after_vm_start"),
            vm1(&vm1_vdsm),
            Some(vdsm),
            &scratch,
        ),
        Prog::new(
            "ours, port-isolation (root)",
            &hook("after_vm_start"),
            vm1(&vm1_root),
            None,
            &scratch,
        ),
    ];
    if nft_ok {
        avs.push(Prog::new(
            "ours, nftables (root)",
            &hook("after_vm_start"),
            env_of("_hook_domxml", &vm2_root, Some(VM2_UUID), &nft_env),
            None,
            &scratch,
        ));
    }
    measure(&mut avs, n)?;

    // Child processes on the steady path, once each, under strace -f.
    let strace_rows: Vec<TraceRow> = {
        let mut rows = vec![
            (
                "before_network_setup: recipe".to_string(),
                recipe("before_network_setup"),
                bns[1].env.clone(),
                None,
            ),
            (
                "before_network_setup: ours, port-isolation".to_string(),
                hook("before_network_setup"),
                bns[2].env.clone(),
                None,
            ),
            (
                "after_vm_start: recipe (root)".to_string(),
                recipe("after_vm_start"),
                avs[2].env.clone(),
                None,
            ),
            (
                "after_vm_start: ours, port-isolation (vdsm)".to_string(),
                hook("after_vm_start"),
                avs[3].env.clone(),
                Some("vdsm"),
            ),
            (
                "after_vm_start: ours, port-isolation (root)".to_string(),
                hook("after_vm_start"),
                avs[4].env.clone(),
                None,
            ),
        ];
        if nft_ok {
            rows.push((
                "before_network_setup: ours, nftables".into(),
                hook("before_network_setup"),
                bns[3].env.clone(),
                None,
            ));
            rows.push((
                "after_vm_start: ours, nftables (root)".into(),
                hook("after_vm_start"),
                avs[5].env.clone(),
                None,
            ));
        }
        rows
    };
    let mut counts = Vec::new();
    for (label, path, env, user) in &strace_rows {
        counts.push((label.clone(), count_processes(path, &[], env, *user, &scratch)?));
    }

    // Steady state held: nothing was rewritten, the flag is still set.
    let state_after = std::fs::read(SYSTEM_STATE)?;
    let mut steady_ok = true;
    if state_after != state_before {
        eprintln!(
            "warning: the state file changed during the measured runs:\n{}\n->\n{}",
            String::from_utf8_lossy(&state_before),
            String::from_utf8_lossy(&state_after)
        );
        steady_ok = false;
    }
    if port_flag("vnet1") != "1" {
        eprintln!("warning: vnet1 lost its isolated flag");
        steady_ok = false;
    }
    for (path, bytes) in &originals {
        if std::fs::read(path)? != *bytes {
            eprintln!("warning: payload {} was modified", path.display());
            steady_ok = false;
        }
    }

    // Phase 2: nftables as user vdsm (the installed config says nftables; every run goes
    // through sudo and the root helper, which reads the table).
    let phase2 = if nft_ok {
        match nft_as_vdsm(
            &scratch,
            vdsm,
            &vm2_root,
            &vm2_vdsm,
            &recipe("after_vm_start"),
            &vm1_root,
            n,
        ) {
            Ok(p) => Some(p),
            Err(e) => {
                println!("nftables as vdsm: not measured ({e:#})");
                None
            }
        }
    } else {
        None
    };

    report(&bns, &avs, &counts, phase2.as_ref(), steady_ok);
    Ok(())
}

/// (label, program, environment, user) of one strace run.
type TraceRow<'a> = (String, String, Vec<(String, String)>, Option<&'a str>);

struct Phase2 {
    progs: Vec<Prog>,
    count: Option<ProcessCount>,
}

fn nft_as_vdsm(
    scratch: &Path,
    vdsm: (u32, u32),
    vm2_root: &Path,
    vm2_vdsm: &Path,
    recipe_avs: &str,
    vm1_root: &Path,
    n: usize,
) -> Result<Phase2> {
    std::fs::write(CONF, "backend = nftables\n")?;
    let pay = scratch.join("payload");
    let json = lab::restore_nets_json(&[("nftnet", NetSpec::on_nic("eth2").with_isolation("true"))]);
    let nft_json = payload(&pay, "nft-system.json", &json, None)?;
    for point in ["before_network_setup", "after_network_setup"] {
        run_once(&hook(point), &env_of("_hook_json", &nft_json, None, &[]))?;
    }
    run_once(
        &hook("after_vm_start"),
        &env_of("_hook_domxml", vm2_root, Some(VM2_UUID), &[]),
    )?;
    let vm2 = |file: &Path| env_of("_hook_domxml", file, Some(VM2_UUID), &[]);
    let mut progs = vec![
        Prog::new("exec floor: /bin/true (vdsm)", TRUE, vm2(vm2_vdsm), Some(vdsm), scratch),
        Prog::new(
            "recipe (python, root)",
            recipe_avs,
            env_of("_hook_domxml", vm1_root, Some(VM1_UUID), &[]),
            None,
            scratch,
        ),
        Prog::new(
            "ours, nftables (vdsm, via sudo)",
            &hook("after_vm_start"),
            vm2(vm2_vdsm),
            Some(vdsm),
            scratch,
        ),
        Prog::new(
            "ours, nftables (root, installed)",
            &hook("after_vm_start"),
            vm2(vm2_root),
            None,
            scratch,
        ),
    ];
    // One probe run first: sudo must work here, or the phase is skipped.
    progs[2].time_once()?;
    if progs[2].failures > 0 {
        bail!(
            "the hook as vdsm failed: {}",
            std::fs::read_to_string(&progs[2].stderr).unwrap_or_default().trim()
        );
    }
    measure(&mut progs, n)?;
    let count = count_processes(&hook("after_vm_start"), &[], &vm2(vm2_vdsm), Some("vdsm"), scratch)?;
    Ok(Phase2 { progs, count })
}

fn row(p: &Prog, reference: Option<&Prog>, floor: Option<&Prog>) -> String {
    let s = summarize(&p.samples);
    let ratio = |r: Option<&Prog>| match r {
        Some(r) if !std::ptr::eq(r, p) => {
            let rs = summarize(&r.samples);
            let pr = paired_ratio(&p.samples, &r.samples);
            format!("{:>7.3}x [{:.3}-{:.3}]", s.median / rs.median, pr.p25, pr.p75)
        }
        _ => format!("{:>22}", "-"),
    };
    format!(
        "  {:<36} {:>8.3} {:>8.3} {:>8.3}  {} {}",
        p.label,
        s.median,
        s.p25,
        s.p75,
        ratio(reference),
        ratio(floor)
    )
}

/// How the ELF file at `path` is linked: "static PIE" when it has no program interpreter
/// (PT_INTERP) and is of type ET_DYN, as packaging/build.sh links the hook.
fn linkage(path: &Path) -> String {
    let Ok(elf) = std::fs::read(path) else {
        return format!("{} unreadable", path.display());
    };
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let phoff = elf
        .get(0x20..0x28)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    let (entsize, count) = (u16_at(0x36), u16_at(0x38));
    let interp = (0..count).any(|i| elf.get(phoff + i * entsize..phoff + i * entsize + 4) == Some(&[3, 0, 0, 0]));
    match (interp, u16_at(0x10)) {
        (false, 3) => format!("{}, static PIE", path.display()),
        (false, _) => format!("{}, static, not PIE", path.display()),
        (true, _) => format!(
            "{}, dynamically linked: bench/run-all.sh measures the packaged, static build",
            path.display()
        ),
    }
}

fn header() {
    println!(
        "  {:<36} {:>8} {:>8} {:>8}  {:>22} {:>22}",
        "program", "median", "p25", "p75", "vs recipe [paired IQR]", "vs floor [paired IQR]"
    );
}

fn ratio_of(p: &Prog, r: &Prog) -> f64 {
    summarize(&p.samples).median / summarize(&r.samples).median
}

fn show_count(label: &str, c: &Option<ProcessCount>) {
    match c {
        None => println!("  {label:<46} strace not installed: not counted"),
        Some(c) => println!(
            "  {label:<46} execs {} (itself + {}), processes created {}, threads {}{}{}",
            c.execs,
            c.execs.saturating_sub(1),
            c.children,
            c.threads,
            if c.programs.is_empty() {
                String::new()
            } else {
                format!(": {}", c.programs.join(", "))
            },
            if c.success { "" } else { "  [exit non-zero]" }
        ),
    }
}

fn report(
    bns: &[Prog],
    avs: &[Prog],
    counts: &[(String, Option<ProcessCount>)],
    phase2: Option<&Phase2>,
    steady: bool,
) {
    println!("\n-- before_network_setup (restore-nets payload, one isolated network, steady state)");
    header();
    for p in bns {
        println!("{}", row(p, Some(&bns[1]), Some(&bns[0])));
    }
    println!("\n-- after_vm_start (live XML, one vNIC on an isolated bridge, steady state)");
    header();
    for p in avs {
        let floor = if p.user.is_some() { &avs[1] } else { &avs[0] };
        println!("{}", row(p, Some(&avs[2]), Some(floor)));
    }
    println!(
        "  (the hook measured: {})",
        linkage(&bin_dir().join("vdsm-hook-bridge-isolation"))
    );
    if let Some(p2) = phase2 {
        println!(
            "\n-- after_vm_start, nftables in the installed config (hook as vdsm asks the root helper through sudo)"
        );
        header();
        for p in &p2.progs {
            println!("{}", row(p, Some(&p2.progs[1]), Some(&p2.progs[0])));
        }
    }
    println!("\n-- processes on the steady path (one run each under strace -f -e trace=execve,execveat,fork,vfork,clone,clone3)");
    for (label, c) in counts {
        show_count(label, c);
    }
    if let Some(p2) = phase2 {
        show_count("after_vm_start: ours, nftables (vdsm, via sudo)", &p2.count);
    }

    println!("\n-- targets (default backend, port-isolation)");
    let r1 = ratio_of(&bns[2], &bns[1]);
    println!(
        "  before_network_setup: ours / recipe = {r1:.3}  (target <= 0.10)  {}",
        verdict(r1 <= 0.10)
    );
    let r2 = ratio_of(&avs[3], &avs[2]);
    println!(
        "  after_vm_start (vdsm): ours / recipe = {r2:.3}  (target <= 0.10)  {}",
        verdict(r2 <= 0.10)
    );
    let r3 = ratio_of(&avs[3], &avs[1]);
    println!(
        "  after_vm_start (vdsm): ours / exec floor = {r3:.2}  (target <= 1.5)  {}",
        verdict(r3 <= 1.5)
    );
    let r4 = ratio_of(&avs[4], &avs[0]);
    println!("  after_vm_start (root): ours / exec floor = {r4:.2}  (informative)");
    let vdsm_count = counts
        .iter()
        .find(|(l, _)| l.contains("port-isolation (vdsm)"))
        .and_then(|(_, c)| c.as_ref());
    match vdsm_count {
        Some(c) => println!(
            "  after_vm_start (vdsm): no child process on the steady path: {} created, {} exec besides itself  {}",
            c.children,
            c.execs.saturating_sub(1),
            verdict(c.children == 0 && c.execs == 1 && c.success)
        ),
        None => println!("  after_vm_start (vdsm): no child process: not checked (install strace)"),
    }
    println!(
        "  steady state held (state file, payloads and vnet1's flag unchanged by the measured runs): {}",
        verdict(steady)
    );
    if bns.len() > 3 {
        let r = ratio_of(&bns[3], &bns[1]);
        println!("  nftables: before_network_setup ours / recipe = {r:.3}  (informative)");
    }
    if avs.len() > 5 {
        let r = ratio_of(&avs[5], &avs[2]);
        println!("  nftables: after_vm_start (root) ours / recipe = {r:.3}  (informative)");
    }
    if let Some(p2) = phase2 {
        let r = ratio_of(&p2.progs[2], &p2.progs[1]);
        let f = ratio_of(&p2.progs[2], &p2.progs[0]);
        println!("  nftables: after_vm_start (vdsm) ours / recipe = {r:.3}, / exec floor = {f:.1}  (informative)");
    }
    println!("  loadavg at the end: {}", loadavg());
}
