//! Settings: the config file and the environment overrides root may use.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};
use crate::host::paths;
use crate::model::backend::BackendKind;

/// Overrides the config file path (root only).
pub const ENV_CONFIG: &str = "BRIDGE_ISOLATION_CONFIG";
/// Overrides the state directory (root only).
pub const ENV_STATE_DIR: &str = "BRIDGE_ISOLATION_STATE_DIR";
/// Overrides the backend (root only).
pub const ENV_BACKEND: &str = "BRIDGE_ISOLATION_BACKEND";
/// Overrides `/etc/modules-load.d`, where the iptables backend persists br_netfilter
/// (root only; for tests, which must not leave files on the machine).
pub const ENV_MODULES_LOAD_DIR: &str = "BRIDGE_ISOLATION_MODULES_LOAD_DIR";
/// Overrides `/etc/sysctl.d`, where the iptables backend persists `bridge-nf-call-*`
/// (root only; for tests).
pub const ENV_SYSCTL_DIR: &str = "BRIDGE_ISOLATION_SYSCTL_DIR";

/// Overrides [`paths::CLI`], the binary the hook hands runs to (root only; for tests).
pub const ENV_CLI: &str = "BRIDGE_ISOLATION_CLI";

/// Overrides VDSM's running network config directory, the one holding `nets/` (root only;
/// for tests).
pub const ENV_VDSM_NETCONF: &str = "BRIDGE_ISOLATION_VDSM_NETCONF";

/// Overrides [`paths::OWNERS_DIR`], the owner records of running VMs (root only; for tests).
pub const ENV_OWNERS_DIR: &str = "BRIDGE_ISOLATION_OWNERS_DIR";

/// Overrides the node_exporter textfile collector directory the metrics are written into
/// (root only; for tests, which must not write into the machine's).
pub const ENV_METRICS_TEXTFILE_DIR: &str = "BRIDGE_ISOLATION_METRICS_TEXTFILE_DIR";

/// Set once this process has honoured the environment overrides ([`Settings::from_env`] as
/// root); the root helper ([`Settings::system`]) never sets it.
static OVERRIDES_HONOURED: AtomicBool = AtomicBool::new(false);

/// The value of override `var` (one of the `ENV_*` paths above) when this process
/// honours overrides (root, through [`Settings::from_env`]) and it is set to an absolute
/// path; `None` otherwise, and always in the root helper.
pub fn dir_override(var: &str) -> Option<PathBuf> {
    if !OVERRIDES_HONOURED.load(Ordering::Relaxed) || !is_root() {
        return None;
    }
    std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_absolute())
}

/// Which backend the administrator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// Pick the best the host supports.
    Auto,
    /// This one, always.
    Fixed(BackendKind),
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            other => BackendKind::from_name(other).map(BackendChoice::Fixed).ok_or_else(|| {
                Error::Config(format!(
                    "unknown backend {other:?} (auto, port-isolation, nftables, iptables, firewalld)"
                ))
            }),
        }
    }
}

