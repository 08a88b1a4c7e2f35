#!/bin/bash
# Runs the benchmark programs one after another (never in parallel: they would disturb each
# other's figures). As root; each program refuses politely otherwise.
#
#   sudo bench/run-all.sh            # all four, ~8 minutes on 2 cores
#   sudo bench/run-all.sh --bench dataplane
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ $# -eq 0 ]; then
    set -- --bench hook_latency --bench reconcile_scale --bench dataplane --bench watch_latency
fi
# The binaries as packaged: packaging/build.sh links the hook as a static PIE. Copied aside,
# since `cargo bench` first builds its own into target/release (the hook linked dynamically).
if [ -z "${BENCH_BINDIR:-}" ]; then
    packaging/build.sh
    rm -rf target/bench-bin
    mkdir -p target/bench-bin
    cp target/release/{vdsm-hook-bridge-isolation,bridge-isolation-helper,bridge-isolation} target/bench-bin/
    export BENCH_BINDIR=$PWD/target/bench-bin
fi
exec cargo bench "$@"
