//! Which VM owns each port, on a real kernel: the VM hooks record each tap's VM (id and
//! name) and vNIC (guest MAC); `status` shows them (a VM column; `vm_id`, `vm_name`,
//! `vnic_mac` and `owner` in `--json`), a port that joined without a hook as `unknown`, and
//! never a record about an earlier tap of the same name. A destroyed VM leaves no record:
//! `after_vm_destroy` removes it, and a root reconcile forgets a VM whose taps are all gone
//! without one. They need root; as another user they skip (or fail under
//! `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`).

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use std::path::PathBuf;

use bridge_isolation_lab::{self as lab, interface_xml, NicSpec};
use serde_json::Value;

use common::{tagged, vm_uuid, Fixture, NET, OWNERS, PLAIN, TRUSTED, UPLINK};

/// The ports of `NET` in `status --json`, by name.
fn ports(fx: &Fixture) -> std::collections::BTreeMap<String, Value> {
    let report = fx.status_json();
    let bridge = report["bridges"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["bridge"] == NET))
        .unwrap_or_else(|| panic!("no bridge {NET} in {report:#}"))
        .clone();
    bridge["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| (p["port"].as_str().expect("port name").to_string(), p.clone()))
        .collect()
}

/// The owner fields of a port: (owner, vm_id, vm_name, vnic_mac), absent ones as "".
fn owner_of(port: &Value) -> [String; 4] {
    ["owner", "vm_id", "vm_name", "vnic_mac"].map(|k| port[k].as_str().unwrap_or_default().to_string())
}

fn owners_dir(fx: &Fixture) -> PathBuf {
    fx.dropin_dir().join(OWNERS)
}

