//! Soak on a real kernel: 500 VM start/destroy cycles (four VMs, each in its own thread,
//! some cycles with a trusted vNIC) and 100 network toggles, driving the installed hook
//! binary directly in one host namespace. Afterwards nothing has leaked: the state file is
//! byte-identical to the start (same size, same entries), the port flags are as they were,
//! the state directory holds its two files, the hooks left no file in `/tmp` or `TMPDIR`,
//! no namespace appeared, and no nftables rule exists. It needs root; as another user it
//! skips (or fails under `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`).

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use bridge_isolation_lab::{self as lab, domain_xml, format_mac, NetSpec, NicSpec};
use common::{port_isolated_in, removed, tagged, untagged, vm_uuid, Finished, Fixture, NET, PLAIN, TRUSTED, UPLINK};

const VMS: u8 = 4;
const CYCLES: usize = 500;
const TOGGLES: usize = 100;

fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Entries of `/tmp` that could come from this project's code (other processes on the
/// machine may come and go meanwhile; `bi-hook-*` are the lab runner's payload directories,
/// which it removes itself, not the hooks').
fn ours_in_tmp() -> BTreeSet<String> {
    entries(Path::new("/tmp"))
        .into_iter()
        .filter(|n| {
            ["state", "bridge", "isolation", "vdsm", "50_"]
                .iter()
                .any(|p| n.contains(p))
        })
        .filter(|n| !n.starts_with("bi-hook-"))
        .collect()
}

