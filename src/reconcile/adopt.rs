//! Adoption: the recorded policy follows VDSM's running network config (docs/design.md §2 and
//! §5), so a network tagged while this package was absent, or before a state file was lost,
//! is isolated, and one VDSM has untagged or removed is lifted, without waiting for the next
//! setupNetworks. The network hooks record each setup from its own payload; every other root
//! reconcile (the CLI, the root helper of the VM hooks, the watcher, the RPM's %post)
//! compares and adopts first.

use std::fmt;

use serde::Serialize;

use crate::error::Result;
use crate::host::config::Settings;
use crate::host::state::{Locked, State};
use crate::model::policy::{NetworkChange, NetworkPolicy};
use crate::vdsm::netconf::RunningConfig;

/// One way the recorded policy and VDSM's running config disagree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Disagreement {
    /// VDSM tags the network; it is not isolated here.
    Untracked {
        /// The network.
        network: String,
        /// What VDSM's attributes ask for.
        policy: NetworkPolicy,
    },
    /// Both isolate the network, with another uplink or other cross-host properties.
    Differs {
        /// The network.
        network: String,
        /// What VDSM's attributes ask for.
        policy: NetworkPolicy,
        /// What is recorded here.
        recorded: NetworkPolicy,
    },
    /// Isolated here; VDSM has the network untagged (`present`) or no longer has it.
    Stale {
        /// The network.
        network: String,
        /// Its bridge, isolated here.
        bridge: String,
        /// True when VDSM still has the network, without `bridge_isolation=true`.
        present: bool,
    },
    /// VDSM's file for the network cannot be judged (an invalid property value, a broken
    /// file): nothing is concluded, an isolated network stays isolated.
    Invalid {
        /// The network.
        network: String,
        /// Why.
        reason: String,
    },
}

impl Disagreement {
    /// The network it is about.
    pub fn network(&self) -> &str {
        match self {
            Disagreement::Untracked { network, .. }
            | Disagreement::Differs { network, .. }
            | Disagreement::Stale { network, .. }
            | Disagreement::Invalid { network, .. } => network,
        }
    }

    /// What adopting it records, if anything.
    fn change(&self) -> Option<NetworkChange> {
        match self {
            Disagreement::Untracked { policy, .. } | Disagreement::Differs { policy, .. } => {
                Some(NetworkChange::Isolate(policy.clone()))
            }
            Disagreement::Stale { .. } => Some(NetworkChange::Lift),
            Disagreement::Invalid { .. } => None,
        }
    }
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disagreement::Untracked { network, policy } => write!(
                f,
                "network {network}: tagged bridge_isolation=true in VDSM's running config, bridge {} not isolated here",
                policy.bridge
            ),
            Disagreement::Differs {
                network,
                policy,
                recorded,
            } => {
                let uplink = |p: &NetworkPolicy| p.uplink.clone().unwrap_or_else(|| "none".into());
                if policy.bridge != recorded.bridge || policy.uplink != recorded.uplink {
                    write!(
                        f,
                        "network {network}: VDSM's running config has bridge {} with uplink {}, recorded here: bridge {} with uplink {}",
                        policy.bridge,
                        uplink(policy),
                        recorded.bridge,
                        uplink(recorded)
                    )
                } else {
                    write!(
                        f,
                        "network {network}: VDSM's running config has other cross-host properties than recorded here"
                    )
                }
            }
            Disagreement::Stale {
                network,
                bridge,
                present: true,
            } => write!(
                f,
                "network {network}: not tagged in VDSM's running config, bridge {bridge} still isolated here"
            ),
            Disagreement::Stale { network, bridge, .. } => write!(
                f,
                "network {network}: gone from VDSM's running config, bridge {bridge} still isolated here"
            ),
            Disagreement::Invalid { network, reason } => {
                write!(f, "network {network}: VDSM's running config cannot be judged: {reason}")
            }
        }
    }
}

