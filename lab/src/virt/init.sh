#!/bin/busybox sh
# /init of the test guests (bridge_isolation_lab::virt): mount the kernel's file systems,
# load the virtio drivers, then serve commands on ttyS1 for the test (the console is ttyS0).
# A kernel command line with bi.poweroff stops at once (the KVM probe).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Addresses are usable at once: no duplicate address detection on any interface.
sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
for m in @MODULES@; do
    insmod "/lib/modules/$m.ko" || echo "init: cannot load $m"
done
ip link set lo up
if grep -qw bi.poweroff /proc/cmdline; then
    poweroff -f
fi
# One open of ttyS1 for good: input that arrives before the shell reads is kept, not echoed.
exec 0</dev/ttyS1 1>/dev/ttyS1 2>&1
stty -echo -onlcr
while :; do
    sh
done
