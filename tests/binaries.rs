//! What each binary carries: the hook binary leaves the D-Bus client (zbus and its async
//! crates) to the CLI and the root helper, which link the daemon backends
//! (docs/design.md §6.1). Read from the symbol tables of the binaries cargo built.

use std::process::Command;

/// binutils' nm, by absolute path.
const NM: &str = "/usr/bin/nm";

/// The symbols of `binary` that come from the D-Bus crates.
fn dbus_symbols(binary: &str) -> Vec<String> {
    let out = Command::new(NM)
        .args(["--demangle", binary])
        .output()
        .unwrap_or_else(|e| panic!("running {NM} (binutils): {e}"));
    assert!(
        out.status.success(),
        "{NM} {binary}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            ["zbus", "zvariant", "async_io", "async_executor"]
                .iter()
                .any(|c| l.contains(c))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn the_hook_binary_carries_no_dbus_client() {
    let hook = dbus_symbols(env!("CARGO_BIN_EXE_vdsm-hook-bridge-isolation"));
    assert!(
        hook.is_empty(),
        "the hook binary links {} D-Bus symbols, e.g. {:?}",
        hook.len(),
        hook.first()
    );
}

#[test]
fn the_cli_and_the_helper_carry_the_daemon_backends() {
    // The same probe finds the client where it belongs, so an empty answer above means
    // something.
    for binary in [
        env!("CARGO_BIN_EXE_bridge-isolation"),
        env!("CARGO_BIN_EXE_bridge-isolation-helper"),
    ] {
        assert!(dbus_symbols(binary).len() > 100, "{binary} has no D-Bus client");
    }
}
