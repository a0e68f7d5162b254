//! nstrail's kernel programs. Entry points here are thin: each calls a
//! `try_*` function in the module of its hook family and counts failures.
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
        macros::{btf_tracepoint, cgroup_sysctl, socket_filter, tracepoint},
        programs::{BtfTracePointContext, SkBuffContext, SysctlContext, TracePointContext},
    };

    use crate::{device_move, netns_lifecycle as lifecycle, sysctl_write};

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

    /// Attached to the exit of every write-family syscall (write, pwrite64,
    /// writev, pwritev, pwritev2): the outcome of a parked sysctl write.
    #[tracepoint(category = "syscalls", name = "sys_exit_write")]
    pub fn sysctl_write_exit(ctx: TracePointContext) -> u32 {
        sysctl_write::on_write_exit(&ctx);
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
