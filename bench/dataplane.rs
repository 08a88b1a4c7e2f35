//! dataplane: packets per second of minimum-size UDP (64-byte Ethernet frames: 18 bytes of
//! payload + 8 UDP + 20 IPv4 + 14 Ethernet + 4 FCS) on the allowed path, VM -> uplink
//! (gateway), with each enforcement against no isolation.
//!
//! Run: `sudo -E cargo bench --bench dataplane` (BENCH_DP_ROUNDS=30, BENCH_DP_SECS=0.25;
//! BENCH_DP_RAW=FILE also writes every window as CSV).
//!
//! A netns lab (bridge isonet, uplink eth1 to the gateway namespace, vm1 on vnet1, vm2 on
//! vnet2). Configurations:
//! - none: no enforcement, bridge-nf-call-* = 0 in the lab's host namespace (as on a host
//!   without br_netfilter);
//! - port-isolation / nftables: the library's backends applied to the lab's bridge
//!   (`Backend::apply` on `reconcile::plan`), bridge-nf-call-* = 0;
//! - br_netfilter only: bridge-nf-call-iptables = 1, no rule;
//! - recipe: bridge-nf-call-iptables = 1 and `iptables -I FORWARD 1 -m physdev
//!   --physdev-in vnet+ --physdev-out vnet+ -j DROP` (the recipe's cost on a rule that the
//!   allowed path does not match: the plain recipe rule `-i BR -o BR -j DROP` would drop
//!   VM -> uplink altogether);
//! - probes: nftables rule shapes in a table of their own (`bench_probe`, not the
//!   backend's), listed in `PROBES`: the bridge forward base chain with no rule (the hook's
//!   cost alone), the backend's first shape (`iif @vm oif @vm`), its lookups swapped, sized
//!   and anonymous sets, one `oif vmap` over every VM port jumping to a per-bridge chain (the
//!   backend's second shape, which the group gate now guards), the same sized, an
//!   `oif <uplink> accept` ahead of it, an `iif . oif` concatenation, 20 bridges' worth of
//!   per-bridge rules against one vmap, the VM ports put in an interface group matched by
//!   `iifgroup`/`oifgroup` (the backend's gate alone, no lookup at all), a netdev
//!   ingress-mark/egress-drop pair on the VM ports, and the same idea turned
//!   around: frames marked where they enter from the uplink (its ingress) or the host (the
//!   bridge device's egress), frames leaving by a VM port dropped unless marked, so that VM ->
//!   uplink crosses no hook at all. By default the empty chain and the vmap shapes run;
//!   `BENCH_DP_CONFIGS=name,...` picks any (`none` is always measured).
//!
//! Each configuration is first checked to enforce what it claims (vm1 -> vm2 datagrams
//! dropped, or delivered for none/br_netfilter). Then, for each direction of the allowed path
//! (`BENCH_DP_DIRS=up|down`, default both: VM -> gateway and gateway -> VM; a shape that
//! tests `oif` first moves lookups from one to the other), traffic runs throughout and every
//! round switches each configuration in under it, in rotating order, measuring a window after
//! 50 ms: a configuration and the baseline of its round are measured a second or two apart.
//! (The per-frame cost on this kind of machine drifts by 10-15% over seconds, correlated from
//! one window to the next; rounds of separate runs per configuration, seconds apart, left
//! +-5% between identical rule sets.) Sender: a thread in one namespace (setns) blasting with
//! sendmmsg (64 datagrams per call), pinned to the last CPU; receiver: a thread in the other
//! polling recvmmsg without sleeping (a sleeping receiver makes the sender pay wake-ups, a
//! cost that varies with how far behind the receiver is), pinned to the first CPU. Figures:
//! frames per second that crossed the bridge (the receiving namespace's eth0 rx_packets) and
//! frames per second of the sender's CPU time (the per-frame cost, insensitive to the share
//! of a CPU a busy machine leaves the sender; see `Traffic`). The target is judged on the
//! median of the per-round ratios of the latter to no isolation, VM -> gateway (the issue's
//! allowed path); gateway -> VM is reported alongside.
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
use bridge_isolation::enforce;
use bridge_isolation::host::state::State;
use bridge_isolation::model::backend::BackendKind;
use bridge_isolation::reconcile;
use bridge_isolation_lab::{Lab, LabSpec};
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
/// Time left between switching a configuration in and measuring it (the switching process
/// exits, caches refill).
const SETTLE: Duration = Duration::from_millis(50);
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
    /// A rule shape of its own table (`PROBES[i]`), measured for a proposal.
    Probe(usize),
}

