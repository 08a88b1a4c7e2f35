//! A minimal D-Bus client over the system bus socket: authenticate (EXTERNAL), call a
//! method, subscribe to signals, read messages. Just what [`crate::firewall_watch`] needs
//! to hear firewalld's `Reloaded` signal and its bus name changing owner, and what its
//! test needs to stand in for firewalld; no dependency, no threads, blocking I/O.
//!
//! Supported wire types: the basic types `y`, `b`, `u`, `i`, `s`, `o`, `g` and a variant
//! holding one of them. Anything else in a message body is reported, never guessed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The system bus, unless `DBUS_SYSTEM_BUS_ADDRESS` names another.
pub const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";
/// Environment variable naming the system bus.
pub const ENV_SYSTEM_BUS: &str = "DBUS_SYSTEM_BUS_ADDRESS";

/// Message types.
pub const METHOD_CALL: u8 = 1;
/// A method's reply.
pub const METHOD_RETURN: u8 = 2;
/// A method's error.
pub const ERROR: u8 = 3;
/// A signal.
pub const SIGNAL: u8 = 4;

const MAX_MESSAGE: usize = 128 * 1024 * 1024;

/// One argument or value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `y`
    Byte(u8),
    /// `b`
    Bool(bool),
    /// `u`
    U32(u32),
    /// `i`
    I32(i32),
    /// `s`
    Str(String),
    /// `o`
    Path(String),
    /// `g`
    Signature(String),
    /// `v` holding a basic value.
    Variant(Box<Value>),
}

impl Value {
    fn signature(&self) -> String {
        match self {
            Value::Byte(_) => "y".into(),
            Value::Bool(_) => "b".into(),
            Value::U32(_) => "u".into(),
            Value::I32(_) => "i".into(),
            Value::Str(_) => "s".into(),
            Value::Path(_) => "o".into(),
            Value::Signature(_) => "g".into(),
            Value::Variant(_) => "v".into(),
        }
    }

    /// The string inside `s`, `o`, `g`, or a variant holding one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::Path(s) | Value::Signature(s) => Some(s),
            Value::Variant(v) => v.as_str(),
            _ => None,
        }
    }

    /// The number inside `u`, or a variant holding one.
    pub fn as_u32(&self) -> Option<u32> {
        match self {
            Value::U32(n) => Some(*n),
            Value::Variant(v) => v.as_u32(),
            _ => None,
        }
    }
}

/// A message, as sent or received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// [`METHOD_CALL`], [`METHOD_RETURN`], [`ERROR`] or [`SIGNAL`].
    pub kind: u8,
    /// Header flags (0x1: no reply expected).
    pub flags: u8,
    /// Serial number.
    pub serial: u32,
    /// Object path.
    pub path: Option<String>,
    /// Interface.
    pub interface: Option<String>,
    /// Member (method or signal name).
    pub member: Option<String>,
    /// Error name of an [`ERROR`].
    pub error_name: Option<String>,
    /// Serial of the call this replies to.
    pub reply_serial: Option<u32>,
    /// Destination.
    pub destination: Option<String>,
    /// Sender (unique name), set by the bus.
    pub sender: Option<String>,
    /// Body.
    pub body: Vec<Value>,
}

impl Message {
    /// A method call.
    pub fn call(destination: &str, path: &str, interface: &str, member: &str, body: Vec<Value>) -> Message {
        Message {
            kind: METHOD_CALL,
            path: Some(path.into()),
            interface: Some(interface.into()),
            member: Some(member.into()),
            destination: Some(destination.into()),
            body,
            ..Message::default()
        }
    }

    /// A signal.
    pub fn signal(path: &str, interface: &str, member: &str, body: Vec<Value>) -> Message {
        Message {
            kind: SIGNAL,
            path: Some(path.into()),
            interface: Some(interface.into()),
            member: Some(member.into()),
            body,
            ..Message::default()
        }
    }

    /// The reply to `call`.
    pub fn reply_to(call: &Message, body: Vec<Value>) -> Message {
        Message {
            kind: METHOD_RETURN,
            reply_serial: Some(call.serial),
            destination: call.sender.clone(),
            body,
            ..Message::default()
        }
    }

    /// True for a signal `interface.member`.
    pub fn is_signal(&self, interface: &str, member: &str) -> bool {
        self.kind == SIGNAL && self.interface.as_deref() == Some(interface) && self.member.as_deref() == Some(member)
    }

