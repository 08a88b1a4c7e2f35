//! vNIC reports: what a VM or device hook learnt about a VM's vNICs, and how it changes state.
//!
//! An unprivileged VM hook sends its report to the root helper, which trusts it no further
//! than this: it can mark or unmark one VM's vNICs as trusted (each bound to a tap the host
//! proves, never to a MAC: see [`crate::host::trust`]) and forget that VM's records; it cannot
//! name bridges, paths or backends. Isolation itself always follows the root-owned state.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::state::State;
use crate::host::trust::{self, Binding};
use crate::model::mac::Mac;
use crate::model::port::Snapshot;

/// What happened to the VM's vNICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// The vNICs exist (VM started or arrived, NIC plugged or updated).
    Up,
    /// The VM is gone: forget its records.
    Gone,
}

/// One vNIC of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VnicFact {
    /// Guest MAC: which vNIC of the VM this is.
    pub mac: Mac,
    /// `bridge_isolation_trusted`, when the payload says; `None` keeps what was recorded.
    pub trusted: Option<bool>,
    /// The tap named by libvirt's live XML (`<target dev>`), when the payload has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
}

/// A hook's report about one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// `vmId` of the VM.
    pub vm: String,
    /// What happened.
    pub event: Event,
    /// Its vNICs (all of them for a VM, one for a device hook).
    pub vnics: Vec<VnicFact>,
    /// True when `vnics` are all the VM's vNICs (a whole domain): records of vNICs not in
    /// it are dropped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub whole: bool,
}

/// Most vNICs a report may name (libvirt caps a VM's PCI slots far lower).
pub const MAX_VNICS: usize = 512;

impl Report {
    /// Checks the report is well formed: a sane VM id, valid tap names, a bounded list.
    pub fn validate(&self) -> Result<()> {
        crate::model::owner::check_vm_id(&self.vm).map_err(Error::Payload)?;
        if self.vnics.len() > MAX_VNICS {
            return Err(Error::Payload(format!("{} vNICs in one report", self.vnics.len())));
        }
        for tap in self.vnics.iter().filter_map(|v| v.tap.as_deref()) {
            crate::model::ifname::validate(tap).map_err(|e| Error::Payload(format!("tap: {e}")))?;
        }
        Ok(())
    }

    /// Records the report in `state`: each trusted vNIC bound to its tap, proven by the
    /// name the payload gives or, where it gives none, by `owned` (the taps the VM's qemu
    /// holds: root only), called at most once. A vNIC whose tap is not proven gets no
    /// record, so its port stays isolated; one line per such vNIC is returned. Only this
    /// VM's records change.
    pub fn apply(
        &self,
        state: &mut State,
        live: &Snapshot,
        owned: impl Fn() -> std::io::Result<BTreeSet<String>>,
    ) -> Vec<String> {
        let mut records = state.trusted_vnics.remove(&self.vm).unwrap_or_default();
        let mut unproven = Vec::new();
        match self.event {
            Event::Gone => {
                state.legacy_trusted.retain(|_, t| t.vm != self.vm);
                return unproven;
            }
            Event::Up if self.whole => {
                state.legacy_trusted.retain(|_, t| t.vm != self.vm);
                records.retain(|r| self.vnics.iter().any(|v| v.mac == r.mac));
            }
            Event::Up => {}
        }
        let mut owned_taps: Option<BTreeSet<String>> = None;
        for v in &self.vnics {
            if v.trusted.is_some() {
                state
                    .legacy_trusted
                    .retain(|mac, t| !(t.vm == self.vm && *mac == v.mac));
            }
            if v.trusted != Some(true) {
                if v.trusted == Some(false) {
                    records.retain(|r| r.mac != v.mac);
                }
                continue;
            }
            // A record proven before (its tap still there, same index) stands while the
            // payload names no other tap.
            let kept = records
                .iter()
                .any(|r| r.mac == v.mac && trust::is_live(r, live) && v.tap.as_ref().is_none_or(|t| *t == r.tap));
            if kept {
                continue;
            }
            records.retain(|r| r.mac != v.mac);
            let binding = match &v.tap {
                Some(tap) => trust::by_name(v.mac, tap, live),
                None => {
                    let taps = owned_taps.get_or_insert_with(|| {
                        owned().unwrap_or_else(|e| {
                            log::debug!("reading the taps of VM {}'s qemu: {e}", self.vm);
                            BTreeSet::new()
                        })
                    });
                    trust::by_owner(v.mac, taps, live)
                }
            };
            match binding {
                Binding::Bound(port) => records.push(port),
                Binding::Unproven(why) => unproven.push(format!(
                    "VM {} trusted vNIC {}: {why}; its port stays isolated",
                    self.vm, v.mac
                )),
            }
        }
        if !records.is_empty() {
            records.sort();
            state.trusted_vnics.insert(self.vm.clone(), records);
        }
        unproven
    }

