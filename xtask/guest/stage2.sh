# nstrail VM guest, stage 2: pid 1 on the host's root (read-only 9p, tmpfs on
# /tmp /run /var/log /var/tmp), run by busybox sh from /run/nstrail-vm.
# Mounts what the probes need, points module autoloading at the unpacked
# kernel, runs every suite config.sh names, and powers the guest off.
# Its output goes to the virtio-serial port "nstrail.out" (guest.log on the
# host); each suite's output and exit status also go to the results share.
# Lines starting with "@@nstrail-vm " are read by xtask/src/vm.

HERE=/run/nstrail-vm
BB=$HERE/busybox
RESULTS=$HERE/results
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb

out=/dev/console
for port in /sys/class/virtio-ports/*; do
    if [ "$($BB cat "$port/name" 2>/dev/null)" = nstrail.out ]; then
        out=/dev/${port##*/}
    fi
done
exec >"$out" 2>&1 </dev/null

. $HERE/config.sh

mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t securityfs securityfs /sys/kernel/security
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t mqueue mqueue /dev/mqueue
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
$BB hostname nstrail-vm
$BB ip link set lo up

# Module autoloading (e.g. veth for `ip link add ... type veth`) from the
# unpacked kernel, with the host's kmod. The kernel calls "modprobe -q -- NAME";
# a NAME that no module or exact alias has (modprobe.names, made on the host:
# e.g. "netdev-veth0" for every device name `ip` looks up) fails at once
# instead of starting kmod. Each real request is logged to the console.
modprobe=/usr/sbin/modprobe
[ -x $modprobe ] || modprobe=/sbin/modprobe
cat >$HERE/modprobe <<EOF
#!$BB sh
for name; do :; done
case "\$name" in
*[!A-Za-z0-9_.-]*) ;;
*) $BB grep -qxF -e "\$name" $HERE/modprobe.names || exit 1 ;;
esac
echo "nstrail-vm: modprobe \$*" >/dev/kmsg
exec $modprobe -d '$MODULES_ROOT' "\$@"
EOF
$BB chmod 0755 $HERE/modprobe
echo $HERE/modprobe >/proc/sys/kernel/modprobe

btf=missing
[ -e /sys/kernel/btf/vmlinux ] && btf=present
echo "@@nstrail-vm ready kernel=$($BB uname -r) cpus=$($BB nproc) btf=$btf lsm=$($BB cat /sys/kernel/security/lsm 2>/dev/null) uptime=$($BB cut -d' ' -f1 /proc/uptime)"

# Every user process and thread: state, wait channel, kernel stack, command.
dump_processes() {
    for task in /proc/[0-9]*/task/[0-9]*; do
        # (proc files show size 0: read them to know.)
        command=$($BB tr '\0' ' ' <"$task/cmdline" 2>/dev/null | $BB cut -c1-200)
        [ -n "$command" ] || continue
        echo "  task ${task#/proc/} $($BB cat "$task/comm" 2>/dev/null) $($BB grep '^State:' "$task/status" 2>/dev/null) wchan=$($BB cat "$task/wchan" 2>/dev/null): $command"
        $BB head -6 "$task/stack" 2>/dev/null | $BB sed 's/^/      /'
    done
}

# run_suite NAME DIR EXE PACKAGE BUDGET_SECS -- TEST ARGS...
run_suite() {
    name=$1 dir=$2 exe=$3 package=$4 budget=$5
    shift 6
    echo "@@nstrail-vm begin $name"
    start=$($BB cut -d' ' -f1 /proc/uptime)
    {
        (
            cd "$dir" || exit 126
            export CARGO_MANIFEST_DIR="$dir" CARGO_PKG_NAME="$package" RUST_TEST_THREADS="$TEST_THREADS"
            exec $BB timeout -s KILL "$budget" "$exe" "$@"
        ) &
        suite=$!
        # A suite about to be killed for its budget shows where it hangs
        # (the sleep holds no end of the pipe, so killing the watchdog ends it).
        (
            dump_at=$((budget > 40 ? budget - 15 : budget))
            $BB sleep $dump_at >/dev/null 2>&1 </dev/null
            echo "nstrail-vm: $name still running after $dump_at s; its processes:"
            dump_processes
        ) &
        watchdog=$!
        wait $suite
        echo $? >"$RESULTS/$name.rc"
        $BB kill $watchdog 2>/dev/null
    } 2>&1 | tee "$RESULTS/$name.out"
    end=$($BB cut -d' ' -f1 /proc/uptime)
    rc=$($BB cat "$RESULTS/$name.rc" 2>/dev/null)
    echo "$start $end" >"$RESULTS/$name.uptime"
    # Nothing a suite left running (agents, helpers) may reach the next one.
    $BB kill -9 -1 2>/dev/null
    $BB sleep 1
    echo "@@nstrail-vm end $name rc=${rc:-none}"
}

suites
$BB sync
echo "@@nstrail-vm done"
echo done >"$RESULTS/done"
$BB sync
$BB poweroff -f
$BB sleep 5
$BB reboot -f
