//! Other ways to read the ports of bridges, measured beside the library's
//! (`sys::bridge::snapshot`: one RTM_GETLINK dump of family AF_BRIDGE). Same result type, so the
//! bench checks they all agree before timing them.
//!
//! - [`sysfs`]: what the library did before, `brif/` and three files per port (ifindex,
//!   address, `brport/isolated`);
//! - [`one_dump`]: one dump of every link of the namespace (family AF_UNSPEC, stats
//!   skipped), grouped by IFLA_MASTER: every interface, not only the ports, fully parsed;
//! - [`per_bridge`]: per bridge, its ifindex from sysfs (one file), then one dump filtered
//!   by the kernel on IFLA_MASTER: what is parsed follows the ports asked for, not the
//!   interfaces the namespace has;
//! - [`sysfs_flag_ioctl`]: the port list and `brport/isolated` from sysfs, the ifindex and
//!   MAC from two ioctls (SIOCGIFINDEX, SIOCGIFHWADDR: RCU lookups, no file opened) instead
//!   of two more sysfs files.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use bridge_isolation::model::mac::Mac;
use bridge_isolation::model::port::Port;
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::link::{InfoBridgePort, InfoPortData, LinkAttribute, LinkExtentMask, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

struct Nl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Nl {
    fn open() -> Result<Nl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Nl {
            socket,
            seq: 0,
            buf: vec![0; 1 << 20],
        })
    }

    /// Sends `link` as RTM_GETLINK with `flags` and collects the link messages answered.
    fn get(&mut self, link: LinkMessage, flags: u16) -> Result<Vec<LinkMessage>> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(RouteNetlinkMessage::GetLink(link)));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut links = Vec::new();
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                    .map_err(|e| anyhow!("decode: {e}"))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Done(_) => return Ok(links),
                        NetlinkPayload::Error(e) => match e.code {
                            None => return Ok(links),
                            Some(c) => bail!("{}", std::io::Error::from_raw_os_error(-c.get())),
                        },
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                            links.push(l);
                            if !dump {
                                return Ok(links);
                            }
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
}

fn skip_stats(msg: &mut LinkMessage) {
    msg.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
}

fn name_of(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn master_of(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(m) => Some(*m),
        _ => None,
    })
}

