#!/bin/bash
# Runs the benchmark programs one after another (never in parallel: they would disturb each
# other's figures). As root; each program refuses politely otherwise.
#
#   sudo bench/run-all.sh            # all three, ~6 minutes on 2 cores
#   sudo bench/run-all.sh --bench dataplane
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ $# -eq 0 ]; then
    set -- --bench hook_latency --bench reconcile_scale --bench dataplane
fi
exec cargo bench "$@"
