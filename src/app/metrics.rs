//! `bridge-isolation metrics`: what `status` shows, as Prometheus text exposition (format
//! 0.0.4), metric names `bridge_isolation_*` (docs/monitoring.md lists them). Built in three
//! steps: [`Metrics`], the figures as plain data, read from the [`StatusReport`] and the
//! state directory; [`Metrics::families`], the metric families; [`render`], the text. The last
//! two are pure and checked here without root.
//!
//! The watcher and every root reconcile also write the text into node_exporter's textfile
//! collector directory ([`write_textfile`]; `metrics_textfile_dir`, by default
//! /var/lib/node_exporter/textfile_collector) when that directory exists: a temporary file
//! beside it, fsync, rename, so node_exporter never reads half a file. A failure to write
//! is logged, never fatal: metrics never fail a hook or a reconcile.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::app::cli::StatusReport;
use crate::error::{Error, Result};
use crate::host::config::{self, Settings};
use crate::host::state::Store;
use crate::model::backend::DropCounter;
use crate::model::plan::Role;
use crate::reconcile::Disagreement;

/// The file written into the textfile collector directory (node_exporter reads `*.prom`).
pub const TEXTFILE: &str = "bridge_isolation.prom";
/// Prefix of the temporary files renamed over [`TEXTFILE`] (`.bridge_isolation.prom.PID.N`:
/// hidden, and not `*.prom`, so node_exporter never reads one).
const TEMP_PREFIX: &str = ".bridge_isolation.prom.";

/// The roles of a bridge's ports, in the order of [`BridgeMetrics::ports`].
const ROLES: [Role; 3] = [Role::Vm, Role::Trusted, Role::Uplink];

/// The kinds of disagreement with VDSM's running config, in the order of
/// [`Metrics::vdsm`]: those of [`Disagreement`] (its `kind` in `status --json`), then
/// `unreadable` (VDSM's config could not be read).
const VDSM_KINDS: [&str; 5] = ["untracked", "differs", "stale", "invalid", "unreadable"];

/// Everything the metrics show, as data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// The backend that would act now; `None` when the report could not be gathered.
    pub backend: Option<String>,
    /// The backend recorded as having done the work.
    pub recorded_backend: Option<String>,
    /// Why the report could not be gathered (the state unreadable, a backend's rules only
    /// root may read); the figures that need it are then left out.
    pub error: Option<String>,
    /// Isolated bridges.
    pub bridges: Vec<BridgeMetrics>,
    /// Blocked VM ports of bridges no network isolates any more (lifted since), by bridge.
    pub blocked_elsewhere: BTreeMap<String, u64>,
    /// Bridges whose isolation was lifted and whose enforcement is not cleared yet.
    pub lifted_pending: u64,
    /// Disagreements with VDSM's running config by kind ([`VDSM_KINDS`]), counted as
    /// `verify` counts them: none while a network setup is under way.
    pub vdsm: [u64; 5],
    /// When the watcher started (seconds since the epoch), while one runs.
    pub watcher_since: Option<u64>,
    /// When the last successful reconcile ended (since the epoch); `None`: none noted.
    pub last_reconcile: Option<Duration>,
}

/// The figures of one isolated bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeMetrics {
    /// oVirt network.
    pub network: String,
    /// Linux bridge.
    pub bridge: String,
    /// Whether the bridge exists.
    pub present: bool,
    /// Ports by role ([`ROLES`]), each as [open, isolated] now.
    pub ports: [[u64; 2]; 3],
    /// Ports whose enforcement differs from their role.
    pub drift: u64,
    /// VM ports disabled because enforcement failed (fail-closed).
    pub blocked: u64,
    /// True when the recorded uplink is not a port of the present bridge.
    pub uplink_missing: bool,
    /// Frames dropped between its VM ports, where the backend counts them (nftables).
    pub drops: Option<DropCounter>,
    /// Frames the cross-host filter dropped: from peer hosts' VMs
    /// (`bridge_isolation_peer_macs`), from unlisted uplink sources
    /// (`bridge_isolation_uplink_macs`), where that rule is in the kernel.
    pub cross_host: [Option<DropCounter>; 2],
}

