//! firewalld, the watcher's second source of events: re-applies isolation whenever
//! firewalld reloads, starts or stops (until release 0.1, `bridge-isolation watch-firewalld`
//! and its own unit).
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
//! state lock, which serialises it with the hooks and the watcher's other thread): with the
//! port-isolation backend it finds nothing to do, with a firewall backend it puts back the
//! rules the reload removed.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use zbus::blocking::MessageIterator;
use zbus::message::Type;
use zbus::Message;

use crate::enforce::firewalld::Bus;
use crate::error::{Error, Result};
use crate::host::config::Settings;

/// firewalld's bus name and interface.
pub const FIREWALLD: &str = "org.fedoraproject.FirewallD1";
/// firewalld's main object.
pub const FIREWALLD_PATH: &str = "/org/fedoraproject/FirewallD1";
/// Signals closer together than this are merged into one reconcile.
pub const SETTLE: Duration = Duration::from_millis(300);
/// How long a new firewalld may take to reach `RUNNING` before we reconcile anyway.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Signals queued per subscription before the oldest are dropped (we merge them anyway).
const QUEUED: usize = 64;

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
    let header = m.header();
    if header.message_type() != Type::Signal {
        return None;
    }
    let (interface, member) = (header.interface()?.as_str(), header.member()?.as_str());
    if interface == FIREWALLD && member == "Reloaded" {
        return Some(Event::Reloaded);
    }
    if interface == "org.freedesktop.DBus" && member == "NameOwnerChanged" {
        let (name, _old, new): (String, String, String) = m.body().deserialize().ok()?;
        if name == FIREWALLD {
            return Some(if new.is_empty() { Event::Stopped } else { Event::Started });
        }
    }
    None
}

/// The thread listening to firewalld.
pub struct Thread {
    handle: std::thread::JoinHandle<()>,
    /// Times it was started.
    starts: u32,
}

impl Thread {
    /// Starts [`listen`] on a thread of its own.
    pub fn spawn(settings: &Settings) -> Thread {
        Thread::start(settings, 1)
    }

    fn start(settings: &Settings, starts: u32) -> Thread {
        let settings = settings.clone();
        let handle = std::thread::spawn(move || {
            if let Err(e) = listen(&settings) {
                // Said once; a host without a system bus would repeat it at every backstop.
                let level = if starts == 1 {
                    log::Level::Warn
                } else {
                    log::Level::Debug
                };
                log::log!(
                    level,
                    "not watching firewalld: {e}; trying again at each full reconcile"
                );
            }
        });
        Thread { handle, starts }
    }

    /// Starts it again if it ended (the bus went away, or was never there).
    pub fn respawn_if_ended(&mut self, settings: &Settings) {
        if self.handle.is_finished() {
            *self = Thread::start(settings, self.starts + 1);
        }
    }
}

/// Listens on the system bus and reconciles after each firewalld event, until the bus
/// connection fails (the watcher starts it again at its next backstop).
pub fn listen(settings: &Settings) -> Result<()> {
    let bus = Bus::system(&crate::enforce::DriverSettings::of(settings).system_bus)?;
    let conn = bus.connection();
    // Nobody should call us, but a method call must not go unanswered until it times out:
    // an object server serving nothing answers every call with an error.
    let _ = conn.object_server();
    // One thread per subscription feeds one channel, which the loop reads with timeouts.
    let (tx, rx) = mpsc::channel();
    for rule in match_rules() {
        let rule =
            zbus::MatchRule::try_from(rule.as_str()).map_err(|e| Error::kernel(format!("match rule {rule}"), e))?;
        let messages = MessageIterator::for_match_rule(rule, conn, Some(QUEUED))
            .map_err(|e| Error::kernel("subscribing on the system bus", e))?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for m in messages {
                let sent = match m {
                    Ok(m) => tx.send(m).is_ok(),
                    Err(e) => {
                        log::warn!("reading from the system bus: {e}");
                        false
                    }
                };
                if !sent {
                    break;
                }
            }
        });
    }
    drop(tx);
    let lost = || Error::Kernel("the system bus connection was lost".into());
    log::info!(
        "watching firewalld on the system bus (as {})",
        conn.unique_name().map_or("?".to_string(), |n| n.to_string())
    );
    // Catch up on anything missed while we were not running.
    if bus.has_owner(FIREWALLD)? {
        wait_running(&bus);
        reconcile_now(settings, "watcher started, firewalld is running");
    }
    loop {
        let m = rx.recv().map_err(|_| lost())?;
        let Some(first) = event(&m) else { continue };
        let mut events = vec![first];
        loop {
            match rx.recv_timeout(SETTLE) {
                Ok(m) => events.extend(event(&m)),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return Err(lost()),
            }
        }
        let started = events.contains(&Event::Started);
        if started && bus.has_owner(FIREWALLD)? {
            wait_running(&bus);
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
fn wait_running(bus: &Bus) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let state = bus.property::<String>(FIREWALLD_PATH, FIREWALLD, "state");
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

/// One reconcile, as `bridge-isolation reconcile` does it; failures are logged, not fatal.
fn reconcile_now(settings: &Settings, why: &str) {
    super::reconcile_all(settings, why, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(path: &str, interface: &str, member: &str, args: &[&str]) -> Message {
        let builder = Message::signal(path, interface, member).unwrap();
        match args {
            [] => builder.build(&()).unwrap(),
            [a, b, c] => builder.build(&(*a, *b, *c)).unwrap(),
            [a] => builder.build(&(*a,)).unwrap(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn classifies_firewalld_signals() {
        let reloaded = signal(FIREWALLD_PATH, FIREWALLD, "Reloaded", &[]);
        assert_eq!(event(&reloaded), Some(Event::Reloaded));
        let owner = |old: &str, new: &str| {
            signal(
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "NameOwnerChanged",
                &[FIREWALLD, old, new],
            )
        };
        assert_eq!(event(&owner("", ":1.9")), Some(Event::Started));
        assert_eq!(event(&owner(":1.9", ":1.10")), Some(Event::Started));
        assert_eq!(event(&owner(":1.9", "")), Some(Event::Stopped));
        let someone_else = signal(
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameOwnerChanged",
            &["org.example.Other", "", ":1.3"],
        );
        assert_eq!(event(&someone_else), None);
        let other = signal(
            "/org/fedoraproject/FirewallD1/config",
            "org.fedoraproject.FirewallD1.config",
            "ZoneAdded",
            &["public"],
        );
        assert_eq!(event(&other), None);
        let call = Message::method_call(FIREWALLD_PATH, "Reloaded")
            .unwrap()
            .interface(FIREWALLD)
            .unwrap()
            .build(&())
            .unwrap();
        assert_eq!(event(&call), None, "only signals count");
        for rule in match_rules() {
            zbus::MatchRule::try_from(rule.as_str()).expect("a valid match rule");
        }
        assert!(match_rules()[0].contains("member='Reloaded'"));
        assert!(match_rules()[1].contains("arg0='org.fedoraproject.FirewallD1'"));
    }
}