    /// The body's `n`th value as a string.
    pub fn str_arg(&self, n: usize) -> Option<&str> {
        self.body.get(n).and_then(Value::as_str)
    }

    /// Serializes the message (little endian) with serial `serial`.
    pub fn encode(&self, serial: u32) -> Result<Vec<u8>> {
        let mut body = Writer::default();
        let mut signature = String::new();
        for v in &self.body {
            signature.push_str(&v.signature());
            body.value(v)?;
        }
        let mut w = Writer::default();
        w.buf.extend_from_slice(&[b'l', self.kind, self.flags, 1]);
        w.u32(u32::try_from(body.buf.len()).map_err(|_| bad("body too large"))?);
        w.u32(serial);
        let len_at = w.buf.len();
        w.u32(0);
        let start = w.buf.len();
        let field = |w: &mut Writer, code: u8, v: Value| -> Result<()> {
            w.align(8);
            w.buf.push(code);
            w.signature(&v.signature())?;
            w.value(&v)
        };
        if let Some(p) = &self.path {
            field(&mut w, 1, Value::Path(p.clone()))?;
        }
        if let Some(s) = &self.interface {
            field(&mut w, 2, Value::Str(s.clone()))?;
        }
        if let Some(s) = &self.member {
            field(&mut w, 3, Value::Str(s.clone()))?;
        }
        if let Some(s) = &self.error_name {
            field(&mut w, 4, Value::Str(s.clone()))?;
        }
        if let Some(n) = self.reply_serial {
            field(&mut w, 5, Value::U32(n))?;
        }
        if let Some(s) = &self.destination {
            field(&mut w, 6, Value::Str(s.clone()))?;
        }
        if !signature.is_empty() {
            field(&mut w, 8, Value::Signature(signature))?;
        }
        let fields_len = u32::try_from(w.buf.len() - start).map_err(|_| bad("header too large"))?;
        w.buf[len_at..len_at + 4].copy_from_slice(&fields_len.to_le_bytes());
        w.align(8);
        w.buf.extend_from_slice(&body.buf);
        Ok(w.buf)
    }

    /// How many bytes the message starting at `buf` takes, once its fixed header is there.
    fn total_len(buf: &[u8]) -> Result<Option<usize>> {
        if buf.len() < 16 {
            return Ok(None);
        }
        let r = Reader::new(buf, buf[0] == b'B');
        let body_len = r.u32_at(4) as usize;
        let fields_len = r.u32_at(12) as usize;
        let total = pad(16 + fields_len, 8) + body_len;
        if total > MAX_MESSAGE {
            return Err(bad("message larger than 128 MiB"));
        }
        Ok(Some(total))
    }

    /// Parses one whole message.
    pub fn decode(buf: &[u8]) -> Result<Message> {
        let big = match buf.first() {
            Some(b'l') => false,
            Some(b'B') => true,
            _ => return Err(bad("unknown byte order")),
        };
        let total = Message::total_len(buf)?.ok_or_else(|| bad("short message"))?;
        if buf.len() < total {
            return Err(bad("short message"));
        }
        let mut r = Reader::new(&buf[..total], big);
        let mut m = Message {
            kind: buf[1],
            flags: buf[2],
            serial: r.u32_at(8),
            ..Message::default()
        };
        let fields_end = 16 + r.u32_at(12) as usize;
        r.pos = 16;
        let mut signature = String::new();
        while r.pos < fields_end {
            r.align(8)?;
            let code = r.byte()?;
            let sig = r.signature()?;
            let v = r.value(&sig)?;
            match (code, v) {
                (1, Value::Path(s)) => m.path = Some(s),
                (2, Value::Str(s)) => m.interface = Some(s),
                (3, Value::Str(s)) => m.member = Some(s),
                (4, Value::Str(s)) => m.error_name = Some(s),
                (5, Value::U32(n)) => m.reply_serial = Some(n),
                (6, Value::Str(s)) => m.destination = Some(s),
                (7, Value::Str(s)) => m.sender = Some(s),
                (8, Value::Signature(s)) => signature = s,
                _ => {}
            }
        }
        r.pos = pad(fields_end, 8);
        let body_start = r.pos;
        r.base = body_start;
        for c in signature.chars() {
            let v = r.value(&c.to_string())?;
            m.body.push(v);
        }
        Ok(m)
    }
}

fn bad(what: &str) -> Error {
    Error::Helper(format!("D-Bus: {what}"))
}

