//! The firewalld backend on a real kernel, against a real firewalld (docs/design.md §7):
//! each test runs its own `dbus-daemon` on a private socket and `firewalld --nofork --nopid
//! --system-config DIR` inside the lab's host namespace, with `DBUS_SYSTEM_BUS_ADDRESS`
//! pointing the hooks at it; the machine's `/etc/firewalld` and system bus are untouched.
//!
//! Checked: the core matrix (every protocol blocked between VMs, everything else passes),
//! the direct rules runtime and permanent (as `firewall-cmd` lists them), restore-nets
//! adding no duplicate, the rules surviving `firewall-cmd --reload` and a firewalld
//! restart, removal leaving nothing; the nftables backend's table surviving
//! `firewall-cmd --reload` under both firewalld backends; and the iptables backend refusing
//! to run beside firewalld without changing anything. They need root; as another user they skip (or fail
//! under `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`).

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use bridge_isolation_lab::{self as lab, is_vm, NetSpec, Payload};
use common::backend::{firewalld_chains as chains, firewalld_rules as rules, firewalld_tests_enabled};
use common::backend::{names, nft_members, ok, without_counters, Backend};
use common::cluster::Cluster;
use common::{removed, restored, tagged, untagged, Fixture, HOOK, NET, PLAIN, TRUSTED, UPLINK};
use serde_json::{json, Value};

/// Three running VMs, then the tag: every protocol blocked between them, uplink and host
/// open; our rules and chains runtime and permanent, nothing else. Restore-nets and
/// `reconcile` change nothing; `firewall-cmd --reload` and a firewalld restart keep the
/// rules and the isolation; removing the network removes them, runtime and permanent.
#[test]
fn firewalld_isolates_and_survives_reload_and_restart() {
    if !firewalld_tests_enabled("firewalld_isolates_and_survives_reload_and_restart") {
        return;
    }
    let mut fx = Fixture::with_backend("bifw", 3, Backend::Firewalld);
    fx.assert_all_pass();
    let empty: [Vec<String>; 4] = Default::default();
    assert_eq!(fx.firewalld().direct(), empty);

    fx.network_setup(&tagged("true"));
    assert_eq!(fx.state_json()["backend"], json!("firewalld"));
    let want = rules(&["vnet1", "vnet2", "vnet3"]);
    let full = [want.clone(), want.clone(), chains(), chains()];
    assert_eq!(fx.firewalld().direct(), full);
    assert_eq!(fx.br_netfilter(), [false, false], "no br_netfilter needed");
    fx.assert_isolation(&[]);

    let state = fx.state_json();
    fx.network_setup(&restored("true"));
    assert_eq!(fx.firewalld().direct(), full, "restore-nets changed the rules");
    assert_eq!(fx.state_json(), state, "restore-nets changed the state");
    assert_eq!(ok(fx.cli(&["reconcile"])).trim(), "firewalld: 0 port(s) changed");
    ok(fx.cli(&["verify"]));

    ok(fx.firewalld().cmd(&["--reload"]));
    assert_eq!(fx.firewalld().direct(), full, "the reload lost rules");
    fx.assert_isolation(&[]);
    assert_eq!(ok(fx.cli(&["reconcile"])).trim(), "firewalld: 0 port(s) changed");

    fx.firewalld_mut().restart();
    assert_eq!(fx.firewalld().direct(), full, "the restart lost rules");
    fx.assert_isolation(&[]);
    ok(fx.cli(&["verify"]));

    fx.network_setup(&removed());
    assert_eq!(fx.firewalld().direct(), empty, "rules outlived the network");
    fx.assert_all_pass();
    let kernel = ok(fx.lab.exec_in_host(&["/usr/sbin/ebtables-save"]).unwrap());
    assert!(!kernel.contains("BRIDGE_ISO"), "ebtables kept our chains: {kernel}");
    let direct_xml = std::fs::read_to_string(fx.firewalld().etc().join("direct.xml")).unwrap_or_default();
    assert!(!direct_xml.contains("BRIDGE_ISO"), "{direct_xml}");
}

