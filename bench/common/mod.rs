//! Shared plumbing of the benchmark programs (`harness = false` bench targets): root check,
//! interrupt handling, percentiles, namespaces, re-exec under `ip netns exec`, and counting
//! child processes with strace.
//!
//! Each program measures alternatives side by side, interleaved round by round in rotating
//! order, and prints medians with p25/p75 so the noise of a shared machine stays visible.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

/// iproute2's `ip`.
pub const IP: &str = "/usr/sbin/ip";
/// strace, used once per program to count the processes it creates.
pub const STRACE: &str = "/usr/bin/strace";
/// Argument that selects the part of a program running inside a namespace.
pub const INNER: &str = "--inner";

// ---------------------------------------------------------------------------------------
// Refusing politely, stopping cleanly.

/// True when this process may run the benchmark; otherwise prints why (exit 0 follows).
pub fn may_run(name: &str, tools: &[&str]) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("{name}: needs root (network namespaces, sysctls, nftables): not measuring. Run: sudo -E cargo bench --bench {name}");
        return false;
    }
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !Path::new(t).exists()).collect();
    if !missing.is_empty() {
        println!(
            "{name}: missing programs {}: not measuring (apt-get install iproute2 nftables iptables python3 strace)",
            missing.join(", ")
        );
        return false;
    }
    true
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Turns SIGINT/SIGTERM/SIGHUP into a flag the loops poll, so every program unwinds through
/// its cleanup (namespaces, sysctls, modules) instead of dying mid-way.
pub fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

/// True once a stop signal arrived.
pub fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Fails when a stop signal arrived (to unwind and clean up).
pub fn check_stop() -> Result<()> {
    if stopped() {
        bail!("interrupted");
    }
    Ok(())
}

/// The program's arguments without the `--bench` that `cargo bench` appends.
pub fn args() -> Vec<String> {
    std::env::args().skip(1).filter(|a| a != "--bench").collect()
}

// ---------------------------------------------------------------------------------------
// Statistics.

/// Median and quartiles of a sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    /// 50th percentile.
    pub median: f64,
    /// 25th percentile.
    pub p25: f64,
    /// 75th percentile.
    pub p75: f64,
    /// Sample size.
    pub n: usize,
}

/// Percentile `q` (0..=1) of sorted `v`, linear interpolation.
fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Summary of `samples`.
pub fn summarize(samples: &[f64]) -> Summary {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    Summary {
        median: percentile(&v, 0.5),
        p25: percentile(&v, 0.25),
        p75: percentile(&v, 0.75),
        n: v.len(),
    }
}

/// Median of the per-round ratios a[i]/b[i] (paired: both measured in the same round).
pub fn paired_ratio(a: &[f64], b: &[f64]) -> Summary {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    summarize(&r)
}

/// `PASS`/`FAIL`.
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The 1-minute load average, to show how busy the machine was.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The order of `n` items in round `round`: rotated by one each round, so no alternative
/// always runs right after the same other one.
pub fn rotation(n: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (i + round) % n)
}

// ---------------------------------------------------------------------------------------
// Namespaces and processes.

/// Runs `program args`, failing with its stderr unless it exits 0; returns stdout.
pub fn run_ok(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace this program created; deleted on drop.
pub struct Netns {
    /// Its name.
    pub name: String,
}

impl Netns {
    /// `ip netns add NAME`.
    pub fn add(name: &str) -> Result<Netns> {
        run_ok(IP, &["netns", "add", name])?;
        Ok(Netns { name: name.to_string() })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_ok(IP, &["netns", "del", &self.name]) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

/// Deletes namespaces `{tag}-{pid}-*` whose process is gone (left by a killed run).
pub fn cleanup_stale(tag: &str) {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{tag}-")) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !Path::new("/proc").join(pid).exists() {
            eprintln!("removing stale namespace {name}");
            let _ = run_ok(IP, &["netns", "del", &name]);
        }
    }
}

/// Feeds `commands` (one `ip` command per line) to one `ip -n NS -batch -` process.
pub fn ip_batch(ns: &str, commands: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new(IP)
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    child.stdin.take().expect("piped").write_all(commands.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -n {ns} -batch - failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Re-executes this program as `ip netns exec NS SELF --inner ARGS...` (inheriting stdio), so
/// the inner part sees the namespace's own /sys and spawns what it times directly.
pub fn reexec_in(ns: &str, args: &[String], env: &[(&str, String)]) -> Result<ExitStatus> {
    let me = std::env::current_exe().context("locating this program")?;
    Command::new(IP)
        .args(["netns", "exec", ns])
        .arg(me)
        .arg(INNER)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .status()
        .context("re-executing under ip netns exec")
}

/// Moves the calling thread into namespace `name` (only a thread made for it: it stays there).
pub fn enter_netns(name: &str) -> Result<()> {
    let handle = File::open(Path::new("/run/netns").join(name)).with_context(|| format!("opening netns {name}"))?;
    // SAFETY: setns only reads the descriptor, kept open for the call.
    if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// Gives this process a private mount namespace (nothing mounted afterwards leaks out; all
/// of it disappears with the process).
pub fn private_mounts() -> Result<()> {
    // SAFETY: plain syscalls with constant arguments.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNS)");
        }
        let root = c"/";
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error()).context("making / private");
        }
    }
    Ok(())
}

