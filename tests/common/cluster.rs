//! The two-host fixture: a netns fabric (two host namespaces with the network's bridge and
//! VMs, their uplinks joined by a switch namespace holding the gateway) driven through the
//! hooks as VDSM runs them, with one state directory per host and the backend as a
//! parameter; with the firewalld backend each host runs its own private firewalld.

#![allow(dead_code)] // not every test binary uses every helper

use std::process::{Command, Output};

use bridge_isolation_lab::{self as lab, domain_xml, Fabric, HookRun, NetSpec, NicSpec, Payload, VmSpec};
use serde_json::Value;
use tempfile::TempDir;

use super::backend::{Backend, Firewalld};
use super::{base_env, hooks_dir, port_isolated_in, vm_uuid, HOOK, NET};

/// The hosts of a [`Cluster`].
pub const HOSTS: [&str; 2] = ["h1", "h2"];

/// Two hosts on one fabric, each with its own state and drop-in directories (and firewalld).
pub struct Cluster {
    // Declared first: firewalld stops before its namespace goes.
    firewalld: Vec<Firewalld>,
    /// The namespaces: hosts `h1`, `h2`, the switch with the gateway, VMs.
    pub fabric: Fabric,
    dirs: Vec<(TempDir, TempDir)>,
    backend: Backend,
}

impl Cluster {
    /// A fabric of two hosts without VMs, nothing tagged, whose hooks use `backend`. With
    /// the firewalld backend both `bridge-nf-call-*` sysctls are 0 in each host and each
    /// runs a private firewalld (its nftables backend).
    pub fn with_backend(tag: &str, backend: Backend) -> Cluster {
        let fabric = Fabric::create(&lab::unique_prefix(tag), 2).expect("creating the fabric");
        let mut firewalld = Vec::new();
        let mut dirs = Vec::new();
        for host in HOSTS {
            let ns = fabric.host_ns(host).expect("a host namespace").to_string();
            if backend == Backend::Firewalld {
                use bridge_isolation::enforce::iptables::SYSCTLS;
                let args: Vec<String> = SYSCTLS.iter().map(|s| format!("net.bridge.{s}=0")).collect();
                let mut argv = vec![super::backend::SYSCTL, "-qw"];
                argv.extend(args.iter().map(String::as_str));
                super::backend::ok(fabric.exec_in(&ns, &argv).expect("running sysctl"));
                firewalld.push(Firewalld::start(&ns, "nftables"));
            }
            let state = tempfile::tempdir().expect("creating a state directory");
            let dropins = tempfile::tempdir().expect("creating a drop-in directory");
            dirs.push((state, dropins));
        }
        Cluster {
            firewalld,
            fabric,
            dirs,
            backend,
        }
    }

    fn idx(host: &str) -> usize {
        HOSTS
            .iter()
            .position(|h| *h == host)
            .unwrap_or_else(|| panic!("no host {host}"))
    }

    /// The private firewalld of `host` (panics without the firewalld backend).
    pub fn firewalld(&self, host: &str) -> &Firewalld {
        &self.firewalld[Cluster::idx(host)]
    }

    /// `host`'s state directory.
    pub fn state_dir(&self, host: &str) -> &std::path::Path {
        self.dirs[Cluster::idx(host)].0.path()
    }

    /// The environment every hook and CLI run on `host` gets.
    pub fn env(&self, host: &str) -> Vec<(String, String)> {
        let (state, dropins) = &self.dirs[Cluster::idx(host)];
        let mut env = base_env(state.path(), dropins.path(), self.backend);
        if let Some(fw) = self.firewalld.get(Cluster::idx(host)) {
            env.push(fw.env());
        }
        env
    }

    /// Runs hook point `point` on `host` with `payload` (`vmId` of VM `vm` when given),
    /// asserting only that our hook ran.
    pub fn run(&self, host: &str, point: &str, payload: Payload, vm: Option<u8>) -> HookRun {
        let mut env = self.env(host);
        env.extend(vm.map(|n| ("vmId".to_string(), vm_uuid(n))));
        let ns = self.fabric.host_ns(host).expect("a host namespace");
        let run = lab::run_hook_point(ns, hooks_dir(), point, payload, &env)
            .unwrap_or_else(|e| panic!("running {point} on {host}: {e:#}"));
        assert_eq!(run.codes.len(), 1, "{point} on {host}: ran {:?}", run.codes);
        assert_eq!(run.codes[0].0, HOOK, "{point} on {host}");
        run
    }

    /// Like [`Cluster::run`], asserting exit code 0.
    pub fn hook(&self, host: &str, point: &str, payload: Payload, vm: Option<u8>) -> HookRun {
        let run = self.run(host, point, payload, vm);
        assert_eq!(
            run.codes,
            [(HOOK.to_string(), 0)],
            "{point} on {host}; stderr:\n{}",
            run.stderr
        );
        run
    }

    /// `before_network_setup` then `after_network_setup` on `host` with `json`.
    pub fn network_setup(&self, host: &str, json: &str) {
        for point in ["before_network_setup", "after_network_setup"] {
            self.hook(host, point, Payload::Json(json.to_string()), None);
        }
    }

    /// [`Cluster::network_setup`] of `NET` as `net` says.
    pub fn setup(&self, host: &str, net: NetSpec) {
        self.network_setup(host, &lab::setup_networks_json(&[(NET, net)]));
    }

    /// Starts fabric VM `n` on `host` (see [`Cluster::start`]).
    pub fn start_vm(&mut self, host: &str, n: u8, trusted: bool) {
        let vm = self.fabric.numbered_vm(n);
        self.start(host, n, vm, trusted);
    }

