//! The hook binary: what each VDSM hook point does (docs/design.md §3). The protocol itself
//! (points, payload file, exit codes) is [`crate::vdsm::protocol`].

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use crate::app::helper;
use crate::app::metrics;
use crate::enforce;
use crate::error::{Error, Result};
use crate::host::config::{self, BackendChoice, OnFailure, Settings};
use crate::host::owners::{OwnerDir, VmRecord, VnicRecord};
use crate::host::paths;
use crate::host::state::{PendingSetup, Runner, State, Store};
use crate::model::backend::BackendKind;
use crate::model::policy::{self, NetworkChange, NetworkPolicy, PROP_TRUSTED};
use crate::model::port::Snapshot;
use crate::reconcile;
use crate::sys::bridge;
use crate::vdsm::domain::{self, Document, PortWish};
use crate::vdsm::logging;
use crate::vdsm::placement;
use crate::vdsm::protocol::{one_line, point_from_args, Payload, Point};
use crate::vdsm::setup;
use crate::vdsm::vnic::{Event, Report, VnicFact};

/// Entry point of the hook binary.
pub fn main() -> ExitCode {
    ExitCode::from(status())
}

/// [`main`] for a binary whose C `main` skips std's runtime start-up (it saves a good part of
/// the hook's start, docs/benchmarks.md): does first what of that start-up matters here, then
/// returns the exit status.
pub fn c_main() -> i32 {
    std_start();
    let code = status();
    // std's runtime would flush stdout at exit; this process writes nothing there, but a
    // line left buffered must not be lost.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    i32::from(code)
}

/// What std's start-up does that a hook needs: descriptors 0-2 open (on /dev/null when
/// closed, so no file this process opens takes their place and gets log lines written into
/// it) and SIGPIPE ignored (a closed pipe is an error to report, not a silent death). std's
/// stack-overflow handler is left out: an overflow still kills the process (SIGSEGV), only
/// without std's message. Arguments and environment need nothing: glibc hands them over.
fn std_start() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: poll reads and writes the three pollfd entries it is given, nothing else.
    let polled = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } >= 0;
    for pfd in fds {
        // Without poll (it may fail for lack of memory), fcntl asks each descriptor.
        let closed = if polled {
            pfd.revents & libc::POLLNVAL != 0
        } else {
            // SAFETY: F_GETFD only reads the descriptor's flags.
            let flags = unsafe { libc::fcntl(pfd.fd, libc::F_GETFD) };
            flags == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
        };
        // SAFETY: open of a constant NUL-terminated path; the lowest free descriptor is the
        // closed one, so it is reopened. Failing that, std's start-up aborts too.
        if closed && unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) } == -1 {
            std::process::abort();
        }
    }
    // SAFETY: ignoring a signal installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// The hook's exit status.
fn status() -> u8 {
    let args: Vec<OsString> = std::env::args_os().collect();
    let Some(point) = point_from_args(&args) else {
        logging::init("hook");
        log::error!(
            "cannot tell the hook point from {:?}: install as <hooks>/<point>/{} or pass the point as the argument",
            args.first()
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_default(),
            crate::host::paths::HOOK_NAME
        );
        return 1;
    };
    run_to_exit(point)
}

/// Runs the hook at `point` and logs its error: the exit code VDSM expects. The hook binary
/// and `bridge-isolation hook POINT` (see `hand_over`) end here.
pub fn run_to_exit(point: Point) -> u8 {
    logging::init(point.name());
    match run(point) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("{}", one_line(&e.to_string()));
            point.failure_code()
        }
    }
}

/// Runs the hook at `point` with this process's environment.
pub fn run(point: Point) -> Result<()> {
    let payload = Payload::from_env(point.payload_var())?;
    let settings = Settings::from_env()?;
    if point.is_network() && !settings.privileged {
        return Err(Error::Helper(format!(
            "{} must run as root, as VDSM runs network hooks",
            point.name()
        )));
    }
    // Read once without the lock: it tells whether to hand the run over, and an unprivileged
    // VM point checks the kernel against it (root points read it again under the lock).
    let unlocked = Store::new(&settings.state_dir).read();
    if !enforce::daemon_backends_linked() && needs_daemon_backends(&settings, unlocked.as_ref().ok()) {
        return hand_over(point);
    }
    let done = match point {
        Point::BeforeNetworkSetup | Point::AfterNetworkSetup | Point::AfterNetworkSetupFail => {
            network_setup(point, &settings, &payload.bytes)
        }
        Point::BeforeVmStart | Point::BeforeNicHotplug | Point::BeforeUpdateDevice => {
            return rewrite(point, &settings, &payload);
        }
        Point::AfterVmStart | Point::AfterVmMigrateDestination | Point::AfterNicHotplug | Point::AfterUpdateDevice => {
            vnics_up(point, &settings, &payload.bytes, unlocked)
        }
        Point::AfterVmDestroy => vm_gone(&settings, &payload.bytes, unlocked),
    };
    // Every other point reconciles when root (its lock released by now): the metrics
    // follow, whether it succeeded or not (blocked ports show).
    metrics::write_textfile(&settings);
    done
}

