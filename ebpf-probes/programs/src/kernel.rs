//! Reading kernel structures with the offsets the agent resolved from the
//! running kernel's BTF (see `nstrail_abi::layout`).

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
    bpf_get_current_task_btf, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_task_pt_regs,
};
use nstrail_abi::{layout::LAYOUT_MAGIC, probe_error, Actor, EventHeader, KernelLayout, NetnsRef};

use crate::maps::count_probe_error;

/// Filled in by the agent at load time (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
pub(crate) static LAYOUT: KernelLayout = KernelLayout {
    magic: 0,
    task_nsproxy: 0,
    task_real_parent: 0,
    task_tgid: 0,
    task_pid: 0,
    nsproxy_net_ns: 0,
    net_inum: 0,
    net_cookie: 0,
    net_list: 0,
    net_refcount: 0,
    work_func: 0,
    pt_regs_syscall_nr: 0,
    cleanup_net_addr: 0,
    nr_clone: 0,
    nr_clone3: 0,
    nr_fork: 0,
    nr_vfork: 0,
    nr_unshare: 0,
    nr_setns: 0,
    sysctl_net_is_seen_addr: 0,
    bpf_sysctl_kern_head: 0,
    ctl_table_header_set: 0,
    ctl_table_set_is_seen: 0,
    net_sysctls: 0,
    netdev_name: 0,
    netdev_ifindex: 0,
    netdev_net: 0,
    netdev_link_ops: 0,
    link_ops_kind: 0,
    _pad: 0,
};

/// Reads one field of [`LAYOUT`] so the compiler cannot fold the zero default.
macro_rules! layout {
    ($field:ident) => {
        // SAFETY: LAYOUT is a plain static; volatile keeps the load.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(crate::kernel::LAYOUT.$field)) }
    };
}
pub(crate) use layout;

/// A kernel read failed; the reason was counted in `PROBE_ERRORS`.
pub struct ReadFailed;

/// True when the agent filled in the layout; counts a probe error otherwise.
pub fn layout_ready() -> bool {
    if layout!(magic) == LAYOUT_MAGIC {
        true
    } else {
        count_probe_error(probe_error::LAYOUT_MISSING);
        false
    }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read_at<T>(base: u64, offset: u32) -> Result<T, ReadFailed> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.map_err(|_| {
        count_probe_error(probe_error::KERNEL_READ);
        ReadFailed
    })
}

pub fn current_task() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_task() }
}

/// Address of the `struct net` a task is in, from `task->nsproxy->net_ns`.
/// Fails for a task whose nsproxy is already gone (exiting).
#[inline(always)]
pub fn task_net(task: u64) -> Result<u64, ReadFailed> {
    let nsproxy: u64 = read_at(task, layout!(task_nsproxy))?;
    if nsproxy == 0 {
        return Err(ReadFailed);
    }
    task_nsproxy_net(nsproxy)
}

#[inline(always)]
pub fn task_nsproxy(task: u64) -> Result<u64, ReadFailed> {
    read_at(task, layout!(task_nsproxy))
}

#[inline(always)]
pub fn task_nsproxy_net(nsproxy: u64) -> Result<u64, ReadFailed> {
    read_at(nsproxy, layout!(nsproxy_net_ns))
}

/// Inode and cookie of a `struct net`.
#[inline(always)]
pub fn netns_ref(net: u64) -> Result<NetnsRef, ReadFailed> {
    Ok(NetnsRef { inode: read_at(net, layout!(net_inum))?, _pad: 0, cookie: read_at(net, layout!(net_cookie))? })
}

/// The namespace the current thread is in.
#[inline(always)]
pub fn current_netns() -> Result<(u64, NetnsRef), ReadFailed> {
    let net = task_net(current_task())?;
    Ok((net, netns_ref(net)?))
}

/// Pid (tgid) and tid of a task.
#[inline(always)]
pub fn task_ids(task: u64) -> Result<(u32, u32), ReadFailed> {
    Ok((read_at(task, layout!(task_tgid))?, read_at(task, layout!(task_pid))?))
}

/// The syscall the current task is in (from its saved registers), or
/// `u32::MAX` when that cannot be told.
#[inline(always)]
pub fn current_syscall_nr() -> u32 {
    let offset = layout!(pt_regs_syscall_nr);
    if offset == u32::MAX {
        return u32::MAX;
    }
    // SAFETY: the helper returns the current task as a trusted pointer, and
    // bpf_task_pt_regs accepts exactly that.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    read_at::<u64>(regs, offset).map(|nr| nr as u32).unwrap_or(u32::MAX)
}

/// `N` bytes at `base + offset` (a name or kind buffer), zeros when unreadable.
#[inline(always)]
pub fn read_bytes<const N: usize>(base: u64, offset: u32) -> [u8; N] {
    if offset == u32::MAX {
        return [0; N];
    }
    read_at::<[u8; N]>(base, offset).unwrap_or([0; N])
}

/// Up to `N` bytes of the NUL-terminated string `ptr` points to.
#[inline(always)]
pub fn read_str<const N: usize>(ptr: u64) -> [u8; N] {
    let mut out = [0u8; N];
    if ptr != 0 {
        // SAFETY: the helper checks the address and stops at N bytes or NUL.
        let _ = unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(ptr as *const u8, &mut out) };
    }
    out
}

pub fn header(kind: u32) -> EventHeader {
    EventHeader {
        kind,
        // SAFETY: helpers without preconditions.
        cpu: unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() },
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
    }
}

/// The current task as the actor of an event.
#[inline(always)]
pub fn current_actor() -> Actor {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let task = current_task();
    let ppid = read_at::<u64>(task, layout!(task_real_parent))
        .and_then(|parent| read_at::<u32>(parent, layout!(task_tgid)))
        .unwrap_or(0);
    Actor {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        ppid,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        _pad: 0,
        // SAFETY: helper without preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}
