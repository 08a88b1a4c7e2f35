//! The root helper that unprivileged VM hooks reach through `sudo -n`.
fn main() -> std::process::ExitCode {
    bridge_isolation::app::helper::main()
}
