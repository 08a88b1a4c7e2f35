//! A systemd machine in a lab namespace: the machine's own OS tree booted by
//! `systemd-nspawn` with systemd as PID 1, so that unit files run as systemd runs them on a
//! host, sandbox directives included, with no systemd on the machine itself.
//!
//! - **Root**: an overlay whose lower layer is the machine's `/` and whose upper layer is a
//!   tmpfs: the caller installs files into [`Container::root`] (before or after the boot)
//!   and nothing reaches the machine's disk.
//! - **Boot**: `systemd-nspawn --boot` into the target [`TARGET`] (basic.target and nothing
//!   else: no service the machine enables starts), with every capability the machine has
//!   (`--capability=all`: a unit's own `CapabilityBoundingSet=` is what restricts it, as on
//!   a host), no registration with machined and no unit of its own (`--register=no
//!   --keep-unit`: the machine needs no running systemd), in network namespace `netns` (a
//!   lab's host namespace: its bridge and taps are what the units see).
//! - **As on a host**: nspawn mounts `/proc/sys` read-only when it does not make the network
//!   namespace itself, and its `/sys` lists the machine's initial namespace; after the boot
//!   `/proc/sys/net` is made writable again and `/sys/class/net` and
//!   `/sys/devices/virtual/net` come from a sysfs mounted in `netns`, as a host's would be.
//! - **Commands**: [`Container::exec`] runs a program in all of the machine's namespaces
//!   (`nsenter --all`): `systemctl`, `journalctl`, `firewall-cmd` as an administrator would.
//!
//! Dropping it shuts the machine down (SIGTERM to nspawn: systemd stops its units) and
//! removes the overlay; nspawn gets SIGKILL if the thread that booted it ends first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::tools::{run, run_ok, show};
use crate::virt::{children_of, die_with_parent};

/// systemd-container's `systemd-nspawn`.
pub const NSPAWN: &str = "/usr/bin/systemd-nspawn";
/// util-linux's `nsenter`.
pub const NSENTER: &str = "/usr/bin/nsenter";
/// util-linux's `mount`.
const MOUNT: &str = "/usr/bin/mount";
/// util-linux's `umount`.
const UMOUNT: &str = "/usr/bin/umount";
/// systemd itself, PID 1 of the machine.
pub const SYSTEMD: &str = "/usr/lib/systemd/systemd";
/// `systemctl`.
pub const SYSTEMCTL: &str = "/usr/bin/systemctl";
/// `journalctl`.
pub const JOURNALCTL: &str = "/usr/bin/journalctl";
/// The target the machine boots into: basic.target, nothing the machine enables.
pub const TARGET: &str = "lab.target";
/// Where the machine's sysfs of the lab namespace is mounted (inside the machine).
const LAB_SYSFS: &str = "/run/lab-sysfs";
/// How long the boot may take (a busy 2-core machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a shutdown may take before nspawn is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a container cannot run here, or `None` when it can (besides root, which the caller
/// checks with the lab's other tests).
pub fn obstacle() -> Option<String> {
    let missing: Vec<&str> = [NSPAWN, NSENTER, MOUNT, UMOUNT, SYSTEMD, SYSTEMCTL, JOURNALCTL]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "missing {} (packages systemd, systemd-container, util-linux)",
            missing.join(", ")
        )
    })
}

/// A booted machine (see the module documentation).
pub struct Container {
    dir: PathBuf,
    root: PathBuf,
    name: String,
    nspawn: Option<Child>,
    init: u32,
}

