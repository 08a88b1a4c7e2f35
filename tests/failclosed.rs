//! Fail closed (issue 6 item 4) on a real kernel: the nftables backend is made to fail for
//! real (its table deleted, so that the run must write, and `/usr/bin/false` bind-mounted
//! over `nft` in a private mount namespace of the hook: the backend reads in-process but
//! writes with `nft`), and the VM ports of the isolated bridge are blocked (bridge port state disabled) rather
//! than left forwarding; `status` and `verify` report it; a later normal reconcile re-enables
//! them. With `on_failure = warn` nothing is blocked. `before_vm_start` refuses to start a
//! vNIC on the isolated bridge while no backend can enforce. Needs root; skips otherwise.

#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use bridge_isolation::enforce::nftables::{NFT, TABLE};
use bridge_isolation_lab::{self as lab, domain_xml, is_vm, NicSpec};
use common::backend::Backend;
use common::{tagged, vm_uuid, Finished, Fixture, NET, PLAIN, UPLINK};
use serde_json::{json, Value};

fn env(key: &str, value: &str) -> (String, String) {
    (key.to_string(), value.to_string())
}

/// Runs hook `point` as [`Fixture::spawn`] does, but with `nft` replaced by `/usr/bin/false`
/// in a private mount namespace of the hook (a shell only here, in the test).
fn run_without_nft(fx: &Fixture, point: &str, payload: &[u8], extra: &[(String, String)]) -> Finished {
    let script = format!("/usr/bin/mount --bind /usr/bin/false {NFT} && exec \"$0\"");
    fx.run_scripted(point, payload, extra, &script)
}