/// The `nftables` backend beside a running firewalld, with each of firewalld's backends:
/// three running VMs, then the tag: our `bridge bridge_isolation` table holds their ports,
/// every protocol is blocked between them, uplink and host open, and firewalld has no direct
/// rule of ours. `firewall-cmd --reload` (FlushAllOnReload=yes) keeps the table as it was
/// (same handles, same members, same rule) and the matrix, and `verify` passes (docs/design.md
/// §4: a reload keeps foreign nftables tables).
#[test]
fn nftables_table_survives_firewalld_reload() {
    if !firewalld_tests_enabled("nftables_table_survives_firewalld_reload") {
        return;
    }
    for fw_backend in ["nftables", "iptables"] {
        let fx = Fixture::beside_firewalld("bifwnft", 3, Backend::Nftables, fw_backend);
        fx.network_setup(&tagged("true"));
        assert_eq!(fx.state_json()["backend"], json!("nftables"), "{fw_backend}");
        let table = fx.nft_table().map(without_counters).expect("our table exists");
        assert_eq!(nft_members(&table), names(&["vnet1", "vnet2", "vnet3"]), "{fw_backend}");
        let empty: [Vec<String>; 4] = Default::default();
        assert_eq!(fx.firewalld().direct(), empty, "{fw_backend}: direct rules of ours");
        fx.assert_isolation(&[]);
        ok(fx.cli(&["verify"]));

        ok(fx.firewalld().cmd(&["--reload"]));
        assert_eq!(ok(fx.firewalld().cmd(&["--state"])).trim(), "running");
        let after = fx.nft_table().map(without_counters);
        assert_eq!(
            after.as_ref(),
            Some(&table),
            "{fw_backend}: firewall-cmd --reload changed our table"
        );
        fx.assert_isolation(&[]);
        ok(fx.cli(&["verify"]));
    }
}

/// VMs started through the hooks (flags cleared behind our back): a trusted vNIC has no
/// rule and reaches everyone; a foreign direct rule is left alone; lifting the property
/// removes exactly our rules.
#[test]
fn firewalld_trusted_vnic_and_untag_keep_others_rules() {
    if !firewalld_tests_enabled("firewalld_trusted_vnic_and_untag_keep_others_rules") {
        return;
    }
    let mut fx = Fixture::with_backend("bifwtr", 0, Backend::Firewalld);
    let foreign = [
        "--direct",
        "--add-rule",
        "eb",
        "filter",
        "INPUT",
        "5",
        "-p",
        "0x88b6",
        "-j",
        "DROP",
    ];
    ok(fx.firewalld().cmd(&foreign));
    ok(fx.firewalld().cmd(&[&["--permanent"], &foreign[..]].concat()));
    let others = vec!["eb filter INPUT 5 -p 0x88b6 -j DROP".to_string()];

    fx.network_setup(&tagged("true"));
    fx.start_vm_unflagged(1, PLAIN);
    fx.start_vm_unflagged(2, PLAIN);
    fx.start_vm_unflagged(3, TRUSTED);
    assert_eq!(
        fx.enforced_ports(),
        names(&["vnet1", "vnet2"]),
        "what the backend enforces"
    );
    let mut want = rules(&["vnet1", "vnet2"]);
    want.extend(others.clone());
    want.sort();
    assert_eq!(fx.firewalld().direct(), [want.clone(), want, chains(), chains()]);
    ok(fx.cli(&["verify"]));
    fx.assert_isolation(&["vm3"]);

    fx.network_setup(&untagged());
    assert_eq!(
        fx.firewalld().direct(),
        [others.clone(), others, Vec::new(), Vec::new()],
        "only our rules go"
    );
    fx.assert_all_pass();
}

/// The iptables backend beside a running firewalld: with firewalld's nftables backend it
/// refuses at before_network_setup (exit 2, one line naming the other backends), turns no
/// sysctl on, writes no rule or drop-in, and every pair still passes. The same with
/// firewalld's iptables backend (whose FORWARD would reject bridged traffic just as well).
#[test]
fn iptables_refuses_beside_firewalld() {
    if !firewalld_tests_enabled("iptables_refuses_beside_firewalld") {
        return;
    }
    let mut fx = Fixture::beside_firewalld("bifwipt", 2, Backend::Iptables, "nftables");
    for backend in ["nftables", "iptables"] {
        if backend == "iptables" {
            fx.firewalld_mut().restart_with_backend("iptables");
            let saved = ok(fx.lab.exec_in_host(&["/usr/sbin/iptables-save"]).unwrap());
            assert!(
                saved.contains("FORWARD_ZONES"),
                "firewalld runs on iptables now: {saved}"
            );
        }
        let run = fx.run("before_network_setup", Payload::Json(tagged("true")), &[]);
        assert_eq!(run.codes, [(HOOK.to_string(), 2)], "{backend}: {}", run.stderr);
        // VDSM shows the last script's stderr: one error line, last, saying why and what to use.
        let errors: Vec<&str> = run.last_stderr.lines().filter(|l| l.contains("] error: ")).collect();
        assert_eq!(errors.len(), 1, "one error line: {}", run.last_stderr);
        assert_eq!(run.last_stderr.lines().last(), Some(errors[0]));
        assert!(
            errors[0].contains("firewalld is running") && errors[0].contains("port-isolation, nftables or firewalld"),
            "{}",
            errors[0]
        );
        assert_eq!(fx.br_netfilter(), [false, false], "{backend}: a sysctl changed");
        for save in ["/usr/sbin/iptables-save", "/usr/sbin/ip6tables-save"] {
            let saved = ok(fx.lab.exec_in_host(&[save]).unwrap());
            assert!(!saved.contains("BRIDGE-ISO"), "{backend}: {saved}");
        }
        assert!(
            std::fs::read_dir(fx.dropin_dir()).unwrap().next().is_none(),
            "{backend}: a drop-in was written"
        );
        fx.assert_all_pass();
    }
}

