//! libvirt XML of the VM and device hook points: the whole domain, or one `<interface>`.
//!
//! Parsing keeps byte offsets so that [`rewrite`] can splice `<port isolated="yes"/>` in or
//! out of an interface and leave every other byte of VDSM's document untouched.

use std::collections::BTreeMap;
use std::ops::Range;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::error::{Error, Result};
use crate::model::ifname;
use crate::model::mac::Mac;
use crate::model::policy::{self, PROP_TRUSTED};

/// What a vNIC is plugged into on the host: its `type` and `<source>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Attachment {
    /// `type='bridge'`: a tap on the Linux bridge `<source bridge>`.
    Bridge(Option<String>),
    /// `type='network'`: a port of libvirt network `<source network>` (VDSM names its
    /// networks `vdsm-NAME`). Live XML also names the bridge libvirt plugged the tap into
    /// (`<source network='vdsm-red' bridge='red'/>`); the engine's XML does not.
    Network {
        /// `<source network>`.
        network: Option<String>,
        /// `<source bridge>`, in live XML.
        bridge: Option<String>,
    },
    /// `type='direct'`: a macvtap on host device `<source dev>`, beside any bridge.
    Direct(Option<String>),
    /// `type='hostdev'`: an SR-IOV virtual function given to the guest, with the PCI
    /// address of `<source><address type='pci'>`.
    Hostdev(Option<String>),
    /// No `type` attribute.
    #[default]
    Unknown,
    /// Any other type (`vhostuser`, `ethernet`, `user`, ...).
    Other(String),
}

impl Attachment {
    /// The attachment of an `<interface type=...>` with no `<source>` seen yet.
    fn of_type(kind: &str) -> Attachment {
        match kind {
            "bridge" => Attachment::Bridge(None),
            "network" => Attachment::Network {
                network: None,
                bridge: None,
            },
            "direct" => Attachment::Direct(None),
            "hostdev" => Attachment::Hostdev(None),
            "" => Attachment::Unknown,
            other => Attachment::Other(other.to_string()),
        }
    }

    /// Records what `<source>` says.
    fn source(&mut self, e: &BytesStart) -> ParseResult<()> {
        match self {
            Attachment::Bridge(bridge) => *bridge = attr(e, "bridge")?,
            Attachment::Network { network, bridge } => {
                *network = attr(e, "network")?;
                *bridge = attr(e, "bridge")?;
            }
            Attachment::Direct(dev) => *dev = attr(e, "dev")?,
            Attachment::Hostdev(_) | Attachment::Unknown | Attachment::Other(_) => {}
        }
        Ok(())
    }

    /// The interface `type` this attachment has, for messages.
    pub fn kind(&self) -> &str {
        match self {
            Attachment::Bridge(_) => "bridge",
            Attachment::Network { .. } => "network",
            Attachment::Direct(_) => "direct",
            Attachment::Hostdev(_) => "hostdev",
            Attachment::Unknown => "",
            Attachment::Other(kind) => kind,
        }
    }

    /// The Linux bridge the XML names: `<source bridge>` of a `bridge` or (live) `network`
    /// interface.
    pub fn bridge(&self) -> Option<&str> {
        match self {
            Attachment::Bridge(bridge) | Attachment::Network { bridge, .. } => bridge.as_deref(),
            _ => None,
        }
    }
}

/// One `<interface>` element of the document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    /// What it is plugged into.
    pub attachment: Attachment,
    /// `<mac address=...>`: the guest MAC.
    pub mac: Option<Mac>,
    /// `<target dev=...>`: the tap, present in live XML only.
    pub tap: Option<String>,
    /// `<port isolated=...>`: `Some(true)` when libvirt is asked to isolate the tap.
    pub port_isolated: Option<bool>,
    /// `<vlan><tag id=...>`: the VLAN the host tags the vNIC's frames with (an SR-IOV VF on a
    /// VLAN network).
    pub vlan: Option<u16>,
    spans: Spans,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Spans {
    /// Where a new child goes: after the last child element, or before `</interface>`.
    insert_at: usize,
    /// Whitespace before the last child element, reused as indentation.
    indent: Option<Range<usize>>,
    /// The `<port>` element, with the whitespace before it.
    port: Option<Range<usize>>,
    /// For `<interface .../>`: the closing `/>`, and the end tag a child needs.
    self_closing: Option<(Range<usize>, String)>,
}

