//! reconcile_scale: reconcile time and child processes per run, from 10 to 2000 ports.
//!
//! Run: `sudo -E cargo bench --bench reconcile_scale` (BENCH_STEADY_REPS=30,
//! BENCH_COLD_REPS=7 by default).
//!
//! Outer part: one network namespace with 200 bridges x 10 ports (uplink `uNNN` + nine VM
//! taps `vNNNpP` with libvirt-style `fe:` MACs; veth peers stay in the namespace), created by
//! one `ip -batch -` process, then re-executes itself under `ip netns exec` (so /sys is the
//! namespace's, as for the hooks).
//!
//! Inner part, for sizes 10/100/500/1000/2000 ports (the first 1/10/50/100/200 bridges
//! recorded as isolated networks), each backend (port-isolation; nftables when the backend
//! opens and is available):
//! - cold first apply: enforcement removed, a state with no backend recorded, then one
//!   reconcile (port-isolation sets 9 flags per bridge; nftables creates the table);
//! - steady state: reconcile again with nothing to change.
//!
//! Each in-process through the library (`bridge_isolation::reconcile::run` on a `State`) and
//! as the CLI process `bridge-isolation reconcile` (state file, env overrides), interleaved
//! round by round in rotating order with a plain exec of /bin/true. The time of
//! `reconcile::plan` alone (reading the ports: one rtnetlink dump) is shown too, to
//! attribute the cost, beside other ways to read the ports (`proto_ports`).
//! Child processes per CLI run are counted once per backend and mode under `strace -f`.

mod common;
mod proto_ports;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bridge_isolation::enforce;
use bridge_isolation::host::config::{BackendChoice, Settings};
use bridge_isolation::host::state::State;
use bridge_isolation::model::backend::BackendKind;
use bridge_isolation::reconcile;
use common::*;