impl Metrics {
    /// Reads everything (as `status` does) for `settings`; never fails: what cannot be read
    /// is [`Metrics::error`].
    pub fn gather(settings: &Settings) -> Metrics {
        let report = Store::new(&settings.state_dir)
            .read()
            .and_then(|state| StatusReport::gather(settings, &state, false));
        let mut metrics = match report {
            Ok(report) => Metrics::of(&report),
            Err(e) => Metrics {
                error: Some(crate::vdsm::protocol::one_line(&e.to_string())),
                ..Metrics::default()
            },
        };
        metrics.watcher_since = crate::host::watcher::presence(&settings.state_dir).map(|p| p.since);
        metrics.last_reconcile = crate::host::reconciled::last(&settings.state_dir);
        metrics
    }

    /// The figures of `report` (the watcher and the last reconcile are not in it).
    pub fn of(report: &StatusReport) -> Metrics {
        let mut vdsm = [0; 5];
        if !report.vdsm.setup_under_way {
            for d in &report.vdsm.disagreements {
                vdsm[match d {
                    Disagreement::Untracked { .. } => 0,
                    Disagreement::Differs { .. } => 1,
                    Disagreement::Stale { .. } => 2,
                    Disagreement::Invalid { .. } => 3,
                }] += 1;
            }
            vdsm[4] = u64::from(report.vdsm.error.is_some());
        }
        let count = |n: usize| n as u64;
        let bridges: Vec<BridgeMetrics> = report
            .bridges
            .iter()
            .map(|b| {
                let mut ports = [[0; 2]; 3];
                for p in &b.ports {
                    let role = ROLES.iter().position(|&r| r == p.role).expect("every role listed");
                    ports[role][usize::from(p.isolated)] += 1;
                }
                let cross = report.cross_host.get(&b.network);
                BridgeMetrics {
                    network: b.network.clone(),
                    bridge: b.bridge.clone(),
                    present: b.present,
                    ports,
                    drift: count(b.ports.iter().filter(|p| p.drift).count()),
                    blocked: count(report.blocked.get(&b.bridge).map_or(0, |s| s.len())),
                    uplink_missing: b.missing_uplink().is_some(),
                    drops: b.drops,
                    cross_host: [cross.and_then(|c| c.drops), cross.and_then(|c| c.uplink_drops)],
                }
            })
            .collect();
        // Ports blocked on a bridge no network isolates any more (lifted since) stay
        // blocked until a reconcile succeeds.
        let blocked_elsewhere = report
            .blocked
            .iter()
            .filter(|(bridge, _)| !report.bridges.iter().any(|b| &b.bridge == *bridge))
            .map(|(bridge, ports)| (bridge.clone(), count(ports.len())))
            .collect();
        Metrics {
            backend: Some(report.backend.clone()),
            recorded_backend: report.recorded_backend.clone(),
            error: None,
            bridges,
            blocked_elsewhere,
            lifted_pending: count(report.lifted.len()),
            vdsm,
            watcher_since: None,
            last_reconcile: None,
        }
    }

    /// The metric families, each with its help and type; families with nothing to show
    /// (no bridge, no counter) are left out.
    pub fn families(&self) -> Vec<Family> {
        use Kind::{Counter, Gauge};
        let mut out = Vec::new();
        let flag = |b: bool| Value::Int(u64::from(b));
        let mut info = Family::new(
            "bridge_isolation_info",
            "Always 1: the version, the backend that would act now and the one recorded as having done the work.",
            Gauge,
        );
        info.push(
            vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("backend", self.backend.clone().unwrap_or_default()),
                ("recorded_backend", self.recorded_backend.clone().unwrap_or_default()),
            ],
            Value::Int(1),
        );
        out.push(info);
        let mut error = Family::new(
            "bridge_isolation_scrape_error",
            "1 when the state or the kernel could not be read (the per-bridge figures are then missing), else 0.",
            Gauge,
        );
        error.push(vec![], flag(self.error.is_some()));
        out.push(error);
        let mut watcher = Family::new(
            "bridge_isolation_watcher_running",
            "1 while bridge-isolation watch runs for this state directory, else 0.",
            Gauge,
        );
        watcher.push(vec![], flag(self.watcher_since.is_some()));
        out.push(watcher);
        let mut since = Family::new(
            "bridge_isolation_watcher_start_time_seconds",
            "When the running watcher started, seconds since the Unix epoch.",
            Gauge,
        );
        if let Some(s) = self.watcher_since {
            since.push(vec![], Value::Int(s));
        }
        out.push(since);
        let mut last = Family::new(
            "bridge_isolation_last_reconcile_success_timestamp_seconds",
            "When the last successful reconcile of the whole host ended, seconds since the Unix epoch; 0: none noted.",
            Gauge,
        );
        last.push(
            vec![],
            Value::Seconds(self.last_reconcile.unwrap_or_default().as_secs_f64()),
        );
        out.push(last);

