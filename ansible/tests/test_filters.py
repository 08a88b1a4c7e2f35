"""Tests of ansible/filter_plugins/bridge_isolation.py on real-shaped engine-config output.

The outputs are written the way ovirt-engine 4.5's engine-config prints them
(EngineConfigLogic.printAllValuesForKey: "KEY: " + value + " version: " + version, rows in
database order) and the values are the engine's own defaults (0000_config.sql) or the
definitions vdsm hooks document. `EngineConfig` below plays `engine-config -g` and `-s`
on a dict, so a plan can be applied and planned again.
"""

import os
import random
import re
import sys

import pytest
from ansible.errors import AnsibleFilterError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "filter_plugins"))
import bridge_isolation as bi  # noqa: E402

NET = "UserDefinedNetworkCustomProperties"
DEV = "CustomDeviceProperties"
VERSIONS = ["4.2", "4.3", "4.4", "4.5", "4.6", "4.7", "4.8"]

# What docs/cross-host.md and docs/install.md tell administrators to define.
OURS_NET = {
    "bridge_isolation": "^(true|false)$",
    "bridge_isolation_peer_macs": "^[0-9a-fA-F:/, -]*$",
    "bridge_isolation_trusted_macs": "^[0-9a-fA-F:, ]*$",
    "bridge_isolation_uplink_macs": "^[0-9a-fA-F:/, -]*$",
}
OURS_NET_TEXT = ";".join("%s=%s" % kv for kv in OURS_NET.items())
OURS_VNIC = {"bridge_isolation_trusted": "^(true|false)$"}

# ovirt-engine's default CustomDeviceProperties for every level (its regex holds '}').
SECURITY_GROUPS = (
    "SecurityGroups=^(?:(?:[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}, *)*"
    "[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}|)$"
)
DEFAULT_DEV = "{type=interface;prop={%s}}" % SECURITY_GROUPS
# Other hooks' definitions: fcoe's regex holds '=', vmfex's '{2,32}'.
FCOE = "fcoe=^((enable|dcb|auto_vlan)=(yes|no),?)*$"
ETHTOOL = "ethtool_opts=.*"
MACSPOOF = "ifacemacspoof=^(true|false)$"
VMFEX = "vmfex=^[a-zA-Z0-9_.-]{2,32}$"


class EngineConfig:
    """`engine-config -g KEY` and `-s KEY=VALUE --cver=V` over {key: {version: value}}."""

    def __init__(self, values, seed=0):
        self.values = {k: dict(v) for k, v in values.items()}
        self.rng = random.Random(seed)

    def get(self, key):
        rows = list(self.values[key].items())
        self.rng.shuffle(rows)  # no ORDER BY in engine-config's query
        return "".join("%s: %s version: %s\n" % (key, value, version) for version, value in rows)

    def set(self, change):
        assert change["version"] in self.values[change["key"]]
        self.values[change["key"]][change["version"]] = change["new"]


def fresh_engine():
    """A new oVirt 4.5.7 engine's two keys."""
    return EngineConfig({NET: {v: "" for v in VERSIONS}, DEV: {v: DEFAULT_DEV for v in VERSIONS}})


def plans(engine, levels=None):
    return bi.engine_plan({NET: engine.get(NET), DEV: engine.get(DEV)}, OURS_NET, OURS_VNIC,
                          levels)


def converge(engine, levels=None):
    """One playbook run: plan, set; then the second run must find nothing to do."""
    changes = plans(engine, levels)
    for change in changes:
        engine.set(change)
    assert plans(engine, levels) == []
    return changes


def engine_reads(value):
    """The interface properties the engine reads from a CustomDeviceProperties value
    (DevicePropertiesUtils.init then parsePropertiesRegex), written independently of the
    filter: the same patterns, Java's split on ';' and on the first '='."""
    found = {}
    for m in bi._DEVICE_SPLIT.finditer(value):
        text = m.group(0)
        body = text[len("{type="):len(text) - (2 if text.endswith(";") else 1)]
        dtype, props = body.split(";", 1)
        props = props[len("prop={"):-1]
        parsed = {}
        for item in [p for p in props.split(";")]:
            if item:
                name, _, regex = item.partition("=")
                parsed[name] = regex
        found[dtype] = parsed
    return found


# --- engine-config -g output -------------------------------------------------------


