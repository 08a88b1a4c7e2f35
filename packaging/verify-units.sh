#!/bin/bash
# Checks the systemd units of an installed tree with `systemd-analyze verify` (offline, with
# --root): every bridge-isolation-*.service with the drop-ins it ships (the sandbox), then
# again with the iptables backend's sandbox-iptables.conf linked in as docs/security.md
# says. Any message fails the check: systemd-analyze prints unknown keys and bad values but
# exits 0 on them. Prints each unit's exposure (systemd-analyze security --offline).
#
#   packaging/verify-units.sh DIR      (DIR: packaging/install.sh --destdir DIR, or an RPM
#                                       payload; scratch: the system's own unit files are
#                                       copied into it, without replacing any of DIR's)
#
# Used by packaging/rpm/check-rpm.sh (on the RPM's payload) and tests/sandbox.rs.
set -uo pipefail

dir=${1:?usage: $0 DIR}
units=/usr/lib/systemd/system
dropin_dir=/etc/systemd/system/bridge-isolation-.service.d
iptables_dropin=/usr/share/vdsm-hook-bridge-isolation/sandbox-iptables.conf

command -v systemd-analyze >/dev/null ||
    { echo "verify-units: systemd-analyze is missing (Debian/EL: package systemd)" >&2; exit 1; }
[ -f "$dir$iptables_dropin" ] || { echo "verify-units: $dir$iptables_dropin is missing" >&2; exit 1; }
shopt -s nullglob
ours=()
for u in "$dir$units"/bridge-isolation-*.service; do ours+=("${u##*/}"); done
[ ${#ours[@]} -gt 0 ] || { echo "verify-units: no bridge-isolation-*.service in $dir$units" >&2; exit 1; }

# What the units refer to (targets, dbus.service, nftables.service, ...) as this system has
# them: verify loads the dependencies of what it checks.
cp -a --no-clobber "$units/." "$dir$units/" ||
    { echo "verify-units: copying $units into $dir failed" >&2; exit 1; }

rm -f "$dir$dropin_dir/60-iptables.conf"  # a leftover of an interrupted run
failed=0
verify() { # verify WHAT: runs systemd-analyze verify on our units, fails on any message
    local out rc
    out=$(systemd-analyze verify --root="$dir" --man=no "${ours[@]}" 2>&1)
    rc=$?
    if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
        echo "FAILED: systemd-analyze verify, $1 (exit $rc):"
        sed 's/^/  /' <<< "$out"
        failed=1
    else
        echo "ok: systemd-analyze verify, $1: ${ours[*]}"
    fi
}
exposure() { # exposure WHAT: prints the overall exposure of each unit
    local u line
    for u in "${ours[@]}"; do
        line=$(systemd-analyze security --offline=yes --root="$dir" --no-pager "$u" 2>&1 | tail -n1)
        echo "exposure, $1: ${line#→ Overall exposure level for }"
    done
}

verify "as shipped"
exposure "as shipped"
mkdir -p "$dir$dropin_dir"
# A copy, not the symlink the docs make: offline, systemd-analyze resolves an absolute link
# outside --root and would skip the drop-in silently (tests/sandbox.rs runs the symlink).
cp "$dir$iptables_dropin" "$dir$dropin_dir/60-iptables.conf"
verify "with sandbox-iptables.conf"
exposure "with sandbox-iptables.conf"
rm -f "$dir$dropin_dir/60-iptables.conf"
exit "$failed"
