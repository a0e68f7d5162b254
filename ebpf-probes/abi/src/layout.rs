//! Struct member offsets of the running kernel, resolved by the agent from
//! /sys/kernel/btf/vmlinux at load time and handed to the programs as the
//! read-only global [`crate::LAYOUT_GLOBAL`]. Nothing here is taken from the
//! machine the probes were built on.

/// Set in [`KernelLayout::magic`] by the agent; zero means "never filled in".
pub const LAYOUT_MAGIC: u32 = 0x6e73_7472; // "nstr"

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    pub magic: u32,
    /// `task_struct.nsproxy`
    pub task_nsproxy: u32,
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.pid`
    pub task_pid: u32,
    /// `nsproxy.net_ns`
    pub nsproxy_net_ns: u32,
    /// `net.ns.inum`
    pub net_inum: u32,
    /// `net.net_cookie`
    pub net_cookie: u32,
    /// `net.list` (the `list_head` linking every namespace)
    pub net_list: u32,
    /// The namespace's reference count: `net.ns.count` or, on newer
    /// kernels, `net.ns.__ns_ref` (a `refcount_t` whose first word is the count).
    pub net_refcount: u32,
    /// `work_struct.func`
    pub work_func: u32,
    /// The syscall number saved in `pt_regs` (`orig_ax` on x86_64,
    /// `syscallno` on arm64); `u32::MAX` when unknown.
    pub pt_regs_syscall_nr: u32,
    /// Address of `cleanup_net` from /proc/kallsyms.
    pub cleanup_net_addr: u64,
    /// Syscall numbers of this architecture, for `create_via`.
    pub nr_clone: u32,
    pub nr_clone3: u32,
    pub nr_fork: u32,
    pub nr_vfork: u32,
    /// Syscall numbers telling a namespace switch by unshare from one by setns.
    pub nr_unshare: u32,
    pub nr_setns: u32,
    /// Address of the kernel's `is_seen` (net/sysctl_net.c): the sysctl
    /// sets of network namespaces have it as `is_seen`, so a /proc/sys
    /// file's namespace is found from its table header; 0 when unknown.
    pub sysctl_net_is_seen_addr: u64,
    /// `bpf_sysctl_kern.head` (the table header of the file written)
    pub bpf_sysctl_kern_head: u32,
    /// `ctl_table_header.set`
    pub ctl_table_header_set: u32,
    /// `ctl_table_set.is_seen`
    pub ctl_table_set_is_seen: u32,
    /// `net.sysctls` (the namespace's `ctl_table_set`)
    pub net_sysctls: u32,
    /// `net_device.name`, `.ifindex`, `.nd_net.net`, `.rtnl_link_ops`; and
    /// `rtnl_link_ops.kind` (the probes of device functions need them;
    /// `u32::MAX` when the kernel lacks one).
    pub netdev_name: u32,
    pub netdev_ifindex: u32,
    pub netdev_net: u32,
    pub netdev_link_ops: u32,
    pub link_ops_kind: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers and integer arrays only, no implicit padding (size asserted below).
unsafe impl aya::Pod for KernelLayout {}

const _: () = assert!(core::mem::size_of::<KernelLayout>() == 12 * 4 + 8 + 4 * 4 + 2 * 4 + 8 + 4 * 4 + 6 * 4);