fn pad(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn align(&mut self, to: usize) {
        let n = pad(self.buf.len(), to);
        self.buf.resize(n, 0);
    }

    fn u32(&mut self, n: u32) {
        self.align(4);
        self.buf.extend_from_slice(&n.to_le_bytes());
    }

    fn string(&mut self, s: &str) -> Result<()> {
        if s.contains('\0') {
            return Err(bad("string with a NUL byte"));
        }
        self.u32(u32::try_from(s.len()).map_err(|_| bad("string too long"))?);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        Ok(())
    }

    fn signature(&mut self, s: &str) -> Result<()> {
        self.buf
            .push(u8::try_from(s.len()).map_err(|_| bad("signature too long"))?);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        Ok(())
    }

    fn value(&mut self, v: &Value) -> Result<()> {
        match v {
            Value::Byte(b) => self.buf.push(*b),
            Value::Bool(b) => self.u32(u32::from(*b)),
            Value::U32(n) => self.u32(*n),
            Value::I32(n) => self.u32(*n as u32),
            Value::Str(s) | Value::Path(s) => self.string(s)?,
            Value::Signature(s) => self.signature(s)?,
            Value::Variant(inner) => {
                if matches!(**inner, Value::Variant(_)) {
                    return Err(bad("nested variants are not supported"));
                }
                self.signature(&inner.signature())?;
                self.value(inner)?;
            }
        }
        Ok(())
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    big: bool,
    pos: usize,
    /// Alignment is relative to the message start; the body starts 8-aligned, so this is
    /// only kept for clarity.
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], big: bool) -> Reader<'a> {
        Reader {
            buf,
            big,
            pos: 0,
            base: 0,
        }
    }

    fn u32_at(&self, at: usize) -> u32 {
        let b: [u8; 4] = self.buf[at..at + 4].try_into().expect("4 bytes");
        if self.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    fn align(&mut self, to: usize) -> Result<()> {
        self.pos = self.base + pad(self.pos - self.base, to);
        if self.pos > self.buf.len() {
            return Err(bad("truncated message"));
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| bad("truncated message"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        self.align(4)?;
        let at = self.pos;
        self.take(4)?;
        Ok(self.u32_at(at))
    }

    fn text(&mut self, len: usize) -> Result<String> {
        let s = self.take(len)?;
        if self.take(1)? != [0] {
            return Err(bad("string without its NUL"));
        }
        String::from_utf8(s.to_vec()).map_err(|_| bad("string is not UTF-8"))
    }

    fn signature(&mut self) -> Result<String> {
        let len = self.byte()? as usize;
        self.text(len)
    }

    fn value(&mut self, sig: &str) -> Result<Value> {
        Ok(match sig {
            "y" => Value::Byte(self.byte()?),
            "b" => Value::Bool(self.u32()? != 0),
            "u" => Value::U32(self.u32()?),
            "i" => Value::I32(self.u32()? as i32),
            "s" | "o" => {
                let len = self.u32()? as usize;
                let s = self.text(len)?;
                if sig == "s" {
                    Value::Str(s)
                } else {
                    Value::Path(s)
                }
            }
            "g" => Value::Signature(self.signature()?),
            "v" => {
                let inner = self.signature()?;
                if inner == "v" {
                    return Err(bad("nested variants are not supported"));
                }
                Value::Variant(Box::new(self.value(&inner)?))
            }
            other => return Err(bad(&format!("unsupported type {other:?} in a message"))),
        })
    }
}

/// A connection to a bus.
pub struct Connection {
    stream: UnixStream,
    serial: u32,
    buf: Vec<u8>,
    queue: std::collections::VecDeque<Message>,
    unique_name: String,
}

impl Connection {
    /// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` or [`SYSTEM_BUS_SOCKET`]).
    pub fn system() -> Result<Connection> {
        let address = std::env::var(ENV_SYSTEM_BUS)
            .ok()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| format!("unix:path={SYSTEM_BUS_SOCKET}"));
        Connection::open(&address)
    }

    /// Connects to `address` (`unix:path=...` or `unix:abstract=...`; the first that works
    /// of a `;`-separated list), authenticates and says Hello.
    pub fn open(address: &str) -> Result<Connection> {
        let mut last = bad(&format!("no usable address in {address:?}"));
        for one in address.split(';') {
            match connect(one) {
                Ok(stream) => return Connection::start(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn start(mut stream: UnixStream) -> Result<Connection> {
        let io = |e: std::io::Error| Error::io("D-Bus authentication", e);
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() }.to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        stream
            .write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())
            .map_err(io)?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if stream.read(&mut byte).map_err(io)? == 0 || line.len() > 512 {
                return Err(bad("the bus closed the connection during authentication"));
            }
            line.push(byte[0]);
        }
        if !line.starts_with(b"OK ") {
            return Err(bad(&format!(
                "authentication refused: {}",
                String::from_utf8_lossy(&line).trim()
            )));
        }
        stream.write_all(b"BEGIN\r\n").map_err(io)?;
        stream.set_read_timeout(None).map_err(io)?;
        let mut conn = Connection {
            stream,
            serial: 0,
            buf: Vec::new(),
            queue: Default::default(),
            unique_name: String::new(),
        };
        let reply = conn.call(
            Message::call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "Hello",
                vec![],
            ),
            Duration::from_secs(10),
        )?;
        conn.unique_name = reply.str_arg(0).unwrap_or_default().to_string();
        Ok(conn)
    }

    /// This connection's unique name (`:1.42`).
    pub fn unique_name(&self) -> &str {
        &self.unique_name
    }

    /// Sends a message; returns its serial.
    pub fn send(&mut self, message: &Message) -> Result<u32> {
        self.serial = self.serial.wrapping_add(1).max(1);
        let bytes = message.encode(self.serial)?;
        self.stream
            .write_all(&bytes)
            .map_err(|e| Error::io("writing to the D-Bus socket", e))?;
        Ok(self.serial)
    }

    /// Calls a method and waits up to `timeout` for its reply; other messages received
    /// meanwhile are kept for [`Connection::receive`]. An error reply is an error.
    pub fn call(&mut self, call: Message, timeout: Duration) -> Result<Message> {
        let serial = self.send(&call)?;
        let deadline = Instant::now() + timeout;
        let mut kept = Vec::new();
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_message(Some(left))? {
                None => {
                    break Err(bad(&format!(
                        "no reply to {} within {timeout:?}",
                        call.member.as_deref().unwrap_or("?")
                    )))
                }
                Some(m) if m.reply_serial == Some(serial) && m.kind == ERROR => {
                    break Err(bad(&format!(
                        "{} failed: {} {}",
                        call.member.as_deref().unwrap_or("?"),
                        m.error_name.as_deref().unwrap_or("?"),
                        m.str_arg(0).unwrap_or("")
                    )))
                }
                Some(m) if m.reply_serial == Some(serial) => break Ok(m),
                Some(m) => kept.push(m),
            }
        };
        self.queue.extend(kept);
        result
    }

    /// Calls `org.freedesktop.DBus.AddMatch` with `rule`.
    pub fn add_match(&mut self, rule: &str) -> Result<()> {
        self.call(
            Message::call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "AddMatch",
                vec![Value::Str(rule.into())],
            ),
            Duration::from_secs(10),
        )
        .map(|_| ())
    }

    /// The unique name owning `name`, if any.
    pub fn name_owner(&mut self, name: &str) -> Result<Option<String>> {
        let call = Message::call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetNameOwner",
            vec![Value::Str(name.into())],
        );
        match self.call(call, Duration::from_secs(10)) {
            Ok(m) => Ok(m.str_arg(0).map(str::to_string)),
            Err(e) if e.to_string().contains("NameHasNoOwner") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The next message, waiting up to `timeout` (`None`: forever); `Ok(None)` on timeout.
    pub fn receive(&mut self, timeout: Option<Duration>) -> Result<Option<Message>> {
        if let Some(m) = self.queue.pop_front() {
            return Ok(Some(m));
        }
        self.read_message(timeout)
    }

    fn read_message(&mut self, timeout: Option<Duration>) -> Result<Option<Message>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(total) = Message::total_len(&self.buf)? {
                if self.buf.len() >= total {
                    let m = Message::decode(&self.buf[..total]);
                    self.buf.drain(..total);
                    return m.map(Some);
                }
            }
            let wait = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    Some(left)
                }
                None => None,
            };
            self.stream
                .set_read_timeout(wait)
                .map_err(|e| Error::io("D-Bus socket", e))?;
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(bad("the bus closed the connection")),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Ok(None)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("reading the D-Bus socket", e)),
            }
        }
    }
}

