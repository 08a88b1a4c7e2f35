//! `bridge-isolation metrics` (issue 16) on a real kernel: the figures of a lab whose network
//! the hooks isolated, read back from the Prometheus text and checked against what was done
//! to the lab (VMs started, a trusted vNIC, flags cleared by hand, enforcement made to fail,
//! frames sent that the backends drop, VDSM's running config changed, the watcher started
//! and killed); every text passes `promtool check metrics`. The textfile in node_exporter's
//! collector directory is written by the root reconciles (CLI, network and VM hooks, also a
//! failing one) and by the watcher (at its start and after a repair), atomically, never
//! when the directory is missing; `release-all` removes it. The alert rules of
//! docs/alerts.yml pass `promtool check rules` and fire as their unit tests say.
//!
//! Root tests skip with a reason as another user; every test skips when promtool is
//! missing (Debian package `prometheus`): both fail under
//! `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`.

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bridge_isolation::enforce::nftables::{NFT, TABLE};
use bridge_isolation_lab::{self as lab, domain_xml, format_mac, NetSpec, NicSpec, GW, GW_MAC};
use common::backend::Backend;
use common::{tagged, untagged, vm_uuid, wait_until, Fixture, Watcher, NET, PLAIN, UPLINK};

/// promtool, from Debian's `prometheus` package.
const PROMTOOL: &str = "/usr/bin/promtool";
/// The file the metrics are written into, in the textfile collector directory.
const TEXTFILE: &str = "bridge_isolation.prom";
/// How long the watcher may take to repair and write (it writes 1 s after a repair).
const LIMIT: Duration = Duration::from_secs(15);

/// Why promtool cannot be run, if it cannot.
fn promtool_obstacle() -> Option<String> {
    (!Path::new(PROMTOOL).exists()).then(|| format!("{PROMTOOL} is missing (Debian package prometheus)"))
}

/// Whether a test needing root, network namespaces and promtool may run.
fn enabled(test: &str) -> bool {
    lab::tests_enabled_unless(test, lab::root_test_obstacle().or_else(promtool_obstacle))
}

/// Runs `promtool ARGS` with `input` on stdin.
fn promtool(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(PROMTOOL)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .expect("writing to promtool");
    child.wait_with_output().expect("waiting for promtool")
}

/// Asserts that `promtool check metrics` finds nothing wrong with `text` (format and lint).
#[track_caller]
fn assert_promtool_accepts(text: &str) {
    let out = promtool(&["check", "metrics"], text);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics ({}):\n{}{}\non:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One exposition, read back: each sample's name, labels and value, each family's type.
struct Scrape {
    text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    /// Reads text exposition (as we write it: one sample per line, no timestamps).
    fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE NAME KIND");
                types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("SERIES VALUE");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, labels_of(rest.strip_suffix('}').expect("closing brace"))),
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_string(), labels, value));
        }
        Scrape {
            text: text.to_string(),
            samples,
            types,
        }
    }

    /// The sum of the samples of `name` carrying `labels` (others may differ); `None` when
    /// no sample does.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, v)| *v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// [`Scrape::sum`], panicking with the whole text when no sample matches.
    #[track_caller]
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sum(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", self.text))
    }

    /// A per-bridge figure of the lab's network.
    #[track_caller]
    fn bridge(&self, name: &str, more: &[(&str, &str)]) -> f64 {
        let mut labels = vec![("network", NET), ("bridge", NET)];
        labels.extend_from_slice(more);
        self.get(name, &labels)
    }

    /// The ports of the lab's bridge with `role`, isolated or not.
    #[track_caller]
    fn ports(&self, role: &str, isolated: bool) -> f64 {
        let isolated = if isolated { "true" } else { "false" };
        self.bridge("bridge_isolation_ports", &[("role", role), ("isolated", isolated)])
    }
}

/// `a="x",b="y"` into a map (values unescaped).
fn labels_of(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").expect("NAME=\"VALUE\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("a closing quote") {
                (_, '\\') => match chars.next().expect("an escaped character").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        out.insert(name.to_string(), value);
        rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
    }
    out
}

