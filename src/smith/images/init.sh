#!/bin/busybox sh
# Smith guest init (PID 1 of a test/dev guest image). Mounts the basics, loads the virtio modules, finds the
# channel the VMM gave this guest, and runs the guest agent; powers off when the agent is done.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "<3>smith: init started" > /dev/kmsg  # a sign of life on the console, even with `quiet`
mkdir -p /dev/pts /dev/shm /tmp /run /work /dev/virtio-ports
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /dev/shm

mark() { echo "<7>smith: $*" > /dev/kmsg; }  # boot timings: on the console with loglevel=8 (bench/vms.py)
mark mounted

# Module parameters on the kernel command line (name.param=...) reach only built-in drivers; hand them to the
# loadable ones here, in dependency order (modules.order was written by the image builder). (Debian's
# virtio_mmio takes no device= parameter: under QEMU it finds the devices in microvm's ACPI tables.) A kernel
# with everything built in (`smith image kernel`) has no modules.order: nothing to load.
cmdline=$(cat /proc/cmdline)
[ -s /lib/modules/modules.order ] && while read -r mod; do
    name=${mod##*/}
    name=${name%.ko}
    params=""
    for word in $cmdline; do
        case "$word" in
            "$name".*=*) params="$params ${word#"$name".}" ;;
        esac
    done
    # shellcheck disable=SC2086
    insmod "/lib/modules/$mod" $params 2>/dev/null
done < /lib/modules/modules.order
mark modules loaded

for port in /sys/class/virtio-ports/*; do
    [ -e "$port/name" ] || continue
    ln -sf "/dev/${port##*/}" "/dev/virtio-ports/$(cat "$port/name")"
done
ip link set lo up 2>/dev/null
if ip link set eth0 up 2>/dev/null; then  # a NIC: addresses from the command line (smith.ip=A/N smith.gw=G)
    for word in $cmdline; do
        case "$word" in
            smith.ip=*) ip addr add "${word#smith.ip=}" dev eth0 ;;
            smith.gw=*) ip route add default via "${word#smith.gw=}" ;;
            smith.dns=*) echo "nameserver ${word#smith.dns=}" > /etc/resolv.conf ;;
        esac
    done
fi
hostname smith-guest

# Disks by the name the host gave them: a root disk to switch to (a `smith rootfs` version, smith.root=<name>),
# and the job's scratch disk, mounted at /work. QEMU names a disk by its serial (virtio-blk's order is not the
# command line's); Firecracker cannot set a serial but attaches drives in order, so its names come as
# smith.vda=<name> smith.vdb=<name> ... on the command line.
disk_name() {
    for word in $cmdline; do
        case "$word" in "smith.${1##*/}="*) echo "${word#*=}"; return ;; esac
    done
    cat "$1/serial" 2>/dev/null
}
root_serial=""
for word in $cmdline; do
    case "$word" in smith.root=*) root_serial=${word#smith.root=} ;; esac
done
root_dev=""
for blk in /sys/block/vd*; do
    [ -e "$blk" ] || continue
    serial=$(disk_name "$blk")
    if [ -n "$root_serial" ] && [ "$serial" = "$root_serial" ]; then
        root_dev=/dev/${blk##*/}
    elif [ "$serial" = smith-scratch ] && [ -z "$root_serial" ]; then
        mount -t ext4 -o nosuid,nodev,noinit_itable "/dev/${blk##*/}" /work
    fi
done
if [ -n "$root_serial" ]; then
    mkdir -p /newroot
    if [ -n "$root_dev" ] && mount -t ext4 -o noatime "$root_dev" /newroot && [ -x /newroot/smith/init ]; then
        umount /dev/pts /dev/shm /tmp 2>/dev/null
        mount --move /dev /newroot/dev 2>/dev/null || umount /dev
        umount /proc /sys
        exec switch_root /newroot /smith/init
    fi
    echo "<3>smith: root disk $root_serial not found or not a smith rootfs" > /dev/kmsg
    reboot -f  # Firecracker exits on a reboot (reboot=k), QEMU on either (-no-reboot): the boot fails at once
fi

# The agent precompiled by the image builder (python does not cache a script's bytecode: compiling it under
# emulation costs a tenth of a second each boot), else its source.
agent_py=/smith/agent.py
[ -f /smith/agent.pyc ] && agent_py=/smith/agent.pyc
agent="/usr/bin/python3 -I -S $agent_py --workdir /work"
case " $cmdline " in  # a template guest (saved once ready): what restored jobs may need, imported before
    *" smith.template "*) agent="$agent --preload" ;;
esac
mark agent starting
# Ctrl+Alt+Del makes the kernel send PID 1 SIGINT, which a shell as PID 1 ignores unless it traps it: trap it
# and reboot (the agent runs in the background so that `wait` returns to the trap at once).
trap 'sync; reboot -f' INT
if [ -e /dev/virtio-ports/smith.config ]; then
    # QEMU: config arrives on one virtio-serial port, events leave on another.
    $agent --config-port /dev/virtio-ports/smith.config --out /dev/virtio-ports/smith.events --announce --set-clock --set-hosts &
else
    # Firecracker: config from MMDS over eth0, events on the serial console.
    ip route add 169.254.169.254 dev eth0 2>/dev/null
    # --set-net: a clone restored from a snapshot takes its own address and MAC from the config's envelope.
    $agent --mmds --out /dev/ttyS0 --announce --set-clock --set-hosts --set-net &
fi
wait $!
sync
# reboot, not poweroff: on x86 Firecracker keeps running after a guest's poweroff and exits on a reboot
# (with reboot=k on the kernel command line); QEMU exits on either (-no-reboot).
reboot -f
