#!/bin/bash
# Installs vdsm-hook-bridge-isolation into DESTDIR (the RPM spec and the tests use this).
#
#   packaging/build.sh && packaging/install.sh --destdir DIR [--bindir target/release]
#   (build.sh: `cargo build --release` and the hook linked as a static PIE; a plain cargo
#   build works too, with a dynamically linked hook)
#
# Layout (all paths under DESTDIR):
#   /usr/libexec/vdsm-hook-bridge-isolation/{vdsm-hook-bridge-isolation,bridge-isolation-helper}
#   /usr/libexec/vdsm/hooks/<point>/50_bridge_isolation   (hard links to the hook binary, 0755)
#   /usr/sbin/bridge-isolation                              (admin CLI)
#   /etc/sudoers.d/50_vdsm_hook_bridge_isolation            (0440)
#   /etc/vdsm-hook-bridge-isolation/bridge-isolation.conf
#   /usr/lib/systemd/system/bridge-isolation-{reconcile,watch,nftables}.service
#   /usr/lib/systemd/system/bridge-isolation-.service.d/50-sandbox.conf (the units' sandbox)
#   /usr/share/vdsm-hook-bridge-isolation/sandbox-iptables.conf (the iptables backend's
#                                                           addition to it, linked by hand)
#   /usr/lib/systemd/system-preset/85-vdsm-hook-bridge-isolation.preset
#   /usr/lib/tmpfiles.d/vdsm-hook-bridge-isolation.conf     (/run/vdsm-hook-bridge-isolation/owners, vdsm's)
#   /usr/share/man/man8/bridge-isolation.8                  (generated from the CLI)
#   /usr/share/bash-completion/completions/bridge-isolation (generated from the CLI)
#   /var/lib/vdsm-hook-bridge-isolation/                    (state, 0755)
#
# Installing by hand (not from the RPM), create the runtime directory and enable the units:
#   systemd-tmpfiles --create vdsm-hook-bridge-isolation.conf
#   systemctl daemon-reload && systemctl preset bridge-isolation-reconcile.service \
#       bridge-isolation-watch.service bridge-isolation-nftables.service
# Over release 0.1, whose bridge-isolation-firewalld.service is folded into
# bridge-isolation-watch.service, this removes that unit (and its enablement link) from DIR;
# on a running host also stop it first: systemctl disable --now bridge-isolation-firewalld.service
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")
destdir=""
bindir="$top/target/release"

usage() { echo "usage: $0 --destdir DIR [--bindir DIR]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --destdir) destdir=${2:?}; shift 2 ;;
        --bindir) bindir=${2:?}; shift 2 ;;
        -h|--help) usage ;;
        *) usage ;;
    esac
done
[ -n "$destdir" ] || usage
for b in vdsm-hook-bridge-isolation bridge-isolation-helper bridge-isolation; do
    [ -x "$bindir/$b" ] || { echo "$0: $bindir/$b is missing: run packaging/build.sh first" >&2; exit 1; }
done

libexec=/usr/libexec/vdsm-hook-bridge-isolation
hooks=/usr/libexec/vdsm/hooks

install -d -m 0755 "$destdir$libexec" "$destdir/usr/sbin" "$destdir/etc/sudoers.d" \
    "$destdir/etc/vdsm-hook-bridge-isolation" "$destdir/usr/lib/systemd/system" \
    "$destdir/usr/lib/systemd/system-preset" "$destdir/usr/lib/tmpfiles.d" "$destdir/usr/share/man/man8" \
    "$destdir/usr/lib/systemd/system/bridge-isolation-.service.d" "$destdir/usr/share/vdsm-hook-bridge-isolation" \
    "$destdir/usr/share/bash-completion/completions" "$destdir/var/lib/vdsm-hook-bridge-isolation"
install -m 0755 "$bindir/vdsm-hook-bridge-isolation" "$destdir$libexec/vdsm-hook-bridge-isolation"
install -m 0755 "$bindir/bridge-isolation-helper" "$destdir$libexec/bridge-isolation-helper"
install -m 0755 "$bindir/bridge-isolation" "$destdir/usr/sbin/bridge-isolation"

# Every hook point the binary serves; the list mirrors hooks/ in the source tree.
# Never after_vm_dehibernate: VDSM passes a boolean there and any script breaks resume.
for dir in "$top"/hooks/*/; do
    point=$(basename "$dir")
    [ "$point" != after_vm_dehibernate ] || { echo "$0: refusing to install into after_vm_dehibernate" >&2; exit 1; }
    install -d -m 0755 "$destdir$hooks/$point"
    ln -f "$destdir$libexec/vdsm-hook-bridge-isolation" "$destdir$hooks/$point/50_bridge_isolation" 2>/dev/null ||
        install -m 0755 "$bindir/vdsm-hook-bridge-isolation" "$destdir$hooks/$point/50_bridge_isolation"
done

install -m 0440 "$here/sudoers" "$destdir/etc/sudoers.d/50_vdsm_hook_bridge_isolation"
install -m 0644 "$here/bridge-isolation.conf" "$destdir/etc/vdsm-hook-bridge-isolation/bridge-isolation.conf"
for unit in bridge-isolation-reconcile.service bridge-isolation-watch.service bridge-isolation-nftables.service; do
    install -m 0644 "$here/$unit" "$destdir/usr/lib/systemd/system/$unit"
done
# One sandbox for every bridge-isolation-*.service unit (a unit-name prefix drop-in), and
# the iptables backend's addition to it, which an administrator links in (docs/security.md).
install -m 0644 "$here/sandbox.conf" "$destdir/usr/lib/systemd/system/bridge-isolation-.service.d/50-sandbox.conf"
install -m 0644 "$here/sandbox-iptables.conf" "$destdir/usr/share/vdsm-hook-bridge-isolation/sandbox-iptables.conf"
# Release 0.1's firewalld listener must not run beside the watcher that replaces it.
old_unit=bridge-isolation-firewalld.service
for f in "$destdir/usr/lib/systemd/system/$old_unit" "$destdir/etc/systemd/system/multi-user.target.wants/$old_unit"; do
    if [ -e "$f" ] || [ -L "$f" ]; then
        rm -f "$f"
        echo "$0: removed $f (folded into bridge-isolation-watch.service; on a running host: systemctl disable --now $old_unit)" >&2
    fi
done
install -m 0644 "$here/85-vdsm-hook-bridge-isolation.preset" \
    "$destdir/usr/lib/systemd/system-preset/85-vdsm-hook-bridge-isolation.preset"
install -m 0644 "$here/tmpfiles.conf" "$destdir/usr/lib/tmpfiles.d/vdsm-hook-bridge-isolation.conf"

# The man page and the completion come from the CLI definition (no root, no config read).
generate() { # generate FILE ARGS...: writes the CLI's output to FILE, 0644, or fails
    local file=$1; shift
    "$bindir/bridge-isolation" generate "$@" > "$file.tmp" && [ -s "$file.tmp" ] ||
        { rm -f "$file.tmp"; echo "$0: bridge-isolation generate $* failed" >&2; exit 1; }
    chmod 0644 "$file.tmp" && mv -f "$file.tmp" "$file"
}
generate "$destdir/usr/share/man/man8/bridge-isolation.8" man
generate "$destdir/usr/share/bash-completion/completions/bridge-isolation" completion bash