/// Mounts an overlay on `target` whose upper layer is `upper` (created files land there),
/// in this process's private mount namespace.
pub fn overlay(target: &str, upper: &Path, work: &Path) -> Result<()> {
    std::fs::create_dir_all(upper)?;
    std::fs::create_dir_all(work)?;
    let opts = format!(
        "lowerdir={target},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, tgt, fs, data) = (c("overlay"), c(target), c("overlay"), c(&opts));
    // SAFETY: NUL-terminated strings that outlive the call.
    if unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), 0, data.as_ptr().cast()) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("overlay on {target} ({opts})"));
    }
    Ok(())
}

/// Mounts a fresh tmpfs on `target` (mode 0755).
pub fn tmpfs(target: &Path) -> Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let tgt = c(&target.display().to_string());
    let (src, fs, data) = (c("tmpfs"), c("tmpfs"), c("mode=0755"));
    // SAFETY: NUL-terminated strings that outlive the call.
    if unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), 0, data.as_ptr().cast()) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("tmpfs on {}", target.display()));
    }
    Ok(())
}

/// uid and gid of `user`, if it exists.
pub fn lookup_user(user: &str) -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(user).ok()?;
    // SAFETY: getpwnam returns static storage or NULL; copied out at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: non-null passwd entry.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// User `vdsm` (group `kvm`) as the vdsm package creates it; returns (uid, gid) and whether
/// this call created it (then [`remove_vdsm_account`] takes it away again).
pub fn ensure_vdsm_account() -> Result<((u32, u32), bool)> {
    if let Some(ids) = lookup_user("vdsm") {
        return Ok((ids, false));
    }
    let kvm = Command::new("/usr/bin/getent").args(["group", "kvm"]).output()?;
    if !kvm.status.success() {
        run_ok("/usr/sbin/groupadd", &["--system", "kvm"])?;
    }
    run_ok(
        "/usr/sbin/useradd",
        &[
            "--system",
            "--gid",
            "kvm",
            "--no-create-home",
            "--shell",
            "/sbin/nologin",
            "vdsm",
        ],
    )?;
    let ids = lookup_user("vdsm").context("vdsm was just created")?;
    Ok((ids, true))
}

/// Deletes the vdsm user that [`ensure_vdsm_account`] created.
pub fn remove_vdsm_account() {
    let _ = run_ok("/usr/sbin/userdel", &["vdsm"]);
}

/// A scratch directory (mode 0755 so user vdsm can traverse it), removed on drop.
pub fn scratch_dir(tag: &str) -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix(&format!("{tag}-")).tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

// ---------------------------------------------------------------------------------------
// Counting child processes.

/// What one traced run did.
#[derive(Clone, Debug, Default)]
pub struct ProcessCount {
    /// Successful execve/execveat calls, the traced program's own included.
    pub execs: usize,
    /// Processes created (fork, vfork, clone/clone3 without CLONE_THREAD).
    pub children: usize,
    /// Threads created (clone/clone3 with CLONE_THREAD).
    pub threads: usize,
    /// Programs exec'd after the first, by path.
    pub programs: Vec<String>,
    /// Exit status of the traced program.
    pub success: bool,
}