/// An nftables rule shape measured beside the backend (its own table, `PROBE_TABLE` or a
/// netdev one), with whether it isolates vm1 from vm2.
struct Probe {
    name: &'static str,
    label: &'static str,
    isolates: bool,
    /// The nft script that creates it.
    script: fn() -> String,
}

/// `table bridge bench_probe { <body> }` with the set `vm` of the lab's two VM ports.
fn bridge_probe(body: &str) -> String {
    format!("table bridge {PROBE_TABLE} {{\n{body}\n}}\n")
}

/// The interface group the `nft-devgroup` probe puts the lab's VM ports in: the backend's.
const DEVGROUP: u32 = bridge_isolation::enforce::nftables::GROUP;

const SET_VM: &str = " set vm { type iface_index; elements = { \"vnet1\", \"vnet2\" } }\n";
const FORWARD: &str = " chain forward { type filter hook forward priority -200; policy accept;\n";

/// Extra bridges' worth of per-bridge rules (sets of interface indexes that do not exist in
/// the lab), ahead of the lab bridge's rule: the cost grows with the number of bridges when
/// every bridge has a rule of its own.
const EXTRA_BRIDGES: usize = 19;

fn extra_bridge_sets() -> String {
    (0..EXTRA_BRIDGES)
        .map(|i| {
            let a = 100_000 + 2 * i;
            format!(" set vm_x{i} {{ type iface_index; elements = {{ {a}, {} }} }}\n", a + 1)
        })
        .collect()
}

