//! Running a hook point the way VDSM does (docs/design.md §2), inside a namespace.
//!
//! Every executable regular file of `HOOKS/POINT/` (no dotfiles, as VDSM's glob) runs in
//! name order, with no arguments, stdin from /dev/null, stdout discarded, stderr captured,
//! no timeout, and the payload in a fresh mode-0600 temp file named by `_hook_json` or
//! `_hook_domxml` that all scripts share. Exit 0 is success; 1 an error, the next script
//! still runs; 2 an error that skips the later scripts; anything else is treated like 1.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::entropy::random_name;
use super::netns;
use super::tools::IP;

/// `PATH` the scripts get (a VM custom property may still override it, as in VDSM).
pub const HOOK_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// Caller variables with this prefix are passed to the scripts.
pub const PASSED_PREFIX: &str = "BRIDGE_ISOLATION_";
/// `vmId` for VM and device points when the payload has no `<uuid>`.
pub const LAB_VM_ID: &str = "3f1c7e52-5b0a-4c1e-9d7a-6b2f0e4a1c01";

/// What VDSM hands a hook point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// JSON of a network point, named by `_hook_json`.
    Json(String),
    /// Domain or device XML of a VM/device point, named by `_hook_domxml`.
    DomXml(String),
    /// An empty file named by `_hook_domxml` (after_device_create, device destroy, ...).
    Empty,
}

impl Payload {
    /// The variable naming the payload file.
    fn variable(&self) -> &'static str {
        match self {
            Payload::Json(_) => "_hook_json",
            Payload::DomXml(_) | Payload::Empty => "_hook_domxml",
        }
    }

    /// The file's initial content.
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Json(text) | Payload::DomXml(text) => text.as_bytes(),
            Payload::Empty => b"",
        }
    }

    /// `vmId` for VM/device points: the domain's `<uuid>`, else [`LAB_VM_ID`].
    fn vm_id(&self) -> Option<String> {
        match self {
            Payload::Json(_) => None,
            Payload::DomXml(xml) => Some(domain_uuid(xml).unwrap_or(LAB_VM_ID).to_string()),
            Payload::Empty => Some(LAB_VM_ID.to_string()),
        }
    }
}

/// The outcome of one hook point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookRun {
    /// (file name, exit code) of each script run, in order; a signal `N` gives `-N`.
    pub codes: Vec<(String, i32)>,
    /// stderr of every script run, concatenated in order.
    pub stderr: String,
    /// stderr of the last script run: what VDSM reports.
    pub last_stderr: String,
    /// The payload file's content after the last script.
    pub payload_after: Vec<u8>,
    /// Whether any script exited non-zero (VDSM then fails `before_*` operations).
    pub failed: bool,
}

impl HookRun {
    /// The payload after the run, as text.
    pub fn payload_text(&self) -> String {
        String::from_utf8_lossy(&self.payload_after).into_owned()
    }
}

/// A user to run hooks as, the way VDSM runs VM and device hooks as `vdsm`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// User name (its supplementary groups are set too).
    pub user: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

impl RunAs {
    /// Looks the user up in the passwd database.
    pub fn lookup(user: &str) -> Result<RunAs> {
        let name = std::ffi::CString::new(user)?;
        // SAFETY: getpwnam returns a pointer into static storage or NULL; we copy out at once.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            bail!("no user {user}");
        }
        // SAFETY: pw is non-null and points to a valid passwd entry.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Ok(RunAs {
            user: user.to_string(),
            uid,
            gid,
        })
    }
}

/// `setpriv`, which switches user without touching the environment.
pub const SETPRIV: &str = "/usr/bin/setpriv";

/// Runs hook point `point` from `hooks_dir` inside namespace `ns` with `payload`.
///
/// Environment: empty, then `PATH` = [`HOOK_PATH`], `RUST_LOG` and `BRIDGE_ISOLATION_*`
/// from the caller, the payload variable, `vmId` (VM/device points), then `env` (which
/// wins). A missing point directory runs nothing.
pub fn run_hook_point(
    ns: &str,
    hooks_dir: &Path,
    point: &str,
    payload: Payload,
    env: &[(String, String)],
) -> Result<HookRun> {
    run_hook_point_as(ns, hooks_dir, point, payload, env, None)
}

/// Like [`run_hook_point`], as user `user` when given (the payload file is theirs, as
/// VDSM's is when it runs VM hooks as `vdsm`).
pub fn run_hook_point_as(
    ns: &str,
    hooks_dir: &Path,
    point: &str,
    payload: Payload,
    env: &[(String, String)],
    user: Option<&RunAs>,
) -> Result<HookRun> {
    if point.is_empty() || point.contains('/') {
        bail!("invalid hook point {point:?}");
    }
    if !netns::exists(ns) {
        bail!("no network namespace {ns}");
    }
    let dir =
        std::path::absolute(hooks_dir.join(point)).with_context(|| format!("resolving {}", hooks_dir.display()))?;
    let scripts = hook_scripts(&dir)?;
    let file = PayloadFile::create(payload.bytes())?;
    if let Some(u) = user {
        for path in [&file.dir, &file.path] {
            std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
                .with_context(|| format!("cannot chown {} to {}", path.display(), u.user))?;
        }
    }
    let environment = environment(&payload, file.path(), env);

    let mut run = HookRun::default();
    for script in scripts {
        let name = script
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        log::debug!("hook {point}: running {}", script.display());
        let mut command = Command::new(IP);
        command.arg("netns").arg("exec").arg(ns);
        if let Some(u) = user {
            let (uid, gid) = (u.uid.to_string(), u.gid.to_string());
            command.args([SETPRIV, "--reuid", &uid, "--regid", &gid, "--init-groups", "--"]);
        }
        let out = command
            .arg(&script)
            .env_clear()
            .envs(environment.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("cannot run hook {}", script.display()))?;
        let code = out
            .status
            .code()
            .or_else(|| out.status.signal().map(|s| -s))
            .unwrap_or(-1);
        run.last_stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        run.stderr.push_str(&run.last_stderr);
        run.codes.push((name, code));
        if code != 0 {
            run.failed = true;
        }
        if code == 2 {
            break;
        }
    }
    run.payload_after =
        std::fs::read(file.path()).with_context(|| format!("reading back {}", file.path().display()))?;
    Ok(run)
}