fn connect(address: &str) -> Result<UnixStream> {
    let rest = address
        .strip_prefix("unix:")
        .ok_or_else(|| bad(&format!("unsupported address {address:?} (only unix:)")))?;
    let io = |e: std::io::Error| Error::io(format!("connecting to the bus at {address}"), e);
    for kv in rest.split(',') {
        if let Some(path) = kv.strip_prefix("path=") {
            return UnixStream::connect(unescape(path)?).map_err(io);
        }
        if let Some(name) = kv.strip_prefix("abstract=") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(unescape(name)?.as_bytes()).map_err(io)?;
            return UnixStream::connect_addr(&addr).map_err(io);
        }
    }
    Err(bad(&format!("no path= or abstract= in {address:?}")))
}

/// Undoes the `%xx` escaping of D-Bus addresses.
fn unescape(s: &str) -> Result<String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(|| bad("bad % escape in address"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad("bad % escape in address"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad("address is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let mut m = Message::call(
            "org.fedoraproject.FirewallD1",
            "/org/fedoraproject/FirewallD1",
            "org.freedesktop.DBus.Properties",
            "Get",
            vec![
                Value::Str("org.fedoraproject.FirewallD1".into()),
                Value::Str("state".into()),
                Value::U32(7),
                Value::Byte(3),
                Value::Variant(Box::new(Value::Str("RUNNING".into()))),
                Value::Bool(true),
                Value::Path("/a/b".into()),
            ],
        );
        let bytes = m.encode(42).unwrap();
        let back = Message::decode(&bytes).unwrap();
        m.serial = 42;
        assert_eq!(back, m);
        assert_eq!(back.body[4].as_str(), Some("RUNNING"));
        assert_eq!(Message::total_len(&bytes[..16]).unwrap(), Some(bytes.len()));
        assert_eq!(Message::total_len(&bytes[..15]).unwrap(), None);
    }

    #[test]
    fn decodes_a_big_endian_signal() {
        // NameOwnerChanged("org.fedoraproject.FirewallD1", "", ":1.7"), big endian, as
        // another implementation may send it.
        let mut w = Vec::new();
        let be = |w: &mut Vec<u8>, n: u32| w.extend_from_slice(&n.to_be_bytes());
        let align = |w: &mut Vec<u8>, to: usize| w.resize(pad(w.len(), to), 0);
        let s = |w: &mut Vec<u8>, t: &str| {
            align(w, 4);
            w.extend_from_slice(&(t.len() as u32).to_be_bytes());
            w.extend_from_slice(t.as_bytes());
            w.push(0);
        };
        let mut body = Vec::new();
        for t in ["org.fedoraproject.FirewallD1", "", ":1.7"] {
            s(&mut body, t);
        }
        w.extend_from_slice(&[b'B', SIGNAL, 0, 1]);
        be(&mut w, body.len() as u32);
        be(&mut w, 9);
        be(&mut w, 0);
        let start = w.len();
        for (code, sig, val) in [
            (1u8, "o", "/org/freedesktop/DBus"),
            (2, "s", "org.freedesktop.DBus"),
            (3, "s", "NameOwnerChanged"),
            (7, "s", "org.freedesktop.DBus"),
        ] {
            align(&mut w, 8);
            w.extend_from_slice(&[code, 1, sig.as_bytes()[0], 0]);
            s(&mut w, val);
        }
        align(&mut w, 8);
        w.extend_from_slice(&[8, 1, b'g', 0, 3, b's', b's', b's', 0]);
        let len = (w.len() - start) as u32;
        w[12..16].copy_from_slice(&len.to_be_bytes());
        align(&mut w, 8);
        w.extend_from_slice(&body);
        let m = Message::decode(&w).unwrap();
        assert!(m.is_signal("org.freedesktop.DBus", "NameOwnerChanged"));
        assert_eq!(m.sender.as_deref(), Some("org.freedesktop.DBus"));
        assert_eq!(m.str_arg(0), Some("org.fedoraproject.FirewallD1"));
        assert_eq!(m.str_arg(1), Some(""));
        assert_eq!(m.str_arg(2), Some(":1.7"));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(Message::decode(b"x").is_err());
        let mut bytes = Message::signal("/a", "b.c", "D", vec![Value::Str("x".into())])
            .encode(1)
            .unwrap();
        bytes.truncate(bytes.len() - 1);
        assert!(Message::decode(&bytes).is_err());
        assert!(Message::signal("/a", "b.c", "D", vec![Value::Str("a\0b".into())])
            .encode(1)
            .is_err());
        assert_eq!(unescape("/tmp/a%20b").unwrap(), "/tmp/a b");
        assert!(connect("tcp:host=x").is_err());
    }
}
