//! Hostile and broken input through the real hook binary, run as VDSM runs it in a netns lab
//! (docs/design.md §2 and §7): truncated, empty and non-UTF-8 payloads, entity expansion,
//! names that are not Linux interface names, a 20,000-network request, unknown keys, and
//! state files another user could have planted. Every refusal is one stderr line with exit 2
//! where VDSM aborts and 1 elsewhere, never a panic or a signal, and leaves the payload, the
//! state file and the kernel's port flags exactly as they were. They need root; as another
//! user they skip (or fail under `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`).

#[allow(dead_code)] // each test binary uses some of the shared helpers
mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use bridge_isolation::vdsm::protocol::Point;
use bridge_isolation_lab::{self as lab, domain_xml, interface_xml, NetSpec, NicSpec};
use common::{tagged, vm_uuid, Finished, Fixture, NET, PLAIN, TRUSTED, UPLINK};
use serde_json::{json, Value};

/// The state file as bytes with its inode: a rewrite (even to the same bytes) changes the inode.
fn state_snapshot(fx: &Fixture) -> Option<(Vec<u8>, u64)> {
    let path = fx.state_path();
    let meta = std::fs::symlink_metadata(&path).ok()?;
    Some((std::fs::read(&path).unwrap_or_default(), meta.ino()))
}

/// Asserts the run was a clean refusal: the point's failure code (2 where VDSM aborts, 1
/// elsewhere), no signal, no panic, one stderr line that says `error` and carries `needle`,
/// printable (no control characters), and the payload byte-identical.
#[track_caller]
fn assert_refused(run: &Finished, input: &[u8], needle: &str, what: &str) {
    let point = Point::from_name(&run.point).expect("a hook point");
    assert_eq!(run.signal(), None, "{what} at {}: killed by a signal", run.point);
    assert_eq!(
        run.code(),
        Some(i32::from(point.failure_code())),
        "{what} at {}: stderr:\n{}",
        run.point,
        run.stderr
    );
    let lines = run.lines();
    assert_eq!(lines.len(), 1, "{what} at {}: not one line:\n{}", run.point, run.stderr);
    let line = lines[0];
    assert!(
        line.starts_with(&format!("bridge_isolation[{}] error: ", run.point)),
        "{what}: {line}"
    );
    assert!(!line.contains("panicked"), "{what}: {line}");
    assert!(
        line.to_lowercase().contains(&needle.to_lowercase()),
        "{what} at {}: {needle:?} not in {line}",
        run.point
    );
    assert!(
        !line.chars().any(char::is_control),
        "{what}: control characters in {line:?}"
    );
    assert!(line.len() < 500, "{what}: a {}-byte line", line.len());
    assert!(run.payload_after == input, "{what} at {}: payload changed", run.point);
}

/// A fixture whose network is tagged, with one VM port's flag cleared behind the hooks'
/// back: any reconcile would set it again, so unchanged flags prove nothing reconciled.
fn tagged_with_drift(tag: &str) -> (Fixture, BTreeMap<String, bool>) {
    let fx = Fixture::new(tag, 2);
    fx.network_setup(&tagged("true"));
    fx.lab.set_port_isolated("vnet2", false).expect("clearing vnet2's flag");
    let flags = fx.port_flags();
    assert_eq!(flags.get("vnet2"), Some(&false));
    assert_eq!(flags.get("vnet1"), Some(&true));
    (fx, flags)
}

