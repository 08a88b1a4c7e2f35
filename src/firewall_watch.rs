//! `bridge-isolation watch-firewalld`: re-applies isolation whenever firewalld reloads,
//! starts or stops. Run by `bridge-isolation-firewalld.service`.
//!
//! Why a listener: `firewall-cmd --reload` (and `--complete-reload`, `systemctl reload
//! firewalld`, which sends SIGHUP) is a D-Bus call handled inside the running daemon; no
//! systemd job runs, so `PartOf=`/`ReloadPropagatedFrom=firewalld.service` never fire for
//! it. What does fire is firewalld's D-Bus signal `org.fedoraproject.FirewallD1.Reloaded`,
//! sent once the reload is complete. A (re)start or stop shows as the bus name
//! `org.fedoraproject.FirewallD1` changing owner; firewalld takes its name *before* it
//! loads its rules, so after a new owner appears we wait for its `state` property to read
//! `RUNNING` before we reconcile. Signals arriving close together are merged.
//!
//! The reconcile itself is the same as `bridge-isolation reconcile` (idempotent, under the
//! state lock): with the port-isolation backend it finds nothing to do, with a firewall
//! backend it puts back the rules the reload removed.

use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::dbus::{Connection, Message, Value, METHOD_CALL};
use crate::error::Result;
use crate::reconcile;
use crate::state::Store;

/// firewalld's bus name and interface.
pub const FIREWALLD: &str = "org.fedoraproject.FirewallD1";
/// firewalld's main object.
pub const FIREWALLD_PATH: &str = "/org/fedoraproject/FirewallD1";
/// Signals closer together than this are merged into one reconcile.
pub const SETTLE: Duration = Duration::from_millis(300);
/// How long a new firewalld may take to reach `RUNNING` before we reconcile anyway.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The match rules the watcher subscribes with.
pub fn match_rules() -> [String; 2] {
    [
        format!("type='signal',sender='{FIREWALLD}',path='{FIREWALLD_PATH}',interface='{FIREWALLD}',member='Reloaded'"),
        format!(
            "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',\
             interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{FIREWALLD}'"
        ),
    ]
}

/// What a message means for us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// firewalld finished a reload.
    Reloaded,
    /// firewalld got a new owner (started or restarted).
    Started,
    /// firewalld left the bus (stopped or crashed).
    Stopped,
}

/// Classifies a received message.
pub fn event(m: &Message) -> Option<Event> {
    if m.is_signal(FIREWALLD, "Reloaded") {
        return Some(Event::Reloaded);
    }
    if m.is_signal("org.freedesktop.DBus", "NameOwnerChanged") && m.str_arg(0) == Some(FIREWALLD) {
        return Some(if m.str_arg(2).unwrap_or("").is_empty() {
            Event::Stopped
        } else {
            Event::Started
        });
    }
    None
}

/// Runs the watcher until the bus connection fails (systemd restarts it).
pub fn run(settings: &Settings) -> Result<()> {
    let mut bus = Connection::system()?;
    for rule in match_rules() {
        bus.add_match(&rule)?;
    }
    log::info!("watching firewalld on the system bus (as {})", bus.unique_name());
    // Catch up on anything missed while we were not running.
    if bus.name_owner(FIREWALLD)?.is_some() {
        wait_running(&mut bus);
        reconcile_now(settings, "watcher started, firewalld is running");
    }
    loop {
        let Some(m) = bus.receive(None)? else { continue };
        let Some(first) = event(&m) else {
            answer_stray_call(&mut bus, &m);
            continue;
        };
        let mut events = vec![first];
        while let Some(m) = bus.receive(Some(SETTLE))? {
            events.extend(event(&m));
        }
        let started = events.contains(&Event::Started);
        if started && bus.name_owner(FIREWALLD)?.is_some() {
            wait_running(&mut bus);
        }
        let why = if started {
            "firewalld started"
        } else if events.contains(&Event::Reloaded) {
            "firewalld reloaded"
        } else {
            "firewalld stopped"
        };
        reconcile_now(settings, why);
    }
}

/// Polls firewalld's `state` property until it reads `RUNNING` (or fails, or times out).
fn wait_running(bus: &mut Connection) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let get = Message::call(
            FIREWALLD,
            FIREWALLD_PATH,
            "org.freedesktop.DBus.Properties",
            "Get",
            vec![Value::Str(FIREWALLD.into()), Value::Str("state".into())],
        );
        let state = bus
            .call(get, Duration::from_secs(10))
            .map(|r| r.str_arg(0).unwrap_or("").to_string());
        match state {
            Ok(s) if s == "RUNNING" => return,
            Ok(s) if s == "FAILED" => {
                log::warn!("firewalld reports state FAILED; reconciling anyway");
                return;
            }
            Ok(_) | Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => {
                log::warn!("firewalld not RUNNING after {START_TIMEOUT:?} ({other:?}); reconciling anyway");
                return;
            }
        }
    }
}

/// Nobody should call us, but a method call must not go unanswered until it times out.
fn answer_stray_call(bus: &mut Connection, m: &Message) {
    if m.kind == METHOD_CALL && m.flags & 1 == 0 {
        let mut err = Message::reply_to(m, vec![Value::Str("bridge-isolation exports nothing".into())]);
        err.kind = crate::dbus::ERROR;
        err.error_name = Some("org.freedesktop.DBus.Error.UnknownMethod".into());
        let _ = bus.send(&err);
    }
}

/// One reconcile, as `bridge-isolation reconcile` does it; failures are logged, not fatal.
fn reconcile_now(settings: &Settings, why: &str) {
    let store = Store::new(&settings.state_dir);
    let result = store.read().and_then(|state| {
        if state.networks.is_empty() && state.released.is_empty() {
            return Ok(None);
        }
        let mut locked = store.lock()?;
        let outcome = reconcile::run(&mut locked.state, settings)?;
        locked.commit()?;
        Ok(Some(outcome))
    });
    match result {
        Ok(None) => log::debug!("{why}: no isolated networks, nothing to re-apply"),
        Ok(Some(o)) => log::info!(
            "{why}: reconciled with {}: {} port(s) changed",
            o.backend.map_or("no backend".to_string(), |b| b.to_string()),
            o.changes.len()
        ),
        Err(e) => log::error!("{why}: reconcile failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_firewalld_signals() {
        let reloaded = Message::signal(FIREWALLD_PATH, FIREWALLD, "Reloaded", vec![]);
        assert_eq!(event(&reloaded), Some(Event::Reloaded));
        let owner = |old: &str, new: &str| {
            Message::signal(
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "NameOwnerChanged",
                vec![
                    Value::Str(FIREWALLD.into()),
                    Value::Str(old.into()),
                    Value::Str(new.into()),
                ],
            )
        };
        assert_eq!(event(&owner("", ":1.9")), Some(Event::Started));
        assert_eq!(event(&owner(":1.9", ":1.10")), Some(Event::Started));
        assert_eq!(event(&owner(":1.9", "")), Some(Event::Stopped));
        let other = Message::signal(
            "/org/fedoraproject/FirewallD1/config",
            "org.fedoraproject.FirewallD1.config",
            "ZoneAdded",
            vec![Value::Str("public".into())],
        );
        assert_eq!(event(&other), None);
        assert!(match_rules()[0].contains("member='Reloaded'"));
        assert!(match_rules()[1].contains("arg0='org.fedoraproject.FirewallD1'"));
    }
}
