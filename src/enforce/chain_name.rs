//! The names of the per-bridge objects every backend creates: a prefix that says what the
//! object is, then the bridge's name, so that a listing tells which bridge an object serves
//! and whether it is ours (everything named otherwise is someone else's).
//!
//! A bridge name is a Linux interface name: at most 15 bytes, no `/`, no blank. iptables
//! and ebtables chain names take it as it is ([`PerBridge::verbatim`]: `BRIDGE-ISO-` + 15
//! = 26 bytes, under iptables' 28 and ebtables' 31); nft identifiers take only letters,
//! digits and `_`, so the name is escaped ([`PerBridge::escaped`]: `_` as `__`, any other
//! byte but ASCII letters and digits as `_` and two lowercase hex digits, at most 45 bytes
//! after the prefix), which keeps every bridge's name distinct and reversible.

/// How the bridge's name is spelled after the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spelling {
    /// As it is.
    Verbatim,
    /// Escaped into an nft identifier.
    Escaped,
}

/// One kind of per-bridge name: a prefix, then the bridge's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerBridge {
    prefix: &'static str,
    spelling: Spelling,
}

impl PerBridge {
    /// Names of `prefix` and the bridge's name as it is.
    pub const fn verbatim(prefix: &'static str) -> PerBridge {
        PerBridge {
            prefix,
            spelling: Spelling::Verbatim,
        }
    }

    /// Names of `prefix` and the bridge's name escaped into an nft identifier
    /// (`my-net.10` -> `my_2dnet_2e10`).
    pub const fn escaped(prefix: &'static str) -> PerBridge {
        PerBridge {
            prefix,
            spelling: Spelling::Escaped,
        }
    }

    /// The name of `bridge`'s object.
    pub fn name(&self, bridge: &str) -> String {
        match self.spelling {
            Spelling::Verbatim => format!("{}{bridge}", self.prefix),
            Spelling::Escaped => escaped(self.prefix, bridge),
        }
    }

    /// The bridge whose object `name` is, or `None` when `name` is not one of these.
    pub fn bridge_of(&self, name: &str) -> Option<String> {
        match self.spelling {
            Spelling::Verbatim => name
                .strip_prefix(self.prefix)
                .filter(|b| !b.is_empty())
                .map(str::to_string),
            Spelling::Escaped => unescaped(self.prefix, name),
        }
    }

    /// Whether `name` is one of these.
    pub fn owns(&self, name: &str) -> bool {
        self.bridge_of(name).is_some()
    }
}

/// A backend's chains: one main chain and one chain per bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chains {
    /// The main chain, jumped to from the hook's chain.
    pub main: &'static str,
    /// The per-bridge chains.
    pub bridge: PerBridge,
}

impl Chains {
    /// Whether `chain` is one of these.
    pub fn is_ours(&self, chain: &str) -> bool {
        chain == self.main || self.bridge.owns(chain)
    }
}

/// The iptables backend's chains: `BRIDGE-ISOLATION`, `BRIDGE-ISO-<bridge>`.
pub const IPTABLES: Chains = Chains {
    main: "BRIDGE-ISOLATION",
    bridge: PerBridge::verbatim("BRIDGE-ISO-"),
};
/// The firewalld backend's direct chains: `BRIDGE_ISOLATION`, `BRIDGE_ISO_<bridge>`.
pub const FIREWALLD: Chains = Chains {
    main: "BRIDGE_ISOLATION",
    bridge: PerBridge::verbatim("BRIDGE_ISO_"),
};
/// The cross-host filter's direct chains of the peer rule (firewalld variant); never
/// taken for the firewalld backend's own.
pub const EB_PEERS: PerBridge = PerBridge::verbatim("BRIDGE_PEERS_");
/// The cross-host filter's direct chains of the uplink allow-list (firewalld variant).
pub const EB_UPLINK: PerBridge = PerBridge::verbatim("BRIDGE_UPLINK_");
/// The nftables backend's sets of VM ports.
pub const NFT_SET: PerBridge = PerBridge::escaped("vm_");
/// The nftables backend's regular chains.
pub const NFT_CHAIN: PerBridge = PerBridge::escaped("br_");
/// The cross-host table's sets of peer ranges.
pub const PEERS_SET: PerBridge = PerBridge::escaped("peers_");
/// The cross-host table's sets of trusted source MACs.
pub const TRUSTED_SET: PerBridge = PerBridge::escaped("trusted_");
/// The cross-host table's sets of trusted vNIC ports.
pub const OPEN_SET: PerBridge = PerBridge::escaped("open_");
/// The cross-host table's sets of source MACs allowed from the uplink.
pub const UPLINK_SET: PerBridge = PerBridge::escaped("uplink_");

/// `prefix` and `bridge` with every byte but ASCII letters and digits escaped (`_` as `__`,
/// others as `_` and two lowercase hex digits).
fn escaped(prefix: &str, bridge: &str) -> String {
    let mut name = String::from(prefix);
    for b in bridge.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => name.push(char::from(b)),
            b'_' => name.push_str("__"),
            _ => name.push_str(&format!("_{b:02x}")),
        }
    }
    name
}

