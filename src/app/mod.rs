//! One module per binary or subcommand, as thin as the layers below allow: the hook
//! ([`hook`]), the root helper ([`helper`]), the admin CLI ([`cli`]) and its subcommands,
//! the resident watcher ([`watch`]) and the Prometheus metrics ([`metrics`]) among them.

pub mod cli;
pub mod demo;
pub mod helper;
pub mod hook;
pub mod manpage;
pub mod metrics;
pub mod recover;
pub mod release;
pub mod watch;
