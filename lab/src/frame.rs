//! In-process ARP and raw-ethertype probes over AF_PACKET sockets.
//!
//! One thread per endpoint enters the endpoint's namespace, binds two packet sockets to
//! its interface (ARP, and [`RAW_ETHERTYPE`]) and reports ready. Only when every thread is
//! ready does any of them send, so every receiver listens before the first frame leaves.
//! Then each thread sends its ARP requests (broadcast, as the kernel would) and its raw
//! frames (unicast to the destination MAC, carrying a random nonce), and collects ARP
//! replies addressed to it and nonces sent to it, until it has all it waits for or the
//! deadline passes.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::entropy::random_u64;
use super::mac::Mac;
use super::netns;
use super::spec::Endpoint;

/// IEEE 802 "local experimental" ethertype 1, carried by raw probes.
pub const RAW_ETHERTYPE: u16 = 0x88b5;
/// Ethertype of ARP.
const ARP_ETHERTYPE: u16 = 0x0806;
/// Marks the payload of a raw probe, before its 8-byte nonce.
const MAGIC: &[u8; 8] = b"BRISOLAB";
/// Minimum Ethernet frame length without FCS.
const FRAME_LEN: usize = 60;
/// The Ethernet broadcast address.
const BROADCAST: Mac = [0xff; 6];
/// How long threads may take to open their sockets.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A probe between two endpoints, by index into the endpoint list.
pub(crate) type Pair = (usize, usize);

/// What one endpoint sends and waits for in a round.
#[derive(Default)]
struct Task {
    /// (address, MAC) of endpoints it asks for by ARP.
    arp_targets: Vec<(Ipv4Addr, Mac)>,
    /// (destination MAC, nonce) of raw frames it sends.
    raw_sends: Vec<(Mac, u64)>,
    /// Nonces of raw frames it should receive.
    raw_expected: HashSet<u64>,
}

/// What one endpoint saw in a round.
#[derive(Default)]
struct Report {
    /// (sender address, sender MAC) of ARP replies addressed to it.
    arp_answers: HashSet<(Ipv4Addr, Mac)>,
    /// Nonces of raw frames addressed to it.
    raw_received: HashSet<u64>,
}

/// Runs ARP probes for `arp` pairs and raw probes for `raw` pairs at once, waiting at most
/// `timeout` for answers; returns pass/fail aligned with each list.
pub(crate) fn probe_frames(
    endpoints: &[Endpoint],
    arp: &[Pair],
    raw: &[Pair],
    timeout: Duration,
) -> Result<(Vec<bool>, Vec<bool>)> {
    let nonces: Vec<u64> = raw.iter().map(|_| random_u64()).collect();
    let mut tasks: Vec<Task> = endpoints.iter().map(|_| Task::default()).collect();
    for &(src, dst) in arp {
        tasks[src].arp_targets.push((endpoints[dst].ipv4, endpoints[dst].mac));
    }
    for (&(src, dst), &nonce) in raw.iter().zip(&nonces) {
        tasks[src].raw_sends.push((endpoints[dst].mac, nonce));
        tasks[dst].raw_expected.insert(nonce);
    }
    let reports = run_stations(endpoints, tasks, timeout)?;
    let arp_pass = arp
        .iter()
        .map(|&(src, dst)| {
            let want = (endpoints[dst].ipv4, endpoints[dst].mac);
            reports[src].arp_answers.contains(&want)
        })
        .collect();
    let raw_pass = raw
        .iter()
        .zip(&nonces)
        .map(|(&(_, dst), nonce)| reports[dst].raw_received.contains(nonce))
        .collect();
    Ok((arp_pass, raw_pass))
}

