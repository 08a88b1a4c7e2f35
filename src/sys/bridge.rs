//! Live bridges and bridge ports of the caller's network namespace, read in one rtnetlink
//! dump (no root needed); a port's `isolated` flag and a link's group read from sysfs.

use std::path::PathBuf;

use netlink_packet_core::NlasIterator;

use crate::error::Result;
use crate::model::mac::Mac;
use crate::model::port::{Port, Snapshot};
use crate::sys::netlink::RouteSocket;
use crate::sys::SYS_CLASS_NET;

/// Reads every bridge and bridge port of the caller's network namespace: one
/// RTM_GETLINK dump of family AF_BRIDGE, done again when a link was deleted or left its
/// bridge meanwhile (the kernel resumes that dump by position, so a port could be missed).
pub fn snapshot() -> Result<Snapshot> {
    let mut socket = RouteSocket::open()?;
    let mut attempt = 1;
    loop {
        let mut links = Vec::new();
        let consistent = socket.dump_bridge_links(|payload| links.extend(parse_link(payload)))?;
        if consistent || attempt == DUMP_ATTEMPTS {
            if !consistent {
                log::warn!("links kept leaving during {DUMP_ATTEMPTS} dumps of the bridge ports: using the last");
            }
            return Ok(from_links(links));
        }
        log::debug!("a link left while the bridge ports were dumped: dumping again");
        attempt += 1;
    }
}

/// The snapshot of one dump's links.
fn from_links(links: Vec<Link>) -> Snapshot {
    let (mut bridges, mut ports) = (Vec::new(), Vec::new());
    for link in links {
        match link {
            Link::Bridge { name, ifindex } => bridges.push((name, ifindex)),
            Link::Port { master, port } => ports.push((master, port)),
        }
    }
    Snapshot::from_links(bridges, ports)
}

/// Dumps tried before a namespace whose links keep leaving is taken as the last one saw it.
const DUMP_ATTEMPTS: u32 = 5;

/// What one message of the dump describes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Link {
    /// A bridge: the kernel gives it as its own master.
    Bridge { name: String, ifindex: u32 },
    /// A port of the bridge with ifindex `master`.
    Port { master: u32, port: Port },
}

/// `struct ifinfomsg`: family, pad, type, index, flags, change.
const IFINFOMSG_LEN: usize = 16;
/// `AF_BRIDGE`.
const AF_BRIDGE: u8 = 7;
/// Link attributes (`linux/if_link.h`).
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_PROTINFO: u16 = 12;
const IFLA_AF_SPEC: u16 = 26;
/// In IFLA_PROTINFO, Linux >= 4.18.
const IFLA_BRPORT_ISOLATED: u16 = 33;
/// In IFLA_AF_SPEC (`linux/if_bridge.h`): only a NIC driver's own answer carries it.
const IFLA_BRIDGE_FLAGS: u16 = 0;

/// What the parsers below read of one link message (`ifinfomsg` and attributes).
#[derive(Default)]
struct LinkMsg {
    family: u8,
    ifindex: u32,
    name: Option<String>,
    master: Option<u32>,
    mac: Option<Mac>,
    /// IFLA_PROTINFO's IFLA_BRPORT_ISOLATED (family AF_BRIDGE; `None` before Linux 4.18).
    protinfo_isolated: Option<bool>,
    /// IFLA_LINKINFO's IFLA_INFO_KIND is `bridge`: the link is a bridge.
    bridge: bool,
    /// IFLA_LINKINFO's bridge port data, IFLA_BRPORT_ISOLATED (family AF_UNSPEC).
    port_isolated: Option<bool>,
    /// IFLA_AF_SPEC carries IFLA_BRIDGE_FLAGS: a NIC driver's own answer.
    driver: bool,
}