/// Everything a run needs to know about where and how to act.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Directory of the state file.
    pub state_dir: PathBuf,
    /// The config file read.
    pub config_file: PathBuf,
    /// Requested backend.
    pub backend: BackendChoice,
    /// True when this process can change the kernel and the state itself (euid 0).
    pub privileged: bool,
    /// VDSM's running network config, the directory holding `nets/` (reconcile adopts what
    /// it tags).
    pub vdsm_netconf: PathBuf,
    /// The owner records of running VMs ([`crate::host::owners`]).
    pub owners_dir: PathBuf,
}

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Settings {
    /// Settings for this process: root honours the environment overrides; anyone else
    /// (a VM hook as user vdsm, whose environment a VM custom property can shape) gets
    /// the installed paths.
    pub fn from_env() -> Result<Settings> {
        if is_root() {
            let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
            let config_file = var(ENV_CONFIG).map_or_else(|| PathBuf::from(paths::CONFIG_FILE), PathBuf::from);
            let state_dir = var(ENV_STATE_DIR).map(PathBuf::from);
            let backend = match std::env::var(ENV_BACKEND).ok().filter(|v| !v.is_empty()) {
                Some(b) => Some(b.parse()?),
                None => None,
            };
            OVERRIDES_HONOURED.store(true, Ordering::Relaxed);
            let mut settings = Settings::load(&config_file, state_dir, backend, true)?;
            if let Some(dir) = dir_override(ENV_VDSM_NETCONF) {
                settings.vdsm_netconf = dir;
            }
            if let Some(dir) = dir_override(ENV_OWNERS_DIR) {
                settings.owners_dir = dir;
            }
            Ok(settings)
        } else {
            Settings::system(false)
        }
    }

    /// The installed settings, ignoring the environment (the root helper, unprivileged hooks).
    pub fn system(privileged: bool) -> Result<Settings> {
        Settings::load(Path::new(paths::CONFIG_FILE), None, None, privileged)
    }

    fn load(
        config_file: &Path,
        state_dir: Option<PathBuf>,
        backend: Option<BackendChoice>,
        privileged: bool,
    ) -> Result<Settings> {
        let file = ConfigFile::read(config_file)?;
        Ok(Settings {
            state_dir: state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from(paths::STATE_DIR)),
            config_file: config_file.to_path_buf(),
            backend: backend.or(file.backend).unwrap_or(BackendChoice::Auto),
            privileged,
            vdsm_netconf: PathBuf::from(paths::VDSM_NETCONF),
            owners_dir: PathBuf::from(paths::OWNERS_DIR),
        })
    }
}

/// What a reconcile does with the VM ports of an isolated bridge when enforcement fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// Disable the ports that are not confirmed isolated (bridge port state disabled) until
    /// a later reconcile succeeds (default: fail closed).
    #[default]
    Block,
    /// Log one warning and leave them forwarding.
    Warn,
}

impl std::str::FromStr for OnFailure {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "block" => Ok(OnFailure::Block),
            "warn" => Ok(OnFailure::Warn),
            other => Err(Error::Config(format!("unknown on_failure {other:?} (block, warn)"))),
        }
    }
}

impl OnFailure {
    /// The setting of `config_file`; a file that cannot be read means the default (block).
    pub fn of(config_file: &Path) -> OnFailure {
        match ConfigFile::read(config_file) {
            Ok(cfg) => cfg.on_failure.unwrap_or_default(),
            Err(e) => {
                log::warn!("{e}: on_failure = block");
                OnFailure::Block
            }
        }
    }
}

/// The contents of the config file: `key = value` lines, `#` comments.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConfigFile {
    /// `backend = auto | port-isolation | nftables | iptables | firewalld`.
    pub backend: Option<BackendChoice>,
    /// `state_dir = /path`.
    pub state_dir: Option<PathBuf>,
    /// `on_failure = block | warn`.
    pub on_failure: Option<OnFailure>,
    /// `watch_backstop = SECONDS`: how often the watcher reconciles everything besides what
    /// it is told changed ([`DEFAULT_WATCH_BACKSTOP`]); 0 turns it off.
    pub watch_backstop: Option<std::time::Duration>,
    /// `metrics_textfile_dir = /path`: node_exporter's textfile collector directory, where
    /// the watcher and every root reconcile write the metrics when it exists
    /// ([`DEFAULT_METRICS_TEXTFILE_DIR`]); an empty value (an empty path here) turns it off.
    pub metrics_textfile_dir: Option<PathBuf>,
}

/// node_exporter's textfile collector directory when the config file names none (that of
/// the EL packages of node_exporter).
pub const DEFAULT_METRICS_TEXTFILE_DIR: &str = "/var/lib/node_exporter/textfile_collector";

