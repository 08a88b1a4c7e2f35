# -*- coding: utf-8 -*-
"""Filters of the bridge isolation playbooks: merge custom property definitions safely.

`engine-config -s KEY=VALUE --cver=V` replaces a whole property list. These filters read
what `engine-config -g KEY` prints, add or correct our definitions and keep every other
definition byte for byte, so that one run can never break another hook's properties.

The formats follow ovirt-engine 4.5 (oVirt 4.5.x):

* `engine-config -g KEY` prints one line per version, in no particular order (a plain
  SELECT): ``KEY: VALUE version: V`` (EngineConfigLogic.printAllValuesForKey). An empty
  value prints as ``KEY:  version: V``.
* Network custom properties (UserDefinedNetworkCustomProperties) are ``name=regex`` items
  joined by ``;``. The engine splits the list on every ``;`` (Java ``String.split``, so
  trailing empty items vanish) and each item on its first ``=``
  (CustomPropertiesUtils.convertProperties); `engine-config -s` refuses an item without
  ``=`` (CustomPropertiesValueHelper). So a regex can hold ``=`` and ``}`` but never ``;``.
* Device custom properties (CustomDeviceProperties) are blocks
  ``{type=T;prop={name=regex;...}}``, at most one per device type, in the order of the
  engine's VmDeviceGeneralType enum, each optionally followed by ``;``
  (DevicePropertiesUtils). Inside ``prop={...}`` an item's regex is ``[^;]*``, so it may
  hold ``}`` (the engine's own default, SecurityGroups, ends in ``{12}|)$``). The engine
  finds blocks with a greedy pattern; these filters use the very same patterns, so they
  see the blocks the engine sees, and check the result with the pattern `engine-config -s`
  validates with before returning it.
"""

from __future__ import absolute_import, division, print_function

import re

from ansible.errors import AnsibleFilterError

__metaclass__ = type

NETWORK_KEY = "UserDefinedNetworkCustomProperties"
DEVICE_KEY = "CustomDeviceProperties"

# VmDeviceGeneralType of ovirt-engine 4.5, in declaration order (UNKNOWN excluded): the
# order engine-config's validation pattern requires of the blocks.
DEVICE_TYPES = (
    "disk", "interface", "video", "graphics", "sound", "controller", "balloon", "channel",
    "redir", "redirdev", "console", "rng", "smartcard", "watchdog", "hostdev", "memory",
    "tpm", "mdev",
)

# CustomPropertiesUtils.VALIDATION_STR and its parts, as the engine builds them.
_KEY_CHAR = "[a-z_A-Z0-9]"
_KV = "((" + _KEY_CHAR + ")+)=(([^;])*)"
_VALIDATION = "(" + _KV + "(;" + _KV + ")*;?)?"
# DevicePropertiesUtils: the pattern the engine finds blocks with, and the one
# engine-config -s validates a whole value with.
_DEVICE_SPLIT = re.compile(
    r"\{type=(" + "|".join(DEVICE_TYPES) + r");prop=\{" + _VALIDATION + r"\}\}[;]?"
)
_DEVICE_VALID = re.compile(
    "".join(
        r"((\{type=" + t + r";prop=\{" + _VALIDATION + r"\}\}[;]?)?)" for t in DEVICE_TYPES
    )
)
_NAME = re.compile(_KEY_CHAR + "+")
# Jinja's delimiters: a value holding one could be templated again by older Ansible.
_TEMPLATE_MARKERS = ("{{", "{%", "{#")


def _fail(message):
    raise AnsibleFilterError("bridge isolation: " + message)


def parse_engine_config(output, key):
    """Parses `engine-config -g KEY` output into {version: value}.

    Lines of other keys or other text (warnings of the Java launcher) are ignored; a
    version listed twice is an error, and so is output without any line of the key.
    """
    line_re = re.compile("^" + re.escape(key) + r": (.*) version: (\S+)$")
    values = {}
    for line in output.splitlines():
        m = line_re.match(line.rstrip("\r"))
        if not m:
            continue
        value, version = m.group(1), m.group(2)
        if version in values:
            _fail("engine-config printed %s twice for version %s" % (key, version))
        values[version] = value
    if not values:
        _fail("engine-config printed no line 'KEY: VALUE version: V' for %s:\n%s" % (key, output))
    return values


def _version_order(version):
    parts = version.split(".")
    if all(p.isdigit() for p in parts):
        return (0, tuple(int(p) for p in parts), "")
    return (1, (), version)


def _split_items(value):
    """Splits a property list as Java's `value.split(";")` + split at the first `=` do.

    Returns [(name, regex)]; None for a list the engine cannot read (an item without `=`).
    """
    if value.strip() == "":
        return []
    items = value.split(";")
    while items and items[-1] == "":
        items.pop()
    out = []
    for item in items:
        if "=" not in item:
            return None
        name, regex = item.split("=", 1)
        out.append((name, regex))
    return out


