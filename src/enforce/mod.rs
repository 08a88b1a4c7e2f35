//! Enforcement backends behind one trait: each makes the kernel keep a [`Plan`]'s VM ports apart.
//!
//! A backend that programs a firewall ([`nftables`], [`iptables`], [`firewalld`]) keeps the
//! shape of [`nftables`]: the rules a plan wants built as plain data, the kernel's
//! rules read back in one listing (in-process for nftables), the difference rendered and applied as **one**
//! transaction per run (one `nft -f`, one `iptables-restore --noflush`, one D-Bus session),
//! nothing done when there is no difference, and everything but the process or bus call
//! unit-tested without root. It owns its objects outright (a table, a chain, a direct-rule
//! set of its own) so that [`Backend::remove`] deletes exactly what it created.

pub mod chain_name;
pub mod cross_host;
pub mod firewalld;
pub mod iptables;
pub mod nft;
pub mod nftables;
mod port_isolation;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::OnceLock;

pub use firewalld::Firewalld;
pub use iptables::Iptables;
pub use nftables::Nftables;
pub use port_isolation::PortIsolation;

use crate::error::{Error, Result};
use crate::host::config::{self, Settings};
use crate::model::backend::{BackendKind, Change, DropCounter, Observed};
use crate::model::plan::{BridgePlan, Plan};

/// An enforcement mechanism.
pub trait Backend {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Whether this host's kernel and tools can run it (as far as the caller may tell:
    /// without root, a firewall backend can only check that its tool is installed).
    fn available(&self) -> Result<()>;

    /// A check for the `before_*` points after a failed run (ports blocked): runs the tool
    /// that writes the rules once, without changing anything (nftables: `nft -c` of a probe
    /// table), where [`Backend::available`] may only read the kernel. Without root, or for a
    /// backend whose [`Backend::available`] already runs its tools, nothing more to check.
    fn check_writer(&self) -> Result<()> {
        Ok(())
    }

    /// What the backend enforces now on the ports of the planned bridges. A backend that
    /// cannot read the kernel without root says so ([`Backend::needs_root_to_observe`]);
    /// an unprivileged caller then asks the root helper instead of calling this.
    fn observe(&mut self, plan: &Plan) -> Result<Vec<Observed>>;

    /// True when [`Backend::observe`] needs root to see anything.
    fn needs_root_to_observe(&self) -> bool {
        false
    }

    /// Frames dropped between VM ports, per planned bridge, for backends that count them.
    fn drop_counters(&mut self, _plan: &Plan) -> Result<BTreeMap<String, DropCounter>> {
        Ok(BTreeMap::new())
    }

    /// Makes the kernel enforce `plan`: VM ports isolated, uplinks and trusted vNICs open.
    fn apply(&mut self, plan: &Plan) -> Result<Vec<Change>>;

    /// Removes everything this backend enforces on `bridges` (isolation lifted or handed over).
    fn remove(&mut self, bridges: &[BridgePlan]) -> Result<Vec<Change>>;
}

