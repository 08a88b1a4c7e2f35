#!/bin/bash
# The spec's `Provides: bundled(crate(NAME)) = VERSION` lines: one per crate statically
# linked into the packaged binaries (Cargo.lock's normal dependencies of this package, for the host
# target, without build scripts' and proc macros' own dependencies), as the packaging
# guidelines for Rust ask, so that `rpm -q --whatprovides 'bundled(crate(quick-xml))'` finds
# this package when a crate needs a fix.
#
#   packaging/rpm/bundled-provides.sh            # prints the lines
#   packaging/rpm/bundled-provides.sh --check    # exit 1 when the spec's block differs
#   packaging/rpm/bundled-provides.sh --update   # rewrites the spec's block
#
# The block sits between the spec's "# BEGIN bundled crates" and "# END bundled crates"
# lines. build-rpm.sh runs --check: a dependency change without --update stops the build.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
name=vdsm-hook-bridge-isolation
spec=$here/$name.spec

lines() {
    # "{p}" prints "NAME vVERSION" (and the path for a path dependency: this package only).
    # SemVer build metadata ("+...") is not part of an RPM version's comparison: dropped.
    # From the registry cache when it holds every crate, else from crates.io.
    # Without default features: the RPM builds without the `demo` feature (and its lab).
    local args=(tree --locked -p "$name" --no-default-features --edges no-build,no-dev,no-proc-macro --prefix none --format '{p}')
    (cd "$top" && { cargo "${args[@]}" --offline 2>/dev/null || cargo "${args[@]}"; }) |
        awk -v self="$name" '$1 != self { v = $2; sub(/^v/, "", v); sub(/\+.*/, "", v);
            printf "Provides:       bundled(crate(%s)) = %s\n", $1, v }' |
        sort -u
}

block() { sed -n '/^# BEGIN bundled crates/,/^# END bundled crates/{/^#/d;p}' "$spec"; }

case "${1:-}" in
    "") lines ;;
    --check)
        want=$(lines)
        [ -n "$want" ] || { echo "bundled-provides: cargo tree listed no crate" >&2; exit 1; }
        if [ "$want" != "$(block)" ]; then
            echo "bundled-provides: the spec's bundled crates differ from Cargo.lock:" >&2
            diff <(block) <(echo "$want") >&2 || true
            echo "run packaging/rpm/bundled-provides.sh --update" >&2
            exit 1
        fi ;;
    --update)
        want=$(lines)
        [ -n "$want" ] || { echo "bundled-provides: cargo tree listed no crate" >&2; exit 1; }
        grep -q '^# BEGIN bundled crates' "$spec" && grep -q '^# END bundled crates' "$spec" ||
            { echo "bundled-provides: no BEGIN/END bundled crates lines in $spec" >&2; exit 1; }
        tmp=$(mktemp)
        awk -v lines="$want" '
            /^# BEGIN bundled crates/ { print; print lines; skip = 1; next }
            /^# END bundled crates/ { skip = 0 }
            !skip' "$spec" > "$tmp"
        cat "$tmp" > "$spec"
        rm -f "$tmp"
        echo "bundled-provides: $(wc -l <<< "$want") crates written to $(basename "$spec")" >&2 ;;
    *) echo "usage: $0 [--check|--update]" >&2; exit 2 ;;
esac