/// Reads `payload`; `None` when it is truncated or an attribute is malformed.
fn read_link(payload: &[u8]) -> Option<LinkMsg> {
    let header = payload.get(..IFINFOMSG_LEN)?;
    let mut m = LinkMsg {
        family: header[0],
        ifindex: u32::from_ne_bytes([header[4], header[5], header[6], header[7]]),
        ..LinkMsg::default()
    };
    for nla in NlasIterator::new(&payload[IFINFOMSG_LEN..]) {
        let nla = nla.ok()?;
        let value = nla.value();
        match nla.kind() {
            IFLA_IFNAME => m.name = Some(c_string(value)),
            IFLA_MASTER => m.master = Some(u32::from_ne_bytes(value.try_into().ok()?)),
            IFLA_ADDRESS => m.mac = <[u8; 6]>::try_from(value).ok().map(Mac),
            IFLA_PROTINFO => m.protinfo_isolated = nested(value, IFLA_BRPORT_ISOLATED, |v| v.first() == Some(&1)),
            IFLA_AF_SPEC => m.driver |= nested(value, IFLA_BRIDGE_FLAGS, |_| ()).is_some(),
            IFLA_LINKINFO => {
                m.bridge = nested(value, IFLA_INFO_KIND, |v| c_string(v) == "bridge") == Some(true);
                if nested(value, IFLA_INFO_SLAVE_KIND, |v| c_string(v) == "bridge") == Some(true) {
                    m.port_isolated = nested(value, IFLA_INFO_SLAVE_DATA, |data| {
                        nested(data, IFLA_BRPORT_ISOLATED, |v| v.first() == Some(&1))
                    })
                    .flatten();
                }
            }
            _ => {}
        }
    }
    Some(m)
}

/// Parses the payload (`ifinfomsg` and attributes) of one RTM_NEWLINK of the dump. `None`
/// for what is not the Linux bridge's view of a bridge or a port: another family, no name
/// or master, or a NIC driver's own answer for its embedded switch (SR-IOV; IFLA_AF_SPEC
/// carries IFLA_BRIDGE_FLAGS), which repeats a port without its `isolated` flag.
fn parse_link(payload: &[u8]) -> Option<Link> {
    let m = read_link(payload)?;
    if m.family != AF_BRIDGE || m.driver {
        return None;
    }
    let (name, master) = (m.name?, m.master?);
    Some(if master == m.ifindex {
        Link::Bridge {
            name,
            ifindex: m.ifindex,
        }
    } else {
        Link::Port {
            master,
            port: Port {
                name,
                ifindex: m.ifindex,
                mac: m.mac,
                isolated: m.protinfo_isolated,
            },
        }
    })
}

/// `IFLA_LINKINFO` and what it nests (`linux/if_link.h`).
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_SLAVE_KIND: u16 = 4;
const IFLA_INFO_SLAVE_DATA: u16 = 5;

/// A link notification (RTNLGRP_LINK), as the watcher needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// RTM_DELLINK: the link was deleted or (family AF_BRIDGE) left its bridge.
    pub deleted: bool,
    /// The link's interface index.
    pub ifindex: u32,
    /// Its name, when the message carries it.
    pub name: Option<String>,
    /// Its master (for a bridge port, the bridge), when it has one.
    pub master: Option<u32>,
    /// True when the link is a bridge itself.
    pub bridge: bool,
}

/// Parses a link notification of type `kind` (RTM_NEWLINK or RTM_DELLINK) of either family
/// (AF_UNSPEC: any link; AF_BRIDGE: a bridge port, or a bridge as its own master).
pub fn notice(kind: u16, payload: &[u8]) -> Option<Notice> {
    let m = read_link(payload)?;
    Some(Notice {
        deleted: kind == crate::sys::netlink::RTM_DELLINK,
        ifindex: m.ifindex,
        bridge: m.bridge || (m.family == AF_BRIDGE && m.master == Some(m.ifindex)),
        master: m.master.filter(|&master| master != m.ifindex && master != 0),
        name: m.name,
    })
}