fn record_files(fx: &Fixture) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(owners_dir(fx))
        .map(|d| d.map(|e| e.unwrap().file_name().into_string().unwrap()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn reconcile(fx: &Fixture) {
    let out = fx.cli(&["reconcile"]);
    assert!(
        out.status.success(),
        "reconcile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// VMs started through the hooks show their VM and vNIC, a trusted one too; a vNIC
/// hotplugged into a running VM is `unknown` until a device payload names its tap (an
/// update), then shows that VM's name (the device payload has none); a port that joined
/// without any hook is `unknown`; the uplink has no owner.
#[test]
fn status_names_the_vm_and_vnic_of_each_port() {
    if !lab::root_tests_enabled("status_names_the_vm_and_vnic_of_each_port") {
        return;
    }
    let mut fx = Fixture::new("biowner", 0);
    fx.network_setup(&tagged("true"));
    fx.start_vm(1, PLAIN);
    fx.start_vm(2, TRUSTED);
    // A second vNIC hotplugged into VM 1 (VM 3's tap and MAC, VM 1's vmId), as VDSM does it:
    // after_nic_hotplug names no tap, and the lab has no qemu process to tell.
    fx.hotplug_into(1, 3, PLAIN);
    assert_eq!(owner_of(&ports(&fx)[&fx.vm(3).tap])[0], "unknown");
    // An updateDevice of it: its XML names the tap.
    let live = NicSpec {
        tap: Some(fx.vm(3).tap),
        ..fx.engine_nic(3, PLAIN)
    };
    fx.run_vm_point("after_update_device", 1, interface_xml(&live), &[]);
    // Plugged by hand (plain `ip link set master`): no hook, no qemu process.
    fx.lab.add_vm(&fx.vm(4)).expect("plugging VM 4");
    reconcile(&fx);
    fx.assert_isolation(&["vm2"]);

    let ports = ports(&fx);
    let mac = |n: u8| bridge_isolation::model::mac::Mac(fx.vm(n).guest_mac).to_string();
    let name = |n: u8| fx.vm(n).name;
    let hook = |vm: u8, nic: u8| ["hook".to_string(), vm_uuid(vm), name(vm), mac(nic)];
    assert_eq!(owner_of(&ports[&fx.vm(1).tap]), hook(1, 1));
    assert_eq!(owner_of(&ports[&fx.vm(2).tap]), hook(2, 2));
    assert_eq!(ports[&fx.vm(2).tap]["role"], "trusted");
    assert_eq!(
        owner_of(&ports[&fx.vm(3).tap]),
        hook(1, 3),
        "the updated vNIC is VM 1's"
    );
    let unknown = ["unknown".to_string(), String::new(), String::new(), String::new()];
    assert_eq!(owner_of(&ports[&fx.vm(4).tap]), unknown);
    assert_eq!(
        owner_of(&ports[UPLINK]),
        [(); 4].map(|()| String::new()),
        "the uplink has no owner"
    );
    let trusted = &fx.status_json()["trusted"][0];
    assert_eq!(
        (trusted["vm"].as_str(), trusted["vm_name"].as_str()),
        (Some(&*vm_uuid(2)), Some(&*name(2)))
    );

    // The table: a VM column, last.
    let table = String::from_utf8(fx.cli(&["status"]).stdout).unwrap();
    let row = |tap: &str| -> Vec<String> {
        let line = table.lines().find(|l| l.split_whitespace().nth(2) == Some(tap));
        line.unwrap_or_else(|| panic!("no row for {tap}:\n{table}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert!(table.lines().any(|l| l.ends_with("DRIFT  VM")), "{table}");
    assert_eq!(row(&fx.vm(1).tap).last(), Some(&name(1)), "{table}");
    assert_eq!(row(&fx.vm(3).tap).last(), Some(&name(1)), "{table}");
    assert_eq!(
        row(&fx.vm(4).tap).last().map(String::as_str),
        Some("unknown"),
        "{table}"
    );
    assert_eq!(row(UPLINK).last().map(String::as_str), Some("-"), "{table}");
    assert!(table.contains(&format!("(VM {}, {})", name(2), vm_uuid(2))), "{table}");
}

/// `after_vm_destroy` removes the VM's record; a VM whose taps vanished without it (a crash)
/// is forgotten by the next root reconcile; and a tap of the same name made later (another
/// VM's) is never shown under the VM whose record names it.
#[test]
fn a_destroyed_vm_leaves_no_record_and_a_stale_one_names_nobody() {
    if !lab::root_tests_enabled("a_destroyed_vm_leaves_no_record_and_a_stale_one_names_nobody") {
        return;
    }
    let mut fx = Fixture::new("biownst", 0);
    fx.network_setup(&tagged("true"));
    for n in 1..=3 {
        fx.start_vm(n, PLAIN);
    }
    let file = |n: u8| format!("{}.json", vm_uuid(n));
    let mut all = vec![file(1), file(2), file(3)];
    all.sort();
    assert_eq!(record_files(&fx), all);

    fx.run_vm_point("after_vm_destroy", 1, fx.engine_domain(1, PLAIN), &[]);
    fx.lab.remove_vm(&fx.vm(1).name).expect("VM 1's tap goes with it");
    assert!(!record_files(&fx).contains(&file(1)), "after_vm_destroy removed it");

    // VM 2's qemu dies with no hook; a new tap takes its name (another interface index).
    fx.lab.remove_vm(&fx.vm(2).name).unwrap();
    fx.lab.add_vm(&fx.vm(2)).unwrap();
    assert_eq!(
        owner_of(&ports(&fx)[&fx.vm(2).tap])[0],
        "unknown",
        "the stale record names nobody"
    );
    assert!(record_files(&fx).contains(&file(2)), "not pruned yet");

    // VM 3 vanishes without a hook too; a root reconcile forgets both.
    fx.lab.remove_vm(&fx.vm(3).name).unwrap();
    reconcile(&fx);
    assert!(record_files(&fx).is_empty(), "{:?}", record_files(&fx));
}

/// Unmounts the tmpfs it names when dropped (also when an assertion fails).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("/usr/bin/umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The owner records' file system full (ENOSPC): the hooks still start the VM isolated and
/// exit 0, say once why `status` cannot name it, and `status` shows `unknown` there.
#[test]
fn a_full_owner_directory_fails_nothing() {
    if !lab::root_tests_enabled("a_full_owner_directory_fails_nothing") {
        return;
    }
    let mut fx = Fixture::new("biownfull", 0);
    let dir = owners_dir(&fx);
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = std::process::Command::new("/usr/bin/mount")
        .args(["-t", "tmpfs", "-o", "size=4k,mode=0755", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a 4 KiB tmpfs on {}", dir.display());
    let _unmount = Mounted(dir.clone());
    let filler = std::fs::write(dir.join(".filler"), vec![0u8; 64 * 1024]);
    assert_eq!(filler.unwrap_err().raw_os_error(), Some(libc::ENOSPC));

    fx.network_setup(&tagged("true"));
    fx.start_vm(1, PLAIN);
    fx.start_vm(2, PLAIN);
    fx.assert_isolation(&[]);
    assert!(
        record_files(&fx).iter().all(|f| f.starts_with('.')),
        "{:?}",
        record_files(&fx)
    );

    let live = NicSpec {
        tap: Some(fx.vm(1).tap),
        ..fx.engine_nic(1, PLAIN)
    };
    let xml = bridge_isolation_lab::domain_xml(&fx.vm(1).name, &vm_uuid(1), &[live]);
    let run = fx.run_vm_point("after_vm_start", 1, xml, &[]);
    let said: Vec<&str> = run.stderr.lines().filter(|l| l.contains("cannot name VM")).collect();
    assert_eq!(said.len(), 1, "{}", run.stderr);
    assert!(said[0].contains("No space left on device"), "{}", run.stderr);
    assert_eq!(owner_of(&ports(&fx)[&fx.vm(1).tap])[0], "unknown");
}
