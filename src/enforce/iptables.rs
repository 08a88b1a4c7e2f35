//! iptables backend: the classic recipe's mechanism (br_netfilter and iptables rules at the
//! top of FORWARD), fixed so that it isolates VM ports from each other and nothing else.
//!
//! ```text
//! -A FORWARD -m physdev --physdev-is-bridged -j BRIDGE-ISOLATION          # rule 1 of FORWARD
//! -A BRIDGE-ISOLATION -m physdev --physdev-in vnet1 -j BRIDGE-ISO-red     # one per VM port
//! -A BRIDGE-ISOLATION -m physdev --physdev-in vnet2 -j BRIDGE-ISO-red
//! -A BRIDGE-ISO-red -m physdev --physdev-out vnet1 -j DROP                # one per VM port
//! -A BRIDGE-ISO-red -m physdev --physdev-out vnet2 -j DROP
//! ```
//!
//! The same rules go into iptables and ip6tables. Frames bridged from a VM port jump to
//! their bridge's chain, which drops them when they leave through another VM port of it:
//! 2n rules for n VM ports (iptables has no port sets; a rule per pair would be n(n-1)), at
//! most 2n+1 matches per packet, and a bridged packet from the uplink, a trusted vNIC or
//! the host never enters a bridge chain. The one jump sits at **position 1** of FORWARD:
//! firewalld's `-g` gotos end traversal, so an appended rule would never be reached. The
//! recipe's `-i BR -o BR -j DROP` matched every bridged packet and cut the VMs off the
//! uplink; `physdev` matches bridge ports, so VM-to-uplink and VM-to-host keep flowing.
//!
//! What it does not cover: br_netfilter hands only IPv4 and IPv6 to iptables. **ARP and
//! every other ethertype pass between VMs**; use port-isolation, nftables or firewalld (eb)
//! for layer-2 isolation. It also needs br_netfilter with `net.bridge.bridge-nf-call-iptables`
//! and `-ip6tables` = 1, which this backend sets (loading the module with modprobe when it is
//! neither loaded nor built in) and persists in `/etc/modules-load.d` and `/etc/sysctl.d`
//! drop-ins only while it is in use ([`BrNetfilter`]).
//!
//! Never a black hole: with firewalld running, br_netfilter hands every bridged packet to
//! firewalld's forward chains, which reject it (measured with both of firewalld's backends:
//! all bridged IPv4 on every bridge). [`refusal`] makes the backend refuse to run there.
//!
//! Like [`super::nftables`]: [`Ruleset`] is what a plan wants, [`Live`] what one
//! `iptables-save -c -t filter` shows, [`Live::diff`] the lines taking one to the other, and
//! one `iptables-restore --noflush` (and one `ip6tables-restore --noflush`) applies them as
//! one transaction per family; nothing runs when nothing differs.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{chain_name, Backend, DriverSettings};
use crate::error::{Error, Result};
use crate::model::backend::{BackendKind, Change, DropCounter, Observed};
use crate::model::plan::{BridgePlan, Plan};

/// Our chain, jumped to from rule 1 of FORWARD.
pub const CHAIN: &str = NAMES.main;
/// Our chains: [`CHAIN`] and one per bridge, `BRIDGE-ISO-<bridge>`.
const NAMES: chain_name::Chains = chain_name::IPTABLES;
/// The built-in chain we hook into.
pub const FORWARD: &str = "FORWARD";
/// `modprobe`, by absolute path.
pub const MODPROBE: &str = "/usr/sbin/modprobe";
/// The br_netfilter sysctls of the caller's network namespace.
pub const PROC_BRIDGE: &str = "/proc/sys/net/bridge";
/// Present when br_netfilter is loaded as a module.
pub const SYS_MODULE: &str = "/sys/module/br_netfilter";
/// The sysctls we need on, under [`PROC_BRIDGE`].
pub const SYSCTLS: [&str; 2] = ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"];
/// Where the module is persisted (unless [`DriverSettings::modules_load_dir`] says otherwise).
pub const MODULES_LOAD_DIR: &str = "/etc/modules-load.d";
/// Where the sysctls are persisted (unless [`DriverSettings::sysctl_dir`] says otherwise).
pub const SYSCTL_DIR: &str = "/etc/sysctl.d";
/// File name of the modules-load.d drop-in.
pub const MODULES_DROPIN: &str = "vdsm-hook-bridge-isolation.conf";
/// File name of the sysctl.d drop-in (late, so that it wins).
pub const SYSCTL_DROPIN: &str = "99-vdsm-hook-bridge-isolation.conf";

/// The per-bridge chain of `bridge`.
fn bridge_chain(bridge: &str) -> String {
    NAMES.bridge.name(bridge)
}

/// The bridge whose chain is `chain`, or `None` when it is not a bridge chain of ours.
fn bridge_of_chain(chain: &str) -> Option<String> {
    NAMES.bridge.bridge_of(chain)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// The rule of FORWARD jumping to [`CHAIN`].
pub fn jump_rule() -> Vec<String> {
    strings(&["-m", "physdev", "--physdev-is-bridged", "-j", CHAIN])
}

/// The rule of [`CHAIN`] sending what comes in through VM port `port` to its bridge's chain.
pub fn in_rule(port: &str, bridge: &str) -> Vec<String> {
    strings(&["-m", "physdev", "--physdev-in", port, "-j", &bridge_chain(bridge)])
}

/// The rule of a bridge chain dropping what goes out through VM port `port`.
pub fn out_rule(port: &str) -> Vec<String> {
    strings(&["-m", "physdev", "--physdev-out", port, "-j", "DROP"])
}

/// The port of a rule shaped like [`in_rule`] for `bridge`.
fn in_port<'a>(args: &'a [String], bridge: &str) -> Option<&'a str> {
    match args {
        [m, physdev, flag, port, j, target]
            if m == "-m"
                && physdev == "physdev"
                && flag == "--physdev-in"
                && j == "-j"
                && *target == bridge_chain(bridge) =>
        {
            Some(port)
        }
        _ => None,
    }
}

/// The port of a rule shaped like [`out_rule`].
fn out_port(args: &[String]) -> Option<&str> {
    match args {
        [m, physdev, flag, port, j, target]
            if m == "-m" && physdev == "physdev" && flag == "--physdev-out" && j == "-j" && target == "DROP" =>
        {
            Some(port)
        }
        _ => None,
    }
}

