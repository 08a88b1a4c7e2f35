"""A stand-in for the engine's `engine-config` in the playbook test (no oVirt engine here).

It keeps {key: [[version, value], ...]} in the JSON file $ENGINE_CONFIG_STATE, rows in
"database order", and behaves like ovirt-engine 4.5's engine-config for what the playbook
uses:

* `-g KEY` prints "KEY: VALUE version: V" per row (EngineConfigLogic.printAllValuesForKey);
* `-s KEY=VALUE --cver=V` (the value after the first '=', CLI parser) validates like
  CustomPropertiesValueHelper (network: every ';' item has '=', its regex compiles) and
  DeviceCustomPropertiesValueHelper (the device pattern, types in the engine's order),
  refuses an unknown version, and moves the updated row to the end, as PostgreSQL's heap
  order does after an UPDATE.

Every call is appended to $ENGINE_CONFIG_STATE.log, so a test sees what was run.
"""

import json
import os
import re
import sys

TYPES = ("disk|interface|video|graphics|sound|controller|balloon|channel|redir|redirdev|"
         "console|rng|smartcard|watchdog|hostdev|memory|tpm|mdev").split("|")
KV = "(([a-z_A-Z0-9])+)=(([^;])*)"
PROPS = "(" + KV + "(;" + KV + ")*;?)?"
DEVICE = re.compile("".join(r"((\{type=%s;prop=\{%s\}\}[;]?)?)" % (t, PROPS) for t in TYPES))


def valid(key, value):
    if key == "CustomDeviceProperties":
        return DEVICE.fullmatch(value) is not None
    items = value.split(";")
    while items and items[-1] == "":
        items.pop()
    for item in items or [""]:
        if "=" not in item:
            return False
        try:
            re.compile(item.split("=", 1)[1])
        except re.error:
            return False
    return True


def main(argv):
    path = os.environ["ENGINE_CONFIG_STATE"]
    with open(path + ".log", "a") as log:
        log.write(json.dumps(argv) + "\n")
    with open(path) as f:
        state = json.load(f)
    if len(argv) == 2 and argv[0] == "-g":
        key = argv[1]
        if key not in state:
            print("Error fetching %s value: no such entry. Please verify key name and property "
                  "file support." % key, file=sys.stderr)
            return 1
        for version, value in state[key]:
            sys.stdout.write("%s: %s version: %s\n" % (key, value, version))
        return 0
    if len(argv) == 3 and argv[0] == "-s" and argv[2].startswith("--cver="):
        key, value = argv[1].split("=", 1)
        version = argv[2][len("--cver="):]
        rows = state.get(key, [])
        if version not in [v for v, _ in rows]:
            print("Error setting %s's value. No such entry with version %s." % (key, version),
                  file=sys.stderr)
            return 1
        if not valid(key, value):
            print("Cannot set value %s to key %s. Invalid syntax" % (value, key), file=sys.stderr)
            return 1
        state[key] = [r for r in rows if r[0] != version] + [[version, value]]
        with open(path, "w") as f:
            json.dump(state, f)
        return 0
    print("unsupported arguments: %r" % (argv,), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