def test_parse_reads_every_version_in_any_order_and_empty_values():
    out = (
        "UserDefinedNetworkCustomProperties:  version: 4.7\n"
        "UserDefinedNetworkCustomProperties: %s;%s version: 4.2\n"
        "UserDefinedNetworkCustomProperties:  version: 4.8\n" % (ETHTOOL, FCOE)
    )
    assert bi.parse_engine_config(out, NET) == {
        "4.7": "", "4.2": ETHTOOL + ";" + FCOE, "4.8": ""}


def test_parse_ignores_other_lines_and_keeps_backslashes_and_dollars():
    value = r"ipv4_addrs=^\d+\.\d+\.\d+\.\d+/\d+(,\d+\.\d+\.\d+\.\d+/\d+)*$"
    out = (
        "Picked up JAVA_TOOL_OPTIONS: -Xmx64m\n"
        "%s: %s version: 4.7\r\n"
        "UserDefinedVMProperties: x=^y$ version: 4.7\n" % (NET, value)
    )
    assert bi.parse_engine_config(out, NET) == {"4.7": value}


def test_parse_takes_the_last_version_marker():
    out = "%s: odd=^a version: b$ version: 4.6\n" % NET
    assert bi.parse_engine_config(out, NET) == {"4.6": "odd=^a version: b$"}


@pytest.mark.parametrize("out", [
    "",
    "Error fetching UserDefinedNetworkCustomProperties value: no such entry.\n",
    "%s: a=b version: 4.7\n%s: c=d version: 4.7\n" % (NET, NET),
])
def test_parse_refuses_output_without_a_usable_line(out):
    with pytest.raises(AnsibleFilterError):
        bi.parse_engine_config(out, NET)


# --- network properties -------------------------------------------------------------


def test_fresh_engine_gets_ours_at_every_level_and_converges():
    engine = fresh_engine()
    changes = converge(engine)
    net = [c for c in changes if c["key"] == NET]
    assert [c["version"] for c in net] == VERSIONS
    assert all(c["old"] == "" and c["new"] == OURS_NET_TEXT for c in net)
    assert engine.values[NET] == {v: OURS_NET_TEXT for v in VERSIONS}


def test_other_hooks_properties_are_kept_byte_for_byte():
    old = ETHTOOL + ";" + FCOE
    new, notes = bi.merge_network_value(old, OURS_NET)
    assert new == old + ";" + OURS_NET_TEXT
    assert notes == []
    assert bi._split_items(new)[:2] == [("ethtool_opts", ".*"),
                                        ("fcoe", "^((enable|dcb|auto_vlan)=(yes|no),?)*$")]


def test_levels_differ_and_only_the_ones_lacking_ours_change():
    engine = EngineConfig({
        NET: {"4.6": ETHTOOL, "4.7": ETHTOOL + ";" + OURS_NET_TEXT, "4.8": ""},
        DEV: {"4.6": DEFAULT_DEV, "4.7": DEFAULT_DEV, "4.8": DEFAULT_DEV},
    })
    net = [c for c in converge(engine) if c["key"] == NET]
    assert [(c["version"], c["new"]) for c in net] == [
        ("4.6", ETHTOOL + ";" + OURS_NET_TEXT), ("4.8", OURS_NET_TEXT)]


def test_our_key_with_another_regex_is_corrected_in_place():
    old = "bridge_isolation=^true$;" + FCOE
    new, notes = bi.merge_network_value(old, OURS_NET)
    assert new.startswith("bridge_isolation=^(true|false)$;" + FCOE + ";")
    assert notes == ["bridge_isolation: regex ^true$ replaced by ^(true|false)$"]
    assert dict(bi._split_items(new)) == dict(OURS_NET, fcoe=FCOE.split("=", 1)[1])


def test_a_repeated_key_of_ours_is_dropped_and_others_repeats_kept():
    old = "x=1;bridge_isolation=^(true|false)$;x=2;bridge_isolation=.*"
    new, notes = bi.merge_network_value(old, {"bridge_isolation": "^(true|false)$"})
    assert new == "x=1;bridge_isolation=^(true|false)$;x=2"
    assert notes == ["dropped a second definition of bridge_isolation (.*)"]


def test_complete_value_with_trailing_semicolons_is_left_alone():
    old = OURS_NET_TEXT + ";;"
    assert bi.merge_network_value(old, OURS_NET) == (old, [])
    engine = EngineConfig({NET: {"4.7": old}, DEV: {"4.7": DEFAULT_DEV}})
    assert bi.network_plan(engine.get(NET), OURS_NET) == []