        let bridge = |b: &BridgeMetrics| vec![("network", b.network.clone()), ("bridge", b.bridge.clone())];
        let mut present = Family::new(
            "bridge_isolation_bridge_present",
            "1 when the bridge of an isolated network exists, else 0.",
            Gauge,
        );
        let mut ports = Family::new(
            "bridge_isolation_ports",
            "Ports of an isolated bridge by role (vm, trusted, uplink) and whether they are kept from the VM ports now.",
            Gauge,
        );
        let mut drift = Family::new(
            "bridge_isolation_drift_ports",
            "Ports whose enforcement differs from their role (a VM port open, a trusted vNIC or the uplink isolated).",
            Gauge,
        );
        let mut blocked = Family::new(
            "bridge_isolation_blocked_ports",
            "VM ports disabled because enforcement failed (on_failure = block), until a reconcile succeeds.",
            Gauge,
        );
        let mut uplink = Family::new(
            "bridge_isolation_uplink_missing",
            "1 when the recorded uplink is not a port of the bridge (another port leading to the gateway is isolated as a VM port), else 0.",
            Gauge,
        );
        let mut frames = Family::new(
            "bridge_isolation_dropped_frames_total",
            "Frames dropped between the VM ports of the bridge (backends that count them: nftables).",
            Counter,
        );
        let mut bytes = Family::new(
            "bridge_isolation_dropped_bytes_total",
            "Bytes of the frames dropped between the VM ports of the bridge (backends that count them: nftables).",
            Counter,
        );
        let mut cross_frames = Family::new(
            "bridge_isolation_cross_host_dropped_frames_total",
            "Frames the cross-host filter dropped on their way to VM ports: from peer hosts' VMs (filter=peer_macs), from uplink sources not listed (filter=uplink_macs).",
            Counter,
        );
        let mut cross_bytes = Family::new(
            "bridge_isolation_cross_host_dropped_bytes_total",
            "Bytes of the frames the cross-host filter dropped (filter as in bridge_isolation_cross_host_dropped_frames_total).",
            Counter,
        );
        for b in &self.bridges {
            present.push(bridge(b), flag(b.present));
            for (role, counts) in ROLES.iter().zip(b.ports) {
                for (isolated, n) in ["false", "true"].into_iter().zip(counts) {
                    let mut labels = bridge(b);
                    labels.push(("role", role_name(*role).to_string()));
                    labels.push(("isolated", isolated.to_string()));
                    ports.push(labels, Value::Int(n));
                }
            }
            drift.push(bridge(b), Value::Int(b.drift));
            blocked.push(bridge(b), Value::Int(b.blocked));
            uplink.push(bridge(b), flag(b.uplink_missing));
            if let Some(d) = b.drops {
                frames.push(bridge(b), Value::Int(d.packets));
                bytes.push(bridge(b), Value::Int(d.bytes));
            }
            for (filter, d) in ["peer_macs", "uplink_macs"].into_iter().zip(b.cross_host) {
                if let Some(d) = d {
                    let mut labels = bridge(b);
                    labels.push(("filter", filter.to_string()));
                    cross_frames.push(labels.clone(), Value::Int(d.packets));
                    cross_bytes.push(labels, Value::Int(d.bytes));
                }
            }
        }
        for (bridge, n) in &self.blocked_elsewhere {
            // No drift there (no policy): 0, so that drift + blocked adds up on every bridge.
            let labels = vec![("network", String::new()), ("bridge", bridge.clone())];
            drift.push(labels.clone(), Value::Int(0));
            blocked.push(labels, Value::Int(*n));
        }
        out.extend([
            present,
            ports,
            drift,
            blocked,
            uplink,
            frames,
            bytes,
            cross_frames,
            cross_bytes,
        ]);
        if self.error.is_none() {
            let mut lifted = Family::new(
                "bridge_isolation_lifted_pending_bridges",
                "Bridges whose isolation was lifted and whose enforcement is not cleared yet (a reconcile clears it).",
                Gauge,
            );
            lifted.push(vec![], Value::Int(self.lifted_pending));
            let mut vdsm = Family::new(
                "bridge_isolation_vdsm_disagreements",
                "Disagreements of the recorded policy with VDSM's running network config, by kind, as verify counts them (none while a network setup is under way).",
                Gauge,
            );
            for (kind, n) in VDSM_KINDS.into_iter().zip(self.vdsm) {
                vdsm.push(vec![("kind", kind.to_string())], Value::Int(n));
            }
            out.extend([lifted, vdsm]);
        }
        out.retain(|f| !f.samples.is_empty());
        out
    }
}