impl Interface {
    /// The bridge of a `type='bridge'` vNIC. A `type='network'` vNIC's bridge depends on
    /// the host's libvirt networks: see [`crate::vdsm::placement`].
    pub fn on_bridge(&self) -> Option<&str> {
        match &self.attachment {
            Attachment::Bridge(bridge) => bridge.as_deref(),
            _ => None,
        }
    }
}

/// What a hook payload holds that matters here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Document {
    /// The `<uuid>` of the domain, when the payload is a whole domain.
    pub vm_id: Option<String>,
    /// The `<name>` of the domain, when the payload is a whole domain: shown beside its
    /// ports by `bridge-isolation status`, never acted on.
    pub vm_name: Option<String>,
    /// Every interface, in document order.
    pub interfaces: Vec<Interface>,
    /// `bridge_isolation_trusted` from the oVirt metadata, by guest MAC.
    pub trusted: BTreeMap<Mac, bool>,
    /// The oVirt network of each vNIC, by guest MAC, where the metadata names it
    /// (`<ovirt-vm:device mac_address=...><ovirt-vm:network>`, which VDSM writes for every
    /// vNIC it runs; not the `<ovirt-vm:portMirroring>` list).
    pub networks: BTreeMap<Mac, String>,
}

impl Document {
    /// Whether the metadata marks this interface's vNIC as trusted.
    pub fn is_trusted(&self, iface: &Interface) -> bool {
        iface.mac.and_then(|m| self.trusted.get(&m).copied()).unwrap_or(false)
    }

    /// The oVirt network the metadata names for this interface's vNIC.
    pub fn network_of(&self, iface: &Interface) -> Option<&str> {
        iface.mac.and_then(|m| self.networks.get(&m)).map(String::as_str)
    }
}

/// What the rewrite should make of one interface's `<port>` element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortWish {
    /// Leave it as it is.
    Keep,
    /// Have `<port isolated="yes"/>`.
    Isolated,
    /// Have no isolation: drop `<port>` (a trusted vNIC on a natively isolated network).
    Open,
}

/// Largest payload accepted; a libvirt domain is a few tens of KiB.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// Parses a domain or interface payload.
pub fn parse(bytes: &[u8]) -> Result<Document> {
    if bytes.len() > MAX_PAYLOAD {
        return Err(Error::Payload(format!(
            "XML payload of {} bytes is too large",
            bytes.len()
        )));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| Error::payload("XML is not UTF-8", e))?;
    if text.trim().is_empty() {
        return Err(Error::Payload("empty XML payload".into()));
    }
    if text.contains('\0') {
        // Not a character XML allows; typically UTF-16 without a byte-order mark.
        return Err(Error::Payload("XML contains NUL bytes (UTF-16?)".into()));
    }
    Parser::default().run(text).map_err(|e| match e {
        Invalid::Rule(rule) => Error::Payload(format!("invalid XML: {rule}")),
        Invalid::Syntax { at: Some(at), source } => Error::payload(format!("invalid XML: at byte {at}"), source),
        Invalid::Syntax { at: None, source } => Error::payload("invalid XML", source),
    })
}

/// Deepest element nesting accepted (libxml2's default limit, which libvirt parses with).
pub const MAX_DEPTH: usize = 256;

