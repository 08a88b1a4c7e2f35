//! A broken state file on a real kernel: hooks fail closed with one line, and
//! `bridge-isolation recover` rebuilds the policy from VDSM's running network config (or
//! the kernel) without anyone editing the file. They need root; as another user they skip
//! (or fail under `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`).

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use std::path::Path;
use std::time::Duration;

use bridge_isolation_lab::{self as lab, domain_xml, Payload};
use common::{tagged, vm_uuid, Fixture, NET, PLAIN, UPLINK};

/// VDSM's running config of the lab network, as `/var/lib/vdsm/staging/netconf/nets/NET`.
const NETCONF: &str = r#"{"nic": "eth1", "bridged": true, "mtu": 1500, "stp": false, "switch": "legacy",
 "bootproto": "none", "dhcpv6": false, "ipv6autoconf": false, "defaultRoute": false, "nameservers": [],
 "custom": {"bridge_isolation": "true"}}"#;

/// The broken state files a crash, a full disk or a careless hand can leave.
fn broken_files(valid: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty", Vec::new()),
        ("truncated", valid[..valid.len() / 2].to_vec()),
        ("garbage", b"\x7fELF\x02\x01\x01\0 not json".to_vec()),
    ]
}

/// An empty, truncated or garbage state file makes the hooks fail closed: the VM start and
/// the network setup are refused with exit 2 and one line naming the state file, an
/// after_* point exits 1 with one line; no port flag changes.
#[test]
fn broken_state_files_fail_closed_with_one_line() {
    if !lab::root_tests_enabled("broken_state_files_fail_closed_with_one_line") {
        return;
    }
    let fx = Fixture::new("bibroken", 2);
    fx.network_setup(&tagged("true"));
    let valid = fx.state_bytes();
    let flags = fx.isolated_ports();
    let engine = fx.engine_domain(3, PLAIN);
    for (what, bytes) in broken_files(&valid) {
        std::fs::write(fx.state_path(), &bytes).expect("breaking state.json");
        let runs = [
            ("before_vm_start", 2, Payload::DomXml(engine.clone())),
            ("before_network_setup", 2, Payload::Json(tagged("true"))),
            ("after_network_setup", 1, Payload::Json(tagged("true"))),
        ];
        for (point, code, payload) in runs {
            let run = fx.run(point, payload, &[("vmId".to_string(), vm_uuid(3))]);
            assert_eq!(run.codes[0].1, code, "{what} state, {point}: {}", run.stderr);
            let lines: Vec<&str> = run.last_stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{what} state, {point}: {}", run.last_stderr);
            assert!(lines[0].contains("state.json"), "{what} state, {point}: {}", lines[0]);
        }
        assert_eq!(fx.isolated_ports(), flags, "{what} state changed port flags");
    }
}

/// Runs `bridge-isolation ARGS` with the fixture's environment and `netconf` as VDSM's
/// running config; returns (exit code, stdout+stderr).
fn cli(fx: &Fixture, args: &[&str], netconf: &Path) -> (Option<i32>, String) {
    let env = [(
        "BRIDGE_ISOLATION_VDSM_NETCONF".to_string(),
        netconf.to_string_lossy().into_owned(),
    )];
    let done = fx.spawn_cli_with(args, &env).wait_at_most(Duration::from_secs(60));
    (done.code(), done.stderr)
}

/// The state file's neighbours named `state.json.broken-*`, with their contents.
fn set_aside(fx: &Fixture) -> Vec<Vec<u8>> {
    std::fs::read_dir(fx.state_dir())
        .expect("listing the state directory")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("state.json.broken-"))
        })
        .map(|p| std::fs::read(p).expect("reading the file set aside"))
        .collect()
}