/// Runs `program args` once under `strace -f` (as `user` when given, through strace's `-u`,
/// which sets uid, gid and groups like a login) with exactly `env`, and counts the
/// processes it creates. None when strace is not installed.
pub fn count_processes(
    program: &str,
    args: &[&str],
    env: &[(String, String)],
    user: Option<&str>,
    dir: &Path,
) -> Result<Option<ProcessCount>> {
    if !Path::new(STRACE).exists() {
        return Ok(None);
    }
    let out_file = dir.join(format!("strace-{}.txt", std::process::id()));
    let mut cmd = Command::new(STRACE);
    cmd.args([
        "-f",
        "-qq",
        "-s",
        "200",
        "-e",
        "trace=execve,execveat,fork,vfork,clone,clone3",
        "-o",
    ])
    .arg(&out_file);
    if let Some(u) = user {
        cmd.args(["-u", u]);
    }
    let status = cmd
        .arg("--")
        .arg(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running strace")?;
    let text = std::fs::read_to_string(&out_file).unwrap_or_default();
    let _ = std::fs::remove_file(&out_file);
    let mut count = parse_strace(&text);
    count.success = status.success();
    Ok(Some(count))
}

/// Counts process creations and execs in `strace -f -o` output (pid-prefixed lines; calls
/// split into `<unfinished ...>` / `<... resumed>` halves are joined first).
pub fn parse_strace(text: &str) -> ProcessCount {
    let mut pending: std::collections::HashMap<String, String> = Default::default();
    let mut count = ProcessCount::default();
    for line in text.lines() {
        let (pid, rest) = line.split_once(' ').unwrap_or(("", line));
        let rest = rest.trim_start();
        let full = if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            pending.insert(pid.to_string(), head.to_string());
            continue;
        } else if rest.starts_with("<...") {
            let tail = rest.split_once("resumed>").map(|(_, t)| t).unwrap_or("");
            format!("{}{}", pending.remove(pid).unwrap_or_default(), tail)
        } else {
            rest.to_string()
        };
        let result = full.rsplit_once(" = ").map(|(_, r)| r.trim()).unwrap_or("");
        let ok = result
            .split_whitespace()
            .next()
            .and_then(|r| r.parse::<i64>().ok())
            .is_some_and(|r| r >= 0);
        if !ok {
            continue;
        }
        let call = full.split('(').next().unwrap_or("");
        match call {
            "execve" | "execveat" => {
                count.execs += 1;
                if count.execs > 1 {
                    let prog = full.split('"').nth(1).unwrap_or("?").to_string();
                    count.programs.push(prog);
                }
            }
            "fork" | "vfork" => count.children += 1,
            "clone" | "clone3" => {
                if full.contains("CLONE_THREAD") {
                    count.threads += 1;
                } else {
                    count.children += 1;
                }
            }
            _ => {}
        }
    }
    count
}

/// The policy of an isolated network on bridge `bridge` with uplink port `uplink`, built
/// through serde so that fields added later with defaults need no change here.
pub fn policy(bridge: &str, uplink: &str) -> bridge_isolation::model::policy::NetworkPolicy {
    serde_json::from_value(serde_json::json!({ "bridge": bridge, "uplink": uplink })).expect("a valid policy")
}

/// Where the binaries to install live: `BENCH_BINDIR` when set (bench/run-all.sh points it at
/// a copy of packaging/build.sh's output, whose hook is a static PIE, as packaged), else the
/// directory of cargo's own build of them (its hook linked dynamically).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BENCH_BINDIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_BIN_EXE_vdsm-hook-bridge-isolation"))
        .parent()
        .expect("binaries live in a directory")
        .to_path_buf()
}

/// The drivers' settings of a bench run (`enforce::open`): the installed paths, privileged
/// when run as root.
pub fn driver() -> bridge_isolation::enforce::DriverSettings {
    use bridge_isolation::host::config::{is_root, BackendChoice, Settings};
    bridge_isolation::enforce::DriverSettings::of(&Settings {
        state_dir: PathBuf::from("/nonexistent"),
        config_file: PathBuf::from("/nonexistent"),
        backend: BackendChoice::Auto,
        privileged: is_root(),
        vdsm_netconf: "/nonexistent".into(),
        owners_dir: "/nonexistent".into(),
    })
}
