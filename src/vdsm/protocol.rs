//! The VDSM hook protocol (docs/design.md §2): which point we run at, the payload file,
//! exit codes, and the one bounded line VDSM shows when a hook fails.
//!
//! One binary serves every point; VDSM runs it as `<hooks>/<point>/50_bridge_isolation`, so
//! the point is the name of the directory it was run from (or the first argument, by hand).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The hook points this project installs into. Never `after_vm_dehibernate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Point {
    /// Validate and record the network policy; abort the setup on bad input.
    BeforeNetworkSetup,
    /// Record the policy and reconcile the new bridges.
    AfterNetworkSetup,
    /// Restore the policy the failed setup replaced, and reconcile.
    AfterNetworkSetupFail,
    /// Write `<port isolated="yes"/>` into vNICs on isolated bridges.
    BeforeVmStart,
    /// Record trusted vNICs and reconcile.
    AfterVmStart,
    /// Write `<port isolated="yes"/>` into the plugged vNIC.
    BeforeNicHotplug,
    /// Record the vNIC and reconcile.
    AfterNicHotplug,
    /// Put back `<port isolated="yes"/>`, which VDSM's updateDevice drops.
    BeforeUpdateDevice,
    /// Record the vNIC and reconcile.
    AfterUpdateDevice,
    /// Reconcile the taps of an incoming VM (VDSM ignores hook output on the way in).
    AfterVmMigrateDestination,
    /// Forget the VM's records.
    AfterVmDestroy,
}

impl Point {
    /// Every point, in lifecycle order.
    pub const ALL: [Point; 11] = [
        Point::BeforeNetworkSetup,
        Point::AfterNetworkSetup,
        Point::AfterNetworkSetupFail,
        Point::BeforeVmStart,
        Point::AfterVmStart,
        Point::BeforeNicHotplug,
        Point::AfterNicHotplug,
        Point::BeforeUpdateDevice,
        Point::AfterUpdateDevice,
        Point::AfterVmMigrateDestination,
        Point::AfterVmDestroy,
    ];

    /// The directory name under VDSM's hook tree.
    pub fn name(self) -> &'static str {
        match self {
            Point::BeforeNetworkSetup => "before_network_setup",
            Point::AfterNetworkSetup => "after_network_setup",
            Point::AfterNetworkSetupFail => "after_network_setup_fail",
            Point::BeforeVmStart => "before_vm_start",
            Point::AfterVmStart => "after_vm_start",
            Point::BeforeNicHotplug => "before_nic_hotplug",
            Point::AfterNicHotplug => "after_nic_hotplug",
            Point::BeforeUpdateDevice => "before_update_device",
            Point::AfterUpdateDevice => "after_update_device",
            Point::AfterVmMigrateDestination => "after_vm_migrate_destination",
            Point::AfterVmDestroy => "after_vm_destroy",
        }
    }

    /// The point of that directory name.
    pub fn from_name(name: &str) -> Option<Point> {
        Point::ALL.into_iter().find(|p| p.name() == name)
    }

    /// True where VDSM aborts the operation on any non-zero exit.
    pub fn aborts(self) -> bool {
        matches!(
            self,
            Point::BeforeNetworkSetup | Point::BeforeVmStart | Point::BeforeNicHotplug | Point::BeforeUpdateDevice
        )
    }

    /// True for the network points (JSON payload, run as root).
    pub fn is_network(self) -> bool {
        matches!(
            self,
            Point::BeforeNetworkSetup | Point::AfterNetworkSetup | Point::AfterNetworkSetupFail
        )
    }

    /// The environment variable naming the payload file.
    pub fn payload_var(self) -> &'static str {
        if self.is_network() {
            "_hook_json"
        } else {
            "_hook_domxml"
        }
    }

    /// The exit code for a failure here: 2 where VDSM aborts (and we want our line reported),
    /// 1 elsewhere (an error, but the other scripts still run).
    pub fn failure_code(self) -> u8 {
        if self.aborts() {
            2
        } else {
            1
        }
    }
}

/// The point from how we were run: `argv[1]` if given, else the directory of `argv[0]`.
pub fn point_from_args(args: &[OsString]) -> Option<Point> {
    if let Some(explicit) = args.get(1) {
        return Point::from_name(explicit.to_str()?);
    }
    let dir = Path::new(args.first()?).parent()?.file_name()?;
    Point::from_name(dir.to_str()?)
}

