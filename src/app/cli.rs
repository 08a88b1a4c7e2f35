//! The administrator's CLI `bridge-isolation`: status, verify, reconcile, and the demo.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::app::demo;
use crate::app::hook;
use crate::app::manpage;
use crate::app::metrics;
use crate::app::recover;
use crate::app::release;
use crate::app::watch;
use crate::error::{Error, Result};
use crate::host::config::{self, Settings};
use crate::host::owners::{OwnerDir, Resolver};
use crate::host::state::{State, Store};
use crate::model::backend::DropCounter;
use crate::model::owner::OwnerSource;
use crate::model::plan::{Plan, Role};
use crate::reconcile;
use crate::vdsm::logging;
use crate::vdsm::protocol::Point;

/// Isolate the VM ports of oVirt bridge networks from each other (VDSM hooks).
#[derive(Debug, Parser)]
#[command(name = "bridge-isolation", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show every isolated bridge and port: role, isolation, drift.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Adopt what VDSM's running network config tags or untags, then make the kernel match
    /// the recorded policy (root).
    Reconcile,
    /// Exit non-zero, listing each drift, when the kernel differs from the policy or the
    /// policy from VDSM's running network config.
    Verify,
    /// Print the metrics (Prometheus text exposition, names bridge_isolation_*): per
    /// isolated bridge its ports by role and isolation, drift, blocked ports, frames
    /// dropped where the backend counts them; the last successful reconcile, the watcher,
    /// disagreements with VDSM's running network config. The watcher and every root
    /// reconcile also write them into node_exporter's textfile collector directory
    /// (metrics_textfile_dir) when it exists.
    Metrics {
        /// Write them into the textfile collector directory instead of stdout, when it
        /// exists (root; the watcher's unit does it when the watcher stops).
        #[arg(long)]
        textfile: bool,
    },
    /// Build a disposable netns lab, run the hooks as VDSM does, and show the
    /// reachability matrix before and after isolation (root).
    Demo(demo::DemoArgs),
    /// Lift every isolation this host applied and forget the recorded policy (root).
    /// The package runs it when it is erased; the hooks apply isolation again at the next
    /// network setup or VM start if they are still installed.
    ReleaseAll,
    /// Recover from an unreadable state file (empty, truncated, garbage) without editing it
    /// (root). The file is moved aside as state.json.broken-<UTC time> (never deleted); the
    /// isolated networks are rebuilt from VDSM's running network config
    /// (/var/lib/vdsm/staging/netconf/nets/, with the checks of before_network_setup) or, when
    /// VDSM keeps none, from the kernel (bridges with isolated VM ports; network = bridge
    /// name; uplink only where unambiguous), then reconciled. Trusted vNICs are not rebuilt:
    /// each comes back at its VM's next lifecycle hook. Refuses a readable, valid state file
    /// unless --force.
    Recover {
        /// Rebuild even when the state file is readable and valid (it is moved aside as
        /// state.json.replaced-<UTC time>).
        #[arg(long)]
        force: bool,
    },
    /// Keep isolation applied between the hooks (root; runs in the foreground, started by
    /// bridge-isolation-watch.service). Repairs at once a port that joins an isolated bridge
    /// outside VDSM's hooks (virsh, libvirt, ip link set master) and an isolation flag
    /// cleared by hand, as the kernel reports them (rtnetlink); puts our nftables tables back
    /// when someone deletes or changes them (nf_tables notifications); re-applies after
    /// firewalld reloads, starts or stops (D-Bus); reconciles everything every watch_backstop
    /// seconds (600) and when notifications were lost. Acts on the network namespace it runs in.
    Watch,
    /// Deprecated name of `watch` (release 0.1's firewalld listener): runs the same watcher.
    #[command(hide = true)]
    WatchFirewalld,
    /// Run the hook at POINT as VDSM would (the hook binary hands over the runs that need the
    /// firewalld or iptables backend).
    #[command(hide = true)]
    Hook {
        /// The hook point.
        point: String,
    },
    /// Write the manual page or a shell completion script to stdout (for packaging).
    #[command(hide = true, subcommand)]
    Generate(manpage::Generate),
}