/// Whether `args` is a rule of ours in `chain` (anything else there is foreign).
fn is_our_rule(chain: &str, args: &[String]) -> bool {
    if chain == CHAIN {
        matches!(args, [_, _, _, _, _, target] if bridge_of_chain(target).is_some_and(|b| in_port(args, &b).is_some()))
    } else {
        bridge_of_chain(chain).is_some() && out_port(args).is_some()
    }
}

/// The chain a rule jumps or goes to.
fn target(args: &[String]) -> Option<&str> {
    args.iter()
        .position(|a| a == "-j" || a == "--jump" || a == "-g" || a == "--goto")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Checks that a port name can be matched exactly: physdev and ebtables read a trailing
/// `+` as a wildcard.
pub(crate) fn exact_port_name(port: &str) -> Result<()> {
    crate::model::ifname::validate(port)
        .map_err(|e| Error::Kernel(format!("port {port:?} cannot be matched by a firewall rule: {e}")))?;
    if port.ends_with('+') {
        return Err(Error::Kernel(format!(
            "port {port:?} cannot be matched by a firewall rule: a trailing '+' is a wildcard"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 1. What we want.

/// The VM ports of one isolated bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeRules {
    /// The Linux bridge.
    pub bridge: String,
    /// Its VM ports, sorted.
    pub ports: Vec<String>,
}

/// Our chains as they should be, in both families.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Isolated bridges, in plan order (each keeps its chain, even without VM ports).
    pub bridges: Vec<BridgeRules>,
}

impl Ruleset {
    /// The rules `plan` asks for. Fails on a port name a rule cannot match exactly.
    pub fn from_plan(plan: &Plan) -> Result<Ruleset> {
        let mut bridges = Vec::new();
        for b in &plan.bridges {
            crate::model::ifname::validate(&b.bridge)
                .map_err(|e| Error::Kernel(format!("bridge {}: {e}", b.bridge)))?;
            let mut ports = Vec::new();
            for p in b.ports.iter().filter(|p| p.role.isolated()) {
                exact_port_name(&p.port.name)?;
                ports.push(p.port.name.clone());
            }
            ports.sort();
            bridges.push(BridgeRules {
                bridge: b.bridge.clone(),
                ports,
            });
        }
        Ok(Ruleset { bridges })
    }

    /// Our chains and their rules; empty when no bridge is isolated (nothing of ours stays).
    pub fn chains(&self) -> BTreeMap<String, Vec<Vec<String>>> {
        let mut chains = BTreeMap::new();
        if self.bridges.is_empty() {
            return chains;
        }
        let mut main = Vec::new();
        for b in &self.bridges {
            main.extend(b.ports.iter().map(|p| in_rule(p, &b.bridge)));
            chains.insert(bridge_chain(&b.bridge), b.ports.iter().map(|p| out_rule(p)).collect());
        }
        chains.insert(CHAIN.to_string(), main);
        chains
    }

    /// What an empty table gets (for one family): the whole layout in one transaction.
    pub fn render(&self) -> String {
        render(&Live::default().diff(self))
    }
}

// ---------------------------------------------------------------------------------------
// 2. What the kernel has.

/// One rule of ours as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveRule {
    /// Its arguments after `-A CHAIN`.
    pub args: Vec<String>,
    /// Its counters (`iptables-save -c`).
    pub counter: Option<DropCounter>,
}

/// The filter table of one family as `iptables-save -c -t filter` shows it: FORWARD and
/// our chains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// The rules of FORWARD, in order.
    pub forward: Vec<Vec<String>>,
    /// Our chains (they exist even when empty), with their rules in order.
    pub chains: BTreeMap<String, Vec<LiveRule>>,
}

impl Live {
    /// Parses the output of `iptables-save -c -t filter` (or without `-c`).
    pub fn parse(text: &str) -> Result<Live> {
        let mut live = Live::default();
        let mut in_filter = false;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(table) = line.strip_prefix('*') {
                in_filter = table == "filter";
                continue;
            }
            if !in_filter || line == "COMMIT" {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let chain = decl.split_whitespace().next().unwrap_or("");
                if NAMES.is_ours(chain) {
                    live.chains.entry(chain.to_string()).or_default();
                }
                continue;
            }
            let (counter, rest) = match line.strip_prefix('[') {
                Some(rest) => {
                    let (counts, rest) = rest
                        .split_once(']')
                        .ok_or_else(|| Error::Kernel(format!("iptables-save line {}: unreadable counters", n + 1)))?;
                    let (p, b) = counts.split_once(':').unwrap_or(("", ""));
                    let counter = match (p.parse(), b.parse()) {
                        (Ok(packets), Ok(bytes)) => Some(DropCounter { packets, bytes }),
                        _ => None,
                    };
                    (counter, rest.trim_start())
                }
                None => (None, line),
            };
            let mut args = split_args(rest).map_err(|e| Error::Kernel(format!("iptables-save line {}: {e}", n + 1)))?;
            if args.len() < 2 || args[0] != "-A" {
                return Err(Error::Kernel(format!(
                    "iptables-save line {}: expected -A CHAIN ...: {line}",
                    n + 1
                )));
            }
            let chain = args[1].clone();
            args.drain(..2);
            if chain == FORWARD {
                live.forward.push(args);
            } else if NAMES.is_ours(&chain) {
                live.chains.entry(chain).or_default().push(LiveRule { args, counter });
            }
        }
        Ok(live)
    }

    /// Indexes of the FORWARD rules sending packets to our chain.
    fn jumps(&self) -> Vec<usize> {
        self.forward
            .iter()
            .enumerate()
            .filter(|(_, r)| target(r) == Some(CHAIN))
            .map(|(i, _)| i)
            .collect()
    }

    /// Whether FORWARD starts with our jump and has no other.
    pub fn jump_first(&self) -> bool {
        self.jumps() == [0] && self.forward[0] == jump_rule()
    }

    fn clean(&self, chain: &str) -> Option<&[LiveRule]> {
        let rules = self.chains.get(chain)?;
        rules
            .iter()
            .all(|r| is_our_rule(chain, &r.args))
            .then_some(rules.as_slice())
    }

    /// The ports of `bridge` this family keeps apart: those with both their rules, behind a
    /// jump at position 1 and chains holding nothing foreign (which might accept first).
    pub fn enforced(&self, bridge: &str) -> BTreeSet<String> {
        if !self.jump_first() {
            return BTreeSet::new();
        }
        let (Some(main), Some(own)) = (self.clean(CHAIN), self.clean(&bridge_chain(bridge))) else {
            return BTreeSet::new();
        };
        let out: BTreeSet<&str> = own.iter().filter_map(|r| out_port(&r.args)).collect();
        main.iter()
            .filter_map(|r| in_port(&r.args, bridge))
            .filter(|p| out.contains(p))
            .map(str::to_string)
            .collect()
    }

    /// Bridges that have a chain here.
    pub fn bridges(&self) -> BTreeSet<String> {
        self.chains.keys().filter_map(|c| bridge_of_chain(c)).collect()
    }

    /// Packets and bytes dropped by the rules of `bridge`'s chain.
    pub fn counter(&self, bridge: &str) -> Option<DropCounter> {
        let rules = self.chains.get(&bridge_chain(bridge))?;
        Some(
            rules
                .iter()
                .filter_map(|r| r.counter)
                .fold(DropCounter::default(), |a, c| DropCounter {
                    packets: a.packets + c.packets,
                    bytes: a.bytes + c.bytes,
                }),
        )
    }

    /// The lines taking this table to `want`: none when it already matches. Rules are
    /// added and deleted one by one (counters stay); a chain holding anything foreign is
    /// flushed and refilled; chains no longer wanted are flushed and deleted last.
    pub fn diff(&self, want: &Ruleset) -> Vec<Line> {
        let wanted = want.chains();
        let (mut declare, mut delete, mut add, mut drop) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let jumps = self.jumps();
        if wanted.is_empty() || !self.jump_first() {
            delete.extend(
                jumps
                    .iter()
                    .map(|&i| Line::Delete(FORWARD.into(), self.forward[i].clone())),
            );
            if !wanted.is_empty() {
                add.push(Line::InsertFirst(FORWARD.into(), jump_rule()));
            }
        }
        for (chain, rules) in &wanted {
            match self.chains.get(chain) {
                Some(live) if self.clean(chain).is_some() => {
                    let mut left: Vec<&Vec<String>> = rules.iter().collect();
                    for r in live {
                        match left.iter().position(|w| **w == r.args) {
                            Some(i) => {
                                left.swap_remove(i);
                            }
                            None => delete.push(Line::Delete(chain.clone(), r.args.clone())),
                        }
                    }
                    let mut missing: Vec<Vec<String>> = left.into_iter().cloned().collect();
                    missing.sort();
                    add.extend(missing.into_iter().map(|r| Line::Append(chain.clone(), r)));
                }
                _ => {
                    declare.push(Line::Declare(chain.clone()));
                    add.extend(rules.iter().map(|r| Line::Append(chain.clone(), r.clone())));
                }
            }
        }
        for chain in self.chains.keys().filter(|c| !wanted.contains_key(*c)) {
            declare.push(Line::Declare(chain.clone()));
            drop.push(Line::DeleteChain(chain.clone()));
        }
        if declare.is_empty() && delete.is_empty() && add.is_empty() && drop.is_empty() {
            return Vec::new();
        }
        // Bridge chains before the main chain, so that deleting the main chain comes last.
        drop.sort_by_key(|l| matches!(l, Line::DeleteChain(c) if c == CHAIN));
        declare.into_iter().chain(delete).chain(add).chain(drop).collect()
    }

    /// The lines removing `bridges` (and everything, once no other bridge is left).
    pub fn removal(&self, bridges: &BTreeSet<String>) -> Vec<Line> {
        if self.bridges().is_subset(bridges) {
            return self.diff(&Ruleset::default());
        }
        let (mut declare, mut delete, mut drop) = (Vec::new(), Vec::new(), Vec::new());
        for chain in bridges.iter().map(|b| bridge_chain(b)) {
            if !self.chains.contains_key(&chain) {
                continue;
            }
            let main = self.chains.get(CHAIN).map(Vec::as_slice).unwrap_or_default();
            delete.extend(
                main.iter()
                    .filter(|r| target(&r.args) == Some(chain.as_str()))
                    .map(|r| Line::Delete(CHAIN.into(), r.args.clone())),
            );
            declare.push(Line::Declare(chain.clone()));
            drop.push(Line::DeleteChain(chain));
        }
        declare.into_iter().chain(delete).chain(drop).collect()
    }
}

// ---------------------------------------------------------------------------------------
// 3. Lines of an `iptables-restore --noflush` transaction.

/// One line of a restore transaction in table filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// `:CHAIN - [0:0]`: creates a user chain, or (with `--noflush`) flushes it.
    Declare(String),
    /// `-D CHAIN args`: deletes the first rule with exactly these arguments.
    Delete(String, Vec<String>),
    /// `-I CHAIN 1 args`.
    InsertFirst(String, Vec<String>),
    /// `-A CHAIN args`.
    Append(String, Vec<String>),
    /// `-X CHAIN`: deletes an empty, unreferenced user chain.
    DeleteChain(String),
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let args = |a: &[String]| a.iter().map(|s| quote(s)).collect::<Vec<_>>().join(" ");
        match self {
            Line::Declare(c) => write!(f, ":{c} - [0:0]"),
            Line::Delete(c, a) => write!(f, "-D {c} {}", args(a)),
            Line::InsertFirst(c, a) => write!(f, "-I {c} 1 {}", args(a)),
            Line::Append(c, a) => write!(f, "-A {c} {}", args(a)),
            Line::DeleteChain(c) => write!(f, "-X {c}"),
        }
    }
}