/// Broken JSON of every kind, each with a word its error line must carry.
fn bad_json() -> Vec<(String, Vec<u8>, &'static str)> {
    let valid = tagged("true");
    let mut cases: Vec<(String, Vec<u8>, &str)> = vec![
        ("empty".into(), Vec::new(), "empty"),
        ("blank".into(), b"  \n\t ".to_vec(), "empty"),
        ("truncated".into(), valid.as_bytes()[..valid.len() / 2].to_vec(), "json"),
        (
            "without its last '}'".into(),
            valid.trim_end().as_bytes()[..valid.trim_end().len() - 1].to_vec(),
            "json",
        ),
        (
            "non-UTF-8".into(),
            [b"\xff\xfe".as_slice(), valid.as_bytes()].concat(),
            "utf-8",
        ),
        (
            "Latin-1 in a name".into(),
            valid
                .replace(NET, "isonet\u{e9}")
                .into_bytes()
                .into_iter()
                .filter(|&b| b != 0xc3)
                .collect(),
            "utf-8",
        ),
        ("NUL bytes".into(), vec![0; 64], "json"),
        ("an array".into(), b"[]".to_vec(), "json"),
        ("null".into(), b"null".to_vec(), "json"),
        ("request not an object".into(), br#"{"request": 1}"#.to_vec(), "json"),
        (
            "networks a list".into(),
            br#"{"request": {"networks": []}}"#.to_vec(),
            "json",
        ),
        ("nested 100,000 deep".into(), "[".repeat(100_000).into_bytes(), "json"),
        (
            "trailing garbage".into(),
            format!("{valid} {{\"request\": {{}}}}").into_bytes(),
            "json",
        ),
    ];
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_str(&valid).unwrap();
        edit(&mut v);
        v.to_string().into_bytes()
    };
    let attrs =
        |key: &'static str, value: Value| move |v: &mut Value| v["request"]["networks"][NET][key] = value.clone();
    cases.push(("vlan as text".into(), with(&attrs("vlan", json!("ten"))), "vlan"));
    cases.push(("vlan 4095".into(), with(&attrs("vlan", json!(4095))), "vlan"));
    cases.push((
        "custom a list".into(),
        with(&attrs("custom", json!(["bridge_isolation"]))),
        "custom",
    ));
    cases.push((
        "a boolean property".into(),
        with(&attrs("custom", json!({"bridge_isolation": true}))),
        "bridge_isolation",
    ));
    cases.push((
        "nic and bonding".into(),
        with(&|v: &mut Value| v["request"]["networks"][NET]["bonding"] = json!("bond0")),
        "both",
    ));
    for (label, name) in bad_names() {
        let mut v: Value = serde_json::from_str(&valid).unwrap();
        let attrs = v["request"]["networks"][NET].take();
        v["request"]["networks"] = json!({ name: attrs });
        cases.push((
            format!("network name {label}"),
            v.to_string().into_bytes(),
            "interface name",
        ));
        for key in ["nic", "bonding"] {
            let mut v: Value = serde_json::from_str(&valid).unwrap();
            let net = &mut v["request"]["networks"][NET];
            net.as_object_mut().unwrap().remove("nic");
            net[key] = json!(name);
            let needle = if name.is_empty() { key } else { "interface name" };
            cases.push((format!("{key} {label}"), v.to_string().into_bytes(), needle));
        }
    }
    cases
}

/// Names that are not Linux interface names, as a hostile payload could carry them.
fn bad_names() -> Vec<(&'static str, &'static str)> {
    vec![
        ("of 16 bytes", "a234567890abcdef"),
        (
            "of 300 bytes",
            concat!(
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            ),
        ),
        ("with a slash", "red/../../etc"),
        ("dot-dot", ".."),
        ("dot", "."),
        ("with a space", "red net"),
        ("with a tab", "red\tnet"),
        ("with a newline", "red\nerror: forged"),
        ("with a carriage return", "red\rnet"),
        ("with ;", "red;reboot"),
        ("with $()", "$(reboot)"),
        ("with backticks", "`reboot`"),
        ("with a pipe", "red|sh"),
        ("with &", "red&"),
        ("with quotes", "red'\""),
        ("with a colon", "eth0:1"),
        ("with a NUL", "red\0net"),
        ("with an escape", "red\u{1b}[2J"),
        ("non-ASCII", "r\u{e9}d"),
        ("empty", ""),
    ]
}

/// Escapes `s` for an XML attribute value (so the payload is well formed and the name
/// itself is what is refused).
fn xml_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
        .replace('\t', "&#9;")
        .replace('\n', "&#10;")
        .replace('\r', "&#13;")
}

