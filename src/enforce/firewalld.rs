//! firewalld backend: the recipe's persistent variant, done at layer 2. firewalld direct
//! rules in the `eb` family (ebtables), runtime **and** permanent, through firewalld's D-Bus
//! API (one bus connection per run, no `firewall-cmd` processes).
//!
//! ```text
//! eb filter FORWARD 0 -j BRIDGE_ISOLATION                          # one jump
//! eb filter BRIDGE_ISOLATION 0 -i vnet1 -j BRIDGE_ISO_red          # one per VM port
//! eb filter BRIDGE_ISOLATION 0 -i vnet2 -j BRIDGE_ISO_red
//! eb filter BRIDGE_ISO_red 0 -o vnet1 -j DROP                      # one per VM port
//! eb filter BRIDGE_ISO_red 0 -o vnet2 -j DROP
//! ```
//! (chains `BRIDGE_ISOLATION` and `BRIDGE_ISO_<bridge>` are direct chains of ours).
//!
//! ebtables sees every frame a bridge forwards, before any protocol is looked at: IPv4,
//! IPv6, ARP and any ethertype are dropped between VM ports, without br_netfilter, while
//! the uplink, trusted vNICs and the host (not in any rule) stay open. ebtables has no port
//! sets either, so the layout is the iptables backend's: a frame from a VM port jumps to its
//! bridge's chain, which drops it when it leaves through another VM port: 2n+1 rules for n
//! VM ports, not one per pair. Ports are named explicitly, never with a `vnet+` wildcard,
//! so trusted vNICs stay open and a tap on another bridge is never caught.
//!
//! Every rule and chain exists twice: in firewalld's runtime (what ebtables enforces now)
//! and in its permanent configuration (`direct.xml`), so they survive `firewall-cmd
//! --reload`, a firewalld restart and a reboot. Runtime changes are one D-Bus call each
//! (firewalld has no batch call for runtime direct rules; each is one ebtables transaction
//! inside firewalld); the permanent configuration is read and, when it differs, written
//! with one `getSettings` / `update` pair. Nothing is called when nothing differs.
//!
//! As in [`super::nftables`], the rules are plain data ([`Ours`]), diffed ([`Ours::diff`])
//! against one listing (`getAllChains` + `getAllRules`), and unit-tested without firewalld.

use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use zbus::blocking::Connection;
use zbus::zvariant::{DynamicType, OwnedValue};

use super::iptables::{changes, exact_port_name};
use super::{chain_name, Backend, DriverSettings};
use crate::error::{Error, Result};
use crate::model::backend::{BackendKind, Change, DropCounter, Observed};
use crate::model::plan::{BridgePlan, Plan};

/// firewalld's bus name.
pub const BUS_NAME: &str = "org.fedoraproject.FirewallD1";
/// firewalld's main object.
pub const PATH: &str = "/org/fedoraproject/FirewallD1";
/// firewalld's configuration object.
pub const CONFIG_PATH: &str = "/org/fedoraproject/FirewallD1/config";
/// Main interface (properties `state`, `BRIDGE`, ...).
pub const IFACE: &str = "org.fedoraproject.FirewallD1";
/// Runtime direct rules.
pub const IFACE_DIRECT: &str = "org.fedoraproject.FirewallD1.direct";
/// Configuration (property `FirewallBackend`).
pub const IFACE_CONFIG: &str = "org.fedoraproject.FirewallD1.config";
/// Permanent direct rules.
pub const IFACE_CONFIG_DIRECT: &str = "org.fedoraproject.FirewallD1.config.direct";
/// firewalld's configuration file, read when its D-Bus property cannot be.
pub const FIREWALLD_CONF: &str = "/etc/firewalld/firewalld.conf";
/// The system bus (root may name another with `DBUS_SYSTEM_BUS_ADDRESS`).
pub const SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";
/// The variable naming another system bus.
pub const ENV_SYSTEM_BUS: &str = "DBUS_SYSTEM_BUS_ADDRESS";
/// ebtables, which firewalld runs for the `eb` family.
pub const EBTABLES: &str = "/usr/sbin/ebtables";
/// Direct-rule family.
pub const IPV: &str = "eb";
/// ebtables table.
pub const TABLE: &str = "filter";
/// Built-in chain we hook into.
pub const FORWARD: &str = "FORWARD";
/// Our chain, jumped to from FORWARD.
pub const CHAIN: &str = NAMES.main;
/// Our chains: [`CHAIN`] and one per bridge, `BRIDGE_ISO_<bridge>`.
const NAMES: chain_name::Chains = chain_name::FIREWALLD;
/// Priority of our direct rules.
pub const PRIORITY: i32 = 0;
/// Longest wait for one D-Bus call (VDSM runs hooks without a timeout: never hang).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// `(ipv, table, chain)` as firewalld's D-Bus API has it.
pub type DirectChain = (String, String, String);
/// `(ipv, table, chain, priority, args)`.
pub type DirectRule = (String, String, String, i32, Vec<String>);
/// `(ipv, args)`.
pub type Passthrough = (String, Vec<String>);
/// The permanent direct configuration: `(a(sss)a(sssias)a(sas))`.
pub type DirectSettings = (Vec<DirectChain>, Vec<DirectRule>, Vec<Passthrough>);

/// The per-bridge chain of `bridge`.
fn bridge_chain(bridge: &str) -> String {
    NAMES.bridge.name(bridge)
}

