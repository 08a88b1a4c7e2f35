//! Lifting isolation on a real kernel: `bridge-isolation release-all` (what the RPM's
//! `%preun` runs on erase), in a netns lab (docs/design.md §7) with its own state
//! directory, driven through the hooks exactly as VDSM runs them. The watcher, which
//! release 0.1 ran as `watch-firewalld`, is tested in `tests/watch.rs`.

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use std::process::Command;

use bridge_isolation::enforce::nftables::GROUP;
use bridge_isolation_lab::{self as lab, domain_xml, is_vm, NicSpec};
use common::backend::Backend;
use common::{tagged, vm_uuid, Fixture, NET};

const CLI: &str = env!("CARGO_BIN_EXE_bridge-isolation");

/// A lab of three VMs whose network is isolated through the hooks with `backend`, VM 3's
/// vNIC trusted.
fn isolated(tag: &str, backend: Backend) -> Fixture {
    let fx = Fixture::with_backend(tag, 3, backend);
    fx.network_setup(&tagged("true"));
    // VM 3 starts with a trusted vNIC: its port must stay open.
    let nic = NicSpec {
        trusted: true,
        ..NicSpec::of_vm(&fx.vm(3), NET)
    };
    fx.run_vm_point("after_vm_start", 3, domain_xml("vm3", &vm_uuid(3), &[nic]), &[]);
    if backend == Backend::PortIsolation {
        assert_eq!(
            flags(&fx),
            [("eth1", false), ("vnet1", true), ("vnet2", true), ("vnet3", false)]
        );
    }
    fx
}

/// The isolation flag of every port of the bridge.
fn flags(fx: &Fixture) -> Vec<(&'static str, bool)> {
    ["eth1", "vnet1", "vnet2", "vnet3"]
        .into_iter()
        .map(|p| (p, fx.lab.port_isolated(p).unwrap()))
        .collect()
}

/// The files of the state directory, sorted.
fn state_files(fx: &Fixture) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fx.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn release_all_lifts_every_flag_and_forgets_the_state() {
    if !lab::root_tests_enabled("release_all_lifts_every_flag_and_forgets_the_state") {
        return;
    }
    let iso = isolated("rel", Backend::PortIsolation);
    let vms_apart = |a: &str, b: &str| !(is_vm(a) && is_vm(b)) || a == "vm3" || b == "vm3";
    iso.lab.matrix().unwrap().assert_expected(&vms_apart);
    assert_eq!(state_files(&iso), ["reconciled", "state.json", "state.lock"]);

    // Not root: refused, nothing changed.
    let (code, _, err) = output(
        Command::new(lab::IP)
            .args(["netns", "exec", iso.lab.host_ns(), lab::SETPRIV])
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                CLI,
                "release-all",
            ]),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bridge_isolation[cli] error: ") && err.contains("root"),
        "{err}"
    );
    assert_eq!(flags(&iso)[1], ("vnet1", true));

    // Root: every flag cleared, the state forgotten, the host as it was.
    let (code, out, err) = output(&mut iso.cli_command(&["release-all"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("released 1 bridge(s) (port-isolation): 2 port(s) opened"),
        "{out}"
    );
    assert!(
        err.contains("port-isolation: bridge isonet port vnet1 opened (release-all)"),
        "{err}"
    );
    assert_eq!(
        flags(&iso),
        [("eth1", false), ("vnet1", false), ("vnet2", false), ("vnet3", false)]
    );
    assert!(state_files(&iso).is_empty(), "{:?}", state_files(&iso));
    iso.lab.matrix().unwrap().assert_expected(&|_, _| true);

    // Idempotent, and the CLI agrees nothing is managed any more.
    let (code, out, err) = output(&mut iso.cli_command(&["release-all"]));
    assert_eq!(
        (code, out.trim()),
        (0, "nothing recorded: no isolation to lift"),
        "{err}"
    );
    let (code, out, err) = output(&mut iso.cli_command(&["verify"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: 0 isolated bridge(s)"), "{out}");
    // A flag set by someone else afterwards (native port_isolation, an admin) is not ours.
    iso.lab.set_port_isolated("vnet2", true).unwrap();
    let (code, _, err) = output(&mut iso.cli_command(&["release-all"]));
    assert_eq!(code, 0, "{err}");
    assert!(iso.lab.port_isolated("vnet2").unwrap());
}

/// The nftables tables of the lab's host namespace.
fn nft_tables(iso: &Fixture) -> String {
    let out = iso.lab.exec_in_host(&[lab::NFT, "list", "tables"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn release_all_removes_the_nftables_table() {
    if !lab::root_tests_enabled("release_all_removes_the_nftables_table") {
        return;
    }
    let iso = isolated("reln", Backend::Nftables);
    let vms_apart = |a: &str, b: &str| !(is_vm(a) && is_vm(b)) || a == "vm3" || b == "vm3";
    iso.lab.matrix().unwrap().assert_expected(&vms_apart);
    assert!(
        nft_tables(&iso).contains("table bridge bridge_isolation"),
        "{}",
        nft_tables(&iso)
    );
    assert!(flags(&iso).iter().all(|(_, on)| !on), "nftables sets no port flag");
    let groups = || -> Vec<(String, u32)> {
        let ports = iso.lab.bridge_ports().unwrap();
        ports
            .into_iter()
            .map(|p| (p.clone(), iso.lab.port_group(&p).unwrap()))
            .collect()
    };
    let grouped: Vec<String> = groups()
        .into_iter()
        .filter(|(_, g)| *g == GROUP)
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        grouped,
        ["vnet1", "vnet2"],
        "the VM ports but the trusted one are in the gate's group"
    );

    let (code, out, err) = output(&mut iso.cli_command(&["release-all"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("released 1 bridge(s) (nftables"), "{out}");
    assert!(!nft_tables(&iso).contains("bridge_isolation"), "{}", nft_tables(&iso));
    assert!(groups().iter().all(|(_, g)| *g == 0), "{:?}", groups());
    assert!(state_files(&iso).is_empty(), "{:?}", state_files(&iso));
    iso.lab.matrix().unwrap().assert_expected(&|_, _| true);
}
