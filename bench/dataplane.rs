//! dataplane: packets per second of minimum-size UDP (64-byte Ethernet frames: 18 bytes of
//! payload + 8 UDP + 20 IPv4 + 14 Ethernet + 4 FCS) on the allowed path, VM -> uplink
//! (gateway), with each enforcement against no isolation.
//!
//! Run: `sudo -E cargo bench --bench dataplane` (BENCH_DP_ROUNDS=9, BENCH_DP_SECS=1).
//!
//! A netns lab (bridge isonet, uplink eth1 to the gateway namespace, vm1 on vnet1, vm2 on
//! vnet2). Each round measures every configuration once, in rotating order:
//! - none: no enforcement, bridge-nf-call-* = 0 in the lab's host namespace (as on a host
//!   without br_netfilter);
//! - port-isolation / nftables: the library's backends applied to the lab's bridge
//!   (`Backend::apply` on `reconcile::plan`), bridge-nf-call-* = 0;
//! - br_netfilter only: bridge-nf-call-iptables = 1, no rule;
//! - recipe: bridge-nf-call-iptables = 1 and `iptables -I FORWARD 1 -m physdev
//!   --physdev-in vnet+ --physdev-out vnet+ -j DROP` (the recipe's cost on a rule that the
//!   allowed path does not match: the plain recipe rule `-i BR -o BR -j DROP` would drop
//!   VM -> uplink altogether);
//! - two probes of the nftables backend's cost (its own table `bench_probe`, not the
//!   backend's): the bridge forward base chain with no rule (the cost of the hook alone), and
//!   the backend's rule with its two lookups swapped (`oif @vm iif @vm`: VM -> uplink then
//!   fails the first lookup).
//!
//! Sender: a thread in vm1's namespace (setns) blasting with sendmmsg (64 datagrams per
//! call) to the gateway; receiver: a thread in the gateway's namespace counting datagrams
//! with recvmmsg; a monitor thread there reads eth0's rx_packets (/proc/thread-self/net/dev)
//! at the window's edges. Figure: frames per second that crossed the bridge to the gateway,
//! over a 1 s window after 0.3 s of warm-up. Each configuration is first checked to
//! enforce what it claims (vm1 -> vm2 datagrams dropped, or delivered for none/br_netfilter).
//!
//! br_netfilter's sysctls are per network namespace on current kernels: they are set only in
//! the lab's namespace. When br_netfilter is a module that is not loaded, it is loaded for the
//! br_netfilter rounds only and unloaded right after each (never if it was loaded before).

mod common;

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bridge_isolation::backend::{self, BackendKind};
use bridge_isolation::lab::{Lab, LabSpec};
use bridge_isolation::reconcile;
use bridge_isolation::state::State;
use common::*;

