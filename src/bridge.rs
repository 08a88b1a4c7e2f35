//! Live bridge ports, read from sysfs of the caller's network namespace (no root needed).

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::mac::Mac;
use crate::paths::SYS_CLASS_NET;

/// One port of a bridge as the kernel shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// Interface name.
    pub name: String,
    /// Interface index, for netlink.
    pub ifindex: u32,
    /// Its MAC address.
    pub mac: Option<Mac>,
    /// The port's `isolated` flag; `None` on kernels without it.
    pub isolated: Option<bool>,
}

fn sys(parts: &[&str]) -> PathBuf {
    let mut p = PathBuf::from(SYS_CLASS_NET);
    p.extend(parts);
    p
}

fn read_trimmed(path: PathBuf) -> std::io::Result<String> {
    std::fs::read_to_string(path).map(|s| s.trim().to_string())
}

/// The ports of `bridge`, sorted by name; `None` when there is no such bridge.
pub fn ports(bridge: &str) -> Result<Option<Vec<Port>>> {
    let brif = sys(&[bridge, "brif"]);
    let entries = match std::fs::read_dir(&brif) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("listing {}", brif.display()), e)),
    };
    let mut ports = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", brif.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match port(&name) {
            Ok(p) => ports.push(p),
            // The port left the bridge while we looked: it is no longer ours to judge.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("reading port {name} of {bridge}"), e)),
        }
    }
    ports.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(ports))
}

fn port(name: &str) -> std::io::Result<Port> {
    let ifindex = read_trimmed(sys(&[name, "ifindex"]))?
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("ifindex: {e}")))?;
    let mac = read_trimmed(sys(&[name, "address"]))?.parse().ok();
    Ok(Port {
        name: name.to_string(),
        ifindex,
        mac,
        isolated: isolated(name)?,
    })
}

/// Reads a port's `isolated` flag; `None` when the kernel has no such flag.
pub fn isolated(port: &str) -> std::io::Result<Option<bool>> {
    match read_trimmed(sys(&[port, "brport", "isolated"])) {
        Ok(v) => Ok(Some(v == "1")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && sys(&[port, "brport"]).exists() => Ok(None),
        Err(e) => Err(e),
    }
}

/// True when `name` is a bridge in this namespace.
pub fn exists(name: &str) -> bool {
    sys(&[name, "bridge"]).is_dir()
}