const NAME: &str = "reconcile_scale";
const TAG: &str = "brs";
const TRUE: &str = "/bin/true";
const BRIDGES: usize = 200;
const PORTS_PER_BRIDGE: usize = 10;
const SIZES: [usize; 5] = [10, 100, 500, 1000, 2000];
const PLAN: &str = "reconcile::plan alone (ports: one AF_BRIDGE dump)";
const PROTO_SYSFS: &str = "before: ports from sysfs (brif/ + 3 files per port)";
const PROTO_ONE: &str = "prototype: ports from one AF_UNSPEC RTM_GETLINK dump";
const PROTO_PER: &str = "prototype: ports from per-bridge IFLA_MASTER dumps";
const PROTO_IOCTL: &str = "prototype: sysfs flag + ifindex/MAC by ioctl";

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
    if !may_run(NAME, &[IP, TRUE]) {
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

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn bridge(b: usize) -> String {
    format!("b{b:03}")
}

fn uplink(b: usize) -> String {
    format!("u{b:03}")
}

// ---------------------------------------------------------------------------------------
// Outer.

fn outer() -> Result<()> {
    cleanup_stale(TAG);
    let ns = Netns::add(&format!("{TAG}-{}", std::process::id()))?;
    // No IPv6 on thousands of interfaces (no addrconf work while they come up).
    let name = ns.name.clone();
    std::thread::spawn(move || -> Result<()> {
        enter_netns(&name)?;
        for key in ["all", "default"] {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6"), "1")?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("sysctl thread panicked"))??;

    let mut batch = String::new();
    for b in 0..BRIDGES {
        let br = bridge(b);
        batch.push_str(&format!(
            "link add {br} type bridge stp_state 0 forward_delay 0 mcast_snooping 0\nlink set {br} up\n"
        ));
        for p in 0..PORTS_PER_BRIDGE {
            let (port, peer, mac) = if p == 0 {
                (
                    uplink(b),
                    format!("y{b:03}"),
                    format!("02:00:00:00:{:02x}:{:02x}", b >> 8, b & 0xff),
                )
            } else {
                (
                    format!("v{b:03}p{p}"),
                    format!("x{b:03}p{p}"),
                    format!("fe:6f:4c:{:02x}:{:02x}:{p:02x}", b >> 8, b & 0xff),
                )
            };
            batch.push_str(&format!(
                "link add {port} address {mac} type veth peer name {peer}\nlink set {port} master {br}\nlink set {port} up\n"
            ));
        }
    }
    let t = Instant::now();
    ip_batch(&ns.name, &batch).context("creating 200 bridges x 10 ports")?;
    println!(
        "== {NAME}: {BRIDGES} bridges x {PORTS_PER_BRIDGE} ports ({} ports, {} interfaces) created by one `ip -batch -` in {:.1} s",
        BRIDGES * PORTS_PER_BRIDGE,
        BRIDGES * (2 * PORTS_PER_BRIDGE + 1),
        t.elapsed().as_secs_f64()
    );
    check_stop()?;
    let scratch = scratch_dir("bench-reconcile-scale")?;
    let status = reexec_in(
        &ns.name,
        &["reconcile-scale".into(), scratch.path().display().to_string()],
        &[],
    )?;
    drop(ns);
    if !status.success() {
        bail!("the measuring process failed ({status})");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Inner.

fn state_of(size: usize) -> State {
    let mut state = State::default();
    for b in 0..size / PORTS_PER_BRIDGE {
        state.networks.insert(bridge(b), policy(&bridge(b), &uplink(b)));
    }
    state
}

fn settings(kind: BackendKind, dir: &Path) -> Settings {
    Settings {
        state_dir: dir.to_path_buf(),
        config_file: PathBuf::from("/nonexistent"),
        backend: BackendChoice::Fixed(kind),
        privileged: true,
        vdsm_netconf: "/nonexistent".into(),
        owners_dir: dir.join("owners"),
    }
}

/// Removes every enforcement `kind` has on the bridges of `state` (untimed reset).
fn reset(kind: BackendKind, state: &State) -> Result<()> {
    let plan = reconcile::plan(state)?;
    enforce::open(kind, &driver())?.remove(&plan.bridges)?;
    Ok(())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The CLI `bridge-isolation reconcile` for one size and backend.
struct Cli {
    dir: PathBuf,
    kind: BackendKind,
}

impl Cli {
    fn write_state(&self, state: &State) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut s = state.clone();
        s.version = bridge_isolation::host::state::VERSION;
        std::fs::write(self.dir.join("state.json"), serde_json::to_vec_pretty(&s)?)?;
        Ok(())
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            ("BRIDGE_ISOLATION_STATE_DIR".into(), self.dir.display().to_string()),
            ("BRIDGE_ISOLATION_BACKEND".into(), self.kind.name().into()),
            ("BRIDGE_ISOLATION_CONFIG".into(), "/nonexistent".into()),
        ]
    }

    fn program() -> String {
        bin_dir().join("bridge-isolation").display().to_string()
    }

    /// One timed run (spawn + wait), in ms.
    fn run(&self) -> Result<f64> {
        let mut cmd = Command::new(Self::program());
        cmd.arg("reconcile")
            .env_clear()
            .envs(self.env().iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let t = Instant::now();
        let status = cmd.status()?;
        let dt = ms(t);
        if !status.success() {
            let out = Command::new(Self::program())
                .arg("reconcile")
                .env_clear()
                .envs(self.env().iter().map(|(k, v)| (k, v)))
                .output()?;
            bail!(
                "bridge-isolation reconcile ({}) failed: {}",
                self.kind,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(dt)
    }
}

fn time_true() -> Result<f64> {
    let mut cmd = Command::new(TRUE);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let t = Instant::now();
    cmd.status()?;
    Ok(ms(t))
}

/// Samples by (variant, size).
type Samples = BTreeMap<(String, usize), Vec<f64>>;

fn push(s: &mut Samples, variant: &str, size: usize, v: f64) {
    s.entry((variant.to_string(), size)).or_default().push(v);
}

fn inner(args: &[String]) -> Result<()> {
    let [what, scratch] = args else {
        bail!("usage: --inner reconcile-scale SCRATCH");
    };
    if what != "reconcile-scale" {
        bail!("unknown inner job {what}");
    }
    let scratch = PathBuf::from(scratch);
    let steady_reps = env_usize("BENCH_STEADY_REPS", 30);
    let cold_reps = env_usize("BENCH_COLD_REPS", 7);
    let mut kinds = vec![BackendKind::PortIsolation];
    match enforce::open(BackendKind::Nftables, &driver()).and_then(|b| b.available()) {
        Ok(()) => kinds.push(BackendKind::Nftables),
        Err(e) => println!("nftables backend not usable here ({e}): its rows are skipped"),
    }
    println!(
        "   per size: {cold_reps} cold applies and {steady_reps} steady runs per variant, interleaved in rotating order; loadavg {}",
        loadavg()
    );
    let mut samples = Samples::new();
    for size in SIZES {
        let state0 = state_of(size);
        let clis: Vec<Cli> = kinds
            .iter()
            .map(|&k| Cli {
                dir: scratch.join(format!("state-{size}-{}", k.name())),
                kind: k,
            })
            .collect();
        // Cold first apply: in-process and CLI, each backend, rotating.
        let cold_variants = kinds.len() * 2;
        for rep in 0..cold_reps {
            for i in rotation(cold_variants, rep) {
                check_stop()?;
                let kind = kinds[i / 2];
                reset(kind, &state0)?;
                if i % 2 == 0 {
                    let mut state = state0.clone();
                    let settings = settings(kind, &scratch);
                    let t = Instant::now();
                    let outcome = reconcile::run(&mut state, &settings)?;
                    let dt = ms(t);
                    let want = if kind == BackendKind::PortIsolation {
                        size - size / PORTS_PER_BRIDGE
                    } else {
                        0
                    };
                    if kind == BackendKind::PortIsolation && outcome.changes.len() != want {
                        bail!("cold apply changed {} ports, expected {want}", outcome.changes.len());
                    }
                    push(&mut samples, &format!("{} library, cold", kind.name()), size, dt);
                } else {
                    let cli = &clis[i / 2];
                    cli.write_state(&state0)?;
                    push(&mut samples, &format!("{} CLI, cold", kind.name()), size, cli.run()?);
                }
            }
        }
        // Converged for every backend now (the last cold run of each left it so).
        let mut states: Vec<State> = Vec::new();
        for (k, cli) in kinds.iter().zip(&clis) {
            let mut st = state0.clone();
            reconcile::run(&mut st, &settings(*k, &scratch))?;
            cli.write_state(&st)?;
            states.push(st);
        }
        // The other readers must read exactly what the library reads.
        let names: Vec<String> = state0.networks.values().map(|p| p.bridge.clone()).collect();
        let snapshot = bridge_isolation::sys::bridge::snapshot()?;
        let library: BTreeMap<String, Option<Vec<bridge_isolation::model::port::Port>>> = names
            .iter()
            .map(|b| (b.clone(), snapshot.ports(b).map(<[_]>::to_vec)))
            .collect();
        if proto_ports::sysfs(&names)? != library
            || proto_ports::one_dump(&names)? != library
            || proto_ports::per_bridge(&names)? != library
            || proto_ports::sysfs_flag_ioctl(&names)? != library
        {
            bail!("the other port readers disagree with sys::bridge::snapshot at {size} ports");
        }
        // Steady: library and CLI for each backend, plan alone, the other readers, and
        // /bin/true, rotating.
        let steady_variants = kinds.len() * 2 + 6;
        for rep in 0..steady_reps + 2 {
            for i in rotation(steady_variants, rep) {
                check_stop()?;
                let (label, dt) = if i < kinds.len() * 2 {
                    let kind = kinds[i / 2];
                    if i % 2 == 0 {
                        let st = &mut states[i / 2];
                        let settings = settings(kind, &scratch);
                        let t = Instant::now();
                        let outcome = reconcile::run(st, &settings)?;
                        let dt = ms(t);
                        if !outcome.changes.is_empty() {
                            bail!("{kind} steady run changed {} ports", outcome.changes.len());
                        }
                        (format!("{} library, steady", kind.name()), dt)
                    } else {
                        (format!("{} CLI, steady", kind.name()), clis[i / 2].run()?)
                    }
                } else if i == kinds.len() * 2 {
                    let t = Instant::now();
                    let plan = reconcile::plan(&state0)?;
                    let dt = ms(t);
                    let ports: usize = plan.bridges.iter().map(|b| b.ports.len()).sum();
                    if ports != size {
                        bail!("plan found {ports} ports, expected {size}");
                    }
                    (PLAN.to_string(), dt)
                } else if i == kinds.len() * 2 + 1 {
                    let t = Instant::now();
                    let ports = proto_ports::sysfs(&names)?;
                    let dt = ms(t);
                    std::hint::black_box(ports);
                    (PROTO_SYSFS.to_string(), dt)
                } else if i == kinds.len() * 2 + 2 {
                    let t = Instant::now();
                    let ports = proto_ports::one_dump(&names)?;
                    let dt = ms(t);
                    std::hint::black_box(ports);
                    (PROTO_ONE.to_string(), dt)
                } else if i == kinds.len() * 2 + 3 {
                    let t = Instant::now();
                    let ports = proto_ports::per_bridge(&names)?;
                    let dt = ms(t);
                    std::hint::black_box(ports);
                    (PROTO_PER.to_string(), dt)
                } else if i == kinds.len() * 2 + 4 {
                    let t = Instant::now();
                    let ports = proto_ports::sysfs_flag_ioctl(&names)?;
                    let dt = ms(t);
                    std::hint::black_box(ports);
                    (PROTO_IOCTL.to_string(), dt)
                } else {
                    ("exec floor: /bin/true".to_string(), time_true()?)
                };
                if rep >= 2 {
                    push(&mut samples, &label, size, dt);
                }
            }
        }
        println!("   size {size}: done (loadavg {})", loadavg());
    }

    // Child processes per CLI run, at 2000 ports.
    let mut counts = Vec::new();
    let state = state_of(2000);
    for &kind in &kinds {
        let cli = Cli {
            dir: scratch.join(format!("state-2000-{}", kind.name())),
            kind,
        };
        reset(kind, &state)?;
        cli.write_state(&state)?;
        let cold = count_processes(&Cli::program(), &["reconcile"], &cli.env(), None, &scratch)?;
        let steady = count_processes(&Cli::program(), &["reconcile"], &cli.env(), None, &scratch)?;
        counts.push((kind, cold, steady));
    }

    report(&samples, &kinds, &counts);
    for &kind in &kinds {
        reset(kind, &state)?;
    }
    Ok(())
}

fn report(
    samples: &Samples,
    kinds: &[BackendKind],
    counts: &[(BackendKind, Option<ProcessCount>, Option<ProcessCount>)],
) {
    let mut variants: Vec<String> = Vec::new();
    for k in kinds {
        for v in ["library, steady", "CLI, steady", "library, cold", "CLI, cold"] {
            variants.push(format!("{} {v}", k.name()));
        }
    }
    variants.push(PLAN.into());
    variants.push(PROTO_SYSFS.into());
    variants.push(PROTO_ONE.into());
    variants.push(PROTO_PER.into());
    variants.push(PROTO_IOCTL.into());
    variants.push("exec floor: /bin/true".into());
    let med = |v: &str, size: usize| samples.get(&(v.to_string(), size)).map(|s| summarize(s));
    for v in &variants {
        println!("\n-- {v}");
        println!(
            "  {:>6} {:>8} {:>9} {:>9} {:>9} {:>10}",
            "ports", "bridges", "median", "p25", "p75", "us/port"
        );
        for size in SIZES {
            if let Some(s) = med(v, size) {
                println!(
                    "  {:>6} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>10.2}",
                    size,
                    size / PORTS_PER_BRIDGE,
                    s.median,
                    s.p25,
                    s.p75,
                    s.median * 1e3 / size as f64
                );
            }
        }
        // Growth exponent between 100 and 2000 ports: t ~ n^k; k <= 1 is linear or better.
        if let (Some(a), Some(b)) = (med(v, 100), med(v, 2000)) {
            let k = (b.median / a.median).ln() / 20f64.ln();
            println!(
                "  growth 100 -> 2000 ports: x{:.1} for x20 ports, t ~ n^{k:.2}",
                b.median / a.median
            );
        }
    }
    println!("\n-- child processes per `bridge-isolation reconcile` at 2000 ports (strace -f, one run each)");
    for (kind, cold, steady) in counts {
        for (mode, c) in [("cold", cold), ("steady", steady)] {
            match c {
                None => println!("  {:<16} {mode:<7} strace not installed: not counted", kind.name()),
                Some(c) => println!(
                    "  {:<16} {mode:<7} processes created {}{}",
                    kind.name(),
                    c.children,
                    if c.programs.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", c.programs.join(", "))
                    }
                ),
            }
        }
    }

    println!("\n-- targets at 2000 ports");
    let growth = |v: &str| -> Option<f64> {
        let (a, b) = (med(v, 100)?, med(v, 2000)?);
        Some((b.median / a.median).ln() / 20f64.ln())
    };
    for k in kinds {
        let limit = if *k == BackendKind::PortIsolation { 50.0 } else { 200.0 };
        for v in ["library, steady", "CLI, steady", "library, cold", "CLI, cold"] {
            let name = format!("{} {v}", k.name());
            if let Some(s) = med(&name, 2000) {
                let target = v.contains("steady");
                println!(
                    "  {name:<34} {:>8.2} ms  (target <= {limit} ms{})  {}",
                    s.median,
                    if target { "" } else { ", informative: cold" },
                    if target {
                        verdict(s.median <= limit)
                    } else if s.median <= limit {
                        "(within)"
                    } else {
                        "(over)"
                    }
                );
            }
            if let Some(g) = growth(&name) {
                println!(
                    "  {:<34} growth exponent 100->2000 ports: {g:.2}  (linear or better: <= 1.10)  {}",
                    "",
                    verdict(g <= 1.10)
                );
            }
        }
    }
    for (kind, cold, steady) in counts {
        if let (Some(c), Some(s)) = (cold, steady) {
            println!(
                "  {:<16} child processes per run: steady {}, cold {}  (target <= 1)  steady {} / cold {}",
                kind.name(),
                s.children,
                c.children,
                verdict(s.children <= 1),
                verdict(c.children <= 1)
            );
        }
    }
    println!("  loadavg at the end: {}", loadavg());
}