const NAME: &str = "dataplane";
const TAG: &str = "bdp";
const IPTABLES: &str = "/usr/sbin/iptables";
const MODPROBE: &str = "/usr/sbin/modprobe";
const NFT: &str = "/usr/sbin/nft";
/// Table of the nftables probes (rule shapes measured for a proposal, not the backend's).
const PROBE_TABLE: &str = "bench_probe";
const PORT: u16 = 9999;
const PAYLOAD: usize = 18;
const BATCH: usize = 64;
const WARMUP: Duration = Duration::from_millis(300);
const PHYSDEV_RULE: [&str; 9] = [
    "FORWARD",
    "-m",
    "physdev",
    "--physdev-in",
    "vnet+",
    "--physdev-out",
    "vnet+",
    "-j",
    "DROP",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    None,
    PortIsolation,
    Nftables,
    BrNetfilter,
    Recipe,
    NftEmptyChain,
    NftOifFirst,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::None => "none",
            Config::PortIsolation => "port-isolation",
            Config::Nftables => "nftables",
            Config::BrNetfilter => "br-netfilter",
            Config::Recipe => "recipe",
            Config::NftEmptyChain => "nft-empty-chain",
            Config::NftOifFirst => "nft-oif-first",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Config::None => "no isolation",
            Config::PortIsolation => "port-isolation (kernel flag)",
            Config::Nftables => "nftables (bridge table)",
            Config::BrNetfilter => "br_netfilter on, no rule",
            Config::Recipe => "recipe: br_netfilter + iptables physdev",
            Config::NftEmptyChain => "probe: nft forward chain, no rule",
            Config::NftOifFirst => "probe: nft rule `oif @vm iif @vm`",
        }
    }

    fn from_name(s: &str) -> Option<Config> {
        [
            Config::None,
            Config::PortIsolation,
            Config::Nftables,
            Config::BrNetfilter,
            Config::Recipe,
            Config::NftEmptyChain,
            Config::NftOifFirst,
        ]
        .into_iter()
        .find(|c| c.name() == s)
    }

    fn needs_br_netfilter(self) -> bool {
        matches!(self, Config::BrNetfilter | Config::Recipe)
    }

    /// Whether vm1 -> vm2 must be blocked.
    fn isolates(self) -> bool {
        matches!(
            self,
            Config::PortIsolation | Config::Nftables | Config::Recipe | Config::NftOifFirst
        )
    }
}

