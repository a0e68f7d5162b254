//! Sysctl writes: `cgroup/sysctl` on the cgroup2 root sees every /proc/sys
//! access (and applies the policy); the exit of each write-family syscall
//! tells whether a parked write was applied or rejected.

use super::{Hook, Probe, Sensor};

const fn write_exit(name: &'static str) -> Probe {
    Probe { program: "sysctl_write_exit", hook: Hook::Tracepoint { category: "syscalls", name } }
}

pub const SENSOR: Sensor = Sensor {
    name: "sysctl_write",
    probes: &[
        Probe { program: "sysctl_access", hook: Hook::CgroupSysctl },
        write_exit("sys_exit_write"),
        write_exit("sys_exit_pwrite64"),
        write_exit("sys_exit_writev"),
        write_exit("sys_exit_pwritev"),
        write_exit("sys_exit_pwritev2"),
    ],
};
