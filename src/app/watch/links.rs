//! The watcher's link side: from rtnetlink notifications to the bridges they touch, and the
//! repair of those the recorded policy manages.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use crate::host::config::{BackendChoice, Settings};
use crate::host::state::{State, Store};
use crate::model::backend::BackendKind;
use crate::model::port::Snapshot;
use crate::reconcile;
use crate::sys::bridge;

/// What identifies one version of the state file: it is replaced by a rename at each write.
type Stamp = (u64, u64, i64, i64, u64);

/// The state file's identity now; `None` when it is not there.
fn stamp(store: &Store) -> Option<Stamp> {
    let m = std::fs::symlink_metadata(store.path()).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

/// The bridges `state` isolates or has to clear.
fn managed(state: &State) -> BTreeSet<String> {
    state
        .networks
        .values()
        .map(|p| p.bridge.clone())
        .chain(state.released.iter().cloned())
        .collect()
}

/// The watcher's view of the links and the policy, between two repairs.
pub struct Links<'a> {
    settings: &'a Settings,
    store: Store,
    /// Every bridge and its ports: a dump at each full reconcile; since, the bridges that
    /// notifications touched are read again before they are repaired, and bridges appearing,
    /// going or renamed are followed from the notifications.
    live: Snapshot,
    /// The state as last read (without the lock: a repair reads it again under the lock).
    state: State,
    /// The state file's identity when `state` was read.
    stamp: Option<Stamp>,
    /// The bridges notifications touched since the last repair.
    dirty: BTreeSet<String>,
    /// When the metrics are due after a repair ([`super::METRICS_DELAY`]); `None` when
    /// written since the last one.
    metrics_due: Option<Instant>,
}

impl<'a> Links<'a> {
    /// Nothing known yet: call [`Links::full`] first.
    pub fn new(settings: &'a Settings) -> Links<'a> {
        Links {
            settings,
            store: Store::new(&settings.state_dir),
            live: Snapshot::default(),
            state: State::default(),
            stamp: None,
            dirty: BTreeSet::new(),
            metrics_due: None,
        }
    }

    /// Reconciles everything (a dump of the namespace, under the lock), then reads the
    /// ports again for the notifications to come.
    pub fn full(&mut self, why: &str) {
        // It writes the metrics.
        super::reconcile_all(self.settings, why, false);
        self.metrics_due = None;
        match bridge::snapshot() {
            Ok(live) => self.live = live,
            Err(e) => log::error!("{why}: reading the bridges: {e}"),
        }
        self.reread_state();
        self.dirty.clear();
    }

    /// Takes in one notification (RTM_NEWLINK or RTM_DELLINK of family AF_UNSPEC or
    /// AF_BRIDGE): marks the bridges it touches.
    pub fn notice(&mut self, kind: u16, payload: &[u8]) {
        let Some(n) = bridge::notice(kind, payload) else {
            return;
        };
        if n.bridge {
            // A bridge appears, goes or is renamed; its own changes (address, carrier,
            // features) touch no port.
            let touched = if n.deleted {
                self.live.remove_link(n.ifindex)
            } else {
                n.name.filter(|name| self.live.set_bridge(name, n.ifindex))
            };
            self.dirty.extend(touched);
            return;
        }
        // A port, or a link that may be about to be one: the bridge it was on, the one it
        // is on now (a join, a flag or state change, a leave, a deletion).
        if let Some(was) = self.live.bridge_of_port(n.ifindex) {
            self.dirty.insert(was.to_string());
        }
        if let Some(on) = n.master.and_then(|m| self.live.bridge_named(m)) {
            self.dirty.insert(on.to_string());
        }
    }

    /// Repairs the managed bridges that notifications touched: their ports read again, and
    /// unless their flags already agree with the policy, a run under the state lock.
    pub fn repair(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        self.reread_state();
        let managed = managed(&self.state);
        let touched: BTreeSet<String> = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter(|b| managed.contains(b))
            .collect();
        if touched.is_empty() {
            return;
        }
        if let Err(e) = bridge::refresh(&mut self.live, touched.iter().map(String::as_str)) {
            log::error!("reading the ports of {}: {e}", list(&touched));
            return;
        }
        let port_isolation = matches!(
            self.settings.backend,
            BackendChoice::Auto | BackendChoice::Fixed(BackendKind::PortIsolation)
        );
        if port_isolation && reconcile::flags_agree(&self.state, &self.live, &touched) {
            log::debug!("{}: changed, nothing to repair", list(&touched));
            return;
        }
        self.run(&list(&touched));
    }

    /// A run on the ports known, under the state lock (which the hooks take too); `what`
    /// names what changed, for the log.
    fn run(&mut self, what: &str) {
        let repaired = self
            .store
            .lock()
            .and_then(|locked| reconcile::run_on_and_commit(locked, self.settings, &mut self.live));
        match repaired {
            Ok(o) => log::debug!("{what}: {} port(s) changed", o.changes.len()),
            Err(e) => log::error!("repairing after a change of {what}: {e}"),
        }
        self.metrics_due
            .get_or_insert_with(|| Instant::now() + super::METRICS_DELAY);
    }

    /// When the metrics are due after the repairs since they were last written.
    pub fn metrics_due(&self) -> Option<Instant> {
        self.metrics_due
    }

    /// Writes the metrics if they are due ([`Links::metrics_due`]).
    pub fn write_metrics_if_due(&mut self) {
        if self.metrics_due.is_some_and(|t| Instant::now() >= t) {
            self.metrics_due = None;
            crate::app::metrics::write_textfile(self.settings);
        }
    }

    /// One of our nftables tables changed (maybe by us): when the state records it in use,
    /// a run under the state lock puts back what differs (the table is read in-process;
    /// `nft` runs only when something does).
    pub fn tables_changed(&mut self) {
        self.reread_state();
        let in_use = self.state.backend == Some(BackendKind::Nftables) || self.state.cross_host;
        if !in_use {
            return;
        }
        self.run("our nftables tables");
    }

    /// Reads the state file again if it changed since it was last read; the bridges it
    /// starts managing get their ports read at the next repair (the dump may be older than
    /// their ports).
    fn reread_state(&mut self) {
        let now = stamp(&self.store);
        if now.is_some() && now == self.stamp {
            return;
        }
        match self.store.read() {
            Ok(state) => {
                let before = managed(&self.state);
                let after = managed(&state);
                self.dirty.extend(after.difference(&before).cloned());
                self.state = state;
                self.stamp = now;
            }
            Err(e) => {
                // Said once per version of the file; the policy last read stays in force.
                log::error!("reading the state: {e}");
                self.stamp = now;
            }
        }
    }
}

/// `bridge A, B`.
fn list(bridges: &BTreeSet<String>) -> String {
    let names: Vec<&str> = bridges.iter().map(String::as_str).collect();
    format!("bridge {}", names.join(", "))
}
