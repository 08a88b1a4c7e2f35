//! Tests of the lab on a real kernel. They need root; see [`root_tests_enabled`].

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use super::*;

/// Names of namespaces with `prefix`, to prove a lab left nothing behind.
fn leftovers(prefix: &str) -> Vec<String> {
    netns_starting_with(&format!("{prefix}-")).unwrap()
}

#[test]
fn isolation_blocks_vm_to_vm_on_every_protocol() {
    if !root_tests_enabled("isolation_blocks_vm_to_vm_on_every_protocol") {
        return;
    }
    let prefix = unique_prefix("bilab");
    let spec = LabSpec::new(&prefix).with_vms(2);
    let started = Instant::now();
    let lab = Lab::create(&spec).unwrap();
    eprintln!("Lab::create (2 VMs + gw + host): {:?}", started.elapsed());

    assert_eq!(lab.bridge_ports().unwrap(), ["eth1", "vnet1", "vnet2"]);
    let addrs = lab.ip_in_host(&["-j", "addr", "show", "dev", "isonet"]).unwrap();
    assert!(addrs.contains(&link_local(BRIDGE_MAC).to_string()), "{addrs}");
    assert!(!lab.port_isolated("vnet1").unwrap());

    let started = Instant::now();
    let before = lab.matrix().unwrap();
    eprintln!("Lab::matrix, all pass:\n{before}took {:?}", started.elapsed());
    before.assert_expected(&|_, _| true);

    for vm in lab.vms() {
        let out = lab
            .exec_in_host(&[BRIDGE, "link", "set", "dev", &vm.tap, "isolated", "on"])
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(lab.port_isolated(&vm.tap).unwrap());
    }
    let started = Instant::now();
    let after = lab.matrix().unwrap();
    eprintln!("Lab::matrix, VM ports isolated:\n{after}took {:?}", started.elapsed());
    after.assert_expected(&|a, b| !(is_vm(a) && is_vm(b)));

    lab.destroy().unwrap();
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}

#[test]
fn ports_can_be_hotplugged_rebuilt_and_moved() {
    if !root_tests_enabled("ports_can_be_hotplugged_rebuilt_and_moved") {
        return;
    }
    let prefix = unique_prefix("bilab");
    let mut spec = LabSpec::new(&prefix).with_vms(1);
    spec.uplink = "bond0.100".to_string();
    let mut lab = Lab::create(&spec).unwrap();
    let vm2 = lab.spec().numbered_vm(2);
    lab.add_vm(&vm2).unwrap();
    assert!(lab.add_vm(&vm2).is_err(), "the same VM twice");
    assert_eq!(lab.bridge_ports().unwrap(), ["bond0.100", "vnet1", "vnet2"]);

    lab.set_port_isolated("vnet2", true).unwrap();
    assert!(lab.port_isolated("vnet2").unwrap());
    lab.recreate_port("vm2").unwrap();
    assert!(
        !lab.port_isolated("vnet2").unwrap(),
        "a new tap starts without the flag"
    );

    lab.detach_port("vnet2").unwrap();
    assert_eq!(lab.bridge_ports().unwrap(), ["bond0.100", "vnet1"]);
    lab.attach_port("vnet2").unwrap();
    lab.matrix_of(&["vm2", GW]).unwrap().assert_expected(&|_, _| true);

    lab.remove_vm("vm1").unwrap();
    assert!(!netns_exists(&lab.ns_of("vm1")));
    assert_eq!(lab.bridge_ports().unwrap(), ["bond0.100", "vnet2"]);
    drop(lab);
    assert_eq!(leftovers(&prefix), Vec::<String>::new());

    // A lab a killed process left behind.
    let stale = LabSpec::new(&prefix);
    std::mem::forget(Lab::create(&stale).unwrap());
    assert!(Lab::create(&stale).is_err(), "namespaces already exist");
    assert_eq!(Lab::cleanup_stale(&prefix).unwrap().len(), 2);
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}

/// Writes an executable script.
fn script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn hooks_run_like_vdsm_runs_them() {
    if !root_tests_enabled("hooks_run_like_vdsm_runs_them") {
        return;
    }
    let prefix = unique_prefix("bilab");
    let lab = Lab::create(&LabSpec::new(&prefix)).unwrap();
    let hooks = tempfile::tempdir().unwrap();
    let point = hooks.path().join("before_network_setup");
    std::fs::create_dir(&point).unwrap();
    script(
        &point,
        "10_report",
        r#"echo "argv0=$0" >&2
echo "mode=$(stat -c %a "$_hook_json")" >&2
echo "path=$PATH home=${HOME-unset} vmId=${vmId-unset} extra=$extra" >&2
ip link show dev isonet >/dev/null && echo "in-lab" >&2
read line && echo "stdin not empty" >&2
echo "to stdout"
exit 1
"#,
    );
    script(
        &point,
        "20_edit",
        "printf ' ' >> \"$_hook_json\"\necho second >&2\nexit 2\n",
    );
    script(&point, "30_skipped", "echo skipped >&2\n");
    let payload = setup_networks_json(&[("isonet", NetSpec::on_nic("eth1").with_isolation("true"))]);
    let run = run_hook_point(
        lab.host_ns(),
        hooks.path(),
        "before_network_setup",
        Payload::Json(payload.clone()),
        &[("extra".to_string(), "yes".to_string())],
    )
    .unwrap();

    let codes: Vec<(&str, i32)> = run.codes.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    assert_eq!(codes, [("10_report", 1), ("20_edit", 2)]);
    assert!(run.failed);
    let first = point.join("10_report");
    assert!(
        run.stderr.contains(&format!("argv0={}\n", first.display())),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("mode=600\n"), "{}", run.stderr);
    assert!(run
        .stderr
        .contains(&format!("path={HOOK_PATH} home=unset vmId=unset extra=yes\n")));
    assert!(run.stderr.contains("in-lab\n"), "{}", run.stderr);
    assert!(!run.stderr.contains("stdin not empty") && !run.stderr.contains("to stdout"));
    assert_eq!(run.last_stderr, "second\n");
    assert_eq!(run.payload_text(), format!("{payload} "));

    // A VM point: _hook_domxml and vmId from the domain XML; an empty payload works too.
    let point = hooks.path().join("after_vm_start");
    std::fs::create_dir(&point).unwrap();
    script(
        &point,
        "50_env",
        "echo \"$vmId ${_hook_json-none} $(wc -c < \"$_hook_domxml\")\" >&2\n",
    );
    let nic = NicSpec::new("isonet", [0x56, 0x6f, 0, 0, 0, 1]);
    let xml = domain_xml("vm1", "0d1e2f30-4a5b-4c6d-8e7f-8091a2b3c4d5", &[nic]);
    let run = run_hook_point(
        lab.host_ns(),
        hooks.path(),
        "after_vm_start",
        Payload::DomXml(xml.clone()),
        &[],
    )
    .unwrap();
    assert_eq!(
        run.last_stderr,
        format!("0d1e2f30-4a5b-4c6d-8e7f-8091a2b3c4d5 none {}\n", xml.len())
    );
    assert!(!run.failed);
    assert_eq!(run.payload_after, xml.as_bytes());
    let run = run_hook_point(lab.host_ns(), hooks.path(), "after_vm_start", Payload::Empty, &[]).unwrap();
    assert_eq!(run.last_stderr, format!("{LAB_VM_ID} none 0\n"));

    let run = run_hook_point(lab.host_ns(), hooks.path(), "after_vm_destroy", Payload::Empty, &[]).unwrap();
    assert!(run.codes.is_empty() && !run.failed);
    drop(lab);
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}