/// Broken or hostile XML, each with a word its error line must carry. `live` is VM 1's live
/// domain XML (tap `vnet1`, bridge `isonet`, single quotes).
fn bad_xml(live: &str) -> Vec<(String, Vec<u8>, &'static str)> {
    let lol =
        "<!DOCTYPE domain [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">\
               <!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">\
               <!ENTITY lol4 \"&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;\">]>";
    let mut cases: Vec<(String, Vec<u8>, &str)> = vec![
        ("empty".into(), Vec::new(), "empty"),
        ("blank".into(), b"\n  \n".to_vec(), "empty"),
        ("truncated".into(), live.as_bytes()[..live.len() / 2].to_vec(), "xml"),
        (
            "without its last '>'".into(),
            live.trim_end().as_bytes()[..live.trim_end().len() - 1].to_vec(),
            "xml",
        ),
        (
            "non-UTF-8".into(),
            live.replacen("<name>", "<name>\u{1}", 1)
                .replace('\u{1}', "\u{ff}")
                .into_bytes()
                .into_iter()
                .filter(|&b| b != 0xc3)
                .collect(),
            "utf-8",
        ),
        (
            "UTF-16".into(),
            live.encode_utf16().flat_map(u16::to_le_bytes).collect(),
            "nul",
        ),
        (
            "UTF-16 with a BOM".into(),
            "\u{feff}"
                .encode_utf16()
                .chain(live.encode_utf16())
                .flat_map(u16::to_le_bytes)
                .collect(),
            "utf-8",
        ),
        (
            "billion laughs".into(),
            format!("{lol}<domain>&lol4;</domain>").into_bytes(),
            "doctype",
        ),
        (
            "billion laughs in the domain".into(),
            live.replacen("<domain", &format!("{lol}<domain"), 1).into_bytes(),
            "doctype",
        ),
        (
            "external entity".into(),
            live.replacen(
                "<domain",
                "<!DOCTYPE domain [<!ENTITY xxe SYSTEM \"file:///etc/shadow\">]><domain",
                1,
            )
            .replacen("<name>", "<name>&xxe;", 1)
            .into_bytes(),
            "doctype",
        ),
        (
            "parameter entity".into(),
            b"<!DOCTYPE d [<!ENTITY % p SYSTEM \"http://169.254.169.254/\"> %p;]><domain/>".to_vec(),
            "doctype",
        ),
        (
            "undeclared entity in text".into(),
            live.replacen("<name>", "<name>&xxe;", 1).into_bytes(),
            "xml",
        ),
        (
            "undeclared entity in the bridge".into(),
            live.replace(&format!("bridge='{NET}'"), "bridge='&xxe;'").into_bytes(),
            "xml",
        ),
        ("two roots".into(), format!("{live}<domain/>").into_bytes(), "root"),
        (
            "text after the root".into(),
            format!("{live}trailing").into_bytes(),
            "root",
        ),
        (
            "mismatched end tag".into(),
            live.replacen("</devices>", "</device>", 1).into_bytes(),
            "xml",
        ),
        (
            "nested 100,000 deep".into(),
            format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000)).into_bytes(),
            "nested",
        ),
        (
            "an invalid MAC".into(),
            live.replace("56:6f:4c:ab:00:01", "56:6f:4c:ab:00:zz").into_bytes(),
            "mac",
        ),
        (
            "two <port>".into(),
            live.replace(
                "<target dev='vnet1'/>",
                "<target dev='vnet1'/><port isolated='no'/><port isolated='yes'/>",
            )
            .into_bytes(),
            "port",
        ),
        (
            "two <source>".into(),
            live.replace(
                &format!("<source bridge='{NET}'/>"),
                &format!("<source bridge='{NET}'/><source bridge='other'/>"),
            )
            .into_bytes(),
            "source",
        ),
        (
            "<port isolated='maybe'>".into(),
            live.replace("<target dev='vnet1'/>", "<target dev='vnet1'/><port isolated='maybe'/>")
                .into_bytes(),
            "port",
        ),
    ];
    assert!(live.contains(&format!("<source bridge='{NET}'/>")) && live.contains("<target dev='vnet1'/>"));
    for (label, name) in bad_names() {
        if name.contains('\0') {
            // Not representable in XML at all: covered by the UTF-8 and parser cases.
            continue;
        }
        cases.push((
            format!("<source bridge> {label}"),
            live.replace(
                &format!("<source bridge='{NET}'/>"),
                &format!("<source bridge='{}'/>", xml_attr(name)),
            )
            .into_bytes(),
            "source bridge",
        ));
        cases.push((
            format!("<target dev> {label}"),
            live.replace("<target dev='vnet1'/>", &format!("<target dev='{}'/>", xml_attr(name)))
                .into_bytes(),
            "target dev",
        ));
    }
    cases
}