    /// True when `state` already says what the report would record, as far as an
    /// unprivileged hook can tell: a trusted vNIC whose tap only root could prove is not.
    pub fn recorded_in(&self, state: &State, live: &Snapshot) -> bool {
        let mut after = state.clone();
        let unproven = self.apply(&mut after, live, || Ok(BTreeSet::new()));
        unproven.is_empty()
            && after.trusted_vnics == state.trusted_vnics
            && after.legacy_trusted == state.legacy_trusted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::state::{TrustedPort, TrustedVnic};
    use crate::model::port::Port;

    const VM_A: &str = "4d3a1f52-8a0b-4c8e-9a8f-2f7b3d1c0e11";
    const VM_B: &str = "9b2c7e10-51d4-4f6a-8c3e-0a1b2c3d4e5f";

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    fn port(name: &str, ifindex: u32, mac_: &str) -> Port {
        Port {
            name: name.into(),
            ifindex,
            mac: Some(mac(mac_)),
            isolated: Some(true),
        }
    }

    /// Bridge red: vnet1 (untrusted 02:6f:1a:3e:00:07), vnet2 (trusted 56:6f:1a:3e:00:07):
    /// both taps get fe:6f:1a:3e:00:07; vnet3 is the tap of fe:6f:1a:3e:00:09 (fa:...).
    fn live() -> Snapshot {
        Snapshot::of(vec![(
            "red",
            3,
            vec![
                port("vnet1", 21, "fe:6f:1a:3e:00:07"),
                port("vnet2", 22, "fe:6f:1a:3e:00:07"),
                port("vnet3", 23, "fa:6f:1a:3e:00:09"),
            ],
        )])
    }

    fn fact(m: &str, trusted: Option<bool>, tap: Option<&str>) -> VnicFact {
        VnicFact {
            mac: mac(m),
            trusted,
            tap: tap.map(str::to_string),
        }
    }

    fn report(vm: &str, event: Event, vnics: Vec<VnicFact>, whole: bool) -> Report {
        Report {
            vm: vm.into(),
            event,
            vnics,
            whole,
        }
    }

    /// A report of `vm` that its vNIC 56:6f:1a:3e:00:07 (the router's) is trusted, its tap
    /// named `tap` (live XML) or not (hotplug).
    fn router(vm: &str, tap: Option<&str>, whole: bool) -> Report {
        report(vm, Event::Up, vec![fact("56:6f:1a:3e:00:07", Some(true), tap)], whole)
    }

    fn no_owner() -> std::io::Result<BTreeSet<String>> {
        panic!("the owner proof was asked although the payload names the tap")
    }

    #[test]
    fn a_trusted_vnic_is_bound_to_the_tap_its_live_xml_names() {
        let mut state = State::default();
        let up = router(VM_B, Some("vnet2"), true);
        up.validate().unwrap();
        assert!(!up.recorded_in(&state, &live()));
        assert!(up.apply(&mut state, &live(), no_owner).is_empty());
        let bound = TrustedPort {
            mac: mac("56:6f:1a:3e:00:07"),
            tap: "vnet2".into(),
            ifindex: 22,
        };
        assert_eq!(state.trusted_vnics[VM_B], [bound]);
        assert!(up.recorded_in(&state, &live()));
        // The colliding tap vnet1 is trusted by nothing.
        let trusted = crate::host::trust::TrustedSet::of(&state, &live());
        assert!(trusted.contains(live().port("vnet2").unwrap()));
        assert!(!trusted.contains(live().port("vnet1").unwrap()));
    }

    #[test]
    fn a_guest_mac_starting_with_fe_is_found_on_its_fa_tap() {
        let mut state = State::default();
        let hotplug = report(
            VM_A,
            Event::Up,
            vec![fact("fe:6f:1a:3e:00:09", Some(true), None)],
            false,
        );
        let owned = || Ok(BTreeSet::from(["vnet3".to_string()]));
        assert!(hotplug.apply(&mut state, &live(), owned).is_empty());
        assert_eq!(state.trusted_vnics[VM_A][0].tap, "vnet3");
    }

    #[test]
    fn without_a_named_tap_only_the_vms_own_qemu_proves_one() {
        let hotplug = router(VM_B, None, false);
        // The qemu holds vnet2 only: the colliding vnet1 is no candidate.
        let mut state = State::default();
        assert!(hotplug
            .apply(&mut state, &live(), || Ok(BTreeSet::from(["vnet2".to_string()])))
            .is_empty());
        assert_eq!(state.trusted_vnics[VM_B][0].tap, "vnet2");
        // It holds both colliding taps (one VM, two vNICs differing in the first byte):
        // ambiguous, nothing opened.
        let mut state = State::default();
        let said = hotplug.apply(&mut state, &live(), || {
            Ok(BTreeSet::from(["vnet1".to_string(), "vnet2".to_string()]))
        });
        assert!(state.trusted_vnics.is_empty());
        assert_eq!(said.len(), 1);
        assert!(
            said[0].contains("2 taps of the VM's qemu have MAC fe:6f:1a:3e:00:07: ambiguous"),
            "{said:?}"
        );
        // No qemu found (or no root to look): nothing opened, one line, and an
        // unprivileged hook asks root.
        let mut state = State::default();
        let said = hotplug.apply(&mut state, &live(), || {
            Err(std::io::Error::from_raw_os_error(libc::EACCES))
        });
        assert!(state.trusted_vnics.is_empty());
        assert!(said[0].contains("its port stays isolated"), "{said:?}");
        assert!(!hotplug.recorded_in(&state, &live()));
    }

    #[test]
    fn a_named_tap_that_is_no_bridge_port_opens_nothing() {
        let mut state = State::default();
        let up = router(VM_B, Some("vnet9"), true);
        let said = up.apply(&mut state, &live(), no_owner);
        assert!(state.trusted_vnics.is_empty());
        assert!(said[0].contains("its tap vnet9 is not a bridge port"), "{said:?}");
    }

    #[test]
    fn records_are_keyed_by_vm() {
        let mut state = State::default();
        // Two VMs with the same guest MAC (another cluster's VM migrated in, a custom MAC).
        for (vm, tap) in [(VM_A, "vnet1"), (VM_B, "vnet2")] {
            let up = router(vm, Some(tap), true);
            up.apply(&mut state, &live(), no_owner);
        }
        assert_eq!(state.trusted_vnics.len(), 2);
        // Destroying A, whose last XML lists that MAC, forgets A's record only.
        let gone = report(VM_A, Event::Gone, vec![fact("56:6f:1a:3e:00:07", None, None)], true);
        gone.apply(&mut state, &live(), no_owner);
        assert_eq!(state.trusted_vnics.keys().collect::<Vec<_>>(), [VM_B]);
        // A device update marking B's vNIC untrusted drops it.
        let update = report(
            VM_B,
            Event::Up,
            vec![fact("56:6f:1a:3e:00:07", Some(false), Some("vnet2"))],
            false,
        );
        update.apply(&mut state, &live(), no_owner);
        assert!(state.trusted_vnics.is_empty());
    }

    #[test]
    fn a_proven_record_stands_through_a_device_hook_that_names_no_tap() {
        let mut state = State::default();
        let start = router(VM_B, Some("vnet2"), true);
        start.apply(&mut state, &live(), no_owner);
        let update = router(VM_B, None, false);
        assert!(update.recorded_in(&state, &live()));
        // Once the tap is gone (a new vnet2 has another index), the record proves nothing.
        let reborn = Snapshot::of(vec![("red", 3, vec![port("vnet2", 40, "fe:6f:1a:3e:00:07")])]);
        assert!(!update.recorded_in(&state, &reborn));
        assert!(!crate::host::trust::TrustedSet::of(&state, &reborn).contains(reborn.port("vnet2").unwrap()));
    }

    #[test]
    fn a_whole_domain_replaces_the_vms_records() {
        let mut state = State::default();
        state
            .legacy_trusted
            .insert(mac("56:6f:1a:3e:00:07"), TrustedVnic { vm: VM_B.into() });
        let start = router(VM_B, Some("vnet2"), true);
        start.apply(&mut state, &live(), no_owner);
        assert!(state.legacy_trusted.is_empty(), "the format-1 record is superseded");
        let without = report(
            VM_B,
            Event::Up,
            vec![fact("56:6f:1a:3e:00:09", Some(false), Some("vnet3"))],
            true,
        );
        without.apply(&mut state, &live(), no_owner);
        assert!(state.trusted_vnics.is_empty());
    }

    #[test]
    fn rejects_odd_reports() {
        let bad = report("../../etc", Event::Up, vec![], false);
        assert!(bad.validate().is_err());
        let tap = report(
            VM_A,
            Event::Up,
            vec![fact("56:6f:1a:3e:00:07", Some(true), Some("../x"))],
            false,
        );
        assert!(tap.validate().is_err());
        let json = r#"{"vm": "x", "event": "up", "vnics": [], "state_dir": "/tmp"}"#;
        assert!(serde_json::from_str::<Report>(json).is_err());
        // A report of the previous release (no tap, no whole) still reads.
        let old = r#"{"vm": "x", "event": "up", "vnics": [{"mac": "56:6f:1a:3e:00:07", "trusted": true}]}"#;
        let r: Report = serde_json::from_str(old).unwrap();
        assert_eq!((r.vnics[0].tap.as_deref(), r.whole), (None, false));
    }
}
