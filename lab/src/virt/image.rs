//! The guests' kernel and initramfs, from Debian packages only.
//!
//! The kernel is Debian's cloud kernel (`linux-image-*-cloud-amd64`), a `.deb` that is
//! downloaded, never installed: [`KERNEL_DEB_VAR`] names it (CI's `.ci/run` fetches it with
//! `apt-get download`), or else it is fetched the same way into the cache directory. Its
//! contents are unpacked with `dpkg-deb -x` once per package into the cache. The initramfs is
//! written anew for every run (milliseconds): busybox from the `busybox-static` package, the
//! virtio modules the kernel has as modules (with their dependencies, in load order), `/init`
//! and the `bi` command of `guest.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::cpio::Archive;
use crate::tools::run_ok;

/// Environment variable naming the kernel package (`.deb`) to use.
pub const KERNEL_DEB_VAR: &str = "BRIDGE_ISOLATION_GUEST_KERNEL_DEB";
/// The Debian metapackage whose dependency is the kernel package fetched by default.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// busybox of the `busybox-static` package (statically linked).
pub const BUSYBOX: &str = "/bin/busybox";
/// dpkg's `dpkg-deb`.
pub const DPKG_DEB: &str = "/usr/bin/dpkg-deb";
/// apt's `apt-cache` and `apt-get`, to fetch the kernel package when none is given.
const APT_CACHE: &str = "/usr/bin/apt-cache";
const APT_GET: &str = "/usr/bin/apt-get";
/// The guest's `/init`; `@MODULES@` becomes the modules to load, in order.
const INIT: &str = include_str!("init.sh");
/// The guest's `bi` command (and the probe script of the lab namespaces).
pub const GUEST_SCRIPT: &str = include_str!("guest.sh");
/// The modules the guests need: the NIC and its PCI transport.
const WANTED_MODULES: [&str; 2] = ["virtio_pci", "virtio_net"];

/// A bootable guest: kernel image and initramfs.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// The kernel package it came from (file name of the `.deb`).
    pub package: String,
    /// The kernel image (`boot/vmlinuz-*` of the package).
    pub kernel: PathBuf,
    /// The initramfs (cpio newc, uncompressed).
    pub initrd: PathBuf,
    /// The modules `/init` loads, in order.
    pub modules: Vec<String>,
}

impl GuestImage {
    /// Unpacks the kernel package into `cache` (once; fetching the package first when
    /// [`KERNEL_DEB_VAR`] is unset and `cache` has none) and writes the initramfs into `dir`.
    pub fn prepare(cache: &Path, dir: &Path) -> Result<GuestImage> {
        let deb = kernel_deb(cache)?;
        let package = deb
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let root = unpacked(&deb, cache)?;
        let kernel = single_entry(&root.join("boot"), "vmlinuz-")?;
        let modules_dir = modules_dir(&root)?;
        let modules = load_order(&modules_dir, &WANTED_MODULES)?;
        let initrd = dir.join("initrd.cpio");
        std::fs::write(&initrd, initramfs(&modules)?).with_context(|| format!("cannot write {}", initrd.display()))?;
        Ok(GuestImage {
            package,
            kernel,
            initrd,
            modules: modules.into_iter().map(|(name, _)| name).collect(),
        })
    }
}