/// Every network point refuses broken and hostile JSON cleanly and changes nothing.
#[test]
fn network_points_refuse_broken_and_hostile_json() {
    if !lab::root_tests_enabled("network_points_refuse_broken_and_hostile_json") {
        return;
    }
    let (fx, flags) = tagged_with_drift("bijson");
    let state = state_snapshot(&fx);
    let started = Instant::now();
    let mut runs = 0;
    for (what, input, needle) in bad_json() {
        for point in [
            "before_network_setup",
            "after_network_setup",
            "after_network_setup_fail",
        ] {
            let run = fx.run_bytes(point, &input, &[]);
            assert_refused(&run, &input, needle, &what);
            runs += 1;
        }
        assert_eq!(state_snapshot(&fx), state, "{what}: state file changed");
        assert_eq!(fx.port_flags(), flags, "{what}: port flags changed");
    }
    eprintln!("{runs} refusals in {:?}", started.elapsed());
}

/// Every VM and device point refuses broken and hostile XML (and a hostile `vmId`) cleanly
/// and changes nothing.
#[test]
fn vm_and_device_points_refuse_broken_and_hostile_xml() {
    if !lab::root_tests_enabled("vm_and_device_points_refuse_broken_and_hostile_xml") {
        return;
    }
    let (fx, flags) = tagged_with_drift("bixml");
    let state = state_snapshot(&fx);
    let live = domain_xml("vm1", &vm_uuid(1), &[NicSpec::of_vm(&fx.vm(1), NET)]);
    let started = Instant::now();
    let mut runs = 0;
    let mut cases = bad_xml(&live);
    // A device payload too: one <interface>, its name broken.
    let nic = interface_xml(&NicSpec::of_vm(&fx.vm(1), NET));
    cases.push((
        "a device <source bridge> with a slash".into(),
        nic.replace(&format!("bridge='{NET}'"), "bridge='a/b'").into_bytes(),
        "source bridge",
    ));
    for (what, input, needle) in cases {
        for point in Point::ALL.into_iter().filter(|p| !p.is_network()) {
            // after_vm_destroy forgets a VM by vmId whatever its XML says: without one, it
            // can only report the payload.
            let env = if point == Point::AfterVmDestroy {
                Vec::new()
            } else {
                vec![("vmId".to_string(), vm_uuid(1))]
            };
            let run = fx.run_bytes(point.name(), &input, &env);
            assert_refused(&run, &input, needle, &what);
            runs += 1;
        }
        assert_eq!(state_snapshot(&fx), state, "{what}: state file changed");
        assert_eq!(fx.port_flags(), flags, "{what}: port flags changed");
    }
    for vm_id in ["../../etc/passwd", "vm 1", "", "x\ny", &"a".repeat(65)] {
        let input = live.replace(&vm_uuid(1), "not-the-uuid").into_bytes();
        let input = if vm_id.is_empty() {
            live.replace(&format!("<uuid>{}</uuid>", vm_uuid(1)), "").into_bytes()
        } else {
            input
        };
        for point in [Point::AfterVmStart, Point::AfterNicHotplug, Point::AfterVmDestroy] {
            let run = fx.run_bytes(point.name(), &input, &[("vmId".to_string(), vm_id.to_string())]);
            assert_refused(&run, &input, "vmId", &format!("vmId {vm_id:?}"));
        }
    }
    assert_eq!(state_snapshot(&fx), state, "a hostile vmId changed the state file");
    assert_eq!(fx.port_flags(), flags, "a hostile vmId changed port flags");
    eprintln!("{runs} refusals in {:?}", started.elapsed());
}