/// Runs one thread per endpoint with work to do; returns a report per endpoint.
fn run_stations(endpoints: &[Endpoint], tasks: Vec<Task>, timeout: Duration) -> Result<Vec<Report>> {
    // Open every namespace first, so a missing one fails before any thread starts.
    let mut jobs = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let idle = task.arp_targets.is_empty() && task.raw_sends.is_empty() && task.raw_expected.is_empty();
        if !idle {
            jobs.push((i, netns::open(&endpoints[i].ns)?, task));
        }
    }
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut go = Vec::new();
    let mut threads: Vec<(usize, JoinHandle<Result<Report>>)> = Vec::new();
    for (i, handle, task) in jobs {
        let endpoint = endpoints[i].clone();
        let ready = ready_tx.clone();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name(format!("probe-{}", endpoint.name))
            .spawn(move || station(handle, &endpoint, &task, timeout, ready, go_rx));
        match spawned {
            Ok(t) => {
                go.push(go_tx);
                threads.push((i, t));
            }
            // Dropping `go` makes the threads already started give up.
            Err(e) => return Err(e).context("cannot spawn a probe thread"),
        }
    }
    drop(ready_tx);
    for _ in 0..threads.len() {
        // Each thread reports once, after it opened its sockets or failed to.
        if ready_rx.recv_timeout(SETUP_TIMEOUT).is_err() {
            break;
        }
    }
    for tx in &go {
        let _ = tx.send(());
    }
    let mut reports: Vec<Report> = endpoints.iter().map(|_| Report::default()).collect();
    let mut first_error = None;
    for (i, thread) in threads {
        let result = thread
            .join()
            .map_err(|_| anyhow!("probe thread of {} panicked", endpoints[i].name))
            .and_then(|r| r);
        match result {
            Ok(report) => reports[i] = report,
            Err(e) => {
                first_error.get_or_insert(e.context(format!("probing from {}", endpoints[i].name)));
            }
        }
    }
    first_error.map_or(Ok(reports), Err)
}

/// The body of one endpoint's thread.
fn station(
    handle: File,
    me: &Endpoint,
    task: &Task,
    timeout: Duration,
    ready: mpsc::Sender<()>,
    go: mpsc::Receiver<()>,
) -> Result<Report> {
    let sockets = netns::enter(&handle).and_then(|()| Sockets::open(&me.ifname));
    let _ = ready.send(());
    if go.recv().is_err() {
        bail!("probe round abandoned");
    }
    let sockets = sockets?;
    for &(ip, _) in &task.arp_targets {
        sockets.arp.send(&arp_request(me.mac, me.ipv4, ip))?;
    }
    for &(mac, nonce) in &task.raw_sends {
        sockets.raw.send(&raw_frame(mac, me.mac, nonce))?;
    }
    let mut report = Report::default();
    let deadline = Instant::now() + timeout;
    let done = |r: &Report| {
        r.arp_answers.len() >= task.arp_targets.len() && task.raw_expected.iter().all(|n| r.raw_received.contains(n))
    };
    let mut buf = [0u8; 2048];
    while !done(&report) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let (arp_ready, raw_ready) = sockets.wait(left)?;
        if arp_ready {
            while let Some(len) = sockets.arp.recv(&mut buf)? {
                if let Some(answer) = parse_arp_reply(&buf[..len], me.mac, me.ipv4) {
                    if task.arp_targets.contains(&answer) {
                        report.arp_answers.insert(answer);
                    }
                }
            }
        }
        if raw_ready {
            while let Some(len) = sockets.raw.recv(&mut buf)? {
                if let Some(nonce) = parse_raw_frame(&buf[..len], me.mac) {
                    if task.raw_expected.contains(&nonce) {
                        report.raw_received.insert(nonce);
                    }
                }
            }
        }
    }
    Ok(report)
}

/// The two packet sockets of one endpoint.
struct Sockets {
    /// Bound to ARP.
    arp: PacketSocket,
    /// Bound to [`RAW_ETHERTYPE`].
    raw: PacketSocket,
}

impl Sockets {
    /// Binds both sockets to `ifname` in the calling thread's namespace.
    fn open(ifname: &str) -> Result<Sockets> {
        let name = CString::new(ifname).context("interface name contains NUL")?;
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("no interface {ifname}"));
        }
        let index = i32::try_from(index).context("interface index out of range")?;
        Ok(Sockets {
            arp: PacketSocket::bind(index, ARP_ETHERTYPE)?,
            raw: PacketSocket::bind(index, RAW_ETHERTYPE)?,
        })
    }

    /// Waits up to `timeout` for either socket to be readable: (arp, raw).
    fn wait(&self, timeout: Duration) -> Result<(bool, bool)> {
        let mut fds = [
            libc::pollfd {
                fd: self.arp.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.raw.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a valid array of two pollfd structures.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                return Ok((false, false));
            }
            return Err(err).context("poll");
        }
        Ok((fds[0].revents != 0, fds[1].revents != 0))
    }
}

