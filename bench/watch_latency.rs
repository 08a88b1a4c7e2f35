//! watch_latency: how fast the resident watcher (`bridge-isolation watch`) repairs what
//! changes outside the hooks, what a burst costs it, and what it costs idle.
//!
//! Run: `sudo -E cargo bench --bench watch_latency` (BENCH_WATCH_ROUNDS=250,
//! BENCH_WATCH_BURST=500, BENCH_WATCH_IDLE=60 seconds by default).
//!
//! One network namespace: bridge `isonet` (uplink `eth1`) recorded as an isolated network in
//! a state file of this run's own, the port-isolation backend, and the watcher started in it
//! (`ip netns exec NS bridge-isolation watch`, the binary bench/run-all.sh installs) with a
//! private D-Bus daemon as its system bus, so its firewalld thread is connected as on a host.
//! A thread of this program enters the namespace and, over its own rtnetlink sockets:
//!
//! - **join**: enslaves a veth made beforehand (`ip link set master`, one request, acked) and
//!   waits for the kernel's notification that the port's flag is set (the watcher's repair),
//!   event-driven (no polling); then takes it off again. Beside it, the enslave request's own
//!   time (sent to acked), the floor of any reaction to it.
//! - **restore**: clears the flag of an isolated port (`bridge link set dev P isolated off`,
//!   one request, acked) and waits for the notification that it is set again.
//! - **burst**: enslaves BENCH_WATCH_BURST veths back to back, then waits until every one
//!   is isolated (notifications; a dump if ours overflowed).
//! - **idle**: BENCH_WATCH_IDLE seconds with nothing happening, from 65 s after the watcher
//!   started (past the one wake-up each of its start-up D-Bus calls' 60 s timeouts makes):
//!   its CPU time and context switches (every thread, /proc), against its backstop (600 s).
//! - **memory**: the watcher's VmRSS and VmHWM after all that.
//! - **metrics**: the watcher writes its metrics into a textfile collector directory of this
//!   run (as on a host with node_exporter; BENCH_WATCH_TEXTFILE=0: none), 1 s after a
//!   repair, so the joins above run beside those writes; after the burst (its ports still
//!   on the bridge), this program times what one write costs (`metrics::write_textfile`,
//!   as the watcher calls it: the report gathered, rendered, written, fsynced, renamed),
//!   and the gathering and rendering alone, 50 times each.
//!
//! Rounds are spaced by 2-7 ms (varying), so each join finds the watcher asleep, as a tap
//! joining on a host does; the p99 is of at least 200 rounds.

mod common;

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bridge_isolation::sys::netlink::{wait_readable, LinkEvents, RouteSocket, RTM_NEWLINK};
use common::*;
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

const NAME: &str = "watch_latency";
const TAG: &str = "bwl";
const DBUS_DAEMON: &str = "/usr/bin/dbus-daemon";

