//! Generated tests (proptest) of the payload parsers and the XML rewrite, through the public
//! API only: `setup::parse` and `domain::parse` never panic, whatever the bytes; the rewrite
//! keeps a document well formed, changes exactly the interfaces whose `<port>` must change,
//! and within those only the `<port>` element; every byte outside them stays as it was.

use bridge_isolation::vdsm::domain::{self, Document, Interface, PortWish};
use bridge_isolation::vdsm::setup;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Map, Value};

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------
// setupNetworks JSON

/// Keys VDSM and this project use, plus a few strangers.
const JSON_KEYS: &[&str] = &[
    "request",
    "networks",
    "bondings",
    "options",
    "custom",
    "bridge_isolation",
    "nic",
    "bonding",
    "vlan",
    "bridged",
    "switch",
    "remove",
    "_inRollback",
    "mtu",
    "isonet",
    "red",
    "",
    "x/y",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            "true", "false", "legacy", "ovs", "eth1", "bond0", "", "a b", "..", "True"
        ])
        .prop_map(|s| json!(s)),
        "\\PC{0,20}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(JSON_KEYS), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Map<_, _>>())),
        ]
    })
}

/// A request shaped like VDSM's, with arbitrary attributes and values in it.
fn setup_request() -> impl Strategy<Value = Value> {
    let attrs = prop::collection::vec((prop::sample::select(JSON_KEYS), json_value()), 0..6);
    let networks = prop::collection::vec((prop::sample::select(JSON_KEYS), attrs), 0..4);
    (networks, json_value()).prop_map(|(networks, options)| {
        let networks: Map<String, Value> = networks
            .into_iter()
            .map(|(name, attrs)| {
                let attrs: Map<String, Value> = attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                (name.to_string(), Value::Object(attrs))
            })
            .collect();
        json!({"request": {"networks": networks, "bondings": {}, "options": options}})
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn setup_parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = setup::parse(&bytes);
    }

    #[test]
    fn setup_parse_never_panics_on_json(value in json_value()) {
        let _ = setup::parse(value.to_string().as_bytes());
    }

    /// Whatever the attributes, a parse either refuses or yields, per network, a policy whose
    /// bridge is that network and whose names are Linux interface names.
    #[test]
    fn setup_parse_yields_only_valid_names(request in setup_request()) {
        let text = request.to_string();
        if let Ok(parsed) = setup::parse(text.as_bytes()) {
            for (name, change) in parsed.networks {
                if let bridge_isolation::model::policy::NetworkChange::Isolate(policy) = change {
                    prop_assert_eq!(&policy.bridge, &name);
                    prop_assert!(bridge_isolation::model::ifname::validate(&policy.bridge).is_ok());
                    if let Some(uplink) = &policy.uplink {
                        prop_assert!(bridge_isolation::model::ifname::validate(uplink).is_ok(), "{}", uplink);
                    }
                }
            }
        }
    }

    /// Cutting a valid request anywhere never panics, and is refused unless what is left is
    /// still a whole JSON document.
    #[test]
    fn setup_parse_refuses_truncations(request in setup_request(), cut in any::<prop::sample::Index>()) {
        let text = request.to_string();
        let at = cut.index(text.len());
        let prefix = &text.as_bytes()[..at];
        let parsed = setup::parse(prefix);
        if serde_json::from_slice::<Value>(prefix).is_err() {
            prop_assert!(parsed.is_err());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Domain XML: parse

/// Pieces of XML, valid and not, glued at random.
fn xml_soup() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "<domain>",
        "</domain>",
        "<devices>",
        "</devices>",
        "<interface type='bridge'>",
        "<interface type=\"bridge\"/>",
        "</interface>",
        "<source bridge='red'/>",
        "<source bridge='a/b'/>",
        "<mac address='56:6f:1a:00:00:01'/>",
        "<mac address='zz'/>",
        "<target dev='vnet0'/>",
        "<port isolated='yes'/>",
        "<port isolated='no'>",
        "</port>",
        "<port/>",
        "<uuid>",
        "</uuid>",
        "<metadata>",
        "</metadata>",
        "<ovirt-vm:device mac_address='56:6f:1a:00:00:01'>",
        "</ovirt-vm:device>",
        "<ovirt-vm:bridge_isolation_trusted>",
        "</ovirt-vm:bridge_isolation_trusted>",
        "true",
        "maybe",
        "<!-- c -->",
        "<![CDATA[x]]>",
        "<?pi x?>",
        "<!DOCTYPE d>",
        "&amp;",
        "&lol;",
        "&#0;",
        "&#x110000;",
        "\n  ",
        " ",
        "<",
        ">",
        "/>",
        "'",
        "\"",
        "=",
        "\u{0}",
        "\u{feff}",
        "é",
    ]);
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn domain_parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = domain::parse(&bytes);
    }

    #[test]
    fn domain_parse_never_panics_on_strings(text in "\\PC{0,300}") {
        let _ = domain::parse(text.as_bytes());
    }

    /// Random XML soups: parse never panics, and when it accepts one, every rewrite of it
    /// parses again, with the same interfaces.
    #[test]
    fn xml_soups_parse_and_rewrite_safely(text in xml_soup(), wishes in prop::collection::vec(wish(), 0..8)) {
        if let Ok(doc) = domain::parse(text.as_bytes()) {
            let wish_of = |i: &Interface| wishes.get(index_of(&doc, i)).copied().unwrap_or(PortWish::Keep);
            if let Some(out) = domain::rewrite(text.as_bytes(), &doc, wish_of) {
                let again = domain::parse(&out);
                prop_assert!(again.is_ok(), "{:?} -> {:?}: {:?}", text, String::from_utf8_lossy(&out), again);
                prop_assert_eq!(again.unwrap().interfaces.len(), doc.interfaces.len());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Domain XML: rewrite

fn wish() -> impl Strategy<Value = PortWish> {
    prop_oneof![Just(PortWish::Keep), Just(PortWish::Isolated), Just(PortWish::Open)]
}

fn index_of(doc: &Document, iface: &Interface) -> usize {
    doc.interfaces
        .iter()
        .position(|i| std::ptr::eq(i, iface))
        .expect("rewrite passes the document's own interfaces")
}

/// One generated `<interface>`: its text and what parsing it must find.
#[derive(Clone, Debug)]
struct Nic {
    text: String,
    port: Option<bool>,
}

fn space() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", " ", "\n", "\n  ", "\n    ", "\n\t\t", "\r\n  ", "  \n      "]).prop_map(String::from)
}

fn quote() -> impl Strategy<Value = char> {
    prop::sample::select(vec!['\'', '"'])
}

/// A `<port>` element: `isolated` yes, no or absent, in several spellings.
fn port() -> impl Strategy<Value = (String, Option<bool>)> {
    (
        prop::sample::select(vec![Some("yes"), Some("no"), None]),
        quote(),
        prop::sample::select(vec![0u8, 1, 2]),
    )
        .prop_map(|(isolated, q, form)| {
            let attr = isolated.map_or(String::new(), |v| format!(" isolated={q}{v}{q}"));
            let text = match form {
                0 => format!("<port{attr}/>"),
                1 => format!("<port{attr} />"),
                _ => format!("<port{attr}></port>"),
            };
            (text, isolated.map(|v| v == "yes"))
        })
}

fn nic() -> impl Strategy<Value = Nic> {
    let children = prop::collection::vec(
        prop::sample::select(vec![
            "<source bridge='red'/>",
            "<source bridge=\"blue\"></source>",
            "<mac address='56:6f:1a:00:00:07'/>",
            "<model type='virtio'/>",
            "<alias name='ua-1'/>",
            "<target dev='vnet7'/>",
            "<!-- a comment -->",
            "<?pi x?>",
            "<link state='up'/>",
            "<driver name='vhost'><host csum='off'/></driver>",
            "<filterref filter='clean-traffic'><parameter name='IP' value='1.2.3.4'/></filterref>",
            "<bandwidth><inbound average='1000'/></bandwidth>",
            "<mtu size='1500'/>",
            "<![CDATA[ ]]>",
        ]),
        0..6,
    );
    (
        prop::sample::select(vec!["bridge", "network", "direct"]),
        quote(),
        children,
        prop::option::of((port(), any::<prop::sample::Index>())),
        prop::collection::vec(space(), 8),
        space(),
        any::<bool>(),
    )
        .prop_map(|(kind, q, children, port, spaces, last, self_closing)| {
            // One of each of source, mac and target, as libvirt writes them.
            let mut seen = std::collections::BTreeSet::new();
            let mut children: Vec<String> = children
                .into_iter()
                .filter(|c| {
                    let name = c[1..].split([' ', '>', '/']).next().unwrap_or("").to_string();
                    !matches!(name.as_str(), "source" | "mac" | "target") || seen.insert(name)
                })
                .map(str::to_string)
                .collect();
            let mut isolated = None;
            if let Some(((text, value), at)) = port {
                children.insert(at.index(children.len() + 1), text);
                isolated = value;
            }
            let open = format!("<interface type={q}{kind}{q}");
            let text = if children.is_empty() && self_closing {
                format!("{open}/>")
            } else {
                let body: String = children
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{}{c}", spaces[i % 8]))
                    .collect();
                format!("{open}>{body}{last}</interface>")
            };
            Nic { text, port: isolated }
        })
}

/// A document: the literal text between interfaces, and the interfaces; `segments` has one
/// more element than `nics`.
#[derive(Clone, Debug)]
struct Doc {
    segments: Vec<String>,
    nics: Vec<Nic>,
}

impl Doc {
    fn text(&self) -> String {
        let mut out = self.segments[0].clone();
        for (nic, seg) in self.nics.iter().zip(&self.segments[1..]) {
            out.push_str(&nic.text);
            out.push_str(seg);
        }
        out
    }
}

fn doc() -> impl Strategy<Value = Doc> {
    let filler = prop::sample::select(vec![
        "",
        "\n    ",
        "<disk type='file'><source file='/x'/></disk>",
        "<!-- <interface type='bridge'> in a comment -->",
        "<controller type='pci'/>",
        "<graphics type='vnc' passwd='&amp;&lt;'/>",
        "<![CDATA[<interface>]]>",
    ]);
    let between = prop::collection::vec((filler, space()), 0..3)
        .prop_map(|v| v.into_iter().map(|(f, s)| format!("{s}{f}")).collect::<String>());
    let metadata = "<metadata><ovirt-vm:vm xmlns:ovirt-vm=\"http://ovirt.org/vm/1.0\"><ovirt-vm:device \
                    mac_address=\"56:6f:1a:00:00:07\"><ovirt-vm:custom><ovirt-vm:other>x</ovirt-vm:other>\
                    </ovirt-vm:custom></ovirt-vm:device></ovirt-vm:vm></metadata>";
    prop_oneof![
        // A whole domain with several vNICs.
        (
            prop::collection::vec(nic(), 0..5),
            prop::collection::vec(between, 6),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(move |(nics, between, decl, meta)| {
                let head = format!(
                    "{}<domain type='kvm'>\n  <name>vm</name>\n  <uuid>4d3a1f52</uuid>\n  {}<devices>",
                    if decl {
                        "<?xml version='1.0' encoding='utf-8'?>\n"
                    } else {
                        ""
                    },
                    if meta { metadata } else { "" },
                );
                let mut segments = vec![format!("{head}{}", between[0])];
                for i in 1..nics.len() {
                    segments.push(between[i % 6].clone());
                }
                segments.push(format!("{}\n  </devices>\n</domain>\n", between[5]));
                if nics.is_empty() {
                    segments.truncate(1);
                    segments[0].push_str("\n  </devices>\n</domain>\n");
                }
                Doc { segments, nics }
            }),
        // One device, as hotplug and update send it.
        (nic(), any::<bool>()).prop_map(|(nic, newline)| Doc {
            segments: vec![String::new(), if newline { "\n".into() } else { String::new() }],
            nics: vec![nic],
        }),
    ]
}

/// `text` without its `<port>` elements and the whitespace before each and before
/// `</interface>`, and with a self-closing `<interface .../>` written as
/// `<interface ...></interface>`: what an edited interface must equal before and after.
fn without_port(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("<port") {
        out.push_str(rest[..at].trim_end_matches([' ', '\t', '\r', '\n']));
        let tail = &rest[at..];
        let tag_end = tail.find('>').expect("a closed tag") + 1;
        let end = if tail[..tag_end].ends_with("/>") {
            tag_end
        } else {
            tail.find("</port>").expect("an end tag") + "</port>".len()
        };
        rest = &tail[end..];
    }
    out.push_str(rest);
    if out.starts_with("<interface") && out.ends_with("/>") && !out.contains("</interface>") {
        out.truncate(out.len() - 2);
        out.push_str("></interface>");
    }
    // A port added to an interface without child elements follows its last whitespace.
    let end = out.len() - "</interface>".len();
    let body = out[..end].trim_end_matches([' ', '\t', '\r', '\n']).len();
    out.replace_range(body..end, "");
    out
}

/// Whether the rewrite must touch an interface: isolate one not isolated yet, open one that is.
fn must_change(wish: PortWish, port: Option<bool>) -> bool {
    matches!(
        (wish, port),
        (PortWish::Isolated, None | Some(false)) | (PortWish::Open, Some(true))
    )
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn rewrite_changes_only_the_ports_it_must(doc in doc(), wishes in prop::collection::vec(wish(), 5)) {
        let text = doc.text();
        let parsed = domain::parse(text.as_bytes());
        prop_assert!(parsed.is_ok(), "generated document refused: {:?}\n{}", parsed, text);
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.interfaces.len(), doc.nics.len(), "{}", text);
        for (iface, nic) in parsed.interfaces.iter().zip(&doc.nics) {
            prop_assert_eq!(iface.port_isolated, nic.port, "{}", nic.text);
        }
        let wish_of = |i: &Interface| wishes[index_of(&parsed, i)];
        let changes: Vec<bool> = doc.nics.iter().zip(&wishes).map(|(n, &w)| must_change(w, n.port)).collect();
        let Some(out) = domain::rewrite(text.as_bytes(), &parsed, wish_of) else {
            prop_assert!(!changes.contains(&true), "nothing rewritten though {:?}\n{}", wishes, text);
            return Ok(());
        };
        prop_assert!(changes.contains(&true), "rewritten for nothing:\n{}", text);
        let out = String::from_utf8(out).expect("UTF-8 in, UTF-8 out");

        // Well formed, the same interfaces, each port as wished.
        let again = domain::parse(out.as_bytes());
        prop_assert!(again.is_ok(), "{:?}\n{}", again, out);
        let again = again.unwrap();
        prop_assert_eq!(again.interfaces.len(), parsed.interfaces.len());
        for (i, (new, old)) in again.interfaces.iter().zip(&parsed.interfaces).enumerate() {
            prop_assert_eq!((&new.attachment, new.mac, &new.tap), (&old.attachment, old.mac, &old.tap));
            let want = match (changes[i], wishes[i]) {
                (false, _) => old.port_isolated,
                (true, PortWish::Isolated) => Some(true),
                (true, _) => None,
            };
            prop_assert_eq!(new.port_isolated, want, "interface {}:\n{}", i, out);
        }
        prop_assert_eq!(&again.vm_id, &parsed.vm_id);
        prop_assert_eq!(domain::rewrite(out.as_bytes(), &again, |i: &Interface| wishes[index_of(&again, i)]), None,
            "not idempotent:\n{}", out);

        // Byte for byte: the text around the interfaces and every untouched interface are
        // identical; an edited one differs only by its <port>.
        let mut at = 0;
        for (i, nic) in doc.nics.iter().enumerate() {
            prop_assert!(out[at..].starts_with(&doc.segments[i]), "segment {} changed:\n{}", i, out);
            at += doc.segments[i].len();
            if changes[i] {
                let end = at + out[at..].find("</interface>").expect("an edited interface has an end tag")
                    + "</interface>".len();
                let edited = &out[at..end];
                prop_assert_eq!(without_port(edited), without_port(&nic.text), "{}\n->\n{}", nic.text, edited);
                at = end;
            } else {
                prop_assert!(out[at..].starts_with(&nic.text), "interface {} changed:\n{}", i, out);
                at += nic.text.len();
            }
        }
        prop_assert_eq!(&out[at..], doc.segments.last().unwrap().as_str());
    }

    /// Any byte-level damage to a generated document: parse never panics; when the damaged
    /// text still parses, the rewrite still yields a document that parses.
    #[test]
    fn damaged_documents_never_panic(doc in doc(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4), wishes in prop::collection::vec(wish(), 5)) {
        let mut bytes = doc.text().into_bytes();
        for (at, byte, kind) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match kind {
                0 => bytes.truncate(i),
                1 => bytes[i] = byte,
                _ => bytes.insert(i, byte),
            }
        }
        if let Ok(parsed) = domain::parse(&bytes) {
            let wish_of = |i: &Interface| wishes.get(index_of(&parsed, i)).copied().unwrap_or(PortWish::Keep);
            if let Some(out) = domain::rewrite(&bytes, &parsed, wish_of) {
                let again = domain::parse(&out);
                prop_assert!(again.is_ok(), "{:?}\n->\n{}", again, String::from_utf8_lossy(&out));
                prop_assert_eq!(again.unwrap().interfaces.len(), parsed.interfaces.len());
            }
        }
    }
}

/// The fixtures VDSM-shaped tests use parse, and rewriting them wholesale round-trips.
#[test]
fn fixtures_round_trip() {
    for name in ["before_vm_start.xml", "nic_hotplug.xml", "update_device.xml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let text = std::fs::read(&path).unwrap();
        let doc = domain::parse(&text).unwrap();
        let isolated = domain::rewrite(&text, &doc, |_| PortWish::Isolated).unwrap_or_else(|| text.clone());
        let doc2 = domain::parse(&isolated).unwrap();
        assert!(doc2.interfaces.iter().all(|i| i.port_isolated == Some(true)), "{name}");
        let open = domain::rewrite(&isolated, &doc2, |_| PortWish::Open).unwrap();
        let doc3 = domain::parse(&open).unwrap();
        assert!(doc3.interfaces.iter().all(|i| i.port_isolated.is_none()), "{name}");
    }
}
