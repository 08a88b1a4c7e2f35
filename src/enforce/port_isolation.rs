//! Default backend: the kernel's bridge port `isolated` flag (Linux >= 4.18), over netlink.
//!
//! An isolated port forwards only to non-isolated ports, so VM ports are isolated while
//! the uplink, trusted vNICs and the bridge's own interface (the host) are not: every
//! protocol is covered and nothing is filtered in the data path.

use super::Backend;
use crate::error::{Error, Result};
use crate::model::backend::{BackendKind, Change, Observed};
use crate::model::plan::{BridgePlan, Plan};
use crate::sys::bridge;
use crate::sys::netlink::RouteSocket;

/// The port-isolation backend; it opens its netlink socket only when it has work.
#[derive(Default)]
pub struct PortIsolation {
    socket: Option<RouteSocket>,
}

impl PortIsolation {
    /// A backend with no socket open yet.
    pub fn new() -> PortIsolation {
        PortIsolation::default()
    }

    /// Sets the flag of `port` and reads it back; `None` when the port left `bridge` (or was
    /// deleted) meanwhile: it is not a port to enforce on any more (the watcher races with
    /// VMs going away).
    fn set(&mut self, bridge: &str, port: &crate::model::port::Port, isolated: bool) -> Result<Option<Change>> {
        let set = RouteSocket::lazy(&mut self.socket)?
            .set_isolated(port.ifindex, isolated)
            .map_err(|e| Error::Kernel(format!("{bridge} port {}: {e}", port.name)));
        let now = set.and_then(|()| {
            bridge::isolated(&port.name).map_err(|e| Error::io(format!("reading back {}", port.name), e))
        });
        let now = match now {
            Err(_) if !bridge::is_port_of(bridge, port) => {
                log::debug!("{bridge} port {}: left the bridge while its flag was set", port.name);
                return Ok(None);
            }
            other => other?,
        };
        if now != Some(isolated) {
            return Err(Error::Kernel(format!(
                "{bridge} port {}: isolated flag reads {now:?} after setting {isolated}",
                port.name
            )));
        }
        Ok(Some(Change {
            bridge: bridge.to_string(),
            port: port.name.clone(),
            isolated,
        }))
    }

    fn converge(
        &mut self,
        bridges: &[BridgePlan],
        want: impl Fn(&crate::model::plan::PortPlan) -> bool,
    ) -> Result<Vec<Change>> {
        let mut changes = Vec::new();
        for b in bridges {
            for p in &b.ports {
                let wanted = want(p);
                match p.port.isolated {
                    Some(now) if now == wanted => {}
                    None => {
                        return Err(Error::Kernel(format!(
                            "{} port {}: this kernel has no bridge port isolation flag",
                            b.bridge, p.port.name
                        )))
                    }
                    Some(_) => changes.extend(self.set(&b.bridge, &p.port, wanted)?),
                }
            }
        }
        Ok(changes)
    }
}

impl Backend for PortIsolation {
    fn kind(&self) -> BackendKind {
        BackendKind::PortIsolation
    }

    fn available(&self) -> Result<()> {
        let release = kernel_release();
        match parse_release(release) {
            Some(v) if v >= (4, 18) => Ok(()),
            _ => Err(Error::Kernel(format!(
                "kernel {release} has no bridge port isolation flag (needs 4.18 or later)"
            ))),
        }
    }

    fn observe(&mut self, plan: &Plan) -> Result<Vec<Observed>> {
        Ok(plan
            .bridges
            .iter()
            .flat_map(|b| {
                b.ports.iter().map(|p| Observed {
                    bridge: b.bridge.clone(),
                    port: p.port.name.clone(),
                    isolated: p.port.isolated == Some(true),
                })
            })
            .collect())
    }

    fn apply(&mut self, plan: &Plan) -> Result<Vec<Change>> {
        self.converge(&plan.bridges, |p| p.role.isolated())
    }

    fn remove(&mut self, bridges: &[BridgePlan]) -> Result<Vec<Change>> {
        self.converge(bridges, |_| false)
    }
}

/// The running kernel's release string (`uname -r`).
fn kernel_release() -> &'static str {
    // Asked once per process: a hook checks availability before it decides whether to hand
    // its run over and again when it picks the backend.
    static RELEASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RELEASE.get_or_init(|| {
        // SAFETY: utsname is plain data; uname fills it.
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        if unsafe { libc::uname(&mut uts) } != 0 {
            return String::new();
        }
        // SAFETY: uname NUL-terminates release.
        unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    })
}

/// Major and minor version of a release like `4.18.0-553.el8_10.x86_64`.
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::parse_release;

    #[test]
    fn releases() {
        assert_eq!(parse_release("4.18.0-553.el8_10.x86_64"), Some((4, 18)));
        assert_eq!(parse_release("3.10.0-1160.el7.x86_64"), Some((3, 10)));
        assert_eq!(parse_release("6.18.44-fc"), Some((6, 18)));
        assert_eq!(parse_release(""), None);
    }
}