fn main() -> ExitCode {
    if !may_run(NAME, &[IP, DBUS_DAEMON]) {
        return ExitCode::SUCCESS;
    }
    catch_signals();
    cleanup_stale(TAG);
    match outer() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The watcher process and the private bus it uses; both ended on drop.
struct Daemons {
    watcher: Child,
    bus: Child,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for child in [&mut self.watcher, &mut self.bus] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn outer() -> Result<()> {
    let rounds = env_num("BENCH_WATCH_ROUNDS", 250).max(200);
    let burst = env_num("BENCH_WATCH_BURST", 500);
    let textfile = env_num("BENCH_WATCH_TEXTFILE", 1) != 0;
    let idle = Duration::from_secs(env_num("BENCH_WATCH_IDLE", 60) as u64);
    println!("{NAME}: load average at start {}", loadavg());
    let ns = Netns::add(&format!("{TAG}-{}-host", std::process::id()))?;
    let scratch = scratch_dir(TAG)?;
    let state_dir = scratch.path().join("state");
    std::fs::create_dir(&state_dir)?;
    // The state a network setup through the hooks leaves, with the backend recorded.
    std::fs::write(
        state_dir.join("state.json"),
        serde_json::to_vec(&serde_json::json!({
            "version": 2, "backend": "port-isolation",
            "networks": {"isonet": policy("isonet", "eth1")}, "released": [],
        }))?,
    )?;
    let mut topology = String::from(
        "link add isonet type bridge stp_state 0 forward_delay 0\nlink set isonet up\n\
         link add eth1 type veth peer name gw0\nlink set eth1 master isonet\nlink set eth1 up\n\
         link add vr0 type veth peer name pr0\nlink set vr0 master isonet\nlink set vr0 up\n",
    );
    // Up, as libvirt brings a tap up: the kernel tells a bridge port's flag changing only
    // for a link that is up (netdev_state_change), and the bench waits to be told.
    for i in 0..4 {
        topology += &format!("link add vj{i} type veth peer name pj{i}\nlink set vj{i} up\n");
    }
    for i in 0..burst {
        topology += &format!("link add vb{i} type veth peer name pb{i}\nlink set vb{i} up\n");
    }
    ip_batch(&ns.name, &topology)?;

    let bus_socket = scratch.path().join("bus");
    let address = format!("unix:path={}", bus_socket.display());
    let bus = Command::new(DBUS_DAEMON)
        .args(["--session", "--nofork", "--nopidfile", "--address", &address])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting dbus-daemon")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bus_socket.exists() {
        if Instant::now() > deadline {
            bail!("dbus-daemon made no socket at {}", bus_socket.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let cli = bin_dir().join("bridge-isolation");
    let log = scratch.path().join("watch.log");
    let textfile_dir = scratch.path().join("textfile_collector");
    if textfile {
        std::fs::create_dir(&textfile_dir)?;
    }
    let watcher = Command::new(IP)
        .args(["netns", "exec", &ns.name])
        .arg(&cli)
        .arg("watch")
        .env("BRIDGE_ISOLATION_STATE_DIR", &state_dir)
        .env("BRIDGE_ISOLATION_CONFIG", "/nonexistent")
        .env("BRIDGE_ISOLATION_BACKEND", "port-isolation")
        .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
        .env("BRIDGE_ISOLATION_METRICS_TEXTFILE_DIR", &textfile_dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting the watcher")?;
    let started = Instant::now();
    let daemons = Daemons { watcher, bus };
    let pid = daemons.watcher.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)?.contains("watching firewalld on the system bus") {
        check_stop()?;
        if Instant::now() > deadline {
            bail!("the watcher did not start: {}", std::fs::read_to_string(&log)?);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "watcher: {} (pid {pid}), port-isolation backend, {} threads, system bus: a private dbus-daemon",
        cli.display(),
        threads(pid)
    );

    let name = ns.name.clone();
    let (state, prom) = (state_dir.clone(), textfile_dir.clone());
    let (figures, metrics) = std::thread::spawn(move || -> Result<(Figures, Option<[Latency; 2]>)> {
        enter_netns(&name)?;
        let figures = measure(rounds, burst, pid)?;
        let metrics = if textfile {
            Some(metrics_cost(&state, &prom)?)
        } else {
            None
        };
        Ok((figures, metrics))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the measuring thread panicked"))??;

    // Idle: nothing happens in the namespace. From 5 s after the burst (its last lines) and
    // 65 s after the watcher started: each D-Bus call it made at start (Hello, AddMatch,
    // NameHasOwner) leaves a timer of its 60 s timeout that wakes the bus threads once.
    std::thread::sleep(Duration::from_secs(5));
    while started.elapsed() < Duration::from_secs(65) {
        check_stop()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = std::fs::read_to_string(&log)?;
    let repairs = text.lines().filter(|l| l.contains(" isolated")).count();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("] error: ")).collect();
    if !errors.is_empty() {
        bail!("the watcher logged errors: {errors:#?}");
    }
    let by_thread0 = switches_by_thread(pid)?;
    let (cpu0, sw0) = (cpu_ticks(pid)?, switches(pid)?);
    let t0 = Instant::now();
    while t0.elapsed() < idle {
        check_stop()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    let secs = t0.elapsed().as_secs_f64();
    let (cpu1, sw1) = (cpu_ticks(pid)?, switches(pid)?);
    let woke: Vec<String> = switches_by_thread(pid)?
        .into_iter()
        .filter_map(|(tid, (name, n))| {
            let before = by_thread0.get(&tid).map_or(0, |(_, b)| *b);
            (n > before).then(|| format!("{name} (tid {tid}): {}", n - before))
        })
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (cpu1 - cpu0) as f64 / hz;
    let (rss, hwm) = (status_kib(pid, "VmRSS")?, status_kib(pid, "VmHWM")?);
    let idle_threads = threads(pid);
    drop(daemons);

    let ms = |d: f64| format!("{:.2} ms", d * 1e3);
    println!();
    println!("| what | figure | goal |");
    println!("|---|---|---|");
    let n = figures.nice;
    for (at, j) in [0, n].iter().zip(&figures.join) {
        println!(
            "| tap joins the isolated bridge -> flag set, watcher at nice {at} ({} joins): median / p99 / max | **{}** / **{}** / {} | p99 <= 5 ms: {} |",
            j.n,
            ms(j.median),
            ms(j.p99),
            ms(j.max),
            verdict(j.p99 <= 0.005)
        );
    }
    let f = &figures.enslave;
    println!(
        "| the enslave request alone (sent -> acked), all those rounds: median / p99; join at nice {n} / it, medians | {} / {}; {:.1}x |",
        ms(f.median),
        ms(f.p99),
        figures.join[1].median / f.median
    );
    for (at, r) in [0, n].iter().zip(&figures.restore) {
        println!(
            "| flag cleared by hand -> set again, watcher at nice {at} ({} rounds): median / p99 / max | **{}** / **{}** / {} | |",
            r.n,
            ms(r.median),
            ms(r.p99),
            ms(r.max)
        );
    }
    println!(
        "| {burst} taps join in a burst (enslaved back to back in {}): all isolated, from the first join / from the last | **{}** / {} | all isolated: {} |",
        ms(figures.burst_sent),
        ms(figures.burst_converged),
        ms(figures.burst_converged - figures.burst_sent),
        verdict(figures.burst_all)
    );
    println!(
        "| idle {secs:.0} s: context switches (all {} threads) / CPU | **{}** / **{:.2} s = {:.3}%** | none but the backstop (600 s), 0.0%: {} |",
        idle_threads,
        sw1 - sw0,
        cpu,
        cpu / secs * 100.0,
        verdict(sw1 == sw0 && cpu == 0.0)
    );
    if !woke.is_empty() {
        println!("| idle: the threads that woke | {} | |", woke.join(", "));
    }
    println!(
        "| resident memory after it all: VmRSS / VmHWM (peak) | **{:.1} MiB** / {:.1} MiB | <= 8 MiB: {} |",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        verdict(hwm <= 8 * 1024)
    );
    println!("| repair lines the watcher logged | {repairs} | one per port repaired |");
    match metrics {
        Some([write, gather]) => println!(
            "| metrics (textfile collector directory on; {burst} + 2 ports on the bridge): one textfile write / gathering and rendering alone, {} times: median / p99 | **{}** / {}; {} / {} | written 1 s after a repair, never before it |",
            write.n,
            ms(write.median),
            ms(write.p99),
            ms(gather.median),
            ms(gather.p99)
        ),
        None => println!("| metrics | not written (BENCH_WATCH_TEXTFILE=0) | |"),
    }
    println!("\n{NAME}: load average at end {}", loadavg());
    Ok(())
}

/// What the watcher's metrics cost, in this namespace, for the state in `state_dir`: 50
/// writes into `textfile_dir` as the watcher makes them, then 50 gatherings and renderings
/// alone (no file).
fn metrics_cost(state_dir: &Path, textfile_dir: &Path) -> Result<[Latency; 2]> {
    use bridge_isolation::app::metrics;
    // The overrides the watcher got; this thread alone runs now.
    std::env::set_var("BRIDGE_ISOLATION_STATE_DIR", state_dir);
    std::env::set_var("BRIDGE_ISOLATION_CONFIG", "/nonexistent");
    std::env::set_var("BRIDGE_ISOLATION_BACKEND", "port-isolation");
    std::env::set_var("BRIDGE_ISOLATION_METRICS_TEXTFILE_DIR", textfile_dir);
    let settings = bridge_isolation::host::config::Settings::from_env()?;
    let path = textfile_dir.join(metrics::TEXTFILE);
    let mut write = Vec::new();
    let mut gather = Vec::new();
    for _ in 0..50 {
        check_stop()?;
        let before = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let t = Instant::now();
        metrics::write_textfile(&settings);
        write.push(t.elapsed().as_secs_f64());
        if std::fs::metadata(&path).and_then(|m| m.modified()).ok() == before {
            bail!("{} was not rewritten", path.display());
        }
        let t = Instant::now();
        let text = metrics::render(&metrics::Metrics::gather(&settings).families());
        gather.push(t.elapsed().as_secs_f64());
        if !text.contains("bridge_isolation_ports{") {
            bail!("no port figures in the metrics:\n{text}");
        }
    }
    Ok([latency(write), latency(gather)])
}

/// Latencies of one kind, in seconds.
#[derive(Default)]
struct Latency {
    n: usize,
    median: f64,
    p99: f64,
    max: f64,
}

fn latency(mut v: Vec<f64>) -> Latency {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Latency {
        n: v.len(),
        median: summarize(&v).median,
        p99: at(0.99),
        max: *v.last().unwrap_or(&f64::NAN),
    }
}

struct Figures {
    /// The unit's niceness, beside 0.
    nice: i32,
    /// At niceness 0, then at the unit's.
    join: [Latency; 2],
    enslave: Latency,
    /// At niceness 0, then at the unit's.
    restore: [Latency; 2],
    burst_sent: f64,
    burst_converged: f64,
    burst_all: bool,
}

/// A request socket for what `ip link set` does.
struct Links {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Links {
    fn open() -> Result<Links> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Links {
            socket,
            seq: 0,
            buf: vec![0; 1 << 16],
        })
    }

    /// `ip link set dev INDEX master MASTER` (0: nomaster), acked.
    fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes.push(LinkAttribute::Controller(master));
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(RouteNetlinkMessage::NewLink(link)));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[..n])
                .map_err(|e| anyhow::anyhow!("decode: {e}"))?;
            if reply.header.sequence_number != self.seq {
                continue;
            }
            if let NetlinkPayload::Error(e) = reply.payload {
                return match e.code {
                    None => Ok(()),
                    Some(c) => bail!("set master: {}", std::io::Error::from_raw_os_error(-c.get())),
                };
            }
        }
    }
}

/// Bridge ports whose AF_BRIDGE notification says the isolated flag is set, among what is
/// queued on `events` (the indexes in `want` only).
fn flagged(events: &mut LinkEvents, want: &BTreeSet<u32>, found: &mut BTreeSet<u32>) -> Result<bool> {
    let drained = events.drain(|kind, payload| {
        if kind != RTM_NEWLINK || payload.len() < 16 || payload[0] != libc::AF_BRIDGE as u8 {
            return;
        }
        let index = u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]);
        if !want.contains(&index) {
            return;
        }
        for nla in NlasIterator::new(&payload[16..]).map_while(std::result::Result::ok) {
            // IFLA_PROTINFO (12, nested) > IFLA_BRPORT_ISOLATED (33).
            if nla.kind() & 0x3fff == 12 {
                let on = NlasIterator::new(nla.value())
                    .map_while(std::result::Result::ok)
                    .any(|a| a.kind() == 33 && a.value().first() == Some(&1));
                if on {
                    found.insert(index);
                }
            }
        }
    })?;
    Ok(!drained.lost)
}

/// Waits (poll, no spinning) until the flag of `index` is reported set; the time it was read.
fn until_flagged(events: &mut LinkEvents, index: u32, limit: Duration) -> Result<Instant> {
    let want = BTreeSet::from([index]);
    let mut found = BTreeSet::new();
    let deadline = Instant::now() + limit;
    loop {
        flagged(events, &want, &mut found)?;
        if !found.is_empty() {
            return Ok(Instant::now());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("ifindex {index}: not isolated within {limit:?}");
        }
        wait_readable(&[events.as_raw_fd()], Some(left))?;
    }
}

fn index(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => bail!("no link {name}"),
        i => Ok(i),
    }
}

