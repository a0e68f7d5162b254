//! Network namespace create / enter / destroy.
//!
//! - create: `syscalls/sys_{enter,exit}_unshare` compare the thread's netns
//!   before and after unshare(CLONE_NEWNET); `tp_btf/sched_process_fork`
//!   compares parent and child for clone/clone3 with CLONE_NEWNET.
//! - enter: `syscalls/sys_{enter,exit}_setns`, per thread.
//! - destroy: `tp_btf/workqueue_execute_{start,end}` around the kernel's
//!   `cleanup_net` work (see the programs' module docs).

use super::{Hook, Probe, Sensor};

pub const SENSOR: Sensor = Sensor {
    name: "netns_lifecycle",
    probes: &[
        Probe {
            program: "netns_unshare_enter",
            hook: Hook::Tracepoint { category: "syscalls", name: "sys_enter_unshare" },
        },
        Probe {
            program: "netns_unshare_exit",
            hook: Hook::Tracepoint { category: "syscalls", name: "sys_exit_unshare" },
        },
        Probe {
            program: "netns_setns_enter",
            hook: Hook::Tracepoint { category: "syscalls", name: "sys_enter_setns" },
        },
        Probe {
            program: "netns_setns_exit",
            hook: Hook::Tracepoint { category: "syscalls", name: "sys_exit_setns" },
        },
        Probe { program: "netns_fork", hook: Hook::BtfTracepoint { name: "sched_process_fork" } },
        Probe {
            program: "netns_cleanup_start",
            hook: Hook::BtfTracepoint { name: "workqueue_execute_start" },
        },
        Probe {
            program: "netns_cleanup_end",
            hook: Hook::BtfTracepoint { name: "workqueue_execute_end" },
        },
    ],
};