def test_whitespace_and_odd_names_of_others_survive():
    old = " spaced = ^a b$;dash-name=x"
    new, _ = bi.merge_network_value(old, {"bridge_isolation": "^(true|false)$"})
    assert new == old + ";bridge_isolation=^(true|false)$"


@pytest.mark.parametrize("bad", ["a=1;;b=2", ";a=1", "noequals", "a=1;broken"])
def test_values_the_engine_cannot_read_are_refused(bad):
    with pytest.raises(AnsibleFilterError, match="fix it by hand"):
        bi.merge_network_value(bad, OURS_NET)


@pytest.mark.parametrize("wanted", [
    {}, {"bad-name": "^x$"}, {"semi": "^a;b$"}, {"unbalanced": "^(a$"}, {"n": 1},
])
def test_our_definitions_are_checked(wanted):
    with pytest.raises(AnsibleFilterError):
        bi.network_plan("%s:  version: 4.7\n" % NET, wanted)


def test_levels_restrict_the_plan_and_must_exist_and_be_strings():
    engine = fresh_engine()
    only = bi.network_plan(engine.get(NET), OURS_NET, ["4.7", "4.6"])
    assert [c["version"] for c in only] == ["4.6", "4.7"]
    with pytest.raises(AnsibleFilterError, match="no %s for version" % NET):
        bi.network_plan(engine.get(NET), OURS_NET, ["4.9"])
    with pytest.raises(AnsibleFilterError, match="quote it"):
        bi.network_plan(engine.get(NET), OURS_NET, [4.7])


def test_engine_plan_needs_both_outputs():
    with pytest.raises(AnsibleFilterError, match="engine-config -g CustomDeviceProperties"):
        bi.engine_plan({NET: "%s:  version: 4.7\n" % NET}, OURS_NET, OURS_VNIC)


def test_a_result_ansible_could_template_again_is_refused():
    out = "%s: tmpl=^{{x}}$ version: 4.7\n" % NET
    with pytest.raises(AnsibleFilterError, match="set it by hand"):
        bi.network_plan(out, OURS_NET)


def test_versions_sort_numerically():
    engine = EngineConfig({NET: {"4.10": "", "4.9": "", "4.2": ""}, DEV: {}})
    assert [c["version"] for c in bi.network_plan(engine.get(NET), OURS_NET)] == [
        "4.2", "4.9", "4.10"]


# --- device (vNIC) properties -------------------------------------------------------


def test_default_security_groups_block_gets_ours_inside():
    new, notes = bi.merge_device_value(DEFAULT_DEV, "interface", OURS_VNIC)
    assert new == "{type=interface;prop={%s;bridge_isolation_trusted=^(true|false)$}}" % (
        SECURITY_GROUPS)
    assert notes == []
    assert engine_reads(new) == {"interface": {
        "SecurityGroups": SECURITY_GROUPS.split("=", 1)[1],
        "bridge_isolation_trusted": "^(true|false)$"}}


def test_empty_value_gets_an_interface_block():
    engine = EngineConfig({NET: {"4.7": ""}, DEV: {"4.7": ""}})
    changes = converge(engine)
    assert engine.values[DEV]["4.7"] == "{type=interface;prop={%s}}" % (
        "bridge_isolation_trusted=^(true|false)$")
    assert [c["old"] for c in changes if c["key"] == DEV] == [""]


@pytest.mark.parametrize("old, new", [
    # interface comes after disk ...
    ("{type=disk;prop={diskunmap=^(on|off)$}}",
     "{type=disk;prop={diskunmap=^(on|off)$}};{type=interface;prop={OURS}}"),
    # ... and before every later type, in the engine's enum order
    ("{type=video;prop={v=^.*$}};{type=hostdev;prop={h=^x$}}",
     "{type=interface;prop={OURS}};{type=video;prop={v=^.*$}};{type=hostdev;prop={h=^x$}}"),
    ("{type=disk;prop={d=^a$}};{type=hostdev;prop={h=^x$}};",
     "{type=disk;prop={d=^a$}};{type=interface;prop={OURS}};{type=hostdev;prop={h=^x$}}"),
])
def test_a_missing_interface_block_goes_where_the_engine_wants_it(old, new):
    ours = "bridge_isolation_trusted=^(true|false)$"
    merged, _ = bi.merge_device_value(old, "interface", OURS_VNIC)
    assert merged == new.replace("OURS", ours)
    assert bi._DEVICE_VALID.fullmatch(merged)


