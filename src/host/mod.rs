//! This host's side of things: where files live ([`paths`]), the configuration
//! ([`config`]), the recorded policy under its lock ([`state`]), and the upkeep of the
//! trust records that bind a trusted vNIC to its tap ([`trust`]), the watcher's pid file
//! ([`watcher`]), and when the last reconcile succeeded ([`reconciled`]).

pub mod config;
pub mod owners;
pub mod paths;
pub mod reconciled;
pub mod state;
pub mod trust;
pub mod watcher;