/// A role as `status --json` names it.
fn role_name(role: Role) -> &'static str {
    match role {
        Role::Vm => "vm",
        Role::Trusted => "trusted",
        Role::Uplink => "uplink",
    }
}

/// A metric's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only goes up (it restarts from 0 when the kernel's counter is recreated).
    Counter,
}

/// A sample's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// A count.
    Int(u64),
    /// Seconds, to the millisecond.
    Seconds(f64),
}

/// One sample: its labels (name, value) and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Label names and values, in order.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: Value,
}

/// One metric family: name, help, type and samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    /// The metric name.
    pub name: &'static str,
    /// Its help line.
    pub help: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its samples.
    pub samples: Vec<Sample>,
}

impl Family {
    /// A family without samples yet.
    pub fn new(name: &'static str, help: &'static str, kind: Kind) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds a sample.
    pub fn push(&mut self, labels: Vec<(&'static str, String)>, value: Value) {
        self.samples.push(Sample { labels, value });
    }
}

/// The text exposition of `families`: `# HELP`, `# TYPE`, then one line per sample.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        let kind = match f.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(out, "# HELP {} {help}\n# TYPE {} {kind}", f.name, f.name);
        for s in &f.samples {
            out += f.name;
            if !s.labels.is_empty() {
                let labels: Vec<String> = s
                    .labels
                    .iter()
                    .map(|(name, value)| format!("{name}=\"{}\"", escape_label(value)))
                    .collect();
                let _ = write!(out, "{{{}}}", labels.join(","));
            }
            let _ = match s.value {
                Value::Int(n) => writeln!(out, " {n}"),
                Value::Seconds(t) => writeln!(out, " {t:.3}"),
            };
        }
    }
    out
}

/// A label value escaped for the text format: backslash, double quote, line feed.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The metrics of this host, as text.
pub fn text(settings: &Settings) -> String {
    let metrics = Metrics::gather(settings);
    if let Some(e) = &metrics.error {
        log::warn!("metrics: {e}");
    }
    render(&metrics.families())
}

/// Root: writes the metrics into the textfile collector directory when it exists (see
/// the module); anything else does nothing. Never fails: what goes wrong is logged.
pub fn write_textfile(settings: &Settings) {
    if !settings.privileged {
        return;
    }
    let Some(dir) = config::metrics_textfile_dir(&settings.config_file) else {
        return;
    };
    if !dir.is_dir() {
        return;
    }
    let start = Instant::now();
    let metrics = Metrics::gather(settings);
    let text = render(&metrics.families());
    match write_atomically(&dir, &text) {
        Ok(()) => log::debug!(
            "metrics written to {} in {:.2} ms",
            dir.join(TEXTFILE).display(),
            start.elapsed().as_secs_f64() * 1e3
        ),
        Err(e) => log::warn!("metrics not written: {e}"),
    }
}

