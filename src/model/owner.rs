//! Who owns a VM port: the VM (its id and name) and the vNIC (its guest MAC), as the hooks
//! record them and `bridge-isolation status` shows them. Display only: nothing is isolated,
//! opened or trusted because of an owner record.

use serde::{Deserialize, Serialize};

use crate::model::mac::Mac;

/// Longest VM id accepted (oVirt's are 36-character UUIDs).
pub const MAX_VM_ID: usize = 64;
/// Longest VM name kept, in bytes (oVirt caps names far lower; libvirt does not).
pub const MAX_VM_NAME: usize = 255;

/// Checks a VM id (`vmId`, the domain's `<uuid>`): 1-64 ASCII letters, digits, `-` or `_`,
/// so it can name a file and never a path.
pub fn check_vm_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_VM_ID
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid vmId {}", crate::model::ifname::quoted(id)))
    }
}

/// A VM name as it may be printed on a terminal or in a log line: a VM's user (through the
/// engine) or anyone with libvirt access chooses it, so control characters are replaced
/// (U+FFFD), and it is cut at [`MAX_VM_NAME`] bytes on a character boundary.
pub fn printable_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = if c.is_control() { char::REPLACEMENT_CHARACTER } else { c };
        if out.len() + c.len_utf8() > MAX_VM_NAME {
            break;
        }
        out.push(c);
    }
    out
}

/// One VM port's owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The VM's id (`vmId`).
    pub vm_id: String,
    /// The VM's name, when known ([`printable_name`]).
    pub vm_name: Option<String>,
    /// The vNIC's guest MAC, when known (a hook's record has it; qemu's process does not
    /// say).
    pub vnic_mac: Option<Mac>,
    /// Where the owner was found.
    pub source: OwnerSource,
}

/// Where an owner was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerSource {
    /// A hook's record, for this very tap (name and interface index).
    Hook,
    /// The qemu process holding the tap (root only): a port that joined without a hook.
    Qemu,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_ids_name_files_never_paths() {
        assert!(check_vm_id("4d3a1f52-8a0b-4c8e-9a8f-2f7b3d1c0e11").is_ok());
        assert!(check_vm_id("vm_1").is_ok());
        for bad in ["", "..", "a/b", "../x", "a b", "é", &"a".repeat(65)] {
            assert!(check_vm_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_lose_control_characters_and_excess() {
        assert_eq!(printable_name("web01"), "web01");
        assert_eq!(printable_name("r\u{1b}[2Jx\ny"), "r\u{fffd}[2Jx\u{fffd}y");
        assert_eq!(printable_name("dé\u{9b}"), "dé\u{fffd}");
        let long = "é".repeat(200);
        let cut = printable_name(&long);
        assert!(cut.len() <= MAX_VM_NAME && cut.len() == 254, "{}", cut.len());
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