/// Spacing between rounds: 2-7 ms, varying.
fn pause(round: usize) {
    std::thread::sleep(Duration::from_micros(2000 + (round as u64 * 7919) % 5000));
}

/// The niceness the unit gives the watcher (`Nice=` of packaging/bridge-isolation-watch.service).
fn unit_nice() -> i32 {
    include_str!("../packaging/bridge-isolation-watch.service")
        .lines()
        .find_map(|l| l.strip_prefix("Nice="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Sets the niceness of thread `tid` (the watcher's link thread is its main thread).
fn renice(tid: u32, nice: i32) -> Result<()> {
    // SAFETY: setpriority on a thread id with a plain value.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setpriority");
    }
    Ok(())
}

/// Which of the two niceness values round `round` runs at: alternating, so load drifts hit
/// both alike.
fn nice_of(round: usize) -> usize {
    round % 2
}

fn measure(rounds: usize, burst: usize, watcher: u32) -> Result<Figures> {
    let nices = [0, unit_nice()];
    let bridge = index("isonet")?;
    let mut links = Links::open()?;
    let mut events = LinkEvents::open(32 << 20)?;
    let mut flags = RouteSocket::open()?;
    let warmup = 10;

    // join
    let taps: Vec<u32> = (0..4).map(|i| index(&format!("vj{i}"))).collect::<Result<_>>()?;
    let (mut join, mut enslave) = ([Vec::new(), Vec::new()], Vec::new());
    for round in 0..2 * rounds + warmup {
        check_stop()?;
        renice(watcher, nices[nice_of(round)])?;
        let tap = taps[round % taps.len()];
        flagged(&mut events, &BTreeSet::new(), &mut BTreeSet::new())?;
        let t0 = Instant::now();
        links.set_master(tap, bridge)?;
        let acked = t0.elapsed();
        let done = until_flagged(&mut events, tap, Duration::from_secs(5))?;
        if round >= warmup {
            join[nice_of(round)].push((done - t0).as_secs_f64());
            enslave.push(acked.as_secs_f64());
        }
        links.set_master(tap, 0)?;
        pause(round);
    }

    // restore
    let port = index("vr0")?;
    until_flagged(&mut events, port, Duration::from_secs(5)).ok();
    let mut restore = [Vec::new(), Vec::new()];
    for round in 0..2 * rounds + warmup {
        check_stop()?;
        renice(watcher, nices[nice_of(round)])?;
        flagged(&mut events, &BTreeSet::new(), &mut BTreeSet::new())?;
        let t0 = Instant::now();
        flags.set_isolated(port, false)?;
        let done = until_flagged(&mut events, port, Duration::from_secs(5))?;
        if round >= warmup {
            restore[nice_of(round)].push((done - t0).as_secs_f64());
        }
        pause(round);
    }

    // burst
    let members: Vec<u32> = (0..burst).map(|i| index(&format!("vb{i}"))).collect::<Result<_>>()?;
    let want: BTreeSet<u32> = members.iter().copied().collect();
    std::thread::sleep(Duration::from_millis(100));
    flagged(&mut events, &BTreeSet::new(), &mut BTreeSet::new())?;
    let mut found = BTreeSet::new();
    let mut complete = true;
    let t0 = Instant::now();
    for &m in &members {
        links.set_master(m, bridge)?;
    }
    let sent = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    while found.len() < want.len() && Instant::now() < deadline {
        complete &= flagged(&mut events, &want, &mut found)?;
        if !complete {
            break;
        }
        if found.len() < want.len() {
            wait_readable(&[events.as_raw_fd()], Some(Duration::from_millis(100)))?;
        }
    }
    if !complete {
        // Our own socket overflowed: read the flags instead, every 2 ms.
        while Instant::now() < deadline {
            let live = bridge_isolation::sys::bridge::snapshot()?;
            let on = live
                .ports("isonet")
                .unwrap_or_default()
                .iter()
                .filter(|p| want.contains(&p.ifindex) && p.isolated == Some(true))
                .count();
            if on == want.len() {
                found = want.clone();
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let converged = t0.elapsed();
    Ok(Figures {
        nice: nices[1],
        join: join.map(latency),
        enslave: latency(enslave),
        restore: restore.map(latency),
        burst_sent: sent.as_secs_f64(),
        burst_converged: converged.as_secs_f64(),
        burst_all: found.len() == want.len(),
    })
}

/// utime + stime of every thread of `pid`, in clock ticks (/proc/PID/stat, fields 14, 15).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// Voluntary and involuntary context switches of every thread of `pid`.
fn switches(pid: u32) -> Result<u64> {
    Ok(switches_by_thread(pid)?.values().map(|(_, n)| n).sum())
}

/// Per thread (by tid): its name and its context switches, voluntary and not.
fn switches_by_thread(pid: u32) -> Result<std::collections::BTreeMap<u32, (String, u64)>> {
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let name = std::fs::read_to_string(task.path().join("comm"))?.trim().to_string();
        let mut n = 0;
        for line in std::fs::read_to_string(task.path().join("status"))?.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                n += v.trim().parse::<u64>()?;
            }
        }
        out.insert(tid, (name, n));
    }
    Ok(out)
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// A `kB` line of /proc/PID/status.
fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .with_context(|| format!("no {key}"))?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}
