//! Where things live on an installed host. Only root may point elsewhere (see [`crate::host::config`]).

/// Directory of the state file and its lock.
pub const STATE_DIR: &str = "/var/lib/vdsm-hook-bridge-isolation";
/// The configuration file.
pub const CONFIG_FILE: &str = "/etc/vdsm-hook-bridge-isolation/bridge-isolation.conf";
/// The root helper an unprivileged VM hook runs through sudo.
pub const HELPER: &str = "/usr/libexec/vdsm-hook-bridge-isolation/bridge-isolation-helper";
/// The admin CLI; the hook binary hands it the runs that need a daemon backend.
pub const CLI: &str = "/usr/sbin/bridge-isolation";
/// sudo, by absolute path: a VM hook never looks anything up in PATH.
pub const SUDO: &str = "/usr/bin/sudo";
/// VDSM's hook tree.
pub const VDSM_HOOKS_DIR: &str = "/usr/libexec/vdsm/hooks";
/// The file name of our hook in every hook-point directory.
pub const HOOK_NAME: &str = "50_bridge_isolation";

/// The owner records of running VMs ([`crate::host::owners`]): on tmpfs, created at boot by
/// the package's tmpfiles.d entry, writable by user `vdsm`.
pub const OWNERS_DIR: &str = "/run/vdsm-hook-bridge-isolation/owners";
/// The user VDSM runs the VM hooks as.
pub const VDSM_USER: &str = "vdsm";

/// VDSM's running network config: `nets/NAME` holds each network's setupNetworks attributes.
pub const VDSM_NETCONF: &str = "/var/lib/vdsm/staging/netconf";
