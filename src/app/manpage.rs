//! `bridge-isolation generate man | completion SHELL`: the bridge-isolation(8) manual page
//! and shell completions, generated from the CLI definition ([`crate::app::cli::Cli`]) so they
//! never drift from it. Needs no privilege and reads no configuration: the packaging runs
//! it at build time (packaging/install.sh).

use std::io::Write;

use clap::CommandFactory;

use crate::app::cli::Cli;
use crate::error::{Error, Result};
use crate::host::paths;

/// What `generate` writes.
#[derive(Debug, clap::Subcommand)]
pub enum Generate {
    /// The bridge-isolation(8) manual page (roff).
    Man,
    /// A completion script for SHELL.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Writes what was asked for to `out`.
pub fn write(what: &Generate, out: &mut dyn Write) -> Result<()> {
    let io = |e| Error::io("writing the generated file", e);
    match what {
        Generate::Man => out.write_all(&man_page()?).map_err(io),
        Generate::Completion { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "bridge-isolation", out);
            Ok(())
        }
    }
}

/// Escapes text for roff: backslashes, minus signs, and a leading `.` or `'`.
fn esc(text: &str) -> String {
    let s = text.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

fn bold(text: &str) -> String {
    format!("\\fB{}\\fR", esc(text))
}

fn italic(text: &str) -> String {
    format!("\\fI{}\\fR", esc(text))
}

/// The page's date: `SOURCE_DATE_EPOCH` (reproducible builds; rpmbuild may set it), else today.
fn date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The manual page, in roff.
pub fn man_page() -> Result<Vec<u8>> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .date(date())
        .source(format!("vdsm-hook-bridge-isolation {}", env!("CARGO_PKG_VERSION")));
    let io = |e| Error::io("rendering the manual page", e);
    let mut out = Vec::new();
    man.render_title(&mut out).map_err(io)?;
    let mut name = Vec::new();
    man.render_name_section(&mut name).map_err(io)?;
    // Each rendered piece repeats roff's apostrophe preamble; keep the first.
    for line in String::from_utf8_lossy(&name).lines() {
        if !(line.starts_with(".ie \\n(.g") || line.starts_with(".el .ds Aq")) {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
    let mut r = String::new();
    r += ".SH SYNOPSIS\n";
    r += &format!("{} {}\n", bold("bridge-isolation"), italic("command"));
    r += &format!(".br\n{} {}\n", bold("bridge-isolation"), bold("--help"));
    r += ".SH DESCRIPTION\n";
    r += &esc(
        "VDSM hooks for oVirt hosts that keep the VMs on a bridge network from talking to each \
         other at layer 2 (every protocol: IPv4, IPv6, ARP, anything), while each VM still \
         reaches the uplink (gateway, outside network) and the host. A network is isolated by \
         the oVirt network custom property bridge_isolation=true; a vNIC is exempted (a router \
         VM) by the vNIC profile custom property bridge_isolation_trusted=true.",
    );
    r += "\n.PP\n";
    r += &esc(
        "VDSM runs the hooks at each lifecycle point; they record the policy in the state file \
         and reconcile the kernel with it. bridge-isolation shows that policy against the \
         kernel, repairs drift, and lifts everything when the package is removed.",
    );
    r += "\n.SH COMMANDS\n";
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut head = bold(&format!("bridge-isolation {}", sub.get_name()));
        let args: Vec<_> = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && a.get_id() != "help")
            .collect();
        for a in &args {
            if let Some(long) = a.get_long() {
                let value = Some(a)
                    .filter(|a| a.get_action().takes_values())
                    .and_then(|a| a.get_value_names())
                    .and_then(|v| v.first())
                    .map(|v| format!(" {}", italic(v)))
                    .unwrap_or_default();
                head += &format!(" [{}{value}]", bold(&format!("--{long}")));
            }
        }
        r += &format!(".TP\n{head}\n");
        let about = sub.get_long_about().or_else(|| sub.get_about()).map(|a| a.to_string());
        r += &esc(&about.unwrap_or_default().replace('\n', " "));
        r += "\n";
        for a in &args {
            if let (Some(long), Some(help)) = (a.get_long(), a.get_long_help().or_else(|| a.get_help())) {
                r += &format!(
                    ".RS\n.TP\n{}\n{}\n.RE\n",
                    bold(&format!("--{long}")),
                    esc(&help.to_string())
                );
            }
        }
    }
    r += ".SH OPTIONS\n";
    r += &format!(".TP\n{}, {}\nPrint help.\n", bold("-h"), bold("--help"));
    r += &format!(".TP\n{}, {}\nPrint the version.\n", bold("-V"), bold("--version"));
    r += ".SH EXIT STATUS\n";
    r += &format!(
        ".TP\n0\nSuccess; for {}, the kernel matches the policy.\n",
        bold("verify")
    );
    r += &format!(
        ".TP\n1\n{} found drift, or a disagreement with VDSM's running network config (each is listed on stdout).\n",
        bold("verify")
    );
    r += &format!(".TP\n2\n{}\n", esc("An error (one line on stderr); usage errors too."));
    r += ".SH FILES\n";
    for (path, what) in [
        (
            paths::CONFIG_FILE,
            "Configuration: backend = auto | port-isolation | nftables | iptables | firewalld; state_dir = PATH; on_failure = block | warn; watch_backstop = SECONDS; metrics_textfile_dir = PATH.",
        ),
        (
            paths::STATE_DIR,
            "The recorded policy (state.json) and its lock, the watcher's pid file (watch.pid, locked while it runs), and reconciled, whose modification time is the end of the last successful reconcile; root-owned, world-readable.",
        ),
        (
            "/var/lib/node_exporter/textfile_collector/bridge_isolation.prom",
            "The metrics, written by the watcher and every root reconcile when the directory (metrics_textfile_dir) exists, for node_exporter's textfile collector.",
        ),
        (
            "/usr/libexec/vdsm/hooks/*/50_bridge_isolation",
            "The hook, in every hook point it serves (never after_vm_dehibernate).",
        ),
        (
            paths::OWNERS_DIR,
            "Which VM and vNIC each tap belongs to (VMID.json), written by the VM hooks as user vdsm, for status; display only. Made at boot by /usr/lib/tmpfiles.d/vdsm-hook-bridge-isolation.conf.",
        ),
        (
            paths::HELPER,
            "The root helper that VM hooks, running as user vdsm, reach through sudo.",
        ),
        (
            "/etc/sudoers.d/50_vdsm_hook_bridge_isolation",
            "Lets user vdsm run the helper, with no arguments, and nothing else.",
        ),
        (
            "/var/lib/vdsm/staging/netconf/nets/",
            "VDSM's running network config, read only: reconcile adopts what it tags, untags or no longer has; status and verify report disagreements.",
        ),
    ] {
        r += &format!(".TP\n{}\n{}\n", italic(path), esc(what));
    }
    r += ".SH SYSTEMD UNITS\n";
    for (unit, what) in [
        ("bridge-isolation-reconcile.service", "Reconciles at boot, after vdsm-network.service has restored the networks (and after the firewall services have loaded their rules)."),
        ("bridge-isolation-watch.service", "Runs bridge-isolation watch: repairs ports changed outside the hooks and our nftables tables changed by others as the kernel reports them, re-applies after firewall-cmd --reload and when firewalld starts or stops, and reconciles everything every watch_backstop seconds. When it stops, bridge-isolation metrics --textfile records that in the metrics. Replaces release 0.1's bridge-isolation-firewalld.service."),
        ("bridge-isolation-nftables.service", "Re-applies when nftables.service starts, restarts or reloads (each replaces the whole ruleset)."),
        ("bridge-isolation-.service.d/50-sandbox.conf", "The sandbox of all three (systemctl cat shows it): read-only file system but the state directory, CAP_NET_ADMIN only, netlink and local sockets only. The iptables backend needs /usr/share/vdsm-hook-bridge-isolation/sandbox-iptables.conf linked into /etc/systemd/system/bridge-isolation-.service.d/ too (security.md)."),
    ] {
        r += &format!(".TP\n{}\n{}\n", bold(unit), esc(what));
    }
    r += ".SH ENVIRONMENT\n";
    r += &esc("Honoured only when running as root (tests, unusual hosts); the root helper ignores them all.");
    r += "\n";
    for (var, what) in [
        ("BRIDGE_ISOLATION_CONFIG", "The configuration file."),
        ("BRIDGE_ISOLATION_STATE_DIR", "The state directory."),
        ("BRIDGE_ISOLATION_BACKEND", "The backend, overriding the configuration."),
        (
            "BRIDGE_ISOLATION_VDSM_NETCONF",
            "VDSM's running network config, the directory holding nets/ (reconcile adopts it; recover rebuilds from it).",
        ),
        (
            "BRIDGE_ISOLATION_OWNERS_DIR",
            "The owner records of running VMs (which VM owns each port, for status).",
        ),
        (
            "BRIDGE_ISOLATION_METRICS_TEXTFILE_DIR",
            "The textfile collector directory the metrics are written into, instead of metrics_textfile_dir.",
        ),
        (
            "BRIDGE_ISOLATION_SYS_PCI",
            "Read instead of /sys/bus/pci/devices to find an SR-IOV VF's physical function.",
        ),
        ("BRIDGE_ISOLATION_LOG", "Log level: error, warn, info (default), debug."),
        (
            "DBUS_SYSTEM_BUS_ADDRESS",
            "The system bus the watcher listens on for firewalld.",
        ),
    ] {
        r += &format!(".TP\n{}\n{}\n", bold(var), esc(what));
    }
    r += ".SH LOGS\n";
    r += &esc(
        "Every line starts with bridge_isolation[POINT], where POINT is the hook point, cli or \
         helper. VDSM copies the network hooks' lines into /var/log/vdsm/supervdsm.log and the VM \
         and device hooks' lines into /var/log/vdsm/vdsm.log; the units log to the journal.",
    );
    r += "\n.SH SEE ALSO\n";
    r += &format!(
        "{}, {}, {}, {}, {}\n",
        bold("vdsm-tool(8)"),
        bold("bridge(8)"),
        bold("firewall-cmd(1)"),
        esc("/usr/share/doc/vdsm-hook-bridge-isolation/README.md"),
        esc(
            "/usr/share/doc/vdsm-hook-bridge-isolation/docs/ (install.md, configuration.md, \
             backends.md, cross-host.md, security.md, troubleshooting.md, monitoring.md and \
             alerts.yml, how-it-works.md, benchmarks.md, design.md)"
        )
    );
    out.extend_from_slice(r.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_lists_every_visible_command() {
        let page = String::from_utf8(man_page().unwrap()).unwrap();
        assert!(page.contains("\n.TH bridge-isolation 8 "), "{}", &page[..200]);
        assert_eq!(page.matches(".el .ds Aq").count(), 1);
        for sub in Cli::command().get_subcommands() {
            let name = format!("bridge\\-isolation {}", sub.get_name().replace('-', "\\-"));
            assert_eq!(page.contains(&name), !sub.is_hide_set(), "{name}");
        }
        assert!(page.contains("\\fB\\-\\-json\\fR"));
        assert!(!page
            .lines()
            .any(|l| l.starts_with('.') && l.len() > 1 && l.as_bytes()[1] == b' '));
    }

    #[test]
    fn bash_completion_knows_the_commands() {
        let mut out = Vec::new();
        write(
            &Generate::Completion {
                shell: clap_complete::Shell::Bash,
            },
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("complete -F _bridge-isolation"), "{text}");
        assert!(text.contains("release-all") && text.contains("status"));
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    #[test]
    fn roff_escaping() {
        assert_eq!(esc("a-b\\c"), "a\\-b\\ec");
        assert_eq!(esc(".x"), "\\&.x");
    }
}