/// A NUL-terminated (or not) attribute string.
fn c_string(value: &[u8]) -> String {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

/// Parses one link of an AF_UNSPEC dump: a port of the bridge with interface index
/// `master` (its flag from IFLA_LINKINFO's bridge port data), `None` for any other link.
fn parse_port_of(payload: &[u8], master: u32) -> Option<Port> {
    let m = read_link(payload)?;
    (m.master == Some(master) && master != m.ifindex).then_some(Port {
        name: m.name?,
        ifindex: m.ifindex,
        mac: m.mac,
        isolated: m.port_isolated,
    })
}

/// The ports of bridge `bridge` (interface index `ifindex`) in one IFLA_MASTER-filtered
/// dump, sorted by name; done again when a change interrupted it.
pub fn ports_of(socket: &mut RouteSocket, ifindex: u32) -> Result<Vec<Port>> {
    let mut attempt = 1;
    loop {
        let mut ports = Vec::new();
        let consistent = socket.dump_links_of(ifindex, |payload| ports.extend(parse_port_of(payload, ifindex)))?;
        if consistent || attempt == DUMP_ATTEMPTS {
            ports.sort_by(|a, b| a.name.cmp(&b.name));
            return Ok(ports);
        }
        attempt += 1;
    }
}

/// Reads the ports of `bridges` again into `live` (one filtered dump each, no dump of the
/// namespace): the watcher's way to know a bridge it was told changed. A bridge that does
/// not exist any more leaves `live`. The index of each comes from `if_nametoindex` (an
/// ioctl of the calling thread's namespace, taking no RTNL lock), not from sysfs, which
/// shows the namespace it was mounted in.
pub fn refresh<'a>(live: &mut Snapshot, bridges: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let mut socket = None;
    for name in bridges {
        let index = index_of(name);
        match index {
            Some(index) => {
                let ports = ports_of(RouteSocket::lazy(&mut socket)?, index)?;
                live.set_ports(name, index, Some(ports));
            }
            None => {
                if let Some(old) = live.bridge_index(name) {
                    live.set_ports(name, old, None);
                }
            }
        }
    }
    Ok(())
}

