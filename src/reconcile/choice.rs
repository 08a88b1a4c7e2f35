//! Which backend enforces: the one configured, or with `auto` the first this host supports;
//! and the cheap check of the `before_*` points that one can.

use crate::enforce::{self, Backend, DriverSettings};
use crate::error::{Error, Result};
use crate::host::config::{BackendChoice, Settings};
use crate::host::state::State;
use crate::model::backend::BackendKind;

/// Opens the backend the settings ask for; with `auto`, the first this host supports.
pub fn select_backend(settings: &Settings) -> Result<Box<dyn Backend>> {
    choose_backend(settings).map(|(backend, _)| backend)
}

/// Like [`select_backend`], also saying why: `BRIDGE_ISOLATION_BACKEND` or the config file
/// wins; `auto` takes port-isolation when the kernel has the flag, else nftables, else
/// firewalld (when running), else iptables ([`BackendKind::ALL`]), and says what it skipped.
pub fn choose_backend(settings: &Settings) -> Result<(Box<dyn Backend>, String)> {
    choose(settings.backend, &DriverSettings::of(settings))
}

/// [`choose_backend`] with the drivers' settings built already.
pub(super) fn choose(choice: BackendChoice, driver: &DriverSettings) -> Result<(Box<dyn Backend>, String)> {
    match choice {
        BackendChoice::Fixed(kind) => {
            let backend = enforce::open(kind, driver)?;
            backend
                .available()
                .map_err(|e| Error::config(format!("backend {kind} (configured) cannot run here"), e))?;
            Ok((backend, "configured".to_string()))
        }
        BackendChoice::Auto => first_usable(BackendKind::ALL, |kind| {
            enforce::open(kind, driver).and_then(|b| b.available().map(|_| b))
        })
        .map(|(b, why)| {
            log::debug!("backend {} ({why})", b.kind());
            (b, why)
        }),
    }
}

/// The first of `kinds` that `open` accepts, and why: `auto`, plus what it skipped.
pub(super) fn first_usable<T>(
    kinds: impl IntoIterator<Item = BackendKind>,
    mut open: impl FnMut(BackendKind) -> Result<T>,
) -> Result<(T, String)> {
    let mut reasons = Vec::new();
    for kind in kinds {
        match open(kind) {
            Ok(b) if reasons.is_empty() => return Ok((b, "auto".to_string())),
            Ok(b) => return Ok((b, format!("auto; skipped {}", reasons.join("; ")))),
            Err(e) => reasons.push(format!("{kind}: {e}")),
        }
    }
    Err(Error::Config(format!(
        "no backend is usable on this host ({})",
        reasons.join("; ")
    )))
}

/// For the `before_*` points (unprivileged, cheap): fails when no backend can enforce
/// isolation on this host, so a vNIC on an isolated bridge is not started unprotected.
/// Passes at once when port isolation may be used and the kernel has the flag (`uname`
/// only), or when the firewall backend recorded in `state` did the work and no port is blocked
/// (its last run succeeded); otherwise asks [`select_backend`] (without root, a firewall
/// backend only checks its tool is installed), and after a failed run (ports blocked) also
/// [`Backend::check_writer`].
pub fn check_enforceable(settings: &Settings, state: &State) -> Result<()> {
    let driver = DriverSettings::of(settings);
    enforceable(
        settings.backend,
        state,
        || enforce::open(BackendKind::PortIsolation, &driver)?.available(),
        || {
            let (backend, _) = choose(settings.backend, &driver)?;
            if state.blocked.is_empty() {
                Ok(())
            } else {
                backend.check_writer()
            }
        },
    )
}

pub(super) fn enforceable(
    choice: BackendChoice,
    state: &State,
    port_isolation: impl FnOnce() -> Result<()>,
    select: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let allows = |kind| choice == BackendChoice::Auto || choice == BackendChoice::Fixed(kind);
    if allows(BackendKind::PortIsolation) && port_isolation().is_ok() {
        return Ok(());
    }
    // Port isolation is judged by the running kernel (it may have been downgraded) alone.
    let recorded = state.backend.filter(|&k| k != BackendKind::PortIsolation);
    if state.blocked.is_empty() && recorded.is_some_and(allows) {
        return Ok(());
    }
    select().map_err(|e| Error::config("isolation cannot be enforced on this host", e))
}
