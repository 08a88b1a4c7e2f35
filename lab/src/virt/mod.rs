//! Real libvirt and real qemu guests on a lab's bridge, for the end-to-end test
//! (`tests/libvirt.rs`, docs/design.md §7). Everything comes from Debian packages:
//! libvirt-daemon-system, qemu-system-x86, busybox-static, and a kernel package that is
//! unpacked, not installed.
//!
//! - [`GuestImage`]: the guests' kernel (Debian's cloud kernel) and a busybox initramfs
//!   whose `/init` loads the virtio modules and serves a shell on the second serial port.
//! - [`Accel`]: KVM if a guest really boots on it, else TCG.
//! - [`Libvirtd`]: a private libvirtd inside a lab's host namespace, with private
//!   directories and its own PID namespace; dropping it kills it and every guest.
//! - [`GuestConsole`]: runs commands in a guest over its serial socket.
//! - [`measure`]: a reachability matrix (IPv4, IPv6 link-local, ARP) probed from inside
//!   the guests and from the lab's gateway and host namespaces.
//! - The domain XML is [`crate::bootable_domain_xml`]: VDSM's `<interface>` elements and
//!   metadata, booting the image.
//!
//! ```ignore
//! let image = GuestImage::prepare(&cache, dir.path())?;
//! let accel = Accel::detect(&image, Duration::from_secs(8));
//! let daemon = Libvirtd::start(lab.host_ns(), &dir.path().join("libvirt"))?;
//! daemon.virsh(&["create", daemon.xml_file("vm1", &xml)?.to_str().unwrap()])?;
//! let mut console = GuestConsole::connect("vm1", &socket, Duration::from_secs(120))?;
//! console.run_ok("bi up 56:6f:4c:ab:00:01 10.77.0.11/24", Duration::from_secs(15))?;
//! ```

mod accel;
mod console;
mod cpio;
mod daemon;
mod image;
mod probe;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

pub use accel::{Accel, QEMU};
pub use console::GuestConsole;
pub(crate) use daemon::children_of;
pub use daemon::{Libvirtd, LIBVIRTD, PRIVATE_DIRS, STOCK_NWFILTERS, VIRSH};
pub use image::{GuestImage, BUSYBOX, DPKG_DEB, GUEST_SCRIPT, KERNEL_DEB_VAR, KERNEL_METAPACKAGE};
pub use probe::{measure, write_script, Place, Station, GUEST_PROTOCOLS};

/// VDSM's network filter on every vNIC (`<filterref filter='vdsm-no-mac-spoofing'/>`), as
/// `vdsm-tool` defines it on a host: libvirt's stock anti-spoofing filters for MAC and ARP.
pub const VDSM_NWFILTER: &str = "<filter name='vdsm-no-mac-spoofing' chain='root'>
    <filterref filter='no-mac-spoofing'/>
    <filterref filter='no-arp-mac-spoofing'/>
</filter>
";

/// Why the guests cannot run here (a missing program, file or directory), or None.
pub fn obstacle() -> Option<String> {
    let mut missing: Vec<String> = [
        LIBVIRTD,
        VIRSH,
        QEMU,
        BUSYBOX,
        DPKG_DEB,
        STOCK_NWFILTERS,
        "/dev/net/tun",
    ]
    .iter()
    .filter(|p| !Path::new(p).exists())
    .map(|p| p.to_string())
    .collect();
    missing.extend(
        PRIVATE_DIRS
            .iter()
            .filter(|(_, mount_point)| !Path::new(mount_point).is_dir())
            .map(|(_, mount_point)| mount_point.to_string()),
    );
    (!missing.is_empty()).then(|| {
        format!(
            "missing {} (packages libvirt-daemon-system, qemu-system-x86, busybox-static)",
            missing.join(", ")
        )
    })
}

/// Makes the process `command` starts get SIGKILL when the thread that started it ends,
/// so that nothing it runs outlives a killed test.
pub(crate) fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
