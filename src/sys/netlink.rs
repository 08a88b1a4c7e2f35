//! In-process rtnetlink: set a bridge port's `isolated` flag or a link's group
//! (RTM_NEWLINK), or a port's state (RTM_SETLINK, AF_BRIDGE: fail-closed blocking), one
//! message each; dump the bridges and bridge ports of the namespace (RTM_GETLINK, AF_BRIDGE)
//! for [`crate::model::port::Snapshot`].

use netlink_packet_core::{
    DefaultNla, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::link::{
    InfoBridgePort, InfoPortData, InfoPortKind, LinkAttribute, LinkExtentMask, LinkInfo, LinkMessage,
    LinkProtoInfoBridge,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{Error, Result, Source};

/// A NETLINK_ROUTE socket of the caller's network namespace.
pub struct RouteSocket {
    socket: Socket,
    /// Our port id: the kernel's answers carry it, notifications do not.
    port: u32,
    sequence: u32,
    buf: Vec<u8>,
    /// Member of RTNLGRP_LINK since a dump: left before the next request, not at once (a
    /// snapshot's socket is closed after its dumps, with no request to protect).
    subscribed: bool,
}

impl RouteSocket {
    /// Opens and binds the socket.
    pub fn open() -> Result<RouteSocket> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| Error::kernel("netlink socket", e))?;
        let port = socket
            .bind_auto()
            .map_err(|e| Error::kernel("netlink bind", e))?
            .port_number();
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::kernel("netlink connect", e))?;
        Ok(RouteSocket {
            socket,
            port,
            sequence: 0,
            buf: Vec::with_capacity(RECV_BUFFER),
            subscribed: false,
        })
    }

    /// The socket in `slot`, opened there on first use: a backend with nothing to change
    /// never opens one.
    pub fn lazy(slot: &mut Option<RouteSocket>) -> Result<&mut RouteSocket> {
        if slot.is_none() {
            *slot = Some(RouteSocket::open()?);
        }
        Ok(slot.as_mut().expect("opened above"))
    }

    /// Sets or clears the `isolated` flag of bridge port `ifindex` and waits for the kernel's ack.
    pub fn set_isolated(&mut self, ifindex: u32, isolated: bool) -> Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = ifindex;
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::Isolated(isolated)])),
        ]));
        self.request(RouteNetlinkMessage::NewLink(link))
            .map_err(|e| e.into_error(format!("ifindex {ifindex}")))
    }

    /// Puts link `ifindex` in interface group `group` (`ip link set dev X group G`: one
    /// RTM_NEWLINK carrying IFLA_GROUP) and waits for the kernel's ack.
    pub fn set_group(&mut self, ifindex: u32, group: u32) -> Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = ifindex;
        link.attributes.push(LinkAttribute::Group(group));
        self.request(RouteNetlinkMessage::NewLink(link))
            .map_err(|e| e.into_error(format!("ifindex {ifindex}")))
    }

    /// Sets the bridge port state of `ifindex` and waits for the ack: `false` is
    /// `BR_STATE_DISABLED` (the port forwards nothing), `true` is forwarding. As `bridge link
    /// set dev PORT state N` does it: RTM_SETLINK of family AF_BRIDGE with a nested
    /// IFLA_PROTINFO { IFLA_BRPORT_STATE } (the kernel ignores the state in IFLA_LINKINFO).
    pub fn set_forwarding(&mut self, ifindex: u32, forwarding: bool) -> Result<()> {
        let state = if forwarding {
            BR_STATE_FORWARDING
        } else {
            BR_STATE_DISABLED
        };
        let mut link = LinkMessage::default();
        link.header.interface_family = AddressFamily::Bridge;
        link.header.index = ifindex;
        link.attributes
            .push(LinkAttribute::ProtoInfoBridge(vec![LinkProtoInfoBridge::Other(
                DefaultNla::new(IFLA_BRPORT_STATE, vec![state]),
            )]));
        self.request(RouteNetlinkMessage::SetLink(link))
            .map_err(|e| e.into_error(format!("ifindex {ifindex}")))
    }

    /// Every bridge and bridge port of the namespace, in one RTM_GETLINK dump of family
    /// AF_BRIDGE: calls `each` with the payload (`ifinfomsg` and attributes) of every link
    /// answered. The VLAN filter flags in the request make the kernel answer for each bridge
    /// too, not only for its ports. Returns false when a link was deleted or left its bridge
    /// while the dump ran: the kernel resumes this dump by position, so a port may be missing.
    pub fn dump_bridge_links(&mut self, mut each: impl FnMut(&[u8])) -> Result<bool> {
        // A deletion is announced to the link group under the RTNL lock, which every part of
        // the dump holds too: one made while the dump runs arrives before the dump's end.
        if !self.subscribed {
            self.socket
                .add_membership(RTNLGRP_LINK)
                .map_err(|e| Error::kernel("netlink link notifications", e))?;
            self.subscribed = true;
        }
        let mut link = LinkMessage::default();
        link.header.interface_family = AddressFamily::Bridge;
        link.attributes.push(LinkAttribute::ExtMask(vec![
            LinkExtentMask::Brvlan,
            LinkExtentMask::BrvlanCompressed,
        ]));
        self.dump_watched(link, &mut each)
            .map_err(|e| e.into_error("dumping the bridge ports"))
    }

    /// The links whose master is `master` (the ports of one bridge), in one RTM_GETLINK dump
    /// of family AF_UNSPEC that the kernel filters on IFLA_MASTER (statistics skipped): calls
    /// `each` with the payload of every link answered. A kernel that does not filter answers
    /// every link; the caller keeps those of `master`. Returns false when the dump was
    /// interrupted by a change (NLM_F_DUMP_INTR).
    pub fn dump_links_of(&mut self, master: u32, mut each: impl FnMut(&[u8])) -> Result<bool> {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::Controller(master));
        link.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        self.dump_watched(link, &mut each)
            .map_err(|e| e.into_error(format!("dumping the ports of ifindex {master}")))
    }

    fn dump_watched(&mut self, link: LinkMessage, each: &mut dyn FnMut(&[u8])) -> std::result::Result<bool, Failure> {
        self.send(RouteNetlinkMessage::GetLink(link), NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut consistent = true;
        loop {
            let n = match self.receive() {
                Ok(n) => n,
                // Notifications overflowed the socket: a deletion may be among them.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    consistent = false;
                    continue;
                }
                Err(e) => return Err(Failure::at("recv")(e)),
            };
            let mut rest = &self.buf[..n];
            while !rest.is_empty() {
                let message = NetlinkBuffer::new_checked(rest).map_err(Failure::at("decode"))?;
                let ours = message.sequence_number() == self.sequence && message.port_number() == self.port;
                if ours && message.flags() & NLM_F_DUMP_INTR != 0 {
                    consistent = false;
                }
                match message.message_type() {
                    NLMSG_DONE | NLMSG_ERROR if ours => {
                        // Both carry an errno: 0 when the dump ended well.
                        let code = message
                            .payload()
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        return match code {
                            Some(code) if code >= 0 => Ok(consistent),
                            Some(code) => Err(Failure::errno(code.saturating_neg())),
                            None => Err(Failure::at("")("truncated end of dump")),
                        };
                    }
                    RTM_NEWLINK if ours => each(message.payload()),
                    RTM_DELLINK => consistent = false,
                    _ => {}
                }
                let len = (message.length() as usize + 3) & !3;
                rest = &rest[len.min(rest.len())..];
            }
        }
    }

    /// Receives one datagram into the buffer; returns its length. The buffer is never
    /// zeroed: the kernel writes what is read, so a short reply touches only its own pages
    /// (a hook run is short, and every page it touches costs a fault).
    fn receive(&mut self) -> std::io::Result<usize> {
        self.buf.clear();
        self.socket.recv(&mut self.buf, 0)
    }

    /// Sends `message` with `flags` under a new sequence number.
    fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> std::result::Result<(), Failure> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0).map_err(Failure::at("send"))?;
        Ok(())
    }

    fn request(&mut self, message: RouteNetlinkMessage) -> std::result::Result<(), Failure> {
        // Notifications could overflow the socket while it waits for the ack (ENOBUFS);
        // those already queued are skipped below by sequence.
        if self.subscribed {
            let _ = self.socket.drop_membership(RTNLGRP_LINK);
            self.subscribed = false;
        }
        self.send(message, NLM_F_REQUEST | NLM_F_ACK)?;
        loop {
            let n = self.receive().map_err(Failure::at("recv"))?;
            let mut offset = 0;
            while offset < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                    .map_err(Failure::at("decode"))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.sequence {
                    if let NetlinkPayload::Error(err) = reply.payload {
                        return match err.code {
                            None => Ok(()),
                            Some(code) => Err(Failure::errno(-code.get())),
                        };
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

/// A NETLINK_ROUTE socket subscribed to the link notifications (RTNLGRP_LINK) of the
/// caller's network namespace, for the watcher: a link created, changed, enslaved, released
/// or deleted, in family AF_UNSPEC, and a bridge port added, changed or removed, in family
/// AF_BRIDGE. Non-blocking; read it when [`wait_readable`] says so.
pub struct LinkEvents {
    socket: Socket,
    buf: Vec<u8>,
}

/// What one [`LinkEvents::drain`] read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Notifications read.
    pub messages: usize,
    /// True when the kernel dropped notifications because the socket was full (ENOBUFS):
    /// what changed meanwhile is unknown.
    pub lost: bool,
}

impl LinkEvents {
    /// Opens the socket, subscribed, with a receive buffer of `buffer` bytes (forced past
    /// `net.core.rmem_max` when the caller may, as root may).
    pub fn open(buffer: usize) -> Result<LinkEvents> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| Error::kernel("netlink socket", e))?;
        socket.bind_auto().map_err(|e| Error::kernel("netlink bind", e))?;
        socket
            .add_membership(RTNLGRP_LINK)
            .map_err(|e| Error::kernel("netlink link notifications", e))?;
        socket
            .set_non_blocking(true)
            .map_err(|e| Error::kernel("netlink non-blocking", e))?;
        receive_buffer(&socket, buffer).map_err(|e| Error::kernel("netlink receive buffer", e))?;
        Ok(LinkEvents {
            socket,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// The receive buffer the kernel gave the socket (it doubles what was asked).
    pub fn buffer(&self) -> usize {
        self.socket.get_rx_buf_sz().unwrap_or(0)
    }

    /// Reads every notification queued, calling `each` with its type (RTM_NEWLINK or
    /// RTM_DELLINK) and payload (`ifinfomsg` and attributes), until none is left.
    pub fn drain(&mut self, mut each: impl FnMut(u16, &[u8])) -> Result<Drained> {
        let mut drained = Drained::default();
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(drained),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    drained.lost = true;
                    continue;
                }
                Err(e) => return Err(Error::kernel("reading link notifications", e)),
            };
            let mut rest = &self.buf[..n];
            while !rest.is_empty() {
                let Ok(message) = NetlinkBuffer::new_checked(rest) else {
                    break;
                };
                let kind = message.message_type();
                if kind == RTM_NEWLINK || kind == RTM_DELLINK {
                    drained.messages += 1;
                    each(kind, message.payload());
                }
                let len = (message.length() as usize + 3) & !3;
                rest = &rest[len.min(rest.len())..];
            }
        }
    }
}

impl std::os::fd::AsRawFd for LinkEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

/// Gives netlink socket `socket` a receive buffer of `bytes`: forced past
/// `net.core.rmem_max` when the caller may (CAP_NET_ADMIN), else as large as that allows.
pub fn receive_buffer(socket: &Socket, bytes: usize) -> std::io::Result<()> {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a valid socket with an int option value.
    let forced = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::addr_of!(size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if forced == 0 {
        Ok(())
    } else {
        socket.set_rx_buf_sz(size)
    }
}

/// Waits until one of `fds` is readable or `timeout` passed (`None`: no limit); returns
/// which are readable (none on a timeout or a signal).
pub fn wait_readable(fds: &[std::os::fd::RawFd], timeout: Option<std::time::Duration>) -> Result<Vec<bool>> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| {
        // Rounded up: a timeout of 0.4 ms must not become a busy 0.
        libc::c_int::try_from(t.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX)
    });
    // SAFETY: `polled` is a valid array of pollfd of the given length.
    let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(Error::kernel("poll", e));
    }
    Ok(polled
        .iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0)
        .collect())
}