#[derive(Default)]
struct Parser {
    doc: Document,
    /// Local names of the open elements.
    stack: Vec<String>,
    /// True once the root element was opened.
    seen_root: bool,
    current: Option<Interface>,
    /// Children of the open interface seen so far, by local name (each may appear once).
    seen_children: Vec<String>,
    /// Guest MAC of the open `<ovirt-vm:device>`.
    meta_mac: Option<Mac>,
    /// Byte range of the last whitespace-only text, and where it ended.
    last_space: Option<Range<usize>>,
}

/// Why the parser refused the XML.
#[derive(Debug)]
enum Invalid {
    /// A rule of ours, in words.
    Rule(String),
    /// quick-xml's error, at this byte when known.
    Syntax {
        at: Option<usize>,
        source: quick_xml::Error,
    },
}

impl From<String> for Invalid {
    fn from(rule: String) -> Invalid {
        Invalid::Rule(rule)
    }
}

impl From<&str> for Invalid {
    fn from(rule: &str) -> Invalid {
        Invalid::Rule(rule.into())
    }
}

impl From<quick_xml::Error> for Invalid {
    fn from(source: quick_xml::Error) -> Invalid {
        Invalid::Syntax { at: None, source }
    }
}

type ParseResult<T> = std::result::Result<T, Invalid>;

impl Parser {
    fn run(mut self, text: &str) -> ParseResult<Document> {
        let mut reader = Reader::from_str(text);
        reader.config_mut().trim_text(false);
        let mut text_acc = String::new();
        loop {
            let start = reader.buffer_position() as usize;
            let event = reader.read_event().map_err(|source| Invalid::Syntax {
                at: Some(start),
                source,
            })?;
            let end = reader.buffer_position() as usize;
            match event {
                Event::DocType(_) => return Err("DOCTYPE is not allowed".into()),
                Event::Start(e) => {
                    self.open(&e, start..end, false)?;
                    self.stack.push(local(&e));
                    text_acc.clear();
                    self.last_space = None;
                }
                Event::Empty(e) => {
                    self.open(&e, start..end, true)?;
                    self.stack.push(local(&e));
                    self.close(start, end, "")?;
                    self.last_space = None;
                }
                Event::End(_) => {
                    self.close(start, end, text_acc.trim())?;
                    text_acc.clear();
                    self.last_space = None;
                }
                Event::Text(t) => {
                    let s = t.unescape().map_err(|source| Invalid::Syntax {
                        at: Some(start),
                        source,
                    })?;
                    if s.trim().is_empty() {
                        self.last_space = Some(start..end);
                    } else if self.stack.is_empty() {
                        return Err("text outside the root element".into());
                    } else {
                        self.last_space = None;
                    }
                    text_acc.push_str(&s);
                }
                Event::CData(c) => {
                    if self.stack.is_empty() {
                        return Err("CDATA outside the root element".into());
                    }
                    text_acc.push_str(&String::from_utf8_lossy(&c));
                    self.last_space = None;
                }
                Event::Eof => break,
                _ => self.last_space = None,
            }
        }
        if let Some(open) = self.stack.last() {
            return Err(format!("element <{open}> is not closed").into());
        }
        if !self.seen_root {
            return Err("no root element".into());
        }
        Ok(self.doc)
    }

    fn parent(&self) -> Option<&str> {
        self.stack.last().map(String::as_str)
    }

    /// True when an `<interface>` opened now is a vNIC: the root of a device payload, or a
    /// device of a domain (`/domain/devices/interface`).
    fn at_interface_level(&self) -> bool {
        self.stack.is_empty() || self.stack == ["domain", "devices"]
    }

