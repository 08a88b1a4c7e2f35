#!/bin/bash
# The release build of the installed binaries, the one entry point the RPM spec, CI and the
# benchmarks use:
#
#   packaging/build.sh [cargo build args...]     # e.g. --no-default-features, --frozen
#
# `cargo build --release ARGS`, then the hook (vdsm-hook-bridge-isolation) linked again as a
# static PIE (-C target-feature=+crt-static; still position-independent, so ASLR stays):
# VDSM runs it at every VM start, and without ld.so loading libc and libgcc_s it starts in
# about two thirds of the time (docs/benchmarks.md). Only that final link changes: the other
# binaries, the library and proc-macros are built as usual. Static glibc needs libc.a
# (EL9: glibc-static, in CRB; Debian: libc6-dev).
#
# A later plain `cargo build --release` links the hook dynamically again (cargo tracks the
# extra rustc flags): build the installed binaries with this script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release "$@"
cargo rustc --release "$@" --bin vdsm-hook-bridge-isolation -- -C target-feature=+crt-static

# Static and PIE: no program interpreter, no shared library needed, type DYN.
hook=${CARGO_TARGET_DIR:-target}/release/vdsm-hook-bridge-isolation
if command -v readelf >/dev/null; then
    if readelf -lW "$hook" | grep -q 'Requesting program interpreter' ||
       readelf -dW "$hook" | grep -q '(NEEDED)' ||
       ! readelf -hW "$hook" | grep -q 'Type: *DYN'; then
        echo "build.sh: $hook is not a static PIE" >&2
        exit 1
    fi
fi