def test_other_blocks_and_other_interface_properties_are_kept_byte_for_byte():
    old = ("{type=disk;prop={d=^a{1}}$}};{type=interface;prop={%s;%s;%s}};"
           "{type=hostdev;prop={h=^x$}}" % (MACSPOOF, VMFEX, SECURITY_GROUPS))
    new, _ = bi.merge_device_value(old, "interface", OURS_VNIC)
    assert new == old.replace(SECURITY_GROUPS + "}}",
                              SECURITY_GROUPS + ";bridge_isolation_trusted=^(true|false)$}}")
    before, after = engine_reads(old), engine_reads(new)
    assert after["disk"] == before["disk"] == {"d": "^a{1}}$"}
    assert after["hostdev"] == before["hostdev"]
    assert after["interface"] == dict(before["interface"], **OURS_VNIC)


def test_our_vnic_key_with_another_regex_is_corrected():
    old = "{type=interface;prop={bridge_isolation_trusted=^true$;%s}}" % MACSPOOF
    new, notes = bi.merge_device_value(old, "interface", OURS_VNIC)
    assert new == "{type=interface;prop={bridge_isolation_trusted=^(true|false)$;%s}}" % MACSPOOF
    assert notes == ["bridge_isolation_trusted: regex ^true$ replaced by ^(true|false)$"]


def test_empty_interface_block_and_trailing_semicolon():
    old = "{type=interface;prop={}};"
    new, _ = bi.merge_device_value(old, "interface", OURS_VNIC)
    assert new == "{type=interface;prop={bridge_isolation_trusted=^(true|false)$}};"
    assert bi.merge_device_value(new, "interface", OURS_VNIC) == (new, [])


@pytest.mark.parametrize("bad", [
    # wrong order: engine-config validates blocks in VmDeviceGeneralType order
    "{type=video;prop={v=^.*$}};{type=interface;prop={%s}}" % MACSPOOF,
    # two blocks of one type
    "{type=interface;prop={a=^x$}};{type=interface;prop={b=^y$}}",
    # an unknown type, a missing brace, a property without '='
    "{type=nic;prop={a=^x$}}",
    "{type=interface;prop={a=^x$}",
    "{type=interface;prop={a}}",
    # a regex holding ';'
    "{type=interface;prop={a=^(x;y)$}}",
])
def test_device_values_engine_config_refuses_are_refused(bad):
    with pytest.raises(AnsibleFilterError, match="fix it by hand"):
        bi.merge_device_value(bad, "interface", OURS_VNIC)


def test_a_block_swallowed_by_the_previous_one_is_refused():
    # Without ';' after a block, the engine's greedy pattern reads the next block as
    # properties of the first: it sees no interface block at all here.
    old = "{type=disk;prop={a=^b$}}{type=interface;prop={%s}}" % MACSPOOF
    assert list(engine_reads(old)) == ["disk"]
    with pytest.raises(AnsibleFilterError, match="inside the properties of the disk block"):
        bi.merge_device_value(old, "interface", OURS_VNIC)


def test_unknown_device_type_requested():
    with pytest.raises(AnsibleFilterError, match="unknown device type"):
        bi.merge_device_value("", "nic", OURS_VNIC)


# --- whole runs ---------------------------------------------------------------------


MIXED = EngineConfig({
    NET: {
        "4.2": "",
        "4.5": ETHTOOL,
        "4.6": "bridge_isolation=^true$;" + FCOE + ";",
        "4.7": ETHTOOL + ";" + OURS_NET_TEXT,
        "4.8": "bridge_isolation_peer_macs=.*",
    },
    DEV: {
        "4.2": "",
        "4.5": DEFAULT_DEV,
        "4.6": "{type=disk;prop={d=^a$}};{type=interface;prop={%s}}" % MACSPOOF,
        "4.7": "{type=interface;prop={%s;bridge_isolation_trusted=^(true|false)$}}" % VMFEX,
        "4.8": "{type=video;prop={v=^.*$}}",
    },
})


@pytest.mark.parametrize("seed", range(5))
def test_mixed_engine_converges_in_one_run_and_keeps_the_rest(seed):
    engine = EngineConfig(MIXED.values, seed)
    changes = converge(engine)
    assert sorted((c["key"], c["version"]) for c in changes) == sorted(
        [(NET, v) for v in ("4.2", "4.5", "4.6", "4.8")]
        + [(DEV, v) for v in ("4.2", "4.5", "4.6", "4.8")])
    for version, old in MIXED.values[NET].items():
        new = dict(bi._split_items(engine.values[NET][version]))
        others = {k: r for k, r in bi._split_items(old) if k not in OURS_NET}
        assert new == dict(others, **OURS_NET)
    for version, old in MIXED.values[DEV].items():
        before, after = engine_reads(old), engine_reads(engine.values[DEV][version])
        assert {t: p for t, p in after.items() if t != "interface"} == {
            t: p for t, p in before.items() if t != "interface"}
        assert after["interface"] == dict(before.get("interface", {}), **OURS_VNIC)
        assert bi._DEVICE_VALID.fullmatch(engine.values[DEV][version])