/// The restore input for `lines`: one transaction on table filter.
pub fn render(lines: &[Line]) -> String {
    let mut text = String::from("*filter\n");
    for l in lines {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    text
}

/// An argument as iptables-restore reads it: quoted when it holds blanks or quotes.
fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && !arg
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '\'')
    {
        return arg.to_string();
    }
    let mut q = String::from("\"");
    for c in arg.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// Splits a saved rule into arguments the way iptables-restore does: blanks separate,
/// `"..."` groups, a backslash takes the next character as it is.
pub fn split_args(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut started) = (false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(chars.next().ok_or("a backslash ends the line")?);
                started = true;
            }
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    args.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    if started {
        args.push(cur);
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------------
// 4. br_netfilter and its persistence.

/// br_netfilter, its two sysctls in the caller's network namespace, and their drop-ins.
#[derive(Clone, Debug)]
pub struct BrNetfilter {
    /// `/proc/sys/net/bridge`.
    pub proc_dir: PathBuf,
    /// `/sys/module/br_netfilter`.
    pub module_dir: PathBuf,
    /// `modprobe`.
    pub modprobe: PathBuf,
    /// Directory of the modules-load.d drop-in.
    pub modules_load_dir: PathBuf,
    /// Directory of the sysctl.d drop-in.
    pub sysctl_dir: PathBuf,
}

impl BrNetfilter {
    /// The host's paths, the drop-ins where `driver` puts them.
    pub fn system(driver: &DriverSettings) -> BrNetfilter {
        BrNetfilter {
            proc_dir: PROC_BRIDGE.into(),
            module_dir: SYS_MODULE.into(),
            modprobe: MODPROBE.into(),
            modules_load_dir: driver.modules_load_dir.clone(),
            sysctl_dir: driver.sysctl_dir.clone(),
        }
    }

    /// Path of the modules-load.d drop-in.
    pub fn modules_dropin(&self) -> PathBuf {
        self.modules_load_dir.join(MODULES_DROPIN)
    }

    /// Path of the sysctl.d drop-in.
    pub fn sysctl_dropin(&self) -> PathBuf {
        self.sysctl_dir.join(SYSCTL_DROPIN)
    }

    /// Whether br_netfilter is there (loaded, or built into the kernel: then only its
    /// sysctls show it).
    pub fn loaded(&self) -> bool {
        self.proc_dir.is_dir() || self.module_dir.is_dir()
    }

    /// The value of each of [`SYSCTLS`] (`None`: absent or unreadable).
    pub fn values(&self) -> [Option<bool>; 2] {
        SYSCTLS.map(|s| {
            std::fs::read_to_string(self.proc_dir.join(s))
                .ok()
                .map(|v| v.trim() != "0")
        })
    }

    /// Whether both sysctls are on.
    pub fn enabled(&self) -> bool {
        self.values() == [Some(true); 2]
    }

    /// Loads the module if needed, writes the drop-ins (recording the sysctls' values before
    /// us, the first time) and turns both sysctls on. Returns whether a sysctl changed.
    pub fn enable(&self) -> Result<bool> {
        let loaded = self.loaded();
        if !loaded {
            let modprobe = self.modprobe.to_string_lossy();
            crate::sys::tool::run(&modprobe, &["br_netfilter"], None)?;
        }
        if !self.proc_dir.is_dir() {
            return Err(Error::Kernel(format!(
                "br_netfilter is loaded but {} is missing",
                self.proc_dir.display()
            )));
        }
        let before = self.values();
        // A module we load starts with its sysctls on: before us, they were off.
        let found = if loaded {
            before.map(|v| v.unwrap_or(false))
        } else {
            [false; 2]
        };
        write_file(
            &self.modules_dropin(),
            "# vdsm-hook-bridge-isolation: br_netfilter for its iptables backend; removed when that backend is not in use.\nbr_netfilter\n",
        )?;
        let dropin = self.sysctl_dropin();
        let previous = std::fs::read_to_string(&dropin)
            .ok()
            .and_then(|t| parse_previous(&t))
            .unwrap_or(found);
        write_file(&dropin, &sysctl_dropin_text(previous))?;
        let mut changed = false;
        for (name, now) in SYSCTLS.iter().zip(before) {
            if now != Some(true) {
                let path = self.proc_dir.join(name);
                std::fs::write(&path, "1\n").map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                changed = true;
            }
        }
        if !self.enabled() {
            return Err(Error::Kernel(format!(
                "{} still off after writing 1",
                SYSCTLS.join(" or ")
            )));
        }
        Ok(changed)
    }

    /// Removes the drop-ins and puts back the sysctl values they recorded from before us
    /// (a sysctl that was already on stays on). Nothing happens when there is no drop-in.
    /// The module stays loaded: others may use it, and with both sysctls off it is inert.
    pub fn release(&self) -> Result<()> {
        let dropin = self.sysctl_dropin();
        let previous = match std::fs::read_to_string(&dropin) {
            Ok(text) => parse_previous(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(format!("reading {}", dropin.display()), e)),
        };
        if let Some(previous) = previous {
            for (name, was) in SYSCTLS.iter().zip(previous) {
                let path = self.proc_dir.join(name);
                if !was && path.exists() {
                    std::fs::write(&path, "0\n").map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                }
            }
        }
        for path in [dropin, self.modules_dropin()] {
            match std::fs::remove_file(&path) {
                Ok(()) => log::info!("iptables: removed {}", path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
            }
        }
        Ok(())
    }
}

const PREVIOUS: &str = "# before:";

/// The sysctl.d drop-in, recording the values found before it (`previous`).
pub fn sysctl_dropin_text(previous: [bool; 2]) -> String {
    let mut text = String::from(
        "# vdsm-hook-bridge-isolation: br_netfilter hands bridged IPv4/IPv6 to iptables for its iptables\n\
         # backend; removed (and the values below put back) when that backend is not in use.\n",
    );
    text.push_str(PREVIOUS);
    for (name, was) in SYSCTLS.iter().zip(previous) {
        text.push_str(&format!(" net.bridge.{name}={}", u8::from(was)));
    }
    text.push('\n');
    for name in SYSCTLS {
        text.push_str(&format!("net.bridge.{name} = 1\n"));
    }
    text
}

/// The values a drop-in recorded from before us.
fn parse_previous(text: &str) -> Option<[bool; 2]> {
    let line = text.lines().find_map(|l| l.strip_prefix(PREVIOUS))?;
    let mut out = [false; 2];
    for (i, name) in SYSCTLS.iter().enumerate() {
        let key = format!("net.bridge.{name}=");
        let value = line.split_whitespace().find_map(|w| w.strip_prefix(key.as_str()))?;
        out[i] = value == "1";
    }
    Some(out)
}

/// Writes `text` to `path` through a temporary file and a rename, unless it already holds it.
fn write_file(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    let dir = path.parent().expect("drop-ins live in a directory");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().expect("a file name").to_string_lossy()
    ));
    std::fs::write(&tmp, text).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::io(format!("renaming {} to {}", tmp.display(), path.display()), e))?;
    log::info!("iptables: wrote {}", path.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 5. Never a black hole.

/// Why the backend must not run beside firewalld running with backend `firewalld` (its
/// `FirewallBackend`; `None` when firewalld is not running), or `None` when it may.
///
/// Measured: with bridge-nf-call-iptables=1, firewalld's forward chains reject all bridged
/// IPv4 on every bridge, with its nftables backend (its own table: nothing in iptables can
/// accept first) and with its iptables backend (its FORWARD ends in REJECT). With the
/// iptables backend and both sysctls already on, bridged traffic already goes through
/// firewalld and the host is evidently set up for it (a `--physdev-is-bridged` accept):
/// turning nothing on, we change nothing there.
pub fn refusal(firewalld: Option<&str>, netfilter_on: bool) -> Option<String> {
    let advice = "use backend port-isolation, nftables or firewalld instead";
    match firewalld {
        None => None,
        Some("iptables") if netfilter_on => None,
        Some("iptables") => Some(format!(
            "firewalld is running (FirewallBackend=iptables): turning on br_netfilter \
             (net.bridge.bridge-nf-call-iptables=1) would make its FORWARD chain reject all bridged \
             traffic on every bridge of this host; refusing the iptables backend: {advice}"
        )),
        Some(other) => Some(format!(
            "firewalld is running with its {other} backend: with br_netfilter on \
             (net.bridge.bridge-nf-call-iptables=1) it rejects all bridged IPv4 on every bridge of \
             this host; refusing the iptables backend: {advice}"
        )),
    }
}

// ---------------------------------------------------------------------------------------
// 6. Running iptables-save and iptables-restore.

/// One of the two families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// iptables.
    V4,
    /// ip6tables.
    V6,
}

