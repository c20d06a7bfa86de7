#!/smith/busybox sh
# Smith's init inside a rootfs version (what the initramfs switches to; see images/init.sh). The root is the
# version's ext4 image behind this VM's copy-on-write layer; the job's scratch disk (serial smith-scratch) is
# mounted at /work. Runs the guest agent with the image's own python3; powers off when it is done.
bb=/smith/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
$bb mkdir -p /proc /sys /dev /tmp /run /work
$bb mount -t proc proc /proc 2>/dev/null
$bb mount -t sysfs sysfs /sys 2>/dev/null
$bb mount -t devtmpfs devtmpfs /dev 2>/dev/null
$bb mkdir -p /dev/pts /dev/shm /dev/virtio-ports
$bb mount -t devpts devpts /dev/pts 2>/dev/null
$bb mount -t tmpfs -o mode=1777 tmpfs /tmp
$bb mount -t tmpfs -o mode=1777 tmpfs /dev/shm
$bb mount -t tmpfs -o mode=0755 tmpfs /run
for port in /sys/class/virtio-ports/*; do
    [ -e "$port/name" ] || continue
    $bb ln -sf "/dev/${port##*/}" "/dev/virtio-ports/$($bb cat "$port/name")"
done
sticky=""
# Disks by the name the host gave them: QEMU's serials (virtio-blk's order is not the command line's), or
# Firecracker's smith.vdX=<name> (it cannot set a serial; its drives come in order).
disk_name() {
    for word in $($bb cat /proc/cmdline); do
        case "$word" in "smith.${1##*/}="*) echo "${word#*=}"; return ;; esac
    done
    $bb cat "$1/serial" 2>/dev/null
}
for blk in /sys/block/vd*; do
    [ -e "$blk" ] || continue
    serial=$(disk_name "$blk")
    case "$serial" in
        smith-scratch) $bb mount -t ext4 -o nosuid,nodev,noinit_itable "/dev/${blk##*/}" /work ;;
        smith-sticky-*)  # a sticky disk: where it goes is on the command line (smith.mount.<serial>=<path>)
            for word in $($bb cat /proc/cmdline); do
                case "$word" in
                    "smith.mount.$serial="*)
                        $bb mkdir -p "${word#*=}" && $bb mount -t ext4 "/dev/${blk##*/}" "${word#*=}"
                        sticky="$sticky ${word#*=}" ;;
                esac
            done ;;
    esac
done
$bb ip link set lo up 2>/dev/null
if $bb ip link set eth0 up 2>/dev/null; then
    for word in $($bb cat /proc/cmdline); do
        case "$word" in
            smith.ip=*) $bb ip addr add "${word#smith.ip=}" dev eth0 ;;
            smith.gw=*) $bb ip route add default via "${word#smith.gw=}" ;;
            smith.dns=*) echo "nameserver ${word#smith.dns=}" > /etc/resolv.conf ;;
        esac
    done
fi
$bb hostname smith-guest
agent="python3 -I -S /smith/agent.py --workdir /work"
case " $($bb cat /proc/cmdline) " in  # a template guest (saved once ready): imports made before it is
    *" smith.template "*) agent="$agent --preload" ;;
esac
if [ -e /dev/virtio-ports/smith.config ]; then
    $agent --config-port /dev/virtio-ports/smith.config --out /dev/virtio-ports/smith.events --announce --set-clock --set-hosts
else
    $bb ip route add 169.254.169.254 dev eth0 2>/dev/null
    $agent --mmds --out /dev/ttyS0 --announce --set-clock --set-hosts
fi
$bb sync
# Sticky disks are committed only after a clean shutdown: unmount them whole before powering off.
for path in $sticky; do $bb umount "$path" || $bb mount -o remount,ro "$path"; done
$bb umount /work 2>/dev/null
$bb sync
# reboot, not poweroff: on x86 Firecracker keeps running after a guest's poweroff and exits on a reboot (reboot=k
# on its kernel command line); QEMU exits on either (-no-reboot), with status 0.
$bb reboot -f