/// Entry point of the CLI binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::enforce::link_daemon_backends();
    if let Command::Hook { point } = &cli.command {
        return match Point::from_name(point) {
            Some(point) => ExitCode::from(hook::run_to_exit(point)),
            None => {
                eprintln!("unknown hook point {point:?}");
                ExitCode::from(2)
            }
        };
    }
    logging::init(match cli.command {
        Command::Watch | Command::WatchFirewalld => "watch",
        _ => "cli",
    });
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    if let Command::Generate(what) = &command {
        // Build time: no privilege, no configuration.
        manpage::write(what, &mut std::io::stdout().lock())?;
        return Ok(ExitCode::SUCCESS);
    }
    let settings = Settings::from_env()?;
    let store = Store::new(&settings.state_dir);
    match command {
        Command::Status { json } => {
            let report = StatusReport::gather(&settings, &store.read()?, true)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("serializes"));
            } else {
                print!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify => {
            let state = store.read()?;
            let report = StatusReport::gather(&settings, &state, false)?;
            let drifts: Vec<String> = report
                .bridges
                .iter()
                .flat_map(|b| b.ports.iter().filter(|p| p.drift).map(move |p| (b, p)))
                .map(|(b, p)| {
                    format!(
                        "drift: bridge {} port {} ({:?}) isolated={} expected={}",
                        b.bridge, p.port, p.role, p.isolated, p.expected
                    )
                })
                .chain(report.bridges.iter().filter_map(BridgeStatus::missing_uplink))
                .chain(
                    report
                        .lifted
                        .iter()
                        .map(|b| format!("drift: bridge {b} still has to be cleared (isolation lifted)")),
                )
                .chain(report.blocked.iter().flat_map(|(b, ps)| {
                    ps.iter()
                        .map(move |p| format!("blocked: bridge {b} port {p} (enforcement failed; run reconcile)"))
                }))
                .chain(
                    cross_host_drift(&state, &settings)?
                        .into_iter()
                        .map(|d| format!("drift: {d}")),
                )
                .chain(report.vdsm_disagreements())
                .collect();
            for d in &drifts {
                println!("{d}");
            }
            if drifts.is_empty() {
                let ports: usize = report.bridges.iter().map(|b| b.ports.len()).sum();
                println!(
                    "ok: {} isolated bridge(s), {ports} port(s), no drift ({})",
                    report.bridges.len(),
                    report.backend
                );
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::from(1))
            }
        }
        Command::Reconcile => {
            if !config::is_root() {
                return Err(Error::Helper("reconcile must run as root".into()));
            }
            let outcome = reconcile::adopt_and_run(store.lock()?, &settings);
            metrics::write_textfile(&settings);
            let outcome = outcome?;
            match outcome.backend {
                Some(backend) => println!("{backend}: {} port(s) changed", outcome.changes.len()),
                None => println!("no isolated networks: nothing to do"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Metrics { textfile: false } => {
            print!("{}", metrics::text(&settings));
            Ok(ExitCode::SUCCESS)
        }
        Command::Metrics { textfile: true } => {
            if !config::is_root() {
                return Err(Error::Helper("metrics --textfile must run as root".into()));
            }
            metrics::write_textfile(&settings);
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => demo::run(&args).map(|_| ExitCode::SUCCESS),
        Command::ReleaseAll => {
            let released = release::release_all(&settings)?;
            if released.bridges.is_empty() {
                println!("nothing recorded: no isolation to lift");
            } else {
                let backends: Vec<String> = released.backends.iter().map(ToString::to_string).collect();
                println!(
                    "released {} bridge(s) ({}): {} port(s) opened; state forgotten",
                    released.bridges.len(),
                    backends.join(", "),
                    released.changes.len()
                );
            }
            for f in &released.foreign {
                println!("left in the state directory (not ours): {}", f.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Recover { force } => {
            let recovered = recover::recover(&settings, force);
            metrics::write_textfile(&settings);
            print!("{}", recovered?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch | Command::WatchFirewalld => {
            if !config::is_root() {
                return Err(Error::Helper("watch must run as root".into()));
            }
            if matches!(command, Command::WatchFirewalld) {
                log::warn!("watch-firewalld is the old name of watch (which also watches the links): use watch");
            }
            watch::run(&settings).map(|()| ExitCode::SUCCESS)
        }
        Command::Generate(_) | Command::Hook { .. } => unreachable!("handled before"),
    }
}

/// Everything `status` shows, as data (its JSON form is `status --json`).
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// The backend that would act now.
    pub backend: String,
    /// The backend recorded as having done the work.
    pub recorded_backend: Option<String>,
    /// The state file.
    pub state_file: String,
    /// Isolated bridges.
    pub bridges: Vec<BridgeStatus>,
    /// Bridges whose isolation was lifted but not yet cleared.
    pub lifted: Vec<String>,
    /// Trusted vNICs, each with the tap it is bound to.
    pub trusted: Vec<TrustedStatus>,
    /// VM ports disabled because enforcement failed (fail-closed), by bridge.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub blocked: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Cross-host isolation per network: peer ranges, trusted MACs, allowed uplink MACs,
    /// frames dropped.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub cross_host: std::collections::BTreeMap<String, crate::enforce::cross_host::PeerStatus>,
    /// How the recorded policy compares with VDSM's running network config (`config` null:
    /// none on this host).
    pub vdsm: reconcile::Comparison,
    /// Whether the watcher (`bridge-isolation watch`) runs for this state directory.
    pub watcher: WatcherStatus,
}

impl StatusReport {
    /// The disagreements with VDSM's running config that `verify` reports: none while a
    /// network setup is under way (VDSM's config and the record then catch up by
    /// themselves).
    pub fn vdsm_disagreements(&self) -> Vec<String> {
        if self.vdsm.setup_under_way {
            return Vec::new();
        }
        let adopt = "run reconcile to adopt VDSM's running config";
        self.vdsm
            .disagreements
            .iter()
            .map(|d| match d {
                reconcile::Disagreement::Invalid { .. } => format!("vdsm: {d}"),
                _ => format!("vdsm: {d} ({adopt})"),
            })
            .chain(self.vdsm.error.iter().map(|e| format!("vdsm: {e}")))
            .collect()
    }
}

/// The watcher, as its pid file in the state directory shows it.
#[derive(Debug, Serialize)]
pub struct WatcherStatus {
    /// True while a watcher holds its pid file.
    pub running: bool,
    /// Its process id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When it started (UTC, `YYYYMMDDTHHMMSSZ`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

impl WatcherStatus {
    /// The watcher of state directory `dir`.
    pub fn of(dir: &std::path::Path) -> WatcherStatus {
        let seen = crate::host::watcher::presence(dir);
        WatcherStatus {
            running: seen.is_some(),
            pid: seen.map(|p| p.pid),
            since: seen.map(|p| recover::utc_stamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(p.since))),
        }
    }
}

impl std::fmt::Display for WatcherStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, &self.since) {
            (Some(pid), Some(since)) if self.running => write!(f, "watcher: running (pid {pid}, since {since})"),
            _ => write!(f, "watcher: not running (bridge-isolation-watch.service)"),
        }
    }
}

/// What differs in the cross-host filter; only root can read it, so for anyone else a note
/// on stderr says it was not checked.
fn cross_host_drift(state: &crate::host::state::State, settings: &Settings) -> Result<Vec<String>> {
    if config::is_root() {
        return crate::enforce::cross_host::drift(
            state,
            &cross_host_plan(state)?,
            &crate::enforce::DriverSettings::of(settings),
        );
    }
    if !crate::enforce::cross_host::wanted_bridges(state).is_empty() {
        eprintln!("note: the cross-host filter was not checked (only root can read it)");
    }
    Ok(Vec::new())
}

/// The plan of the bridges the cross-host filter covers (an rtnetlink dump when there are).
fn cross_host_plan(state: &State) -> Result<Plan> {
    let bridges = crate::enforce::cross_host::wanted_bridges(state);
    reconcile::plan_for(state, |b| bridges.contains(b))
}

/// One trusted vNIC.
#[derive(Debug, Serialize)]
pub struct TrustedStatus {
    /// The VM (`vmId`).
    pub vm: String,
    /// The VM's name, when a hook recorded it or (root) its qemu process shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    /// Its guest MAC.
    pub mac: String,
    /// The tap it is bound to; `None` for a record of the previous release not yet bound
    /// (the next root run binds it, or drops it).
    pub tap: Option<String>,
    /// The tap's interface index when it was bound.
    pub ifindex: Option<u32>,
}

/// One isolated bridge.
#[derive(Debug, Serialize)]
pub struct BridgeStatus {
    /// oVirt network.
    pub network: String,
    /// Linux bridge.
    pub bridge: String,
    /// Recorded uplink port.
    pub uplink: Option<String>,
    /// Whether the bridge exists.
    pub present: bool,
    /// Its ports.
    pub ports: Vec<PortStatus>,
    /// Frames dropped between its VM ports, for backends that count them (nftables).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drops: Option<DropCounter>,
}

impl BridgeStatus {
    /// A `verify` line when the recorded uplink is not a port of the present bridge: the
    /// port that leads to the gateway now is then taken for a VM port and isolated.
    pub fn missing_uplink(&self) -> Option<String> {
        let uplink = self.uplink.as_deref()?;
        (self.present && !self.ports.iter().any(|p| p.port == uplink)).then(|| {
            format!(
                "uplink: bridge {} has no port {uplink}, the uplink recorded for network {}: any \
                 other port leading to the gateway is isolated as a VM port; sync the network \
                 (setupNetworks) so the hooks record its uplink",
                self.bridge, self.network
            )
        })
    }
}

/// One port.
#[derive(Debug, Serialize)]
pub struct PortStatus {
    /// Interface name.
    pub port: String,
    /// MAC address.
    pub mac: Option<String>,
    /// Role from the policy.
    pub role: Role,
    /// Whether the backend keeps it from the other VM ports now.
    pub isolated: bool,
    /// Whether it should.
    pub expected: bool,
    /// `isolated != expected`.
    pub drift: bool,
    /// Where its owner was found, for a VM or trusted port: `hook` (a hook's record of this
    /// very tap), `qemu` (the qemu process holding it: root only), or `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<&'static str>,
    /// The VM it belongs to (`vmId`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
    /// That VM's name, when known (control characters replaced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    /// The vNIC's guest MAC, when a hook recorded it (`mac` is the tap's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vnic_mac: Option<String>,
}

impl PortStatus {
    /// What the table's VM column shows: the VM's name, else its id, else `unknown`; `-`
    /// for the uplink.
    pub fn vm_column(&self) -> &str {
        match (&self.owner, &self.vm_name, &self.vm_id) {
            (None, _, _) => "-",
            (_, Some(name), _) => name,
            (_, None, Some(id)) => id,
            _ => "unknown",
        }
    }
}

impl StatusReport {
    /// Reads the kernel and builds the report for `state`; with `owners`, finds the VM of
    /// each port too (`status` shows them; `verify` and the metrics need none, and for a
    /// port no hook recorded, root walks /proc).
    pub fn gather(settings: &Settings, state: &State, owners: bool) -> Result<StatusReport> {
        let plan: Plan = reconcile::plan(state)?;
        let mut backend = reconcile::select_backend(settings)?;
        if backend.needs_root_to_observe() && !config::is_root() {
            return Err(Error::Helper(format!(
                "the {} backend's rules can only be read by root: run this as root",
                backend.kind()
            )));
        }
        let observed = backend.observe(&plan)?;
        let mut drops = backend.drop_counters(&plan)?;
        let lifted_plan = Plan {
            bridges: plan.lifted.clone(),
            lifted: Vec::new(),
        };
        let still_lifted = backend.observe(&lifted_plan)?;
        let isolated = |b: &str, p: &str| observed.iter().any(|o| o.bridge == b && o.port == p && o.isolated);
        let mut owners = owners.then(|| Resolver::new(&OwnerDir::new(&settings.owners_dir)));
        let mut owner_of = |tap: &str, ifindex: u32| owners.as_mut().and_then(|o| o.owner_of(tap, ifindex));
        let bridges = plan
            .bridges
            .iter()
            .map(|b| BridgeStatus {
                network: b.network.clone(),
                bridge: b.bridge.clone(),
                uplink: b.uplink.clone(),
                present: b.present,
                ports: b
                    .ports
                    .iter()
                    .map(|p| {
                        let now = isolated(&b.bridge, &p.port.name);
                        let owner = (p.role != Role::Uplink)
                            .then(|| owner_of(&p.port.name, p.port.ifindex))
                            .flatten();
                        PortStatus {
                            port: p.port.name.clone(),
                            mac: p.port.mac.map(|m| m.to_string()),
                            role: p.role,
                            isolated: now,
                            expected: p.role.isolated(),
                            drift: now != p.role.isolated(),
                            owner: (p.role != Role::Uplink).then(|| match &owner {
                                Some(o) if o.source == OwnerSource::Hook => "hook",
                                Some(_) => "qemu",
                                None => "unknown",
                            }),
                            vnic_mac: owner.as_ref().and_then(|o| o.vnic_mac).map(|m| m.to_string()),
                            vm_name: owner.as_ref().and_then(|o| o.vm_name.clone()),
                            vm_id: owner.map(|o| o.vm_id),
                        }
                    })
                    .collect(),
                drops: drops.remove(&b.bridge),
            })
            .collect();
        Ok(StatusReport {
            backend: backend.kind().to_string(),
            recorded_backend: state.backend.map(|b| b.to_string()),
            state_file: Store::new(&settings.state_dir).path().display().to_string(),
            bridges,
            lifted: plan
                .lifted
                .iter()
                .filter(|b| {
                    b.ports.iter().any(|p| p.port.isolated == Some(true))
                        || still_lifted.iter().any(|o| o.bridge == b.bridge && o.isolated)
                })
                .map(|b| b.bridge.clone())
                .collect(),
            trusted: state
                .trusted_ports()
                .map(|(vm, p)| TrustedStatus {
                    vm: vm.to_string(),
                    vm_name: owner_of(&p.tap, p.ifindex).and_then(|o| o.vm_name),
                    mac: p.mac.to_string(),
                    tap: Some(p.tap.clone()),
                    ifindex: Some(p.ifindex),
                })
                .chain(state.legacy_trusted.iter().map(|(m, t)| TrustedStatus {
                    vm: t.vm.clone(),
                    vm_name: None,
                    mac: m.to_string(),
                    tap: None,
                    ifindex: None,
                }))
                .collect(),
            blocked: state.blocked.clone(),
            cross_host: crate::enforce::cross_host::status(
                state,
                &crate::enforce::DriverSettings::of(settings),
                || cross_host_plan(state),
            ),
            vdsm: reconcile::compare(state, settings).unwrap_or_else(|e| reconcile::Comparison {
                config: Some(settings.vdsm_netconf.display().to_string()),
                error: Some(crate::vdsm::protocol::one_line(&e.to_string())),
                ..reconcile::Comparison::default()
            }),
            watcher: WatcherStatus::of(&settings.state_dir),
        })
    }
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let recorded = self.recorded_backend.as_deref().unwrap_or("none yet");
        writeln!(
            f,
            "backend: {} (last used: {recorded})   state: {}",
            self.backend, self.state_file
        )?;
        writeln!(f, "{}", self.watcher)?;
        if self.bridges.is_empty() {
            writeln!(f, "no isolated networks")?;
        } else {
            writeln!(
                f,
                "{:<15} {:<15} {:<15} {:<17} {:<8} {:<9} {:<9} {:<6} VM",
                "NETWORK", "BRIDGE", "PORT", "MAC", "ROLE", "ISOLATED", "EXPECTED", "DRIFT"
            )?;
        }
        let yn = |b: bool| if b { "yes" } else { "no" };
        for b in &self.bridges {
            if !b.present {
                writeln!(f, "{:<15} {:<15} (bridge absent)", b.network, b.bridge)?;
            }
            for p in &b.ports {
                let role = format!("{:?}", p.role).to_lowercase();
                let drift = if p.drift { "DRIFT" } else { "-" };
                let mac = p.mac.as_deref().unwrap_or("-");
                writeln!(
                    f,
                    "{:<15} {:<15} {:<15} {mac:<17} {role:<8} {:<9} {:<9} {drift:<6} {}",
                    b.network,
                    b.bridge,
                    p.port,
                    yn(p.isolated),
                    yn(p.expected),
                    p.vm_column()
                )?;
            }
            if let Some(d) = b.drops {
                writeln!(
                    f,
                    "{:<15} {:<15} dropped between VM ports: {} frame(s), {} byte(s)",
                    b.network, b.bridge, d.packets, d.bytes
                )?;
            }
        }
        for l in &self.lifted {
            writeln!(f, "bridge {l}: isolation lifted, flags not yet cleared (run reconcile)")?;
        }
        for t in &self.trusted {
            let vm = match &t.vm_name {
                Some(name) => format!("VM {name}, {}", t.vm),
                None => format!("VM {}", t.vm),
            };
            match (&t.tap, t.ifindex) {
                (Some(tap), Some(index)) => writeln!(f, "trusted vNIC {} ({vm}) on tap {tap} (index {index})", t.mac)?,
                _ => writeln!(f, "trusted vNIC {} ({vm}): not bound to a tap yet", t.mac)?,
            }
        }
        if let Some(dir) = &self.vdsm.config {
            if !self.vdsm.disagreements.is_empty() || self.vdsm.error.is_some() {
                let when = if self.vdsm.setup_under_way {
                    "a network setup is under way: adopted when it ends"
                } else {
                    "run reconcile to adopt it"
                };
                writeln!(f, "VDSM's running network config ({dir}) disagrees ({when}):")?;
                for d in &self.vdsm.disagreements {
                    writeln!(f, "  {d}")?;
                }
                if let Some(e) = &self.vdsm.error {
                    writeln!(f, "  {e}")?;
                }
            }
        }
        for (bridge, port) in self.blocked.iter().flat_map(|(b, ps)| ps.iter().map(move |p| (b, p))) {
            writeln!(
                f,
                "bridge {bridge} port {port}: BLOCKED (enforcement failed; disabled until a reconcile succeeds)"
            )?;
        }
        for (network, c) in &self.cross_host {
            let list = |items: Vec<String>| {
                if items.is_empty() {
                    "none".to_string()
                } else {
                    items.join(",")
                }
            };
            let drops = match c.drops {
                Some(d) => format!("dropped {} frame(s), {} byte(s)", d.packets, d.bytes),
                None if c.peer_macs.is_empty() => "inactive (no peer ranges)".to_string(),
                None => "no rule in the kernel (or not root)".to_string(),
            };
            write!(
                f,
                "cross-host {network}: peers {}; trusted MACs {}; {drops}",
                list(c.peer_macs.iter().map(ToString::to_string).collect()),
                list(c.trusted_macs.iter().map(ToString::to_string).collect()),
            )?;
            if !c.uplink_macs.is_empty() {
                let drops = match c.uplink_drops {
                    Some(d) => format!("dropped from others {} frame(s), {} byte(s)", d.packets, d.bytes),
                    None => "no rule in the kernel (or not root)".to_string(),
                };
                write!(
                    f,
                    "; uplink MACs {}; {drops}",
                    list(c.uplink_macs.iter().map(ToString::to_string).collect())
                )?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
