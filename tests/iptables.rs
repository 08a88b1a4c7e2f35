//! The iptables backend on a real kernel: br_netfilter and physdev rules in iptables and
//! ip6tables. Its matrix differs from the layer-2 backends' on purpose: between VMs IPv4 and
//! IPv6 are blocked while **ARP and raw frames pass** (br_netfilter hands only IP to
//! iptables); everything to and from the uplink and the host passes. Restore-nets changes
//! no rule; lifting and removing leave no rule, no drop-in and the sysctls as they were.
//!
//! The lab host namespace starts with both `bridge-nf-call-*` sysctls at 0, as a host
//! without br_netfilter. They are per network namespace on the kernels this runs on (checked
//! below), and br_netfilter is built into the test machines' kernels, so nothing here
//! touches the machine's own netfilter; the drop-ins go to a temporary directory
//! (`BRIDGE_ISOLATION_MODULES_LOAD_DIR`, `BRIDGE_ISOLATION_SYSCTL_DIR`). The tests still
//! run one at a time: were the module not loaded, the first hook would load it for the
//! whole machine. They need root; as another user they skip (or fail under
//! `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`).

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use bridge_isolation::enforce::iptables::SYSCTL_DROPIN;
use bridge_isolation_lab as lab;
use common::backend::{iptables_layout as layout, names, ok, own_sysctls_of_machine, Backend};
use common::{removed, restored, tagged, untagged, Fixture, PLAIN, TRUSTED};
use serde_json::{json, Value};

