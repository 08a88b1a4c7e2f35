"""Runs the verify part of ansible/hosts-install.yml (`--tags verify`) for real: the
project's own `bridge-isolation verify` (target/debug, built by `cargo test` or
`cargo build`) inside a network namespace holding a bridge whose VM port is, then is not,
drifted from the recorded policy. Root only (a network namespace): skipped otherwise, failed
when BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from test_engine_playbook import ANSIBLE_PLAYBOOK, recap

HERE = os.path.dirname(os.path.abspath(__file__))
PLAYBOOK = os.path.join(HERE, "..", "hosts-install.yml")
CLI = os.environ.get("BRIDGE_ISOLATION_CLI") or os.path.join(
    HERE, "..", "..", "target", "debug", "bridge-isolation")


def ip(*args):
    subprocess.run(["ip", *args], check=True)


@pytest.fixture
def host(tmp_path):
    """A namespace with bridge red (uplink up0, VM port vnet0) and a policy isolating it."""
    if os.geteuid() != 0:
        if os.environ.get("BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS") == "1":
            pytest.fail("BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1 but not root")
        pytest.skip("needs root (a network namespace)")
    assert os.access(CLI, os.X_OK), "%s is missing: cargo build --bin bridge-isolation" % CLI
    ns = "bi-ansible-%d" % os.getpid()
    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "add", "red", "type", "bridge")
        for port in ("up0", "vnet0"):
            ip("-n", ns, "link", "add", port, "type", "veth", "peer", "name", port + "p")
            ip("-n", ns, "link", "set", port, "master", "red")
        ip("-n", ns, "link", "set", "red", "up")
        state = tmp_path / "state"
        state.mkdir()
        (state / "state.json").write_text(json.dumps({
            "version": 1, "backend": "port-isolation",
            "networks": {"red": {"bridge": "red", "uplink": "up0"}},
            "released": [], "trusted": {}}))
        (tmp_path / "inventory.ini").write_text(textwrap.dedent("""\
            [ovirt_hosts]
            localhost ansible_connection=local ansible_become=false ansible_python_interpreter=%s
            """ % sys.executable))
        yield ns, tmp_path
    finally:
        ip("netns", "del", ns)


def verify(ns, tmp_path):
    env = dict(os.environ, BRIDGE_ISOLATION_STATE_DIR=str(tmp_path / "state"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(
        ["ip", "netns", "exec", ns, ANSIBLE_PLAYBOOK, "-i", str(tmp_path / "inventory.ini"),
         PLAYBOOK, "--tags", "verify", "-e", "bridge_isolation_cli=" + CLI],
        env=env, capture_output=True, text=True, timeout=300)


def test_drift_fails_the_play_with_the_drift_listed_then_a_repaired_host_passes(host):
    ns, tmp_path = host
    drifted = verify(ns, tmp_path)
    assert drifted.returncode != 0, drifted.stdout + drifted.stderr
    assert recap(drifted.stdout)["failed"] == 1
    assert ("bridge-isolation verify on localhost exited 1 (drift): "
            "drift: bridge red port vnet0 (Vm) isolated=false expected=true") in drifted.stdout

    ip("-n", ns, "link", "set", "dev", "vnet0", "type", "bridge_slave", "isolated", "on")
    clean = verify(ns, tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert recap(clean.stdout) == dict(recap(clean.stdout), failed=0, changed=0)
    assert "TASK [Install the package]" not in clean.stdout
