//! Whether the guests can run on KVM or must use TCG (qemu's emulator).
//!
//! `/dev/kvm` may exist and still be unusable: nested virtualisation missing or broken,
//! where qemu starts and then the guest never boots, or qemu aborts on an MSR it cannot set.
//! So the question is answered by doing it: the guest kernel is booted with `-accel kvm`, the
//! machine libvirt will use and qemu's default CPU, and its `/init` powers off at once
//! (`bi.poweroff`). KVM counts as usable only if that qemu exits 0 within the deadline.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::die_with_parent;
use super::image::GuestImage;

/// qemu's x86-64 system emulator.
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// The KVM device.
const KVM_DEVICE: &str = "/dev/kvm";

/// How the guests run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation: libvirt domain type `kvm`.
    Kvm,
    /// qemu's TCG emulator: libvirt domain type `qemu`, with why KVM was not used.
    Tcg(String),
}

impl Accel {
    /// The libvirt domain type: `kvm` or `qemu`.
    pub fn domain_type(&self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg(_) => "qemu",
        }
    }

    /// Boots `image` under KVM with `bi.poweroff` and decides (see the module documentation);
    /// a qemu still running after `deadline` is killed.
    pub fn detect(image: &GuestImage, deadline: Duration) -> Accel {
        if !Path::new(KVM_DEVICE).exists() {
            return Accel::Tcg(format!("no {KVM_DEVICE}"));
        }
        let append = "console=ttyS0 quiet panic=-1 bi.poweroff";
        let mut command = Command::new(QEMU);
        command
            .args([
                "-accel",
                "kvm",
                "-machine",
                "pc",
                "-m",
                "96",
                "-nodefaults",
                "-display",
                "none",
            ])
            .args(["-serial", "none", "-no-reboot", "-kernel"])
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .args(["-append", append])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        die_with_parent(&mut command);
        let spawned = command.spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => return Accel::Tcg(format!("cannot run {QEMU}: {e}")),
        };
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Ok(None) | Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Accel::Tcg(format!(
                        "/dev/kvm is there, but a guest under KVM did not boot within {deadline:?}"
                    ));
                }
            }
        };
        if status.success() {
            return Accel::Kvm;
        }
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        Accel::Tcg(format!("qemu -accel kvm failed ({status}): {last}"))
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Accel::Kvm => f.write_str("KVM"),
            Accel::Tcg(why) => write!(f, "TCG ({why})"),
        }
    }
}
