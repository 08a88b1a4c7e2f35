#!/bin/bash
# Builds the binary RPM and the SRPM of vdsm-hook-bridge-isolation into target/rpm/.
#
#   packaging/rpm/build-rpm.sh [--with-check]
#
# 1. Source0: a tarball of the source tree as it is now (tracked and untracked files that
#    git does not ignore; without git, the tree minus target/ and .git/), prefixed
#    vdsm-hook-bridge-isolation-VERSION/.
# 2. Source1: `cargo vendor` of Cargo.lock, so the spec builds offline (--frozen). It is
#    made from the local registry cache when that holds every crate (cargo --offline),
#    else from crates.io, and reused while Cargo.lock and Cargo.toml are unchanged.
# 3. rpmbuild -ba with _topdir target/rpm/build; the results are copied to target/rpm/.
#
# First it checks that the spec's `Provides: bundled(crate(...))` lines match Cargo.lock
# (packaging/rpm/bundled-provides.sh --update rewrites them).
#
# Debian (and any host whose Rust does not come from RPMs): rpmbuild runs with --nodeps.
# The spec's BuildRequires (cargo >= 1.84, rust >= 1.84, gcc, systemd-rpm-macros) name
# EL9 packages that Debian's empty RPM database cannot show as installed; --nodeps skips
# that check only, and this script checks the toolchain itself below. The spec defines
# fallbacks for the systemd macros Debian's rpm lacks. On an RPM-based host with those
# packages installed, rpmbuild checks the BuildRequires as usual.
#
# The spec runs the unit tests in %check by default (as koji/mock would); this script skips
# them (CI has run `cargo test` already) unless --with-check is given.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
name=vdsm-hook-bridge-isolation
spec=$here/$name.spec
out=$top/target/rpm
topdir=$out/build
check=(--without check)

case "${1:-}" in
    --with-check) check=(--with check) ;;
    "") ;;
    *) echo "usage: $0 [--with-check]" >&2; exit 2 ;;
esac

log() { echo "build-rpm: $*" >&2; }
die() { log "$*"; exit 1; }

version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$top/Cargo.toml" | head -n1)
spec_version=$(sed -n 's/^Version: *//p' "$spec")
[ "$version" = "$spec_version" ] ||
    die "Cargo.toml says version $version, the spec $spec_version: update the spec (and its %changelog)"

command -v rpmbuild >/dev/null || die "rpmbuild is missing (Debian: apt-get install rpm)"
command -v cargo >/dev/null || die "cargo is missing"
cargo_version=$(cargo --version | awk '{print $2}')
[ "$(printf '%s\n%s\n' 1.84.0 "$cargo_version" | sort -V | head -n1)" = 1.84.0 ] ||
    die "cargo $cargo_version is older than 1.84 (the spec's BuildRequires)"

"$here/bundled-provides.sh" --check ||
    die "the spec's Provides: bundled(crate(...)) lines are stale"

mkdir -p "$topdir"/{SOURCES,SPECS,BUILD,BUILDROOT,RPMS,SRPMS}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$top" log -1 --format=%ct 2>/dev/null || date +%s)}

# --- Source0: the tree ---------------------------------------------------------------
src_tar=$topdir/SOURCES/$name-$version.tar.gz
list=$(mktemp)
trap 'rm -f "$list"' EXIT
if git -C "$top" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Files only (tracked or new, not ignored); a tracked file deleted in the tree is skipped.
    git -C "$top" ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do
            if [ -e "$top/$f" ] || [ -L "$top/$f" ]; then printf '%s\0' "$f"; fi
        done > "$list"
else
    (cd "$top" && find . -path ./target -prune -o -path ./.git -prune -o \( -type f -o -type l \) -print0 |
        sed -z 's,^\./,,') > "$list"
fi
tar -C "$top" --null -T "$list" --sort=name --mtime="@$SOURCE_DATE_EPOCH" \
    --owner=0 --group=0 --numeric-owner --transform "s,^,$name-$version/,S" -czf "$src_tar"
log "Source0 $(basename "$src_tar"): $(tr -cd '\0' < "$list" | wc -c) files"

# --- Source1: the vendored crates ----------------------------------------------------
vendor_tar=$topdir/SOURCES/$name-$version-vendor.tar.gz
stamp=$vendor_tar.inputs
inputs=$(cat "$top/Cargo.lock" "$top/Cargo.toml" | sha256sum | cut -d' ' -f1)
if [ -s "$vendor_tar" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
    log "Source1 $(basename "$vendor_tar"): reused (Cargo.lock unchanged)"
else
    vtmp=$(mktemp -d)
    trap 'rm -f "$list"; rm -rf "$vtmp"' EXIT
    # Never let a caller's target dir or a stale config steer `cargo vendor`.
    if (cd "$top" && cargo --offline vendor --locked --quiet "$vtmp/vendor" >/dev/null 2>"$vtmp/err"); then
        log "Source1: vendored from the local registry cache"
    else
        log "Source1: the registry cache lacks crates ($(tail -n1 "$vtmp/err")); fetching from crates.io"
        rm -rf "$vtmp/vendor"
        (cd "$top" && cargo vendor --locked --quiet "$vtmp/vendor" >/dev/null)
    fi
    tar -C "$vtmp" --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
        -czf "$vendor_tar" vendor
    echo "$inputs" > "$stamp"
    log "Source1 $(basename "$vendor_tar"): $(ls "$vtmp/vendor" | wc -l) crates, $(du -h "$vendor_tar" | cut -f1)"
fi

# --- rpmbuild --------------------------------------------------------------------------
cp "$spec" "$topdir/SPECS/"
nodeps=()
if ! rpm -q --whatprovides cargo >/dev/null 2>&1; then
    nodeps=(--nodeps)
    log "cargo is not an installed RPM here: rpmbuild --nodeps (BuildRequires not checked; toolchain checked above)"
fi
defines=(--define "_topdir $topdir")
# Debian's brp-compress (rpm 4.18) uses bash's `read -r -d ''` under #!/bin/sh, which is dash
# there: it fails quietly and leaves man pages uncompressed. Run it with bash.
if grep -q 'read -r -d' "$(rpm --eval %_rpmconfigdir)/brp-compress" 2>/dev/null &&
   [ "$(readlink -f /bin/sh)" != "$(readlink -f /bin/bash)" ]; then
    defines+=(--define "__brp_compress /bin/bash %{_rpmconfigdir}/brp-compress %{?_prefix}")
fi
# A build system (koji, copr) sets the Packager; a local build says who built it.
if [ "$(rpm --eval '%{?packager}')" = "" ]; then
    defines+=(--define "packager ${RPM_PACKAGER:-vdsm-hook-bridge-isolation local build <root@localhost>}")
fi
rm -f "$out"/*.rpm
# The spec exports its own CARGO_TARGET_DIR and CARGO_HOME; drop the caller's settings.
env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR -u RUSTFLAGS \
    rpmbuild -ba "${nodeps[@]}" "${check[@]}" "${defines[@]}" "$topdir/SPECS/$name.spec"
cp "$topdir"/RPMS/*/"$name"-"$version"-*.rpm "$topdir"/SRPMS/"$name"-"$version"-*.src.rpm "$out/"
log "built:"
ls -l "$out"/*.rpm >&2
