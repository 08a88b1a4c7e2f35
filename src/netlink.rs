//! In-process rtnetlink: set a bridge port's `isolated` flag (RTM_NEWLINK) or its state
//! (RTM_SETLINK, AF_BRIDGE: fail-closed blocking), one message each.

use netlink_packet_core::{DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::link::{
    InfoBridgePort, InfoPortData, InfoPortKind, LinkAttribute, LinkInfo, LinkMessage, LinkProtoInfoBridge,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{Error, Result};

/// A NETLINK_ROUTE socket of the caller's network namespace.
pub struct RouteSocket {
    socket: Socket,
    sequence: u32,
    buf: Vec<u8>,
}

impl RouteSocket {
    /// Opens and binds the socket.
    pub fn open() -> Result<RouteSocket> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| Error::Kernel(format!("netlink socket: {e}")))?;
        socket
            .bind_auto()
            .map_err(|e| Error::Kernel(format!("netlink bind: {e}")))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::Kernel(format!("netlink connect: {e}")))?;
        Ok(RouteSocket {
            socket,
            sequence: 0,
            buf: vec![0; 1 << 16],
        })
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
            .map_err(|e| Error::Kernel(format!("ifindex {ifindex}: {e}")))
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
            .map_err(|e| Error::Kernel(format!("ifindex {ifindex}: {e}")))
    }

    fn request(&mut self, message: RouteNetlinkMessage) -> std::result::Result<(), String> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0).map_err(|e| format!("send: {e}"))?;
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| format!("recv: {e}"))?;
            let mut offset = 0;
            while offset < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                    .map_err(|e| format!("decode: {e}"))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.sequence {
                    if let NetlinkPayload::Error(err) = reply.payload {
                        return match err.code {
                            None => Ok(()),
                            Some(code) => Err(std::io::Error::from_raw_os_error(-code.get()).to_string()),
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

/// `IFLA_BRPORT_STATE` in `linux/if_link.h`.
const IFLA_BRPORT_STATE: u16 = 1;
/// `BR_STATE_DISABLED`: the port neither learns nor forwards.
pub const BR_STATE_DISABLED: u8 = 0;
/// `BR_STATE_FORWARDING`.
pub const BR_STATE_FORWARDING: u8 = 3;

/// A bridge port's state from `/sys/class/net/PORT/brport/state` (no root needed).
pub fn port_state(port: &str) -> std::io::Result<u8> {
    let path = std::path::Path::new(crate::paths::SYS_CLASS_NET)
        .join(port)
        .join("brport/state");
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("brport/state: {e}")))
}
