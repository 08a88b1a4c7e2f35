//! A table of our own in nftables' `bridge` family, shared by the nftables backend and the
//! cross-host filter: each keeps its rules as data ([`Rule`]) and its own idea of which
//! objects are intact; everything else is here.
//!
//! - [`Cmd`]: the commands of a transaction, rendered into nft's JSON schema
//!   (libnftables-json(5)) by [`Table::batch`];
//! - [`Table::read`]: the table as the kernel has it, read in-process over netfilter netlink
//!   ([`nftnl::read_table`]: no `nft` process to read), with [`LiveSet`] and [`LiveRule`]
//!   for its sets and rules;
//! - [`diff`]: the generic parts of the difference between wanted and live (the table as a
//!   whole, sets and their elements, rules kept by match or deleted by handle);
//! - [`Table::apply`]: one `nft -j -f -` process applies a run's commands as one atomic
//!   transaction, and none runs when there is no difference.

mod cmd;
pub mod diff;

pub use cmd::{Cmd, Elements, Rule, SetType};
pub use diff::{LiveRule, LiveSet};

use serde_json::{json, Value};

use crate::error::Result;
use crate::sys::nftnl;

/// `nft`, by absolute path: never looked up in PATH.
pub const NFT: &str = "/usr/sbin/nft";
/// nftables family of our tables.
pub const FAMILY: &str = "bridge";
/// The base chain of each table.
pub const BASE_CHAIN: &str = "forward";
/// Priority of the base chain: `filter` of the bridge family.
pub const PRIORITY: i32 = -200;
/// Datatype of sets of interface indexes.
pub const IFACE_INDEX: &str = "iface_index";
/// Datatype of sets of MAC addresses.
pub const ETHER_ADDR: &str = "ether_addr";

/// One table of ours: `table bridge NAME` with base chain [`BASE_CHAIN`] (filter, forward
/// hook, priority [`PRIORITY`], policy accept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// Its name.
    pub name: &'static str,
}

impl Table {
    /// The transaction of `cmds`, as `nft -j -f` reads it.
    pub fn batch<R: Rule>(&self, cmds: &[Cmd<R>]) -> Value {
        json!({"nftables": cmds.iter().map(|c| c.to_json(self.name)).collect::<Vec<_>>()})
    }

    /// The table as the kernel has it (in-process); `None` when it does not exist.
    pub fn read(&self) -> Result<Option<nftnl::Table>> {
        nftnl::read_table(nftnl::NFPROTO_BRIDGE, self.name)
    }

    /// Applies `cmds` as one transaction, all or nothing: one `nft -j -f -`, none when
    /// there are no commands.
    pub fn apply<R: Rule>(&self, cmds: &[Cmd<R>]) -> Result<()> {
        if cmds.is_empty() {
            return Ok(());
        }
        let text = self.batch(cmds).to_string();
        log::debug!("nft -j -f -: {text}");
        crate::sys::tool::run(NFT, &["-j", "-f", "-"], Some(text.as_bytes())).map(drop)
    }

    /// Has the kernel check `cmds` without committing them (`nft -c`).
    pub fn check<R: Rule>(&self, cmds: &[Cmd<R>]) -> Result<()> {
        let text = self.batch(cmds).to_string();
        crate::sys::tool::run(NFT, &["-c", "-j", "-f", "-"], Some(text.as_bytes())).map(drop)
    }
}

/// Whether `table`'s base chain is exactly ours: filter, forward hook, [`PRIORITY`],
/// policy accept.
pub fn base_chain_exact(table: &nftnl::Table) -> bool {
    table
        .chain(BASE_CHAIN)
        .is_some_and(|c| c.is_filter(nftnl::NF_BR_FORWARD, PRIORITY))
}
