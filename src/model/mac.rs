//! Ethernet MAC addresses, and the tap MAC libvirt derives from a guest MAC.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The MAC libvirt gives the host side (tap) of a guest NIC: the first byte replaced by
    /// 0xfe, or by 0xfa when the guest MAC already starts with 0xfe
    /// (`virNetDevTapCreateInBridgePort`). Two guest MACs that differ only in their first
    /// byte get the same tap MAC, so a tap MAC never proves which vNIC a port belongs to.
    pub fn tap(self) -> Mac {
        let mut b = self.0;
        b[0] = if b[0] == 0xfe { 0xfa } else { 0xfe };
        Mac(b)
    }

    /// True when `port` has the MAC libvirt gives the tap of this guest MAC (a hint, never
    /// a proof: see [`Mac::tap`]).
    pub fn is_tap_of(self, port: Mac) -> bool {
        port == self.tap()
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.trim().split(':');
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(|| format!("invalid MAC address {s:?}"))?;
            if part.len() != 2 {
                return Err(format!("invalid MAC address {s:?}"));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| format!("invalid MAC address {s:?}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("invalid MAC address {s:?}"));
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let m: Mac = "56:6F:1a:00:00:0b".parse().unwrap();
        assert_eq!(m.to_string(), "56:6f:1a:00:00:0b");
        assert_eq!(m.tap().to_string(), "fe:6f:1a:00:00:0b");
        assert!(m.is_tap_of("fe:6f:1a:00:00:0b".parse().unwrap()));
        assert!(!m.is_tap_of("fe:6f:1a:00:00:0c".parse().unwrap()));
        // libvirt: a guest MAC that starts with fe gets fa.
        let fe: Mac = "fe:6f:1a:00:00:0b".parse().unwrap();
        assert_eq!(fe.tap().to_string(), "fa:6f:1a:00:00:0b");
        // Guest MACs differing only in the first byte collide on the host side.
        let other: Mac = "02:6f:1a:00:00:0b".parse().unwrap();
        assert_eq!(other.tap(), m.tap());
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "56:6f:1a:00:00",
            "56:6f:1a:00:00:0b:01",
            "56:6f:1a:00:00:zz",
            "566f1a00000b",
            "5:6f:1a:00:00:0b0",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
