//! Trusted vNICs and their ports. A port is exempt from isolation only when the host proves
//! it is the tap of a vNIC marked `bridge_isolation_trusted`; its MAC never proves that
//! (libvirt gives guest MACs that differ only in their first byte the same tap MAC, and a
//! user allowed a custom MAC can choose one).
//!
//! The proofs, in order: the tap named by libvirt's live XML (`<target dev>`), which must be
//! a bridge port now; else, for a hotplugged vNIC, the one tap the VM's own qemu process
//! holds open ([`crate::sys::owner`]) with the MAC libvirt derives from the guest MAC. A record
//! keeps the tap's name and interface index, so a later tap of the same name is a stranger.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::host::state::{State, TrustedPort, TrustedVnic};
use crate::model::mac::Mac;
use crate::model::port::{Port, Snapshot};

/// The outcome of trying to bind a trusted vNIC to its tap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Its tap, proven.
    Bound(TrustedPort),
    /// No proof: the port stays isolated, for the reason given.
    Unproven(String),
}

/// The record binding the vNIC with guest MAC `mac` to `port`.
fn bound(mac: Mac, port: &Port) -> TrustedPort {
    TrustedPort {
        mac,
        tap: port.name.clone(),
        ifindex: port.ifindex,
    }
}

/// Binds the vNIC with guest MAC `mac` to `tap`, the name libvirt's live XML gives it.
pub fn by_name(mac: Mac, tap: &str, live: &Snapshot) -> Binding {
    match live.port(tap) {
        Some(port) => Binding::Bound(bound(mac, port)),
        None => Binding::Unproven(format!("its tap {tap} is not a bridge port")),
    }
}

/// Binds the vNIC with guest MAC `mac` to the one tap among `owned` (the taps its VM's qemu
/// process holds) that is a bridge port with the MAC libvirt derives from `mac`.
pub fn by_owner(mac: Mac, owned: &BTreeSet<String>, live: &Snapshot) -> Binding {
    let candidates: Vec<&Port> = owned
        .iter()
        .filter_map(|tap| live.port(tap))
        .filter(|p| p.mac == Some(mac.tap()))
        .collect();
    match candidates.as_slice() {
        [port] => Binding::Bound(bound(mac, port)),
        [] if owned.is_empty() => Binding::Unproven("no tap held by the VM's qemu process was found".into()),
        [] => Binding::Unproven(format!(
            "none of the taps the VM's qemu holds ({}) is a bridge port with MAC {}",
            owned.iter().cloned().collect::<Vec<_>>().join(", "),
            mac.tap()
        )),
        many => Binding::Unproven(format!(
            "{} taps of the VM's qemu have MAC {}: ambiguous",
            many.len(),
            mac.tap()
        )),
    }
}

/// True while the recorded tap still exists with the recorded interface index.
pub fn is_live(port: &TrustedPort, live: &Snapshot) -> bool {
    live.port(&port.tap).is_some_and(|p| p.ifindex == port.ifindex)
}

/// What became of format-1 trust records (by guest MAC) bound to the running taps.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LegacyBinding {
    /// Records bound, by VM.
    pub bound: BTreeMap<String, Vec<TrustedPort>>,
    /// One line per record that several ports match: none of them is opened.
    pub ambiguous: Vec<String>,
    /// One line per record that no port matches (its VM is not running): dropped.
    pub absent: Vec<String>,
}

/// Binds each format-1 record to the one bridge port whose MAC libvirt derives from its
/// guest MAC, where exactly one port has it; a record that several ports match opens none.
pub fn bind_legacy(legacy: &BTreeMap<Mac, TrustedVnic>, live: &Snapshot) -> LegacyBinding {
    let mut out = LegacyBinding::default();
    for (mac, owner) in legacy {
        let mut matching: Vec<&Port> = live.all_ports().filter(|p| p.mac == Some(mac.tap())).collect();
        matching.sort_by(|a, b| a.name.cmp(&b.name));
        match matching.as_slice() {
            [port] => out.bound.entry(owner.vm.clone()).or_default().push(bound(*mac, port)),
            [] => out.absent.push(format!(
                "trusted vNIC {mac} of VM {}: no running tap has MAC {}; its next start records it again",
                owner.vm,
                mac.tap()
            )),
            many => out.ambiguous.push(format!(
                "trusted vNIC {mac} of VM {}: {} ports have MAC {} ({}): none opened, as a MAC \
                 proves no identity; the VM's next start or vNIC update records its tap",
                owner.vm,
                many.len(),
                mac.tap(),
                many.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
            )),
        }
    }
    for ports in out.bound.values_mut() {
        ports.sort();
    }
    out
}

/// The ports exempt from isolation, for classifying a plan.
#[derive(Clone, Debug, Default)]
pub struct TrustedSet {
    ports: HashSet<(String, u32)>,
}

impl TrustedSet {
    /// The live ports `state` trusts: its records whose tap still has the recorded index,
    /// and format-1 records bound as [`bind_legacy`] would (until a root run writes them).
    pub fn of(state: &State, live: &Snapshot) -> TrustedSet {
        let legacy = bind_legacy(&state.legacy_trusted, live);
        let ports = state
            .trusted_ports()
            .map(|(_, p)| p)
            .chain(legacy.bound.values().flatten())
            .filter(|p| is_live(p, live))
            .map(|p| (p.tap.clone(), p.ifindex))
            .collect();
        TrustedSet { ports }
    }

    /// True when `port` is a trusted vNIC's tap.
    pub fn contains(&self, port: &Port) -> bool {
        self.ports.contains(&(port.name.clone(), port.ifindex))
    }
}

