//! The demo's lab: what `bridge-isolation demo` runs when built with the `demo` feature.

use std::path::{Path, PathBuf};

use bridge_isolation_lab::{self as lab, is_vm, Lab, LabSpec, Matrix, NetSpec, NicSpec, Payload};

use super::DemoArgs;
use crate::error::{Error, Result};
use crate::host::config;
use crate::host::paths;

const PREFIX: &str = "bidemo";
const VM_UUID: &str = "4d3a1f52-8a0b-4c8e-9a8f-2f7b3d1c0e03";

/// Runs the demo; fails if any step's matrix differs from what isolation promises.
pub(super) fn run(args: &DemoArgs) -> Result<()> {
    if !config::is_root() {
        return Err(Error::Config(
            "the demo builds network namespaces: run it as root".into(),
        ));
    }
    let missing = lab::missing_tools();
    if !missing.is_empty() {
        return Err(Error::Config(format!(
            "the demo needs {} (apt-get install iproute2 iputils-ping)",
            missing.join(", ")
        )));
    }
    let hooks = hooks_dir(args.hooks_dir.as_deref())?;
    let state = TempDir::create()?;
    lab::Lab::cleanup_stale(PREFIX).map_err(lab_error)?;
    let lab = Lab::create(&LabSpec::new(PREFIX).with_vms(3)).map_err(lab_error)?;
    let demo = Demo {
        lab: &lab,
        hooks: &hooks,
        state: &state.0,
    };
    let outcome = demo.steps();
    lab.destroy().map_err(lab_error)?;
    outcome
}

struct Demo<'a> {
    lab: &'a Lab,
    hooks: &'a Path,
    state: &'a Path,
}

impl Demo<'_> {
    fn steps(&self) -> Result<()> {
        let spec = self.lab.spec();
        let net = spec.bridge.as_str();
        println!("hooks: {}", self.hooks.display());
        println!(
            "lab: namespace {} with bridge {net} ({}), uplink {} to gateway {}, VMs {}",
            self.lab.host_ns(),
            spec.host_ipv4,
            spec.uplink,
            spec.gw_ipv4,
            spec.vms
                .iter()
                .map(|v| format!("{} ({}, {})", v.name, v.tap, v.ipv4))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let vm3 = spec.vms.iter().find(|v| v.name == "vm3").expect("three VMs");
        let tagged =
            |value: &str| lab::setup_networks_json(&[(net, NetSpec::on_nic(&spec.uplink).with_isolation(value))]);
        let mut ok = true;

        ok &= self.show("1. network untagged", &|_, _| true)?;

        self.network_setup(&tagged("true"))?;
        ok &= self.show(&format!("2. {net} tagged bridge_isolation=true"), &|a, b| {
            !(is_vm(a) && is_vm(b))
        })?;

        let router = NicSpec {
            trusted: true,
            ..NicSpec::of_vm(vm3, net)
        };
        self.hook(
            "after_vm_start",
            Payload::DomXml(lab::domain_xml("vm3", VM_UUID, &[router])),
            &[("vmId", VM_UUID)],
        )?;
        let open = |v: &str| v == "vm3";
        ok &= self.show(
            "3. vm3's vNIC profile has bridge_isolation_trusted=true (a router)",
            &|a, b| !(is_vm(a) && is_vm(b)) || open(a) || open(b),
        )?;
        self.status()?;

        self.network_setup(&tagged("false"))?;
        ok &= self.show(&format!("4. {net} set to bridge_isolation=false"), &|_, _| true)?;

        if ok {
            println!("\nevery step matched: VMs are cut off from each other on IPv4, IPv6, ARP and raw frames, and still reach the gateway and the host");
            Ok(())
        } else {
            Err(Error::Kernel(
                "a reachability matrix differed from the expected one (see above)".into(),
            ))
        }
    }

    fn show(&self, title: &str, should_pass: &dyn Fn(&str, &str) -> bool) -> Result<bool> {
        println!("\n== {title}");
        let matrix: Matrix = self.lab.matrix().map_err(lab_error)?;
        print!("{matrix}");
        match matrix.expect(should_pass) {
            Ok(()) => Ok(true),
            Err(report) => {
                println!("UNEXPECTED:\n{report}");
                Ok(false)
            }
        }
    }

    fn network_setup(&self, json: &str) -> Result<()> {
        for point in ["before_network_setup", "after_network_setup"] {
            self.hook(point, Payload::Json(json.to_string()), &[])?;
        }
        Ok(())
    }

    fn hook(&self, point: &str, payload: Payload, extra: &[(&str, &str)]) -> Result<()> {
        let mut env = vec![
            (config::ENV_STATE_DIR.to_string(), self.state.display().to_string()),
            (
                config::ENV_CONFIG.to_string(),
                self.state.join("none.conf").display().to_string(),
            ),
            (
                config::ENV_OWNERS_DIR.to_string(),
                self.state.join("owners").display().to_string(),
            ),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let run = lab::run_hook_point(self.lab.host_ns(), self.hooks, point, payload, &env).map_err(lab_error)?;
        for line in run.stderr.lines() {
            println!("   {line}");
        }
        let codes: Vec<String> = run.codes.iter().map(|(n, c)| format!("{point}/{n} exit {c}")).collect();
        println!("   ({})", codes.join(", "));
        if run.failed || run.codes.is_empty() {
            return Err(Error::Helper(format!("hook point {point} failed or ran nothing")));
        }
        Ok(())
    }

    fn status(&self) -> Result<()> {
        println!("\n$ bridge-isolation status");
        let exe = std::env::current_exe().map_err(|e| Error::io("locating the CLI", e))?;
        let out = std::process::Command::new(lab::IP)
            .args(["netns", "exec", self.lab.host_ns()])
            .arg(exe)
            .arg("status")
            .env(config::ENV_STATE_DIR, self.state)
            .env(config::ENV_CONFIG, self.state.join("none.conf"))
            .env(config::ENV_OWNERS_DIR, self.state.join("owners"))
            .output()
            .map_err(|e| Error::io("running status", e))?;
        print!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

/// The hook tree to run: the argument, the installed tree, or the source tree's hooks/.
fn hooks_dir(arg: Option<&Path>) -> Result<PathBuf> {
    let has_hook = |dir: &Path| dir.join("before_network_setup").join(paths::HOOK_NAME).is_file();
    if let Some(dir) = arg {
        return if has_hook(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(Error::Config(format!(
                "{} has no before_network_setup/{}",
                dir.display(),
                paths::HOOK_NAME
            )))
        };
    }
    let installed = PathBuf::from(paths::VDSM_HOOKS_DIR);
    if has_hook(&installed) {
        return Ok(installed);
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("locating the CLI", e))?;
    let source = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|top| top.join("hooks"));
    match source {
        Some(dir) if has_hook(&dir) => Ok(dir),
        _ => Err(Error::Config(
            "no hook tree found: install the package, run `cargo build --release` in the source tree, or pass --hooks-dir".into(),
        )),
    }
}

fn lab_error(e: anyhow::Error) -> Error {
    Error::Kernel(format!("lab: {e:#}"))
}

/// A private temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("bridge-isolation-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