fn main() -> std::process::ExitCode {
    let args = args();
    if args.first().map(String::as_str) == Some(INNER) {
        return match inner(&args[1..]) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{NAME} (inner): {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if !may_run(NAME, &[IP, IPTABLES]) {
        return std::process::ExitCode::SUCCESS;
    }
    catch_signals();
    match outer() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// Inner: switching the configuration, inside the host namespace.

fn lab_state() -> State {
    let mut state = State::default();
    state.networks.insert("isonet".into(), policy("isonet", "eth1"));
    state
}

fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/net/bridge/{key}");
    if Path::new(&path).exists() {
        std::fs::write(&path, value).with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}

/// Runs an nft script (`nft -f -`).
fn nft_script(text: &str) -> Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new(NFT)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("piped").write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft -f - failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn inner(args: &[String]) -> Result<()> {
    let [what, config] = args else {
        bail!("usage: --inner config NAME");
    };
    if what != "config" {
        bail!("unknown inner job {what}");
    }
    let config = Config::from_name(config).context("unknown configuration")?;
    let plan = reconcile::plan(&lab_state())?;
    // Back to nothing first.
    backend::open(BackendKind::PortIsolation)?.remove(&plan.bridges)?;
    if backend::open(BackendKind::Nftables).and_then(|b| b.available()).is_ok() {
        backend::open(BackendKind::Nftables)?.remove(&plan.bridges)?;
    }
    let _ = nft_script(&format!("delete table bridge {PROBE_TABLE}\n"));
    let mut del = vec!["-w", "-D"];
    del.extend_from_slice(&PHYSDEV_RULE);
    while run_ok(IPTABLES, &del).is_ok() {}
    for key in [
        "bridge-nf-call-iptables",
        "bridge-nf-call-ip6tables",
        "bridge-nf-call-arptables",
    ] {
        write_sysctl(key, "0")?;
    }
    match config {
        Config::None => {}
        Config::PortIsolation => {
            backend::open(BackendKind::PortIsolation)?.apply(&plan)?;
        }
        Config::Nftables => {
            backend::open(BackendKind::Nftables)?.apply(&plan)?;
        }
        Config::NftEmptyChain | Config::NftOifFirst => {
            let rule = if config == Config::NftOifFirst {
                "oif @vm iif @vm counter drop"
            } else {
                ""
            };
            nft_script(&format!(
                "table bridge {PROBE_TABLE} {{\n set vm {{ type iface_index; elements = {{ \"vnet1\", \"vnet2\" }} }}\n \
                 chain forward {{ type filter hook forward priority -200; policy accept;\n {rule}\n }}\n}}\n"
            ))?;
        }
        Config::BrNetfilter | Config::Recipe => {
            if !Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
                bail!("br_netfilter is not loaded");
            }
            write_sysctl("bridge-nf-call-iptables", "1")?;
            if config == Config::Recipe {
                let mut ins = vec!["-w", "-I"];
                ins.push(PHYSDEV_RULE[0]);
                ins.push("1");
                ins.extend_from_slice(&PHYSDEV_RULE[1..]);
                run_ok(IPTABLES, &ins)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Outer: lab, traffic, report.

/// br_netfilter as a module: loaded by this run only while needed.
struct BrNetfilter {
    /// True when it was there (loaded or built in) before this run.
    present_before: bool,
    /// True while this run has it loaded.
    loaded_by_us: bool,
}

impl BrNetfilter {
    fn probe() -> BrNetfilter {
        BrNetfilter {
            present_before: Path::new("/proc/sys/net/bridge").exists(),
            loaded_by_us: false,
        }
    }

    fn need(&mut self) -> Result<()> {
        if !Path::new("/proc/sys/net/bridge").exists() {
            run_ok(MODPROBE, &["br_netfilter"]).context("loading br_netfilter")?;
            self.loaded_by_us = true;
        }
        Ok(())
    }

    fn release(&mut self) {
        if self.loaded_by_us && !self.present_before {
            if let Err(e) = run_ok(MODPROBE, &["-r", "br_netfilter"]) {
                eprintln!("warning: unloading br_netfilter: {e:#}");
            }
            self.loaded_by_us = false;
        }
    }
}

impl Drop for BrNetfilter {
    fn drop(&mut self) {
        self.release();
    }
}

/// One measurement window.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    /// Frames received by the gateway's eth0 per second.
    rx_pps: f64,
    /// Datagrams delivered to the receiving socket per second.
    delivered_pps: f64,
    /// Datagrams the sender handed to the kernel per second.
    sent_pps: f64,
}

/// rx_packets of `ifname` in the calling thread's network namespace.
fn rx_packets(ifname: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    for line in text.lines() {
        if let Some((name, rest)) = line.split_once(':') {
            if name.trim() == ifname {
                return rest
                    .split_whitespace()
                    .nth(1)
                    .context("short /proc/net/dev line")?
                    .parse()
                    .context("rx_packets");
            }
        }
    }
    bail!("no {ifname} in /proc/thread-self/net/dev")
}

/// Sends minimum-size datagrams to `dst` from namespace `ns` until `stop`; counts them.
fn blaster(ns: String, dst: SocketAddrV4, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> Result<()> {
    enter_netns(&ns)?;
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(dst)?;
    let payload = [0x5au8; PAYLOAD];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: PAYLOAD,
    };
    // SAFETY: mmsghdr is plain data; every entry points at the one iovec, which outlives the loop.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
        .map(|_| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: valid socket, BATCH initialized headers.
        let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Receives datagrams on PORT in namespace `ns` until `stop`; counts them.
fn receiver(ns: String, ready: Arc<AtomicBool>, stop: Arc<AtomicBool>, got: Arc<AtomicU64>) -> Result<()> {
    enter_netns(&ns)?;
    let sock = UdpSocket::bind(("0.0.0.0", PORT))?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let size: libc::c_int = 4 << 20;
    // SAFETY: setsockopt with a valid int.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    let mut bufs = vec![[0u8; 64]; BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: plain data; each header points at its own iovec, which outlives the loop.
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    ready.store(true, Ordering::SeqCst);
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: valid socket and headers.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n > 0 {
            got.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Blasts from `src_ns` to `dst` (received in `dst_ns`) for WARMUP + `secs`; measures the window.
fn measure(src_ns: &str, dst_ns: &str, dst: SocketAddrV4, secs: f64) -> Result<Window> {
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let (sent, got) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let rx = {
        let (ns, ready, stop, got) = (dst_ns.to_string(), ready.clone(), stop.clone(), got.clone());
        std::thread::spawn(move || receiver(ns, ready, stop, got))
    };
    while !ready.load(Ordering::SeqCst) && !rx.is_finished() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let tx = {
        let (ns, stop, sent) = (src_ns.to_string(), stop.clone(), sent.clone());
        std::thread::spawn(move || blaster(ns, dst, stop, sent))
    };
    // The monitor reads the gateway's counters from inside its namespace.
    let monitor = {
        let (ns, sent, got) = (dst_ns.to_string(), sent.clone(), got.clone());
        std::thread::spawn(move || -> Result<Window> {
            enter_netns(&ns)?;
            std::thread::sleep(WARMUP);
            let (r0, g0, s0, t0) = (
                rx_packets("eth0")?,
                got.load(Ordering::Relaxed),
                sent.load(Ordering::Relaxed),
                Instant::now(),
            );
            std::thread::sleep(Duration::from_secs_f64(secs));
            let (r1, g1, s1, dt) = (
                rx_packets("eth0")?,
                got.load(Ordering::Relaxed),
                sent.load(Ordering::Relaxed),
                t0.elapsed().as_secs_f64(),
            );
            Ok(Window {
                rx_pps: (r1 - r0) as f64 / dt,
                delivered_pps: (g1 - g0) as f64 / dt,
                sent_pps: (s1 - s0) as f64 / dt,
            })
        })
    };
    let window = monitor.join().map_err(|_| anyhow::anyhow!("monitor panicked"));
    stop.store(true, Ordering::SeqCst);
    let t = tx.join().map_err(|_| anyhow::anyhow!("sender panicked"));
    let r = rx.join().map_err(|_| anyhow::anyhow!("receiver panicked"));
    t??;
    r??;
    window?
}

fn switch(host: &str, config: Config, brnf: &mut BrNetfilter) -> Result<()> {
    if config.needs_br_netfilter() {
        brnf.need()?;
    }
    let status = reexec_in(host, &["config".into(), config.name().into()], &[])?;
    if !status.success() {
        bail!("switching to {} failed", config.name());
    }
    if !config.needs_br_netfilter() {
        brnf.release();
    }
    Ok(())
}

fn outer() -> Result<()> {
    cleanup_stale(TAG);
    let rounds = env_usize("BENCH_DP_ROUNDS", 9);
    let secs = env_usize("BENCH_DP_SECS", 1) as f64;
    let lab =
        Lab::create(&LabSpec::new(&format!("{TAG}-{}", std::process::id())).with_vms(2)).context("building the lab")?;
    let host = lab.host_ns().to_string();
    let vm1 = lab.ns_of("vm1");
    let (gw_ip, vm2_ip) = (lab.spec().gw_ipv4, lab.vm("vm2").context("vm2")?.ipv4);
    let mut brnf = BrNetfilter::probe();
    let result = (|| -> Result<()> {
        let mut configs = vec![Config::None, Config::PortIsolation];
        match backend::open(BackendKind::Nftables).and_then(|b| b.available()) {
            Ok(()) => configs.extend([Config::Nftables, Config::NftEmptyChain, Config::NftOifFirst]),
            Err(e) => println!("nftables backend not usable here ({e}): skipped"),
        }
        let can_brnf = brnf.present_before || Path::new(MODPROBE).exists();
        if can_brnf {
            configs.push(Config::BrNetfilter);
            configs.push(Config::Recipe);
        }
        println!(
            "== {NAME}: {rounds} rounds x {} configurations, {secs} s windows after {} ms warm-up; 64-byte frames; loadavg {}",
            configs.len(),
            WARMUP.as_millis(),
            loadavg()
        );
        if brnf.present_before {
            println!("   br_netfilter is present (built in or loaded) before the run: its per-namespace sysctls are set in the lab only");
        }
        // Each configuration must do what it claims.
        for &c in &configs {
            check_stop()?;
            switch(&host, c, &mut brnf)?;
            let w = measure(&vm1, &lab.ns_of("vm2"), SocketAddrV4::new(vm2_ip, PORT), 0.3)?;
            let blocked = w.delivered_pps == 0.0;
            println!(
                "   check {:<40} vm1 -> vm2: {:>9.0} datagrams/s delivered ({})",
                c.label(),
                w.delivered_pps,
                if blocked { "blocked" } else { "open" }
            );
            if blocked != c.isolates() {
                bail!("configuration {} does not behave as expected", c.name());
            }
        }
        let mut results: Vec<Vec<Window>> = vec![Vec::new(); configs.len()];
        for round in 0..rounds {
            for i in rotation(configs.len(), round) {
                check_stop()?;
                switch(&host, configs[i], &mut brnf)?;
                let w = measure(&vm1, lab.gw_ns(), SocketAddrV4::new(gw_ip, PORT), secs)?;
                results[i].push(w);
            }
            eprint!("\r   round {}/{rounds} done", round + 1);
        }
        eprintln!();
        switch(&host, Config::None, &mut brnf)?;
        report(&configs, &results);
        Ok(())
    })();
    brnf.release();
    lab.destroy().context("deleting the lab")?;
    result
}

fn report(configs: &[Config], results: &[Vec<Window>]) {
    let base: Vec<f64> = results[0].iter().map(|w| w.rx_pps).collect();
    println!(
        "\n-- VM -> gateway through the bridge, frames/s received by the gateway (kpps), {} rounds",
        base.len()
    );
    println!(
        "  {:<40} {:>8} {:>8} {:>8}  {:>22}  {:>10} {:>10}",
        "configuration", "median", "p25", "p75", "vs none [paired IQR]", "delivered", "sent"
    );
    let mut ratios = Vec::new();
    for (c, ws) in configs.iter().zip(results) {
        let rx: Vec<f64> = ws.iter().map(|w| w.rx_pps / 1e3).collect();
        let s = summarize(&rx);
        let r = paired_ratio(&rx, &base.iter().map(|b| b / 1e3).collect::<Vec<_>>());
        let d = summarize(&ws.iter().map(|w| w.delivered_pps / 1e3).collect::<Vec<_>>());
        let sent = summarize(&ws.iter().map(|w| w.sent_pps / 1e3).collect::<Vec<_>>());
        let ratio = s.median / (summarize(&base).median / 1e3);
        println!(
            "  {:<40} {:>8.1} {:>8.1} {:>8.1}  {:>7.3}x [{:.3}-{:.3}]  {:>10.1} {:>10.1}",
            c.label(),
            s.median,
            s.p25,
            s.p75,
            ratio,
            r.p25,
            r.p75,
            d.median,
            sent.median
        );
        ratios.push((*c, ratio, r.median));
    }
    println!(
        "  (delivered: datagrams read by the gateway's socket per s; sent: handed to the kernel by the VM per s; kpps)"
    );
    println!("\n-- targets (ratio of medians to no isolation; paired per-round median in parentheses)");
    for (c, ratio, paired) in ratios {
        match c {
            Config::PortIsolation | Config::Nftables => println!(
                "  {:<40} {ratio:.3} ({paired:.3})  (target >= 0.97)  {}",
                c.label(),
                verdict(ratio >= 0.97)
            ),
            Config::NftEmptyChain | Config::NftOifFirst => println!(
                "  {:<40} {ratio:.3} ({paired:.3})  (probe for the nftables backend's rule shape, informative)",
                c.label()
            ),
            Config::BrNetfilter | Config::Recipe => println!(
                "  {:<40} {ratio:.3} ({paired:.3})  cost {:.0}% of the allowed path's pps (informative)",
                c.label(),
                (1.0 - ratio) * 100.0
            ),
            Config::None => {}
        }
    }
    println!("  loadavg at the end: {}", loadavg());
}