def _check_wanted(wanted, what):
    if not isinstance(wanted, dict) or not wanted:
        _fail("%s must be a non-empty mapping of property name to regex" % what)
    for name, regex in wanted.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            _fail("%s: property name %r is not [a-zA-Z0-9_]+" % (what, name))
        if not isinstance(regex, str) or ";" in regex:
            _fail("%s: the regex of %s must be a string without ';' (the engine splits on it)"
                  % (what, name))
        try:
            re.compile(regex)
        except re.error as err:
            _fail("%s: the regex of %s does not compile: %s" % (what, name, err))


def _merge_items(items, wanted):
    """Our definitions into [(name, regex)]: ours replace a different regex in place (a
    repeated name of ours is dropped: the engine keeps only the last), missing ones are
    appended in the order given. Returns (items, notes)."""
    out, seen, notes = [], set(), []
    for name, regex in items:
        if name not in wanted:
            out.append((name, regex))
        elif name in seen:
            notes.append("dropped a second definition of %s (%s)" % (name, regex))
        else:
            seen.add(name)
            if regex != wanted[name]:
                notes.append("%s: regex %s replaced by %s" % (name, regex, wanted[name]))
            out.append((name, wanted[name]))
    for name, regex in wanted.items():
        if name not in seen:
            out.append((name, regex))
    return out, notes


def _join(items):
    return ";".join(name + "=" + regex for name, regex in items)


def merge_network_value(value, wanted):
    """Merges our network properties into one version's UserDefinedNetworkCustomProperties.

    Returns (new_value, notes); new_value is the old one, unchanged, when every definition
    of ours is already there with our regex.
    """
    items = _split_items(value)
    if items is None:
        _fail("%s value %r has an item without '=': the engine cannot read it; fix it by hand"
              % (NETWORK_KEY, value))
    merged, notes = _merge_items(items, wanted)
    if merged == items:
        return value, []
    new = _join(merged)
    if _split_items(new) != merged:
        _fail("%s: cannot merge into %r safely" % (NETWORK_KEY, value))
    return new, notes


def _device_blocks(value):
    """The blocks the engine finds in a CustomDeviceProperties value, checked to cover the
    whole value and to pass engine-config's validation: [(type, props, match)]."""
    if not _DEVICE_VALID.fullmatch(value):
        return None
    blocks, pos = [], 0
    for m in _DEVICE_SPLIT.finditer(value):
        if m.start() != pos:
            return None
        text = m.group(0)
        head = len("{type=" + m.group(1) + ";prop={")
        tail = 2 + (1 if text.endswith(";") else 0)
        blocks.append((m.group(1), text[head:len(text) - tail], m))
        pos = m.end()
    if pos != len(value):
        return None
    return blocks


def merge_device_value(value, device_type, wanted):
    """Merges our properties into the `device_type` block of one version's
    CustomDeviceProperties; every other block is kept byte for byte.

    Returns (new_value, notes).
    """
    if device_type not in DEVICE_TYPES:
        _fail("unknown device type %r (one of %s)" % (device_type, ", ".join(DEVICE_TYPES)))
    blocks = [] if value.strip() == "" else _device_blocks(value)
    if blocks is None:
        _fail("%s value %r is not '{type=T;prop={name=regex;...}}' blocks in the engine's "
              "order: engine-config would refuse it; fix it by hand" % (DEVICE_KEY, value))
    for t, props, _ in blocks:
        if "{type=" in props:
            _fail("%s value %r: the engine reads '{type=' inside the properties of the %s "
                  "block (a block ending in '}}' right before the next one, without ';'): "
                  "fix it by hand" % (DEVICE_KEY, value, t))
    ours = [b for b in blocks if b[0] == device_type]
    if len(ours) > 1:
        _fail("%s value %r has two %s blocks" % (DEVICE_KEY, value, device_type))
    if ours:
        _, props, m = ours[0]
        items = _split_items(props)
        merged, notes = _merge_items(items, wanted)
        if merged == items:
            return value, []
        start = m.start() + len("{type=" + device_type + ";prop={")
        new = value[:start] + _join(merged) + value[start + len(props):]
    else:
        merged, notes = list(wanted.items()), []
        rank = DEVICE_TYPES.index(device_type)
        texts = [b[2].group(0).rstrip(";") for b in blocks]
        at = sum(1 for b in blocks if DEVICE_TYPES.index(b[0]) < rank)
        texts.insert(at, "{type=%s;prop={%s}}" % (device_type, _join(merged)))
        new = ";".join(texts)
    # The engine must read back exactly: the other blocks as they were, ours as merged.
    after = _device_blocks(new)
    expected = [(t, p) for t, p, _ in blocks if t != device_type]
    if (
        after is None
        or [(t, p) for t, p, _ in after if t != device_type] != expected
        or [_split_items(p) for t, p, _ in after if t == device_type] != [merged]
    ):
        _fail("%s: cannot merge into %r safely (a regex of another block ends in '}}'?)"
              % (DEVICE_KEY, value))
    return new, notes


