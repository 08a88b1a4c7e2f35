//! Concurrent hooks on a real kernel: VDSM takes no lock, so VM starts, hotplugs, device
//! updates, destroys and network-setup re-runs arrive at once. 48 hook processes spawned
//! together must reach the kernel state and the policy a serial run of the same events
//! reaches, while a reader parses state.json the whole time (never torn), and leave one
//! entry per network and vNIC. They need root; as another user they skip (or fail under
//! `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`).

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge_isolation::host::state::{State, Store};
use bridge_isolation::model::backend::BackendKind;
use bridge_isolation_lab::{self as lab, domain_xml, format_mac, interface_xml, NicSpec};
use common::{tagged, vm_uuid, Fixture, Profile, NET, PLAIN, TRUSTED, UPLINK};

/// VMs with a tap on the bridge (1-16); 17-20 are gone, with trusted records to forget.
const PLUGGED: u8 = 16;
const GONE: std::ops::RangeInclusive<u8> = 17..=20;

fn is_trusted(n: u8) -> bool {
    n % 3 == 0 || (n > 12 && n % 2 == 0)
}

fn profile(n: u8) -> Profile {
    if is_trusted(n) {
        TRUSTED
    } else {
        PLAIN
    }
}

/// One hook invocation.
#[derive(Clone)]
struct Event {
    point: &'static str,
    payload: Vec<u8>,
    env: Vec<(String, String)>,
}

/// The 48 events: network setup re-runs (4 before, 4 after), after_vm_start of VMs 1-12
/// twice, after_nic_hotplug of 13-16 twice, after_update_device of 13-16, and
/// after_vm_destroy of 17-20. Their final outcome does not depend on their order.
fn events(fx: &Fixture) -> Vec<Event> {
    let vm_env = |n: u8| vec![("vmId".to_string(), vm_uuid(n))];
    let mut out = Vec::new();
    let json = tagged("true").into_bytes();
    for point in ["before_network_setup", "after_network_setup"] {
        for _ in 0..4 {
            out.push(Event {
                point,
                payload: json.clone(),
                env: Vec::new(),
            });
        }
    }
    for n in 1..=12 {
        let nic = NicSpec {
            trusted: is_trusted(n),
            ..NicSpec::of_vm(&fx.vm(n), NET)
        };
        let xml = domain_xml(&fx.vm(n).name, &vm_uuid(n), &[nic]).into_bytes();
        for _ in 0..2 {
            out.push(Event {
                point: "after_vm_start",
                payload: xml.clone(),
                env: vm_env(n),
            });
        }
    }
    for n in 13..=PLUGGED {
        let nic = fx.engine_nic(n, profile(n));
        let mut env = vm_env(n);
        env.extend(nic.device_env());
        // after_nic_hotplug's XML names no tap: with no qemu process to prove which tap is
        // the vNIC's, a trusted one stays isolated until after_update_device's live XML
        // names its tap (in whatever order they run).
        let live = NicSpec {
            tap: Some(fx.vm(n).tap),
            ..nic.clone()
        };
        for (point, xml) in [
            ("after_nic_hotplug", interface_xml(&nic)),
            ("after_nic_hotplug", interface_xml(&nic)),
            ("after_update_device", interface_xml(&live)),
        ] {
            out.push(Event {
                point,
                payload: xml.into_bytes(),
                env: env.clone(),
            });
        }
    }
    for n in GONE {
        let xml = domain_xml(&fx.vm(n).name, &vm_uuid(n), &[fx.engine_nic(n, TRUSTED)]).into_bytes();
        out.push(Event {
            point: "after_vm_destroy",
            payload: xml,
            env: vm_env(n),
        });
    }
    assert_eq!(out.len(), 48);
    out
}

/// The policy part of the state that must not depend on the order of events (everything
/// but `setup`, which the network re-runs set and clear in whatever order they ran).
fn policy(state: &State) -> State {
    State {
        setup: None,
        ..state.clone()
    }
}

/// A small deterministic shuffle (xorshift), so each round interleaves differently.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..items.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        items.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

