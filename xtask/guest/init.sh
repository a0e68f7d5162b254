#!/bin/busybox sh
# nstrail VM guest, stage 1: /init of the initramfs that `cargo xtask vm-test`
# builds (busybox, the kernel's virtio/9p modules, this script, stage2.sh,
# config.sh). Loads the modules, mounts the host's / read-only over 9p with
# fresh tmpfs on the folders the tests write, mounts the one writable share
# (the results folder), and switches to the host root to run stage2.sh.
# Errors go to the serial console (console.log on the host).

/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin

mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "nstrail-vm: stage 1 failed: $*" >/dev/console
    sync
    poweroff -f
    sleep 5
    reboot -f
}

echo "nstrail-vm: stage 1 on $(uname -r)" >/dev/console
while read -r module; do
    [ -n "$module" ] || continue
    insmod "/modules/$module" || fail "insmod $module"
done </modules.list

mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /newroot || fail "mounting the host root (9p tag hostroot)"
for dir in tmp run var/log var/tmp; do
    [ -d "/newroot/$dir" ] || fail "the host has no /$dir to mount a tmpfs on"
done
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/tmp || fail "tmpfs /tmp"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run || fail "tmpfs /run"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/var/log || fail "tmpfs /var/log"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/var/tmp || fail "tmpfs /var/tmp"

mkdir -p /newroot/run/nstrail-vm/results
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /newroot/run/nstrail-vm/results || fail "mounting the results share"
cp /bin/busybox /stage2.sh /config.sh /modprobe.names /newroot/run/nstrail-vm/ || fail "copying stage 2"

mount --move /dev /newroot/dev || fail "moving /dev"
mount --move /proc /newroot/proc || fail "moving /proc"
mount --move /sys /newroot/sys || fail "moving /sys"
exec switch_root /newroot /run/nstrail-vm/busybox sh /run/nstrail-vm/stage2.sh
fail "switch_root"
