//! A private libvirtd (qemu:///system) inside a lab namespace.
//!
//! libvirtd runs as root in its own network namespace (a lab's host namespace: the bridge
//! is there, the taps it creates land there), its own mount namespace and its own PID
//! namespace:
//!
//! - the mount namespace puts a private directory over each of libvirt's own (`/run`,
//!   `/etc/libvirt`, `/var/lib/libvirt`, `/var/cache/libvirt`, `/var/log/libvirt`), so it
//!   shares no socket, state, configuration or log with a libvirt of the machine, finds no
//!   system D-Bus (no machined, no firewalld) and no network definition: libvirt's
//!   `default` network does not exist here, let alone start. Its configuration runs qemu as
//!   root without a security driver, cgroups, per-VM mount namespaces or virtlogd.
//! - the PID namespace holds libvirtd and every qemu it starts; its init is a shell that
//!   reaps the daemonised qemu processes (libvirtd would wait on zombies otherwise). Killing
//!   that init kills them all, and `unshare --kill-child` plus the parent-death signal of
//!   the whole chain do it too when the test process itself dies.
//!
//! The test talks to it with `virsh -c qemu:///system?socket=DIR/run/libvirt/libvirt-sock`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::die_with_parent;
use crate::tools::{run_ok, IP};

/// The monolithic libvirt daemon (package libvirt-daemon).
pub const LIBVIRTD: &str = "/usr/sbin/libvirtd";
/// libvirt's client (package libvirt-clients).
pub const VIRSH: &str = "/usr/bin/virsh";
/// util-linux's `unshare`.
const UNSHARE: &str = "/usr/bin/unshare";
/// The init of the PID namespace.
const SH: &str = "/bin/sh";
/// libvirt's stock network filters (package libvirt-daemon-config-nwfilter).
pub const STOCK_NWFILTERS: &str = "/etc/libvirt/nwfilter";
/// libvirt's directories and the private directory (under the daemon's) mounted over each.
/// The mount points must exist: `libvirt-daemon-system` creates them.
pub const PRIVATE_DIRS: [(&str, &str); 5] = [
    ("run", "/run"),
    ("etc", "/etc/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
];
/// `PATH` of the daemon (it finds qemu, ebtables and the like there).
const DAEMON_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// How long the daemon may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long stopping may take before the launcher itself is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The init of the PID namespace: `sh -c LAUNCHER sh LIBVIRTD SRC DST...` bind-mounts each
/// SRC over DST, starts libvirtd and waits, reaping every orphan while it does.
const LAUNCHER: &str = r#"set -e
daemon=$1
shift
while [ $# -gt 0 ]; do
    mount --bind "$1" "$2"
    shift 2
done
"$daemon" &
wait
"#;

/// qemu.conf: qemu as root, no confinement, nothing outside the namespaces.
const QEMU_CONF: &str = r#"# Written by bridge_isolation_lab::virt for a private libvirtd.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"#;

/// libvirtd.conf: warnings and errors to stderr (the daemon's log file).
const LIBVIRTD_CONF: &str = r#"# Written by bridge_isolation_lab::virt for a private libvirtd.
log_outputs = "3:stderr"
"#;

/// A running private libvirtd; dropping it kills it and every guest.
#[derive(Debug)]
pub struct Libvirtd {
    /// `ip netns exec NS unshare ...`, while running.
    child: Option<Child>,
    /// Its directory: the private directories, `libvirtd.log`, `xml/`.
    dir: PathBuf,
    /// The namespace it runs in.
    netns: String,
}

impl Libvirtd {
    /// Starts libvirtd in network namespace `netns` with its private directories under `dir`
    /// (absolute, empty, outside `/run`), and waits until it answers.
    pub fn start(netns: &str, dir: &Path) -> Result<Libvirtd> {
        if !dir.is_absolute() || dir.starts_with("/run") {
            bail!(
                "the libvirtd directory {} must be absolute and outside /run",
                dir.display()
            );
        }
        for (name, mount_point) in PRIVATE_DIRS {
            if !Path::new(mount_point).is_dir() {
                bail!("{mount_point} does not exist (package libvirt-daemon-system creates it)");
            }
            std::fs::create_dir_all(dir.join(name))
                .with_context(|| format!("cannot create {name} in {}", dir.display()))?;
        }
        let etc = dir.join("etc");
        std::fs::write(etc.join("qemu.conf"), QEMU_CONF).context("cannot write qemu.conf")?;
        std::fs::write(etc.join("libvirtd.conf"), LIBVIRTD_CONF).context("cannot write libvirtd.conf")?;
        copy_stock_nwfilters(&etc.join("nwfilter"))?;
        std::fs::create_dir_all(dir.join("xml")).context("cannot create the XML directory")?;

        let log = File::create(dir.join("libvirtd.log")).context("cannot create libvirtd.log")?;
        let mut command = Command::new(IP);
        command
            .args([
                "netns",
                "exec",
                netns,
                UNSHARE,
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
            ])
            .args(["--", SH, "-c", LAUNCHER, "sh", LIBVIRTD]);
        for (name, mount_point) in PRIVATE_DIRS {
            command.arg(dir.join(name)).arg(mount_point);
        }
        command
            .env_clear()
            .env("PATH", DAEMON_PATH)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cannot share libvirtd.log")?)
            .stderr(log);
        die_with_parent(&mut command);
        let child = command.spawn().context("cannot start libvirtd")?;
        let mut daemon = Libvirtd {
            child: Some(child),
            dir: dir.to_path_buf(),
            netns: netns.to_string(),
        };
        daemon.wait_until_ready()?;
        Ok(daemon)
    }

    /// Polls until `virsh uri` answers; fails if the launcher exits or time runs out.
    fn wait_until_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("polling libvirtd")? {
                    self.child = None;
                    bail!("libvirtd exited ({status}):\n{}", self.log_tail(20));
                }
            }
            if self.socket().exists() && self.virsh(&["uri"]).is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "libvirtd did not answer within {START_TIMEOUT:?}:\n{}",
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/libvirt/libvirt-sock")
    }

    /// The connection URI: `qemu:///system` on its socket.
    pub fn uri(&self) -> String {
        format!("qemu:///system?socket={}", self.socket().display())
    }

    /// The network namespace it runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `virsh -q -c URI ARGS`; fails with virsh's stderr unless it exits 0; returns
    /// its stdout.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        let uri = self.uri();
        let mut full = vec!["-q", "-c", uri.as_str()];
        full.extend_from_slice(args);
        run_ok(VIRSH, &full)
    }

    /// Writes `xml` to `DIR/xml/NAME.xml` (for `virsh create`, `attach-device` ...) and
    /// returns the path.
    pub fn xml_file(&self, name: &str, xml: &str) -> Result<PathBuf> {
        let path = self.dir.join("xml").join(format!("{name}.xml"));
        std::fs::write(&path, xml).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// The last `lines` lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("libvirtd.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills the PID namespace (libvirtd and every qemu) and waits for the launcher. Also
    /// done on drop; calling it again does nothing.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // The namespace's init is the launcher's only child.
        for pid in children_of(child.id()) {
            // SAFETY: kill(2) only sends a signal.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let started = Instant::now();
        loop {
            if child.try_wait().context("waiting for the libvirtd launcher")?.is_some() {
                return Ok(());
            }
            if started.elapsed() > STOP_TIMEOUT {
                let _ = child.kill();
                child.wait().context("waiting for the killed libvirtd launcher")?;
                bail!("libvirtd's namespace did not end within {STOP_TIMEOUT:?}: launcher killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::warn!("stopping libvirtd: {e:#}");
        }
    }
}

/// Copies libvirt's stock network filters into `dest` (libvirt loads them at start).
fn copy_stock_nwfilters(dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let entries = std::fs::read_dir(STOCK_NWFILTERS)
        .with_context(|| format!("cannot list {STOCK_NWFILTERS} (package libvirt-daemon-config-nwfilter)"))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "xml") {
            let name = path.file_name().context("a file has a name")?;
            std::fs::copy(&path, dest.join(name)).with_context(|| format!("cannot copy {}", path.display()))?;
        }
    }
    Ok(())
}

/// The processes whose parent is `parent`, from `/proc/*/stat`.
pub(crate) fn children_of(parent: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...; comm may hold spaces and parentheses.
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_found_by_their_parent() {
        let mut child = Command::new("/bin/sleep").arg("5").spawn().unwrap();
        let mine = children_of(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(mine.contains(&(child.id() as i32)), "{mine:?}");
        assert!(children_of(child.id()).is_empty());
    }
}