/// Puts the kernel and the state file back to the starting point: whatever the last
/// backend enforces released (`release-all`), the network tagged, 17-20 trusted, and every
/// VM port's flag the opposite of what the policy wants.
fn reset(fx: &Fixture, initial: &[u8], env: &[(String, String)]) {
    if fx.state_path().exists() {
        let release = fx
            .spawn_cli_with(&["release-all"], env)
            .wait_at_most(Duration::from_secs(60));
        assert_eq!(release.code(), Some(0), "release-all: {}", release.stderr);
    }
    std::fs::write(fx.state_path(), initial).expect("restoring state.json");
    for n in 1..=PLUGGED {
        fx.lab
            .set_port_isolated(&fx.vm(n).tap, is_trusted(n))
            .expect("setting a wrong flag");
    }
    fx.lab.set_port_isolated(UPLINK, true).expect("flagging the uplink");
}

/// The file is exactly the serialization of what it parses to: no duplicate key, no torn
/// or interleaved write, nothing appended.
#[track_caller]
fn assert_canonical(bytes: &[u8]) -> State {
    let state: State = serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("state.json does not parse ({e}):\n{}", String::from_utf8_lossy(bytes)));
    let mut again = serde_json::to_vec_pretty(&state).unwrap();
    again.push(b'\n');
    assert!(
        again == bytes,
        "state.json is not canonical (duplicate entries?):\n{}",
        String::from_utf8_lossy(bytes)
    );
    state
}

/// What the kernel enforces in the lab's host namespace: every port flag, the nftables
/// ruleset and the iptables/ip6tables filter tables (counters and comments dropped).
#[derive(Debug, PartialEq, Eq)]
struct Kernel {
    flags: BTreeMap<String, bool>,
    nft: String,
    xtables: String,
}