impl Family {
    /// Both, in order.
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// `iptables-save` or `ip6tables-save`, by absolute path.
    pub fn save(self) -> &'static str {
        match self {
            Family::V4 => "/usr/sbin/iptables-save",
            Family::V6 => "/usr/sbin/ip6tables-save",
        }
    }

    /// `iptables-restore` or `ip6tables-restore`, by absolute path.
    pub fn restore(self) -> &'static str {
        match self {
            Family::V4 => "/usr/sbin/iptables-restore",
            Family::V6 => "/usr/sbin/ip6tables-restore",
        }
    }
}

/// Runs `program args` with `input` on stdin (no shell, no PATH, empty environment); on a
/// held xtables lock (another program changing rules) retries a few times.
fn run(program: &str, args: &[&str], input: Option<&[u8]>) -> Result<String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match crate::sys::tool::attempt(program, args, input)? {
            Ok(out) => return Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            Err(f) if f.stderr.contains("xtables lock") && attempt < 10 => {
                std::thread::sleep(Duration::from_millis(100 * attempt));
            }
            Err(f) => return Err(f.into()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The backend.

/// Both families as listed, and the sysctls.
#[derive(Clone, Debug, Default)]
struct Tables {
    v4: Live,
    v6: Live,
}

impl Tables {
    fn get(&self, f: Family) -> &Live {
        match f {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// Ports of `bridge` kept apart in both families (the sysctls aside).
    fn enforced(&self, bridge: &str) -> BTreeSet<String> {
        self.v4
            .enforced(bridge)
            .intersection(&self.v6.enforced(bridge))
            .cloned()
            .collect()
    }

    fn bridges(&self) -> BTreeSet<String> {
        self.v4.bridges().union(&self.v6.bridges()).cloned().collect()
    }
}

/// The iptables backend. It lists both tables once per run (two `*-save` processes) and
/// reuses the listing until it changes them.
#[derive(Debug)]
pub struct Iptables {
    netfilter: BrNetfilter,
    privileged: bool,
    system_bus: String,
    cache: RefCell<Option<Tables>>,
}

impl Iptables {
    /// The backend on this host's paths, with `driver`'s settings.
    pub fn new(driver: &DriverSettings) -> Iptables {
        Iptables {
            netfilter: BrNetfilter::system(driver),
            privileged: driver.privileged,
            system_bus: driver.system_bus.clone(),
            cache: RefCell::new(None),
        }
    }

    fn tables(&self) -> Result<Tables> {
        if let Some(t) = self.cache.borrow().as_ref() {
            return Ok(t.clone());
        }
        let list = |f: Family| run(f.save(), &["-c", "-t", "filter"], None).and_then(|t| Live::parse(&t));
        let tables = Tables {
            v4: list(Family::V4)?,
            v6: list(Family::V6)?,
        };
        *self.cache.borrow_mut() = Some(tables.clone());
        Ok(tables)
    }

    /// Ports kept apart now: both families, and br_netfilter handing them packets.
    fn isolated(&self, tables: &Tables, bridge: &str) -> BTreeSet<String> {
        if self.netfilter.enabled() {
            tables.enforced(bridge)
        } else {
            BTreeSet::new()
        }
    }

    /// Applies one transaction per family that has lines.
    fn commit(&self, lines: [Vec<Line>; 2]) -> Result<()> {
        for (f, lines) in Family::BOTH.into_iter().zip(lines) {
            if lines.is_empty() {
                continue;
            }
            self.cache.replace(None);
            let text = render(&lines);
            log::debug!("{} --noflush:\n{text}", f.restore());
            run(f.restore(), &["--noflush"], Some(text.as_bytes()))
                .map_err(|e| Error::Kernel(format!("iptables transaction refused: {e}")))?;
        }
        Ok(())
    }
}

/// Ports whose enforcement differs between `before` and `after` (bridge -> ports).
pub(crate) fn changes(
    before: &BTreeMap<String, BTreeSet<String>>,
    after: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<Change> {
    let empty = BTreeSet::new();
    let bridges: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let mut out = Vec::new();
    for bridge in bridges {
        let old = before.get(bridge).unwrap_or(&empty);
        let new = after.get(bridge).unwrap_or(&empty);
        for (ports, isolated) in [(new.difference(old), true), (old.difference(new), false)] {
            out.extend(ports.map(|p| Change {
                bridge: bridge.clone(),
                port: p.clone(),
                isolated,
            }));
        }
    }
    out
}

impl Backend for Iptables {
    fn kind(&self) -> BackendKind {
        BackendKind::Iptables
    }

    fn available(&self) -> Result<()> {
        for f in Family::BOTH {
            for tool in [f.save(), f.restore()] {
                if !Path::new(tool).exists() {
                    return Err(Error::Kernel(format!(
                        "{tool} is missing: install the iptables package"
                    )));
                }
            }
        }
        if !self.netfilter.loaded() && !self.netfilter.modprobe.exists() {
            return Err(Error::Kernel(format!(
                "br_netfilter is not loaded and {} is missing",
                self.netfilter.modprobe.display()
            )));
        }
        if !self.privileged {
            // Reading rules and asking firewalld need root; the root helper checks for real.
            return Ok(());
        }
        let firewalld = super::firewalld::running_backend(&self.system_bus)?;
        match refusal(firewalld.as_deref(), self.netfilter.enabled()) {
            Some(why) => Err(Error::Config(why)),
            None => Ok(()),
        }
    }

    fn needs_root_to_observe(&self) -> bool {
        true
    }

    fn observe(&mut self, plan: &Plan) -> Result<Vec<Observed>> {
        let tables = self.tables()?;
        Ok(super::observed(plan, |bridge| self.isolated(&tables, bridge)))
    }

    fn apply(&mut self, plan: &Plan) -> Result<Vec<Change>> {
        let want = Ruleset::from_plan(plan)?;
        let tables = self.tables()?;
        let before = tables
            .bridges()
            .into_iter()
            .chain(want.bridges.iter().map(|b| b.bridge.clone()))
            .map(|b| {
                let ports = self.isolated(&tables, &b);
                (b, ports)
            })
            .collect();
        let lines = Family::BOTH.map(|f| tables.get(f).diff(&want));
        self.commit(lines)?;
        if want.bridges.is_empty() {
            self.netfilter.release()?;
        } else {
            self.netfilter.enable()?;
        }
        let after = want
            .bridges
            .iter()
            .map(|b| (b.bridge.clone(), b.ports.iter().cloned().collect()))
            .collect();
        Ok(changes(&before, &after))
    }

    fn remove(&mut self, bridges: &[BridgePlan]) -> Result<Vec<Change>> {
        if bridges.is_empty() {
            return Ok(Vec::new());
        }
        let tables = self.tables()?;
        let names: BTreeSet<String> = bridges.iter().map(|b| b.bridge.clone()).collect();
        let before = names.iter().map(|b| (b.clone(), self.isolated(&tables, b))).collect();
        let lines = Family::BOTH.map(|f| tables.get(f).removal(&names));
        self.commit(lines)?;
        if tables.bridges().is_subset(&names) {
            self.netfilter.release()?;
        }
        Ok(changes(&before, &BTreeMap::new()))
    }

    fn drop_counters(&mut self, plan: &Plan) -> Result<BTreeMap<String, DropCounter>> {
        if !self.privileged {
            return Ok(BTreeMap::new());
        }
        let tables = self.tables()?;
        Ok(plan
            .bridges
            .iter()
            .filter_map(|b| {
                let counts = Family::BOTH.map(|f| tables.get(f).counter(&b.bridge));
                if counts.iter().all(Option::is_none) {
                    return None;
                }
                let sum = counts
                    .into_iter()
                    .flatten()
                    .fold(DropCounter::default(), |a, c| DropCounter {
                        packets: a.packets + c.packets,
                        bytes: a.bytes + c.bytes,
                    });
                Some((b.bridge.clone(), sum))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::plan::fixtures::{bridge, plan, red};
    use crate::model::plan::{PortPlan, Role};

    fn port(name: &str, role: Role) -> PortPlan {
        crate::model::plan::fixtures::port(name, 1, role, Some(false))
    }

    fn ruleset(bridges: Vec<BridgePlan>) -> Ruleset {
        Ruleset::from_plan(&plan(bridges)).unwrap()
    }

    /// What `iptables-save -c -t filter` (1.8.9, nf_tables) printed after applying the
    /// rendered rules of red and blue (one VM port, tap0) next to firewalld-like rules.
    const SAVED: &str = "# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 29 09:45:29 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:BRIDGE-ISO-blue - [0:0]
:BRIDGE-ISO-red - [0:0]
:BRIDGE-ISOLATION - [0:0]
:FORWARD_direct - [0:0]
[22:1848] -A FORWARD -m physdev --physdev-is-bridged -j BRIDGE-ISOLATION
[0:0] -A FORWARD -j FORWARD_direct
[0:0] -A FORWARD -m comment --comment \"a \\\"quoted\\\" note\" -j ACCEPT
[0:0] -A BRIDGE-ISO-blue -m physdev --physdev-out tap0 -j DROP
[1:84] -A BRIDGE-ISO-red -m physdev --physdev-out vnet1 -j DROP
[2:168] -A BRIDGE-ISO-red -m physdev --physdev-out vnet2 -j DROP
[5:420] -A BRIDGE-ISOLATION -m physdev --physdev-in vnet1 -j BRIDGE-ISO-red
[5:420] -A BRIDGE-ISOLATION -m physdev --physdev-in vnet2 -j BRIDGE-ISO-red
[0:0] -A BRIDGE-ISOLATION -m physdev --physdev-in tap0 -j BRIDGE-ISO-blue
COMMIT
# Completed on Sun Nov 29 09:45:29 2026
";

    fn two() -> Vec<BridgePlan> {
        vec![red(), bridge("blue", vec![port("tap0", Role::Vm)])]
    }

    #[test]
    fn renders_one_jump_and_two_rules_per_vm_port() {
        assert_eq!(
            ruleset(vec![red()]).render(),
            "*filter
:BRIDGE-ISO-red - [0:0]
:BRIDGE-ISOLATION - [0:0]
-I FORWARD 1 -m physdev --physdev-is-bridged -j BRIDGE-ISOLATION
-A BRIDGE-ISO-red -m physdev --physdev-out vnet1 -j DROP
-A BRIDGE-ISO-red -m physdev --physdev-out vnet2 -j DROP
-A BRIDGE-ISOLATION -m physdev --physdev-in vnet1 -j BRIDGE-ISO-red
-A BRIDGE-ISOLATION -m physdev --physdev-in vnet2 -j BRIDGE-ISO-red
COMMIT
"
        );
        // A bridge without VM ports keeps an empty chain; nothing isolated, nothing at all.
        let lonely = ruleset(vec![bridge("blue", vec![port("eth2", Role::Uplink)])]).render();
        assert_eq!(
            lonely,
            "*filter\n:BRIDGE-ISO-blue - [0:0]\n:BRIDGE-ISOLATION - [0:0]\n\
             -I FORWARD 1 -m physdev --physdev-is-bridged -j BRIDGE-ISOLATION\nCOMMIT\n"
        );
        assert_eq!(Live::default().diff(&Ruleset::default()), vec![]);
    }

    #[test]
    fn rule_count_grows_linearly() {
        let ports: Vec<PortPlan> = (0..50).map(|i| port(&format!("vnet{i}"), Role::Vm)).collect();
        let chains = ruleset(vec![bridge("red", ports)]).chains();
        let rules: usize = chains.values().map(Vec::len).sum();
        assert_eq!(rules, 100, "2 rules per VM port, not one per pair");
    }

    #[test]
    fn parses_a_listing() {
        let live = Live::parse(SAVED).unwrap();
        assert!(live.jump_first());
        assert_eq!(live.forward.len(), 3);
        assert_eq!(
            live.forward[2],
            strings(&["-m", "comment", "--comment", "a \"quoted\" note", "-j", "ACCEPT"])
        );
        assert_eq!(live.bridges(), BTreeSet::from(["blue".to_string(), "red".to_string()]));
        assert_eq!(
            live.enforced("red"),
            BTreeSet::from(["vnet1".to_string(), "vnet2".to_string()])
        );
        assert_eq!(live.counter("red"), Some(DropCounter { packets: 3, bytes: 252 }));
        assert_eq!(live.counter("green"), None);
        assert!(!live.chains.contains_key("FORWARD_direct"));
        assert_eq!(Live::parse("").unwrap(), Live::default());
        assert!(Live::parse("*filter\n-X oops\nCOMMIT\n").is_err());
    }

    #[test]
    fn converged_tables_need_no_transaction() {
        let live = Live::parse(SAVED).unwrap();
        assert_eq!(live.diff(&ruleset(two())), vec![]);
        // Bridge order in the plan does not matter.
        let mut swapped = two();
        swapped.reverse();
        assert_eq!(live.diff(&ruleset(swapped)), vec![]);
    }

    #[test]
    fn member_changes_touch_only_their_rules() {
        let live = Live::parse(SAVED).unwrap();
        let mut p = two();
        p[0].ports[2].role = Role::Trusted; // vnet2 becomes trusted
        p[0].ports.push(port("vnet4", Role::Vm));
        let text: Vec<String> = live.diff(&ruleset(p)).iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "-D BRIDGE-ISO-red -m physdev --physdev-out vnet2 -j DROP",
                "-D BRIDGE-ISOLATION -m physdev --physdev-in vnet2 -j BRIDGE-ISO-red",
                "-A BRIDGE-ISO-red -m physdev --physdev-out vnet4 -j DROP",
                "-A BRIDGE-ISOLATION -m physdev --physdev-in vnet4 -j BRIDGE-ISO-red",
            ]
        );
    }

    #[test]
    fn bridges_come_and_go() {
        let live = Live::parse(SAVED).unwrap();
        let text: Vec<String> = live
            .diff(&ruleset(vec![red(), bridge("green", vec![port("vnet8", Role::Vm)])]))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            text,
            [
                ":BRIDGE-ISO-green - [0:0]",
                ":BRIDGE-ISO-blue - [0:0]",
                "-D BRIDGE-ISOLATION -m physdev --physdev-in tap0 -j BRIDGE-ISO-blue",
                "-A BRIDGE-ISO-green -m physdev --physdev-out vnet8 -j DROP",
                "-A BRIDGE-ISOLATION -m physdev --physdev-in vnet8 -j BRIDGE-ISO-green",
                "-X BRIDGE-ISO-blue",
            ]
        );
        let all: Vec<String> = live.diff(&Ruleset::default()).iter().map(ToString::to_string).collect();
        assert_eq!(
            all,
            [
                ":BRIDGE-ISO-blue - [0:0]",
                ":BRIDGE-ISO-red - [0:0]",
                ":BRIDGE-ISOLATION - [0:0]",
                "-D FORWARD -m physdev --physdev-is-bridged -j BRIDGE-ISOLATION",
                "-X BRIDGE-ISO-blue",
                "-X BRIDGE-ISO-red",
                "-X BRIDGE-ISOLATION",
            ]
        );
    }

    #[test]
    fn repairs_jump_position_duplicates_and_foreign_rules() {
        // A firewalld reload put its own rules first (or we were appended): move the jump.
        let mut moved = Live::parse(SAVED).unwrap();
        moved.forward.rotate_left(1);
        assert!(moved.enforced("red").is_empty(), "a rule before the jump may accept");
        let text: Vec<String> = moved.diff(&ruleset(two())).iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "-D FORWARD -m physdev --physdev-is-bridged -j BRIDGE-ISOLATION",
                "-I FORWARD 1 -m physdev --physdev-is-bridged -j BRIDGE-ISOLATION",
            ]
        );
        // Two jumps: both go, one comes back at the top.
        let mut twice = Live::parse(SAVED).unwrap();
        twice.forward.push(jump_rule());
        assert_eq!(twice.diff(&ruleset(two())).len(), 3);
        // A duplicate rule goes.
        let mut dup = Live::parse(SAVED).unwrap();
        let first = dup.chains["BRIDGE-ISO-red"][0].clone();
        dup.chains.get_mut("BRIDGE-ISO-red").unwrap().push(first);
        let text: Vec<String> = dup.diff(&ruleset(two())).iter().map(ToString::to_string).collect();
        assert_eq!(text, ["-D BRIDGE-ISO-red -m physdev --physdev-out vnet1 -j DROP"]);
        // A foreign rule in our chain: the chain is flushed and refilled.
        let mut foreign = Live::parse(SAVED).unwrap();
        foreign.chains.get_mut("BRIDGE-ISO-red").unwrap().insert(
            0,
            LiveRule {
                args: strings(&["-j", "ACCEPT"]),
                counter: None,
            },
        );
        assert!(foreign.enforced("red").is_empty());
        assert_eq!(foreign.enforced("blue"), BTreeSet::from(["tap0".to_string()]));
        let text: Vec<String> = foreign.diff(&ruleset(two())).iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                ":BRIDGE-ISO-red - [0:0]",
                "-A BRIDGE-ISO-red -m physdev --physdev-out vnet1 -j DROP",
                "-A BRIDGE-ISO-red -m physdev --physdev-out vnet2 -j DROP",
            ]
        );
        // An in-rule without its drop rule isolates nothing.
        let mut half = Live::parse(SAVED).unwrap();
        half.chains.get_mut("BRIDGE-ISO-red").unwrap().remove(1);
        assert_eq!(half.enforced("red"), BTreeSet::from(["vnet1".to_string()]));
    }

    #[test]
    fn removal_deletes_only_what_is_asked_then_everything() {
        let live = Live::parse(SAVED).unwrap();
        let text: Vec<String> = live
            .removal(&BTreeSet::from(["blue".to_string()]))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            text,
            [
                ":BRIDGE-ISO-blue - [0:0]",
                "-D BRIDGE-ISOLATION -m physdev --physdev-in tap0 -j BRIDGE-ISO-blue",
                "-X BRIDGE-ISO-blue",
            ]
        );
        let both = BTreeSet::from(["blue".to_string(), "red".to_string()]);
        assert_eq!(live.removal(&both), live.diff(&Ruleset::default()));
        assert_eq!(live.removal(&BTreeSet::from(["green".to_string()])), vec![]);
        assert_eq!(Live::default().removal(&both), vec![]);
    }

    #[test]
    fn splits_and_quotes_like_iptables_restore() {
        assert_eq!(
            split_args(r#"-m comment --comment "bridge red" -j X"#).unwrap(),
            strings(&["-m", "comment", "--comment", "bridge red", "-j", "X"])
        );
        assert_eq!(split_args(r#"a\ b "" c"#).unwrap(), strings(&["a b", "", "c"]));
        assert!(split_args(r#""open"#).is_err());
        for arg in ["plain", "two words", "a \"q\"", "", "back\\slash"] {
            assert_eq!(split_args(&quote(arg)).unwrap(), vec![arg.to_string()], "{arg}");
        }
    }

    #[test]
    fn odd_port_names_are_refused() {
        for bad in ["vnet+", "a b", ""] {
            let p = plan(vec![bridge("red", vec![port(bad, Role::Vm)])]);
            assert!(Ruleset::from_plan(&p).is_err(), "{bad:?}");
        }
        // An uplink or trusted port is never matched: its name does not matter.
        let ok = plan(vec![bridge("red", vec![port("odd+", Role::Uplink)])]);
        assert!(Ruleset::from_plan(&ok).is_ok());
        assert_eq!(bridge_chain("a234567890abcde").len(), 26);
    }

    #[test]
    fn refuses_under_firewalld() {
        assert_eq!(refusal(None, false), None);
        assert_eq!(refusal(None, true), None);
        let nft = refusal(Some("nftables"), true).unwrap();
        assert!(nft.contains("rejects all bridged IPv4"), "{nft}");
        assert!(nft.contains("port-isolation, nftables or firewalld"), "{nft}");
        assert!(refusal(Some("iptables"), false).is_some());
        assert_eq!(refusal(Some("iptables"), true), None);
    }

    fn netfilter(dir: &Path, values: Option<[&str; 2]>) -> BrNetfilter {
        let proc_dir = dir.join("proc");
        if let Some(values) = values {
            std::fs::create_dir_all(&proc_dir).unwrap();
            for (name, v) in SYSCTLS.iter().zip(values) {
                std::fs::write(proc_dir.join(name), v).unwrap();
            }
        }
        BrNetfilter {
            proc_dir,
            module_dir: dir.join("module"),
            modprobe: dir.join("no-modprobe"),
            modules_load_dir: dir.join("modules-load.d"),
            sysctl_dir: dir.join("sysctl.d"),
        }
    }

    #[test]
    fn br_netfilter_is_persisted_while_in_use_and_put_back_after() {
        let dir = tempfile::tempdir().unwrap();
        let nf = netfilter(dir.path(), Some(["0\n", "1\n"]));
        assert!(nf.loaded() && !nf.enabled());
        assert!(nf.enable().unwrap());
        assert!(nf.enabled());
        let text = std::fs::read_to_string(nf.sysctl_dropin()).unwrap();
        assert!(text.contains("# before: net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=1\n"));
        assert!(text.ends_with("net.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\n"));
        assert!(std::fs::read_to_string(nf.modules_dropin())
            .unwrap()
            .contains("\nbr_netfilter\n"));
        // Again: nothing changes, the values from before us are kept.
        assert!(!nf.enable().unwrap());
        assert_eq!(std::fs::read_to_string(nf.sysctl_dropin()).unwrap(), text);
        nf.release().unwrap();
        assert!(!nf.sysctl_dropin().exists() && !nf.modules_dropin().exists());
        assert_eq!(nf.values(), [Some(false), Some(true)]);
        // Without a drop-in, release touches nothing.
        std::fs::write(nf.proc_dir.join(SYSCTLS[0]), "1\n").unwrap();
        nf.release().unwrap();
        assert_eq!(nf.values(), [Some(true), Some(true)]);
        let listed: Vec<_> = std::fs::read_dir(&nf.sysctl_dir).unwrap().collect();
        assert!(listed.is_empty(), "no temporary file left: {listed:?}");
    }

    #[test]
    fn missing_br_netfilter_without_modprobe_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let nf = netfilter(dir.path(), None);
        assert!(!nf.loaded());
        let err = nf.enable().unwrap_err().to_string();
        assert!(err.contains("modprobe"), "{err}");
        assert!(!nf.sysctl_dropin().exists());
    }

    #[test]
    fn changes_list_ports_both_ways() {
        let before = BTreeMap::from([("red".to_string(), BTreeSet::from(["vnet1".to_string()]))]);
        let after = BTreeMap::from([("red".to_string(), BTreeSet::from(["vnet2".to_string()]))]);
        let got: Vec<(String, bool)> = changes(&before, &after)
            .into_iter()
            .map(|c| (c.port, c.isolated))
            .collect();
        assert_eq!(got, vec![("vnet2".to_string(), true), ("vnet1".to_string(), false)]);
    }
}