/// Why a request or a dump failed: the step that failed (`send`, `recv`, `decode`; none for
/// the kernel's own answer) and the error underneath, kept as the [`Error`]'s source.
#[derive(Debug)]
struct Failure {
    step: &'static str,
    source: Source,
}

impl Failure {
    /// Wraps the error of `step` ("" for none).
    fn at<E: Into<Source>>(step: &'static str) -> impl FnOnce(E) -> Failure {
        move |e| Failure { step, source: e.into() }
    }

    /// The kernel's answer: this errno.
    fn errno(code: i32) -> Failure {
        Failure::at("")(std::io::Error::from_raw_os_error(code))
    }

    /// A [`crate::error::Kind::Kernel`] error: `context` and the step, then the error.
    fn into_error(self, context: impl Into<String>) -> Error {
        let context = context.into();
        match self.step {
            "" => Error::kernel(context, self.source),
            step => Error::kernel(format!("{context}: {step}"), self.source),
        }
    }
}

/// `RTNLGRP_LINK`: notifications of links created, changed, enslaved, released or deleted.
/// Room for one datagram: the kernel sizes a dump's datagrams to the reader's buffer, up to
/// 32 KiB, and an answer to a request is far smaller.
const RECV_BUFFER: usize = 1 << 16;
const RTNLGRP_LINK: u32 = 1;
/// `RTM_NEWLINK`: a link, in a dump's answer or a notification.
pub const RTM_NEWLINK: u16 = 16;
/// `RTM_DELLINK`: a link deleted, or a port released from its bridge (family AF_BRIDGE).
pub const RTM_DELLINK: u16 = 17;

/// `IFLA_BRPORT_STATE` in `linux/if_link.h`.
const IFLA_BRPORT_STATE: u16 = 1;
/// `BR_STATE_DISABLED`: the port neither learns nor forwards.
pub const BR_STATE_DISABLED: u8 = 0;
/// `BR_STATE_FORWARDING`.
pub const BR_STATE_FORWARDING: u8 = 3;

/// A bridge port's state from `/sys/class/net/PORT/brport/state` (no root needed).
pub fn port_state(port: &str) -> std::io::Result<u8> {
    let path = std::path::Path::new(crate::sys::SYS_CLASS_NET)
        .join(port)
        .join("brport/state");
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("brport/state: {e}")))
}
