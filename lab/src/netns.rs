//! Named network namespaces (`/run/netns/NAME`, as `ip netns` manages them) and entering
//! one from a dedicated thread.
//!
//! `setns(CLONE_NEWNET)` changes the network namespace of the calling thread only, so a
//! thread that enters a namespace and then ends leaves the rest of the process untouched.
//! Sockets opened and `/proc/sys/net` files written by that thread belong to the namespace.
//! `/sys/class/net` does not follow (it belongs to the sysfs mount): read it through
//! `ip netns exec`, which remounts /sys.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};

use super::tools::{run_ok, IP};

/// Directory where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// Path of the handle of namespace `name`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Whether namespace `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Fails unless `name` can name a namespace file (non-empty, no `/`, no leading dot).
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        bail!("invalid namespace name {name:?}: use letters, digits, '-', '_', '.'");
    }
    Ok(())
}

/// Creates namespace `name` with `ip netns add`.
pub(crate) fn add(name: &str) -> Result<()> {
    check_name(name)?;
    run_ok(IP, &["netns", "add", name]).map(drop)
}

/// Deletes namespace `name` with `ip netns del`.
pub(crate) fn delete(name: &str) -> Result<()> {
    run_ok(IP, &["netns", "del", name]).map(drop)
}

/// Names of the existing namespaces that start with `start`, sorted.
pub fn list_starting_with(start: &str) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context(format!("cannot list {NETNS_DIR}")),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(start) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Opens the handle of namespace `name`, for [`enter`].
pub(crate) fn open(name: &str) -> Result<File> {
    File::open(path(name)).with_context(|| format!("cannot open network namespace {name}"))
}

/// Moves the calling thread into the network namespace behind `handle`.
///
/// Call it only from a thread made for the purpose, which ends afterwards.
pub(crate) fn enter(handle: &File) -> Result<()> {
    // SAFETY: setns only reads the descriptor, which `handle` keeps open for the call.
    let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `name` and returns its result.
pub(crate) fn run_in<T, F>(name: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let handle = open(name)?;
    let ns = name.to_string();
    std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || {
            enter(&handle)?;
            f()
        })
        .context("cannot spawn a thread")?
        .join()
        .map_err(|_| anyhow!("thread working in namespace {ns} panicked"))?
}

/// Writes sysctl `key` (dotted, below `net.`) = `value` inside namespace `name`.
pub(crate) fn write_sysctls(name: &str, settings: &[(&str, &str)]) -> Result<()> {
    let settings: Vec<(String, String)> = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    run_in(name, move || {
        for (key, value) in &settings {
            let file = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::write(&file, value).with_context(|| format!("cannot write {file}"))?;
        }
        Ok(())
    })
    .with_context(|| format!("setting sysctls in namespace {name}"))
}
