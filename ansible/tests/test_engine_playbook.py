"""Runs ansible/engine-properties.yml for real (ansible-playbook, local connection) against
the engine-config stand-in: first run merges and restarts, second run changes nothing.

The restart handler is kept from touching this machine with
bridge_isolation_restart_engine=false; whether it was notified shows in the output.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PLAYBOOK = os.path.join(HERE, "..", "engine-properties.yml")
NET = "UserDefinedNetworkCustomProperties"
DEV = "CustomDeviceProperties"
SECURITY_GROUPS = (
    "SecurityGroups=^(?:(?:[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}, *)*"
    "[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}|)$"
)
FCOE = "fcoe=^((enable|dcb|auto_vlan)=(yes|no),?)*$"
OURS_NET = ("bridge_isolation=^(true|false)$;bridge_isolation_peer_macs=^[0-9a-fA-F:/, -]*$;"
            "bridge_isolation_trusted_macs=^[0-9a-fA-F:, ]*$;"
            "bridge_isolation_uplink_macs=^[0-9a-fA-F:/, -]*$")
OURS_VNIC = "bridge_isolation_trusted=^(true|false)$"
HANDLER = "RUNNING HANDLER [Restart ovirt-engine]"

# The ansible-playbook of the Python running the tests (ansible/ci.sh's venv), else PATH's.
ANSIBLE_PLAYBOOK = shutil.which(
    "ansible-playbook", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))


@pytest.fixture
def engine(tmp_path):
    """A directory with the stand-in as `engine-config`, its state and an inventory."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "engine-config"
    tool.write_text("#!%s\nimport runpy, sys\nsys.path.insert(0, %r)\n"
                    "runpy.run_module('engine_config_standin', run_name='__main__')\n"
                    % (sys.executable, HERE))
    tool.chmod(0o755)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({
        NET: [["4.6", ""], ["4.7", FCOE], ["4.8", "bridge_isolation=^true$"]],
        DEV: [["4.6", "{type=interface;prop={%s}}" % SECURITY_GROUPS],
              ["4.7", "{type=disk;prop={d=^a{1}}$}}"],
              ["4.8", "{type=interface;prop={%s}}" % OURS_VNIC]],
    }))
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(textwrap.dedent("""\
        [engine]
        localhost ansible_connection=local ansible_become=false ansible_python_interpreter=%s
        """ % sys.executable))
    return tmp_path


def play(engine, *extra):
    env = dict(os.environ, ENGINE_CONFIG_STATE=str(engine / "state.json"),
               PATH="%s:%s" % (engine / "bin", os.environ["PATH"]),
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    assert ANSIBLE_PLAYBOOK, "ansible-playbook not found beside %s nor on PATH" % sys.executable
    return subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", str(engine / "inventory.ini"), PLAYBOOK,
         "-e", "bridge_isolation_restart_engine=false", *extra],
        env=env, capture_output=True, text=True, timeout=300)


def recap(out):
    line = [ln for ln in out.splitlines() if ln.startswith("localhost ")][-1]
    return {k: int(v) for k, v in (f.split("=") for f in line.split()[2:])}


def values(engine):
    state = json.loads((engine / "state.json").read_text())
    return {key: dict(rows) for key, rows in state.items()}


def sets(engine):
    log = (engine / "state.json.log").read_text().splitlines()
    return [json.loads(ln) for ln in log if json.loads(ln)[0] == "-s"]


def test_check_mode_changes_nothing(engine):
    before = values(engine)
    run = play(engine, "--check")
    assert run.returncode == 0, run.stdout + run.stderr
    assert values(engine) == before
    assert "--cver=4.6" in run.stdout and HANDLER not in run.stdout
    assert not (engine / "state.json.log").read_text().count('"-s"')


def test_first_run_merges_and_restarts_second_run_changes_nothing(engine):
    first = play(engine)
    assert first.returncode == 0, first.stdout + first.stderr
    assert HANDLER in first.stdout
    assert recap(first.stdout)["failed"] == 0
    assert values(engine) == {
        NET: {"4.6": OURS_NET, "4.7": FCOE + ";" + OURS_NET,
              "4.8": OURS_NET},
        DEV: {"4.6": "{type=interface;prop={%s;%s}}" % (SECURITY_GROUPS, OURS_VNIC),
              "4.7": "{type=disk;prop={d=^a{1}}$}};{type=interface;prop={%s}}" % OURS_VNIC,
              "4.8": "{type=interface;prop={%s}}" % OURS_VNIC},
    }
    assert sorted((s[1].split("=", 1)[0], s[2]) for s in sets(engine)) == sorted(
        [(NET, "--cver=4.6"), (NET, "--cver=4.7"), (NET, "--cver=4.8"),
         (DEV, "--cver=4.6"), (DEV, "--cver=4.7")])

    second = play(engine)
    assert second.returncode == 0, second.stdout + second.stderr
    assert recap(second.stdout)["changed"] == 0
    assert HANDLER not in second.stdout
    assert len(sets(engine)) == 5


def test_one_level(engine):
    run = play(engine, "-e", '{"bridge_isolation_cluster_levels": ["4.7"]}')
    assert run.returncode == 0, run.stdout + run.stderr
    assert {s[2] for s in sets(engine)} == {"--cver=4.7"}
    assert values(engine)[NET]["4.6"] == ""


def test_a_value_the_engine_cannot_read_stops_before_any_set(engine):
    state = json.loads((engine / "state.json").read_text())
    state[DEV][1][1] = "{type=video;prop={v=^x$}};{type=disk;prop={d=^y$}}"
    (engine / "state.json").write_text(json.dumps(state))
    run = play(engine)
    assert run.returncode != 0
    assert "fix it by hand" in run.stdout
    assert not (engine / "state.json.log").read_text().count('"-s"')