const PROBES: &[Probe] = &[
    Probe {
        name: "nft-empty-chain",
        label: "probe: nft forward chain, no rule",
        isolates: false,
        script: || bridge_probe(&format!("{SET_VM}{FORWARD} }}")),
    },
    Probe {
        name: "nft-iif-oif",
        label: "probe: `iif @vm oif @vm` (backend's first shape)",
        isolates: true,
        script: || bridge_probe(&format!("{SET_VM}{FORWARD} iif @vm oif @vm counter drop\n }}")),
    },
    Probe {
        name: "nft-oif-first",
        label: "probe: `oif @vm iif @vm`",
        isolates: true,
        script: || bridge_probe(&format!("{SET_VM}{FORWARD} oif @vm iif @vm counter drop\n }}")),
    },
    Probe {
        name: "nft-oif-first-sized",
        label: "probe: `oif @vm iif @vm`, sets `size 1024`",
        isolates: true,
        script: || {
            bridge_probe(&format!(
                " set vm {{ type iface_index; size 1024; elements = {{ \"vnet1\", \"vnet2\" }} }}\n\
                 {FORWARD} oif @vm iif @vm counter drop\n }}"
            ))
        },
    },
    Probe {
        name: "nft-oif-anon",
        label: "probe: `oif {..} iif {..}` anonymous sets",
        isolates: true,
        script: || {
            bridge_probe(&format!(
                "{FORWARD} oif {{ \"vnet1\", \"vnet2\" }} iif {{ \"vnet1\", \"vnet2\" }} counter drop\n }}"
            ))
        },
    },
    Probe {
        name: "nft-oif-vmap",
        label: "probe: `oif vmap @ports` (no gate) -> bridge chain",
        isolates: true,
        script: || {
            bridge_probe(&format!(
                "{SET_VM} map ports {{ type iface_index : verdict; elements = {{ \"vnet1\" : goto br_isonet, \"vnet2\" : goto br_isonet }} }}\n\
                 {FORWARD} oif vmap @ports\n }}\n chain br_isonet {{ iif @vm counter drop comment \"bridge isonet\"\n }}"
            ))
        },
    },
    Probe {
        name: "nft-oif-vmap-sized",
        label: "probe: `oif vmap @ports`, map and set sized",
        isolates: true,
        script: || {
            bridge_probe(
                " set vm { type iface_index; size 1024; elements = { \"vnet1\", \"vnet2\" } }\n\
                 map ports { type iface_index : verdict; size 4096; elements = { \"vnet1\" : goto br_isonet, \"vnet2\" : goto br_isonet } }\n\
                 chain forward { type filter hook forward priority -200; policy accept;\n oif vmap @ports\n }\n\
                 chain br_isonet { iif @vm counter drop comment \"bridge isonet\"\n }",
            )
        },
    },
    Probe {
        name: "nft-uplink-accept",
        label: "probe: `oif eth1 accept` before the vmap",
        isolates: true,
        script: || {
            bridge_probe(&format!(
                "{SET_VM} map ports {{ type iface_index : verdict; elements = {{ \"vnet1\" : goto br_isonet, \"vnet2\" : goto br_isonet }} }}\n\
                 {FORWARD} oif \"eth1\" accept\n oif vmap @ports\n }}\n chain br_isonet {{ iif @vm counter drop comment \"bridge isonet\"\n }}"
            ))
        },
    },
    Probe {
        name: "nft-devgroup",
        label: "probe: `iifgroup G oifgroup G drop`",
        isolates: true,
        script: || {
            bridge_probe(&format!(
                "{FORWARD} meta iifgroup {DEVGROUP} meta oifgroup {DEVGROUP} counter drop\n }}"
            ))
        },
    },
    Probe {
        name: "nft-concat",
        label: "probe: `iif . oif @pairs`",
        isolates: true,
        script: || {
            bridge_probe(&format!(
                " set pairs {{ type iface_index . iface_index; elements = {{ \"vnet1\" . \"vnet2\", \"vnet2\" . \"vnet1\" }} }}\n\
                 {FORWARD} iif . oif @pairs counter drop\n }}"
            ))
        },
    },
    Probe {
        name: "nft-iif-oif-20br",
        label: "probe: `iif @vm oif @vm` x 20 bridges",
        isolates: true,
        script: || {
            let rules: String = (0..EXTRA_BRIDGES)
                .map(|i| format!(" iif @vm_x{i} oif @vm_x{i} counter drop\n"))
                .collect();
            bridge_probe(&format!(
                "{SET_VM}{}{FORWARD}{rules} iif @vm oif @vm counter drop\n }}",
                extra_bridge_sets()
            ))
        },
    },
    Probe {
        name: "nft-oif-vmap-20br",
        label: "probe: `oif vmap @ports`, 20 bridges",
        isolates: true,
        script: || {
            let mut elems = vec![
                "\"vnet1\" : goto br_isonet".to_string(),
                "\"vnet2\" : goto br_isonet".to_string(),
            ];
            let mut chains = String::new();
            for i in 0..EXTRA_BRIDGES {
                let a = 100_000 + 2 * i;
                elems.push(format!("{a} : goto br_x{i}"));
                elems.push(format!("{} : goto br_x{i}", a + 1));
                chains.push_str(&format!(" chain br_x{i} {{ iif @vm_x{i} counter drop\n }}\n"));
            }
            bridge_probe(&format!(
                "{SET_VM}{} map ports {{ type iface_index : verdict; elements = {{ {} }} }}\n\
                 {FORWARD} oif vmap @ports\n }}\n chain br_isonet {{ iif @vm counter drop\n }}\n{chains}",
                extra_bridge_sets(),
                elems.join(", ")
            ))
        },
    },
    Probe {
        name: "netdev-uplink-mark",
        label: "probe: netdev mark at uplink/host, VM egress drop",
        isolates: true,
        script: || {
            format!(
                "table netdev {PROBE_TABLE} {{\n\
                 chain uplink_in {{ type filter hook ingress devices = {{ \"eth1\" }} priority 0; policy accept;\n meta mark set meta mark or 0x40000000\n }}\n\
                 chain host_out {{ type filter hook egress devices = {{ \"isonet\" }} priority 0; policy accept;\n meta mark set meta mark or 0x40000000\n }}\n\
                 chain vm_out {{ type filter hook egress devices = {{ \"vnet1\", \"vnet2\" }} priority 0; policy accept;\n meta mark and 0x40000000 == 0 counter drop\n }}\n}}\n"
            )
        },
    },
    Probe {
        name: "netdev-mark",
        label: "probe: netdev ingress mark + egress drop",
        isolates: true,
        script: || {
            format!(
                "table netdev {PROBE_TABLE} {{\n\
                 chain in {{ type filter hook ingress devices = {{ \"vnet1\", \"vnet2\" }} priority 0; policy accept;\n meta mark set meta mark or 0x40000000\n }}\n\
                 chain out {{ type filter hook egress devices = {{ \"vnet1\", \"vnet2\" }} priority 0; policy accept;\n meta mark and 0x40000000 == 0x40000000 counter drop\n }}\n}}\n"
            )
        },
    },
];

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Probe(i) => PROBES[i].name,
            Config::None => "none",
            Config::PortIsolation => "port-isolation",
            Config::Nftables => "nftables",
            Config::BrNetfilter => "br-netfilter",
            Config::Recipe => "recipe",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Config::Probe(i) => PROBES[i].label,
            Config::None => "no isolation",
            Config::PortIsolation => "port-isolation (kernel flag)",
            Config::Nftables => "nftables (bridge table)",
            Config::BrNetfilter => "br_netfilter on, no rule",
            Config::Recipe => "recipe: br_netfilter + iptables physdev",
        }
    }

    fn all() -> Vec<Config> {
        let mut all = vec![
            Config::None,
            Config::PortIsolation,
            Config::Nftables,
            Config::BrNetfilter,
            Config::Recipe,
        ];
        all.extend((0..PROBES.len()).map(Config::Probe));
        all
    }

    fn from_name(s: &str) -> Option<Config> {
        Config::all().into_iter().find(|c| c.name() == s)
    }

    fn is_nft(self) -> bool {
        matches!(self, Config::Nftables | Config::Probe(_))
    }

    fn needs_br_netfilter(self) -> bool {
        matches!(self, Config::BrNetfilter | Config::Recipe)
    }

    /// Whether vm1 -> vm2 must be blocked.
    fn isolates(self) -> bool {
        match self {
            Config::Probe(i) => PROBES[i].isolates,
            c => matches!(c, Config::PortIsolation | Config::Nftables | Config::Recipe),
        }
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

/// Puts the lab's VM ports in interface group `group` (sysfs: no `ip` process per switch).
fn set_devgroup(group: u32) -> Result<()> {
    for port in ["vnet1", "vnet2"] {
        let path = format!("/sys/class/net/{port}/netdev_group");
        std::fs::write(&path, group.to_string()).with_context(|| format!("writing {path}"))?;
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
    enforce::open(BackendKind::PortIsolation, &driver())?.remove(&plan.bridges)?;
    if enforce::open(BackendKind::Nftables, &driver())
        .and_then(|b| b.available())
        .is_ok()
    {
        enforce::open(BackendKind::Nftables, &driver())?.remove(&plan.bridges)?;
    }
    let _ = nft_script(&format!("delete table bridge {PROBE_TABLE}\n"));
    set_devgroup(0)?;
    let _ = nft_script(&format!("delete table netdev {PROBE_TABLE}\n"));
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
            enforce::open(BackendKind::PortIsolation, &driver())?.apply(&plan)?;
        }
        Config::Nftables => {
            enforce::open(BackendKind::Nftables, &driver())?.apply(&plan)?;
        }
        Config::Probe(i) => {
            nft_script(&(PROBES[i].script)())?;
            if PROBES[i].name == "nft-devgroup" {
                set_devgroup(DEVGROUP)?;
            }
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
    /// Frames received per second of the sending thread's CPU time: the inverse of the
    /// per-frame cost of the whole path (see `Traffic`), whatever share of a CPU the sender
    /// got from a busy machine.
    cpu_pps: f64,
    /// Share of one CPU the sending thread ran during the window.
    cpu_share: f64,
}

/// rx_packets of `ifname` in `dev`, a /proc/.../net/dev file.
fn rx_packets(dev: &str, ifname: &str) -> Result<u64> {
    let text = std::fs::read_to_string(dev).with_context(|| format!("reading {dev}"))?;
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
    bail!("no {ifname} in {dev}")
}

/// Sends minimum-size datagrams to `dst` from namespace `ns` until `stop`; counts them.
fn blaster(
    ns: String,
    dst: SocketAddrV4,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    clock: Arc<AtomicU64>,
) -> Result<()> {
    let mut clk: libc::clockid_t = 0;
    // SAFETY: the calling thread's own CPU clock; clk is a valid out pointer.
    if unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clk) } != 0 {
        bail!("pthread_getcpuclockid failed");
    }
    clock.store(clk as u32 as u64 | 1 << 32, Ordering::SeqCst);
    pin(Role::Sender);
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

/// Receives datagrams on PORT in namespace `ns` until `stop`, polling without ever sleeping;
/// counts them. Publishes its thread id in `tid` once ready.
fn receiver(ns: String, tid: Arc<AtomicU64>, stop: Arc<AtomicBool>, got: Arc<AtomicU64>) -> Result<()> {
    pin(Role::Receiver);
    enter_netns(&ns)?;
    let sock = UdpSocket::bind(("0.0.0.0", PORT))?;
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
    // SAFETY: gettid has no arguments and cannot fail.
    tid.store(unsafe { libc::syscall(libc::SYS_gettid) } as u64, Ordering::SeqCst);
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: valid socket and headers.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n > 0 {
            got.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Which side of the traffic a thread is on, for `pin`.
#[derive(Clone, Copy)]
enum Role {
    Sender,
    Receiver,
}

/// Pins the calling thread: the sender (and the bridge work it carries) on the last CPU, the
/// receiver on the first, so the two never take turns on one CPU and the sender is not
/// migrated mid-window (each move costs it cold caches). No-op on one CPU or with
/// BENCH_DP_PIN=0.
fn pin(role: Role) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 || std::env::var("BENCH_DP_PIN").is_ok_and(|v| v == "0") {
        return;
    }
    let cpu = match role {
        Role::Sender => cpus - 1,
        Role::Receiver => 0,
    };
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it (cpu < CPU_SETSIZE
    // for any machine this runs on) and sched_setaffinity reads it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPU time consumed so far by the thread whose CPU clock is `clk`, in seconds.
fn thread_cpu(clk: libc::clockid_t) -> Result<f64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer; the clock belongs to a thread that is still running.
    if unsafe { libc::clock_gettime(clk, &mut ts) } != 0 {
        bail!("clock_gettime of the sender's CPU clock failed");
    }
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

/// Traffic from one namespace to another, running until `finish`: a sender blasting, a
/// receiver draining. Windows are measured on it while the configuration changes under it,
/// so that the configurations compared are measured a fraction of a second apart rather than
/// seconds (this machine's noise drifts over seconds).
///
/// With veth, everything a frame costs up to the receiving socket's queue (the sender's
/// syscall, IP output, the bridge and its hooks, the receiving side's IP and UDP input) runs
/// in the sending thread's context: each veth transmit queues the frame on the CPU's backlog
/// and the softirq runs when the sending syscall re-enables bottom halves. Without
/// CONFIG_IRQ_TIME_ACCOUNTING that softirq time is the thread's own CPU time, so frames per
/// second of that CPU time measure the per-frame cost even when compilers share the machine
/// (wall-clock pps also moves with the share of a CPU the sender gets).
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    got: Arc<AtomicU64>,
    /// The sender's CPU clock.
    clock: libc::clockid_t,
    /// The receiver's thread id: its /proc/self/task/TID/net/dev is the receiving namespace's.
    rx_tid: u64,
    tx: Option<std::thread::JoinHandle<Result<()>>>,
    rx: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Traffic {
    /// Starts blasting from `src_ns` to `dst` (received in `dst_ns`), and waits out WARMUP.
    fn start(src_ns: &str, dst_ns: &str, dst: SocketAddrV4) -> Result<Traffic> {
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, got) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tid = Arc::new(AtomicU64::new(0));
        let rx = {
            let (ns, tid, stop, got) = (dst_ns.to_string(), tid.clone(), stop.clone(), got.clone());
            std::thread::spawn(move || receiver(ns, tid, stop, got))
        };
        let clock = Arc::new(AtomicU64::new(0));
        let mut traffic = Traffic {
            stop: stop.clone(),
            sent: sent.clone(),
            got,
            clock: 0,
            rx_tid: 0,
            tx: None,
            rx: Some(rx),
        };
        while tid.load(Ordering::SeqCst) == 0 {
            if traffic.rx.as_ref().is_some_and(|h| h.is_finished()) {
                traffic.finish()?;
                bail!("the receiver stopped");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        traffic.rx_tid = tid.load(Ordering::SeqCst);
        traffic.tx = Some({
            let (ns, clock) = (src_ns.to_string(), clock.clone());
            std::thread::spawn(move || blaster(ns, dst, stop, sent, clock))
        });
        std::thread::sleep(WARMUP);
        traffic.clock = match clock.load(Ordering::SeqCst) {
            0 => {
                traffic.finish()?;
                bail!("the sender did not start")
            }
            c => c as u32 as libc::clockid_t,
        };
        Ok(traffic)
    }

    /// The frames received by the receiving namespace's eth0 so far.
    fn rx_packets(&self) -> Result<u64> {
        rx_packets(&format!("/proc/self/task/{}/net/dev", self.rx_tid), "eth0")
    }

    /// Measures the next `secs` seconds.
    fn window(&self, secs: f64) -> Result<Window> {
        let (r0, g0, s0, c0, t0) = (
            self.rx_packets()?,
            self.got.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
            thread_cpu(self.clock)?,
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (r1, g1, s1, c1, dt) = (
            self.rx_packets()?,
            self.got.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
            thread_cpu(self.clock)?,
            t0.elapsed().as_secs_f64(),
        );
        Ok(Window {
            rx_pps: (r1 - r0) as f64 / dt,
            delivered_pps: (g1 - g0) as f64 / dt,
            sent_pps: (s1 - s0) as f64 / dt,
            cpu_pps: (r1 - r0) as f64 / (c1 - c0),
            cpu_share: (c1 - c0) / dt,
        })
    }

    /// Stops the traffic; the sender's or the receiver's error if either failed.
    fn finish(mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        for h in [self.tx.take(), self.rx.take()].into_iter().flatten() {
            h.join().map_err(|_| anyhow::anyhow!("a traffic thread panicked"))??;
        }
        Ok(())
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in [self.tx.take(), self.rx.take()].into_iter().flatten() {
            let _ = h.join();
        }
    }
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

/// Direction of the measured traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// vm1 -> gateway: the bridge forwards from a VM port to the uplink.
    Up,
    /// gateway -> vm1: from the uplink to a VM port.
    Down,
}

impl Dir {
    /// Its name in BENCH_DP_DIRS and in the raw figures.
    fn key(self) -> &'static str {
        match self {
            Dir::Up => "up",
            Dir::Down => "down",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Dir::Up => "VM -> gateway",
            Dir::Down => "gateway -> VM",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Dir::Up => "VM -> gateway (vnet1 -> uplink)",
            Dir::Down => "gateway -> VM (uplink -> vnet1)",
        }
    }
}

/// The configurations of a run: `BENCH_DP_CONFIGS` (names, comma-separated; `none` is
/// always measured, first), else the default set.
fn chosen_configs(nft_ok: bool, can_brnf: bool) -> Result<Vec<Config>> {
    let mut configs = vec![Config::None];
    match std::env::var("BENCH_DP_CONFIGS") {
        Ok(list) if !list.trim().is_empty() => {
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let c = Config::from_name(name).with_context(|| {
                    let names: Vec<_> = Config::all().iter().map(|c| c.name()).collect();
                    format!("unknown configuration {name} (known: {})", names.join(", "))
                })?;
                if c.is_nft() && !nft_ok || c.needs_br_netfilter() && !can_brnf {
                    println!("   {name}: not available here, skipped");
                } else if !configs.contains(&c) {
                    configs.push(c);
                }
            }
        }
        _ => {
            configs.push(Config::PortIsolation);
            if nft_ok {
                configs.push(Config::Nftables);
                configs.extend(
                    [
                        "nft-empty-chain",
                        "nft-oif-vmap",
                        "nft-iif-oif-20br",
                        "nft-oif-vmap-20br",
                    ]
                    .iter()
                    .filter_map(|n| Config::from_name(n)),
                );
            }
            if can_brnf {
                configs.extend([Config::BrNetfilter, Config::Recipe]);
            }
        }
    }
    Ok(configs)
}

/// Whether the running kernel accounts softirq time apart from tasks
/// (`CONFIG_IRQ_TIME_ACCOUNTING=y`), which would leave the bridge's work out of the sender's
/// CPU time; `None` when its configuration cannot be read.
fn irq_time_accounting() -> Option<bool> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let text = std::fs::read_to_string(format!("/boot/config-{}", release.trim()))
        .ok()
        .or_else(|| run_ok("/usr/bin/zcat", &["/proc/config.gz"]).ok())?;
    Some(text.lines().any(|l| l == "CONFIG_IRQ_TIME_ACCOUNTING=y"))
}

fn outer() -> Result<()> {
    cleanup_stale(TAG);
    let rounds = env_usize("BENCH_DP_ROUNDS", 30);
    let secs: f64 = std::env::var("BENCH_DP_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.25);
    let dirs: Vec<Dir> = match std::env::var("BENCH_DP_DIRS").as_deref() {
        Ok("up") => vec![Dir::Up],
        Ok("down") => vec![Dir::Down],
        _ => vec![Dir::Up, Dir::Down],
    };
    let lab =
        Lab::create(&LabSpec::new(&format!("{TAG}-{}", std::process::id())).with_vms(2)).context("building the lab")?;
    let host = lab.host_ns().to_string();
    let vm1 = lab.ns_of("vm1");
    let gw = lab.gw_ns().to_string();
    let (gw_ip, vm1_ip, vm2_ip) = (
        lab.spec().gw_ipv4,
        lab.vm("vm1").context("vm1")?.ipv4,
        lab.vm("vm2").context("vm2")?.ipv4,
    );
    let mut brnf = BrNetfilter::probe();
    let result = (|| -> Result<()> {
        let nft_ok = match enforce::open(BackendKind::Nftables, &driver()).and_then(|b| b.available()) {
            Ok(()) => true,
            Err(e) => {
                println!("nftables backend not usable here ({e}): skipped");
                false
            }
        };
        let can_brnf = brnf.present_before || Path::new(MODPROBE).exists();
        let configs = chosen_configs(nft_ok, can_brnf)?;
        println!(
            "== {NAME}: {rounds} rounds x {} configurations x {} direction(s), {secs} s windows after {} ms warm-up; 64-byte frames; loadavg {}",
            configs.len(),
            dirs.len(),
            WARMUP.as_millis(),
            loadavg()
        );
        if brnf.present_before {
            println!("   br_netfilter is present (built in or loaded) before the run: its per-namespace sysctls are set in the lab only");
        }
        match irq_time_accounting() {
            Some(false) => {}
            Some(true) => println!(
                "   WARNING: CONFIG_IRQ_TIME_ACCOUNTING=y: softirq time is not the sender's CPU time, so the per-CPU figures miss the bridge's work; judge by the wall figures on an idle machine"
            ),
            None => println!("   note: kernel configuration not readable: per-CPU figures assume CONFIG_IRQ_TIME_ACCOUNTING is off"),
        }
        // Each configuration must do what it claims.
        for &c in &configs {
            check_stop()?;
            switch(&host, c, &mut brnf)?;
            let traffic = Traffic::start(&vm1, &lab.ns_of("vm2"), SocketAddrV4::new(vm2_ip, PORT))?;
            let w = traffic.window(0.3)?;
            traffic.finish()?;
            let blocked = w.delivered_pps == 0.0;
            println!(
                "   check {:<44} vm1 -> vm2: {:>9.0} datagrams/s delivered ({})",
                c.label(),
                w.delivered_pps,
                if blocked { "blocked" } else { "open" }
            );
            if blocked != c.isolates() {
                bail!("configuration {} does not behave as expected", c.name());
            }
        }
        // results[d][c]: one window per round. Per direction the traffic runs throughout; each
        // round switches every configuration in (rotating order) under it and measures a
        // window after SETTLE, so a configuration and the baseline it is compared to are
        // measured within a second or two of each other.
        let mut results: Vec<Vec<Vec<Window>>> = vec![vec![Vec::new(); configs.len()]; dirs.len()];
        let mut raw = match std::env::var_os("BENCH_DP_RAW") {
            Some(path) => {
                let mut f = std::fs::File::create(&path).with_context(|| format!("creating {path:?}"))?;
                use std::io::Write;
                writeln!(f, "direction,round,configuration,rx_pps,cpu_pps,cpu_share")?;
                Some(f)
            }
            None => None,
        };
        for (d, &dir) in dirs.iter().enumerate() {
            let traffic = match dir {
                Dir::Up => Traffic::start(&vm1, &gw, SocketAddrV4::new(gw_ip, PORT))?,
                Dir::Down => Traffic::start(&gw, &vm1, SocketAddrV4::new(vm1_ip, PORT))?,
            };
            for round in 0..rounds {
                for i in rotation(configs.len(), round) {
                    check_stop()?;
                    switch(&host, configs[i], &mut brnf)?;
                    std::thread::sleep(SETTLE);
                    let w = traffic.window(secs)?;
                    if let Some(raw) = raw.as_mut() {
                        use std::io::Write;
                        writeln!(
                            raw,
                            "{},{round},{},{:.0},{:.0},{:.3}",
                            dir.key(),
                            configs[i].name(),
                            w.rx_pps,
                            w.cpu_pps,
                            w.cpu_share
                        )?;
                    }
                    results[d][i].push(w);
                }
                eprint!("\r   {}: round {}/{rounds} done", dir.short(), round + 1);
            }
            traffic.finish()?;
            eprintln!();
        }
        switch(&host, Config::None, &mut brnf)?;
        for (d, &dir) in dirs.iter().enumerate() {
            report(dir, &configs, &results[d]);
        }
        println!("  loadavg at the end: {}", loadavg());
        Ok(())
    })();
    brnf.release();
    lab.destroy().context("deleting the lab")?;
    result
}

fn report(dir: Dir, configs: &[Config], results: &[Vec<Window>]) {
    let wall = |w: &Window| w.rx_pps / 1e3;
    let cpu = |w: &Window| w.cpu_pps / 1e3;
    let base_wall: Vec<f64> = results[0].iter().map(wall).collect();
    let base_cpu: Vec<f64> = results[0].iter().map(cpu).collect();
    println!(
        "\n-- {} through the bridge, {} rounds: frames received per second (kpps), and per second of the sender's CPU time",
        dir.label(),
        base_wall.len()
    );
    println!(
        "  {:<44} {:>7} {:>7} {:>7} {:>22}  {:>7} {:>22} {:>6}  {:>7} {:>7}",
        "configuration",
        "wall",
        "p25",
        "p75",
        "paired ratio [IQR]",
        "per-cpu",
        "paired ratio [IQR]",
        "cpu",
        "deliv",
        "sent"
    );
    let mut ratios = Vec::new();
    for (c, ws) in configs.iter().zip(results) {
        let w: Vec<f64> = ws.iter().map(wall).collect();
        let k: Vec<f64> = ws.iter().map(cpu).collect();
        let (sw, sk) = (summarize(&w), summarize(&k));
        let (rw, rk) = (paired_ratio(&w, &base_wall), paired_ratio(&k, &base_cpu));
        let ratio_w = sw.median / summarize(&base_wall).median;
        let ratio_k = sk.median / summarize(&base_cpu).median;
        let share = summarize(&ws.iter().map(|w| w.cpu_share).collect::<Vec<_>>());
        let d = summarize(&ws.iter().map(|w| w.delivered_pps / 1e3).collect::<Vec<_>>());
        let sent = summarize(&ws.iter().map(|w| w.sent_pps / 1e3).collect::<Vec<_>>());
        println!(
            "  {:<44} {:>7.1} {:>7.1} {:>7.1} {:>7.3}x [{:.3}-{:.3}]  {:>7.1} {:>7.3}x [{:.3}-{:.3}] {:>5.0}%  {:>7.1} {:>7.1}",
            c.label(),
            sw.median,
            sw.p25,
            sw.p75,
            rw.median,
            rw.p25,
            rw.p75,
            sk.median,
            rk.median,
            rk.p25,
            rk.p75,
            share.median * 100.0,
            d.median,
            sent.median
        );
        ratios.push((*c, ratio_k, rk.median, ratio_w, rw.median));
    }
    println!(
        "  (paired ratio: median of the per-round ratios to no isolation; wall: frames/s received; per-cpu: frames per second of the sending thread's CPU time, which includes the\n   \
         bridge's softirq work; cpu: median share of a CPU the sender got; deliv: datagrams read by the receiver's\n   \
         socket per s; sent: handed to the kernel by the sender per s; kpps)"
    );
    println!(
        "\n-- {}: per-CPU-time figure against no isolation, median of the per-round ratios (ratio of the medians,\n   \
         and the wall-clock figures, in parentheses)",
        dir.label()
    );
    for (c, ratio, paired, ratio_w, paired_w) in ratios {
        let both = format!("{paired:.3} ({ratio:.3}; wall {paired_w:.3}, {ratio_w:.3})");
        match c {
            Config::PortIsolation | Config::Nftables if dir == Dir::Up => println!(
                "  {:<44} {both:<32}  (target >= 0.97)  {}",
                c.label(),
                verdict(paired >= 0.97)
            ),
            Config::PortIsolation | Config::Nftables => println!(
                "  {:<44} {both:<32}  (the target is on VM -> uplink; informative)",
                c.label()
            ),
            Config::Probe(_) => println!(
                "  {:<44} {both:<32}  (probe of an nftables rule shape, informative)",
                c.label()
            ),
            Config::BrNetfilter | Config::Recipe => println!(
                "  {:<44} {both:<32}  cost {:.0}% of the allowed path's per-frame budget (informative)",
                c.label(),
                (1.0 - paired) * 100.0
            ),
            Config::None => {}
        }
    }
}
