//! Isolate the VM ports of oVirt bridge networks from each other, as VDSM hooks.
//!
//! The crate is layered; each layer is a module that uses only the layers below it
//! (docs/design.md §6.1; `tests/layers.rs` enforces it):
//!
//! | layer | what it holds |
//! |---|---|
//! | [`app`] | one module per binary or subcommand: the hook, the root helper, the CLI |
//! | [`reconcile`] | from the recorded policy and the live ports to a plan, enforced |
//! | [`enforce`] | the [`enforce::Backend`] trait, one module per backend, the cross-host filter |
//! | [`vdsm`] | VDSM's hook protocol and payloads: network setups, domain XML, vNIC reports |
//! | [`host`] | this host's configuration, paths, recorded state and trust records |
//! | [`sys`] | the kernel and processes: rtnetlink, nfnetlink, bridge ports, `/proc`, tools |
//! | [`model`] | plain data without I/O: MACs, names, the policy, the plan, backend kinds |
//!
//! [`error`] is below them all. [`vdsm`] and [`enforce`] are side by side: neither uses the
//! other.

pub mod app;
pub mod enforce;
pub mod error;
pub mod host;
pub mod model;
pub mod reconcile;
pub mod sys;
pub mod vdsm;

pub use error::{Error, Result};
