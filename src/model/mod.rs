//! Plain data without I/O, shared by every layer above: MAC addresses, interface names,
//! the network policy and its properties, bridge ports and their owners, the plan, the backend kinds.

pub mod backend;
pub mod ifname;
pub mod mac;
pub mod owner;
pub mod plan;
pub mod policy;
pub mod port;