fn port_of(l: &LinkMessage) -> Option<Port> {
    let mut mac = None;
    let mut isolated = None;
    for a in &l.attributes {
        match a {
            LinkAttribute::Address(b) if b.len() == 6 => mac = Some(Mac([b[0], b[1], b[2], b[3], b[4], b[5]])),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::PortData(InfoPortData::BridgePort(attrs)) = i {
                        for p in attrs {
                            if let InfoBridgePort::Isolated(v) = p {
                                isolated = Some(*v);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Some(Port {
        name: name_of(l)?.to_string(),
        ifindex: l.header.index,
        mac,
        isolated,
    })
}

/// Ports of each of `bridges` (None: no such bridge) from one dump of every link.
pub fn one_dump(bridges: &[String]) -> Result<BTreeMap<String, Option<Vec<Port>>>> {
    let mut nl = Nl::open()?;
    let mut req = LinkMessage::default();
    skip_stats(&mut req);
    let links = nl.get(req, NLM_F_REQUEST | NLM_F_DUMP)?;
    let index: BTreeMap<&str, u32> = links
        .iter()
        .filter_map(|l| Some((name_of(l)?, l.header.index)))
        .collect();
    let mut by_master: BTreeMap<u32, Vec<Port>> = BTreeMap::new();
    for l in &links {
        if let (Some(m), Some(p)) = (master_of(l), port_of(l)) {
            by_master.entry(m).or_default().push(p);
        }
    }
    Ok(bridges
        .iter()
        .map(|b| {
            let ports = index.get(b.as_str()).map(|i| {
                let mut v = by_master.remove(i).unwrap_or_default();
                v.sort_by(|a, b| a.name.cmp(&b.name));
                v
            });
            (b.clone(), ports)
        })
        .collect())
}

/// Ports of each of `bridges`, one lookup and one IFLA_MASTER-filtered dump per bridge.
pub fn per_bridge(bridges: &[String]) -> Result<BTreeMap<String, Option<Vec<Port>>>> {
    let mut nl = Nl::open()?;
    let mut out = BTreeMap::new();
    for b in bridges {
        // The bridge's ifindex from sysfs: an RTM_GETLINK by name would wait for the RTNL
        // lock (global, busy while other namespaces come and go); dumps do not take it.
        let index = match std::fs::read_to_string(format!("/sys/class/net/{b}/ifindex")) {
            Ok(s) => s.trim().parse::<u32>()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out.insert(b.clone(), None);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut req = LinkMessage::default();
        req.attributes.push(LinkAttribute::Controller(index));
        skip_stats(&mut req);
        let mut ports: Vec<Port> = nl
            .get(req, NLM_F_REQUEST | NLM_F_DUMP)?
            .iter()
            .filter(|l| master_of(l) == Some(index))
            .filter_map(port_of)
            .collect();
        ports.sort_by(|a, b| a.name.cmp(&b.name));
        out.insert(b.clone(), Some(ports));
    }
    Ok(out)
}

/// Ports of each of `bridges`: names from `brif/`, the flag from sysfs, ifindex and MAC by ioctl.
pub fn sysfs_flag_ioctl(bridges: &[String]) -> Result<BTreeMap<String, Option<Vec<Port>>>> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);
    let ifreq = |name: &str| {
        // SAFETY: ifreq is plain data.
        let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in r.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
            *d = s as libc::c_char;
        }
        r
    };
    let mut out = BTreeMap::new();
    for b in bridges {
        let entries = match std::fs::read_dir(format!("/sys/class/net/{b}/brif")) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out.insert(b.clone(), None);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut ports = Vec::new();
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let isolated = match std::fs::read_to_string(format!("/sys/class/net/{name}/brport/isolated")) {
                Ok(v) => Some(v.trim() == "1"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let mut r = ifreq(&name);
            // SAFETY: valid socket and ifreq.
            if unsafe { libc::ioctl(raw, libc::SIOCGIFINDEX as _, &mut r) } != 0 {
                continue;
            }
            // SAFETY: the kernel filled the ifindex member.
            let ifindex = unsafe { r.ifr_ifru.ifru_ifindex } as u32;
            let mut r = ifreq(&name);
            // SAFETY: valid socket and ifreq.
            let mac = if unsafe { libc::ioctl(raw, libc::SIOCGIFHWADDR as _, &mut r) } == 0 {
                // SAFETY: the kernel filled the hwaddr member.
                let d = unsafe { r.ifr_ifru.ifru_hwaddr.sa_data };
                Some(Mac([
                    d[0] as u8, d[1] as u8, d[2] as u8, d[3] as u8, d[4] as u8, d[5] as u8,
                ]))
            } else {
                None
            };
            ports.push(Port {
                name,
                ifindex,
                mac,
                isolated,
            });
        }
        ports.sort_by(|a, b| a.name.cmp(&b.name));
        out.insert(b.clone(), Some(ports));
    }
    Ok(out)
}

/// Ports of each of `bridges` as the library read them before: `brif/`, then ifindex,
/// address and `brport/isolated` of each port; a port gone meanwhile is skipped.
pub fn sysfs(bridges: &[String]) -> Result<BTreeMap<String, Option<Vec<Port>>>> {
    let read = |path: String| std::fs::read_to_string(path).map(|s| s.trim().to_string());
    let mut out = BTreeMap::new();
    for b in bridges {
        let entries = match std::fs::read_dir(format!("/sys/class/net/{b}/brif")) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out.insert(b.clone(), None);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut ports = Vec::new();
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let port = (|| -> std::io::Result<Port> {
                Ok(Port {
                    ifindex: read(format!("/sys/class/net/{name}/ifindex"))?
                        .parse()
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
                    mac: read(format!("/sys/class/net/{name}/address"))?.parse().ok(),
                    isolated: Some(read(format!("/sys/class/net/{name}/brport/isolated"))? == "1"),
                    name: name.clone(),
                })
            })();
            match port {
                Ok(p) => ports.push(p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
        }
        ports.sort_by(|a, b| a.name.cmp(&b.name));
        out.insert(b.clone(), Some(ports));
    }
    Ok(out)
}