def test_one_level_only():
    engine = EngineConfig(MIXED.values)
    changes = converge(engine, ["4.6"])
    assert {c["version"] for c in changes} == {"4.6"}
    assert engine.values[NET]["4.5"] == ETHTOOL


# --- hosts of a cluster (ovirt_host_info with follow) -------------------------------


def host(name, attachments, cluster="prod"):
    return {
        "id": "id-" + name, "name": name, "status": "up",
        "cluster": {"id": "c-" + cluster, "name": cluster},
        "network_attachments": [
            {"id": "a-%s-%s" % (name, net), "in_sync": True,
             "network": {"id": "n-" + net, "name": net},
             "host_nic": {"id": "nic-" + nic, "name": nic},
             **({"properties": props} if props is not None else {})}
            for net, nic, props in attachments
        ],
    }


def test_host_plan_keeps_other_properties_and_skips_done_hosts():
    hosts = [
        host("h1", [("ovirtmgmt", "eth0", None), ("red", "eth1", None)]),
        host("h2", [("red", "bond0", [{"name": "bridge_opts", "value": "forward_delay=1500"}])]),
        host("h3", [("red", "eth1", [{"name": "bridge_isolation", "value": "true"}])]),
        host("h4", [("red", "eth2", [{"name": "bridge_isolation", "value": "false"},
                                     {"name": "other_hook", "value": "x"}])]),
        host("h5", [("ovirtmgmt", "eth0", None)]),
        host("h6", [("red", "eth1", None)], cluster="test"),
    ]
    plan = bi.host_plan(hosts, "red", {"bridge_isolation": True}, "prod")
    assert plan["without"] == ["h5"]
    assert plan["attach"] == [
        {"host": "h1", "id": "id-h1", "interface": "eth1",
         "custom_properties": [{"name": "bridge_isolation", "value": "true"}]},
        {"host": "h2", "id": "id-h2", "interface": "bond0",
         "custom_properties": [{"name": "bridge_opts", "value": "forward_delay=1500"},
                               {"name": "bridge_isolation", "value": "true"}]},
        {"host": "h4", "id": "id-h4", "interface": "eth2",
         "custom_properties": [{"name": "bridge_isolation", "value": "true"},
                               {"name": "other_hook", "value": "x"}]},
    ]


def test_host_plan_is_empty_once_applied():
    hosts = [host("h1", [("red", "eth1", [{"name": "bridge_opts", "value": "a=b"}])])]
    wanted = {"bridge_isolation": "true", "bridge_isolation_uplink_macs": "52:54:00:00:00:01"}
    plan = bi.host_plan(hosts, "red", wanted)
    hosts[0]["network_attachments"][0]["properties"] = plan["attach"][0]["custom_properties"]
    assert bi.host_plan(hosts, "red", wanted) == {"attach": [], "without": []}


@pytest.mark.parametrize("broken, message", [
    ({"cluster": {"id": "c"}}, "follow 'cluster'"),
    ({"network_attachments": [{"network": {"id": "n"}}]}, "follow 'network_attachments.network'"),
    ({"network_attachments": [{"network": {"name": "red"}, "host_nic": {"id": "x"}}]},
     "follow 'network_attachments.host_nic'"),
])
def test_host_plan_needs_the_followed_links(broken, message):
    h = host("h1", [("red", "eth1", None)])
    h.update(broken)
    with pytest.raises(AnsibleFilterError, match=re.escape(message)):
        bi.host_plan([h], "red", {"bridge_isolation": "true"}, "prod")


@pytest.mark.parametrize("wanted", [{}, {"bridge_isolation": 1}])
def test_host_plan_checks_the_values(wanted):
    with pytest.raises(AnsibleFilterError):
        bi.host_plan([], "red", wanted)


def test_the_filters_are_registered():
    assert set(bi.FilterModule().filters()) == {
        "bridge_isolation_engine_plan", "bridge_isolation_network_plan",
        "bridge_isolation_device_plan", "bridge_isolation_host_plan"}