/// Deletes the backend's table in the lab host, so that the next run has to write.
fn drop_table(fx: &Fixture) {
    let out = fx.lab.exec_in_host(&[NFT, "delete", "table", "bridge", TABLE]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `bridge-isolation ARGS` in the host namespace with the hooks' environment (the
/// nftables backend) and nothing else.
fn cli(fx: &Fixture, args: &[&str]) -> Output {
    Command::new(lab::IP)
        .args([
            "netns",
            "exec",
            fx.lab.host_ns(),
            env!("CARGO_BIN_EXE_bridge-isolation"),
        ])
        .args(args)
        .env_clear()
        .env("PATH", lab::HOOK_PATH)
        .envs(fx.env().iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

/// Bridge port state of every port of `NET` (`forwarding`, `disabled`, ...).
fn port_states(fx: &Fixture) -> BTreeMap<String, String> {
    let json = fx.lab.ip_in_host(&["-d", "-j", "link", "show", "master", NET]).unwrap();
    let links: Vec<Value> = serde_json::from_str(&json).unwrap();
    links
        .iter()
        .map(|l| {
            (
                l["ifname"].as_str().unwrap().to_string(),
                l["linkinfo"]["info_slave_data"]["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn states(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(p, s)| (p.to_string(), s.to_string())).collect()
}

fn live_domain(fx: &Fixture, n: u8) -> String {
    let nic = NicSpec {
        tap: Some(fx.vm(n).tap),
        ..fx.engine_nic(n, PLAIN)
    };
    domain_xml(&fx.vm(n).name, &vm_uuid(n), &[nic])
}

#[test]
fn enforcement_failure_blocks_vm_ports_until_a_reconcile_succeeds() {
    if !lab::root_tests_enabled("enforcement_failure_blocks_vm_ports_until_a_reconcile_succeeds") {
        return;
    }
    let fx = Fixture::with_backend("bifail", 2, Backend::Nftables);
    let limit = Duration::from_secs(60);
    for point in ["before_network_setup", "after_network_setup"] {
        let run = fx.spawn(point, tagged("true").as_bytes(), &[]).wait_at_most(limit);
        assert_eq!(run.code(), Some(0), "{point}: {}", run.stderr);
    }
    let forwarding = states(&[(UPLINK, "forwarding"), ("vnet1", "forwarding"), ("vnet2", "forwarding")]);
    assert_eq!(port_states(&fx), forwarding);
    let vm1 = [env("vmId", &vm_uuid(1))];
    // A converged table is read in-process and needs no `nft`: take it away.
    drop_table(&fx);

    // on_failure = warn: one warning, exit 1, nothing blocked.
    let conf = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::write(conf.path(), "on_failure = warn\n").unwrap();
    let warn_env = [
        env("vmId", &vm_uuid(1)),
        env("BRIDGE_ISOLATION_CONFIG", conf.path().to_str().unwrap()),
    ];
    let run = run_without_nft(&fx, "after_vm_start", live_domain(&fx, 1).as_bytes(), &warn_env);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    let warnings: Vec<&str> = run.lines().into_iter().filter(|l| l.contains(" warn: ")).collect();
    assert_eq!(warnings.len(), 1, "{}", run.stderr);
    assert!(
        warnings[0].contains("on_failure = warn") && warnings[0].contains("bridge isonet ports vnet1, vnet2"),
        "{}",
        warnings[0]
    );
    assert_eq!(port_states(&fx), forwarding, "warn mode blocked ports");
    assert_eq!(fx.state_json().get("blocked"), None);

    // on_failure = block (default): the VM ports are disabled, recorded, and named.
    let run = run_without_nft(&fx, "after_vm_start", live_domain(&fx, 1).as_bytes(), &vm1);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    let errors: Vec<&str> = run.lines().into_iter().filter(|l| l.contains(" error: ")).collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains("fail-closed: blocked bridge isonet ports vnet1, vnet2"),
        "{}",
        errors[0]
    );
    assert_eq!(
        port_states(&fx),
        states(&[(UPLINK, "forwarding"), ("vnet1", "disabled"), ("vnet2", "disabled")])
    );
    assert_eq!(fx.state_json()["blocked"], json!({ NET: ["vnet1", "vnet2"] }));
    // The VM ports forward nothing; gateway and host still reach each other.
    fx.lab.matrix().unwrap().assert_expected(&|a, b| !is_vm(a) && !is_vm(b));

    // before_vm_start refuses a vNIC on the isolated bridge while nothing can enforce.
    let engine = fx.engine_domain(1, PLAIN);
    let run = run_without_nft(&fx, "before_vm_start", engine.as_bytes(), &vm1);
    assert_eq!(run.code(), Some(2), "{}", run.stderr);
    assert_eq!(run.lines().len(), 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("on isolated bridge isonet: refusing to run it unprotected"),
        "{}",
        run.stderr
    );
    assert_eq!(run.payload_after, engine.as_bytes(), "payload changed on abort");

    // status and verify report the blocked ports.
    let status = cli(&fx, &["status", "--json"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let report: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["blocked"], json!({ NET: ["vnet1", "vnet2"] }));
    let text = String::from_utf8_lossy(&cli(&fx, &["status"]).stdout).into_owned();
    assert!(text.contains("bridge isonet port vnet2: BLOCKED"), "{text}");
    let verify = cli(&fx, &["verify"]);
    assert_eq!(verify.status.code(), Some(1));
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(out.contains("blocked: bridge isonet port vnet1"), "{out}");

    // A normal reconcile confirms enforcement, re-enables the ports and forgets them.
    let reconcile = cli(&fx, &["reconcile"]);
    assert!(
        reconcile.status.success(),
        "{}",
        String::from_utf8_lossy(&reconcile.stderr)
    );
    assert_eq!(port_states(&fx), forwarding);
    assert_eq!(fx.state_json().get("blocked"), None);
    let verify = cli(&fx, &["verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let run = fx.spawn("before_vm_start", engine.as_bytes(), &vm1).wait_at_most(limit);
    assert_eq!(run.code(), Some(0), "a healthy host refused a VM start: {}", run.stderr);
    fx.assert_isolation(&[]);
}

/// When the configured backend cannot act, fail-closed disables only the VM ports not
/// confirmed isolated: a port whose kernel flag is set (libvirt set it from
/// `<port isolated="yes"/>`) is isolated whatever backend was meant to act, so it keeps
/// forwarding and its VM keeps the gateway.
#[test]
fn a_port_whose_flag_is_set_is_confirmed_not_blocked() {
    if !lab::root_tests_enabled("a_port_whose_flag_is_set_is_confirmed_not_blocked") {
        return;
    }
    let fx = Fixture::with_backend("biconf", 2, Backend::Nftables);
    for point in ["before_network_setup", "after_network_setup"] {
        let run = fx
            .spawn(point, tagged("true").as_bytes(), &[])
            .wait_at_most(Duration::from_secs(60));
        assert_eq!(run.code(), Some(0), "{point}: {}", run.stderr);
    }
    fx.lab.set_port_isolated("vnet1", true).unwrap();
    drop_table(&fx);
    let vm2 = [env("vmId", &vm_uuid(2))];
    let run = run_without_nft(&fx, "after_vm_start", live_domain(&fx, 2).as_bytes(), &vm2);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("fail-closed: blocked bridge isonet ports vnet2"),
        "{}",
        run.stderr
    );
    assert_eq!(
        port_states(&fx),
        states(&[(UPLINK, "forwarding"), ("vnet1", "forwarding"), ("vnet2", "disabled")])
    );
    assert_eq!(fx.state_json()["blocked"], json!({ NET: ["vnet2"] }));
    // vm1 still reaches the gateway and the host; vm2 reaches nothing.
    fx.lab
        .matrix()
        .unwrap()
        .assert_expected(&|a, b| a != "vm2" && b != "vm2" && !(is_vm(a) && is_vm(b)));
}