/// Unknown keys anywhere in the setupNetworks JSON are VDSM's business (it adds attributes
/// between versions): they are ignored, and the request does exactly what it does without
/// them. Duplicate keys resolve as in VDSM's Python (the last one wins).
#[test]
fn unknown_keys_are_ignored() {
    if !lab::root_tests_enabled("unknown_keys_are_ignored") {
        return;
    }
    let fx = Fixture::new("biunknown", 2);
    fx.network_setup(&tagged("true"));
    let state = state_snapshot(&fx);
    let flags = fx.port_flags();
    let mut v: Value = serde_json::from_str(&tagged("true")).unwrap();
    v["futureTopLevel"] = json!({"x": [1, 2, {"y": null}]});
    v["request"]["nameservers"] = json!(["192.0.2.1"]);
    v["request"]["options"]["someNewOption"] = json!(true);
    v["request"]["networks"][NET]["futureAttr"] = json!({"deep": {"er": [true]}});
    v["request"]["networks"][NET]["custom"]["other_property"] = json!("value");
    v["request"]["networks"]["ovirtmgmt"] = json!({"nic": "eth0", "bridged": true, "newKey": 1});
    v["request"]["bondings"] = json!({"bond0": {"nics": ["eth2"], "switch": "legacy", "hwaddr": "x"}});
    let json = v.to_string();
    fx.network_setup(&json);
    assert_eq!(state_snapshot(&fx), state, "unknown keys changed the state");
    assert_eq!(fx.port_flags(), flags);

    fx.network_setup(&common::removed());
    assert!(fx.port_flags().values().all(|&f| !f), "{:?}", fx.port_flags());
    fx.network_setup(&json);
    assert_eq!(fx.port_flags(), flags, "unknown keys kept the request from isolating");

    // {"isonet": tagged, "isonet": removed}: the removal wins, as json.loads does.
    let tagged_attrs = serde_json::to_string(&v["request"]["networks"][NET]).unwrap();
    let dup = format!(
        r#"{{"request": {{"networks": {{"{NET}": {tagged_attrs}, "{NET}": {{"remove": true}}}}, "bondings": {{}}, "options": {{}}}}}}"#
    );
    fx.network_setup(&dup);
    assert!(fx.port_flags().values().all(|&f| !f), "{:?}", fx.port_flags());
}

