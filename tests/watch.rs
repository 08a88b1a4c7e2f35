//! The resident watcher, `bridge-isolation watch` (issue 15), on a real kernel: started in a
//! netns lab's host namespace with the fixture's environment, it must repair what changes
//! outside VDSM's hooks (a tap joining an isolated bridge, a flag cleared or set by hand)
//! with no hook run, pick up what the hooks record while it runs, survive losing
//! notifications and being killed in a burst, and re-apply after firewalld reloads.
//! Deadlines, not sleeps: each check polls the kernel until it holds or its time is up.

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bridge_isolation_lab::{self as lab, domain_xml, NetSpec, NicSpec};
use common::backend::{firewalld_tests_enabled, names, Backend, Firewalld};
use common::{tagged, untagged, vm_uuid, wait_until, Fixture, Watcher, NET, UPLINK};

/// How long a repair may take before a check fails (the goal is milliseconds; a busy
/// 2-core CI machine gets room).
const REPAIR: Duration = Duration::from_secs(10);

/// A lab of `vms` VMs whose network is isolated through the hooks with `backend`; with
/// three or more, VM 3's vNIC is trusted (recorded by `after_vm_start`, as VDSM runs it).
fn isolated(tag: &str, vms: u8, backend: Backend) -> Fixture {
    let fx = Fixture::with_backend(tag, vms, backend);
    fx.network_setup(&tagged("true"));
    if vms >= 3 {
        let nic = NicSpec {
            trusted: true,
            ..NicSpec::of_vm(&fx.vm(3), NET)
        };
        fx.run_vm_point("after_vm_start", 3, domain_xml("vm3", &vm_uuid(3), &[nic]), &[]);
    }
    fx
}

/// The flag of `port` in the lab host.
fn flag(fx: &Fixture, port: &str) -> bool {
    fx.lab.port_isolated(port).unwrap_or(false)
}

/// A temporary config file holding `text`, and the variable that names it.
fn config(text: &str) -> (tempfile::NamedTempFile, (String, String)) {
    let mut file = tempfile::NamedTempFile::new().expect("a config file");
    file.write_all(text.as_bytes()).expect("writing the config file");
    let var = (
        "BRIDGE_ISOLATION_CONFIG".to_string(),
        file.path().to_string_lossy().into_owned(),
    );
    (file, var)
}