/// The kernel package: [`KERNEL_DEB_VAR`], else the newest `.deb` in `cache/debs`, else one
/// fetched there with `apt-get download` (the dependency of [`KERNEL_METAPACKAGE`]).
fn kernel_deb(cache: &Path) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(KERNEL_DEB_VAR) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{KERNEL_DEB_VAR}={} is not a file", path.display());
        }
        return Ok(path);
    }
    let debs = cache.join("debs");
    if let Ok(found) = single_entry(&debs, "linux-image-") {
        return Ok(found);
    }
    std::fs::create_dir_all(&debs).with_context(|| format!("cannot create {}", debs.display()))?;
    let depends = run_ok(APT_CACHE, &["depends", KERNEL_METAPACKAGE])?;
    let package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .with_context(|| format!("apt-cache names no kernel package behind {KERNEL_METAPACKAGE}"))?
        .to_string();
    let out = Command::new(APT_GET)
        .args(["download", "-q", &package])
        .current_dir(&debs)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {APT_GET}"))?;
    if !out.status.success() {
        bail!(
            "apt-get download {package} failed ({}): {}; set {KERNEL_DEB_VAR} to a downloaded \
             linux-image-*-amd64 package",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    single_entry(&debs, "linux-image-")
}

/// The only entry of `dir` whose name starts with `prefix` (the newest by name if several).
fn single_entry(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
        .collect();
    found.sort();
    found
        .pop()
        .with_context(|| format!("no {prefix}* in {}", dir.display()))
}

/// The package unpacked under `cache/kernels/<file stem>` (by `dpkg-deb -x` into a
/// temporary directory renamed into place, so a concurrent or killed run never leaves half).
fn unpacked(deb: &Path, cache: &Path) -> Result<PathBuf> {
    let stem = deb
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .context("the kernel package has no file name")?;
    let kernels = cache.join("kernels");
    let root = kernels.join(&stem);
    if root.is_dir() {
        return Ok(root);
    }
    std::fs::create_dir_all(&kernels).with_context(|| format!("cannot create {}", kernels.display()))?;
    let tmp = kernels.join(format!(".{stem}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let tmp_text = tmp.to_string_lossy().into_owned();
    let deb_text = deb.to_string_lossy().into_owned();
    let unpack = run_ok(DPKG_DEB, &["-x", &deb_text, &tmp_text]);
    if let Err(e) = unpack {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, &root) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !root.is_dir() {
            return Err(e).with_context(|| format!("cannot rename {tmp_text} to {}", root.display()));
        }
    }
    Ok(root)
}

/// `lib/modules/<release>` of an unpacked kernel package (`usr/lib/modules` on newer Debian).
fn modules_dir(root: &Path) -> Result<PathBuf> {
    for base in ["lib/modules", "usr/lib/modules"] {
        if let Ok(dir) = single_entry(&root.join(base), "") {
            return Ok(dir);
        }
    }
    bail!("no lib/modules/<release> in {}", root.display())
}

/// The modules `wanted` needs that are not built in, dependencies first: (name, file).
fn load_order(dir: &Path, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let mut files = BTreeMap::new();
    collect_modules(&dir.join("kernel"), &mut files)?;
    let builtin_list = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let builtin: BTreeSet<String> = builtin_list.lines().filter_map(module_name).collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        visit(name, &files, &builtin, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// Depth first: a module's dependencies before the module.
fn visit(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<(String, PathBuf)>,
) -> Result<()> {
    if builtin.contains(name) || !seen.insert(name.to_string()) {
        return Ok(());
    }
    let file = files
        .get(name)
        .with_context(|| format!("module {name} is neither built in nor in the kernel package"))?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    for dep in depends(&bytes) {
        visit(&dep, files, builtin, seen, order)?;
    }
    order.push((name.to_string(), file.clone()));
    Ok(())
}

/// The `depends=` entry of a module's `.modinfo` section (names as the kernel spells them).
fn depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = module.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &module[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// A module's name from its path (`kernel/drivers/net/virtio_net.ko` -> `virtio_net`).
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    file.strip_suffix(".ko").map(|n| n.replace('-', "_"))
}

/// Every `*.ko` under `dir`, by module name; compressed modules are refused (the guest's
/// busybox `insmod` loads plain ones, and Debian 12 ships them plain).
fn collect_modules(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_modules(&path, out)?;
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(module) = module_name(&name) {
            out.insert(module, path);
        } else if [".ko.xz", ".ko.zst", ".ko.gz"].iter().any(|s| name.ends_with(s)) {
            bail!(
                "compressed kernel module {} (only plain .ko is supported)",
                path.display()
            );
        }
    }
    Ok(())
}

/// The initramfs: busybox, `modules` under `/lib/modules/NAME.ko`, `/init`, `/bin/bi`.
fn initramfs(modules: &[(String, PathBuf)]) -> Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX).with_context(|| format!("cannot read {BUSYBOX} (package busybox-static)"))?;
    if has_interpreter(&busybox) {
        bail!("{BUSYBOX} is dynamically linked: install busybox-static");
    }
    let mut a = Archive::default();
    for dir in ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"] {
        a.dir(dir, 0o755);
    }
    a.char_device("dev/console", 0o600, 5, 1);
    a.file("bin/busybox", 0o755, &busybox);
    a.symlink("bin/sh", "busybox");
    for (name, file) in modules {
        let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        a.file(&format!("lib/modules/{name}.ko"), 0o644, &bytes);
    }
    let names: Vec<&str> = modules.iter().map(|(n, _)| n.as_str()).collect();
    a.file("init", 0o755, INIT.replace("@MODULES@", &names.join(" ")).as_bytes());
    a.file("bin/bi", 0o755, format!("#!/bin/busybox sh\n{GUEST_SCRIPT}").as_bytes());
    Ok(a.finish())
}