/// True when this run may need a daemon backend ([`BackendKind::needs_daemon`]), which the
/// hook binary leaves out: the one asked for, the one the state file records (a move away
/// from it removes its rules), or, with `auto`, any when neither port isolation nor nftables
/// can run here.
fn needs_daemon_backends(settings: &Settings, state: Option<&State>) -> bool {
    let recorded = state.and_then(|s| s.backend);
    match settings.backend {
        _ if recorded.is_some_and(BackendKind::needs_daemon) => true,
        BackendChoice::Fixed(kind) => kind.needs_daemon(),
        BackendChoice::Auto => reconcile::choose_backend(settings).is_err(),
    }
}

/// Hands the run to `bridge-isolation hook POINT`, which carries the daemon backends: it
/// replaces this process (same user, environment, payload file and streams), so VDSM gets
/// its exit code. Root may name another binary with [`config::ENV_CLI`] (tests do).
fn hand_over(point: Point) -> Result<()> {
    let cli = config::dir_override(config::ENV_CLI).unwrap_or_else(|| paths::CLI.into());
    log::debug!("handing {} to {}", point.name(), cli.display());
    let err = std::process::Command::new(&cli).args(["hook", point.name()]).exec();
    Err(Error::helper(format!("running {}", cli.display()), err))
}

