//! `bridge-isolation watch`: the resident watcher (root; `bridge-isolation-watch.service`).
//! It closes the gap between the hook points: a port that joins an isolated bridge outside
//! VDSM's hooks (a VM started with `virsh` by hand, a tap re-plugged by libvirt, `ip link set
//! master` by an administrator) or an isolation flag cleared by hand is repaired as soon as
//! the kernel reports it, not at the next hook or `reconcile`. It acts on the network
//! namespace it runs in.
//!
//! Two sources of events, one thread each, serialised with each other and with the hooks by
//! the state lock, which neither holds while it waits:
//!
//! - **links** (this thread): a NETLINK_ROUTE socket subscribed to RTNLGRP_LINK before the
//!   first reconcile, so nothing that happens meanwhile is missed. Each wake-up reads every
//!   notification queued (they are merged: a burst of joins is one repair), finds the
//!   bridges they touch (a port joining or leaving, its flag or state changing, a bridge
//!   appearing or going: [`links`]), keeps those the recorded policy isolates or lifts,
//!   reads the ports of just those bridges again (one filtered dump each, no dump of the
//!   namespace) and, unless their flags already agree, repairs them under the state lock
//!   ([`reconcile::run_on`]: the same plan, backend and fail-closed as every hook). A port
//!   nobody recorded is a VM port, isolated, as in `reconcile`. The state file is read again
//!   when it changed (hooks record new networks and trusted vNICs without restarting us).
//!   When the kernel dropped notifications (ENOBUFS: the socket, 8 MiB, filled up) or
//!   every `watch_backstop` seconds (600 by default), it reconciles everything from a fresh
//!   dump instead. Idle, it sleeps in `poll` until the next backstop: no other wake-up.
//! - **firewalld** ([`firewalld`]): a blocking D-Bus client on the system bus; a reload,
//!   start or stop of firewalld reconciles everything. Without a system bus this thread
//!   ends and is tried again at the next backstop.
//!
//! - **nftables** (this thread too): a NETLINK_NETFILTER socket subscribed to nf_tables
//!   changes (NFNLGRP_NFTABLES). A change to one of our tables (the nftables backend's, the
//!   cross-host filter's) by anyone (`nft flush ruleset`, nftables.service restarting, an
//!   administrator) is repaired at once when the state records one of them in use; our own
//!   transactions come back too and find nothing to do. iptables and firewalld rules are put
//!   back by firewalld's signals and the backstop.
//!
//! Each repair logs one line per port (bridge, port, isolated or opened), from the reconcile.
//!
//! Metrics ([`metrics`]) go to node_exporter's textfile collector directory, when it exists,
//! after every full reconcile, and [`METRICS_DELAY`] after the first repair since the last
//! write: a burst of repairs costs one write, and none delays the repair of a port.
//!
//! One watcher per state directory: it holds `watch.pid` there locked for as long as it runs
//! ([`crate::host::watcher`]), which `status` reads; a second one waits for the first to go.

pub mod firewalld;
mod links;

use std::os::fd::AsRawFd;
use std::time::Instant;

use crate::app::metrics;
use crate::enforce;
use crate::error::Result;
use crate::host::config::{self, Settings};
use crate::host::state::Store;
use crate::host::watcher::Claim;
use crate::reconcile;
use crate::sys::netlink::{self, LinkEvents};
use crate::sys::nftnl::{self, TableEvents};

/// The receive buffer asked for the link notifications: a burst of 500 taps joining sends
/// about 3000 notifications of 1-2 KiB (the kernel doubles what is asked).
pub const RECEIVE_BUFFER: usize = 8 << 20;