/// The scripts VDSM would run from `dir`: executable regular files (symlinks followed),
/// not starting with `.`, sorted by name. A missing directory has none.
pub fn hook_scripts(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut scripts = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !hidden && meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            scripts.push(path);
        }
    }
    scripts.sort();
    Ok(scripts)
}

/// The scripts' environment, later entries winning.
fn environment(payload: &Payload, file: &Path, env: &[(String, String)]) -> Vec<(String, String)> {
    let mut vars = vec![("PATH".to_string(), HOOK_PATH.to_string())];
    for (key, value) in std::env::vars_os() {
        let (Some(key), Some(value)) = (key.to_str(), value.to_str()) else {
            continue;
        };
        if key == "RUST_LOG" || key.starts_with(PASSED_PREFIX) {
            vars.push((key.to_string(), value.to_string()));
        }
    }
    vars.push((payload.variable().to_string(), file.to_string_lossy().into_owned()));
    if let Some(id) = payload.vm_id() {
        vars.push(("vmId".to_string(), id));
    }
    vars.extend(env.iter().cloned());
    let mut merged: Vec<(String, String)> = Vec::new();
    for (key, value) in vars {
        merged.retain(|(k, _)| *k != key);
        merged.push((key, value));
    }
    merged
}

/// The text of the first `<uuid>` element of a domain XML.
fn domain_uuid(xml: &str) -> Option<&str> {
    let start = xml.find("<uuid>")? + "<uuid>".len();
    let len = xml[start..].find("</uuid>")?;
    Some(xml[start..start + len].trim())
}

/// The payload file in a private temp directory (mode 0700), removed on drop.
struct PayloadFile {
    /// The private directory.
    dir: PathBuf,
    /// The file in it.
    path: PathBuf,
}

impl PayloadFile {
    /// Writes `content` to `TMPDIR/bi-hook-XXXXXXXX/tmpXXXXXXXX` with mode 0600.
    fn create(content: &[u8]) -> Result<PayloadFile> {
        let base = std::env::temp_dir();
        let mut attempt = 0;
        let dir = loop {
            let dir = base.join(format!("bi-hook-{}", random_name(10)));
            match DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 10 => {
                    attempt += 1;
                }
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
            }
        };
        let file = PayloadFile {
            path: dir.join(format!("tmp{}", random_name(8))),
            dir,
        };
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file.path)
            .with_context(|| format!("cannot create {}", file.path.display()))?;
        out.write_all(content)
            .and_then(|()| out.sync_all())
            .with_context(|| format!("cannot write {}", file.path.display()))?;
        Ok(file)
    }

    /// Path of the payload file.
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PayloadFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_script(dir: &Path, name: &str, mode: u32) {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn scripts_are_executable_visible_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        write_script(dir.path(), "50_bridge_isolation", 0o755);
        write_script(dir.path(), "10_first", 0o700);
        write_script(dir.path(), "20_not_executable", 0o644);
        write_script(dir.path(), ".hidden", 0o755);
        std::fs::create_dir(dir.path().join("30_directory")).unwrap();
        let names: Vec<String> = hook_scripts(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["10_first", "50_bridge_isolation"]);
        assert!(hook_scripts(&dir.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn environment_is_clean_and_explicit_values_win() {
        let xml = "<domain><name>vm1</name><uuid> 1234 </uuid></domain>".to_string();
        let vars = environment(
            &Payload::DomXml(xml),
            Path::new("/tmp/x/tmpabc"),
            &[
                ("PATH".into(), "/evil".into()),
                ("bridge_isolation_trusted".into(), "true".into()),
            ],
        );
        let get = |k: &str| vars.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some("/evil"));
        assert_eq!(get("_hook_domxml"), Some("/tmp/x/tmpabc"));
        assert_eq!(get("_hook_json"), None);
        assert_eq!(get("vmId"), Some("1234"));
        assert_eq!(get("bridge_isolation_trusted"), Some("true"));
        assert_eq!(get("HOME"), None);
        assert_eq!(vars.iter().filter(|(k, _)| k == "PATH").count(), 1);

        let vars = environment(&Payload::Json("{}".into()), Path::new("/f"), &[]);
        assert!(vars.iter().any(|(k, v)| k == "_hook_json" && v == "/f"));
        assert!(!vars.iter().any(|(k, _)| k == "vmId"));
    }

    #[test]
    fn payload_file_is_private_and_removed() {
        let file = PayloadFile::create(b"{}").unwrap();
        let path = file.path().to_path_buf();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(path.file_name().unwrap().to_string_lossy().starts_with("tmp"));
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        drop(file);
        assert!(!path.exists());
    }
}
