//! This host's side of things: where files live ([`paths`]), the configuration
//! ([`config`]), the recorded policy under its lock ([`state`]), and the upkeep of the
//! trust records that bind a trusted vNIC to its tap ([`trust`]), and the watcher's pid file
//! ([`watcher`]).

pub mod config;
pub mod owners;
pub mod paths;
pub mod state;
pub mod trust;
pub mod watcher;