impl Container {
    /// Builds the overlay root under the system's temporary directory, lets `prepare` write
    /// into it, then boots it in network namespace `netns` (under `/run/netns`) and waits
    /// until systemd has started [`TARGET`]. `name` (unique, e.g. a lab prefix) names the
    /// machine and its directory.
    pub fn boot(name: &str, netns: &str, prepare: impl FnOnce(&Path) -> Result<()>) -> Result<Container> {
        let dir = std::env::temp_dir().join(format!("lab-machine-{name}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let layers = dir.join("layers");
        let root = dir.join("root");
        let mut machine = Container {
            dir: dir.clone(),
            root: root.clone(),
            name: name.to_string(),
            nspawn: None,
            init: 0,
        };
        for d in [&layers, &root] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // The upper layer must live on another file system than the lower one (`/`).
        run_ok(MOUNT, &["-t", "tmpfs", "-o", "mode=0755", "tmpfs", &path(&layers)])?;
        for d in ["upper", "work"] {
            std::fs::create_dir(layers.join(d)).context("creating the overlay's layers")?;
        }
        let options = format!(
            "lowerdir=/,upperdir={},workdir={}",
            path(&layers.join("upper")),
            path(&layers.join("work"))
        );
        run_ok(MOUNT, &["-t", "overlay", "-o", &options, "overlay", &path(&root)])?;
        let units = root.join("etc/systemd/system");
        std::fs::create_dir_all(&units).context("creating /etc/systemd/system")?;
        std::fs::write(
            units.join(TARGET),
            "[Unit]\nDescription=Lab machine\nRequires=basic.target\nAfter=basic.target\n",
        )
        .context("writing the lab target")?;
        prepare(&root)?;

        let log = std::fs::File::create(dir.join("console.log")).context("creating the console log")?;
        let mut command = Command::new(NSPAWN);
        command
            .args([
                "--quiet",
                "--register=no",
                "--keep-unit",
                "--link-journal=no",
                "--capability=all",
                "--console=read-only",
            ])
            .arg(format!("--machine={name}"))
            .arg(format!("--directory={}", root.display()))
            .arg(format!("--network-namespace-path=/run/netns/{netns}"))
            .arg("--boot")
            .arg(format!("systemd.unit={TARGET}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the console log")?)
            .stderr(log);
        die_with_parent(&mut command);
        let child = command.spawn().context("starting systemd-nspawn")?;
        let nspawn = child.id();
        machine.nspawn = Some(child);
        machine.wait_until_booted(nspawn)?;
        machine.make_like_a_host()?;
        Ok(machine)
    }

    /// The machine's root as the caller writes into it (files appear in the machine at once).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pid of the machine's systemd, as the caller sees it.
    pub fn init_pid(&self) -> u32 {
        self.init
    }

    /// Runs `program args` in every namespace of the machine, root directory included;
    /// returns its output whatever its status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        let target = self.init.to_string();
        let mut full = vec!["--target", &target, "--all", "--", program];
        full.extend_from_slice(args);
        run(NSENTER, &full)
    }

    /// Like [`Container::exec`], failing with its stderr unless it exits 0; returns stdout.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self.exec(program, args)?;
        if !out.status.success() {
            bail!(
                "in machine {}: {} failed ({}): {}{}",
                self.name,
                show(program, args),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `systemctl ARGS` in the machine, whatever its status.
    pub fn systemctl(&self, args: &[&str]) -> Result<Output> {
        self.exec(SYSTEMCTL, args)
    }

    /// The journal of `unit` in the machine (`journalctl -u UNIT -o cat`).
    pub fn journal(&self, unit: &str) -> String {
        match self.exec(JOURNALCTL, &["--no-pager", "-o", "cat", "-u", unit]) {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => format!("(no journal: {e:#})"),
        }
    }

    /// The machine's console output so far (its boot messages).
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// Waits for the machine's systemd (the child of nspawn running [`SYSTEMD`]), then for
    /// it to report the boot done (`running`, or `degraded` when a unit of the machine's own
    /// failed, which concerns no test); fails when nspawn exits or [`BOOT_TIMEOUT`] passes.
    fn wait_until_booted(&mut self, nspawn: u32) -> Result<()> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let mut state = "no systemd yet".to_string();
        loop {
            if self.init == 0 {
                let init = children_of(nspawn).into_iter().find(|&pid| runs_systemd(pid));
                self.init = init.map_or(0, |pid| pid as u32);
            }
            if self.init != 0 {
                let out = self.systemctl(&["is-system-running"])?;
                state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if state == "running" || state == "degraded" {
                    return Ok(());
                }
            }
            if let Some(status) = self.nspawn.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("systemd-nspawn exited ({status}):\n{}", self.console());
            }
            if Instant::now() > deadline {
                bail!(
                    "machine {} not booted after {BOOT_TIMEOUT:?} ({state}):\n{}",
                    self.name,
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Undoes what nspawn does differently from a host (see the module documentation).
    fn make_like_a_host(&self) -> Result<()> {
        self.exec_ok(MOUNT, &["--bind", "/proc/sys/net", "/proc/sys/net"])?;
        self.exec_ok(MOUNT, &["-o", "remount,bind,rw", "/proc/sys/net"])?;
        self.exec_ok("/usr/bin/mkdir", &["-p", LAB_SYSFS])?;
        self.exec_ok(MOUNT, &["-t", "sysfs", "sysfs", LAB_SYSFS])?;
        for sub in ["class/net", "devices/virtual/net"] {
            self.exec_ok(
                MOUNT,
                &["--bind", &format!("{LAB_SYSFS}/{sub}"), &format!("/sys/{sub}")],
            )?;
        }
        Ok(())
    }

    /// Shuts the machine down and removes its overlay, reporting what failed.
    pub fn destroy(mut self) -> Result<()> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<()> {
        if let Some(mut child) = self.nspawn.take() {
            // SAFETY: plain kill(2) on the pid of a child we started and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_TIMEOUT;
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.wait();
        }
        let mut failed = Vec::new();
        for mount in [self.root.clone(), self.dir.join("layers")] {
            if let Err(e) = run_ok(UMOUNT, &[&path(&mount)]) {
                failed.push(format!("{e:#}"));
            }
        }
        if failed.is_empty() {
            std::fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))?;
            return Ok(());
        }
        bail!("machine {}: {}", self.name, failed.join("; "))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            log::warn!("{e:#}");
        }
    }
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Whether process `pid` runs systemd (nspawn's own forks run nspawn until they exec it).
fn runs_systemd(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "systemd"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_systemd_from_other_programs() {
        assert!(!runs_systemd(std::process::id() as i32));
        assert!(!runs_systemd(-1));
    }
}