    fn open(&mut self, e: &BytesStart, tag: Range<usize>, empty: bool) -> ParseResult<()> {
        let start = tag.start;
        let name = local(e);
        let depth = self.stack.len();
        if depth >= MAX_DEPTH {
            return Err(format!("elements nested deeper than {MAX_DEPTH}").into());
        }
        if depth == 0 {
            if self.seen_root {
                return Err("more than one root element".into());
            }
            self.seen_root = true;
        }
        if name == "interface" && self.at_interface_level() {
            if self.current.is_some() {
                return Err("nested <interface>".into());
            }
            let self_closing = empty.then(|| {
                let end_tag = format!("</{}>", String::from_utf8_lossy(e.name().as_ref()));
                (tag.end - 2..tag.end, end_tag)
            });
            self.current = Some(Interface {
                attachment: Attachment::of_type(&attr(e, "type")?.unwrap_or_default()),
                spans: Spans {
                    self_closing,
                    ..Spans::default()
                },
                ..Default::default()
            });
            self.seen_children.clear();
            return Ok(());
        }
        let in_source = self.stack.len() >= 2 && self.stack[self.stack.len() - 2..] == ["interface", "source"];
        if let Some(Attachment::Hostdev(pci)) = self.current.as_mut().map(|i| &mut i.attachment) {
            if in_source && name == "address" && attr(e, "type")?.as_deref() == Some("pci") {
                *pci = Some(pci_address(e)?);
            }
        }
        let in_vlan = self.stack.len() >= 2 && self.stack[self.stack.len() - 2..] == ["interface", "vlan"];
        if let Some(iface) = self.current.as_mut().filter(|_| in_vlan && name == "tag") {
            let id = attr(e, "id")?.unwrap_or_default();
            iface.vlan = Some(
                id.parse()
                    .ok()
                    .filter(|v| *v <= 4094)
                    .ok_or_else(|| format!("<tag id={}>", ifname::quoted(&id)))?,
            );
        }
        if let Some(iface) = self.current.as_mut() {
            let in_iface = self.stack.last().map(String::as_str) == Some("interface");
            if in_iface {
                iface.spans.indent = self.last_space.clone();
                if matches!(name.as_str(), "source" | "mac" | "target" | "port") {
                    // libvirt reads the first and ignores the rest: one of each, or we might
                    // judge a vNIC by an element libvirt never looks at.
                    if self.seen_children.contains(&name) {
                        return Err(format!("more than one <{name}> in an <interface>").into());
                    }
                    self.seen_children.push(name.clone());
                }
                match name.as_str() {
                    "source" => iface.attachment.source(e)?,
                    "mac" => iface.mac = attr(e, "address")?.map(|m| mac(&m)).transpose()?,
                    "target" => iface.tap = attr(e, "dev")?,
                    "port" => {
                        let from = self.last_space.as_ref().map_or(start, |ws| ws.start);
                        iface.spans.port = Some(from..start);
                        iface.port_isolated = match attr(e, "isolated")?.as_deref() {
                            Some("yes") => Some(true),
                            Some("no") => Some(false),
                            None => None,
                            Some(other) => return Err(format!("<port isolated={}>", ifname::quoted(other)).into()),
                        };
                    }
                    _ => {}
                }
            }
        }
        if name == "device" && self.stack.iter().any(|n| n == "metadata") {
            self.meta_mac = attr(e, "mac_address")?.map(|m| mac(&m)).transpose()?;
        }
        Ok(())
    }

    fn close(&mut self, start: usize, end: usize, text: &str) -> ParseResult<()> {
        let name = self.stack.pop().ok_or("unbalanced end tag")?;
        let depth = self.stack.len();
        if name == "interface" && self.current.is_some() && self.at_interface_level() {
            let mut iface = self.current.take().expect("checked");
            if iface.spans.insert_at == 0 {
                iface.spans.insert_at = start;
            }
            check_names(&iface)?;
            self.doc.interfaces.push(iface);
            return Ok(());
        }
        let direct_child = self.parent() == Some("interface");
        if let Some(iface) = self.current.as_mut() {
            if direct_child {
                iface.spans.insert_at = end;
                if name == "port" {
                    if let Some(span) = iface.spans.port.as_mut() {
                        span.end = end;
                    }
                }
            }
        }
        match name.as_str() {
            "uuid" if depth == 1 && self.stack[0] == "domain" && self.doc.vm_id.is_none() => {
                self.doc.vm_id = Some(text.to_string())
            }
            "name" if depth == 1 && self.stack[0] == "domain" && self.doc.vm_name.is_none() => {
                self.doc.vm_name = Some(text.to_string())
            }
            n if n == PROP_TRUSTED && self.stack.iter().any(|n| n == "metadata") => {
                if let Some(mac) = self.meta_mac {
                    let trusted = policy::parse_flag(text).map_err(|e| format!("{PROP_TRUSTED} of {mac}: {e}"))?;
                    self.doc.trusted.insert(mac, trusted);
                }
            }
            "network" if self.parent() == Some("device") && self.stack.iter().any(|n| n == "metadata") => {
                if let Some(mac) = self.meta_mac {
                    self.doc.networks.insert(mac, text.to_string());
                }
            }
            "device" if self.stack.iter().any(|n| n == "metadata") => self.meta_mac = None,
            _ => {}
        }
        Ok(())
    }
}

