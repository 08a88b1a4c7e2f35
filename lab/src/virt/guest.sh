# Commands the test runs in a guest (/bin/bi) and, with busybox, in a lab namespace.
#   bi up MAC CIDR              wait (10 s at most) for the NIC with MAC, give it CIDR, bring
#                               it up, wait for its carrier and link-local address; print
#                               its name
#   bi probe IFACE NAME=IPV4=IPV6LL...
#                               probe each target from IFACE: IPv4 ping, IPv6 link-local
#                               ping, ARP, each waiting 2 s; print "R NAME ipv4|ipv6|arp 1|0"
#                               (a failed probe is tried once more)
bb=/bin/busybox
# Seconds a probe waits for its answer: TCG guests on a busy host answer late.
answer_within=2

up() {
    mac=$1 cidr=$2 i=0
    while [ $i -lt 100 ]; do
        for dev in /sys/class/net/*; do
            if [ "$($bb cat "$dev/address")" = "$mac" ]; then
                name=${dev##*/}
                $bb ip addr add "$cidr" dev "$name" && $bb ip link set dev "$name" up || return 1
                # Up means carrier and a link-local address too (no DAD: usable at once).
                i=0
                until [ "$($bb cat "$dev/operstate")" = up ] && $bb ip -6 addr show dev "$name" | $bb grep -q fe80; do
                    [ $i -lt 100 ] || { echo "$name: no carrier or link-local address" >&2; return 1; }
                    $bb sleep 0.1
                    i=$((i + 1))
                done
                echo "$name"
                return
            fi
        done
        $bb sleep 0.1
        i=$((i + 1))
    done
    echo "no NIC with MAC $mac" >&2
    return 1
}

twice() {
    "$@" >/dev/null 2>&1 || "$@" >/dev/null 2>&1
}

verdict() {
    if twice "$@"; then echo "R $name $proto 1"; else echo "R $name $proto 0"; fi
}

probe() {
    ifc=$1
    shift
    $bb ip neigh flush dev "$ifc" >/dev/null 2>&1
    for target in "$@"; do
        name=${target%%=*} rest=${target#*=}
        v4=${rest%%=*} v6=${rest#*=}
        proto=ipv4 verdict $bb ping -c 1 -W "$answer_within" "$v4" &
        proto=ipv6 verdict $bb ping -6 -c 1 -W "$answer_within" -I "$ifc" "$v6" &
        proto=arp verdict $bb arping -c 1 -w "$answer_within" -I "$ifc" "$v4" &
    done
    wait
}

cmd=$1
shift
case $cmd in
up) up "$@" ;;
probe) probe "$@" ;;
*) echo "usage: bi up MAC CIDR | bi probe IFACE NAME=IPV4=IPV6..." >&2; exit 2 ;;
esac
