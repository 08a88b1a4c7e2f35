#!/bin/bash
# Checks ansible/ (issue 16): the filter and playbook tests (pytest), `ansible-playbook
# --syntax-check` of every playbook, and ansible-lint (production profile, ansible/.ansible-lint).
# Needs Debian's python3 and python3-venv; the packages of ci-requirements.txt go into a venv
# under target/, made again only when that file changed. No oVirt engine needed; the test of
# hosts-install.yml's verify needs root (a network namespace) and target/debug/bridge-isolation.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
start=$SECONDS

python=${BRIDGE_ISOLATION_PYTHON:-/usr/bin/python3}
venv=../target/ansible-venv
# ovirt.ovirt 3.2.1, as the `ansible` package of PyPI bundles it: only that collection is taken
# out of the wheel (installing the whole package writes 470 MB of collections, minutes here).
bundle=ansible==12.3.0
inputs="$(cat ci-requirements.txt) $bundle"
if [ "$inputs" != "$(cat "$venv/inputs" 2>/dev/null)" ]; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --no-compile -r ci-requirements.txt
    "$venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$venv/wheel" "$bundle"
    "$venv/bin/python" -c '
import glob, sys, zipfile
with zipfile.ZipFile(glob.glob(sys.argv[1] + "/ansible-*.whl")[0]) as wheel:
    wheel.extractall(sys.argv[2], [n for n in wheel.namelist()
                                   if n.startswith("ansible_collections/ovirt/ovirt/")])
' "$venv/wheel" "$venv/collections"
    rm -rf "$venv/wheel"
    printf '%s' "$inputs" > "$venv/inputs"
fi
export ANSIBLE_COLLECTIONS_PATH="$PWD/$venv/collections"
export PATH="$PWD/$venv/bin:$PATH" NO_COLOR=1 ANSIBLE_NOCOLOR=1 PY_COLORS=0
# cryptography 46+ warns about DSA on every ansible start-up: noise, not ours.
export PYTHONWARNINGS="ignore:DSA is deprecated"
echo "ansible/ci.sh: venv ready in $((SECONDS - start)) s ($("$venv/bin/ansible" --version | head -1))"

# The CLI hosts-install.yml's test verifies with (a no-op after `cargo test`).
cargo build -q --bin bridge-isolation
python -m pytest -q -p no:cacheprovider tests

for playbook in *.yml; do
    ansible-playbook -i localhost, --syntax-check "$playbook"
done

ansible-lint --strict

echo "ansible/ci.sh: tests, syntax checks and ansible-lint passed in $((SECONDS - start)) s"
