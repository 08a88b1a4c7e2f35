//! Logging to stderr, one line per message, which VDSM copies into its logs.

use std::io::Write;

/// Environment variable that sets the log level (`error`, `warn`, `info`, `debug`).
pub const LEVEL_VAR: &str = "BRIDGE_ISOLATION_LOG";

/// Starts logging with `tag` (the program or hook point) in front of every line.
pub fn init(tag: &str) {
    let tag = tag.to_string();
    let level = std::env::var(LEVEL_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .target(env_logger::Target::Stderr)
        .format(move |buf, record| {
            let msg = record.args().to_string().replace('\n', " ");
            writeln!(
                buf,
                "bridge_isolation[{tag}] {}: {msg}",
                record.level().as_str().to_lowercase()
            )
        })
        .try_init();
}