/// Feeds `commands` to one `ip -n HOST -batch -` (as an administrator's script would).
fn ip_batch(fx: &Fixture, commands: &str) {
    let mut child = Command::new(lab::IP)
        .args(["-n", fx.lab.host_ns(), "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ip -batch");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(commands.as_bytes())
        .expect("writing to ip -batch");
    let out = child.wait_with_output().expect("waiting for ip -batch");
    assert!(
        out.status.success(),
        "ip -batch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `count` veth pairs `vbN`/`pbN` made outside the hooks, not on any bridge; their names.
fn taps(fx: &Fixture, count: usize) -> Vec<String> {
    let made: String = (0..count)
        .map(|i| format!("link add vb{i} type veth peer name pb{i}\n"))
        .collect();
    ip_batch(fx, &made);
    (0..count).map(|i| format!("vb{i}")).collect()
}

/// The `ip -batch` lines putting `ports` on the lab bridge.
fn enslaving(ports: &[String]) -> String {
    ports
        .iter()
        .map(|p| format!("link set dev {p} master {NET}\n"))
        .collect()
}

/// How many of `ports` have their flag set, read in one `ip -d -j link show`.
fn isolated_among(fx: &Fixture, ports: &[String]) -> usize {
    let flags = fx.port_flags();
    ports.iter().filter(|p| flags.get(*p) == Some(&true)).count()
}

#[test]
fn ports_changed_by_hand_are_repaired_with_no_hook() {
    if !lab::root_tests_enabled("ports_changed_by_hand_are_repaired_with_no_hook") {
        return;
    }
    let mut fx = isolated("wph", 3, Backend::PortIsolation);
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    let mut w = Watcher::start(&fx, &["watch"], &[]);
    let status = fx.status_json();
    assert_eq!(status["watcher"]["running"], true, "{status}");
    assert_eq!(status["watcher"]["pid"], w.pid(), "{status}");
    let table = String::from_utf8(fx.cli(&["status"]).stdout).unwrap();
    assert!(
        table.contains(&format!("watcher: running (pid {}, since ", w.pid())),
        "{table}"
    );

    // A VM started by hand (virsh): its tap joins the bridge, no hook runs.
    let vm4 = fx.vm(4);
    fx.lab.add_vm(&vm4).unwrap();
    let took = wait_until("vnet4 isolated", REPAIR, || flag(&fx, "vnet4"));
    eprintln!("vnet4 isolated {took:?} after its VM was plugged");
    w.wait_line("port-isolation: bridge isonet port vnet4 isolated", REPAIR);
    // Every protocol: vm4 is kept from vm1 and vm2, reaches the trusted vm3, the gateway
    // and the host.
    fx.assert_isolation(&["vm3"]);

    // A flag cleared by hand is set again.
    fx.lab.set_port_isolated("vnet1", false).unwrap();
    wait_until("vnet1 isolated again", REPAIR, || flag(&fx, "vnet1"));
    w.wait_line("port-isolation: bridge isonet port vnet1 isolated", REPAIR);

    // The trusted vNIC and the uplink stay open: a flag set on them by hand goes.
    fx.lab.set_port_isolated("vnet3", true).unwrap();
    wait_until("the trusted vnet3 open again", REPAIR, || !flag(&fx, "vnet3"));
    fx.lab.set_port_isolated(UPLINK, true).unwrap();
    wait_until("the uplink open again", REPAIR, || !flag(&fx, UPLINK));

    // A port taken off the bridge and put back (a tap re-plugged): a new bridge port,
    // flag clear, isolated again.
    fx.lab.detach_port("vnet2").unwrap();
    fx.lab.attach_port("vnet2").unwrap();
    wait_until("vnet2 isolated after re-plugging", REPAIR, || flag(&fx, "vnet2"));

    fx.assert_isolated_ports(&["vnet1", "vnet2", "vnet4"]);
    fx.assert_isolation(&["vm3"]);
    assert_no_errors(&mut w);

    // Killed: status says so.
    w.kill();
    let status = fx.status_json();
    assert_eq!(status["watcher"]["running"], false, "{status}");
    let table = String::from_utf8(fx.cli(&["status"]).stdout).unwrap();
    assert!(table.contains("watcher: not running"), "{table}");
}

#[test]
fn what_the_hooks_record_reaches_the_running_watcher() {
    if !lab::root_tests_enabled("what_the_hooks_record_reaches_the_running_watcher") {
        return;
    }
    // Nothing isolated when the watcher starts.
    let mut fx = Fixture::new("whk", 2);
    let mut w = Watcher::start(&fx, &["watch"], &[]);

    // The network is tagged through the hooks: a VM started by hand afterwards is isolated.
    fx.network_setup(&tagged("true"));
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    fx.lab.add_vm(&fx.vm(3)).unwrap();
    wait_until("vnet3 isolated", REPAIR, || flag(&fx, "vnet3"));
    w.wait_line("port-isolation: bridge isonet port vnet3 isolated", REPAIR);

    // A second network, tagged through the hooks while the watcher runs: a port joining
    // its bridge by hand is isolated too.
    fx.lab.ip_in_host(&["link", "add", "rednet", "type", "bridge"]).unwrap();
    fx.lab
        .ip_in_host(&["link", "add", "eth2", "type", "veth", "peer", "name", "gw2"])
        .unwrap();
    fx.lab.ip_in_host(&["link", "set", "eth2", "master", "rednet"]).unwrap();
    let red = lab::setup_networks_json(&[("rednet", NetSpec::on_nic("eth2").with_isolation("true"))]);
    fx.network_setup(&red);
    fx.lab
        .ip_in_host(&["link", "add", "vnet9", "type", "veth", "peer", "name", "p9"])
        .unwrap();
    fx.lab
        .ip_in_host(&["link", "set", "vnet9", "master", "rednet"])
        .unwrap();
    wait_until("vnet9 on rednet isolated", REPAIR, || flag(&fx, "vnet9"));
    w.wait_line("port-isolation: bridge rednet port vnet9 isolated", REPAIR);
    assert!(!flag(&fx, "eth2"), "rednet's uplink stays open");

    // isonet's isolation is lifted through the hooks: a VM started by hand stays open, and
    // a flag set by hand there is not ours to clear.
    fx.network_setup(&untagged());
    fx.assert_isolated_ports(&[]);
    fx.lab.add_vm(&fx.vm(4)).unwrap();
    fx.lab.set_port_isolated("vnet1", true).unwrap();
    // Then a change the watcher does repair, on rednet: once it is done, the earlier ones
    // (on isonet) have been read too, notifications being read in order.
    fx.lab.set_port_isolated("vnet9", false).unwrap();
    wait_until("vnet9 isolated again", REPAIR, || flag(&fx, "vnet9"));
    assert!(!flag(&fx, "vnet4"), "a port of a lifted network was isolated");
    assert!(flag(&fx, "vnet1"), "a flag set by hand on a lifted network was cleared");
    assert_no_errors(&mut w);
}

#[test]
fn nftables_backend_ports_joined_by_hand_and_a_deleted_table() {
    if !lab::root_tests_enabled("nftables_backend_ports_joined_by_hand_and_a_deleted_table") {
        return;
    }
    let mut fx = isolated("wnf", 2, Backend::Nftables);
    assert_eq!(fx.enforced_ports(), names(&["vnet1", "vnet2"]));
    let mut w = Watcher::start(&fx, &["watch"], &[]);

    // A VM started by hand: its port joins the bridge's set and the gate's group.
    fx.lab.add_vm(&fx.vm(3)).unwrap();
    wait_until("vnet3 in the nftables set", REPAIR, || {
        fx.enforced_ports() == names(&["vnet1", "vnet2", "vnet3"])
    });
    w.wait_line("nftables: bridge isonet port vnet3 isolated", REPAIR);
    assert_eq!(fx.grouped_ports(), names(&["vnet1", "vnet2", "vnet3"]));
    assert!(fx.isolated_ports().is_empty(), "nftables sets no port flag");
    fx.assert_isolation(&[]);

    // Our table deleted by hand (as `nft flush ruleset` or nftables.service restarting
    // would): nf_tables tells, and it is back at once, long before the backstop (600 s).
    let out = fx
        .lab
        .exec_in_host(&[lab::NFT, "delete", "table", "bridge", "bridge_isolation"])
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the table back", REPAIR, || {
        fx.enforced_ports() == names(&["vnet1", "vnet2", "vnet3"])
    });
    for port in ["vnet1", "vnet2", "vnet3"] {
        w.wait_line(&format!("nftables: bridge isonet port {port} isolated"), REPAIR);
    }
    fx.assert_isolation(&[]);
    assert_no_errors(&mut w);
}

#[test]
fn the_backstop_puts_back_iptables_rules_flushed_by_hand() {
    if !lab::root_tests_enabled("the_backstop_puts_back_iptables_rules_flushed_by_hand") {
        return;
    }
    let fx = isolated("wip", 2, Backend::Iptables);
    assert_eq!(fx.enforced_ports(), names(&["vnet1", "vnet2"]));
    let (_file, var) = config("watch_backstop = 2\n");
    let mut w = Watcher::start(&fx, &["watch"], &[var]);
    // `iptables -F` of our chain sends no link or nf_tables notification of ours: the
    // periodic full reconcile (every 2 s here) puts the rules back.
    let chain = format!("BRIDGE-ISO-{NET}");
    for tool in ["/usr/sbin/iptables", "/usr/sbin/ip6tables"] {
        common::backend::ok(fx.lab.exec_in_host(&[tool, "-F", &chain]).unwrap());
    }
    // The ports with a DROP rule, per family (the repair writes one family, then the other).
    let dropped = || {
        fx.xtables_ours().map(|lines| {
            let prefix = format!("-A {chain} -m physdev --physdev-out ");
            lines
                .iter()
                .filter_map(|l| l.strip_prefix(&prefix)?.strip_suffix(" -j DROP").map(str::to_string))
                .collect::<BTreeSet<String>>()
        })
    };
    assert_eq!(dropped(), [BTreeSet::new(), BTreeSet::new()]);
    let both = [names(&["vnet1", "vnet2"]), names(&["vnet1", "vnet2"])];
    wait_until("the rules back", REPAIR, || dropped() == both);
    let line = w.wait_line("periodic full reconcile: reconciled with iptables", REPAIR);
    assert!(line.contains("2 port(s) changed"), "{line}");
    fx.assert_isolation(&[]);
}

#[test]
fn a_burst_of_joins_is_isolated_and_nothing_blocked() {
    if !lab::root_tests_enabled("a_burst_of_joins_is_isolated_and_nothing_blocked") {
        return;
    }
    let fx = isolated("wbu", 1, Backend::PortIsolation);
    let mut w = Watcher::start(&fx, &["watch"], &[]);
    // 300 taps (made beforehand) joining back to back, while the watcher repairs the
    // first ones: those that join during a repair are no drift of it, and none is blocked.
    let ports = taps(&fx, 300);
    ip_batch(&fx, &enslaving(&ports));
    let took = wait_until("the 300 ports isolated", REPAIR, || isolated_among(&fx, &ports) == 300);
    eprintln!("300 ports joined in a burst, all isolated {took:?} after the burst ended");
    assert_no_errors(&mut w);
    assert!(fx.state_json().get("blocked").is_none(), "{}", fx.state_json());
    assert!(flag(&fx, "vnet1") && !flag(&fx, UPLINK));
}

#[test]
fn lost_notifications_end_in_a_full_reconcile() {
    if !lab::root_tests_enabled("lost_notifications_end_in_a_full_reconcile") {
        return;
    }
    let fx = isolated("wlo", 1, Backend::PortIsolation);
    let mut w = Watcher::start(&fx, &["watch"], &[]);
    // The watcher stopped (SIGSTOP) while 100 ports join and their links flap: more
    // notifications than its socket holds.
    w.signal(libc::SIGSTOP);
    let ports = taps(&fx, 100);
    ip_batch(&fx, &enslaving(&ports));
    let mut flaps = String::new();
    for _ in 0..15 {
        for p in &ports {
            flaps += &format!("link set dev {p} up\nlink set dev {p} down\n");
        }
    }
    ip_batch(&fx, &flaps);
    assert_eq!(isolated_among(&fx, &ports), 0);
    w.signal(libc::SIGCONT);
    w.wait_line("link notifications were lost (the socket overflowed)", REPAIR);
    wait_until("the 100 ports isolated", REPAIR, || isolated_among(&fx, &ports) == 100);
    assert!(flag(&fx, "vnet1") && !flag(&fx, UPLINK));
    assert_no_errors(&mut w);
}

#[test]
fn a_watcher_killed_in_a_burst_converges_once_restarted() {
    if !lab::root_tests_enabled("a_watcher_killed_in_a_burst_converges_once_restarted") {
        return;
    }
    let fx = isolated("wki", 1, Backend::PortIsolation);
    let w = Watcher::start(&fx, &["watch"], &[]);
    // 100 taps made beforehand, enslaved in a burst; the watcher is killed once it has
    // isolated some of them, so the rest join while no watcher runs.
    let ports = taps(&fx, 100);
    let enslave = enslaving(&ports);
    let host = fx.lab.host_ns().to_string();
    let batch = std::thread::spawn(move || {
        let mut child = Command::new(lab::IP)
            .args(["-n", &host, "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // Line by line, so the joins spread over the kill.
        for line in enslave.lines() {
            writeln!(stdin, "{line}").unwrap();
            stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(stdin);
        assert!(child.wait().unwrap().success());
    });
    wait_until("some of the burst isolated", REPAIR, || {
        isolated_among(&fx, &ports) >= 10
    });
    let mut w = w;
    assert_no_errors(&mut w);
    w.kill();
    let at_kill = isolated_among(&fx, &ports);
    batch.join().unwrap();
    let open = 100 - isolated_among(&fx, &ports);
    eprintln!("killed with {at_kill} of 100 isolated; {open} open once the burst ended");
    assert!(open > 0, "the burst ended before the kill: nothing left to converge");

    let start = Instant::now();
    let mut w = Watcher::start(&fx, &["watch"], &[]);
    wait_until("the 100 ports isolated", REPAIR, || isolated_among(&fx, &ports) == 100);
    eprintln!("restarted watcher converged in {:?}", start.elapsed());
    let line = w.wait_line("watcher started: reconciled with port-isolation", REPAIR);
    assert!(line.contains(&format!("{open} port(s) changed")), "{line}");
    assert!(flag(&fx, "vnet1") && !flag(&fx, UPLINK));
    assert_no_errors(&mut w);
}

/// Asserts the watcher logged no error: ports joining while it repairs others, or leaving
/// while it sets their flags, are no failure (and must never be blocked as one).
#[track_caller]
fn assert_no_errors(w: &mut Watcher) {
    let errors: Vec<&String> = w.drain().iter().filter(|l| l.contains("] error: ")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn the_old_name_runs_the_watcher_which_follows_firewalld() {
    if !firewalld_tests_enabled("the_old_name_runs_the_watcher_which_follows_firewalld") {
        return;
    }
    let fx = isolated("wfw", 3, Backend::PortIsolation);
    let mut fw = Firewalld::start_alone("wfw", "nftables");
    // Release 0.1's unit ran `watch-firewalld`: the same watcher, with a warning.
    let mut w = Watcher::start(&fx, &["watch-firewalld"], &[fw.env()]);
    w.wait_line("watch-firewalld is the old name of watch", REPAIR);
    w.wait_line("watching firewalld on the system bus", Duration::from_secs(30));
    w.wait_line(
        "watcher started, firewalld is running: reconciled",
        Duration::from_secs(30),
    );

    // Cleared behind our back: the link side repairs it at once, before any reload.
    fx.lab.set_port_isolated("vnet1", false).unwrap();
    wait_until("vnet1 isolated again", REPAIR, || flag(&fx, "vnet1"));
    // firewall-cmd --reload: reconciled, nothing left to do.
    common::backend::ok(fw.cmd(&["--reload"]));
    let line = w.wait_line("firewalld reloaded: reconciled", Duration::from_secs(30));
    assert!(line.contains("port-isolation: 0 port(s) changed"), "{line}");

    // firewalld stops and starts again: both are noticed, the second once it runs.
    fw.stop();
    w.wait_line("firewalld stopped: reconciled", Duration::from_secs(30));
    fw.start_daemon();
    w.wait_line("firewalld started: reconciled", Duration::from_secs(60));
    fx.assert_isolated_ports(&["vnet1", "vnet2"]);
    assert_no_errors(&mut w);
}