def _levels(values, key, levels):
    if not levels:
        return sorted(values, key=_version_order)
    for v in levels:
        if not isinstance(v, str):
            _fail("cluster level %r is not a string: quote it ('4.7'; YAML reads 4.10 as 4.1)"
                  % (v,))
    missing = [v for v in levels if v not in values]
    if missing:
        _fail("engine-config lists no %s for version(s) %s (it has %s)"
              % (key, ", ".join(map(str, missing)), ", ".join(sorted(values, key=_version_order))))
    return sorted(set(levels), key=_version_order)


def _plan(output, key, levels, merge):
    values = parse_engine_config(output, key)
    plan = []
    for version in _levels(values, key, levels):
        try:
            new, notes = merge(values[version])
        except AnsibleFilterError as err:
            reason = str(err.message).replace("bridge isolation: ", "", 1)
            _fail("version %s: %s" % (version, reason))
        if new != values[version]:
            for marker in _TEMPLATE_MARKERS:
                if marker in new:
                    _fail("%s --cver=%s: the merged value holds %r, which Ansible could take "
                          "for a template; set it by hand: %s" % (key, version, marker, new))
            plan.append({"key": key, "version": version, "old": values[version],
                         "new": new, "notes": notes})
    return plan


def network_plan(output, wanted, levels=None):
    """`engine-config -g UserDefinedNetworkCustomProperties` output -> the changes to make:
    [{key, version, old, new, notes}] for every version (or those in `levels`) whose
    value lacks one of `wanted` (name -> regex) or has it with another regex."""
    _check_wanted(wanted, "network properties")
    return _plan(output, NETWORK_KEY, levels, lambda v: merge_network_value(v, wanted))


def device_plan(output, device_type, wanted, levels=None):
    """`engine-config -g CustomDeviceProperties` output -> the changes to make for the
    `device_type` block (like `network_plan`)."""
    _check_wanted(wanted, "%s device properties" % device_type)
    return _plan(output, DEVICE_KEY, levels,
                 lambda v: merge_device_value(v, device_type, wanted))


def engine_plan(outputs, network_wanted, vnic_wanted, levels=None):
    """{key: `engine-config -g KEY` output} for both keys -> `network_plan` followed by
    `device_plan` for the interface block: all the `engine-config -s` calls to make."""
    for key in (NETWORK_KEY, DEVICE_KEY):
        if not isinstance(outputs, dict) or key not in outputs:
            _fail("the output of engine-config -g %s is missing" % key)
    return (network_plan(outputs[NETWORK_KEY], network_wanted, levels)
            + device_plan(outputs[DEVICE_KEY], "interface", vnic_wanted, levels))


def _property_value(name, value):
    # YAML reads an unquoted true as a boolean; the hook wants the text "true".
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, str):
        _fail("the value of %s must be a string, not %r" % (name, value))
    return value


def host_plan(hosts, network, wanted, cluster=None):
    """`ovirt_host_info` hosts (followed: cluster, network_attachments.network and
    network_attachments.host_nic) -> what ovirt_host_network needs to tag `network`:

    {"attach": [{host, id, interface, custom_properties}], "without": [host names]}.
    custom_properties is the attachment's current list with ours set (their values
    replaced in place, missing ones appended): the module replaces an attachment's whole
    list, so other properties (bridge_opts, other hooks') must be passed back.
    Hosts whose attachment already has our values are left out; hosts of another
    cluster (when `cluster` is given) are ignored; hosts not carrying the network are
    listed in "without".
    """
    if not isinstance(wanted, dict) or not wanted:
        _fail("the network custom properties to set must be a non-empty mapping")
    wanted = {str(k): _property_value(k, v) for k, v in wanted.items()}
    attach, without = [], []
    for host in hosts:
        name = host.get("name")
        if cluster is not None:
            host_cluster = (host.get("cluster") or {}).get("name")
            if host_cluster is None:
                _fail("host %s: cluster name missing (follow 'cluster')" % name)
            if host_cluster != cluster:
                continue
        found = []
        for att in host.get("network_attachments") or []:
            net = (att.get("network") or {}).get("name")
            if net is None:
                _fail("host %s: network attachment without a network name (follow "
                      "'network_attachments.network')" % name)
            if net == network:
                found.append(att)
        if not found:
            without.append(name)
            continue
        att = found[0]
        nic = (att.get("host_nic") or {}).get("name")
        if nic is None:
            _fail("host %s: the attachment of %s names no NIC (follow "
                  "'network_attachments.host_nic')" % (name, network))
        current = [(str(p.get("name")), str(p.get("value", "")))
                   for p in att.get("properties") or []]
        props = [(n, wanted.get(n, v)) for n, v in current]
        props += [(n, v) for n, v in wanted.items() if n not in dict(current)]
        if sorted(props) == sorted(current):
            continue
        attach.append({"host": name, "id": host.get("id"), "interface": nic,
                       "custom_properties": [{"name": n, "value": v} for n, v in props]})
    return {"attach": attach, "without": without}


class FilterModule(object):
    """The filters, by the names the playbooks use."""

    def filters(self):
        return {
            "bridge_isolation_engine_plan": engine_plan,
            "bridge_isolation_network_plan": network_plan,
            "bridge_isolation_device_plan": device_plan,
            "bridge_isolation_host_plan": host_plan,
        }