/// The names we act on or compare with Linux interfaces must be Linux interface names: the
/// bridge and tap of a vNIC on a bridge or a libvirt network, the host device of a macvtap.
/// Other types are not ours to judge.
fn check_names(iface: &Interface) -> ParseResult<()> {
    let mac = iface.mac.map(|m| format!(" {m}")).unwrap_or_default();
    let (source, what, tap) = match &iface.attachment {
        Attachment::Bridge(bridge) | Attachment::Network { bridge, .. } => (bridge, "bridge", &iface.tap),
        Attachment::Direct(dev) => (dev, "dev", &None),
        _ => return Ok(()),
    };
    if let Some(name) = source {
        ifname::validate(name).map_err(|e| format!("<interface{mac}> <source {what}>: {e}"))?;
    }
    if let Some(tap) = tap {
        ifname::validate(tap).map_err(|e| format!("<interface{mac}> <target dev>: {e}"))?;
    }
    Ok(())
}

/// `DDDD:BB:SS.F`, the name of a PCI device under `/sys/bus/pci/devices`, from libvirt's
/// `<address type='pci' domain='0x0000' bus='0x05' slot='0x10' function='0x7'/>`.
fn pci_address(e: &BytesStart) -> ParseResult<String> {
    let field = |key: &str, max: u32| -> ParseResult<u32> {
        let text = attr(e, key)?.unwrap_or_else(|| "0".into());
        let digits = text.strip_prefix("0x").unwrap_or(&text);
        u32::from_str_radix(digits, 16)
            .ok()
            .filter(|v| *v <= max)
            .ok_or_else(|| format!("<address {key}={}>", ifname::quoted(&text)).into())
    };
    Ok(format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        field("domain", 0xffff)?,
        field("bus", 0xff)?,
        field("slot", 0x1f)?,
        field("function", 7)?
    ))
}

fn mac(text: &str) -> ParseResult<Mac> {
    text.parse()
        .map_err(|_| format!("invalid MAC address {}", ifname::quoted(text)).into())
}

fn local(e: &BytesStart) -> String {
    String::from_utf8_lossy(e.local_name().as_ref()).into_owned()
}

fn attr(e: &BytesStart, key: &str) -> ParseResult<Option<String>> {
    match e.try_get_attribute(key).map_err(quick_xml::Error::from)? {
        Some(a) => Ok(Some(a.unescape_value()?.into_owned())),
        None => Ok(None),
    }
}