/// Asserts `status --json` lists the lab network isolated on its uplink with every VM port
/// isolated, and `verify` exits 0.
#[track_caller]
fn assert_isolated_again(fx: &Fixture) {
    let report = fx.status_json();
    let bridge = &report["bridges"][0];
    assert_eq!(
        (bridge["network"].as_str(), bridge["uplink"].as_str()),
        (Some(NET), Some(UPLINK)),
        "{report:#}"
    );
    let vm_ports: Vec<(&str, bool)> = bridge["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter(|p| p["role"] == "vm")
        .map(|p| (p["port"].as_str().unwrap_or_default(), p["isolated"] == true))
        .collect();
    assert_eq!(vm_ports, [("vnet1", true), ("vnet2", true)], "{report:#}");
    let verify = fx.cli(&["verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// Garbage in state.json: a hook refuses with one line; `bridge-isolation recover` moves the
/// file aside (kept, byte for byte), rebuilds the network from VDSM's running config and
/// reconciles (a flag cleared meanwhile is set again); `status` shows the network isolated,
/// `verify` exits 0, and a second `recover` refuses the now valid file.
#[test]
fn recover_rebuilds_a_garbage_state_from_vdsm_running_config() {
    if !lab::root_tests_enabled("recover_rebuilds_a_garbage_state_from_vdsm_running_config") {
        return;
    }
    let fx = Fixture::new("birecov", 2);
    fx.network_setup(&tagged("true"));
    let netconf = tempfile::tempdir().expect("a netconf directory");
    std::fs::create_dir(netconf.path().join("nets")).expect("creating nets/");
    std::fs::write(netconf.path().join("nets").join(NET), NETCONF).expect("writing nets/NET");
    std::fs::write(
        netconf.path().join("nets/ovirtmgmt"),
        r#"{"nic": "eth0", "bridged": true, "bootproto": "dhcp"}"#,
    )
    .expect("writing nets/ovirtmgmt");

    let garbage = b"{\"networks\": {\"isonet\": {\"bridge\": \"isonet\", \"upl\0\0\0\0".to_vec();
    std::fs::write(fx.state_path(), &garbage).expect("breaking state.json");
    let xml = domain_xml(&fx.vm(3).name, &vm_uuid(3), &[fx.engine_nic(3, PLAIN)]);
    let run = fx.run(
        "before_vm_start",
        Payload::DomXml(xml),
        &[("vmId".to_string(), vm_uuid(3))],
    );
    assert_eq!(run.codes[0].1, 2, "{}", run.stderr);
    assert_eq!(run.last_stderr.lines().count(), 1, "{}", run.last_stderr);
    fx.lab.set_port_isolated("vnet1", false).expect("clearing vnet1's flag");

    let (code, out) = cli(&fx, &["recover"], netconf.path());
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(fx.state_json()["networks"][NET]["uplink"], UPLINK, "{out}");
    assert_eq!(
        set_aside(&fx),
        [garbage],
        "the broken file must be kept aside as it was"
    );
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    assert_isolated_again(&fx);

    let (code, out) = cli(&fx, &["recover"], netconf.path());
    assert_eq!(code, Some(2), "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(errors[0].contains("--force"), "{out}");
    let (code, out) = cli(&fx, &["recover", "--force"], netconf.path());
    assert_eq!(code, Some(0), "{out}");
    assert_isolated_again(&fx);
}

/// Without VDSM's running config (`nets/` absent), `recover` falls back to the kernel: the
/// bridge whose VM ports carry the isolated flag, its one other port as the uplink.
#[test]
fn recover_falls_back_to_the_kernel() {
    if !lab::root_tests_enabled("recover_falls_back_to_the_kernel") {
        return;
    }
    let fx = Fixture::new("birecok", 2);
    fx.network_setup(&tagged("true"));
    std::fs::write(fx.state_path(), b"").expect("emptying state.json");
    let nowhere = tempfile::tempdir().expect("an empty directory");
    let (code, out) = cli(&fx, &["recover"], nowhere.path());
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(set_aside(&fx), [Vec::<u8>::new()]);
    assert_isolated_again(&fx);
}