    /// Starts `vm` (VM number `n`) on `host` as VDSM and libvirt do: `before_vm_start` on
    /// the engine's XML, the tap plugged and flagged as the rewritten XML says,
    /// `after_vm_start` on the live XML.
    pub fn start(&mut self, host: &str, n: u8, vm: VmSpec, trusted: bool) {
        let nic = NicSpec {
            trusted,
            ..NicSpec::new(NET, vm.guest_mac)
        };
        let engine = domain_xml(&vm.name, &vm_uuid(n), std::slice::from_ref(&nic));
        let rewritten = self.hook(host, "before_vm_start", Payload::DomXml(engine), Some(n));
        let flagged = port_isolated_in(&rewritten.payload_text());
        self.fabric.add_vm(host, &vm).expect("plugging the VM");
        if flagged {
            self.set_port_isolated(host, &vm.tap, true);
        }
        let live = NicSpec {
            tap: Some(vm.tap.clone()),
            native_isolated: flagged,
            ..nic
        };
        let xml = domain_xml(&vm.name, &vm_uuid(n), &[live]);
        self.hook(host, "after_vm_start", Payload::DomXml(xml), Some(n));
    }

    /// Starts fabric VM `n` on `host` as [`Cluster::start_unflagged`] does.
    pub fn start_vm_unflagged(&mut self, host: &str, n: u8, trusted: bool) {
        let vm = self.fabric.numbered_vm(n);
        self.start_unflagged(host, n, vm, trusted);
    }

    /// Starts `vm` as [`Cluster::start`] does, then clears the port flag libvirt set from
    /// the rewritten XML behind our back: the backend's rules alone must keep VMs apart.
    pub fn start_unflagged(&mut self, host: &str, n: u8, vm: VmSpec, trusted: bool) {
        let tap = vm.tap.clone();
        self.start(host, n, vm, trusted);
        self.set_port_isolated(host, &tap, false);
    }

    /// Sets or clears the isolation flag of port `tap` on `host`.
    pub fn set_port_isolated(&self, host: &str, tap: &str, on: bool) {
        let ns = self.fabric.host_ns(host).expect("a host namespace");
        let value = if on { "on" } else { "off" };
        let out = self
            .fabric
            .exec_in(ns, &[lab::BRIDGE, "link", "set", "dev", tap, "isolated", value])
            .expect("running bridge");
        assert!(out.status.success(), "setting the flag of {tap} on {host}");
    }

    /// The command `bridge-isolation ARGS` on `host` with its hooks' environment.
    pub fn cli_command(&self, host: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(lab::IP);
        cmd.args(["netns", "exec", self.fabric.host_ns(host).expect("a host namespace")])
            .arg(env!("CARGO_BIN_EXE_bridge-isolation"))
            .args(args)
            .envs(self.env(host));
        cmd
    }

    /// Runs `bridge-isolation ARGS` on `host`.
    pub fn cli(&self, host: &str, args: &[&str]) -> Output {
        self.cli_command(host, args).output().expect("running bridge-isolation")
    }

    /// `bridge-isolation status --json` on `host`, asserting success.
    pub fn status_json(&self, host: &str) -> Value {
        let out = self.cli(host, &["status", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
    }

    /// Runs `args` in `host`'s namespace.
    pub fn exec(&self, host: &str, args: &[&str]) -> Output {
        let ns = self.fabric.host_ns(host).expect("a host namespace");
        self.fabric.exec_in(ns, args).expect("running a program in a host")
    }

    /// `nft list table bridge bridge_isolation_peers` on `host` (text), or `None`.
    pub fn peers_table(&self, host: &str) -> Option<String> {
        let out = self.exec(
            host,
            &[
                lab::NFT,
                "list",
                "table",
                "bridge",
                bridge_isolation::enforce::cross_host::TABLE,
            ],
        );
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("No such file or directory"), "nft list failed: {err}");
            return None;
        }
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The cross-host table of `host` with handles (`nft -a list`), counters left out: they
    /// move with traffic, handles and everything else must not.
    pub fn peers_handles(&self, host: &str) -> String {
        let out = self.exec(
            host,
            &[
                lab::NFT,
                "-a",
                "list",
                "table",
                "bridge",
                bridge_isolation::enforce::cross_host::TABLE,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .map(|l| match l.find("counter packets") {
                Some(i) => format!("{}counter {}", &l[..i], &l[l.find(" drop").unwrap_or(i)..]),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The taps of `host`'s VMs whose isolation flag is set, sorted.
    pub fn flagged(&self, host: &str) -> Vec<String> {
        let mut taps: Vec<String> = self
            .fabric
            .vms()
            .iter()
            .filter(|(h, _)| h == host)
            .map(|(_, vm)| vm.tap.clone())
            .filter(|tap| self.fabric.port_isolated(host, tap).expect("reading a flag"))
            .collect();
        taps.sort();
        taps
    }

    /// The runtime firewalld direct rules of `host` naming chains `prefix*`, asserting that
    /// runtime and permanent agree and that chain `prefix{NET}` exists.
    pub fn direct_part(&self, host: &str, prefix: &str) -> Vec<String> {
        let [runtime, permanent, chains, pchains] = self.firewalld(host).direct();
        assert_eq!(runtime, permanent, "{host}: runtime and permanent differ");
        assert_eq!(chains, pchains);
        assert!(chains.contains(&format!("eb filter {prefix}{NET}")), "{chains:?}");
        runtime.into_iter().filter(|l| l.contains(prefix)).collect()
    }
}