fn kernel(fx: &Fixture) -> Kernel {
    let run = |args: &[&str]| {
        if !std::path::Path::new(args[0]).exists() {
            return String::new();
        }
        let out = fx.lab.exec_in_host(args).expect("listing rules");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Each line prefixed by its family: the same rule in both is two rules.
    let xtables = [("ipv4", SAVE4), ("ipv6", SAVE6)]
        .iter()
        .flat_map(|(family, save)| {
            run(&[save, "-t", "filter"])
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| format!("{family} {}", l.split(" [").next().unwrap_or(l)))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n");
    // Counters count the lab's own chatter (IPv6 router solicitations): not state.
    let nft = run(&[lab::NFT, "list", "ruleset"])
        .lines()
        .map(|l| match l.find("counter packets ") {
            Some(at) => {
                let rest = &l[at + "counter packets ".len()..];
                let after = rest.splitn(4, ' ').nth(3).unwrap_or("");
                format!("{}counter {after}", &l[..at])
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    // The bridge family's tables only: iptables-nft's `ip`/`ip6 filter` tables are in
    // `xtables` already, and nft lists their chains in creation order.
    let nft = nft
        .split("\ntable ")
        .map(|t| t.strip_prefix("table ").unwrap_or(t))
        .filter(|t| t.starts_with("bridge "))
        .collect::<Vec<_>>()
        .join("\ntable ");
    Kernel {
        flags: fx.port_flags(),
        nft,
        xtables,
    }
}

const SAVE4: &str = "/usr/sbin/iptables-save";
const SAVE6: &str = "/usr/sbin/ip6tables-save";

/// Each rule appears once: no line of a rule listing is repeated within its table.
#[track_caller]
fn assert_no_duplicate_rules(k: &Kernel, what: &str) {
    let rules = k
        .nft
        .lines()
        .map(str::trim)
        .filter(|l| {
            [" drop", " accept", " jump ", " goto ", " return"]
                .iter()
                .any(|w| l.contains(w))
        })
        // iptables-nft rules show in nft as opaque `xt match` lines: iptables-save has them.
        .filter(|l| !l.contains("xt match") && !l.contains("xt target") && !l.starts_with("type "))
        .chain(k.xtables.lines().filter(|l| l.contains(" -A ")));
    let mut seen = std::collections::BTreeSet::new();
    for rule in rules {
        assert!(
            seen.insert(rule),
            "{what}: rule listed twice: {rule}\n{}\n{}",
            k.nft,
            k.xtables
        );
    }
}

#[test]
fn forty_eight_concurrent_hooks_reach_the_serial_outcome() {
    if !lab::root_tests_enabled("forty_eight_concurrent_hooks_reach_the_serial_outcome") {
        return;
    }
    let fx = Fixture::new("biconc", PLUGGED);
    fx.network_setup(&tagged("true"));
    for n in GONE {
        let xml = domain_xml(&fx.vm(n).name, &vm_uuid(n), &[fx.engine_nic(n, TRUSTED)]);
        fx.run_vm_point("after_vm_start", n, xml, &[]);
    }
    let initial = fx.state_bytes();
    // Not running, they have no tap to bind a trust record to: nothing is recorded.
    assert!(assert_canonical(&initial).trusted_vnics.is_empty());
    for backend in BackendKind::ALL {
        // The iptables backend's drop-ins go to the fixture's own directory.
        let env = vec![("BRIDGE_ISOLATION_BACKEND".to_string(), backend.to_string())];
        let rounds = if backend == BackendKind::PortIsolation { 3 } else { 1 };
        serial_then_concurrent(&fx, &initial, backend, &env, rounds);
    }
}

/// Runs the 48 events serially, then `rounds` times all at once, each from the same
/// starting point, with `backend`; the outcomes must agree.
fn serial_then_concurrent(fx: &Fixture, initial: &[u8], backend: BackendKind, env: &[(String, String)], rounds: u64) {
    let mut events = events(fx);
    for e in &mut events {
        e.env.extend_from_slice(env);
    }

    // Serially, in the listed order.
    reset(fx, initial, env);
    let started = Instant::now();
    for (i, e) in events.iter().enumerate() {
        let run = fx.run_bytes(e.point, &e.payload, &e.env);
        if i == 0
            && run.code() != Some(0)
            && ["cannot run here", "not implemented"]
                .iter()
                .any(|w| run.stderr.contains(w))
        {
            eprintln!("backend {backend} skipped: {}", run.stderr.trim());
            reset(fx, initial, &[]);
            return;
        }
        assert_eq!(run.code(), Some(0), "{backend}: {}: {}", e.point, run.stderr);
    }
    let serial_time = started.elapsed();
    let serial_kernel = kernel(fx);
    assert_no_duplicate_rules(&serial_kernel, &format!("{backend}, serial"));
    let serial = policy(&assert_canonical(&fx.state_bytes()));
    assert_eq!(serial.backend, Some(backend));

    // What that is, spelled out: trusted records for the plugged trusted VMs only; with
    // port isolation, trusted vNICs and the uplink open and the other VM ports isolated.
    let mut trusted: Vec<String> = serial.trusted_ports().map(|(_, p)| p.mac.to_string()).collect();
    trusted.sort();
    let want_trusted: Vec<String> = (1..=PLUGGED)
        .filter(|&n| is_trusted(n))
        .map(|n| format_mac(fx.vm(n).guest_mac))
        .collect();
    assert_eq!(trusted, want_trusted);
    assert!(serial
        .trusted_vnics
        .keys()
        .all(|vm| !GONE.map(vm_uuid).any(|g| g == *vm)));
    assert_eq!(serial.networks.keys().collect::<Vec<_>>(), [NET]);
    if backend == BackendKind::PortIsolation {
        let mut want_flags: BTreeMap<String, bool> = (1..=PLUGGED).map(|n| (fx.vm(n).tap, !is_trusted(n))).collect();
        want_flags.insert(UPLINK.to_string(), false);
        assert_eq!(serial_kernel.flags, want_flags);
    }

    for round in 0..rounds {
        reset(fx, initial, env);
        let mut batch = events.clone();
        shuffle(&mut batch, 0x9e37_79b9_7f4a_7c15 ^ round);

        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicUsize::new(0));
        let reader = {
            let (stop, reads) = (stop.clone(), reads.clone());
            let (path, dir) = (fx.state_path(), fx.state_dir().to_path_buf());
            std::thread::spawn(move || {
                let store = Store::new(dir);
                while !stop.load(Ordering::Relaxed) {
                    let bytes = std::fs::read(&path).expect("state.json exists throughout");
                    assert_canonical(&bytes);
                    store.read().expect("Store::read while writers run");
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        };

        let started = Instant::now();
        let running: Vec<_> = batch.iter().map(|e| fx.spawn(e.point, &e.payload, &e.env)).collect();
        let finished: Vec<_> = running
            .into_iter()
            .map(|p| p.wait_at_most(Duration::from_secs(60)))
            .collect();
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        reader.join().expect("the reader saw a torn or unparsable state.json");

        let what = format!("{backend}, round {round}");
        for run in &finished {
            assert_eq!(run.code(), Some(0), "{what}: {}: {}", run.point, run.stderr);
            assert!(!run.stderr.contains("error"), "{what}: {}: {}", run.point, run.stderr);
        }
        let kernel = kernel(fx);
        assert_no_duplicate_rules(&kernel, &what);
        assert_eq!(kernel, serial_kernel, "{what}: the kernel differs from the serial run");
        let state = assert_canonical(&fx.state_bytes());
        assert_eq!(policy(&state), serial, "{what}: policy differs from the serial run");
        if let Some(setup) = &state.setup {
            assert!(setup.previous.keys().all(|k| k == NET), "{setup:?}");
        }
        let mut files: Vec<String> = std::fs::read_dir(fx.state_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["reconciled", "state.json", "state.lock"], "{what}");
        eprintln!(
            "{what}: 48 concurrent hooks in {took:?} (serial: {serial_time:?}); {} reads of state.json",
            reads.load(Ordering::Relaxed)
        );
    }
    // Leave no enforcement of this backend behind for the next.
    reset(fx, initial, env);
}

/// Crash safety: hooks and `bridge-isolation reconcile` killed with SIGKILL at random points
/// of their work on a bridge of 24 VM ports. After every kill state.json parses and holds the
/// old or the new policy (never a mix, never torn); at most one temporary file is left and
/// the next write removes it; and a normal `reconcile` then converges: `verify` exits 0 and
/// every port flag is what the recorded policy says (no flag that no record explains).
#[test]
fn sigkill_at_any_point_then_the_next_run_converges() {
    if !lab::root_tests_enabled("sigkill_at_any_point_then_the_next_run_converges") {
        return;
    }
    const VMS: u8 = 24;
    const ROUNDS: usize = 80;
    let fx = Fixture::new("bicrash", VMS);
    fx.network_setup(&tagged("true"));
    fx.network_setup(&tagged("false"));
    // What a writer killed between creating its temporary file and renaming it leaves.
    let stale = fx.state_dir().join(".state.json.999999");
    std::fs::write(&stale, "{\"networks\": {").unwrap();

    let expected = |state: &State| -> BTreeMap<String, bool> {
        let on = state.networks.contains_key(NET);
        let mut flags: BTreeMap<String, bool> = (1..=VMS).map(|n| (fx.vm(n).tap, on)).collect();
        flags.insert(UPLINK.to_string(), false);
        flags
    };
    let temp_files = || {
        std::fs::read_dir(fx.state_dir())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".state.json.")
            })
            .count()
    };
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    // How long a full toggle takes here: kills land from the start of the process to just
    // past its end, most of them in the second half, where the ports are changed.
    let timed = |value: &str| {
        let started = Instant::now();
        let run = fx.run_bytes("before_network_setup", tagged(value).as_bytes(), &[]);
        assert_eq!(run.code(), Some(0), "{}", run.stderr);
        started.elapsed()
    };
    let full = (timed("true") + timed("false")).as_micros() as u64 / 2;
    let (mut killed, mut partial, mut aim) = (0, 0, full / 2);
    let started = Instant::now();
    for round in 0..ROUNDS {
        let old = assert_canonical(&fx.state_bytes());
        let tag = !old.networks.contains_key(NET);
        let json = tagged(if tag { "true" } else { "false" }).into_bytes();
        let action = next(5);
        let mut process = match action {
            0 | 1 => fx.spawn("before_network_setup", &json, &[]),
            2 => fx.spawn("after_network_setup", &json, &[]),
            _ => {
                // Drift behind our back, for reconcile to repair (on the isolated bridge:
                // flags on a bridge no policy names are not ours to judge).
                for _ in 0..if tag { 0 } else { 4 } {
                    let n = 1 + next(u64::from(VMS)) as u8;
                    let tap = fx.vm(n).tap;
                    let flag = fx.port_flags()[&tap];
                    fx.lab.set_port_isolated(&tap, !flag).unwrap();
                }
                fx.spawn_cli(&["reconcile"])
            }
        };
        // Toggles aim at the moment the ports change, learnt from the previous kills: later
        // when they left every flag as it was, sooner when they left none to do; a quarter
        // of all kills land anywhere.
        let delay = if action < 3 && next(4) != 0 {
            aim.saturating_sub(full / 16) + next(full / 8 + 1)
        } else {
            next(full + full / 4)
        };
        std::thread::sleep(Duration::from_micros(delay));
        process.kill();
        let run = process.wait();
        if run.signal() == Some(9) {
            killed += 1;
        } else {
            assert_eq!(run.code(), Some(0), "round {round} {}: {}", run.point, run.stderr);
        }

        // The state is the old or the new policy, whole.
        let now = assert_canonical(&fx.state_bytes());
        let new_networks = if action < 3 && tag {
            let mut n = old.networks.clone();
            let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
            let attrs = v["request"]["networks"][NET].take();
            assert_eq!(attrs["nic"], UPLINK);
            n.insert(
                NET.to_string(),
                bridge_isolation::model::policy::NetworkPolicy {
                    bridge: NET.to_string(),
                    uplink: Some(UPLINK.to_string()),
                    ..Default::default()
                },
            );
            n
        } else if action < 3 {
            BTreeMap::new()
        } else {
            old.networks.clone()
        };
        assert!(
            now.networks == old.networks || now.networks == new_networks,
            "round {round}: neither old nor new: {:?}",
            now.networks
        );
        assert!(
            now.released.iter().all(|b| b == NET),
            "round {round}: {:?}",
            now.released
        );
        assert!(temp_files() <= 1, "round {round}: temporary files accumulate");
        let flags = fx.port_flags();
        let vm_flags: Vec<bool> = (1..=VMS).map(|n| flags[&fx.vm(n).tap]).collect();
        if vm_flags.iter().any(|&f| f) && vm_flags.iter().any(|&f| !f) {
            partial += 1;
        } else if action < 3 {
            if run.signal().is_some() && vm_flags.iter().all(|&f| f != tag) {
                aim += full / 32;
            } else {
                aim = aim.saturating_sub(full / 32);
            }
        }

        // A normal run converges.
        let reconcile = fx.spawn_cli(&["reconcile"]).wait_at_most(Duration::from_secs(30));
        assert_eq!(
            reconcile.code(),
            Some(0),
            "round {round}: reconcile: {}",
            reconcile.stderr
        );
        let verify = fx.cli(&["verify"]);
        assert_eq!(
            verify.status.code(),
            Some(0),
            "round {round}: verify: {}",
            String::from_utf8_lossy(&verify.stdout)
        );
        let state = assert_canonical(&fx.state_bytes());
        assert!(state.released.is_empty(), "round {round}: {:?}", state.released);
        assert_eq!(
            fx.port_flags(),
            expected(&state),
            "round {round}: flags differ from the recorded policy"
        );
    }
    // One last state change removes whatever temporary file a kill left.
    fx.network_setup(&tagged("true"));
    fx.network_setup(&tagged("false"));
    assert!(!stale.exists(), "a stale temporary file survived writes");
    assert_eq!(temp_files(), 0);
    assert!(killed > 0, "no run was ever killed");
    eprintln!(
        "{ROUNDS} rounds in {:?} (a toggle takes {full} us): {killed} killed by SIGKILL, {partial} left the ports \
         half done",
        started.elapsed()
    );
}
