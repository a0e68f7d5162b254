//! nstrail's kernel programs. Entry points here are thin: each calls the
//! handler in the module of its hook family (one module per sensor of
//! userspace/src/sensors), which counts its own failures.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod device_move;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod netns_lifecycle;
#[cfg(target_arch = "bpf")]
mod sysctl_write;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        macros::{btf_tracepoint, cgroup_sysctl, fentry, fexit, kprobe, kretprobe, socket_filter, tracepoint},
        programs::{
            BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RetProbeContext, SkBuffContext,
            SysctlContext, TracePointContext,
        },
    };

    use crate::{device_move, netns_lifecycle as lifecycle, sysctl_write};

    // ---- netns lifecycle where fentry or kprobes work ----

    #[fentry(function = "switch_task_namespaces")]
    pub fn netns_switch_fentry(ctx: FEntryContext) -> i32 {
        lifecycle::on_switch_start(ctx.arg(0), ctx.arg(1));
        0
    }

    #[fexit(function = "switch_task_namespaces")]
    pub fn netns_switch_fexit(_ctx: FExitContext) -> i32 {
        lifecycle::on_switch_end();
        0
    }

    #[kprobe]
    pub fn netns_switch_kprobe(ctx: ProbeContext) -> u32 {
        lifecycle::on_switch_start(ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0));
        0
    }

    #[kretprobe]
    pub fn netns_switch_kretprobe(_ctx: RetProbeContext) -> u32 {
        lifecycle::on_switch_end();
        0
    }

    #[fentry(function = "proc_net_ns_exit")]
    pub fn netns_exit_fentry(ctx: FEntryContext) -> i32 {
        lifecycle::on_net_exit(ctx.arg(0));
        0
    }

    #[kprobe]
    pub fn netns_exit_kprobe(ctx: ProbeContext) -> u32 {
        lifecycle::on_net_exit(ctx.arg(0).unwrap_or(0));
        0
    }

    // ---- netns lifecycle from syscall tracepoints and the cleanup worker ----

    #[tracepoint(category = "syscalls", name = "sys_enter_unshare")]
    pub fn netns_unshare_enter(ctx: TracePointContext) -> u32 {
        lifecycle::on_unshare_enter(&ctx);
        0
    }

    #[tracepoint(category = "syscalls", name = "sys_exit_unshare")]
    pub fn netns_unshare_exit(ctx: TracePointContext) -> u32 {
        lifecycle::on_unshare_exit(&ctx);
        0
    }

    #[tracepoint(category = "syscalls", name = "sys_enter_setns")]
    pub fn netns_setns_enter(ctx: TracePointContext) -> u32 {
        lifecycle::on_setns_enter(&ctx);
        0
    }

    #[tracepoint(category = "syscalls", name = "sys_exit_setns")]
    pub fn netns_setns_exit(ctx: TracePointContext) -> u32 {
        lifecycle::on_setns_exit(&ctx);
        0
    }

    #[btf_tracepoint(function = "sched_process_fork")]
    pub fn netns_fork(ctx: BtfTracePointContext) -> i32 {
        lifecycle::on_process_fork(&ctx);
        0
    }

    #[btf_tracepoint(function = "workqueue_execute_start")]
    pub fn netns_cleanup_start(ctx: BtfTracePointContext) -> i32 {
        lifecycle::on_work_start(&ctx);
        0
    }

    #[btf_tracepoint(function = "workqueue_execute_end")]
    pub fn netns_cleanup_end(ctx: BtfTracePointContext) -> i32 {
        lifecycle::on_work_end(&ctx);
        0
    }

    #[cgroup_sysctl]
    pub fn sysctl_access(ctx: SysctlContext) -> i32 {
        sysctl_write::on_sysctl(&ctx)
    }

    /// The outcome of a parked sysctl write, where fentry works.
    #[fexit(function = "proc_sys_call_handler")]
    pub fn sysctl_return_fexit(ctx: FExitContext) -> i32 {
        sysctl_write::on_handler_return(ctx.ret::<i64>().unwrap_or(0));
        0
    }

    /// The same where only kprobes work.
    #[kretprobe]
    pub fn sysctl_return_kretprobe(ctx: RetProbeContext) -> u32 {
        sysctl_write::on_handler_return(ctx.ret::<i64>());
        0
    }

    // ---- devices where fentry or kprobes work ----

    #[fentry(function = "__dev_change_net_namespace")]
    pub fn device_move_fentry(ctx: FEntryContext) -> i32 {
        device_move::on_move_start(ctx.arg(0), ctx.arg(1));
        0
    }

    #[fentry(function = "netdev_change_owner")]
    pub fn device_moved_fentry(ctx: FEntryContext) -> i32 {
        device_move::on_moved(ctx.arg(0));
        0
    }

    #[fexit(function = "__dev_change_net_namespace")]
    pub fn device_move_fexit(_ctx: FExitContext) -> i32 {
        device_move::on_move_end();
        0
    }

    #[kprobe]
    pub fn device_move_kprobe(ctx: ProbeContext) -> u32 {
        device_move::on_move_start(ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0));
        0
    }

    #[kretprobe]
    pub fn device_move_kretprobe(_ctx: RetProbeContext) -> u32 {
        device_move::on_move_end();
        0
    }

    #[fentry(function = "rtnl_newlink")]
    pub fn newlink_fentry(_ctx: FEntryContext) -> i32 {
        device_move::on_newlink_start();
        0
    }

    #[fexit(function = "rtnl_newlink")]
    pub fn newlink_fexit(_ctx: FExitContext) -> i32 {
        device_move::on_newlink_end();
        0
    }

    #[fexit(function = "register_netdevice")]
    pub fn registered_fexit(ctx: FExitContext) -> i32 {
        device_move::on_registered(ctx.arg(0), ctx.ret::<i64>().unwrap_or(-1));
        0
    }

    #[kprobe]
    pub fn newlink_kprobe(_ctx: ProbeContext) -> u32 {
        device_move::on_newlink_start();
        0
    }

    #[kretprobe]
    pub fn newlink_kretprobe(_ctx: RetProbeContext) -> u32 {
        device_move::on_newlink_end();
        0
    }

    #[kprobe]
    pub fn register_kprobe(ctx: ProbeContext) -> u32 {
        device_move::on_register_start(ctx.arg(0).unwrap_or(0));
        0
    }

    #[kretprobe]
    pub fn registered_kretprobe(ctx: RetProbeContext) -> u32 {
        device_move::on_registered(0, ctx.ret::<i64>());
        0
    }

    /// Attached to the agent's rtnetlink listener: who caused each link
    /// notification. Keeps every message.
    #[socket_filter]
    pub fn device_link_notify(ctx: SkBuffContext) -> i64 {
        device_move::on_link_notification(&ctx)
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
