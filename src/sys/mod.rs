//! The kernel and the processes of this host: rtnetlink ([`netlink`]) and nfnetlink
//! ([`nftnl`]) in-process, bridge ports ([`bridge`]), who holds a tap open ([`owner`]), and
//! the one way an external tool is run ([`tool`]).

pub mod bridge;
pub mod netlink;
pub mod nftnl;
pub mod owner;
pub mod tool;

/// Where the kernel lists network devices (of the caller's network namespace).
pub const SYS_CLASS_NET: &str = "/sys/class/net";