/// The bridge whose chain is `chain`.
fn bridge_of_chain(chain: &str) -> Option<String> {
    NAMES.bridge.bridge_of(chain)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// The rule of FORWARD jumping to [`CHAIN`].
pub fn jump_rule() -> Vec<String> {
    strings(&["-j", CHAIN])
}

/// The rule of [`CHAIN`] sending frames from VM port `port` to its bridge's chain.
pub fn in_rule(port: &str, bridge: &str) -> Vec<String> {
    strings(&["-i", port, "-j", &bridge_chain(bridge)])
}

/// The rule of a bridge chain dropping frames leaving through VM port `port`.
pub fn out_rule(port: &str) -> Vec<String> {
    strings(&["-o", port, "-j", "DROP"])
}

fn target(args: &[String]) -> Option<&str> {
    args.iter()
        .position(|a| a == "-j" || a == "--jump")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// One direct rule of ours: chain, priority, arguments.
pub type Rule = (String, i32, Vec<String>);

// ---------------------------------------------------------------------------------------
// 1 and 2. Our chains and rules: wanted, or listed (runtime or permanent).

/// Our direct chains and rules in `eb`/`filter`, wanted or as firewalld lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ours {
    /// Our direct chains.
    pub chains: BTreeSet<String>,
    /// Our direct rules (the jump in FORWARD included).
    pub rules: BTreeSet<Rule>,
}

impl Ours {
    /// What `plan` asks for; nothing at all when no bridge is isolated. Every isolated bridge
    /// keeps its chain, even without VM ports.
    pub fn from_plan(plan: &Plan) -> Result<Ours> {
        let mut ours = Ours::default();
        for b in &plan.bridges {
            crate::model::ifname::validate(&b.bridge)
                .map_err(|e| Error::Kernel(format!("bridge {}: {e}", b.bridge)))?;
            ours.chains.insert(bridge_chain(&b.bridge));
            for p in b.ports.iter().filter(|p| p.role.isolated()) {
                exact_port_name(&p.port.name)?;
                ours.rules
                    .insert((CHAIN.into(), PRIORITY, in_rule(&p.port.name, &b.bridge)));
                ours.rules
                    .insert((bridge_chain(&b.bridge), PRIORITY, out_rule(&p.port.name)));
            }
        }
        if !ours.chains.is_empty() {
            ours.chains.insert(CHAIN.into());
            ours.rules.insert((FORWARD.into(), PRIORITY, jump_rule()));
        }
        Ok(ours)
    }

    /// Ours among firewalld's direct chains and rules: every chain named like ours, every
    /// rule in one, and any FORWARD rule jumping to [`CHAIN`].
    pub fn of_direct(chains: &[DirectChain], rules: &[DirectRule]) -> Ours {
        let here = |ipv: &str, table: &str| ipv == IPV && table == TABLE;
        Ours {
            chains: chains
                .iter()
                .filter(|(ipv, table, chain)| here(ipv, table) && NAMES.is_ours(chain))
                .map(|(_, _, chain)| chain.clone())
                .collect(),
            rules: rules
                .iter()
                .filter(|(ipv, table, chain, _, args)| {
                    here(ipv, table) && (NAMES.is_ours(chain) || (chain == FORWARD && target(args) == Some(CHAIN)))
                })
                .map(|(_, _, chain, priority, args)| (chain.clone(), *priority, args.clone()))
                .collect(),
        }
    }

    /// Our rules as firewalld's API (and `firewall-cmd --direct --get-all-rules`) has them.
    pub fn direct_rules(&self) -> Vec<DirectRule> {
        let mut rules: Vec<&Rule> = self.rules.iter().collect();
        rules.sort_by_key(|(chain, _, _)| rank(chain));
        rules
            .into_iter()
            .map(|(chain, priority, args)| (IPV.into(), TABLE.into(), chain.clone(), *priority, args.clone()))
            .collect()
    }

    /// Our chains as firewalld's API has them.
    pub fn direct_chains(&self) -> Vec<DirectChain> {
        self.chains
            .iter()
            .map(|c| (IPV.into(), TABLE.into(), c.clone()))
            .collect()
    }

    fn rules_in<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a Vec<String>> + 'a {
        self.rules.iter().filter(move |(c, _, _)| c == chain).map(|(_, _, a)| a)
    }

    /// Whether our chains hold only rules of our shape (anything else might accept first).
    fn clean(&self, chain: &str) -> bool {
        self.chains.contains(chain)
            && self.rules_in(chain).all(|args| match bridge_of_chain(chain) {
                Some(_) => out_port(args).is_some(),
                None => target(args)
                    .and_then(bridge_of_chain)
                    .is_some_and(|b| in_port(args, &b).is_some()),
            })
    }

    /// The ports of `bridge` kept apart: those with both rules, behind the jump, in chains
    /// holding nothing foreign.
    pub fn enforced(&self, bridge: &str) -> BTreeSet<String> {
        let chain = bridge_chain(bridge);
        let jumped = self.rules_in(FORWARD).any(|a| *a == jump_rule());
        if !jumped || !self.clean(CHAIN) || !self.clean(&chain) {
            return BTreeSet::new();
        }
        let out: BTreeSet<&str> = self.rules_in(&chain).filter_map(|a| out_port(a)).collect();
        self.rules_in(CHAIN)
            .filter_map(|a| in_port(a, bridge))
            .filter(|p| out.contains(p))
            .map(str::to_string)
            .collect()
    }

    /// Bridges with a chain.
    pub fn bridges(&self) -> BTreeSet<String> {
        self.chains.iter().filter_map(|c| bridge_of_chain(c)).collect()
    }

    /// These chains and rules without `bridges` (without anything, once no bridge is left).
    pub fn without(&self, bridges: &BTreeSet<String>) -> Ours {
        if self.bridges().is_subset(bridges) {
            return Ours::default();
        }
        let gone: BTreeSet<String> = bridges.iter().map(|b| bridge_chain(b)).collect();
        Ours {
            chains: self.chains.difference(&gone).cloned().collect(),
            rules: self
                .rules
                .iter()
                .filter(|(chain, _, args)| !gone.contains(chain) && !target(args).is_some_and(|t| gone.contains(t)))
                .cloned()
                .collect(),
        }
    }

    /// The runtime calls taking this to `want`, in an order that never leaves a jump to a
    /// missing chain: chains, then rules from the bridge chains up to the jump; removals the
    /// other way round, chains last.
    pub fn diff(&self, want: &Ours) -> Vec<Op> {
        let mut ops: Vec<Op> = want
            .chains
            .difference(&self.chains)
            .map(|c| Op::AddChain(c.clone()))
            .collect();
        let mut adds: Vec<&Rule> = want.rules.difference(&self.rules).collect();
        adds.sort_by_key(|(chain, _, _)| rank(chain));
        ops.extend(adds.into_iter().cloned().map(Op::AddRule));
        let mut removes: Vec<&Rule> = self.rules.difference(&want.rules).collect();
        removes.sort_by_key(|(chain, _, _)| std::cmp::Reverse(rank(chain)));
        ops.extend(removes.into_iter().cloned().map(Op::RemoveRule));
        let mut gone: Vec<&String> = self.chains.difference(&want.chains).collect();
        gone.sort_by_key(|c| *c == CHAIN);
        ops.extend(gone.into_iter().map(|c| Op::RemoveChain(c.clone())));
        ops
    }
}

