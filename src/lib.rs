//! Isolate the VM ports of oVirt bridge networks from each other, as VDSM hooks.
//!
//! VDSM runs the hook binary at lifecycle points; it reads VDSM's payload ([`setup`] for
//! network points, [`domain`] for VM and device points), records the policy in [`state`],
//! and [`reconcile`]s the kernel through one [`backend`]. The admin CLI ([`cli`]) shows and
//! repairs the same state; the root [`helper`] is what an unprivileged VM hook reaches
//! through sudo.

pub mod backend;
pub mod bridge;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod error;
pub mod firewall_watch;
pub mod helper;
pub mod hook;
pub mod ifname;
pub mod logging;
pub mod mac;
pub mod manpage;
pub mod netlink;
pub mod nftnl;
pub mod owner;
pub mod paths;
pub mod peers;
pub mod placement;
pub mod policy;
pub mod reconcile;
pub mod recover;
pub mod release;
pub mod setup;
pub mod state;
pub mod tool;
pub mod trust;
pub mod vnic;

pub use error::{Error, Result};
