//! Measuring a reachability matrix: every ordered pair of endpoints, four probes each, all
//! at once, failed probes retried once.
//!
//! IPv4 and IPv6 are `ping -c 1 -W 1` processes (one per probe, all spawned before any is
//! waited for); ARP and raw frames are sent and received in-process (see `frame`). Before
//! each round the neighbour caches of every namespace are flushed, so each ping has to
//! resolve its destination by ARP or neighbour discovery through the bridge. Probes of the
//! same round may still resolve each other's addresses (a ping from A to B teaches B about
//! A); that cannot turn a blocked path into a pass, as ping needs traffic both ways.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::frame::{probe_frames, Pair};
use super::matrix::{Matrix, Protocol};
use super::spec::Endpoint;
use super::tools::{show, IP, PING};

/// Rounds of probing: a probe that fails in the first round is tried once more.
const ROUNDS: usize = 2;
/// How long a probe waits for its answer, in seconds (ping's `-W`).
const PROBE_TIMEOUT_SECS: u64 = 1;
/// How long a ping process may live before it is killed and the round fails.
const PROCESS_DEADLINE: Duration = Duration::from_secs(10);

/// Probes every ordered pair of `endpoints` on every protocol.
pub(crate) fn measure(endpoints: &[Endpoint]) -> Result<Matrix> {
    let mut matrix = Matrix::new(endpoints.iter().map(|e| e.name.clone()).collect());
    let mut pending: Vec<(Pair, Protocol)> = Vec::new();
    for src in 0..endpoints.len() {
        for dst in 0..endpoints.len() {
            if src != dst {
                pending.extend(Protocol::ALL.iter().map(|&p| ((src, dst), p)));
            }
        }
    }
    for round in 1..=ROUNDS {
        if pending.is_empty() {
            break;
        }
        flush_neighbours(endpoints)?;
        let passed = run_round(endpoints, &pending)?;
        let mut failed = Vec::new();
        for (&((src, dst), proto), pass) in pending.iter().zip(passed) {
            if pass || round == ROUNDS {
                matrix.set(&endpoints[src].name, &endpoints[dst].name, proto, pass);
            }
            if !pass {
                failed.push(((src, dst), proto));
            }
        }
        log::debug!("probe round {round}: {} of {} failed", failed.len(), pending.len());
        pending = failed;
    }
    Ok(matrix)
}

/// Runs `probes` concurrently; returns pass/fail aligned with them.
fn run_round(endpoints: &[Endpoint], probes: &[(Pair, Protocol)]) -> Result<Vec<bool>> {
    let of = |wanted: Protocol| -> Vec<(usize, Pair)> {
        probes
            .iter()
            .enumerate()
            .filter(|(_, (_, p))| *p == wanted)
            .map(|(i, (pair, _))| (i, *pair))
            .collect()
    };
    let pings: Vec<(usize, Pair, Protocol)> = probes
        .iter()
        .enumerate()
        .filter(|(_, (_, p))| matches!(p, Protocol::Ipv4 | Protocol::Ipv6))
        .map(|(i, (pair, p))| (i, *pair, *p))
        .collect();
    let (arp, raw) = (of(Protocol::Arp), of(Protocol::Raw));

    let mut children = Vec::new();
    for &(_, (src, dst), proto) in &pings {
        match spawn_ping(&endpoints[src], &endpoints[dst], proto) {
            Ok(child) => children.push(child),
            Err(e) => {
                reap(children);
                return Err(e);
            }
        }
    }
    let arp_pairs: Vec<Pair> = arp.iter().map(|(_, p)| *p).collect();
    let raw_pairs: Vec<Pair> = raw.iter().map(|(_, p)| *p).collect();
    let timeout = Duration::from_secs(PROBE_TIMEOUT_SECS);
    let frames = probe_frames(endpoints, &arp_pairs, &raw_pairs, timeout);
    let ping_results = wait_pings(children)?;
    let (arp_pass, raw_pass) = frames?;

    let mut passed = vec![false; probes.len()];
    for ((i, _, _), pass) in pings.iter().zip(ping_results) {
        passed[*i] = pass;
    }
    for ((i, _), pass) in arp.iter().zip(arp_pass).chain(raw.iter().zip(raw_pass)) {
        passed[*i] = pass;
    }
    Ok(passed)
}

/// A running `ping` from `src` to `dst`, with its command line for messages.
struct Ping {
    /// The `ip netns exec ... ping` process.
    child: Child,
    /// Its command line.
    line: String,
}

/// Starts `ip netns exec SRC ping -c 1 -W 1 -q TARGET`; an IPv6 target is `dst`'s
/// link-local address scoped to `src`'s interface.
fn spawn_ping(src: &Endpoint, dst: &Endpoint, proto: Protocol) -> Result<Ping> {
    let target = match proto {
        Protocol::Ipv6 => format!("{}%{}", dst.ipv6(), src.ifname),
        _ => dst.ipv4.to_string(),
    };
    let wait = PROBE_TIMEOUT_SECS.to_string();
    let args = ["netns", "exec", &src.ns, PING, "-c", "1", "-W", &wait, "-q", &target];
    let line = show(IP, &args);
    let child = Command::new(IP)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {line}"))?;
    Ok(Ping { child, line })
}

/// Waits for every ping: exit 0 is a pass, 1 (no reply) is blocked, anything else (bad
/// address, missing interface, no route) is an error, not a silent "blocked".
fn wait_pings(mut pings: Vec<Ping>) -> Result<Vec<bool>> {
    let deadline = Instant::now() + PROCESS_DEADLINE;
    let mut codes: Vec<Option<i32>> = vec![None; pings.len()];
    loop {
        let mut running = false;
        for (ping, code) in pings.iter_mut().zip(codes.iter_mut()) {
            if code.is_some() {
                continue;
            }
            match ping.child.try_wait() {
                Ok(Some(status)) => *code = Some(status.code().unwrap_or(-1)),
                Ok(None) => running = true,
                Err(e) => {
                    reap(pings);
                    return Err(e).context("waiting for ping");
                }
            }
        }
        if !running {
            break;
        }
        if Instant::now() > deadline {
            reap(pings);
            bail!("ping probes still running after {PROCESS_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut results = Vec::with_capacity(pings.len());
    for (ping, code) in pings.iter_mut().zip(codes) {
        match code {
            Some(0) => results.push(true),
            Some(1) => results.push(false),
            other => {
                let mut stderr = String::new();
                if let Some(mut pipe) = ping.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                bail!("{} failed (exit {:?}): {}", ping.line, other, stderr.trim());
            }
        }
    }
    Ok(results)
}

/// Kills and waits for pings abandoned after an error.
fn reap(pings: Vec<Ping>) {
    for mut ping in pings {
        let _ = ping.child.kill();
        let _ = ping.child.wait();
    }
}

/// `ip -n NS neigh flush all` in every endpoint's namespace, concurrently.
fn flush_neighbours(endpoints: &[Endpoint]) -> Result<()> {
    let mut namespaces: Vec<&str> = endpoints.iter().map(|e| e.ns.as_str()).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    let mut children = Vec::new();
    for ns in namespaces {
        let args = ["-n", ns, "neigh", "flush", "all"];
        let child = Command::new(IP)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", show(IP, &args)));
        children.push((show(IP, &args), child));
    }
    let mut first_error = None;
    for (line, child) in children {
        let result = child.and_then(|c| {
            let out = c.wait_with_output().context("waiting for ip")?;
            if !out.status.success() {
                bail!("{line} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(())
        });
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