fn network_setup(point: Point, settings: &Settings, bytes: &[u8]) -> Result<()> {
    // Validate everything before touching anything.
    let request = setup::parse(bytes)?;
    let store = Store::new(&settings.state_dir);
    let mut locked = match store.lock() {
        Ok(locked) => locked,
        // A state directory that cannot be locked (read-only, full, failing) must not abort
        // a setup that changes no isolated network: there is nothing to record.
        Err(e) if point == Point::BeforeNetworkSetup && replaced(&store.read()?, &request).is_empty() => {
            log::warn!("{e}; this setup changes no isolated network: going on without recording");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let runner = Runner::parent();
    let state = &mut locked.state;
    let mut changes_policy = true;
    let mut said = Vec::new();
    match point {
        Point::BeforeNetworkSetup => {
            // What the request changes, to restore if this very setup fails; a request that
            // changes no policy (the usual case on a host not using the property) records
            // nothing and leaves the state file alone.
            let previous = replaced(state, &request);
            changes_policy = !previous.is_empty();
            // Said once the record is written: an aborted setup must not report a change.
            for (name, change) in &request.networks {
                said.extend(state.record(name, change));
            }
            state.setup = changes_policy.then(|| PendingSetup {
                request: request.fingerprint(),
                runner,
                previous,
            });
        }
        Point::AfterNetworkSetup => {
            state.setup = None;
            for (name, change) in &request.networks {
                record(state, name, change);
            }
        }
        _ => match state.setup.take() {
            Some(pending)
                if pending.request == request.fingerprint() && runner.is_some() && pending.runner == runner =>
            {
                for (name, previous) in pending.previous {
                    let change = previous.map_or(NetworkChange::Lift, NetworkChange::Isolate);
                    log::info!("network {name}: setup failed, restoring the previous policy");
                    record(state, &name, &change);
                }
            }
            Some(_) => log::warn!(
                "a pending setup record of another request or runner was dropped, not replayed: \
                 this failed setup changed nothing here"
            ),
            None => {}
        },
    }
    // A bridge isolated for the first time is written down (as released) before its ports
    // are touched: killed half-way, this run leaves a state whose next reconcile clears
    // them, never flags that no record explains.
    let isolated: Vec<String> = locked.state.networks.values().map(|p| p.bridge.clone()).collect();
    locked.record_intent(isolated.iter().map(String::as_str))?;
    if point != Point::BeforeNetworkSetup {
        return reconcile::record_then_run(locked, settings).map(drop);
    }
    // Write-ahead: the policy is on disk before the kernel follows it, so a setup that
    // cannot be recorded is aborted with nothing lifted. Only a record this setup needs
    // (what it changes) is worth aborting it for.
    let fallback = locked.recorded().clone();
    if let Err(e) = locked.save() {
        if changes_policy {
            return Err(e);
        }
        log::warn!("{e}; this setup changes no isolated network: going on without recording");
        locked.revert();
    }
    for line in said {
        log::info!("{line}");
    }
    // Failing here aborts the setup: the previous policy is written back, nothing blocked.
    if let Err(e) = reconcile::run_or_abort(&mut locked.state, settings) {
        locked.state = fallback;
        if let Err(w) = locked.save() {
            log::error!("writing back the previous policy: {w}");
        }
        return Err(e);
    }
    match locked.commit() {
        Err(e) if !changes_policy => {
            log::warn!("{e}; this setup changes no isolated network: going on");
            Ok(())
        }
        done => done,
    }
}

/// The isolated networks `request` changes, each with the policy it replaces (`None`: not
/// isolated before).
fn replaced(state: &State, request: &setup::SetupRequest) -> BTreeMap<String, Option<NetworkPolicy>> {
    request
        .networks
        .iter()
        .filter_map(|(name, change)| {
            let old = state.networks.get(name);
            let new = match change {
                NetworkChange::Isolate(policy) => Some(policy),
                NetworkChange::Lift => None,
            };
            (old != new).then(|| (name.clone(), old.cloned()))
        })
        .collect()
}

/// Records one network's change in `state`, logging what changed.
pub fn record(state: &mut State, network: &str, change: &NetworkChange) {
    if let Some(line) = state.record(network, change) {
        log::info!("{line}");
    }
}

/// `bridge_isolation_trusted` from a device hook's environment (absent: not trusted).
fn trusted_in_env() -> Result<bool> {
    match std::env::var(PROP_TRUSTED) {
        Ok(v) => policy::parse_flag(&v).map_err(|e| Error::Payload(format!("{PROP_TRUSTED}: {e}"))),
        Err(_) => Ok(false),
    }
}

/// Trust of each interface of `doc`: the domain metadata for a whole VM, the device
/// environment for one vNIC. VDSM hands device hooks the vNIC's complete custom properties
/// (hotplug, and updateDevice, which replaces them), so an absent property means untrusted.
fn trust_of(point: Point, doc: &Document) -> Result<impl Fn(&domain::Interface) -> bool + '_> {
    let env = trusted_in_env()?;
    Ok(move |iface: &domain::Interface| match point {
        Point::BeforeVmStart | Point::AfterVmStart | Point::AfterVmMigrateDestination => doc.is_trusted(iface),
        _ => env,
    })
}

fn rewrite(point: Point, settings: &Settings, payload: &Payload) -> Result<()> {
    let state = Store::new(&settings.state_dir).read()?;
    let doc = domain::parse(&payload.bytes)?;
    let trust = trust_of(point, &doc)?;
    refuse_bypasses(settings, &doc, &state)?;
    let bridge = |iface: &domain::Interface| placement::place(iface, &doc, &state).bridge().map(str::to_string);
    let wish = |iface: &domain::Interface| match (bridge(iface), trust(iface)) {
        (None, _) => PortWish::Keep,
        (Some(_), true) => PortWish::Open,
        (Some(bridge), _) if state.is_isolated(&bridge) => PortWish::Isolated,
        _ => PortWish::Keep,
    };
    // Fail closed: a vNIC on an isolated bridge is not started (plugged, updated) when no
    // backend can enforce isolation on this host.
    if let Some(iface) = doc.interfaces.iter().find(|i| wish(i) == PortWish::Isolated) {
        reconcile::check_enforceable(settings, &state).map_err(|e| {
            let context = format!(
                "{}vNIC {} on isolated bridge {}: refusing to run it unprotected",
                vm_label(&doc),
                iface.mac.map(|m| m.to_string()).unwrap_or_default(),
                bridge(iface).unwrap_or_default()
            );
            Error::config(context, e)
        })?;
    }
    let Some(new) = domain::rewrite(&payload.bytes, &doc, wish) else {
        return Ok(());
    };
    for iface in &doc.interfaces {
        let w = wish(iface);
        if w != PortWish::Keep && (w == PortWish::Isolated) != (iface.port_isolated == Some(true)) {
            let mac = iface.mac.map(|m| m.to_string()).unwrap_or_default();
            let bridge = bridge(iface).unwrap_or_default();
            let what = if w == PortWish::Isolated {
                "isolated port"
            } else {
                "trusted vNIC, open port"
            };
            log::info!("{}vNIC {mac} on {bridge}: {what}", vm_label(&doc));
        }
    }
    payload.replace(&new)
}

/// A vNIC on an isolated network that does not pass through its bridge (a macvtap, an
/// SR-IOV VF) cannot be isolated by it: refused under `on_failure = block`, one warning
/// under `warn`. Trust does not matter: a trusted vNIC around the bridge is still outside
/// what this host enforces.
fn refuse_bypasses(settings: &Settings, doc: &Document, state: &State) -> Result<()> {
    for iface in &doc.interfaces {
        let placement::Placement::Bypass { network, bridge, how } = placement::place(iface, doc, state) else {
            continue;
        };
        let reason = format!(
            "{}vNIC {} is {how}, which bypasses bridge {bridge} and cannot be isolated",
            vm_label(doc),
            iface
                .mac
                .map(|m| m.to_string())
                .unwrap_or_else(|| "without a MAC".into()),
        );
        if OnFailure::of(&settings.config_file) != OnFailure::Warn {
            let reason = format!("{reason}: refused (on_failure = block)");
            return Err(Error::Policy { network, reason });
        }
        log::warn!("network {network}: {reason}: not isolated (on_failure = warn)");
    }
    Ok(())
}

fn vm_label(doc: &Document) -> String {
    match vm_id(doc) {
        Some(id) if valid_vm_id(&id) => format!("VM {id} "),
        Some(id) => format!("VM {} ", crate::model::ifname::quoted(&id)),
        None => String::new(),
    }
}

fn valid_vm_id(id: &str) -> bool {
    crate::model::owner::check_vm_id(id).is_ok()
}

fn vm_id(doc: &Document) -> Option<String> {
    std::env::var("vmId")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| doc.vm_id.clone())
}