/// Writes `text` as [`TEXTFILE`] in `dir`: a temporary file (mode 0644) written and synced,
/// then renamed over it; temporary files left by writers that were killed are removed.
fn write_atomically(dir: &Path, text: &str) -> Result<()> {
    let path = dir.join(TEXTFILE);
    // One name per write: the watcher's threads may write at the same time.
    static WRITES: AtomicU32 = AtomicU32::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!("{TEMP_PREFIX}{}.{n}", std::process::id()));
    let err = |what: &str, p: &Path, e: std::io::Error| Error::io(format!("{what} {}", p.display()), e);
    // A new file, never one found there (node_exporter's user may write in the directory).
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| err("creating", &tmp, e))?;
    // Readable by node_exporter whatever the caller's umask.
    let written = file
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|()| file.write_all(text.as_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(|e| err("writing", &tmp, e))
        .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| err("renaming over", &path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    remove_stale_temp_files(dir);
    Ok(())
}

/// Removes `.bridge_isolation.prom.PID.N` files whose process is gone (writers killed between
/// creating and renaming them); those of running writers are theirs.
fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .and_then(|n| n.split('.').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            log::debug!("removing {}, left by a writer that was killed", entry.path().display());
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Root: removes [`TEXTFILE`] from the textfile collector directory (`release-all`: no
/// metrics of a host that no longer isolates anything linger there). Returns the file
/// removed, if there was one.
pub fn remove_textfile(settings: &Settings) -> Result<Option<PathBuf>> {
    let Some(dir) = config::metrics_textfile_dir(&settings.config_file) else {
        return Ok(None);
    };
    let path = dir.join(TEXTFILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(Some(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sample line of `text`, as `name{labels}` (exactly as written) to its value.
    fn parse(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    fn red() -> BridgeMetrics {
        BridgeMetrics {
            network: "red".into(),
            bridge: "red".into(),
            present: true,
            // VM ports: 1 open, 3 isolated; trusted: 1 open; uplink: 1 open.
            ports: [[1, 3], [1, 0], [1, 0]],
            drift: 1,
            blocked: 0,
            uplink_missing: false,
            drops: Some(DropCounter {
                packets: 12,
                bytes: 1_000,
            }),
            cross_host: [Some(DropCounter { packets: 2, bytes: 120 }), None],
        }
    }

    fn metrics() -> Metrics {
        Metrics {
            backend: Some("nftables".into()),
            recorded_backend: None,
            error: None,
            bridges: vec![
                red(),
                BridgeMetrics {
                    network: "blue \"net\"".into(),
                    bridge: "blue".into(),
                    ..BridgeMetrics::default()
                },
            ],
            blocked_elsewhere: BTreeMap::from([("green".to_string(), 2)]),
            lifted_pending: 1,
            vdsm: [0, 0, 2, 0, 0],
            watcher_since: Some(1_700_000_000),
            last_reconcile: Some(Duration::from_millis(1_700_000_123_456)),
        }
    }

    #[test]
    fn every_family_has_help_type_and_a_name_of_ours() {
        let text = render(&metrics().families());
        let mut names = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                names.push(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(Some(&name.to_string()), names.last(), "TYPE after its HELP: {line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(Some(&name.to_string()), names.last(), "a sample of its family: {line}");
            }
        }
        assert!(names.iter().all(|n| n.starts_with("bridge_isolation_")), "{names:?}");
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(unique, names, "each family once");
    }

    #[test]
    fn the_figures_come_out_as_written() {
        let text = render(&metrics().families());
        let got = parse(&text);
        let red = |rest: &str| format!("{{network=\"red\",bridge=\"red\"{rest}}}");
        let want = [
            (
                format!(
                    "bridge_isolation_info{{version=\"{}\",backend=\"nftables\",recorded_backend=\"\"}}",
                    env!("CARGO_PKG_VERSION")
                ),
                1.0,
            ),
            ("bridge_isolation_scrape_error".into(), 0.0),
            ("bridge_isolation_watcher_running".into(), 1.0),
            ("bridge_isolation_watcher_start_time_seconds".into(), 1.7e9),
            (
                "bridge_isolation_last_reconcile_success_timestamp_seconds".into(),
                1_700_000_123.456,
            ),
            (format!("bridge_isolation_bridge_present{}", red("")), 1.0),
            (
                format!("bridge_isolation_ports{}", red(",role=\"vm\",isolated=\"true\"")),
                3.0,
            ),
            (
                format!("bridge_isolation_ports{}", red(",role=\"vm\",isolated=\"false\"")),
                1.0,
            ),
            (
                format!("bridge_isolation_ports{}", red(",role=\"trusted\",isolated=\"false\"")),
                1.0,
            ),
            (
                format!("bridge_isolation_ports{}", red(",role=\"uplink\",isolated=\"true\"")),
                0.0,
            ),
            (format!("bridge_isolation_drift_ports{}", red("")), 1.0),
            (format!("bridge_isolation_blocked_ports{}", red("")), 0.0),
            (format!("bridge_isolation_dropped_frames_total{}", red("")), 12.0),
            (format!("bridge_isolation_dropped_bytes_total{}", red("")), 1000.0),
            (
                format!(
                    "bridge_isolation_cross_host_dropped_frames_total{}",
                    red(",filter=\"peer_macs\"")
                ),
                2.0,
            ),
            (
                "bridge_isolation_bridge_present{network=\"blue \\\"net\\\"\",bridge=\"blue\"}".into(),
                0.0,
            ),
            (
                "bridge_isolation_blocked_ports{network=\"\",bridge=\"green\"}".into(),
                2.0,
            ),
            (
                "bridge_isolation_drift_ports{network=\"\",bridge=\"green\"}".into(),
                0.0,
            ),
            ("bridge_isolation_lifted_pending_bridges".into(), 1.0),
            ("bridge_isolation_vdsm_disagreements{kind=\"stale\"}".into(), 2.0),
            ("bridge_isolation_vdsm_disagreements{kind=\"unreadable\"}".into(), 0.0),
        ];
        for (series, value) in want {
            assert_eq!(got.get(&series), Some(&value), "{series} in:\n{text}");
        }
        // Six port series per bridge (three roles, open or isolated), whatever the counts.
        assert_eq!(
            got.keys().filter(|k| k.starts_with("bridge_isolation_ports{")).count(),
            12
        );
        // Counters only where the backend counts: none for blue, no uplink_macs rule.
        assert_eq!(got.keys().filter(|k| k.contains("dropped_frames_total")).count(), 2);
        assert!(text.contains("\n# TYPE bridge_isolation_dropped_frames_total counter\n"));
        assert!(text.contains("\n# TYPE bridge_isolation_ports gauge\n"));
    }

    #[test]
    fn without_a_report_the_error_shows_and_no_bridge_figure_is_invented() {
        let m = Metrics {
            error: Some("state: unreadable".into()),
            ..Metrics::default()
        };
        let text = render(&m.families());
        let got = parse(&text);
        assert_eq!(got.get("bridge_isolation_scrape_error"), Some(&1.0));
        assert_eq!(got.get("bridge_isolation_watcher_running"), Some(&0.0));
        assert_eq!(
            got.get("bridge_isolation_last_reconcile_success_timestamp_seconds"),
            Some(&0.0)
        );
        assert!(!text.contains("bridge_isolation_vdsm_disagreements"), "{text}");
        assert!(!text.contains("watcher_start_time"), "{text}");
        assert!(!text.contains("bridge_isolation_ports"), "{text}");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut f = Family::new("bridge_isolation_x", "a \\ b\nc", Kind::Gauge);
        f.push(vec![("network", "a\\b\"c\nd".into())], Value::Int(7));
        assert_eq!(
            render(&[f]),
            "# HELP bridge_isolation_x a \\\\ b\\nc\n# TYPE bridge_isolation_x gauge\n\
             bridge_isolation_x{network=\"a\\\\b\\\"c\\nd\"} 7\n"
        );
    }

    #[test]
    fn the_textfile_is_replaced_whole_and_stale_temporary_files_go() {
        let dir = tempfile::tempdir().unwrap();
        // A writer killed before its rename (pid 999999 does not run) and one running (us).
        let stale = dir.path().join(format!("{TEMP_PREFIX}999999.0"));
        std::fs::write(&stale, "half").unwrap();
        write_atomically(dir.path(), "first\n").unwrap();
        write_atomically(dir.path(), "second\n").unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join(TEXTFILE)).unwrap(), "second\n");
        let mode = std::fs::metadata(dir.path().join(TEXTFILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [TEXTFILE]);
    }
}