/// How long after a repair the metrics are written (once for all the repairs meanwhile).
pub const METRICS_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the watcher until it fails (systemd restarts it).
pub fn run(settings: &Settings) -> Result<()> {
    let _claim = Claim::take(&settings.state_dir, |other| match other {
        Some(o) => log::warn!(
            "another watcher (pid {}) runs for this state directory: waiting for it to end",
            o.pid
        ),
        None => log::warn!("another watcher runs for this state directory: waiting for it to end"),
    })?;
    let backstop = config::watch_backstop(&settings.config_file);
    // Subscribed before the first reconcile: whatever changes during it is told afterwards.
    let mut events = LinkEvents::open(RECEIVE_BUFFER)?;
    let mut links = links::Links::new(settings);
    links.full("watcher started");
    log::info!(
        "watching the links of this network namespace (receive buffer {} KiB; full reconcile {})",
        events.buffer() / 1024,
        backstop.map_or("never".to_string(), |b| format!("every {} s", b.as_secs()))
    );
    // Our nftables tables, changed by someone else: subscribed now, after the first
    // reconcile's own transaction.
    let mut tables = match TableEvents::open(RECEIVE_BUFFER) {
        Ok(t) => Some(t),
        Err(e) => {
            log::warn!("not watching nftables: {e}; the periodic full reconcile repairs its tables");
            None
        }
    };
    let mut bus = firewalld::Thread::spawn(settings);
    let mut next = backstop.map(|b| Instant::now() + b);
    loop {
        let wake = [next, links.metrics_due()].into_iter().flatten().min();
        let timeout = wake.map(|t| t.saturating_duration_since(Instant::now()));
        let fds: Vec<_> = std::iter::once(events.as_raw_fd())
            .chain(tables.as_ref().map(AsRawFd::as_raw_fd))
            .collect();
        let ready = netlink::wait_readable(&fds, timeout)?;
        if ready[0] {
            let drained = events.drain(|kind, payload| links.notice(kind, payload))?;
            if drained.lost {
                links.full("link notifications were lost (the socket overflowed)");
            } else {
                links.repair();
            }
        }
        if let (Some(t), Some(true)) = (tables.as_mut(), ready.get(1)) {
            let mut ours = false;
            let lost = t.drain(|family, table| ours |= is_ours(family, table))?;
            if lost {
                links.full("nftables notifications were lost (the socket overflowed)");
            } else if ours {
                links.tables_changed();
            }
        }
        if let (Some(at), Some(every)) = (next, backstop) {
            if Instant::now() >= at {
                links.full("periodic full reconcile");
                bus.respawn_if_ended(settings);
                next = Some(Instant::now() + every);
            }
        }
        links.write_metrics_if_due();
    }
}

/// True for the tables of ours: the nftables backend's and the cross-host filter's.
fn is_ours(family: u8, table: &str) -> bool {
    family == nftnl::NFPROTO_BRIDGE && (table == enforce::nftables::TABLE || table == enforce::cross_host::TABLE)
}

/// One reconcile of everything, as `bridge-isolation reconcile` does it, logged with `why`
/// (at info level when it changed something or `always`, else debug); failures are logged,
/// not fatal. Takes no lock on a host with nothing recorded and nothing to adopt from VDSM.
pub(crate) fn reconcile_all(settings: &Settings, why: &str, always: bool) {
    let store = Store::new(&settings.state_dir);
    let result = store.read().and_then(|state| {
        let idle = state.networks.is_empty()
            && state.released.is_empty()
            && state.blocked.is_empty()
            && state.trusted_vnics.is_empty()
            && state.legacy_trusted.is_empty();
        // A host that isolates nothing still adopts what VDSM's running config tags.
        if idle && reconcile::compare(&state, settings)?.disagreements.is_empty() {
            return Ok(None);
        }
        reconcile::adopt_and_run(store.lock()?, settings).map(Some)
    });
    match result {
        Ok(None) => {
            // Nothing to enforce, and that was checked: a successful reconcile too.
            crate::host::reconciled::mark(&settings.state_dir);
            log::debug!("{why}: no isolated networks, nothing to re-apply");
        }
        Ok(Some(o)) => {
            let level = if always || !o.changes.is_empty() {
                log::Level::Info
            } else {
                log::Level::Debug
            };
            log::log!(
                level,
                "{why}: reconciled with {}: {} port(s) changed",
                o.backend.map_or("no backend".to_string(), |b| b.to_string()),
                o.changes.len()
            );
        }
        Err(e) => log::error!("{why}: reconcile failed: {e}"),
    }
    metrics::write_textfile(settings);
}