/// Whether an ELF executable names a program interpreter (is dynamically linked): a
/// `PT_INTERP` program header. Anything that is not 64-bit little-endian ELF counts as yes.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return true;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return true;
    };
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == Some(PT_INTERP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_reads_the_modinfo_entry() {
        let module = b"\x7fELF...\0license=GPL\0depends=virtio_ring,virtio,net_failover\0retpoline=Y\0";
        assert_eq!(depends(module), ["virtio_ring", "virtio", "net_failover"]);
        assert!(depends(b"\0depends=\0name=x\0").is_empty());
        assert!(depends(b"no modinfo").is_empty());
        assert_eq!(
            module_name("kernel/drivers/net/virtio_net.ko").as_deref(),
            Some("virtio_net")
        );
        assert_eq!(module_name("kernel/x/snd-hda.ko").as_deref(), Some("snd_hda"));
        assert_eq!(module_name("kernel/x/y.ko.xz"), None);
    }

    #[test]
    fn load_order_puts_dependencies_first_and_skips_built_in_modules() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("kernel/drivers");
        std::fs::create_dir_all(&kernel).unwrap();
        let module = |name: &str, deps: &str| {
            std::fs::write(kernel.join(format!("{name}.ko")), format!("ELF\0depends={deps}\0")).unwrap();
        };
        module("virtio_net", "virtio_ring,virtio,net_failover");
        module("net_failover", "failover");
        module("failover", "");
        module("virtio", "virtio_ring");
        module("virtio_ring", "");
        module("virtio_pci", "virtio_ring,virtio");
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/drivers/virtio/virtio_ring.ko\n",
        )
        .unwrap();
        let order: Vec<String> = load_order(dir.path(), &["virtio_pci", "virtio_net"])
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            order,
            ["virtio", "virtio_pci", "failover", "net_failover", "virtio_net"]
        );
        let missing = load_order(dir.path(), &["e1000"]).unwrap_err();
        assert!(format!("{missing:#}").contains("module e1000 is neither built in"));
    }

    #[test]
    fn an_interpreter_header_marks_a_dynamic_executable() {
        // A 64-bit ELF header with two program headers at 0x40: PT_LOAD, then `kind`.
        let elf = |kind: u32| {
            let mut b = vec![0u8; 0x40 + 2 * 56];
            b[..6].copy_from_slice(b"\x7fELF\x02\x01");
            b[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
            b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
            b[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
            b[0x40..0x44].copy_from_slice(&1u32.to_le_bytes());
            b[0x40 + 56..0x40 + 60].copy_from_slice(&kind.to_le_bytes());
            b
        };
        assert!(has_interpreter(&elf(3)));
        assert!(!has_interpreter(&elf(4)));
        assert!(has_interpreter(b"#!/bin/sh\n"));
        assert!(has_interpreter(&elf(4)[..0x30]));
    }
}