/// Root, under the lock: binds format-1 records (see [`bind_legacy`]) and forgets records
/// whose tap is gone (an interface index is never reused while the host runs, so such a
/// record can never match again). Returns one line per change and its log level: a
/// warning where a record opened nothing because several ports matched it.
pub fn tidy(state: &mut State, live: &Snapshot) -> Vec<(log::Level, String)> {
    let mut said = Vec::new();
    if !state.legacy_trusted.is_empty() {
        let legacy = bind_legacy(&std::mem::take(&mut state.legacy_trusted), live);
        for (vm, ports) in legacy.bound {
            for p in &ports {
                said.push((
                    log::Level::Info,
                    format!(
                        "trusted vNIC {} of VM {vm}: carried over from the previous release to tap {} (index {})",
                        p.mac, p.tap, p.ifindex
                    ),
                ));
            }
            let records = state.trusted_vnics.entry(vm).or_default();
            for p in ports {
                if !records.iter().any(|r| r.mac == p.mac) {
                    records.push(p);
                }
            }
            records.sort();
        }
        said.extend(legacy.ambiguous.into_iter().map(|l| (log::Level::Warn, l)));
        said.extend(legacy.absent.into_iter().map(|l| (log::Level::Info, l)));
    }
    for (vm, ports) in &mut state.trusted_vnics {
        ports.retain(|p| {
            let keep = is_live(p, live) || crate::sys::bridge::ifindex(&p.tap) == Some(p.ifindex);
            if !keep {
                said.push((
                    log::Level::Info,
                    format!(
                        "trusted vNIC {} of VM {vm}: tap {} is gone, record dropped",
                        p.mac, p.tap
                    ),
                ));
            }
            keep
        });
    }
    state.trusted_vnics.retain(|_, ports| !ports.is_empty());
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, ifindex: u32, mac: &str) -> Port {
        Port {
            name: name.into(),
            ifindex,
            mac: Some(mac.parse().unwrap()),
            isolated: Some(true),
        }
    }

    fn legacy(records: &[(&str, &str)]) -> BTreeMap<Mac, TrustedVnic> {
        records
            .iter()
            .map(|(mac, vm)| (mac.parse().unwrap(), TrustedVnic { vm: vm.to_string() }))
            .collect()
    }

    #[test]
    fn format_1_records_bind_to_exactly_one_port_or_to_none() {
        let live = Snapshot::of(vec![
            (
                "red",
                3,
                vec![
                    port("eth1", 2, "52:54:00:12:34:56"),
                    // Router vm-r (56:...:0a) alone on its tap MAC.
                    port("vnet4", 30, "fe:6f:1a:3e:00:0a"),
                    // A trusted 56:...:07 beside an attacker's 02:...:07: same tap MAC.
                    port("vnet1", 31, "fe:6f:1a:3e:00:07"),
                ],
            ),
            ("blue", 4, vec![port("vnet2", 32, "fe:6f:1a:3e:00:07")]),
        ]);
        let records = legacy(&[
            ("56:6f:1a:3e:00:0a", "vm-r"),
            ("56:6f:1a:3e:00:07", "vm-t"),
            ("56:6f:1a:3e:00:0b", "vm-down"),
        ]);
        let got = bind_legacy(&records, &live);
        assert_eq!(
            got.bound,
            BTreeMap::from([(
                "vm-r".to_string(),
                vec![TrustedPort {
                    mac: "56:6f:1a:3e:00:0a".parse().unwrap(),
                    tap: "vnet4".into(),
                    ifindex: 30
                }]
            )])
        );
        assert_eq!((got.ambiguous.len(), got.absent.len()), (1, 1));
        assert!(
            got.ambiguous[0].contains("2 ports have MAC fe:6f:1a:3e:00:07 (vnet1, vnet2): none opened"),
            "{:?}",
            got.ambiguous
        );
        assert!(got.absent[0].contains("no running tap"), "{:?}", got.absent);

        // Until root writes the binding, planning trusts what the binding would.
        let state = State {
            legacy_trusted: records,
            ..State::default()
        };
        let set = TrustedSet::of(&state, &live);
        assert!(set.contains(live.port("vnet4").unwrap()));
        assert!(!set.contains(live.port("vnet1").unwrap()));
        assert!(!set.contains(live.port("vnet2").unwrap()));

        let mut state = state;
        let said = tidy(&mut state, &live);
        assert!(state.legacy_trusted.is_empty());
        assert_eq!(state.trusted_vnics, got.bound);
        assert_eq!(said.len(), 3, "{said:?}");
    }

    #[test]
    fn tidy_forgets_records_whose_tap_is_gone() {
        let live = Snapshot::of(vec![("red", 3, vec![port("vnet4", 30, "fe:6f:1a:3e:00:0a")])]);
        let record = |tap: &str, ifindex| TrustedPort {
            mac: "56:6f:1a:3e:00:0a".parse().unwrap(),
            tap: tap.into(),
            ifindex,
        };
        let mut state = State::default();
        state.trusted_vnics.insert("vm-r".into(), vec![record("vnet4", 30)]);
        // vnet4 of another index: its tap was deleted, a new one took the name.
        state.trusted_vnics.insert("vm-old".into(), vec![record("vnet4", 12)]);
        state
            .trusted_vnics
            .insert("vm-gone".into(), vec![record("vnet-none-0", 13)]);
        let said = tidy(&mut state, &live);
        assert_eq!(state.trusted_vnics.keys().collect::<Vec<_>>(), ["vm-r"]);
        assert_eq!(said.len(), 2, "{said:?}");
    }
}
