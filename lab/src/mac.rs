//! Ethernet addresses: text form, libvirt's tap address, and EUI-64 link-local addresses.

use std::net::Ipv6Addr;

use anyhow::{bail, Result};

/// A 48-bit Ethernet address.
pub type Mac = [u8; 6];

/// `aa:bb:cc:dd:ee:ff`, lower case, as the kernel and libvirt print it.
pub fn format_mac(mac: Mac) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(text: &str) -> Result<Mac> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("invalid MAC address {text:?}");
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            bail!("invalid MAC address {text:?}");
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| anyhow::anyhow!("invalid MAC address {text:?}"))?;
    }
    Ok(mac)
}

/// The address libvirt gives the host end (tap) of a vNIC: the guest MAC with its first
/// byte replaced by `0xfe` (`0xfa` when the guest MAC starts with `0xfe`), so the bridge
/// never adopts it as its own address.
pub fn tap_mac(guest: Mac) -> Mac {
    let mut mac = guest;
    mac[0] = if mac[0] == 0xfe { 0xfa } else { 0xfe };
    mac
}

/// The IPv6 link-local address the kernel derives from `mac` (EUI-64, `addr_gen_mode` 0):
/// `fe80::` + the MAC with `ff:fe` in the middle and the universal/local bit flipped.
pub fn link_local(mac: Mac) -> Ipv6Addr {
    let word = |hi: u8, lo: u8| (u16::from(hi) << 8) | u16::from(lo);
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        word(mac[0] ^ 0x02, mac[1]),
        word(mac[2], 0xff),
        word(0xfe, mac[3]),
        word(mac[4], mac[5]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eui64_matches_the_kernel() {
        // Read from a real interface: 6a:08:0c:96:a1:7e had fe80::6808:cff:fe96:a17e.
        let mac = parse_mac("6a:08:0c:96:a1:7e").unwrap();
        assert_eq!(link_local(mac).to_string(), "fe80::6808:cff:fe96:a17e");
        let mac = parse_mac("56:6F:4C:AB:00:01").unwrap();
        assert_eq!(link_local(mac).to_string(), "fe80::546f:4cff:feab:1");
    }

    #[test]
    fn text_round_trip_and_tap_address() {
        let mac = [0x56, 0x6f, 0x4c, 0xab, 0x00, 0x0a];
        assert_eq!(format_mac(mac), "56:6f:4c:ab:00:0a");
        assert_eq!(parse_mac(&format_mac(mac)).unwrap(), mac);
        assert_eq!(format_mac(tap_mac(mac)), "fe:6f:4c:ab:00:0a");
        assert_eq!(
            format_mac(tap_mac([0xfe, 0x6f, 0x4c, 0xab, 0x00, 0x0a])),
            "fa:6f:4c:ab:00:0a"
        );
        assert!(parse_mac("56:6f:4c:ab:00").is_err());
        assert!(parse_mac("56:6f:4c:ab:00:zz").is_err());
        assert!(parse_mac("56:6f:4c:ab:00:100").is_err());
    }
}
