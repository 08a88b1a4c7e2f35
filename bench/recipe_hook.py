#!/usr/bin/python3
# The classic bridge-isolation recipe written as a VDSM hook, the way an administrator
# would write it (the baseline of bench/hook_latency.rs; docs/design.md §1, docs/benchmarks.md):
#
#   modprobe br_netfilter
#   sysctl -w net.bridge.bridge-nf-call-iptables=1
#   iptables -C FORWARD -i BR -o BR -j DROP || iptables -I FORWARD 1 -i BR -o BR -j DROP
#
# Install the same file as <hooks>/before_network_setup/50_recipe and
# <hooks>/after_vm_start/50_recipe: the hook point is the name of its directory.
# It reads the payload the way VDSM's `hooking` module does (json.load of the file named by
# _hook_json; xml.dom.minidom of the file named by _hook_domxml). Network custom property
# `bridge_isolation=true` isolates the network's bridge; the isolated bridges are written
# to a state file so that after_vm_start (which gets no network properties) knows them.
#
# It keeps the recipe's defects on purpose (docs/design.md §4): it cuts VMs off the
# uplink too, leaves IPv6/ARP open, needs br_netfilter. It is a cost baseline, not a fix.
import json
import os
import subprocess
import sys
from xml.dom import minidom

PROPERTY = 'bridge_isolation'
STATE_DIR = '/var/lib/vdsm-hook-bridge-isolation-recipe'
STATE_FILE = os.path.join(STATE_DIR, 'bridges')
MODPROBE = '/usr/sbin/modprobe'
SYSCTL = '/usr/sbin/sysctl'
IPTABLES = '/usr/sbin/iptables'


def read_json():
    # hooking.read_json()
    with open(os.environ['_hook_json']) as f:
        return json.load(f)


def read_domxml():
    # hooking.read_domxml()
    with open(os.environ['_hook_domxml'], 'rb') as f:
        return minidom.parseString(f.read().decode('utf-8'))


def recorded_bridges():
    try:
        with open(STATE_FILE) as f:
            return set(line.strip() for line in f if line.strip())
    except IOError:
        return set()


def record_bridges(bridges):
    if not os.path.isdir(STATE_DIR):
        os.makedirs(STATE_DIR, 0o755)
    tmp = STATE_FILE + '.tmp'
    with open(tmp, 'w') as f:
        f.write(''.join(b + '\n' for b in sorted(bridges)))
    os.rename(tmp, STATE_FILE)


def enable_br_netfilter():
    # Built into some kernels: modprobe may fail there, the sysctl tells.
    subprocess.call([MODPROBE, 'br_netfilter'],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.check_call([SYSCTL, '-q', '-w',
                           'net.bridge.bridge-nf-call-iptables=1'])


def rule(bridge):
    return ['FORWARD', '-i', bridge, '-o', bridge, '-j', 'DROP']


def ensure_rule(bridge):
    r = rule(bridge)
    if subprocess.call([IPTABLES, '-w', '-C'] + r,
                       stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL) != 0:
        subprocess.check_call([IPTABLES, '-w', '-I', r[0], '1'] + r[1:])


def delete_rule(bridge):
    r = rule(bridge)
    while subprocess.call([IPTABLES, '-w', '-D'] + r,
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) == 0:
        pass


def network_setup():
    networks = read_json()['request'].get('networks', {})
    recorded = recorded_bridges()
    wanted = set(recorded)
    isolate = []
    for name, attrs in networks.items():
        custom = attrs.get('custom', {})
        if custom.get(PROPERTY) == 'true' and not attrs.get('remove'):
            wanted.add(name)
            isolate.append(name)
        elif name in recorded:
            wanted.discard(name)
            delete_rule(name)
    if isolate:
        enable_br_netfilter()
        for bridge in isolate:
            ensure_rule(bridge)
    if wanted != recorded:
        record_bridges(wanted)


def vm_start():
    recorded = recorded_bridges()
    dom = read_domxml()
    for iface in dom.getElementsByTagName('interface'):
        if iface.getAttribute('type') != 'bridge':
            continue
        for source in iface.getElementsByTagName('source'):
            bridge = source.getAttribute('bridge')
            if bridge in recorded:
                ensure_rule(bridge)


def main():
    point = os.path.basename(os.path.dirname(os.path.abspath(sys.argv[0])))
    if len(sys.argv) > 1:
        point = sys.argv[1]
    try:
        if point in ('before_network_setup', 'after_network_setup'):
            network_setup()
        elif point == 'after_vm_start':
            vm_start()
        else:
            sys.stderr.write('recipe: nothing to do at %s\n' % point)
    except Exception as e:
        sys.stderr.write('recipe: %s: %s\n' % (point, e))
        sys.exit(2 if point.startswith('before_') else 1)


if __name__ == '__main__':
    main()