/// How the recorded policy compares with VDSM's running config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Comparison {
    /// The directory read (holding `nets/`); `None` when there is no VDSM config here, which
    /// changes nothing.
    pub config: Option<String>,
    /// True while a network setup is under way (its runner still runs): VDSM's config and
    /// the record catch up with each other when it ends, so nothing is adopted before.
    pub setup_under_way: bool,
    /// Every disagreement, by network name.
    pub disagreements: Vec<Disagreement>,
    /// Why VDSM's config could not be read, when it could not (`status` shows it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Compares `state` with VDSM's running config under `settings` (read now).
pub fn compare(state: &State, settings: &Settings) -> Result<Comparison> {
    let Some(config) = RunningConfig::read(&settings.vdsm_netconf)? else {
        return Ok(Comparison::default());
    };
    Ok(Comparison {
        config: Some(config.dir.display().to_string()),
        setup_under_way: setup_under_way(state),
        disagreements: disagreements(state, &config),
        error: None,
    })
}

/// True when a `before_network_setup` recorded a setup whose runner (supervdsm, or
/// `vdsm-tool restore-nets`) still runs: until its `after_network_setup` (or `_fail`), our
/// record already holds the request while VDSM's config does not yet.
fn setup_under_way(state: &State) -> bool {
    state
        .setup
        .as_ref()
        .and_then(|pending| pending.runner)
        .is_some_and(|runner| runner.is_running())
}

/// Every network on which `state` and `config` disagree, in name order.
pub fn disagreements(state: &State, config: &RunningConfig) -> Vec<Disagreement> {
    let mut found = Vec::new();
    for (network, change) in &config.networks {
        let recorded = state.networks.get(network);
        match (change, recorded) {
            (NetworkChange::Isolate(policy), None) => found.push(Disagreement::Untracked {
                network: network.clone(),
                policy: policy.clone(),
            }),
            (NetworkChange::Isolate(policy), Some(recorded)) if policy != recorded => {
                found.push(Disagreement::Differs {
                    network: network.clone(),
                    policy: policy.clone(),
                    recorded: recorded.clone(),
                })
            }
            (NetworkChange::Lift, Some(recorded)) => found.push(Disagreement::Stale {
                network: network.clone(),
                bridge: recorded.bridge.clone(),
                present: true,
            }),
            _ => {}
        }
    }
    for (network, recorded) in &state.networks {
        if !config.networks.contains_key(network) && !config.invalid.contains_key(network) {
            found.push(Disagreement::Stale {
                network: network.clone(),
                bridge: recorded.bridge.clone(),
                present: false,
            });
        }
    }
    found.extend(config.invalid.iter().map(|(network, reason)| Disagreement::Invalid {
        network: network.clone(),
        reason: reason.clone(),
    }));
    found.sort_by(|a, b| a.network().cmp(b.network()));
    found
}

