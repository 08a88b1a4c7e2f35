//! vNIC reports: what a VM or device hook learnt about a VM's vNICs, and how it changes state.
//!
//! An unprivileged VM hook sends its report to the root helper, which trusts it no further
//! than this: it can mark or unmark vNICs as trusted and forget a VM's records; it cannot
//! name bridges, paths or backends. Isolation itself always follows the root-owned state.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::mac::Mac;
use crate::state::{State, TrustedVnic};

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
    /// Guest MAC.
    pub mac: Mac,
    /// `bridge_isolation_trusted`, when the payload says; `None` keeps what was recorded.
    pub trusted: Option<bool>,
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
}

/// Most vNICs a report may name (libvirt caps a VM's PCI slots far lower).
pub const MAX_VNICS: usize = 512;

impl Report {
    /// Checks the report is well formed: a sane VM id and a bounded list.
    pub fn validate(&self) -> Result<()> {
        let ok_id = !self.vm.is_empty()
            && self.vm.len() <= 64
            && self
                .vm
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok_id {
            return Err(Error::Payload(format!(
                "invalid vmId {}",
                crate::ifname::quoted(&self.vm)
            )));
        }
        if self.vnics.len() > MAX_VNICS {
            return Err(Error::Payload(format!("{} vNICs in one report", self.vnics.len())));
        }
        Ok(())
    }

    /// Records the report in `state`.
    pub fn apply(&self, state: &mut State) {
        match self.event {
            Event::Up => {
                for v in &self.vnics {
                    match v.trusted {
                        Some(true) => {
                            state.trusted.insert(v.mac, TrustedVnic { vm: self.vm.clone() });
                        }
                        Some(false) => {
                            state.trusted.remove(&v.mac);
                        }
                        None => {}
                    }
                }
            }
            Event::Gone => {
                let macs: Vec<Mac> = self.vnics.iter().map(|v| v.mac).collect();
                state.trusted.retain(|mac, t| t.vm != self.vm && !macs.contains(mac));
            }
        }
    }

    /// True when `state` already says what the report would record.
    pub fn recorded_in(&self, state: &State) -> bool {
        let mut after = state.clone();
        self.apply(&mut after);
        after.trusted == state.trusted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    #[test]
    fn up_and_gone() {
        let mut state = State::default();
        let up = Report {
            vm: "4d3a1f52-8a0b-4c8e-9a8f-2f7b3d1c0e11".into(),
            event: Event::Up,
            vnics: vec![
                VnicFact {
                    mac: mac("56:6f:1a:00:00:01"),
                    trusted: Some(false),
                },
                VnicFact {
                    mac: mac("56:6f:1a:00:00:02"),
                    trusted: Some(true),
                },
            ],
        };
        up.validate().unwrap();
        assert!(!up.recorded_in(&state));
        up.apply(&mut state);
        assert!(up.recorded_in(&state));
        assert!(state.is_trusted(mac("56:6f:1a:00:00:02")));
        assert!(!state.is_trusted(mac("56:6f:1a:00:00:01")));
        let keep = Report {
            vnics: vec![VnicFact {
                mac: mac("56:6f:1a:00:00:02"),
                trusted: None,
            }],
            ..up.clone()
        };
        assert!(keep.recorded_in(&state));
        let gone = Report {
            event: Event::Gone,
            vnics: vec![],
            ..up.clone()
        };
        gone.apply(&mut state);
        assert!(state.trusted.is_empty());
    }

    #[test]
    fn rejects_odd_reports() {
        let bad = Report {
            vm: "../../etc".into(),
            event: Event::Up,
            vnics: vec![],
        };
        assert!(bad.validate().is_err());
        let json = r#"{"vm": "x", "event": "up", "vnics": [], "state_dir": "/tmp"}"#;
        assert!(serde_json::from_str::<Report>(json).is_err());
    }
}