/// The interface index of link `name` in the calling thread's namespace (`if_nametoindex`).
fn index_of(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// `read` of the value of attribute `kind` among the attributes nested in `value`.
fn nested<T>(value: &[u8], kind: u16, read: impl FnOnce(&[u8]) -> T) -> Option<T> {
    NlasIterator::new(value)
        .map_while(std::result::Result::ok)
        .find(|nla| nla.kind() == kind)
        .map(|nla| read(nla.value()))
}

fn sys(parts: &[&str]) -> PathBuf {
    let mut p = PathBuf::from(SYS_CLASS_NET);
    p.extend(parts);
    p
}

/// Reads a port's `isolated` flag from sysfs; `None` when the kernel has no such flag.
pub fn isolated(port: &str) -> std::io::Result<Option<bool>> {
    match std::fs::read_to_string(sys(&[port, "brport", "isolated"])) {
        Ok(v) => Ok(Some(v.trim() == "1")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && sys(&[port, "brport"]).exists() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads a link's interface group from sysfs (`netdev_group`); `None` when there is no such
/// link.
pub fn group(link: &str) -> Option<u32> {
    std::fs::read_to_string(sys(&[link, "netdev_group"]))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A link's interface index from sysfs; `None` when there is no such link.
pub fn ifindex(link: &str) -> Option<u32> {
    std::fs::read_to_string(sys(&[link, "ifindex"]))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// True when `port` (its name and interface index) is a port of bridge `bridge` now, as
/// sysfs says (`master` names the bridge).
pub fn is_port_of(bridge: &str, port: &Port) -> bool {
    let master = std::fs::read_link(sys(&[&port.name, "master"]));
    ifindex(&port.name) == Some(port.ifindex)
        && sys(&[&port.name, "brport"]).is_dir()
        && master.is_ok_and(|m| m.file_name().is_some_and(|n| n == bridge))
}

/// True when `name` is a tun/tap device (what libvirt plugs a vNIC in with).
pub fn is_tap(name: &str) -> bool {
    sys(&[name, "tun_flags"]).exists()
}

/// True when `name` is a bridge in this namespace.
pub fn exists(name: &str) -> bool {
    sys(&[name, "bridge"]).is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let text: String = text.split_whitespace().collect();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Bridge `br0` (ifindex 2) as Linux 6.18 answers the dump: ifinfomsg, then IFLA_IFNAME,
    /// IFLA_MASTER (itself), IFLA_MTU, IFLA_OPERSTATE, IFLA_ADDRESS.
    const BRIDGE: &str = "07000100 02000000 03100000 00000000
        08000300 62723000  08000a00 02000000  08000400 dc050000  05001000 02000000
        0a000100 fe540012 34560000";

    /// Its port `vnet1` (ifindex 4, MAC fe:54:00:12:34:56, `bridge link set dev vnet1
    /// isolated on`), as Linux 6.18 answers: IFLA_IFNAME, IFLA_MASTER 2, IFLA_MTU,
    /// IFLA_OPERSTATE, IFLA_ADDRESS, IFLA_LINK, then IFLA_PROTINFO (nested flag set) with
    /// every IFLA_BRPORT_* attribute, IFLA_BRPORT_ISOLATED (33 = 0x21) = 1 among them.
    const PORT: &str = "07000100 04000000 03100000 00000000
        0a000300 766e6574 31000000  08000a00 02000000  08000400 dc050000  05001000 03000000
        0a000100 fe540012 34560000  08000500 03000000
        5001 0c80
        05000100 00000000 06000200 20000000 08000300 02000000 05000400 00000000
        05000500 00000000 05000600 00000000 05000700 00000000 05001c00 00000000
        05000800 01000000 05000900 01000000 05001b00 01000000 05001e00 01000000
        05000a00 00000000 05000c00 00000000 0c000d00 8000fe54 00123456 0c000e00
        8000fe54 00123456 06000f00 01800000 06001000 00000000 06001100 01800000
        06001200 01000000 05001300 00000000 05001400 00000000 05001d00 00000000
        06001f00 00000000 05002000 00000000 05002300 00000000 05002400 00000000
        05002100 01000000 05002700 00000000 05002800 00000000 05002b00 00000000
        0c001500 00000000 00000000 0c001600 00000000 00000000 0c001700 00000000
        00000000 05001900 01000000 08002500 00000200 08002600 00000000 08002900
        00000000 08002a00 00000000";

    /// An attribute: length, type, value, padding.
    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(4 + value.len() as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    /// A link of family AF_BRIDGE with `attributes`.
    fn link(ifindex: u32, attributes: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![AF_BRIDGE, 0, 1, 0];
        out.extend_from_slice(&ifindex.to_ne_bytes());
        out.extend_from_slice(&[0; 8]);
        attributes.iter().for_each(|a| out.extend_from_slice(a));
        out
    }

    fn port(name: &str, ifindex: u32, isolated: Option<bool>) -> Port {
        Port {
            name: name.into(),
            ifindex,
            mac: None,
            isolated,
        }
    }

    #[test]
    fn parses_what_the_kernel_answers() {
        assert_eq!(
            parse_link(&hex(BRIDGE)),
            Some(Link::Bridge {
                name: "br0".into(),
                ifindex: 2
            })
        );
        let vnet1 = Port {
            mac: Some("fe:54:00:12:34:56".parse().unwrap()),
            ..port("vnet1", 4, Some(true))
        };
        assert_eq!(
            parse_link(&hex(PORT)),
            Some(Link::Port {
                master: 2,
                port: vnet1.clone()
            })
        );
        let open = hex(&PORT.replace("05002100 01000000", "05002100 00000000"));
        assert_eq!(
            parse_link(&open),
            Some(Link::Port {
                master: 2,
                port: Port {
                    isolated: Some(false),
                    ..vnet1
                }
            })
        );
    }

    #[test]
    fn old_kernels_drivers_and_others_are_told_apart() {
        let name = nla(IFLA_IFNAME, b"eth1\0");
        let master = nla(IFLA_MASTER, &2u32.to_ne_bytes());
        let state = nla(1, &[3]);
        // Linux < 4.18: IFLA_PROTINFO without IFLA_BRPORT_ISOLATED.
        let old = link(5, &[name.clone(), master.clone(), nla(IFLA_PROTINFO, &state)]);
        assert_eq!(
            parse_link(&old),
            Some(Link::Port {
                master: 2,
                port: port("eth1", 5, None)
            })
        );
        // A SR-IOV NIC's own answer (ndo_dflt_bridge_getlink): IFLA_AF_SPEC with
        // IFLA_BRIDGE_FLAGS = BRIDGE_FLAGS_SELF, flags in IFLA_PROTINFO but no isolation.
        let flags = [nla(IFLA_BRIDGE_FLAGS, &2u16.to_ne_bytes()), nla(1, &0u16.to_ne_bytes())].concat();
        let own = link(
            5,
            &[
                name.clone(),
                master.clone(),
                nla(IFLA_AF_SPEC, &flags),
                nla(IFLA_PROTINFO, &[]),
            ],
        );
        assert_eq!(parse_link(&own), None);
        // A bridge's VLANs in IFLA_AF_SPEC (IFLA_BRIDGE_VLAN_INFO) are no such answer.
        let vlans = nla(IFLA_AF_SPEC, &nla(2, &[6, 0, 1, 0]));
        let bridge = link(2, &[nla(IFLA_IFNAME, b"br0\0"), master.clone(), vlans]);
        assert!(matches!(parse_link(&bridge), Some(Link::Bridge { .. })));
        // Not AF_BRIDGE, no master, no name, truncated.
        let mut inet = old.clone();
        inet[0] = 0;
        assert_eq!(parse_link(&inet), None);
        assert_eq!(parse_link(&link(5, std::slice::from_ref(&name))), None);
        assert_eq!(parse_link(&link(5, std::slice::from_ref(&master))), None);
        assert_eq!(parse_link(&old[..10]), None);
        assert_eq!(parse_link(&old[..old.len() - 2]), None);
        // A MAC that is not Ethernet's is no MAC.
        let short = link(5, &[name, master, nla(IFLA_ADDRESS, &[10, 0, 0, 1])]);
        assert!(matches!(
            parse_link(&short),
            Some(Link::Port {
                port: Port { mac: None, .. },
                ..
            })
        ));
    }

    #[test]
    fn notices_of_either_family() {
        // The port of PORT, as an AF_BRIDGE notification.
        let n = notice(crate::sys::netlink::RTM_NEWLINK, &hex(PORT)).unwrap();
        assert_eq!(
            n,
            Notice {
                deleted: false,
                ifindex: 4,
                name: Some("vnet1".into()),
                master: Some(2),
                bridge: false
            }
        );
        // A bridge created (AF_UNSPEC, IFLA_LINKINFO kind "bridge"), then deleted.
        let info = nla(IFLA_LINKINFO, &nla(IFLA_INFO_KIND, b"bridge\0"));
        let mut created = link(2, &[nla(IFLA_IFNAME, b"red\0"), info]);
        created[0] = 0;
        let n = notice(crate::sys::netlink::RTM_NEWLINK, &created).unwrap();
        assert!(n.bridge && !n.deleted && n.master.is_none(), "{n:?}");
        assert!(notice(crate::sys::netlink::RTM_DELLINK, &created).unwrap().deleted);
        // A veth enslaved (kind veth, slave kind bridge): a port, not a bridge.
        let info = nla(
            IFLA_LINKINFO,
            &[nla(IFLA_INFO_KIND, b"veth\0"), nla(IFLA_INFO_SLAVE_KIND, b"bridge\0")].concat(),
        );
        let mut port = link(
            9,
            &[
                nla(IFLA_IFNAME, b"vnet9\0"),
                nla(IFLA_MASTER, &2u32.to_ne_bytes()),
                info,
            ],
        );
        port[0] = 0;
        let n = notice(crate::sys::netlink::RTM_NEWLINK, &port).unwrap();
        assert!(!n.bridge && n.master == Some(2), "{n:?}");
        assert_eq!(notice(crate::sys::netlink::RTM_NEWLINK, &port[..8]), None);
    }

    #[test]
    fn a_snapshot_groups_ports_by_bridge_sorted_by_name() {
        let bridge = |name: &str, ifindex| Link::Bridge {
            name: name.into(),
            ifindex,
        };
        let on = |master, port| Link::Port { master, port };
        let snapshot = from_links(vec![
            on(2, port("vnet2", 9, Some(false))),
            bridge("red", 2),
            on(2, port("eth1", 4, Some(false))),
            bridge("empty", 3),
            on(2, port("vnet1", 7, Some(false))),
            // A port of a master that is no bridge (answered by its driver).
            on(40, port("eth9", 41, None)),
            // Enslaved while the dump ran: answered twice, the last answer counts.
            on(2, port("vnet1", 7, Some(true))),
        ]);
        let names = |b| {
            snapshot
                .ports(b)
                .map(|ps| ps.iter().map(|p| p.name.as_str()).collect::<Vec<_>>())
        };
        assert_eq!(names("red"), Some(vec!["eth1", "vnet1", "vnet2"]));
        assert_eq!(snapshot.ports("red").unwrap()[1].isolated, Some(true));
        assert_eq!(names("empty"), Some(vec![]));
        assert_eq!(names("blue"), None);
    }

    /// Reads the snapshot of the network namespace `ns` on a thread made for it.
    fn snapshot_in(ns: &str) -> Snapshot {
        let handle = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        std::thread::spawn(move || {
            // SAFETY: setns only reads the descriptor, which `handle` keeps open.
            let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&handle), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            super::snapshot().unwrap()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn reads_the_bridges_and_ports_of_a_namespace() {
        use bridge_isolation_lab::{root_tests_enabled, unique_prefix, Lab, LabSpec};
        if !root_tests_enabled("reads_the_bridges_and_ports_of_a_namespace") {
            return;
        }
        let lab = Lab::create(&LabSpec::new(&unique_prefix("bisnap")).with_vms(2)).unwrap();
        lab.set_port_isolated("vnet2", true).unwrap();
        lab.ip_in_host(&["link", "add", "empty", "type", "bridge"]).unwrap();
        lab.ip_in_host(&["link", "add", "loose0", "type", "veth", "peer", "name", "loose1"])
            .unwrap();
        let links: serde_json::Value = serde_json::from_str(&lab.ip_in_host(&["-j", "link", "show"]).unwrap()).unwrap();
        let live = |name: &str| {
            let link = links.as_array().unwrap().iter().find(|l| l["ifname"] == name).unwrap();
            let ifindex = link["ifindex"].as_u64().unwrap() as u32;
            (ifindex, link["address"].as_str().unwrap().parse::<Mac>().unwrap())
        };

        let snapshot = snapshot_in(lab.host_ns());
        let ports = snapshot.ports("isonet").unwrap();
        let want: Vec<Port> = [("eth1", false), ("vnet1", false), ("vnet2", true)]
            .into_iter()
            .map(|(name, isolated)| Port {
                name: name.into(),
                ifindex: live(name).0,
                mac: Some(live(name).1),
                isolated: Some(isolated),
            })
            .collect();
        assert_eq!(ports, want);
        assert_eq!(snapshot.ports("empty"), Some(&[][..]));
        assert_eq!(snapshot.ports("loose0"), None, "not a bridge");
        assert_eq!(snapshot.ports("vnet1"), None, "a port is no bridge");
        assert_eq!(snapshot.ports("nosuch"), None);

        // One bridge read again by its filtered dump agrees with the namespace's dump.
        let mut partial = Snapshot::default();
        let refreshed = {
            let handle = std::fs::File::open(format!("/run/netns/{}", lab.host_ns())).unwrap();
            std::thread::spawn(move || {
                // SAFETY: setns only reads the descriptor, which `handle` keeps open.
                let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&handle), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                refresh(&mut partial, ["isonet", "nosuch", "loose0"]).unwrap();
                partial
            })
            .join()
            .unwrap()
        };
        assert_eq!(refreshed.ports("isonet"), Some(&want[..]));
        assert_eq!(refreshed.ports("nosuch"), None);

        lab.detach_port("vnet1").unwrap();
        let names: Vec<String> = snapshot_in(lab.host_ns())
            .ports("isonet")
            .unwrap()
            .iter()
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(names, ["eth1", "vnet2"]);
        lab.destroy().unwrap();
    }
}