/// A 20,000-network request is handled in bounded time: refused as a whole (exit 2, one
/// line, nothing changed) when one network in it is bad; accepted untouched when none is
/// tagged; and honoured when all are (the lab's bridge isolated, 20,000 policies recorded
/// once, a re-run changing nothing), then lifted again to an empty policy.
#[test]
fn a_twenty_thousand_network_request() {
    if !lab::root_tests_enabled("a_twenty_thousand_network_request") {
        return;
    }
    const N: usize = 20_000;
    let fx = Fixture::new("bi20k", 2);
    let request = |spec: &dyn Fn(usize) -> NetSpec| {
        let nets: Vec<(String, NetSpec)> = (0..N)
            .map(|i| {
                if i == N / 2 {
                    (NET.to_string(), spec(i))
                } else {
                    (format!("n{i:05}"), spec(i))
                }
            })
            .collect();
        let refs: Vec<(&str, NetSpec)> = nets.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
        lab::setup_networks_json(&refs)
    };
    let on_nic = |i: usize| {
        if i == N / 2 {
            UPLINK.to_string()
        } else {
            format!("e{i:05}")
        }
    };
    let timed = |point: &str, json: &str| {
        let started = Instant::now();
        let run = fx.run_bytes(point, json.as_bytes(), &[]);
        (run, started.elapsed())
    };
    let limit = Duration::from_secs(20);

    let untagged = request(&|i| NetSpec::on_nic(&on_nic(i)));
    assert!(untagged.len() > 2_000_000, "{} bytes", untagged.len());
    let (run, took) = timed("before_network_setup", &untagged);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert!(took < limit, "untagged: {took:?}");
    assert!(!fx.state_path().exists(), "an untagged request created the state file");
    eprintln!("{N} untagged networks: {took:?}");

    let one_bad = request(&|i| {
        let nic = if i == N - 7 { "eth 1".to_string() } else { on_nic(i) };
        NetSpec::on_nic(&nic).with_isolation("true")
    });
    let (run, took) = timed("before_network_setup", &one_bad);
    assert_refused(
        &run,
        one_bad.as_bytes(),
        &format!("network n{:05}", N - 7),
        "one bad network of 20,000",
    );
    assert!(took < limit, "one bad: {took:?}");
    assert!(!fx.state_path().exists(), "a refused request created the state file");
    assert!(fx.port_flags().values().all(|&f| !f), "{:?}", fx.port_flags());
    eprintln!("{N} networks, one bad: {took:?}");

    let all = request(&|i| NetSpec::on_nic(&on_nic(i)).with_isolation("true"));
    for point in ["before_network_setup", "after_network_setup"] {
        let (run, took) = timed(point, &all);
        assert_eq!(
            run.code(),
            Some(0),
            "{point}: {}",
            run.stderr.lines().last().unwrap_or("")
        );
        assert!(run.payload_after == all.as_bytes(), "{point} changed its payload");
        assert!(took < limit, "{point}: {took:?}");
        eprintln!("{point}, {N} tagged networks: {took:?}");
    }
    let flags = fx.port_flags();
    assert_eq!(
        flags,
        BTreeMap::from([("eth1".into(), false), ("vnet1".into(), true), ("vnet2".into(), true)])
    );
    let state = fx.state_json();
    assert_eq!(state["networks"].as_object().unwrap().len(), N);
    assert_eq!(state["networks"][NET]["uplink"], json!(UPLINK));
    let snapshot = state_snapshot(&fx);
    let (run, took) = timed("after_network_setup", &all);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(state_snapshot(&fx), snapshot, "a re-run rewrote the state");
    eprintln!("re-run: {took:?}");

    let removed = request(&|_| NetSpec::removed());
    for point in ["before_network_setup", "after_network_setup"] {
        let (run, took) = timed(point, &removed);
        assert_eq!(
            run.code(),
            Some(0),
            "{point}: {}",
            run.stderr.lines().last().unwrap_or("")
        );
        assert!(took < limit, "{point}: {took:?}");
        eprintln!("{point}, {N} removed: {took:?}");
    }
    assert!(fx.port_flags().values().all(|&f| !f), "{:?}", fx.port_flags());
    let state = fx.state_json();
    assert_eq!(
        (state["networks"].clone(), state["released"].clone()),
        (json!({}), json!([]))
    );
}