/// Applies `wish` to every interface; returns the new document, or `None` when nothing changes.
pub fn rewrite(original: &[u8], doc: &Document, wish: impl Fn(&Interface) -> PortWish) -> Option<Vec<u8>> {
    const ISOLATED: &str = "<port isolated=\"yes\"/>";
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    for iface in &doc.interfaces {
        let spans = &iface.spans;
        match (wish(iface), iface.port_isolated, spans.port.clone()) {
            (PortWish::Isolated, Some(true), _) | (PortWish::Open, None | Some(false), _) | (PortWish::Keep, _, _) => {}
            (PortWish::Isolated, _, Some(span)) => {
                let lead = text(original, &span)
                    .chars()
                    .take_while(|c| c.is_ascii_whitespace())
                    .collect::<String>();
                edits.push((span, format!("{lead}{ISOLATED}")));
            }
            (PortWish::Isolated, _, None) if spans.self_closing.is_some() => {
                let (slash, end_tag) = spans.self_closing.clone().expect("checked");
                edits.push((slash, format!(">{ISOLATED}{end_tag}")));
            }
            (PortWish::Isolated, _, None) => {
                let indent = spans.indent.as_ref().map_or("", |r| text(original, r));
                edits.push((spans.insert_at..spans.insert_at, format!("{indent}{ISOLATED}")));
            }
            (PortWish::Open, Some(true), Some(span)) => edits.push((span, String::new())),
            (PortWish::Open, Some(true), None) => unreachable!("a parsed <port> has a span"),
        }
    }
    if edits.is_empty() {
        return None;
    }
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = original.to_vec();
    for (range, text) in edits {
        out.splice(range, text.into_bytes());
    }
    Some(out)
}