/// Longest error line written; VDSM reports it as the reason an operation failed.
pub const MAX_ERROR_LINE: usize = 400;

/// `message` as one printable line of bounded length: a hostile payload can put anything
/// into a parser's error (a megabyte tag name, escape sequences), and VDSM shows that line.
pub fn one_line(message: &str) -> String {
    let mut out = String::new();
    for c in message.chars() {
        if out.len() >= MAX_ERROR_LINE {
            out.push_str(&format!("... ({} bytes)", message.len()));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// VDSM's payload file, shared by every script of the point.
pub struct Payload {
    path: PathBuf,
    /// Its contents when the hook started.
    pub bytes: Vec<u8>,
}

/// Largest payload read; a 20,000-network request is a few MiB.
pub const MAX_PAYLOAD: u64 = 64 << 20;

impl Payload {
    /// Reads the file named by the environment variable `var`.
    pub fn from_env(var: &str) -> Result<Payload> {
        let path = std::env::var_os(var)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| Error::Payload(format!("{var} is not set: not run by VDSM?")))?;
        let file = std::fs::File::open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        // Sized from the metadata: one read of the whole file (and one to see its end).
        let hint = file.metadata().map_or(0, |m| m.len().min(MAX_PAYLOAD) + 1);
        let mut bytes = Vec::with_capacity(hint as usize);
        file.take(MAX_PAYLOAD + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if bytes.len() as u64 > MAX_PAYLOAD {
            return Err(Error::Payload(format!(
                "{} is larger than {MAX_PAYLOAD} bytes",
                path.display()
            )));
        }
        Ok(Payload { path, bytes })
    }

    /// Replaces the contents in place (VDSM reads the same file back).
    pub fn replace(&self, bytes: &[u8]) -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.path)
            .map_err(|e| Error::io(format!("opening {}", self.path.display()), e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_names_round_trip() {
        for p in Point::ALL {
            assert_eq!(Point::from_name(p.name()), Some(p));
        }
        assert_eq!(Point::from_name("after_vm_dehibernate"), None);
    }

    #[test]
    fn point_from_how_vdsm_runs_us() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            point_from_args(&args(&["/usr/libexec/vdsm/hooks/before_vm_start/50_bridge_isolation"])),
            Some(Point::BeforeVmStart)
        );
        assert_eq!(
            point_from_args(&args(&["x", "after_network_setup"])),
            Some(Point::AfterNetworkSetup)
        );
        assert_eq!(point_from_args(&args(&["/usr/bin/vdsm-hook"])), None);
        assert_eq!(point_from_args(&args(&["50_bridge_isolation"])), None);
    }

    #[test]
    fn source_hook_tree_mirrors_the_points() {
        let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks");
        let mut found: Vec<String> = std::fs::read_dir(&hooks)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        found.sort();
        let mut expected: Vec<String> = Point::ALL.iter().map(|p| p.name().to_string()).collect();
        expected.sort();
        assert_eq!(found, expected);
        for p in Point::ALL {
            let link = std::fs::read_link(hooks.join(p.name()).join(crate::host::paths::HOOK_NAME)).unwrap();
            assert_eq!(link, Path::new("../../target/release/vdsm-hook-bridge-isolation"));
        }
    }

    #[test]
    fn error_lines_are_printable_and_bounded() {
        assert_eq!(one_line("payload: fine"), "payload: fine");
        assert_eq!(one_line("a\nb\r\u{1b}[2J"), "a\\nb\\r\\u{1b}[2J");
        let long = one_line(&format!("invalid XML: <{}>", "x".repeat(1 << 20)));
        assert!(long.len() < MAX_ERROR_LINE + 40, "{}", long.len());
        assert!(long.ends_with(&format!("... ({} bytes)", 14 + (1 << 20) + 1)), "{long}");
    }

    #[test]
    fn exit_codes_follow_vdsm() {
        assert_eq!(Point::BeforeNetworkSetup.failure_code(), 2);
        assert_eq!(Point::BeforeUpdateDevice.failure_code(), 2);
        assert_eq!(Point::AfterVmStart.failure_code(), 1);
        assert_eq!(Point::AfterNetworkSetupFail.failure_code(), 1);
    }
}
