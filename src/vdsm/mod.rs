//! What VDSM hands us (docs/design.md §2): the hook protocol ([`protocol`]) and logging to
//! VDSM's log ([`logging`]), setupNetworks payloads ([`setup`]), libvirt domain XML
//! ([`domain`]), where each vNIC attaches ([`placement`]), the vNIC reports the VM hook
//! points make ([`vnic`]), and VDSM's running network config ([`netconf`]).

pub mod domain;
pub mod logging;
pub mod netconf;
pub mod placement;
pub mod protocol;
pub mod setup;
pub mod vnic;