fn vnics_up(point: Point, settings: &Settings, bytes: &[u8], unlocked: Result<State>) -> Result<()> {
    let doc = domain::parse(bytes)?;
    let trust = trust_of(point, &doc)?;
    let mut bridges = BTreeSet::new();
    let mut vnics = Vec::new();
    for (iface, bridge) in doc.interfaces.iter().zip(bridges_of(settings, &doc)?) {
        if let (Some(bridge), Some(mac)) = (bridge, iface.mac) {
            bridges.insert(bridge);
            vnics.push(VnicFact {
                mac,
                trusted: Some(trust(iface)),
                tap: iface.tap.clone(),
            });
        }
    }
    let vm = required_vm_id(&doc)?;
    // The unprivileged steady path checks the kernel with this one dump; root dumps under
    // its lock.
    let live = if settings.privileged {
        None
    } else {
        Some(bridge::snapshot()?)
    };
    let ifindex = |tap: &str| match &live {
        Some(live) => live.port(tap).map(|p| p.ifindex),
        None => bridge::ifindex(tap),
    };
    record_owners(settings, &vm, &doc, &vnics, ifindex);
    enforce(
        settings,
        &Report {
            vm,
            event: Event::Up,
            vnics,
            whole: doc.vm_id.is_some(),
        },
        &bridges,
        unlocked,
        live,
    )
}

/// The bridge of each vNIC of `doc` that is on one. The state is read only for a
/// `type='network'` vNIC whose payload names no bridge (hotplug): live XML names it.
fn bridges_of(settings: &Settings, doc: &Document) -> Result<Vec<Option<String>>> {
    let unnamed = |i: &domain::Interface| matches!(i.attachment, domain::Attachment::Network { bridge: None, .. });
    let state = if doc.interfaces.iter().any(unnamed) {
        Store::new(&settings.state_dir).read()?
    } else {
        State::default()
    };
    Ok(doc
        .interfaces
        .iter()
        .map(|i| placement::place(i, doc, &state).bridge().map(str::to_string))
        .collect())
}