/// `bridge-isolation metrics` in the lab host, asserting it succeeds and that promtool
/// accepts what it prints.
fn metrics(fx: &Fixture) -> Scrape {
    let out = fx.cli(&["metrics"]);
    assert!(
        out.status.success(),
        "metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert_promtool_accepts(&text);
    Scrape::parse(&text)
}

/// `bridge-isolation ARGS`, asserting it succeeds.
fn cli_ok(fx: &Fixture, args: &[&str]) {
    let out = fx.cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Now, in seconds since the epoch.
fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The textfile as written, `None` while it is not there.
fn textfile(fx: &Fixture) -> Option<Scrape> {
    let text = std::fs::read_to_string(fx.textfile_dir().join(TEXTFILE)).ok()?;
    Some(Scrape::parse(&text))
}

/// The names in the textfile collector directory: the textfile alone once a write is done
/// (no temporary file left behind).
fn textfile_dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("listing the textfile directory")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Asserts the textfile is there, whole (promtool accepts it), mode 0644, alone in its
/// directory; returns it.
#[track_caller]
fn assert_textfile(fx: &Fixture) -> Scrape {
    let dir = fx.textfile_dir();
    let path: PathBuf = dir.join(TEXTFILE);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_promtool_accepts(&text);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644, "{}", path.display());
    assert_eq!(textfile_dir_entries(&dir), [TEXTFILE]);
    Scrape::parse(&text)
}

/// Ports by role and isolation, drift, a trusted vNIC, the last reconcile, VDSM's running
/// config, cross-host drops and the watcher, each changed on the lab and read back.
#[test]
fn metrics_follow_the_lab() {
    if !enabled("metrics_follow_the_lab") {
        return;
    }
    let fx = Fixture::new("bimet", 3);
    // The gateway's MAC as a peer range: frames from it to the VM ports are the cross-host
    // filter's to drop (the gateway stands in for another host's VM).
    let net = NetSpec::on_nic(UPLINK)
        .with_isolation("true")
        .with_custom("bridge_isolation_peer_macs", &format_mac(GW_MAC));
    let json = lab::setup_networks_json(&[(NET, net)]);
    fx.network_setup(&json);
    fx.write_vdsm_config(&json);
    let nic = NicSpec {
        trusted: true,
        ..NicSpec::of_vm(&fx.vm(3), NET)
    };
    fx.run_vm_point("after_vm_start", 3, domain_xml("vm3", &vm_uuid(3), &[nic]), &[]);
    let before = now();
    cli_ok(&fx, &["reconcile"]);
    let after = now();

    let m = metrics(&fx);
    assert_eq!(m.get("bridge_isolation_scrape_error", &[]), 0.0);
    let info = [("backend", "port-isolation"), ("recorded_backend", "port-isolation")];
    assert_eq!(m.get("bridge_isolation_info", &info), 1.0);
    assert_eq!(m.bridge("bridge_isolation_bridge_present", &[]), 1.0);
    assert_eq!((m.ports("vm", true), m.ports("vm", false)), (2.0, 0.0));
    assert_eq!((m.ports("trusted", true), m.ports("trusted", false)), (0.0, 1.0));
    assert_eq!((m.ports("uplink", true), m.ports("uplink", false)), (0.0, 1.0));
    assert_eq!(m.bridge("bridge_isolation_drift_ports", &[]), 0.0);
    assert_eq!(m.bridge("bridge_isolation_blocked_ports", &[]), 0.0);
    assert_eq!(m.bridge("bridge_isolation_uplink_missing", &[]), 0.0);
    assert_eq!(m.get("bridge_isolation_vdsm_disagreements", &[]), 0.0);
    assert_eq!(m.get("bridge_isolation_watcher_running", &[]), 0.0);
    assert_eq!(m.sum("bridge_isolation_watcher_start_time_seconds", &[]), None);
    let last = m.get("bridge_isolation_last_reconcile_success_timestamp_seconds", &[]);
    assert!(
        before - 0.01 <= last && last <= after + 0.01,
        "{before} <= {last} <= {after}"
    );
    // The port flag counts nothing it stops.
    assert_eq!(m.sum("bridge_isolation_dropped_frames_total", &[]), None);

    // Frames from the "peer" to a VM, dropped by the cross-host filter and counted.
    let _ = fx.lab.matrix_of(&[GW, "vm1"]).expect("probing");
    let m = metrics(&fx);
    let peers = [("filter", "peer_macs")];
    assert!(m.bridge("bridge_isolation_cross_host_dropped_frames_total", &peers) > 0.0);
    assert!(m.bridge("bridge_isolation_cross_host_dropped_bytes_total", &peers) > 0.0);
    assert_eq!(m.types["bridge_isolation_cross_host_dropped_frames_total"], "counter");

    // Flags changed by hand: a VM port open, the uplink isolated.
    fx.lab.set_port_isolated("vnet1", false).unwrap();
    fx.lab.set_port_isolated(UPLINK, true).unwrap();
    let m = metrics(&fx);
    assert_eq!((m.ports("vm", true), m.ports("vm", false)), (1.0, 1.0));
    assert_eq!((m.ports("uplink", true), m.ports("uplink", false)), (1.0, 0.0));
    assert_eq!(m.bridge("bridge_isolation_drift_ports", &[]), 2.0);

    // VDSM's running config untags the network: one stale disagreement, counted as verify
    // counts it; tagged again, none.
    fx.write_vdsm_config(&untagged());
    let m = metrics(&fx);
    assert_eq!(m.get("bridge_isolation_vdsm_disagreements", &[("kind", "stale")]), 1.0);
    assert_eq!(m.get("bridge_isolation_vdsm_disagreements", &[]), 1.0);
    fx.write_vdsm_config(&json);
    assert_eq!(metrics(&fx).get("bridge_isolation_vdsm_disagreements", &[]), 0.0);

    // The watcher: running, since when; its first reconcile repairs the drift and is the
    // last successful one.
    let started = now();
    let w = Watcher::start(&fx, &["watch"], &[]);
    let m = metrics(&fx);
    assert_eq!(m.get("bridge_isolation_watcher_running", &[]), 1.0);
    let since = m.get("bridge_isolation_watcher_start_time_seconds", &[]);
    assert!(started - 1.0 <= since && since <= now(), "{started} <= {since}");
    assert_eq!(m.bridge("bridge_isolation_drift_ports", &[]), 0.0);
    assert_eq!((m.ports("vm", true), m.ports("uplink", false)), (2.0, 1.0));
    assert!(m.get("bridge_isolation_last_reconcile_success_timestamp_seconds", &[]) >= started - 0.01);
    w.kill();
    assert_eq!(metrics(&fx).get("bridge_isolation_watcher_running", &[]), 0.0);
}

/// Runs hook `point` with `nft` replaced by `/usr/bin/false` in a private mount namespace
/// of the hook: the nftables backend cannot write.
fn run_without_nft(fx: &Fixture, point: &str, payload: &[u8], extra: &[(String, String)]) -> common::Finished {
    let script = format!("/usr/bin/mount --bind /usr/bin/false {NFT} && exec \"$0\"");
    fx.run_scripted(point, payload, extra, &script)
}

/// The nftables backend: frames dropped between VM ports as counters; the network hooks
/// and a VM hook that fails (ports blocked) write the textfile as the CLI's reconcile does.
#[test]
fn nftables_counters_blocked_ports_and_the_hooks_textfile() {
    if !enabled("nftables_counters_blocked_ports_and_the_hooks_textfile") {
        return;
    }
    let fx = Fixture::with_backend("bimetnf", 2, Backend::Nftables);
    std::fs::create_dir(fx.textfile_dir()).unwrap();
    fx.network_setup(&tagged("true"));
    // Written by after_network_setup (root).
    let m = assert_textfile(&fx);
    assert_eq!((m.ports("vm", true), m.ports("vm", false)), (2.0, 0.0));
    // The counter is there from the start; the VMs' own IPv6 (DAD, router solicitations)
    // may already have had a frame dropped, so the probes are counted from here.
    let before = m.bridge("bridge_isolation_dropped_frames_total", &[]);
    assert!(before < 8.0, "{before} frames dropped before any probe");

    fx.assert_isolation(&[]);
    let m = metrics(&fx);
    assert_eq!(m.types["bridge_isolation_dropped_frames_total"], "counter");
    assert_eq!(m.types["bridge_isolation_dropped_bytes_total"], "counter");
    let frames = m.bridge("bridge_isolation_dropped_frames_total", &[]);
    let bytes = m.bridge("bridge_isolation_dropped_bytes_total", &[]);
    // Every protocol of the matrix, both ways, at least a frame each.
    assert!(
        frames - before >= 8.0,
        "{frames} frames dropped, {before} before the probes"
    );
    assert!(bytes >= 42.0 * frames, "{bytes} bytes in {frames} frames");
    assert_eq!(m.get("bridge_isolation_info", &[("backend", "nftables")]), 1.0);

    // Enforcement fails (no table, and `nft` cannot write it): the VM ports are blocked,
    // and the failing hook still writes the textfile.
    let out = fx.lab.exec_in_host(&[NFT, "delete", "table", "bridge", TABLE]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(fx.textfile_dir().join(TEXTFILE)).unwrap();
    let live = NicSpec {
        tap: Some(fx.vm(1).tap),
        ..fx.engine_nic(1, PLAIN)
    };
    let xml = domain_xml("vm1", &vm_uuid(1), &[live]);
    let vm1 = [("vmId".to_string(), vm_uuid(1))];
    let run = run_without_nft(&fx, "after_vm_start", xml.as_bytes(), &vm1);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    let written = assert_textfile(&fx);
    let m = metrics(&fx);
    for m in [&written, &m] {
        assert_eq!(m.bridge("bridge_isolation_blocked_ports", &[]), 2.0);
        assert_eq!(m.bridge("bridge_isolation_drift_ports", &[]), 2.0);
        assert_eq!(
            m.sum("bridge_isolation_dropped_frames_total", &[]),
            None,
            "no table, no counter"
        );
    }

    // A reconcile that succeeds: nothing blocked, the counter back from 0.
    cli_ok(&fx, &["reconcile"]);
    let m = assert_textfile(&fx);
    assert_eq!(m.bridge("bridge_isolation_blocked_ports", &[]), 0.0);
    assert_eq!(m.bridge("bridge_isolation_drift_ports", &[]), 0.0);
    // The counter is there from the start; the VMs' own IPv6 (DAD, router solicitations)
    // may already have had a frame dropped, so the probes are counted from here.
    let before = m.bridge("bridge_isolation_dropped_frames_total", &[]);
    assert!(before < 8.0, "{before} frames dropped before any probe");
}

/// The textfile: never written (nor its directory made) while the directory is missing;
/// then written by the CLI's reconcile, a root VM hook, the watcher at its start and after
/// a repair, and by `metrics --textfile` once the watcher is gone; `release-all` removes it.
#[test]
fn the_textfile_follows_reconciles_and_the_watcher() {
    if !enabled("the_textfile_follows_reconciles_and_the_watcher") {
        return;
    }
    let mut fx = Fixture::new("bimettf", 2);
    let dir = fx.textfile_dir();
    fx.network_setup(&tagged("true"));
    cli_ok(&fx, &["reconcile"]);
    cli_ok(&fx, &["metrics", "--textfile"]);
    assert!(!dir.exists(), "{} made", dir.display());

    std::fs::create_dir(&dir).unwrap();
    cli_ok(&fx, &["reconcile"]);
    let m = assert_textfile(&fx);
    assert_eq!(m.ports("vm", true), 2.0);
    assert_eq!(m.get("bridge_isolation_watcher_running", &[]), 0.0);

    // A VM started: after_vm_start (root) writes.
    std::fs::remove_file(dir.join(TEXTFILE)).unwrap();
    fx.start_vm(3, PLAIN);
    assert_eq!(assert_textfile(&fx).ports("vm", true), 3.0);

    // The watcher writes at its start...
    std::fs::remove_file(dir.join(TEXTFILE)).unwrap();
    let w = Watcher::start(&fx, &["watch"], &[]);
    wait_until("the watcher's textfile", LIMIT, || textfile(&fx).is_some());
    assert_eq!(assert_textfile(&fx).get("bridge_isolation_watcher_running", &[]), 1.0);
    // ...and after a repair, with no hook and no CLI run.
    std::fs::remove_file(dir.join(TEXTFILE)).unwrap();
    fx.lab.set_port_isolated("vnet1", false).unwrap();
    wait_until("vnet1 repaired", LIMIT, || fx.lab.port_isolated("vnet1").unwrap());
    let took = wait_until("the textfile after the repair", LIMIT, || textfile(&fx).is_some());
    eprintln!("textfile written {took:?} after the repair");
    let m = assert_textfile(&fx);
    assert_eq!(
        (m.ports("vm", true), m.bridge("bridge_isolation_drift_ports", &[])),
        (3.0, 0.0)
    );
    assert_eq!(m.get("bridge_isolation_watcher_running", &[]), 1.0);

    // Gone: what the file says is stale until rewritten (the unit's ExecStopPost does it).
    w.kill();
    assert_eq!(assert_textfile(&fx).get("bridge_isolation_watcher_running", &[]), 1.0);
    cli_ok(&fx, &["metrics", "--textfile"]);
    assert_eq!(assert_textfile(&fx).get("bridge_isolation_watcher_running", &[]), 0.0);

    // release-all: no metrics of a host that isolates nothing linger, nor the stamp.
    assert!(fx.state_dir().join("reconciled").exists());
    cli_ok(&fx, &["release-all"]);
    assert!(textfile_dir_entries(&dir).is_empty());
    assert!(!fx.state_dir().join("reconciled").exists());
}

/// docs/alerts.yml: valid rules (`promtool check rules`), and they fire as the unit tests
/// of tests/fixtures/alerts_test.yml say (`promtool test rules`): drift or blocked ports
/// for 5 minutes, no successful reconcile for an hour. No root needed.
#[test]
fn the_documented_alert_rules_are_valid_and_fire_when_they_should() {
    if !lab::tests_enabled_unless(
        "the_documented_alert_rules_are_valid_and_fire_when_they_should",
        promtool_obstacle(),
    ) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for args in [
        ["check", "rules", "docs/alerts.yml"],
        ["test", "rules", "tests/fixtures/alerts_test.yml"],
    ] {
        let out = Command::new(PROMTOOL)
            .args(args)
            .current_dir(root)
            .output()
            .expect("running promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