/// Bridge chains first, then ours, then FORWARD.
fn rank(chain: &str) -> u8 {
    if bridge_of_chain(chain).is_some() {
        0
    } else if chain == CHAIN {
        1
    } else {
        2
    }
}

fn in_port<'a>(args: &'a [String], bridge: &str) -> Option<&'a str> {
    match args {
        [i, port, j, target] if i == "-i" && j == "-j" && *target == bridge_chain(bridge) => Some(port),
        _ => None,
    }
}

fn out_port(args: &[String]) -> Option<&str> {
    match args {
        [o, port, j, target] if o == "-o" && j == "-j" && target == "DROP" => Some(port),
        _ => None,
    }
}

/// The permanent configuration with our part replaced by `want` (others' chains, rules and
/// passthroughs untouched, in their order), or `None` when our part already is `want`.
pub fn merged(settings: &DirectSettings, want: &Ours) -> Option<DirectSettings> {
    merged_part(settings, &Ours::of_direct(&settings.0, &settings.1), want)
}

/// [`merged`] for any part of the direct configuration: `ours_now` (as listed in
/// `settings`) replaced by `want`, or `None` when they are equal.
pub fn merged_part(settings: &DirectSettings, ours_now: &Ours, want: &Ours) -> Option<DirectSettings> {
    let (chains, rules, passthroughs) = settings;
    if *ours_now == *want {
        return None;
    }
    let mut new_chains: Vec<DirectChain> = chains
        .iter()
        .filter(|(ipv, table, c)| !(ipv == IPV && table == TABLE && ours_now.chains.contains(c)))
        .cloned()
        .collect();
    new_chains.extend(want.direct_chains());
    let mut new_rules: Vec<DirectRule> = rules
        .iter()
        .filter(|(ipv, table, c, p, a)| {
            !(ipv == IPV && table == TABLE && ours_now.rules.contains(&(c.clone(), *p, a.clone())))
        })
        .cloned()
        .collect();
    new_rules.extend(want.direct_rules());
    Some((new_chains, new_rules, passthroughs.clone()))
}

// ---------------------------------------------------------------------------------------
// Another part of the `eb` direct rules (the cross-host filter, [`crate::enforce::cross_host`]), kept
// apart from the backend's own by chain names: `owns(chain)` names its chains, which must
// never look like ours ([`CHAIN`], `BRIDGE_ISO_*`).

/// The part among firewalld's direct chains and rules whose chains `owns`: those chains,
/// every rule in one, and the FORWARD rules jumping to one.
pub fn part_of_direct(chains: &[DirectChain], rules: &[DirectRule], owns: fn(&str) -> bool) -> Ours {
    let here = |ipv: &str, table: &str| ipv == IPV && table == TABLE;
    Ours {
        chains: chains
            .iter()
            .filter(|(ipv, table, chain)| here(ipv, table) && owns(chain))
            .map(|(_, _, chain)| chain.clone())
            .collect(),
        rules: rules
            .iter()
            .filter(|(ipv, table, chain, _, args)| {
                here(ipv, table) && (owns(chain) || (chain == FORWARD && target(args).is_some_and(owns)))
            })
            .map(|(_, _, chain, priority, args)| (chain.clone(), *priority, args.clone()))
            .collect(),
    }
}

/// The runtime calls taking the part `now` to `want`: chains, rules in them, then the
/// jumps; removals the other way round, chains last.
pub fn diff_part(now: &Ours, want: &Ours, owns: fn(&str) -> bool) -> Vec<Op> {
    let rank = |chain: &str| u8::from(!owns(chain));
    let mut ops: Vec<Op> = want
        .chains
        .difference(&now.chains)
        .map(|c| Op::AddChain(c.clone()))
        .collect();
    let mut adds: Vec<&Rule> = want.rules.difference(&now.rules).collect();
    adds.sort_by_key(|(chain, _, _)| rank(chain));
    ops.extend(adds.into_iter().cloned().map(Op::AddRule));
    let mut removes: Vec<&Rule> = now.rules.difference(&want.rules).collect();
    removes.sort_by_key(|(chain, _, _)| std::cmp::Reverse(rank(chain)));
    ops.extend(removes.into_iter().cloned().map(Op::RemoveRule));
    ops.extend(now.chains.difference(&want.chains).map(|c| Op::RemoveChain(c.clone())));
    ops
}