/// The textfile collector directory the metrics go to (`None`: off): the root override
/// [`ENV_METRICS_TEXTFILE_DIR`], else the config file's `metrics_textfile_dir`, else
/// [`DEFAULT_METRICS_TEXTFILE_DIR`] (also when the file cannot be read).
pub fn metrics_textfile_dir(config_file: &Path) -> Option<PathBuf> {
    if let Some(dir) = dir_override(ENV_METRICS_TEXTFILE_DIR) {
        return Some(dir);
    }
    let dir = match ConfigFile::read(config_file) {
        Ok(cfg) => cfg.metrics_textfile_dir,
        Err(e) => {
            log::warn!("{e}: metrics_textfile_dir = {DEFAULT_METRICS_TEXTFILE_DIR}");
            None
        }
    };
    match dir {
        Some(dir) if dir.as_os_str().is_empty() => None,
        Some(dir) => Some(dir),
        None => Some(PathBuf::from(DEFAULT_METRICS_TEXTFILE_DIR)),
    }
}

/// The watcher's full reconcile interval when the config file names none: 10 minutes.
pub const DEFAULT_WATCH_BACKSTOP: std::time::Duration = std::time::Duration::from_secs(600);

/// The watcher's full reconcile interval set in `config_file` (`None`: off); a file that
/// cannot be read means the default.
pub fn watch_backstop(config_file: &Path) -> Option<std::time::Duration> {
    let interval = match ConfigFile::read(config_file) {
        Ok(cfg) => cfg.watch_backstop.unwrap_or(DEFAULT_WATCH_BACKSTOP),
        Err(e) => {
            log::warn!("{e}: watch_backstop = {}", DEFAULT_WATCH_BACKSTOP.as_secs());
            DEFAULT_WATCH_BACKSTOP
        }
    };
    Some(interval).filter(|d| !d.is_zero())
}