/// One [`Observed`] per port of the plan's bridges: isolated when its name is in what
/// `enforced` says the backend enforces on that bridge.
pub(crate) fn observed(plan: &Plan, mut enforced: impl FnMut(&str) -> BTreeSet<String>) -> Vec<Observed> {
    plan.bridges
        .iter()
        .flat_map(|b| {
            let enforced = enforced(&b.bridge);
            b.ports
                .iter()
                .map(|p| Observed {
                    bridge: b.bridge.clone(),
                    port: p.port.name.clone(),
                    isolated: enforced.contains(&p.port.name),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What the drivers (the backends and the cross-host filter) are told by their caller, built
/// once from the run's [`Settings`]: they read no configuration and no environment of their
/// own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverSettings {
    /// True when this process may read and change the kernel's firewall (root): without it a
    /// driver only checks that its tools are installed, and reads no counters.
    pub privileged: bool,
    /// Where the iptables backend persists br_netfilter ([`iptables::MODULES_LOAD_DIR`]).
    pub modules_load_dir: PathBuf,
    /// Where the iptables backend persists the `bridge-nf-call-*` sysctls
    /// ([`iptables::SYSCTL_DIR`]).
    pub sysctl_dir: PathBuf,
    /// The address of the system bus firewalld is on ([`firewalld::SYSTEM_BUS`]).
    pub system_bus: String,
}

impl DriverSettings {
    /// The drivers' settings for a run with `settings`: its privilege, root's directory
    /// overrides ([`config::ENV_MODULES_LOAD_DIR`], [`config::ENV_SYSCTL_DIR`], honoured
    /// as [`config::dir_override`] says) and the bus root may name with
    /// [`firewalld::ENV_SYSTEM_BUS`] (tests run a private bus).
    pub fn of(settings: &Settings) -> DriverSettings {
        let dir = |var, installed: &str| config::dir_override(var).unwrap_or_else(|| installed.into());
        DriverSettings {
            privileged: settings.privileged,
            modules_load_dir: dir(config::ENV_MODULES_LOAD_DIR, iptables::MODULES_LOAD_DIR),
            sysctl_dir: dir(config::ENV_SYSCTL_DIR, iptables::SYSCTL_DIR),
            system_bus: std::env::var(firewalld::ENV_SYSTEM_BUS)
                .ok()
                .filter(|a| !a.is_empty() && config::is_root())
                .unwrap_or_else(|| firewalld::SYSTEM_BUS.to_string()),
        }
    }
}

/// Opens the backend of that kind with `driver` (without checking the host: see
/// [`Backend::available`]). A daemon backend ([`BackendKind::needs_daemon`]) opens only in a
/// binary that called [`link_daemon_backends`].
pub fn open(kind: BackendKind, driver: &DriverSettings) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::PortIsolation => Ok(Box::new(PortIsolation::new())),
        BackendKind::Nftables => Ok(Box::new(Nftables::new(driver))),
        BackendKind::Iptables | BackendKind::Firewalld => Ok((daemons(kind)?.open)(kind, driver)),
    }
}

/// The code that speaks to firewalld over D-Bus (the firewalld backend, the iptables backend,
/// which asks firewalld which backend it runs, and the cross-host filter's firewalld variant),
/// reached only through here: a binary whose `main` never calls [`link_daemon_backends`] (the
/// hook's) carries none of it, nor the D-Bus crates (docs/design.md §6.1).
struct DaemonBackends {
    /// Opens the iptables or the firewalld backend.
    open: fn(BackendKind, &DriverSettings) -> Box<dyn Backend>,
    /// firewalld's direct rules, for the cross-host filter.
    direct_rules: fn(&DriverSettings) -> Box<dyn cross_host::DirectRules>,
}

static DAEMON_BACKENDS: OnceLock<DaemonBackends> = OnceLock::new();

/// Links the daemon backends into this binary: the CLI's and the root helper's `main` call it
/// first.
pub fn link_daemon_backends() {
    DAEMON_BACKENDS.get_or_init(|| DaemonBackends {
        open: |kind, driver| match kind {
            BackendKind::Iptables => Box::new(Iptables::new(driver)),
            _ => Box::new(Firewalld::new(driver)),
        },
        direct_rules: |driver| Box::new(Firewalld::new(driver)),
    });
}

/// True when this binary carries the daemon backends ([`link_daemon_backends`]).
pub fn daemon_backends_linked() -> bool {
    DAEMON_BACKENDS.get().is_some()
}

fn daemons(kind: BackendKind) -> Result<&'static DaemonBackends> {
    DAEMON_BACKENDS.get().ok_or_else(|| {
        Error::Config(format!(
            "the {kind} backend is not in this binary (it runs in bridge-isolation and the root helper)"
        ))
    })
}

/// firewalld's direct rules, for the cross-host filter (see [`open`]).
fn direct_rules(driver: &DriverSettings) -> Result<Box<dyn cross_host::DirectRules>> {
    Ok((daemons(BackendKind::Firewalld)?.direct_rules)(driver))
}