// ---------------------------------------------------------------------------------------
// 3. Runtime calls.

/// One runtime call on `org.fedoraproject.FirewallD1.direct`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `addChain(eb, filter, chain)`.
    AddChain(String),
    /// `removeChain(eb, filter, chain)`.
    RemoveChain(String),
    /// `addRule(eb, filter, chain, priority, args)`.
    AddRule(Rule),
    /// `removeRule(eb, filter, chain, priority, args)`.
    RemoveRule(Rule),
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::AddChain(c) => write!(f, "addChain {IPV} {TABLE} {c}"),
            Op::RemoveChain(c) => write!(f, "removeChain {IPV} {TABLE} {c}"),
            Op::AddRule((c, p, a)) => write!(f, "addRule {IPV} {TABLE} {c} {p} {}", a.join(" ")),
            Op::RemoveRule((c, p, a)) => write!(f, "removeRule {IPV} {TABLE} {c} {p} {}", a.join(" ")),
        }
    }
}

/// Lines as `firewall-cmd --direct --get-all-rules` prints them, for `plan`.
pub fn render(plan: &Plan) -> Result<Vec<String>> {
    Ok(Ours::from_plan(plan)?
        .direct_rules()
        .into_iter()
        .map(|(ipv, table, chain, priority, args)| format!("{ipv} {table} {chain} {priority} {}", args.join(" ")))
        .collect())
}

// ---------------------------------------------------------------------------------------
// 4. The bus.

/// A connection to the system bus.
pub struct Bus {
    conn: Connection,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bus")
    }
}

fn dbus_error(what: &str, e: zbus::Error) -> Error {
    match e {
        zbus::Error::MethodError(name, detail, _) => Error::Kernel(format!(
            "D-Bus {what}: {}{}",
            name.as_str(),
            detail.map(|d| format!(": {d}")).unwrap_or_default()
        )),
        other => Error::Kernel(format!("D-Bus {what}: {other}")),
    }
}

impl Bus {
    /// Connects to the system bus at `address` ([`DriverSettings::system_bus`]). Every call
    /// gives up after [`CALL_TIMEOUT`].
    pub fn system(address: &str) -> Result<Bus> {
        // A plain `unix:path=` address is connected here: zbus would connect it on a thread
        // of the `blocking` crate's pool, which then stays and wakes twice a second for
        // good, and the watcher keeping this connection must sleep when idle.
        let builder = match address.strip_prefix("unix:path=").filter(|p| !p.contains([',', '%'])) {
            Some(path) => std::os::unix::net::UnixStream::connect(path)
                .map(zbus::blocking::connection::Builder::unix_stream)
                .map_err(|e| zbus::Error::InputOutput(e.into())),
            None => zbus::blocking::connection::Builder::address(address),
        };
        let conn = builder
            .and_then(|b| b.method_timeout(CALL_TIMEOUT).build())
            .map_err(|e| dbus_error(&format!("connecting to {address}"), e))?;
        Ok(Bus { conn })
    }

    /// The connection itself.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Calls `iface.method(body)` on firewalld's `path`.
    pub fn call<B, R>(&self, path: &str, iface: &str, method: &str, body: &B) -> Result<R>
    where
        B: Serialize + DynamicType,
        R: DeserializeOwned + zbus::zvariant::Type,
    {
        let reply = self
            .conn
            .call_method(Some(BUS_NAME), path, Some(iface), method, body)
            .map_err(|e| dbus_error(&format!("{iface}.{method}"), e))?;
        reply
            .body()
            .deserialize()
            .map_err(|e| Error::Kernel(format!("D-Bus {iface}.{method}: unexpected reply: {e}")))
    }

    /// Whether `name` has an owner on the bus.
    pub fn has_owner(&self, name: &str) -> Result<bool> {
        let reply = self
            .conn
            .call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "NameHasOwner",
                &(name,),
            )
            .map_err(|e| dbus_error("NameHasOwner", e))?;
        reply
            .body()
            .deserialize()
            .map_err(|e| Error::Kernel(format!("D-Bus NameHasOwner: unexpected reply: {e}")))
    }

    /// Property `name` of firewalld's `path` / `iface`.
    pub fn property<R>(&self, path: &str, iface: &str, name: &str) -> Result<R>
    where
        R: TryFrom<OwnedValue>,
        R::Error: std::fmt::Display,
    {
        let value: OwnedValue = self.call(path, "org.freedesktop.DBus.Properties", "Get", &(iface, name))?;
        R::try_from(value).map_err(|e| Error::Kernel(format!("D-Bus property {iface}.{name}: {e}")))
    }
}