/// A non-blocking AF_PACKET raw socket bound to one interface and ethertype.
struct PacketSocket {
    /// The socket.
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens the socket and binds it to interface `index`, ethertype `ethertype`.
    fn bind(index: i32, ethertype: u16) -> Result<PacketSocket> {
        let flags = libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
        // Protocol 0: receive nothing until bound to the interface and ethertype.
        // SAFETY: plain system call with constant arguments.
        let raw_fd = unsafe { libc::socket(libc::AF_PACKET, flags, 0) };
        if raw_fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
        }
        // SAFETY: `raw_fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw_fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ethertype.to_be();
        addr.sll_ifindex = index;
        // SAFETY: `addr` is a valid sockaddr_ll and its exact size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("bind(AF_PACKET)");
        }
        Ok(PacketSocket { fd })
    }

    /// Sends one complete Ethernet frame.
    fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: `frame` is valid for reads of its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("send(AF_PACKET)");
        }
        Ok(())
    }

    /// Receives one frame that arrived (not one this host sent): its length, or None when
    /// nothing is queued.
    fn recv(&self, buf: &mut [u8]) -> Result<Option<usize>> {
        loop {
            // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` is valid for writes of its length, `from` for `len` bytes.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    std::ptr::addr_of_mut!(from).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                return match err.kind() {
                    std::io::ErrorKind::WouldBlock => Ok(None),
                    std::io::ErrorKind::Interrupted => continue,
                    _ => Err(err).context("recvfrom(AF_PACKET)"),
                };
            }
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                return Ok(Some(n as usize));
            }
        }
    }
}

/// A broadcast ARP request from (`mac`, `ip`) asking for `target`.
fn arp_request(mac: Mac, ip: Ipv4Addr, target: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ARP_ETHERTYPE.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    f[38..42].copy_from_slice(&target.octets());
    f
}

/// The (sender address, sender MAC) of an ARP reply addressed to (`mac`, `ip`).
fn parse_arp_reply(f: &[u8], mac: Mac, ip: Ipv4Addr) -> Option<(Ipv4Addr, Mac)> {
    let is_reply = f.len() >= 42
        && f[12..14] == ARP_ETHERTYPE.to_be_bytes()
        && f[14..16] == [0, 1]
        && f[16..18] == [0x08, 0x00]
        && f[18] == 6
        && f[19] == 4
        && f[20..22] == [0, 2]
        && f[32..38] == mac
        && f[38..42] == ip.octets();
    if !is_reply {
        return None;
    }
    let sender_mac: Mac = f[22..28].try_into().ok()?;
    let sender_ip: [u8; 4] = f[28..32].try_into().ok()?;
    Some((Ipv4Addr::from(sender_ip), sender_mac))
}

/// A raw probe frame from `src` to `dst` carrying `nonce`.
fn raw_frame(dst: Mac, src: Mac, nonce: u64) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&RAW_ETHERTYPE.to_be_bytes());
    f[14..22].copy_from_slice(MAGIC);
    f[22..30].copy_from_slice(&nonce.to_be_bytes());
    f
}

/// The nonce of a raw probe frame addressed to `mac`.
fn parse_raw_frame(f: &[u8], mac: Mac) -> Option<u64> {
    if f.len() < 30 || f[0..6] != mac || f[12..14] != RAW_ETHERTYPE.to_be_bytes() {
        return None;
    }
    if &f[14..22] != MAGIC {
        return None;
    }
    Some(u64::from_be_bytes(f[22..30].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [0x56, 0x6f, 0, 0, 0, 1];
    const B: Mac = [0x56, 0x6f, 0, 0, 0, 2];

    #[test]
    fn raw_frames_round_trip_only_to_their_destination() {
        let f = raw_frame(B, A, 0x0123_4567_89ab_cdef);
        assert_eq!(parse_raw_frame(&f, B), Some(0x0123_4567_89ab_cdef));
        assert_eq!(parse_raw_frame(&f, A), None);
        assert_eq!(parse_raw_frame(&f[..20], B), None);
    }

    #[test]
    fn arp_reply_is_recognised() {
        let (ip_a, ip_b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let req = arp_request(A, ip_a, ip_b);
        assert_eq!(parse_arp_reply(&req, A, ip_a), None, "a request is not a reply");
        // Build B's reply the way the kernel does.
        let mut reply = req;
        reply[0..6].copy_from_slice(&A);
        reply[6..12].copy_from_slice(&B);
        reply[20..22].copy_from_slice(&2u16.to_be_bytes());
        reply[22..28].copy_from_slice(&B);
        reply[28..32].copy_from_slice(&ip_b.octets());
        reply[32..38].copy_from_slice(&A);
        reply[38..42].copy_from_slice(&ip_a.octets());
        assert_eq!(parse_arp_reply(&reply, A, ip_a), Some((ip_b, B)));
        assert_eq!(parse_arp_reply(&reply, B, ip_a), None);
    }
}