/// Cross-host isolation (issue 7) with the firewalld backend on the two-host fabric: the
/// peer filter is `eb` direct rules (runtime and permanent) instead of the nftables table.
/// VM1@h1 and VM2@h2 are blocked from each other, every VM reaches the gateway and hosts,
/// the router VM (trusted vNIC on h2, trusted MAC on h1) reaches everyone; removal and
/// release-all leave no rule.
#[test]
fn firewalld_blocks_peers_across_hosts() {
    if !firewalld_tests_enabled("firewalld_blocks_peers_across_hosts") {
        return;
    }
    const PEERS: &str = "bridge_isolation_peer_macs";
    const TRUSTED_MACS: &str = "bridge_isolation_trusted_macs";
    let mut c = Cluster::with_backend("xhfw", Backend::Firewalld);
    let h1_net = NetSpec::on_nic(UPLINK)
        .with_isolation("true")
        .with_custom(PEERS, "56:6f:4c:ab:00:00-56:6f:4c:ab:00:ff")
        .with_custom(TRUSTED_MACS, "56:6f:4c:ab:00:04");
    let h2_net = NetSpec::on_nic(UPLINK)
        .with_isolation("true")
        .with_custom(PEERS, "56:6f:4c:ab:00:00/40");
    c.setup("h1", h1_net);
    c.setup("h2", h2_net);
    for (host, n, trusted) in [("h1", 1, false), ("h1", 3, false), ("h2", 2, false), ("h2", 4, true)] {
        c.start_vm_unflagged(host, n, trusted);
    }

    let is_host = |n: &str| c.fabric.is_host(n);
    let expected = |a: &str, b: &str| {
        let vm = |n: &str| is_vm(n) && !is_host(n);
        !(vm(a) && vm(b)) || a == "vm4" || b == "vm4"
    };
    c.fabric.matrix().expect("probing").assert_expected(&expected);

    let peers = |host: &str| c.direct_part(host, "BRIDGE_PEERS_");
    let mut h1 = vec![
        format!("eb filter FORWARD 0 -i {UPLINK} -j BRIDGE_PEERS_{NET}"),
        format!("eb filter BRIDGE_PEERS_{NET} 0 -s 56:6f:4c:ab:00:04 -j RETURN"),
        format!("eb filter BRIDGE_PEERS_{NET} 1 -s 56:6f:4c:ab:00:00/ff:ff:ff:ff:ff:00 -j DROP"),
    ];
    h1.sort();
    assert_eq!(peers("h1"), h1);
    let mut h2 = vec![
        format!("eb filter FORWARD 0 -i {UPLINK} -j BRIDGE_PEERS_{NET}"),
        format!("eb filter BRIDGE_PEERS_{NET} 0 -o vnet4 -j RETURN"),
        format!("eb filter BRIDGE_PEERS_{NET} 1 -s 56:6f:4c:ab:00:00/ff:ff:ff:ff:ff:00 -j DROP"),
    ];
    h2.sort();
    assert_eq!(peers("h2"), h2);
    for host in ["h1", "h2"] {
        assert!(
            c.peers_table(host).is_none(),
            "{host}: the nft table is not used with firewalld"
        );
    }

    // status counts what the DROP rules took (the matrix sent VM2@h2 -> VM1@h1).
    let v: Value = serde_json::from_str(&ok(c.cli("h1", &["status", "--json"]))).unwrap();
    assert!(v["cross_host"][NET]["drops"]["packets"].as_u64().unwrap() > 0, "{v}");
    // verify: quiet when converged; a DROP rule removed behind our back is reported (exit
    // 1) and a reconcile puts it back.
    ok(c.cli("h1", &["verify"]));
    let chain = format!("BRIDGE_PEERS_{NET}");
    let drop_rule = ["1", "-s", "56:6f:4c:ab:00:00/ff:ff:ff:ff:ff:00", "-j", "DROP"];
    let mut remove = vec!["--direct", "--remove-rule", "eb", "filter", &chain];
    remove.extend(drop_rule);
    ok(c.firewalld("h1").cmd(&remove));
    let out = c.cli("h1", &["verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "drift: cross-host (firewalld direct rules): runtime needs addRule eb filter {chain} {}",
            drop_rule.join(" ")
        )),
        "{text}"
    );
    ok(c.cli("h1", &["reconcile"]));
    ok(c.cli("h1", &["verify"]));

    // Removal on h1, release-all on h2: no rule of ours left, runtime or permanent.
    c.setup("h1", NetSpec::removed());
    let mut release = c.cli_command("h2", &["release-all"]);
    ok(release.env_remove("BRIDGE_ISOLATION_BACKEND").output().unwrap());
    for fw in [c.firewalld("h1"), c.firewalld("h2")] {
        let empty: [Vec<String>; 4] = Default::default();
        assert_eq!(fw.direct(), empty);
    }
    c.fabric.matrix().expect("probing").assert_expected(&|_, _| true);
}