/// firewalld's `FirewallBackend` when it is running, `None` when it is not (no system bus,
/// or nobody owns its name). Asked over D-Bus; when the property cannot be read, taken from
/// [`FIREWALLD_CONF`] (firewalld's default, nftables, when the file does not say).
pub fn running_backend(system_bus: &str) -> Result<Option<String>> {
    let bus = match Bus::system(system_bus) {
        Ok(bus) => bus,
        Err(e) => {
            log::debug!("no system bus, so no firewalld: {e}");
            return Ok(None);
        }
    };
    if !bus.has_owner(BUS_NAME)? {
        return Ok(None);
    }
    match bus.property::<String>(CONFIG_PATH, IFACE_CONFIG, "FirewallBackend") {
        Ok(backend) => Ok(Some(backend)),
        Err(e) => {
            log::warn!("firewalld is running; reading its FirewallBackend from {FIREWALLD_CONF}: {e}");
            let text = std::fs::read_to_string(FIREWALLD_CONF).unwrap_or_default();
            Ok(Some(backend_in_conf(&text)))
        }
    }
}

/// The `FirewallBackend=` of a firewalld.conf (the last one wins), or firewalld's default.
pub fn backend_in_conf(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("FirewallBackend="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .rfind(|v| !v.is_empty())
        .unwrap_or_else(|| "nftables".to_string())
}

// ---------------------------------------------------------------------------------------
// The backend.

/// The firewalld backend: one bus connection per run, opened on first use; the runtime
/// listing is reused until the backend changes it.
#[derive(Debug)]
pub struct Firewalld {
    privileged: bool,
    system_bus: String,
    bus: OnceCell<Bus>,
    cache: RefCell<Option<Ours>>,
}

impl Firewalld {
    /// The backend, nothing connected yet.
    pub fn new(driver: &DriverSettings) -> Firewalld {
        Firewalld {
            privileged: driver.privileged,
            system_bus: driver.system_bus.clone(),
            bus: OnceCell::new(),
            cache: RefCell::new(None),
        }
    }

    fn bus(&self) -> Result<&Bus> {
        if self.bus.get().is_none() {
            let bus = Bus::system(&self.system_bus)?;
            let _ = self.bus.set(bus);
        }
        Ok(self.bus.get().expect("set above"))
    }

    /// Our runtime chains and rules.
    fn live(&self) -> Result<Ours> {
        if let Some(live) = self.cache.borrow().as_ref() {
            return Ok(live.clone());
        }
        let bus = self.bus()?;
        let chains: Vec<DirectChain> = bus.call(PATH, IFACE_DIRECT, "getAllChains", &())?;
        let rules: Vec<DirectRule> = bus.call(PATH, IFACE_DIRECT, "getAllRules", &())?;
        let live = Ours::of_direct(&chains, &rules);
        *self.cache.borrow_mut() = Some(live.clone());
        Ok(live)
    }

    /// Runs `ops` on the runtime configuration, one call each. A rule or chain already
    /// there (or already gone) counts as done: the state is what we asked for.
    fn run(&self, ops: &[Op]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        self.cache.replace(None);
        let bus = self.bus()?;
        for op in ops {
            log::debug!("firewalld: {op}");
            let (ipv, table) = (IPV, TABLE);
            let result: Result<()> = match op {
                Op::AddChain(c) => bus.call(PATH, IFACE_DIRECT, "addChain", &(ipv, table, c)),
                Op::RemoveChain(c) => {
                    // firewalld ends each direct chain with a RETURN of its own and deletes
                    // it with `ebtables -X` alone, which ebtables-nft refuses for a chain
                    // holding a rule (EBUSY): flush it first (our rules are gone already).
                    let flush = strings(&["-t", TABLE, "-F", c]);
                    if let Err(e) = bus.call::<_, String>(PATH, IFACE_DIRECT, "passthrough", &(ipv, &flush)) {
                        log::debug!("firewalld: flushing {c} before removing it: {e}");
                    }
                    bus.call(PATH, IFACE_DIRECT, "removeChain", &(ipv, table, c))
                }
                Op::AddRule((c, p, a)) => bus.call(PATH, IFACE_DIRECT, "addRule", &(ipv, table, c, *p, a)),
                Op::RemoveRule((c, p, a)) => bus.call(PATH, IFACE_DIRECT, "removeRule", &(ipv, table, c, *p, a)),
            };
            match result {
                Ok(()) => {}
                Err(Error::Kernel(msg)) if msg.contains("ALREADY_ENABLED") || msg.contains("NOT_ENABLED") => {
                    log::debug!("firewalld: {op}: {msg}");
                }
                Err(e) => return Err(Error::Kernel(format!("firewalld refused {op}: {e}"))),
            }
        }
        Ok(())
    }

    /// Makes our part of the permanent configuration `want` (`f` gets it as listed):
    /// one `getSettings` and, when it differs, one `update`.
    fn permanent(&self, want: impl FnOnce(&Ours) -> Ours) -> Result<()> {
        let bus = self.bus()?;
        let settings: DirectSettings = bus.call(CONFIG_PATH, IFACE_CONFIG_DIRECT, "getSettings", &())?;
        let now = Ours::of_direct(&settings.0, &settings.1);
        if let Some(new) = merged(&settings, &want(&now)) {
            log::debug!("firewalld: permanent direct configuration updated");
            bus.call::<_, ()>(CONFIG_PATH, IFACE_CONFIG_DIRECT, "update", &(new,))
                .map_err(|e| Error::Kernel(format!("firewalld refused the permanent direct rules: {e}")))?;
        }
        Ok(())
    }
}

impl Firewalld {
    /// Whether firewalld owns its bus name (false without a system bus).
    pub fn running(&self) -> bool {
        matches!(self.bus().and_then(|bus| bus.has_owner(BUS_NAME)), Ok(true))
    }

    /// Makes the part whose chains `owns` (see [`part_of_direct`]) `want`, runtime and
    /// permanent, with the backend's bus code. Returns the number of runtime calls made
    /// (plus one when the permanent configuration was written).
    pub fn sync_part(&self, owns: fn(&str) -> bool, want: &Ours) -> Result<usize> {
        let bus = self.bus()?;
        let ops = diff_part(&self.runtime_part(owns)?, want, owns);
        self.run(&ops)?;
        let settings: DirectSettings = bus.call(CONFIG_PATH, IFACE_CONFIG_DIRECT, "getSettings", &())?;
        let now = part_of_direct(&settings.0, &settings.1, owns);
        let mut calls = ops.len();
        if let Some(new) = merged_part(&settings, &now, want) {
            bus.call::<_, ()>(CONFIG_PATH, IFACE_CONFIG_DIRECT, "update", &(new,))
                .map_err(|e| Error::Kernel(format!("firewalld refused the permanent direct rules: {e}")))?;
            calls += 1;
        }
        Ok(calls)
    }
}

impl Firewalld {
    /// The runtime part whose chains `owns`.
    fn runtime_part(&self, owns: fn(&str) -> bool) -> Result<Ours> {
        let bus = self.bus()?;
        let chains: Vec<DirectChain> = bus.call(PATH, IFACE_DIRECT, "getAllChains", &())?;
        let rules: Vec<DirectRule> = bus.call(PATH, IFACE_DIRECT, "getAllRules", &())?;
        Ok(part_of_direct(&chains, &rules, owns))
    }

    /// What [`Firewalld::sync_part`] would change, in words (runtime, then permanent);
    /// empty when both already are `want`. Changes nothing.
    pub fn drift_part(&self, owns: fn(&str) -> bool, want: &Ours) -> Result<Vec<String>> {
        let mut out: Vec<String> = diff_part(&self.runtime_part(owns)?, want, owns)
            .iter()
            .map(|op| format!("runtime needs {op}"))
            .collect();
        let settings: DirectSettings = self.bus()?.call(CONFIG_PATH, IFACE_CONFIG_DIRECT, "getSettings", &())?;
        let permanent = part_of_direct(&settings.0, &settings.1, owns);
        out.extend(
            diff_part(&permanent, want, owns)
                .iter()
                .map(|op| format!("permanent configuration needs {op}")),
        );
        Ok(out)
    }

    /// Frames dropped by the `-j DROP` rules of ebtables chain `chain` (filter table), read
    /// through firewalld's passthrough, which runs the ebtables it drives; `None` when the
    /// chain is not there.
    pub fn eb_drops(&self, chain: &str) -> Result<Option<DropCounter>> {
        let args = strings(&["-t", TABLE, "-L", chain, "--Lc"]);
        match self
            .bus()?
            .call::<_, String>(PATH, IFACE_DIRECT, "passthrough", &(IPV, &args))
        {
            Ok(listing) => Ok(Some(eb_drops_in(&listing))),
            Err(e) => {
                log::debug!("firewalld: listing {chain} with counters: {e}");
                Ok(None)
            }
        }
    }
}

/// The sum of the counters of the `-j DROP` rules in `ebtables -L --Lc` output
/// (`-s 56:6f:4c:ab:0:0/ff:ff:ff:ff:ff:0 -j DROP , pcnt = 12 -- bcnt = 840`).
pub fn eb_drops_in(listing: &str) -> DropCounter {
    let mut sum = DropCounter::default();
    for line in listing.lines() {
        let Some((rule, counts)) = line.rsplit_once(" , pcnt = ") else {
            continue;
        };
        if !rule.trim_end().ends_with("-j DROP") {
            continue;
        }
        if let Some((p, b)) = counts.split_once(" -- bcnt = ") {
            sum.packets += p.trim().parse::<u64>().unwrap_or_default();
            sum.bytes += b.trim().parse::<u64>().unwrap_or_default();
        }
    }
    sum
}

impl Backend for Firewalld {
    fn kind(&self) -> BackendKind {
        BackendKind::Firewalld
    }

    fn available(&self) -> Result<()> {
        if !Path::new(EBTABLES).exists() {
            return Err(Error::Kernel(format!(
                "{EBTABLES} is missing: install the ebtables package"
            )));
        }
        let bus = self
            .bus()
            .map_err(|e| Error::Kernel(format!("firewalld is not running (no system bus: {e})")))?;
        if !bus.has_owner(BUS_NAME)? {
            return Err(Error::Kernel(format!(
                "firewalld is not running ({BUS_NAME} has no owner on the system bus)"
            )));
        }
        if !self.privileged {
            return Ok(());
        }
        if !bus.property::<bool>(PATH, IFACE, "BRIDGE")? {
            return Err(Error::Kernel(
                "firewalld cannot use ebtables (its BRIDGE property is false)".into(),
            ));
        }
        Ok(())
    }

    fn needs_root_to_observe(&self) -> bool {
        true
    }

    fn observe(&mut self, plan: &Plan) -> Result<Vec<Observed>> {
        let live = self.live()?;
        Ok(super::observed(plan, |bridge| live.enforced(bridge)))
    }

    fn apply(&mut self, plan: &Plan) -> Result<Vec<Change>> {
        let want = Ours::from_plan(plan)?;
        let live = self.live()?;
        let bridges: BTreeSet<String> = live.bridges().union(&want.bridges()).cloned().collect();
        let before: BTreeMap<String, BTreeSet<String>> =
            bridges.iter().map(|b| (b.clone(), live.enforced(b))).collect();
        let after = bridges.iter().map(|b| (b.clone(), want.enforced(b))).collect();
        self.run(&live.diff(&want))?;
        self.permanent(|_| want.clone())?;
        Ok(changes(&before, &after))
    }

    fn remove(&mut self, bridges: &[BridgePlan]) -> Result<Vec<Change>> {
        if bridges.is_empty() {
            return Ok(Vec::new());
        }
        let names: BTreeSet<String> = bridges.iter().map(|b| b.bridge.clone()).collect();
        // Handing over from a stopped firewalld must not fail: its runtime rules went with
        // it, and a failed handover would leave the next backend's enforcement unrecorded
        // (br_netfilter on, unremoved, once firewalld is back). Its permanent rules stay
        // until firewalld runs and this backend is used or removed again.
        let running = self.bus().and_then(|bus| bus.has_owner(BUS_NAME));
        if !matches!(running, Ok(true)) {
            log::warn!(
                "firewalld is not running ({}): its direct rules for {} are left to it",
                running
                    .err()
                    .map_or("no owner of its bus name".to_string(), |e| e.to_string()),
                names.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            return Ok(Vec::new());
        }
        let live = self.live()?;
        let before = names.iter().map(|b| (b.clone(), live.enforced(b))).collect();
        self.run(&live.diff(&live.without(&names)))?;
        self.permanent(|now| now.without(&names))?;
        Ok(changes(&before, &BTreeMap::new()))
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

    fn ours(bridges: Vec<BridgePlan>) -> Ours {
        Ours::from_plan(&plan(bridges)).unwrap()
    }

    fn rule(chain: &str, args: &[&str]) -> DirectRule {
        (IPV.into(), TABLE.into(), chain.into(), 0, strings(args))
    }

    #[test]
    fn sums_the_drop_counters_of_an_eb_listing() {
        // ebtables-nft 1.8.9, and legacy ebtables' shorter MACs.
        let listing = "Bridge table: filter\n\n\
            Bridge chain: BRIDGE_PEERS_red, entries: 4, policy: RETURN\n\
            -s 56:6f:4c:ab:0:4 -j RETURN , pcnt = 3 -- bcnt = 180\n\
            -o vnet4 -j RETURN , pcnt = 5 -- bcnt = 300\n\
            -s 56:6f:4c:ab:00:00/ff:ff:ff:ff:ff:00 -j DROP , pcnt = 12 -- bcnt = 840\n\
            -s 56:6f:4c:ac:0:0/ff:ff:ff:ff:0:0 -j DROP , pcnt = 1 -- bcnt = 60\n";
        assert_eq!(
            eb_drops_in(listing),
            DropCounter {
                packets: 13,
                bytes: 900
            }
        );
        assert_eq!(eb_drops_in("Bridge table: filter\n"), DropCounter::default());
    }

    #[test]
    fn renders_a_jump_and_two_rules_per_vm_port() {
        assert_eq!(
            render(&plan(vec![red()])).unwrap(),
            [
                "eb filter BRIDGE_ISO_red 0 -o vnet1 -j DROP",
                "eb filter BRIDGE_ISO_red 0 -o vnet2 -j DROP",
                "eb filter BRIDGE_ISOLATION 0 -i vnet1 -j BRIDGE_ISO_red",
                "eb filter BRIDGE_ISOLATION 0 -i vnet2 -j BRIDGE_ISO_red",
                "eb filter FORWARD 0 -j BRIDGE_ISOLATION",
            ]
        );
        let o = ours(vec![red()]);
        assert_eq!(
            o.direct_chains(),
            [
                (IPV.to_string(), TABLE.to_string(), "BRIDGE_ISOLATION".to_string()),
                (IPV.to_string(), TABLE.to_string(), "BRIDGE_ISO_red".to_string()),
            ]
        );
        assert_eq!(
            o.enforced("red"),
            BTreeSet::from(["vnet1".to_string(), "vnet2".to_string()])
        );
        assert_eq!(ours(vec![]), Ours::default());
        let ports: Vec<PortPlan> = (0..40).map(|i| port(&format!("vnet{i}"), Role::Vm)).collect();
        assert_eq!(
            ours(vec![bridge("big", ports)]).rules.len(),
            81,
            "2n+1 rules, not one per pair"
        );
    }

    #[test]
    fn picks_ours_out_of_everything_firewalld_lists() {
        let mut rules = Ours::from_plan(&plan(vec![red()])).unwrap().direct_rules();
        rules.push(rule("FORWARD", &["-i", "eth0", "-j", "ACCEPT"]));
        rules.push((
            "ipv4".into(),
            "filter".into(),
            "FORWARD".into(),
            0,
            strings(&["-j", CHAIN]),
        ));
        rules.push((
            "eb".into(),
            "nat".into(),
            "BRIDGE_ISO_red".into(),
            0,
            strings(&["-j", "DROP"]),
        ));
        let chains = vec![
            (IPV.to_string(), TABLE.to_string(), "BRIDGE_ISOLATION".to_string()),
            (IPV.to_string(), TABLE.to_string(), "BRIDGE_ISO_red".to_string()),
            (IPV.to_string(), TABLE.to_string(), "OTHER".to_string()),
            ("ipv4".to_string(), TABLE.to_string(), "BRIDGE_ISO_x".to_string()),
        ];
        let live = Ours::of_direct(&chains, &rules);
        assert_eq!(live, ours(vec![red()]));
        assert!(live.diff(&ours(vec![red()])).is_empty());
    }

    #[test]
    fn diffs_keep_jumps_pointing_at_chains() {
        let empty = Ours::default();
        let want = ours(vec![red()]);
        let add: Vec<String> = empty.diff(&want).iter().map(ToString::to_string).collect();
        assert_eq!(
            add,
            [
                "addChain eb filter BRIDGE_ISOLATION",
                "addChain eb filter BRIDGE_ISO_red",
                "addRule eb filter BRIDGE_ISO_red 0 -o vnet1 -j DROP",
                "addRule eb filter BRIDGE_ISO_red 0 -o vnet2 -j DROP",
                "addRule eb filter BRIDGE_ISOLATION 0 -i vnet1 -j BRIDGE_ISO_red",
                "addRule eb filter BRIDGE_ISOLATION 0 -i vnet2 -j BRIDGE_ISO_red",
                "addRule eb filter FORWARD 0 -j BRIDGE_ISOLATION",
            ]
        );
        let remove: Vec<String> = want.diff(&empty).iter().map(ToString::to_string).collect();
        assert_eq!(
            remove,
            [
                "removeRule eb filter FORWARD 0 -j BRIDGE_ISOLATION",
                "removeRule eb filter BRIDGE_ISOLATION 0 -i vnet1 -j BRIDGE_ISO_red",
                "removeRule eb filter BRIDGE_ISOLATION 0 -i vnet2 -j BRIDGE_ISO_red",
                "removeRule eb filter BRIDGE_ISO_red 0 -o vnet1 -j DROP",
                "removeRule eb filter BRIDGE_ISO_red 0 -o vnet2 -j DROP",
                "removeChain eb filter BRIDGE_ISO_red",
                "removeChain eb filter BRIDGE_ISOLATION",
            ]
        );
        // vnet2 becomes trusted, vnet4 arrives: two rules each, nothing else.
        let mut p = red();
        p.ports[2].role = Role::Trusted;
        p.ports.push(port("vnet4", Role::Vm));
        let member: Vec<String> = want.diff(&ours(vec![p])).iter().map(ToString::to_string).collect();
        assert_eq!(
            member,
            [
                "addRule eb filter BRIDGE_ISO_red 0 -o vnet4 -j DROP",
                "addRule eb filter BRIDGE_ISOLATION 0 -i vnet4 -j BRIDGE_ISO_red",
                "removeRule eb filter BRIDGE_ISOLATION 0 -i vnet2 -j BRIDGE_ISO_red",
                "removeRule eb filter BRIDGE_ISO_red 0 -o vnet2 -j DROP",
            ]
        );
    }

    #[test]
    fn removal_keeps_other_bridges_then_removes_everything() {
        let both = ours(vec![red(), bridge("blue", vec![port("tap0", Role::Vm)])]);
        let no_blue = both.without(&BTreeSet::from(["blue".to_string()]));
        assert_eq!(no_blue, ours(vec![red()]));
        assert_eq!(
            both.without(&BTreeSet::from(["blue".to_string(), "red".to_string()])),
            Ours::default()
        );
        assert_eq!(both.without(&BTreeSet::from(["green".to_string()])), both);
    }

    #[test]
    fn foreign_or_missing_rules_enforce_nothing() {
        let mut o = ours(vec![red()]);
        o.rules
            .insert(("BRIDGE_ISO_red".into(), -1, strings(&["-j", "ACCEPT"])));
        assert!(o.enforced("red").is_empty());
        assert_eq!(
            o.diff(&ours(vec![red()])),
            [Op::RemoveRule((
                "BRIDGE_ISO_red".into(),
                -1,
                strings(&["-j", "ACCEPT"])
            ))]
        );
        let mut unjumped = ours(vec![red()]);
        unjumped.rules.remove(&(FORWARD.into(), 0, jump_rule()));
        assert!(unjumped.enforced("red").is_empty());
        let mut half = ours(vec![red()]);
        half.rules.remove(&("BRIDGE_ISO_red".into(), 0, out_rule("vnet2")));
        assert_eq!(half.enforced("red"), BTreeSet::from(["vnet1".to_string()]));
    }

    #[test]
    fn permanent_settings_change_only_our_part() {
        let foreign_chain = ("ipv4".to_string(), "filter".to_string(), "MINE".to_string());
        let foreign_rule = (
            "ipv4".to_string(),
            "filter".to_string(),
            "MINE".to_string(),
            3,
            strings(&["-j", "ACCEPT"]),
        );
        let pass = ("ipv4".to_string(), strings(&["-A", "INPUT", "-j", "ACCEPT"]));
        let settings: DirectSettings = (
            vec![foreign_chain.clone()],
            vec![foreign_rule.clone()],
            vec![pass.clone()],
        );
        let want = ours(vec![red()]);
        let new = merged(&settings, &want).expect("ours were missing");
        assert_eq!(new.0[0], foreign_chain);
        assert_eq!(new.1[0], foreign_rule);
        assert_eq!(new.2, vec![pass.clone()]);
        assert_eq!(Ours::of_direct(&new.0, &new.1), want);
        assert_eq!(merged(&new, &want), None, "converged: no update");
        let cleared = merged(&new, &Ours::default()).unwrap();
        assert_eq!(cleared, (vec![foreign_chain], vec![foreign_rule], vec![pass]));
    }

    #[test]
    fn reads_the_backend_from_firewalld_conf() {
        assert_eq!(backend_in_conf("# c\nFirewallBackend=iptables\n"), "iptables");
        assert_eq!(
            backend_in_conf("FirewallBackend=iptables\nFirewallBackend=nftables"),
            "nftables"
        );
        assert_eq!(backend_in_conf("DefaultZone=public\n"), "nftables");
        assert_eq!(backend_in_conf(""), "nftables");
    }

    #[test]
    fn refuses_wildcard_ports() {
        assert!(Ours::from_plan(&plan(vec![bridge("red", vec![port("vnet+", Role::Vm)])])).is_err());
    }
}