/// The bridge name `escaped(prefix, ..)` made `name` from, or `None`.
fn unescaped(prefix: &str, name: &str) -> Option<String> {
    let mut rest = name.strip_prefix(prefix)?.bytes();
    let mut bytes = Vec::new();
    while let Some(b) = rest.next() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => bytes.push(b),
            b'_' => match rest.next()? {
                b'_' => bytes.push(b'_'),
                hi => {
                    let hex = [hi, rest.next()?];
                    let hex = std::str::from_utf8(&hex).ok()?;
                    if hex.bytes().any(|c| c.is_ascii_uppercase()) {
                        return None;
                    }
                    bytes.push(u8::from_str_radix(hex, 16).ok()?);
                }
            },
            _ => return None,
        }
    }
    String::from_utf8(bytes).ok().filter(|b| !b.is_empty())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const ALL: [PerBridge; 10] = [
        IPTABLES.bridge,
        FIREWALLD.bridge,
        EB_PEERS,
        EB_UPLINK,
        NFT_SET,
        NFT_CHAIN,
        PEERS_SET,
        TRUSTED_SET,
        OPEN_SET,
        UPLINK_SET,
    ];
    /// Today's names, byte for byte, for a few bridges (the last is 15 bytes, IFNAMSIZ - 1).
    #[test]
    fn names_are_pinned() {
        let pinned: [(&str, [&str; 10]); 4] = [
            (
                "red",
                [
                    "BRIDGE-ISO-red",
                    "BRIDGE_ISO_red",
                    "BRIDGE_PEERS_red",
                    "BRIDGE_UPLINK_red",
                    "vm_red",
                    "br_red",
                    "peers_red",
                    "trusted_red",
                    "open_red",
                    "uplink_red",
                ],
            ),
            (
                "my-net.10",
                [
                    "BRIDGE-ISO-my-net.10",
                    "BRIDGE_ISO_my-net.10",
                    "BRIDGE_PEERS_my-net.10",
                    "BRIDGE_UPLINK_my-net.10",
                    "vm_my_2dnet_2e10",
                    "br_my_2dnet_2e10",
                    "peers_my_2dnet_2e10",
                    "trusted_my_2dnet_2e10",
                    "open_my_2dnet_2e10",
                    "uplink_my_2dnet_2e10",
                ],
            ),
            (
                "a_b",
                [
                    "BRIDGE-ISO-a_b",
                    "BRIDGE_ISO_a_b",
                    "BRIDGE_PEERS_a_b",
                    "BRIDGE_UPLINK_a_b",
                    "vm_a__b",
                    "br_a__b",
                    "peers_a__b",
                    "trusted_a__b",
                    "open_a__b",
                    "uplink_a__b",
                ],
            ),
            (
                "vdsm-br_vlan10x",
                [
                    "BRIDGE-ISO-vdsm-br_vlan10x",
                    "BRIDGE_ISO_vdsm-br_vlan10x",
                    "BRIDGE_PEERS_vdsm-br_vlan10x",
                    "BRIDGE_UPLINK_vdsm-br_vlan10x",
                    "vm_vdsm_2dbr__vlan10x",
                    "br_vdsm_2dbr__vlan10x",
                    "peers_vdsm_2dbr__vlan10x",
                    "trusted_vdsm_2dbr__vlan10x",
                    "open_vdsm_2dbr__vlan10x",
                    "uplink_vdsm_2dbr__vlan10x",
                ],
            ),
        ];
        for (bridge, names) in pinned {
            let got = ALL.map(|kind| kind.name(bridge));
            assert_eq!(got, names, "{bridge}");
            // Each name leads back to its bridge, and to no other kind's.
            for (kind, name) in ALL.iter().zip(names) {
                assert_eq!(kind.bridge_of(name).as_deref(), Some(bridge), "{name}");
                let others = ALL.iter().filter(|k| *k != kind && k.owns(name));
                assert_eq!(others.count(), 0, "{name}");
            }
        }
    }

    #[test]
    fn names_are_bounded_distinct_and_reversible() {
        let names = [
            "red",
            "ovirtmgmt",
            "my-net",
            "my_2dnet",
            "br.100",
            "a_b",
            "a__b",
            "ünï",
            "x@y:z%",
            "a-b.c_d-e.f_g",
            "ports",
            "vdsm-br_vlan10x",
        ];
        for kind in ALL {
            let mut seen = BTreeSet::new();
            for n in names {
                let name = kind.name(n);
                assert_eq!(kind.bridge_of(&name).as_deref(), Some(n), "{name}");
                assert!(seen.insert(name));
            }
        }
        // Verbatim chain names stay under iptables' 28 and ebtables' 31 bytes.
        for kind in [IPTABLES.bridge, FIREWALLD.bridge] {
            assert!(kind.name("vdsm-br_vlan10x").len() <= 26);
        }
        assert!(EB_PEERS.name("vdsm-br_vlan10x").len() <= 28 && EB_UPLINK.name("vdsm-br_vlan10x").len() <= 29);
        // Escaped names: letters, digits and `_` only, at most 3 bytes per byte of the name.
        for n in names {
            let s = NFT_SET.name(n);
            assert!(s.len() <= 3 + 3 * 15, "{s}");
            assert!(s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'), "{s}");
        }
        for foreign in ["vm_", "other", "vm_a_", "vm_a_2", "vm_a_2D", "vm_a-b", "vm_a_zz"] {
            assert_eq!(NFT_SET.bridge_of(foreign), None, "{foreign}");
        }
        assert!(IPTABLES.is_ours("BRIDGE-ISOLATION") && IPTABLES.is_ours("BRIDGE-ISO-red"));
        assert!(!IPTABLES.is_ours("BRIDGE-ISO-") && !IPTABLES.is_ours("FORWARD"));
        assert!(FIREWALLD.is_ours("BRIDGE_ISO_x") && !FIREWALLD.is_ours("BRIDGE_PEERS_x"));
        assert!(!EB_UPLINK.owns("BRIDGE_UPLINK_"));
    }
}