/// `bridge_isolation_uplink_macs` (issue 13, item 7) with the firewalld backend: chain
/// `BRIDGE_UPLINK_isonet` (runtime and permanent) lets only the gateway from the uplink
/// reach untrusted VM1@h1, on every protocol; VM2@h2 with a custom MAC outside the peer
/// ranges, and h2 itself, are dropped; trusted VM3@h1 still gets their frames; lifting the
/// property removes the chain and keeps the peer chain; untagging removes everything.
#[test]
fn firewalld_uplink_macs_admit_only_the_listed_sources() {
    if !firewalld_tests_enabled("firewalld_uplink_macs_admit_only_the_listed_sources") {
        return;
    }
    let mut c = Cluster::with_backend("xhfu", Backend::Firewalld);
    let gw = lab::format_mac(lab::GW_MAC);
    let peers = || {
        NetSpec::on_nic(UPLINK)
            .with_isolation("true")
            .with_custom("bridge_isolation_peer_macs", "56:6f:4c:ab:00:00/40")
    };
    c.setup("h1", peers().with_custom("bridge_isolation_uplink_macs", &gw));
    c.setup("h2", NetSpec::on_nic(UPLINK).with_isolation("true"));
    let custom = lab::VmSpec::new(
        "vm2",
        "vnet2",
        [0x02, 0xc0, 0xff, 0xee, 0x00, 0x02],
        "10.77.0.12".parse().unwrap(),
    );
    c.start_unflagged("h2", 2, custom, false);
    for (n, trusted) in [(1, false), (3, true)] {
        c.start_vm_unflagged("h1", n, trusted);
    }
    // As tests/crosshost.rs: nothing from the uplink side but the gateway reaches VM1 (a raw
    // frame goes one way, a ping or ARP needs the answer too).
    let dropped = |src: &str, dst: &str| dst == "vm1" && matches!(src, "vm2" | "h2");
    let expected = |a: &str, b: &str, p: lab::Protocol| !dropped(a, b) && (p == lab::Protocol::Raw || !dropped(b, a));
    c.fabric.matrix().expect("probing").assert_each(&expected);

    let mut want = vec![
        format!("eb filter FORWARD 0 -i {UPLINK} -j BRIDGE_UPLINK_{NET}"),
        format!("eb filter BRIDGE_UPLINK_{NET} 0 -o vnet3 -j RETURN"),
        format!("eb filter BRIDGE_UPLINK_{NET} 0 -s {gw} -j RETURN"),
        format!("eb filter BRIDGE_UPLINK_{NET} 1 -j DROP"),
    ];
    want.sort();
    assert_eq!(c.direct_part("h1", "BRIDGE_UPLINK_"), want);
    assert!(c.peers_table("h1").is_none());
    let v: Value = serde_json::from_str(&ok(c.cli("h1", &["status", "--json"]))).unwrap();
    let status = &v["cross_host"][NET];
    assert_eq!(status["uplink_macs"], json!([format!("{gw}-{gw}")]));
    assert!(status["uplink_drops"]["packets"].as_u64().unwrap() > 0, "{v}");
    ok(c.cli("h1", &["verify"]));

    // Lifted: the allow-list chain goes, the peer chain stays; VM2 reaches VM1 again.
    c.setup("h1", peers());
    assert!(!c.direct_part("h1", "BRIDGE_PEERS_").is_empty());
    let [runtime, permanent, ..] = c.firewalld("h1").direct();
    assert!(
        !runtime.iter().chain(&permanent).any(|l| l.contains("BRIDGE_UPLINK_")),
        "{runtime:?}"
    );
    c.fabric.matrix().expect("probing").assert_expected(&|_, _| true);
    // Untagged: nothing of ours left.
    c.setup("h1", NetSpec::on_nic(UPLINK));
    assert_eq!(c.firewalld("h1").direct(), <[Vec<String>; 4]>::default());
}