/// Records which VM and vNIC each tap of `vnics` belongs to, for `status` (display only:
/// [`crate::host::owners`]). A whole domain replaces the VM's record; a device payload adds
/// its vNIC to it; `ifindex` gives a tap's interface index. A record that cannot be written
/// is logged and the hook goes on.
fn record_owners(
    settings: &Settings,
    vm: &str,
    doc: &Document,
    vnics: &[VnicFact],
    ifindex: impl Fn(&str) -> Option<u32>,
) {
    if !valid_vm_id(vm) {
        return; // The report is refused, saying why.
    }
    let owners = OwnerDir::new(&settings.owners_dir);
    let mut record = match doc.vm_id {
        Some(_) => VmRecord::new(vm, doc.vm_name.as_deref()),
        None => owners
            .read(vm)
            .unwrap_or_else(|e| {
                log::warn!("{e}: rewriting it");
                None
            })
            .unwrap_or_else(|| VmRecord::new(vm, None)),
    };
    let before = record.clone();
    for v in vnics {
        // The index proves the record is about this tap, not a later one of the same name.
        if let Some((tap, ifindex)) = v.tap.as_ref().and_then(|t| Some((t, ifindex(t)?))) {
            record.put(VnicRecord {
                mac: v.mac,
                tap: tap.clone(),
                ifindex,
            });
        }
    }
    if record.vnics.is_empty() || (doc.vm_id.is_none() && record == before) {
        return;
    }
    if let Err(e) = owners.write(&record) {
        log::warn!("{e}: bridge-isolation status cannot name VM {vm} beside its ports");
    }
}

fn vm_gone(settings: &Settings, bytes: &[u8], unlocked: Result<State>) -> Result<()> {
    // The last XML is a courtesy: the VM id is what matters, and taps are already gone. An
    // unreadable payload still forgets the VM (by `vmId`), then is reported.
    let (doc, broken) = match domain::parse(bytes) {
        Ok(doc) => (doc, None),
        Err(e) => (Document::default(), Some(e)),
    };
    let vnics = doc
        .interfaces
        .iter()
        .filter_map(|i| {
            Some(VnicFact {
                mac: i.mac?,
                trusted: None,
                tap: None,
            })
        })
        .collect();
    let vm = match required_vm_id(&doc) {
        Ok(vm) => vm,
        Err(e) => return Err(broken.unwrap_or(e)),
    };
    if valid_vm_id(&vm) {
        if let Err(e) = OwnerDir::new(&settings.owners_dir).remove(&vm) {
            log::warn!("{e}: bridge-isolation status may name VM {vm} until a root reconcile prunes it");
        }
    }
    enforce(
        settings,
        &Report {
            vm,
            event: Event::Gone,
            vnics,
            whole: true,
        },
        &BTreeSet::new(),
        unlocked,
        None,
    )?;
    broken.map_or(Ok(()), Err)
}

fn required_vm_id(doc: &Document) -> Result<String> {
    vm_id(doc).ok_or_else(|| Error::Payload("no vmId in the environment or the XML".into()))
}

/// Records `report` and makes the kernel match. Root does it here; an unprivileged hook
/// checks the recorded state and the kernel (an rtnetlink dump) and asks the root helper
/// only when something must change, so the steady path spawns nothing. `unlocked` is the
/// state as this run read it without the lock; `live`, when given, a dump taken since.
fn enforce(
    settings: &Settings,
    report: &Report,
    bridges: &BTreeSet<String>,
    unlocked: Result<State>,
    live: Option<Snapshot>,
) -> Result<()> {
    report.validate()?;
    if settings.privileged {
        return reconcile::record_and_reconcile(Store::new(&settings.state_dir).lock()?, report, settings);
    }
    let state = unlocked?;
    // Only root can read the cross-host filter: a trusted vNIC (a router, rare) on a network
    // with peer ranges or uplink MACs always asks the helper, so it joins the filter's open
    // ports at once.
    let trusted_router = report.vnics.iter().any(|v| v.trusted == Some(true))
        && bridges.iter().any(|b| {
            state
                .network_of_bridge(b)
                .is_some_and(|(_, p)| !p.peer_macs.is_empty() || !p.uplink_macs.is_empty())
        });
    // Blocked ports (fail-closed) wait for a root reconcile to re-enable them; format-1
    // trust records wait for root to bind them.
    if state.blocked.is_empty() && state.legacy_trusted.is_empty() && !trusted_router {
        let live = match live {
            Some(live) => live,
            None => bridge::snapshot()?,
        };
        if report.recorded_in(&state, &live) {
            let plan = reconcile::plan_with(&state, &live, |b| bridges.contains(b));
            if plan.bridges.is_empty() {
                return Ok(());
            }
            let mut backend = reconcile::select_backend(settings)?;
            // A backend whose rules only root can read is checked by the root helper.
            if !backend.needs_root_to_observe() && reconcile::drift(&plan, &backend.observe(&plan)?).is_empty() {
                return Ok(());
            }
        }
    }
    helper::request(report)
}