/// Root, under the lock, before a reconcile: records what VDSM's running config asks where
/// it disagrees with the state (one log line each), and writes down the bridges it isolates
/// for the first time before their ports are touched ([`Locked::record_intent`]). Does
/// nothing without a VDSM config or while a network setup is under way. Returns the
/// comparison as it was found.
pub fn adopt(locked: &mut Locked, settings: &Settings) -> Result<Comparison> {
    let comparison = compare(&locked.state, settings)?;
    if comparison.setup_under_way {
        if !comparison.disagreements.is_empty() {
            log::info!("a network setup is under way: VDSM's running config is adopted once it ends");
        }
        return Ok(comparison);
    }
    let mut isolated = Vec::new();
    for disagreement in &comparison.disagreements {
        let Some(change) = disagreement.change() else {
            log::warn!("{disagreement}: left as recorded");
            continue;
        };
        if let NetworkChange::Isolate(policy) = &change {
            isolated.push(policy.bridge.clone());
        }
        if let Some(line) = locked.state.record(disagreement.network(), &change) {
            log::info!("{line}: adopted from VDSM's running config");
        }
    }
    locked.record_intent(isolated.iter().map(String::as_str))?;
    Ok(comparison)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::parse_peer_macs;

    fn policy(bridge: &str, uplink: &str) -> NetworkPolicy {
        NetworkPolicy {
            bridge: bridge.into(),
            uplink: Some(uplink.into()),
            ..NetworkPolicy::default()
        }
    }

    /// Root settings with state and VDSM's config (`netconf/`) under `dir`.
    fn settings_in(dir: &std::path::Path) -> Settings {
        Settings {
            state_dir: dir.join("state"),
            config_file: dir.join("none.conf"),
            backend: crate::host::config::BackendChoice::Auto,
            privileged: true,
            vdsm_netconf: dir.join("netconf"),
            owners_dir: dir.join("owners"),
        }
    }

    fn config(networks: &[(&str, Option<NetworkPolicy>)], invalid: &[&str]) -> RunningConfig {
        RunningConfig {
            dir: "/var/lib/vdsm/staging/netconf".into(),
            networks: networks
                .iter()
                .map(|(n, p)| {
                    let change = p.clone().map_or(NetworkChange::Lift, NetworkChange::Isolate);
                    (n.to_string(), change)
                })
                .collect(),
            invalid: invalid
                .iter()
                .map(|n| (n.to_string(), "bad value".to_string()))
                .collect(),
        }
    }

    #[test]
    fn finds_every_kind_of_disagreement() {
        let mut state = State::default();
        state.networks.insert("red".into(), policy("red", "eth1"));
        state.networks.insert("blue".into(), policy("blue", "eth2"));
        state.networks.insert("gone".into(), policy("gone", "eth3"));
        state.networks.insert("odd".into(), policy("odd", "eth4"));
        state.networks.insert("same".into(), policy("same", "eth5"));
        let mut red = policy("red", "eth1");
        red.peer_macs = parse_peer_macs("56:6f:4c:00:00:00/24").unwrap();
        let cfg = config(
            &[
                ("red", Some(red.clone())),
                ("blue", None),
                ("green", Some(policy("green", "bond0.7"))),
                ("same", Some(policy("same", "eth5"))),
                ("ovirtmgmt", None),
            ],
            &["odd"],
        );
        let found = disagreements(&state, &cfg);
        let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "network blue: not tagged in VDSM's running config, bridge blue still isolated here",
                "network gone: gone from VDSM's running config, bridge gone still isolated here",
                "network green: tagged bridge_isolation=true in VDSM's running config, bridge green not isolated here",
                "network odd: VDSM's running config cannot be judged: bad value",
                "network red: VDSM's running config has other cross-host properties than recorded here",
            ]
        );
        assert_eq!(
            found[4],
            Disagreement::Differs {
                network: "red".into(),
                policy: red,
                recorded: policy("red", "eth1")
            }
        );
    }

    #[test]
    fn an_uplink_move_names_both() {
        let mut state = State::default();
        state.networks.insert("red".into(), policy("red", "eth1"));
        let found = disagreements(&state, &config(&[("red", Some(policy("red", "bond0")))], &[]));
        assert_eq!(
            found[0].to_string(),
            "network red: VDSM's running config has bridge red with uplink bond0, recorded here: bridge red with uplink eth1"
        );
    }

    #[test]
    fn agreement_is_silent() {
        let mut state = State::default();
        state.networks.insert("red".into(), policy("red", "eth1"));
        let cfg = config(&[("red", Some(policy("red", "eth1"))), ("ovirtmgmt", None)], &[]);
        assert!(disagreements(&state, &cfg).is_empty());
        assert!(disagreements(&State::default(), &config(&[("ovirtmgmt", None)], &[])).is_empty());
    }

    #[test]
    fn adoption_records_what_vdsm_asks_and_keeps_what_it_cannot_judge() {
        let dir = tempfile::tempdir().unwrap();
        let nets = dir.path().join("netconf/nets");
        std::fs::create_dir_all(&nets).unwrap();
        std::fs::write(
            nets.join("green"),
            r#"{"nic": "eth7", "bridged": true, "custom": {"bridge_isolation": "true"}}"#,
        )
        .unwrap();
        std::fs::write(nets.join("blue"), r#"{"nic": "eth2", "bridged": true}"#).unwrap();
        std::fs::write(
            nets.join("odd"),
            r#"{"nic": "eth4", "custom": {"bridge_isolation": "maybe"}}"#,
        )
        .unwrap();
        let settings = settings_in(dir.path());
        let store = crate::host::state::Store::new(&settings.state_dir);
        let mut locked = store.lock().unwrap();
        locked.state.networks.insert("blue".into(), policy("blue", "eth2"));
        locked.state.networks.insert("gone".into(), policy("gone", "eth3"));
        locked.state.networks.insert("odd".into(), policy("odd", "eth4"));
        locked.save().unwrap();
        let found = adopt(&mut locked, &settings).unwrap();
        assert_eq!(found.disagreements.len(), 4, "{found:?}");
        let names: Vec<&str> = locked.state.networks.keys().map(String::as_str).collect();
        assert_eq!(names, ["green", "odd"]);
        assert_eq!(locked.state.networks["green"], policy("green", "eth7"));
        let released: Vec<&str> = locked.state.released.iter().map(String::as_str).collect();
        assert_eq!(released, ["blue", "gone"]);
        // Written ahead: the newly isolated bridge is on disk as released before any port
        // of it is touched.
        assert!(store.read().unwrap().released.contains("green"));
        locked.commit().unwrap();
        let mut again = store.lock().unwrap();
        let second = adopt(&mut again, &settings).unwrap();
        assert_eq!(
            second.disagreements.len(),
            1,
            "only the file it cannot judge: {second:?}"
        );
        assert!(!again.changed());
    }

    #[test]
    fn nothing_is_adopted_while_a_setup_runs_or_without_a_vdsm_config() {
        let dir = tempfile::tempdir().unwrap();
        let nets = dir.path().join("netconf/nets");
        std::fs::create_dir_all(&nets).unwrap();
        std::fs::write(nets.join("blue"), r#"{"nic": "eth2", "bridged": true}"#).unwrap();
        let mut settings = settings_in(dir.path());
        let store = crate::host::state::Store::new(&settings.state_dir);
        let mut locked = store.lock().unwrap();
        locked.state.networks.insert("blue".into(), policy("blue", "eth2"));
        // This test process stands for a supervdsm between before_ and after_network_setup.
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        let start: u64 = me[me.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .nth(19)
            .unwrap()
            .parse()
            .unwrap();
        locked.state.setup = Some(crate::host::state::PendingSetup {
            request: "0123456789abcdef".into(),
            runner: Some(crate::host::state::Runner {
                pid: std::process::id(),
                start,
            }),
            previous: Default::default(),
        });
        let under_way = adopt(&mut locked, &settings).unwrap();
        assert!(under_way.setup_under_way);
        assert_eq!(under_way.disagreements.len(), 1);
        assert!(locked.state.networks.contains_key("blue"));
        // The runner is gone (another start time): the record no longer holds adoption back.
        locked.state.setup.as_mut().unwrap().runner.as_mut().unwrap().start += 1;
        assert!(!adopt(&mut locked, &settings).unwrap().setup_under_way);
        assert!(!locked.state.networks.contains_key("blue"));
        // No VDSM config: nothing to compare, nothing changes.
        locked.state.networks.insert("blue".into(), policy("blue", "eth2"));
        settings.vdsm_netconf = dir.path().join("absent");
        assert_eq!(adopt(&mut locked, &settings).unwrap(), Comparison::default());
        assert!(locked.state.networks.contains_key("blue"));
    }
}
