#!/bin/bash
# Checks the RPMs build-rpm.sh left in target/rpm/: file list and modes, hard links, %config,
# %license/%doc, Requires, the bundled crates' Provides, BuildRequires, scriptlets, licenses,
# an install and erase into a scratch root, and rpmlint (no errors; warnings filtered only
# with a reason in the rpmlintrc).
#
#   packaging/rpm/check-rpm.sh            (after packaging/rpm/build-rpm.sh)
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
name=vdsm-hook-bridge-isolation
out=$top/target/rpm
hooks=/usr/libexec/vdsm/hooks
libexec=/usr/libexec/$name

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failed=$((failed + 1)); echo "FAILED: $*"; }
check() { # check DESCRIPTION COMMAND...: runs the command, counts the result
    local what=$1; shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}

shopt -s nullglob
rpms=("$out/$name"-[0-9]*.rpm)
bin=() src=()
for r in "${rpms[@]}"; do
    case "$r" in *.src.rpm) src+=("$r") ;; *) bin+=("$r") ;; esac
done
[ ${#bin[@]} -eq 1 ] && [ ${#src[@]} -eq 1 ] || {
    echo "check-rpm: expected one binary RPM and one SRPM in $out (run packaging/rpm/build-rpm.sh): ${rpms[*]:-none}" >&2
    exit 1
}
rpmfile=${bin[0]} srpm=${src[0]}
echo "check-rpm: $(basename "$rpmfile") and $(basename "$srpm")"

# One line per file: flags mode user group inode path.
files=$(rpm -qp --qf '[%{FILEFLAGS:fflags}|%{FILEMODES:perms}|%{FILEUSERNAME}|%{FILEGROUPNAME}|%{FILEINODES}|%{FILENAMES}\n]' "$rpmfile")
entry() { awk -F'|' -v p="$1" '$6 == p' <<< "$files"; }
has() { # has PATH MODE [FLAGS]: the file is there, root-owned, with that mode (and flags)
    local e; e=$(entry "$1")
    [ -n "$e" ] || { echo "  $1 is not in the package" >&2; return 1; }
    IFS='|' read -r flags mode user group _ _ <<< "$e"
    [ "$mode" = "$2" ] || { echo "  $1: mode $mode, expected $2" >&2; return 1; }
    [ "$user:$group" = root:root ] || { echo "  $1: owned by $user:$group" >&2; return 1; }
    [ -z "${3:-}" ] || [ "$flags" = "$3" ] || { echo "  $1: flags '$flags', expected '$3'" >&2; return 1; }
}

# --- hooks -------------------------------------------------------------------------------
expected=$(cd "$top/hooks" && for d in */; do echo "$hooks/${d%/}/50_bridge_isolation"; done | sort)
packaged=$(awk -F'|' -v h="$hooks/" 'index($6, h) == 1 {print $6}' <<< "$files" | sort)
check "hook points are exactly those of hooks/ ($(wc -l <<< "$expected"))" [ "$expected" = "$packaged" ]
check "nothing in after_vm_dehibernate" bash -c "! grep -q after_vm_dehibernate <<< \"\$1\"" _ "$files"
bad=0
for f in $expected; do has "$f" -rwxr-xr-x "" || bad=1; done
check "every hook is 0755 root:root, not %config" [ $bad -eq 0 ]
hook_inode=$(entry "$libexec/vdsm-hook-bridge-isolation" | cut -d'|' -f5)
inodes=$(for f in $expected; do entry "$f" | cut -d'|' -f5; done | sort -u)
check "every hook is a hard link of $libexec/vdsm-hook-bridge-isolation" [ "$inodes" = "$hook_inode" ]

# --- the other files ---------------------------------------------------------------------
check "CLI /usr/sbin/bridge-isolation 0755" has /usr/sbin/bridge-isolation -rwxr-xr-x
check "root helper 0755" has "$libexec/bridge-isolation-helper" -rwxr-xr-x
check "hook binary 0755" has "$libexec/vdsm-hook-bridge-isolation" -rwxr-xr-x
check "sudoers drop-in 0440, %config(noreplace)" has /etc/sudoers.d/50_vdsm_hook_bridge_isolation -r--r----- cn
check "config file %config(noreplace)" has /etc/$name/bridge-isolation.conf -rw-r--r-- cn
for unit in reconcile watch nftables; do
    check "unit bridge-isolation-$unit.service" has /usr/lib/systemd/system/bridge-isolation-$unit.service -rw-r--r--
done
check "the units' sandbox, a drop-in for every bridge-isolation-*.service" \
    has "/usr/lib/systemd/system/bridge-isolation-.service.d/50-sandbox.conf" -rw-r--r--
check "the iptables backend's addition to the sandbox (linked in by hand)" \
    has "/usr/share/$name/sandbox-iptables.conf" -rw-r--r--
check "no bridge-isolation-firewalld.service (release 0.1's, folded into the watcher)" \
    [ -z "$(entry /usr/lib/systemd/system/bridge-isolation-firewalld.service)" ]
check "systemd preset" has /usr/lib/systemd/system-preset/85-$name.preset -rw-r--r--
check "tmpfiles.d entry" has /usr/lib/tmpfiles.d/$name.conf -rw-r--r--
check "owner records' directory, vdsm's (tmpfiles.d)" grep -qx 'd /run/vdsm-hook-bridge-isolation/owners 0755 vdsm kvm -' "$top/packaging/tmpfiles.conf"
man=$(awk -F'|' '$6 ~ "^/usr/share/man/man8/bridge-isolation\\.8" {print $6}' <<< "$files")
check "man page bridge-isolation(8) ($man)" has "$man" -rw-r--r-- d
check "bash completion" has /usr/share/bash-completion/completions/bridge-isolation -rw-r--r--
license=$(awk -F'|' '$6 ~ "^/usr/share/licenses/.*/LICENSE$" {print $6}' <<< "$files")
deps=$(awk -F'|' '$6 ~ "^/usr/share/licenses/.*/LICENSE.dependencies$" {print $6}' <<< "$files")
check "%license LICENSE" has "$license" -rw-r--r-- l
check "%license LICENSE.dependencies" has "$deps" -rw-r--r-- l
readme=$(awk -F'|' '$6 ~ "^/usr/share/doc/.*/README.md$" {print $6}' <<< "$files")
check "%doc README.md" has "$readme" -rw-r--r-- d
# The administrator's documents the README links to and the man page names: every docs/*.md
# of the tree and the alert rules (docs/alerts.yml), and nothing else, in
# /usr/share/doc/NAME/docs/.
docdir=${readme%/README.md}/docs
expected_docs=$(cd "$top/docs" && for f in *.md *.yml; do echo "$docdir/$f"; done | sort)
packaged_docs=$(awk -F'|' -v d="$docdir/" 'index($6, d) == 1 {print $6}' <<< "$files" | sort)
docs_match() { [ -n "$readme" ] && [ "$expected_docs" = "$packaged_docs" ]; }
check "%doc docs: exactly the $(wc -l <<< "$expected_docs") files of docs/ in $docdir" docs_match
bad=0
for f in $expected_docs; do has "$f" -rw-r--r-- d || bad=1; done
check "every packaged doc is 0644 root:root, %doc" [ $bad -eq 0 ]
check "state directory 0755" has /var/lib/$name drwxr-xr-x

# --- contents ----------------------------------------------------------------------------
payload=$(mktemp -d)
trap 'rm -rf "$payload"' EXIT
(cd "$payload" && rpm2cpio "$rpmfile" | cpio -idm --quiet)
check "man page renders as bridge-isolation(8)" bash -c \
    "zcat -f '$payload$man' | grep -q '^\.TH bridge-isolation 8 ' && zcat -f '$payload$man' | grep -q 'release\\\\-all'"
# The hook is a static PIE (packaging/build.sh): no program interpreter, no shared library,
# type DYN (position-independent, so ASLR applies).
static_pie() {
    local f=$payload$libexec/vdsm-hook-bridge-isolation
    readelf -hW "$f" | grep -q 'Type: *DYN' &&
        ! readelf -lW "$f" | grep -q 'INTERP' &&
        ! readelf -dW "$f" | grep -q '(NEEDED)'
}
check "the packaged hook is a static PIE (ET_DYN, no PT_INTERP, no NEEDED)" static_pie
# The hook carries no D-Bus client (docs/design.md §6.1); the CLI does, so the probe (the
# source paths zbus's panics name; the packaged binaries have no symbol table) sees it there.
dbus_code() {
    grep -ac 'zbus/src/' "$1" || true
}
no_dbus_in_hook() {
    [ "$(dbus_code "$payload$libexec/vdsm-hook-bridge-isolation")" -eq 0 ] &&
        [ "$(dbus_code "$payload/usr/sbin/bridge-isolation")" -gt 0 ]
}
check "the packaged hook carries no D-Bus client (no zbus code; the CLI has it)" no_dbus_in_hook
# The packaged CLI carries no test lab: its demo only says where to run it.
no_lab() {
    local out
    out=$("$payload/usr/sbin/bridge-isolation" demo 2>&1) && return 1
    grep -q 'this build has no demo' <<< "$out" && ! grep -aq 'bidemo' "$payload/usr/sbin/bridge-isolation"
}
check "no test lab in the packaged CLI (built without the demo feature)" no_lab
check "man page names the packaged README.md and docs/" bash -c \
    "zcat -f '$payload$man' | grep -qF '${readme//-/\\-}' && zcat -f '$payload$man' | grep -qF '${docdir//-/\\-}/'"
# The units with their sandbox, as shipped and with the iptables backend's drop-in:
# systemd-analyze verify (any message fails), offline on the payload.
units_ok() { "$top/packaging/verify-units.sh" "$payload" | sed 's/^/  /'; }
check "systemd-analyze verify: the units and their sandbox drop-ins are valid" units_ok
check "every unit has an [Install] section the preset enables" bash -c \
    "for u in '$payload'/usr/lib/systemd/system/bridge-isolation-*.service; do grep -q '^WantedBy=' \"\$u\" && grep -qx \"enable \${u##*/}\" '$payload/usr/lib/systemd/system-preset/85-$name.preset' || exit 1; done"
check "GPL-2.0 text in LICENSE" grep -q "GNU GENERAL PUBLIC LICENSE" "$payload$license"
tag=$(rpm -qp --qf '%{LICENSE}' "$rpmfile")
missing=$(sed 's/: .*//' "$payload$deps" | tr -c 'A-Za-z0-9.+-' '\n' | grep -vxE 'AND|OR|WITH|' | sort -u |
    while read -r id; do grep -qw -- "$id" <<< "$tag" || echo "$id"; done)
check "License tag covers every crate's license (${missing:-all found})" [ -z "$missing" ]

# --- dependencies and scriptlets ---------------------------------------------------------
requires=$(rpm -qp --requires "$rpmfile")
glibc=$(grep -o 'GLIBC_[0-9.]*' <<< "$requires" | sort -V | tail -n1)
echo "note: this binary RPM needs ${glibc:-no versioned glibc}; EL9 has GLIBC_2.34 (build the hosts' package from the SRPM on EL9)"

check "Requires: vdsm" grep -qx 'vdsm' <<< "$requires"
check "Requires: sudo" grep -qx 'sudo' <<< "$requires"
provided=$(rpm -qp --provides "$rpmfile" | grep '^bundled(crate(' | sort)
expected_bundled=$("$here/bundled-provides.sh" | sed 's/^Provides: *//' | sort)
same_bundled() { [ -n "$provided" ] && [ "$provided" = "$expected_bundled" ]; }
check "Provides: bundled(crate(...)) for each of the $(wc -l <<< "$expected_bundled") linked crates" same_bundled
buildrequires=$(rpm -qp --requires "$srpm")
for br in 'cargo >= 1.84' 'rust >= 1.84' 'systemd-rpm-macros' 'glibc-static'; do
    check "BuildRequires: $br" grep -qx "$br" <<< "$buildrequires"
done
srpm_files=$(rpm -qlp "$srpm")
check "SRPM holds the spec, Source0 and Source1 (vendored crates)" bash -c \
    "grep -qx '$name.spec' <<< \"\$1\" && grep -qE '^$name-[0-9.]+\\.tar\\.gz\$' <<< \"\$1\" && grep -qE '^$name-[0-9.]+-vendor\\.tar\\.gz\$' <<< \"\$1\"" _ "$srpm_files"
mkdir -p "$payload/srpm" && (cd "$payload/srpm" && rpm2cpio "$srpm" | cpio -idm --quiet)
links=$(tar -tvzf "$payload"/srpm/"$name"-[0-9]*[0-9].tar.gz | awk '/50_bridge_isolation ->/ {print $NF}' | sort -u)
check "Source0 keeps the hooks/ symlinks as they are in the tree" \
    [ "$links" = "../../target/release/vdsm-hook-bridge-isolation" ]
preun=$(rpm -qp --qf '%{PREUN}' "$rpmfile")
check "%preun runs 'bridge-isolation release-all' on erase only" bash -c \
    "grep -q 'if \[ \$1 -eq 0 \]; then' <<< \"\$1\" && grep -q '/usr/sbin/bridge-isolation release-all' <<< \"\$1\"" _ "$preun"
check "%preun stops and disables the units first" bash -c \
    "[ \$(grep -n 'disable --now' <<< \"\$1\" | cut -d: -f1) -lt \$(grep -n 'release-all' <<< \"\$1\" | head -n1 | cut -d: -f1) ]" _ "$preun"
postin=$(rpm -qp --qf '%{POSTIN}' "$rpmfile")
check "%post presets the units" bash -c "grep -q 'preset.*bridge-isolation-watch.service' <<< \"\$1\"" _ "$postin"
check "%post stops and disables release 0.1's bridge-isolation-firewalld.service on upgrade" bash -c \
    "grep -q 'if \[ \$1 -ge 2 \]' <<< \"\$1\" && grep -q 'disable --now bridge-isolation-firewalld.service' <<< \"\$1\"" _ "$postin"
check "%post starts the watcher when enabled" bash -c "grep -q 'systemctl start bridge-isolation-watch.service' <<< \"\$1\"" _ "$postin"
check "%post reconciles (adopts VDSM's running config at install and upgrade)" bash -c "rpm -qp --qf '%{POSTIN}' '$rpmfile' | grep -q '/usr/sbin/bridge-isolation reconcile'"
check "%postun restarts the units on upgrade" bash -c "rpm -qp --qf '%{POSTUN}' '$rpmfile' | grep -Eq 'try-restart|mark-restart-system-units'"

# --- install and erase into a scratch root (no scripts: there is no system in it) --------
root=$payload/root
mkdir -p "$root"
db=(--root "$root" --dbpath /rpmdb)
if rpm "${db[@]}" --initdb && rpm "${db[@]}" -i --nodeps --noscripts --nosignature "$rpmfile" 2>"$payload/err"; then
    linked=$(for f in $expected "$libexec/vdsm-hook-bridge-isolation"; do stat -c %i "$root$f"; done | sort -u | wc -l)
    links=$(stat -c %h "$root$libexec/vdsm-hook-bridge-isolation")
    check "installed hooks share one inode ($links links)" [ "$linked" -eq 1 ] && [ "$links" -eq $(($(wc -l <<< "$expected") + 1)) ]
    check "installed sudoers is 0440" [ "$(stat -c %a "$root/etc/sudoers.d/50_vdsm_hook_bridge_isolation")" = 440 ]
    rpm "${db[@]}" -e --nodeps --noscripts "$name" 2>>"$payload/err"
    left=$(cd "$root" && find . -path ./rpmdb -prune -o \( -type f -o -type l \) -print | head -n5)
    check "erase leaves no file behind${left:+ ($left)}" [ -z "$left" ]
else
    fail "install into a scratch root: $(cat "$payload/err")"
fi

# --- debug info: kept on EL, stripped where rpmbuild has no find-debuginfo (this build) ------
check "EL9 build keeps full debug info for its -debuginfo package" bash -c \
    "rpmspec -P --define 'rhel 9' '$here/$name.spec' | grep -qx 'export CARGO_PROFILE_RELEASE_STRIP=none'"
check "Debian-hosted build strips (no find-debuginfo)" bash -c \
    "rpmspec -P '$here/$name.spec' | grep -qx 'export CARGO_PROFILE_RELEASE_STRIP=symbols'"

# --- rpmlint -------------------------------------------------------------------------------
if command -v rpmlint >/dev/null; then
    lint=$(rpmlint -r "$here/$name.rpmlintrc" "$rpmfile" "$srpm" "$here/$name.spec" 2>&1)
    summary=$(grep -E '[0-9]+ errors?, [0-9]+ warnings?' <<< "$lint" | tail -n1)
    errors=$(sed -nE 's/.* ([0-9]+) errors?,.*/\1/p' <<< "$summary")
    grep -E ': (E|W): ' <<< "$lint" | sed 's/^/  rpmlint: /'
    check "rpmlint: no errors (${summary:-no summary})" [ "${errors:-1}" -eq 0 ]
else
    fail "rpmlint is not installed (apt-get install rpmlint)"
fi

echo "check-rpm: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