/// A state file or directory another user could have planted (owned by another uid,
/// writable by group or others, a symbolic link, a FIFO) is refused with one clear line;
/// nothing is applied, no hook hangs, and the planted file is left as it was.
#[test]
fn planted_state_is_refused() {
    if !lab::root_tests_enabled("planted_state_is_refused") {
        return;
    }
    let (fx, flags) = tagged_with_drift("biplant");
    let path = fx.state_path();
    let dir = fx.state_dir().to_path_buf();
    let real = std::fs::read(&path).unwrap();
    // What a planter would want: the network lifted, its ports opened.
    let planted = br#"{"version": 1, "networks": {}, "released": ["isonet"]}"#;
    let live = domain_xml("vm1", &vm_uuid(1), &[NicSpec::of_vm(&fx.vm(1), NET)]);
    let engine = fx.engine_domain(1, PLAIN);
    let lift = tagged("false");
    let check = |what: &str, needle: &str| {
        let before = std::fs::symlink_metadata(&path)
            .ok()
            .map(|m| (m.ino(), m.mode(), m.uid()));
        let runs = [
            fx.spawn("after_vm_start", live.as_bytes(), &[("vmId".into(), vm_uuid(1))]),
            fx.spawn("before_vm_start", engine.as_bytes(), &[("vmId".into(), vm_uuid(1))]),
            fx.spawn("before_network_setup", lift.as_bytes(), &[]),
            fx.spawn("after_network_setup", lift.as_bytes(), &[]),
        ];
        for run in runs {
            let run = run.wait_at_most(Duration::from_secs(10));
            let input = match run.point.as_str() {
                "after_vm_start" => live.as_bytes(),
                "before_vm_start" => engine.as_bytes(),
                _ => lift.as_bytes(),
            };
            assert_refused(&run, input, needle, what);
        }
        let reconcile = fx.spawn_cli(&["reconcile"]).wait_at_most(Duration::from_secs(10));
        assert_eq!(reconcile.code(), Some(2), "{what}: reconcile: {}", reconcile.stderr);
        assert!(reconcile.stderr.contains(needle), "{what}: {}", reconcile.stderr);
        assert_eq!(fx.port_flags(), flags, "{what}: port flags changed");
        let after = std::fs::symlink_metadata(&path)
            .ok()
            .map(|m| (m.ino(), m.mode(), m.uid()));
        assert_eq!(after, before, "{what}: the planted file was touched");
    };

    std::fs::write(&path, planted).unwrap();
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    check("owned by nobody", "owned by uid 65534");
    std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
    for mode in [0o664, 0o646, 0o666] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        check(&format!("mode {mode:o}"), "writable by group or others");
    }
    std::fs::remove_file(&path).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("state.json");
    std::fs::write(&target, planted).unwrap();
    std::os::unix::fs::symlink(&target, &path).unwrap();
    check("a symbolic link", "symbolic link");
    std::fs::remove_file(&path).unwrap();
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    check("a FIFO", "not a regular file");
    std::fs::remove_file(&path).unwrap();

    std::fs::write(&path, &real).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    for mode in [0o777, 0o1777, 0o775] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        check(&format!("a directory of mode {mode:o}"), "writable by group or others");
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
    check("a directory owned by nobody", "owned by uid 65534");
    std::os::unix::fs::chown(&dir, Some(0), None).unwrap();

    // The real state again: the drift is repaired.
    let run = fx.run_bytes("after_vm_start", live.as_bytes(), &[("vmId".into(), vm_uuid(1))]);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(fx.port_flags().get("vnet2"), Some(&true));
}

/// `after_vm_destroy` with an unreadable last XML still forgets the VM (by `vmId`): a stale
/// trusted record could exempt the next VM given that MAC. It then reports the payload
/// (exit 1, one error line).
#[test]
fn a_broken_destroy_payload_still_forgets_the_vm() {
    if !lab::root_tests_enabled("a_broken_destroy_payload_still_forgets_the_vm") {
        return;
    }
    let mut fx = Fixture::new("bidestroy", 1);
    fx.network_setup(&tagged("true"));
    fx.start_vm(2, TRUSTED);
    assert_eq!(fx.trusted_records().len(), 1);
    fx.lab.remove_vm("vm2").expect("removing vm2's tap");
    for input in [&b""[..], b"<domain", b"\xff\xfe"] {
        let run = fx.run_bytes("after_vm_destroy", input, &[("vmId".into(), vm_uuid(2))]);
        let needle = if input.is_empty() { "empty" } else { "xml" };
        assert_refused(&run, input, needle, "a broken destroy payload");
        assert!(fx.trusted_records().is_empty(), "vm2's record survived");
    }
}