fn text<'a>(original: &'a [u8], range: &Range<usize>) -> &'a str {
    std::str::from_utf8(&original[range.clone()]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    const START: &str = include_str!("../../tests/fixtures/before_vm_start.xml");
    const HOTPLUG: &str = include_str!("../../tests/fixtures/nic_hotplug.xml");
    const UPDATE: &str = include_str!("../../tests/fixtures/update_device.xml");

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    #[test]
    fn a_syntax_error_keeps_quick_xml_s_error() {
        let e = parse(b"<domain><devices></domain>").unwrap_err();
        assert_eq!(e.kind(), Kind::Payload);
        assert!(e.to_string().starts_with("payload: invalid XML: at byte "), "{e}");
        let source = std::error::Error::source(&e);
        assert!(source.is_some_and(|s| s.is::<quick_xml::Error>()), "{e:?}");
    }

    #[test]
    fn parses_a_domain() {
        let doc = parse(START.as_bytes()).unwrap();
        assert_eq!(doc.vm_id.as_deref(), Some("4d3a1f52-8a0b-4c8e-9a8f-2f7b3d1c0e11"));
        assert_eq!(doc.vm_name.as_deref(), Some("web01"));
        let bridges: Vec<_> = doc.interfaces.iter().map(|i| i.on_bridge().unwrap()).collect();
        assert_eq!(bridges, ["red", "red", "ovirtmgmt", "blue"]);
        assert_eq!(doc.interfaces[0].mac, Some(mac("56:6f:1a:00:00:01")));
        assert_eq!(doc.interfaces[3].port_isolated, Some(true));
        assert_eq!(doc.interfaces[0].port_isolated, None);
        assert!(!doc.is_trusted(&doc.interfaces[0]));
        assert!(doc.is_trusted(&doc.interfaces[1]));
        assert!(doc.is_trusted(&doc.interfaces[3]));
    }

    fn wish_for_red(doc: &Document) -> impl Fn(&Interface) -> PortWish + '_ {
        move |i| match (i.on_bridge(), doc.is_trusted(i)) {
            (_, true) => PortWish::Open,
            (Some("red"), false) => PortWish::Isolated,
            _ => PortWish::Keep,
        }
    }

    #[test]
    fn rewrite_adds_and_removes_only_what_it_must() {
        let doc = parse(START.as_bytes()).unwrap();
        let out = String::from_utf8(rewrite(START.as_bytes(), &doc, wish_for_red(&doc)).unwrap()).unwrap();
        let expected = START
            .replacen(
                "            <alias name=\"ua-6c1e7d0a-0f7e-4a4e-9d53-1c0d4b1b0001\" />\n",
                "            <alias name=\"ua-6c1e7d0a-0f7e-4a4e-9d53-1c0d4b1b0001\" />\n            <port isolated=\"yes\"/>\n",
                1,
            )
            .replacen("            <port isolated=\"yes\" />\n", "", 1);
        assert_eq!(out, expected);
        let again = parse(out.as_bytes()).unwrap();
        assert_eq!(again.interfaces[0].port_isolated, Some(true));
        assert_eq!(again.interfaces[1].port_isolated, None);
        assert_eq!(again.interfaces[3].port_isolated, None);
        assert_eq!(
            rewrite(out.as_bytes(), &again, wish_for_red(&again)),
            None,
            "idempotent"
        );
    }

    #[test]
    fn rewrite_of_one_interface() {
        let doc = parse(HOTPLUG.as_bytes()).unwrap();
        assert_eq!(doc.vm_id, None);
        let out = rewrite(HOTPLUG.as_bytes(), &doc, |_| PortWish::Isolated).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("<alias name=\"ua-8b2d4f1e-3a6c-4d2e-b1f0-0a9c8e7d0009\" />\n    <port isolated=\"yes\"/>\n</interface>"), "{out}");
        assert_eq!(rewrite(HOTPLUG.as_bytes(), &doc, |_| PortWish::Keep), None);
        assert_eq!(rewrite(HOTPLUG.as_bytes(), &doc, |_| PortWish::Open), None);
    }

    #[test]
    fn rewrite_flips_an_explicit_no() {
        let doc = parse(UPDATE.as_bytes()).unwrap();
        assert_eq!(doc.interfaces[0].port_isolated, Some(false));
        let out = String::from_utf8(rewrite(UPDATE.as_bytes(), &doc, |_| PortWish::Isolated).unwrap()).unwrap();
        assert_eq!(
            out,
            UPDATE.replace("<port isolated=\"no\"/>", "<port isolated=\"yes\"/>")
        );
    }

    #[test]
    fn rejects_broken_and_hostile_xml() {
        let cases = [
            "",
            "   \n",
            "<interface type=\"bridge\"><source bridge=\"red\"/>",
            "<interface><mac address=\"zz\"/></interface>",
            "<domain><devices></domain>",
            "<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]><domain>&lol2;</domain>",
            "<domain>&xxe;</domain>",
            "<interface type='bridge'><port isolated='maybe'/></interface>",
            "<interface type='bridge'><port isolated='no'/><port isolated='yes'/></interface>",
            "<interface type='bridge'><source bridge='red'/><source bridge='blue'/></interface>",
            "<interface type='bridge'/><interface type='bridge'/>",
            "<interface type='bridge'/><![CDATA[x]]>",
            "<!-- only a comment -->",
            "<interface type='bridge'><source bridge='a234567890abcdef'/></interface>",
            "<interface type='bridge'><source bridge='../etc'/></interface>",
            "<interface type='bridge'><source bridge='a b'/></interface>",
            "<interface type='bridge'><target dev='vnet0;reboot'/></interface>",
            "<interface type='bridge'><target dev='$(id)'/></interface>",
            "<interface type='bridge'><target dev='..'/></interface>",
            "<interface type='bridge'><source bridge=''/></interface>",
        ];
        for c in cases {
            assert_eq!(parse(c.as_bytes()).unwrap_err().kind(), Kind::Payload, "{c:?}");
        }
        assert!(parse(b"<interface>\xff</interface>").is_err());
        let deep = format!("{}{}", "<a>".repeat(MAX_DEPTH + 1), "</a>".repeat(MAX_DEPTH + 1));
        assert!(parse(deep.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("nested deeper"));
        let fine = format!("{}{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
        assert!(parse(fine.as_bytes()).is_ok());
        // Names are checked where we act on them (Linux bridges), not on other vNIC types.
        assert!(parse(b"<interface type='vhostuser'><target dev='a234567890abcdef0'/></interface>").is_ok());
    }

    #[test]
    fn only_vnics_of_the_domain_are_interfaces() {
        let xml = "<domain><uuid>u1</uuid><metadata><devices><interface type='bridge'><source bridge='red'/>\
                   </interface></devices></metadata><devices><interface type='bridge'><source bridge='blue'/>\
                   </interface></devices></domain>";
        let doc = parse(xml.as_bytes()).unwrap();
        assert_eq!(doc.vm_id.as_deref(), Some("u1"));
        let bridges: Vec<_> = doc.interfaces.iter().filter_map(Interface::on_bridge).collect();
        assert_eq!(bridges, ["blue"]);
        let nic = parse(b"<interface type='bridge'><uuid>u2</uuid></interface>").unwrap();
        assert_eq!(nic.vm_id, None);
    }

    #[test]
    fn attachments_of_every_vnic_type() {
        let doc = parse(include_bytes!("../../tests/fixtures/bypass_vm_start.xml")).unwrap();
        let kinds: Vec<Attachment> = doc.interfaces.iter().map(|i| i.attachment.clone()).collect();
        assert_eq!(
            kinds,
            [
                Attachment::Bridge(Some("red".into())),
                Attachment::Network {
                    network: Some("vdsm-red".into()),
                    bridge: None
                },
                Attachment::Direct(Some("eth1.100".into())),
                Attachment::Hostdev(Some("0000:05:10.7".into())),
                Attachment::Hostdev(Some("0000:05:11.0".into())),
                Attachment::Direct(Some("eth2".into())),
                Attachment::Bridge(Some("ovirtmgmt".into())),
                Attachment::Other("vhostuser".into()),
            ]
        );
        // The network of each vNIC, not the networks its traffic is mirrored to.
        let networks: Vec<(String, &str)> = doc.networks.iter().map(|(m, n)| (m.to_string(), n.as_str())).collect();
        assert_eq!(
            networks,
            [
                ("56:6f:1a:00:00:11".to_string(), "red"),
                ("56:6f:1a:00:00:14".to_string(), "red"),
                ("56:6f:1a:00:00:15".to_string(), "sriov1"),
            ]
        );
        assert_eq!(doc.network_of(&doc.interfaces[5]), None);
        assert_eq!((doc.interfaces[3].vlan, doc.interfaces[4].vlan), (Some(100), None));
        assert_eq!(doc.interfaces[1].on_bridge(), None);
        let live = parse(
            b"<interface type='network'><source network='vdsm-red' bridge='red'/><target dev='vnet3'/></interface>",
        )
        .unwrap();
        assert_eq!(live.interfaces[0].attachment.bridge(), Some("red"));
        for bad in [
            "<interface type='direct'><source dev='eth1;x' mode='bridge'/></interface>",
            "<interface type='network'><source network='vdsm-red' bridge='../red'/></interface>",
            "<interface type='hostdev'><source><address type='pci' domain='0x0000' bus='0x100' slot='0' function='0'/></source></interface>",
            "<interface type='hostdev'><source><address type='pci' function='0x8'/></source></interface>",
            "<interface type='hostdev'><vlan><tag id='4095'/></vlan></interface>",
        ] {
            assert_eq!(parse(bad.as_bytes()).unwrap_err().kind(), Kind::Payload, "{bad}");
        }
    }

    #[test]
    fn rewrite_opens_a_self_closing_interface() {
        let xml = "<domain><devices><interface type='bridge' /></devices></domain>";
        let doc = parse(xml.as_bytes()).unwrap();
        let out = String::from_utf8(rewrite(xml.as_bytes(), &doc, |_| PortWish::Isolated).unwrap()).unwrap();
        assert_eq!(
            out,
            "<domain><devices><interface type='bridge' ><port isolated=\"yes\"/></interface></devices></domain>"
        );
        let again = parse(out.as_bytes()).unwrap();
        assert_eq!(again.interfaces[0].port_isolated, Some(true));
        assert_eq!(rewrite(out.as_bytes(), &again, |_| PortWish::Isolated), None);
    }
}