/// One iptables test at a time (see the module documentation).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Tagging the network of three running VMs turns br_netfilter on in the lab host (drop-ins
/// written), puts the layout in both families and blocks IPv4/IPv6 between VMs only.
/// Restore-nets and `reconcile` change no rule. A rule inserted above our jump (what a
/// firewall reload may leave) is drift, and reconcile puts the jump back on top.
#[test]
fn iptables_blocks_ip_between_vms_and_restore_nets_changes_nothing() {
    if !lab::root_tests_enabled("iptables_blocks_ip_between_vms_and_restore_nets_changes_nothing") {
        return;
    }
    let _serial = serial();
    let machine = own_sysctls_of_machine();
    let fx = Fixture::with_backend("bipt", 3, Backend::Iptables);
    let matrix = fx.lab.matrix().expect("probing");
    matrix.assert_expected(&|_, _| true);

    fx.network_setup(&tagged("true"));
    assert_eq!(fx.state_json()["backend"], json!("iptables"));
    assert_eq!(fx.br_netfilter(), [true, true], "br_netfilter on in the lab host");
    assert_eq!(fx.iptables_dropins(), [true, true]);
    let dropin = std::fs::read_to_string(fx.dropin_dir().join("sysctl.d").join(SYSCTL_DROPIN)).unwrap();
    assert!(
        dropin.contains("net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0"),
        "{dropin}"
    );
    assert!(dropin.contains("net.bridge.bridge-nf-call-iptables = 1\n"), "{dropin}");
    let want = layout(&["vnet1", "vnet2", "vnet3"]);
    assert_eq!(fx.xtables_ours(), [want.clone(), want.clone()]);
    let tables = fx.xtables();
    for t in &tables {
        let first = t.iter().find(|l| l.starts_with("-A FORWARD")).unwrap();
        assert!(
            first.contains("-j BRIDGE-ISOLATION"),
            "our jump is rule 1 of FORWARD: {t:?}"
        );
    }
    fx.assert_isolation(&[]);

    let state = fx.state_json();
    fx.network_setup(&restored("true"));
    assert_eq!(fx.xtables(), tables, "restore-nets changed the rules");
    assert_eq!(fx.state_json(), state, "restore-nets changed the state");
    assert_eq!(ok(fx.cli(&["reconcile"])).trim(), "iptables: 0 port(s) changed");
    assert_eq!(fx.xtables(), tables, "reconcile changed the rules");
    ok(fx.cli(&["verify"]));

    let status: Value = serde_json::from_str(&ok(fx.cli(&["status", "--json"]))).expect("status --json");
    let drops = status["bridges"][0]["drops"]["packets"]
        .as_u64()
        .expect("a drop counter");
    assert!(drops > 0, "the VM<->VM probes were dropped: {status:#}");

    // Something inserts a rule above ours (a firewall reload can): the VMs reach each other.
    ok(fx
        .lab
        .exec_in_host(&["/usr/sbin/iptables", "-I", "FORWARD", "1", "-j", "ACCEPT"])
        .unwrap());
    let verify = fx.cli(&["verify"]);
    assert_eq!(
        verify.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert_eq!(ok(fx.cli(&["reconcile"])).trim(), "iptables: 3 port(s) changed");
    let v4 = &fx.xtables()[0];
    let forward: Vec<&String> = v4.iter().filter(|l| l.starts_with("-A FORWARD")).collect();
    assert_eq!(
        forward,
        [
            "-A FORWARD -m physdev --physdev-is-bridged -j BRIDGE-ISOLATION",
            "-A FORWARD -j ACCEPT"
        ],
        "our jump back on top, the other rule kept"
    );
    fx.assert_isolation(&[]);
    assert_eq!(own_sysctls_of_machine(), machine, "the machine's own sysctls changed");
}

/// VMs started through the hooks (their port flags cleared behind our back): a trusted vNIC
/// has no rule and reaches every VM over IP; the others are kept apart by the rules alone.
/// Hotplugging a VM adds exactly its two rules per family.
#[test]
fn iptables_trusted_vnic_stays_open() {
    if !lab::root_tests_enabled("iptables_trusted_vnic_stays_open") {
        return;
    }
    let _serial = serial();
    let mut fx = Fixture::with_backend("bipttr", 0, Backend::Iptables);
    fx.network_setup(&tagged("true"));
    assert_eq!(
        fx.xtables_ours(),
        [layout(&[]), layout(&[])],
        "an empty chain waits for VMs"
    );
    fx.start_vm_unflagged(1, PLAIN);
    fx.start_vm_unflagged(2, PLAIN);
    fx.start_vm_unflagged(3, TRUSTED);
    assert_eq!(
        fx.enforced_ports(),
        names(&["vnet1", "vnet2"]),
        "what the backend enforces"
    );
    assert_eq!(
        fx.xtables_ours(),
        [layout(&["vnet1", "vnet2"]), layout(&["vnet1", "vnet2"])]
    );
    ok(fx.cli(&["verify"]));
    fx.assert_isolation(&["vm3"]);

    let status: Value = serde_json::from_str(&ok(fx.cli(&["status", "--json"]))).unwrap();
    let isolated: BTreeSet<String> = status["bridges"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["isolated"] == json!(true))
        .map(|p| p["port"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(isolated, names(&["vnet1", "vnet2"]));
}

/// Lifting the property removes every rule and chain of ours from both families, both
/// drop-ins, and puts the sysctls back to 0; all pairs pass. Tagging again and removing
/// the network do the same.
#[test]
fn iptables_untag_and_remove_leave_no_residue() {
    if !lab::root_tests_enabled("iptables_untag_and_remove_leave_no_residue") {
        return;
    }
    let _serial = serial();
    let fx = Fixture::with_backend("biptrm", 2, Backend::Iptables);
    let pristine = fx.xtables();
    fx.network_setup(&tagged("true"));
    assert_eq!(
        fx.xtables_ours(),
        [layout(&["vnet1", "vnet2"]), layout(&["vnet1", "vnet2"])]
    );
    fx.assert_isolation(&[]);

    fx.network_setup(&untagged());
    assert_eq!(
        fx.xtables_ours(),
        [Vec::<String>::new(), Vec::new()],
        "rules outlived the isolation"
    );
    assert_eq!(fx.iptables_dropins(), [false, false], "drop-ins outlived the backend");
    assert_eq!(fx.br_netfilter(), [false, false], "sysctls not put back");
    assert_eq!(fx.xtables(), pristine);
    fx.lab.matrix().expect("probing").assert_expected(&|_, _| true);

    fx.network_setup(&tagged("true"));
    assert_eq!(fx.br_netfilter(), [true, true]);
    fx.assert_isolation(&[]);
    fx.network_setup(&removed());
    assert_eq!(fx.xtables(), pristine, "rules outlived the network");
    assert_eq!(fx.iptables_dropins(), [false, false]);
    assert_eq!(fx.br_netfilter(), [false, false]);
    fx.lab.matrix().expect("probing").assert_expected(&|_, _| true);
    let listed: Vec<_> = std::fs::read_dir(fx.dropin_dir())
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .collect();
    assert!(listed.is_empty(), "files left in the drop-in directories: {listed:?}");
}

/// The sysctls this backend turns on belong to the network namespace: turning them off in
/// one namespace leaves the machine's alone (what keeps these tests from touching it).
#[test]
fn br_netfilter_sysctls_are_per_namespace_here() {
    if !lab::root_tests_enabled("br_netfilter_sysctls_are_per_namespace_here") {
        return;
    }
    let _serial = serial();
    let machine = own_sysctls_of_machine();
    let fx = Fixture::with_backend("biptns", 0, Backend::Iptables);
    fx.set_br_netfilter(true);
    fx.set_br_netfilter(false);
    assert_eq!(fx.br_netfilter(), [false, false]);
    assert_eq!(own_sysctls_of_machine(), machine);
}

/// The hook binary carries no daemon backend: it hands an iptables run to the installed
/// CLI, the same process (exec), so the run fails, changing nothing, when that binary is
/// missing, and works when it is there.
#[test]
fn the_hook_hands_iptables_runs_to_the_cli() {
    if !lab::root_tests_enabled("the_hook_hands_iptables_runs_to_the_cli") {
        return;
    }
    let _serial = serial();
    let fx = Fixture::with_backend("bihand", 2, Backend::Iptables);
    let missing = [(
        "BRIDGE_ISOLATION_CLI".to_string(),
        "/nonexistent/bridge-isolation".to_string(),
    )];
    let run = fx.run_bytes("before_network_setup", tagged("true").as_bytes(), &missing);
    assert_eq!(run.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("running /nonexistent/bridge-isolation"),
        "{}",
        run.stderr
    );
    assert!(!fx.state_path().exists(), "nothing recorded");
    assert_eq!(fx.xtables_ours(), [Vec::<String>::new(), Vec::new()], "no rule");
    fx.network_setup(&tagged("true"));
    assert_eq!(fx.state_json()["backend"], json!("iptables"));
    fx.network_setup(&removed());
}