/// `nft list ruleset` in the host namespace, or `None` without nft.
fn ruleset(fx: &Fixture) -> Option<String> {
    if !Path::new(lab::NFT).exists() {
        return None;
    }
    let out = fx
        .lab
        .exec_in_host(&[lab::NFT, "list", "ruleset"])
        .expect("running nft");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[track_caller]
fn ok(run: &Finished, what: &str) {
    assert_eq!(run.code(), Some(0), "{what}: {}: {}", run.point, run.stderr);
}

#[test]
fn vm_cycles_and_network_toggles_leak_nothing() {
    if !lab::root_tests_enabled("vm_cycles_and_network_toggles_leak_nothing") {
        return;
    }
    let prefix = lab::unique_prefix("bisoak");
    let fx = Fixture::from_spec(&lab::LabSpec::new(&prefix).with_vms(VMS));
    let private_tmp = tempfile::tempdir().unwrap();
    let tmp_env = vec![("TMPDIR".to_string(), private_tmp.path().display().to_string())];
    fx.network_setup(&tagged("true"));

    let state0 = fx.state_bytes();
    let flags0 = fx.port_flags();
    let namespaces0 = lab::netns_starting_with(&prefix).unwrap();
    let tmp0 = ours_in_tmp();
    let rules0 = ruleset(&fx);
    assert_eq!(
        entries(fx.state_dir()),
        BTreeSet::from(["reconciled".into(), "state.json".into(), "state.lock".into()])
    );
    assert!(flags0.iter().all(|(p, &f)| f == (p != UPLINK)), "{flags0:?}");

    // 500 start/destroy cycles, VM n in thread n: before_vm_start on the engine XML (the
    // port wish checked), after_vm_start on the live XML (the tap's flag checked: open for
    // a trusted vNIC, isolated otherwise), after_vm_destroy on the last XML (the record
    // gone, the tap isolated again, as a VM port without a record is).
    let started = Instant::now();
    std::thread::scope(|scope| {
        for n in 1..=VMS {
            let (fx, tmp_env) = (&fx, &tmp_env);
            scope.spawn(move || {
                let env = |extra: &[(String, String)]| {
                    let mut env = vec![("vmId".to_string(), vm_uuid(n))];
                    env.extend_from_slice(tmp_env);
                    env.extend_from_slice(extra);
                    env
                };
                let vm = fx.vm(n);
                let mac = format_mac(vm.guest_mac);
                for cycle in 0..CYCLES / usize::from(VMS) {
                    let trusted = (cycle + usize::from(n)) % 5 == 0;
                    let profile = if trusted { TRUSTED } else { PLAIN };
                    let what = format!("vm{n} cycle {cycle} (trusted: {trusted})");
                    let engine = fx.engine_domain(n, profile);
                    let run = fx.spawn("before_vm_start", engine.as_bytes(), &env(&[])).wait();
                    ok(&run, &what);
                    assert_eq!(
                        port_isolated_in(&String::from_utf8_lossy(&run.payload_after)),
                        !trusted,
                        "{what}"
                    );

                    let live = NicSpec {
                        trusted,
                        ..NicSpec::of_vm(&vm, NET)
                    };
                    let live = domain_xml(&vm.name, &vm_uuid(n), &[live]);
                    ok(&fx.spawn("after_vm_start", live.as_bytes(), &env(&[])).wait(), &what);
                    assert_eq!(
                        fx.lab.port_isolated(&vm.tap).unwrap(),
                        !trusted,
                        "{what}: flag after start"
                    );
                    let state = String::from_utf8_lossy(&fx.state_bytes()).into_owned();
                    assert_eq!(state.contains(&mac), trusted, "{what}: record after start");

                    ok(&fx.spawn("after_vm_destroy", live.as_bytes(), &env(&[])).wait(), &what);
                    let state = String::from_utf8_lossy(&fx.state_bytes()).into_owned();
                    assert!(!state.contains(&mac), "{what}: record after destroy:\n{state}");
                    if trusted {
                        assert!(fx.lab.port_isolated(&vm.tap).unwrap(), "{what}: flag after destroy");
                    }
                }
            });
        }
    });
    let cycles_took = started.elapsed();
    assert_eq!(fx.state_bytes(), state0, "state after {CYCLES} VM cycles");
    assert_eq!(fx.port_flags(), flags0);

    // 100 toggles: lifted (false, property gone, network removed) and tagged again (engine
    // setup or restore-nets), each a before/after pair; the flags follow every time.
    let started = Instant::now();
    let restore = lab::restore_nets_json(&[(NET, NetSpec::on_nic(UPLINK).with_isolation("true"))]);
    let lifts = [tagged("false"), untagged(), removed()];
    let tags = [tagged("true"), restore];
    for toggle in 0..TOGGLES {
        let (json, on) = if toggle % 2 == 0 {
            (&lifts[(toggle / 2) % 3], false)
        } else {
            (&tags[(toggle / 2) % 2], true)
        };
        for point in ["before_network_setup", "after_network_setup"] {
            ok(
                &fx.spawn(point, json.as_bytes(), &tmp_env).wait(),
                &format!("toggle {toggle}"),
            );
        }
        let flags = fx.port_flags();
        assert!(
            flags.iter().all(|(p, &f)| f == (on && p != UPLINK)),
            "toggle {toggle} (isolated: {on}): {flags:?}"
        );
    }
    let toggles_took = started.elapsed();

    // Nothing grew, nothing leaked.
    let state = fx.state_bytes();
    assert_eq!(state.len(), state0.len(), "state.json size");
    assert_eq!(
        String::from_utf8_lossy(&state),
        String::from_utf8_lossy(&state0),
        "state.json after the soak"
    );
    let json = fx.state_json();
    assert_eq!(json["networks"].as_object().unwrap().len(), 1);
    assert!(json.get("trusted_vnics").is_none());
    assert_eq!(json["released"].as_array().unwrap().len(), 0);
    assert_eq!(fx.port_flags(), flags0, "port flags after the soak");
    assert_eq!(
        entries(fx.state_dir()),
        BTreeSet::from(["reconciled".into(), "state.json".into(), "state.lock".into()])
    );
    assert_eq!(entries(private_tmp.path()), BTreeSet::new(), "files left in TMPDIR");
    let tmp = ours_in_tmp();
    assert!(
        tmp.is_subset(&tmp0),
        "new in /tmp: {:?}",
        tmp.difference(&tmp0).collect::<Vec<_>>()
    );
    assert_eq!(lab::netns_starting_with(&prefix).unwrap(), namespaces0, "namespaces");
    assert_eq!(ruleset(&fx), rules0, "nftables rules");
    if let Some(rules) = &rules0 {
        assert!(
            rules.trim().is_empty(),
            "the port-isolation backend made rules:\n{rules}"
        );
    }
    let listing = Command::new(lab::IP).args(["netns", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.lines().filter(|l| l.starts_with(&prefix)).count() == namespaces0.len(),
        "{text}"
    );
    fx.lab.destroy().expect("destroying the lab");
    assert_eq!(
        lab::netns_starting_with(&prefix).unwrap(),
        Vec::<String>::new(),
        "namespaces after the lab"
    );
    eprintln!(
        "{CYCLES} VM cycles ({} hook runs) in {cycles_took:?}; {TOGGLES} toggles ({} runs) in {toggles_took:?}",
        3 * CYCLES,
        2 * TOGGLES
    );
}
