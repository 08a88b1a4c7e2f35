//! The VDSM hook, installed as `50_bridge_isolation` in every hook-point directory.
fn main() -> std::process::ExitCode {
    bridge_isolation::app::hook::main()
}
