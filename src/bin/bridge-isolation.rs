//! The administrator's CLI: status, verify, reconcile, demo.
fn main() -> std::process::ExitCode {
    bridge_isolation::app::cli::main()
}