impl ConfigFile {
    /// Reads the file; a missing file means defaults.
    pub fn read(path: &Path) -> Result<ConfigFile> {
        match std::fs::read_to_string(path) {
            Ok(text) => ConfigFile::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Parses the text of a config file.
    pub fn parse(text: &str) -> std::result::Result<ConfigFile, String> {
        let mut cfg = ConfigFile::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: expected key = value", n + 1))?;
            let value = value.trim().trim_matches('"');
            match key.trim() {
                "backend" => cfg.backend = Some(value.parse().map_err(|e: Error| format!("line {}: {e}", n + 1))?),
                "on_failure" => {
                    cfg.on_failure = Some(value.parse().map_err(|e: Error| format!("line {}: {e}", n + 1))?)
                }
                "watch_backstop" => {
                    let secs: u64 = value
                        .parse()
                        .map_err(|_| format!("line {}: watch_backstop must be a number of seconds", n + 1))?;
                    cfg.watch_backstop = Some(std::time::Duration::from_secs(secs));
                }
                "metrics_textfile_dir" if value.is_empty() || value.starts_with('/') => {
                    cfg.metrics_textfile_dir = Some(PathBuf::from(value));
                }
                "metrics_textfile_dir" => {
                    return Err(format!(
                        "line {}: metrics_textfile_dir must be an absolute path, or empty (off)",
                        n + 1
                    ))
                }
                "state_dir" if value.starts_with('/') => cfg.state_dir = Some(PathBuf::from(value)),
                "state_dir" => return Err(format!("line {}: state_dir must be an absolute path", n + 1)),
                other => return Err(format!("line {}: unknown key {other:?}", n + 1)),
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shipped_config() {
        let cfg = ConfigFile::parse(include_str!("../../packaging/bridge-isolation.conf")).unwrap();
        assert_eq!(
            cfg,
            ConfigFile {
                backend: Some(BackendChoice::Auto),
                state_dir: None,
                on_failure: Some(OnFailure::Block),
                watch_backstop: Some(DEFAULT_WATCH_BACKSTOP),
                metrics_textfile_dir: None,
            }
        );
    }

    #[test]
    fn metrics_textfile_dir_defaults_to_node_exporters_and_empty_is_off() {
        let default = Some(PathBuf::from(DEFAULT_METRICS_TEXTFILE_DIR));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.conf");
        assert_eq!(metrics_textfile_dir(&file), default, "no file: default");
        std::fs::write(&file, "metrics_textfile_dir = /srv/prom  # node_exporter\n").unwrap();
        assert_eq!(metrics_textfile_dir(&file), Some(PathBuf::from("/srv/prom")));
        std::fs::write(&file, "metrics_textfile_dir =\n").unwrap();
        assert_eq!(metrics_textfile_dir(&file), None, "empty: off");
        std::fs::write(&file, "metrics_textfile_dir = \"\"\n").unwrap();
        assert_eq!(metrics_textfile_dir(&file), None, "empty: off");
        std::fs::write(&file, "metrics_textfile_dir = prom\n").unwrap();
        assert_eq!(metrics_textfile_dir(&file), default, "unreadable: default");
        assert!(ConfigFile::parse("metrics_textfile_dir = prom")
            .unwrap_err()
            .contains("line 1: metrics_textfile_dir must be an absolute path, or empty (off)"));
    }

    #[test]
    fn watch_backstop_in_seconds_zero_is_off() {
        use std::time::Duration;
        assert_eq!(ConfigFile::parse("").unwrap().watch_backstop, None);
        let cfg = ConfigFile::parse("watch_backstop = 30  # seconds").unwrap();
        assert_eq!(cfg.watch_backstop, Some(Duration::from_secs(30)));
        assert!(ConfigFile::parse("watch_backstop = 10m")
            .unwrap_err()
            .contains("line 1: watch_backstop must be a number of seconds"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.conf");
        assert_eq!(watch_backstop(&file), Some(DEFAULT_WATCH_BACKSTOP), "no file: default");
        std::fs::write(&file, "watch_backstop = 0\n").unwrap();
        assert_eq!(watch_backstop(&file), None);
        std::fs::write(&file, "watch_backstop = 5\n").unwrap();
        assert_eq!(watch_backstop(&file), Some(Duration::from_secs(5)));
        std::fs::write(&file, "watch_backstop = soon\n").unwrap();
        assert_eq!(
            watch_backstop(&file),
            Some(DEFAULT_WATCH_BACKSTOP),
            "unreadable: default"
        );
    }

    #[test]
    fn parses_values_and_rejects_mistakes() {
        let cfg = ConfigFile::parse("# c\nbackend = port-isolation  # default\nstate_dir=/run/x\n").unwrap();
        assert_eq!(cfg.backend, Some(BackendChoice::Fixed(BackendKind::PortIsolation)));
        assert_eq!(cfg.state_dir, Some(PathBuf::from("/run/x")));
        assert!(ConfigFile::parse("backend = ebtables")
            .unwrap_err()
            .contains("line 1: config: unknown backend"));
        let cfg = ConfigFile::parse("backend = nftables").unwrap();
        assert_eq!(cfg.backend, Some(BackendChoice::Fixed(BackendKind::Nftables)));
        assert!(ConfigFile::parse("colour = blue").is_err());
        assert!(ConfigFile::parse("state_dir = relative").is_err());
        assert!(ConfigFile::parse("just words").is_err());
    }

    #[test]
    fn on_failure_defaults_to_block() {
        assert_eq!(ConfigFile::parse("").unwrap().on_failure, None);
        assert_eq!(
            ConfigFile::parse("on_failure = warn\n").unwrap().on_failure,
            Some(OnFailure::Warn)
        );
        assert_eq!(
            ConfigFile::parse("on_failure=\"block\"  # fail closed")
                .unwrap()
                .on_failure,
            Some(OnFailure::Block)
        );
        let err = ConfigFile::parse("backend = auto\non_failure = ignore").unwrap_err();
        assert!(err.contains("line 2: config: unknown on_failure \"ignore\""), "{err}");
        assert_eq!(OnFailure::of(Path::new("/nonexistent")), OnFailure::Block);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.conf");
        std::fs::write(&file, "on_failure = warn\n").unwrap();
        assert_eq!(OnFailure::of(&file), OnFailure::Warn);
        std::fs::write(&file, "on_failure = maybe\n").unwrap();
        assert_eq!(OnFailure::of(&file), OnFailure::Block, "unreadable: fail closed");
    }
}
