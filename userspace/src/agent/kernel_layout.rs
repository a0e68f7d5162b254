//! Builds the [`KernelLayout`] the probes read kernel structures with, from
//! the running kernel's BTF and the address of `cleanup_net`.

use nstrail_abi::{layout::LAYOUT_MAGIC, KernelLayout};

use crate::sys::btf::{Btf, BtfError};

/// Syscall numbers of the architecture the agent runs on.
struct SyscallNumbers {
    clone: u32,
    clone3: u32,
    fork: u32,
    vfork: u32,
    unshare: u32,
    setns: u32,
}

#[cfg(target_arch = "x86_64")]
const SYSCALLS: SyscallNumbers =
    SyscallNumbers { clone: 56, clone3: 435, fork: 57, vfork: 58, unshare: 272, setns: 308 };
#[cfg(target_arch = "aarch64")]
const SYSCALLS: SyscallNumbers =
    SyscallNumbers { clone: 220, clone3: 435, fork: u32::MAX, vfork: u32::MAX, unshare: 97, setns: 268 };
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYSCALLS: SyscallNumbers = SyscallNumbers {
    clone: u32::MAX,
    clone3: u32::MAX,
    fork: u32::MAX,
    vfork: u32::MAX,
    unshare: u32::MAX,
    setns: u32::MAX,
};

/// Addresses of kernel functions the probes compare against, from kallsyms.
pub struct KernelSymbols {
    /// `cleanup_net`: the work the destroy walk waits for.
    pub cleanup_net: u64,
    /// `is_seen` of net/sysctl_net.c (0 when not found: sysctl writes are
    /// then taken to act on the writer's namespace).
    pub sysctl_net_is_seen: u64,
}

/// Member holding the syscall number in `struct pt_regs`, per architecture.
#[cfg(target_arch = "x86_64")]
const PT_REGS_SYSCALL_NR: &[&str] = &["orig_ax"];
#[cfg(target_arch = "aarch64")]
const PT_REGS_SYSCALL_NR: &[&str] = &["syscallno"];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const PT_REGS_SYSCALL_NR: &[&str] = &[];

/// Resolves every offset the probes need. Fails only for offsets without
/// which the lifecycle probes cannot work; the others are optional
/// (`u32::MAX`), and the probes that need them do without (the clone
/// syscall number: `via` "unknown"; device members: no device probes).
pub fn resolve(btf: &Btf, symbols: &KernelSymbols) -> Result<KernelLayout, BtfError> {
    let pt_regs_syscall_nr =
        btf.first_member_offset("pt_regs", PT_REGS_SYSCALL_NR).map(|(offset, _)| offset).unwrap_or(u32::MAX);
    let optional = |strukt: &str, path: &str| btf.member_offset(strukt, path).unwrap_or(u32::MAX);
    let sysctl = [
        optional("bpf_sysctl_kern", "head"),
        optional("ctl_table_header", "set"),
        optional("ctl_table_set", "is_seen"),
        optional("net", "sysctls"),
    ];
    // Without any one of them the file's namespace cannot be found.
    let sysctl_net_is_seen_addr = if sysctl.contains(&u32::MAX) { 0 } else { symbols.sysctl_net_is_seen };
    Ok(KernelLayout {
        magic: LAYOUT_MAGIC,
        task_nsproxy: btf.member_offset("task_struct", "nsproxy")?,
        task_real_parent: btf.member_offset("task_struct", "real_parent")?,
        task_tgid: btf.member_offset("task_struct", "tgid")?,
        task_pid: btf.member_offset("task_struct", "pid")?,
        nsproxy_net_ns: btf.member_offset("nsproxy", "net_ns")?,
        // Older kernels keep the inode directly in ns_common.inum too; the
        // path is the same, only its offset moves (6.18 added ns_type).
        net_inum: btf.member_offset("net", "ns.inum")?,
        net_cookie: btf.member_offset("net", "net_cookie")?,
        net_list: btf.member_offset("net", "list")?,
        // The netns refcount was renamed and moved over time.
        net_refcount: btf.first_member_offset("net", &["ns.__ns_ref", "ns.count", "count"])?.0,
        work_func: btf.member_offset("work_struct", "func")?,
        pt_regs_syscall_nr,
        cleanup_net_addr: symbols.cleanup_net,
        nr_clone: SYSCALLS.clone,
        nr_clone3: SYSCALLS.clone3,
        nr_fork: SYSCALLS.fork,
        nr_vfork: SYSCALLS.vfork,
        nr_unshare: SYSCALLS.unshare,
        nr_setns: SYSCALLS.setns,
        sysctl_net_is_seen_addr,
        bpf_sysctl_kern_head: sysctl[0],
        ctl_table_header_set: sysctl[1],
        ctl_table_set_is_seen: sysctl[2],
        net_sysctls: sysctl[3],
        netdev_name: optional("net_device", "name"),
        netdev_ifindex: optional("net_device", "ifindex"),
        netdev_net: optional("net_device", "nd_net.net"),
        netdev_link_ops: optional("net_device", "rtnl_link_ops"),
        link_ops_kind: optional("rtnl_link_ops", "kind"),
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::btf::tests::BtfBuilder;

    fn kernel_like(refcount_name: &str, inum_bits: u32) -> Btf {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let u64t = b.int("u64", 8);
        let ptr = b.ptr(int);
        b.strukt(
            "task_struct",
            256,
            &[("pid", int, 64 * 8), ("tgid", int, 68 * 8), ("real_parent", ptr, 80 * 8), ("nsproxy", ptr, 200 * 8)],
        );
        b.strukt("nsproxy", 64, &[("net_ns", ptr, 48 * 8)]);
        let ns_common = b.strukt("ns_common", 40, &[("inum", int, inum_bits), (refcount_name, int, inum_bits + 32)]);
        b.strukt("net", 512, &[("list", u64t, 16 * 8), ("ns", ns_common, 64 * 8), ("net_cookie", u64t, 300 * 8)]);
        b.strukt("work_struct", 32, &[("func", ptr, 24 * 8)]);
        b.strukt("pt_regs", 168, &[("orig_ax", u64t, 120 * 8), ("syscallno", u64t, 120 * 8)]);
        Btf::parse(&b.build()).unwrap()
    }

    #[test]
    fn resolves_offsets_of_this_kernel_shape() {
        for (name, inum_bits, inum) in [("__ns_ref", 24 * 8, 64 + 24), ("count", 16 * 8, 64 + 16)] {
            let symbols = KernelSymbols { cleanup_net: 0xffff_1234, sysctl_net_is_seen: 0xffff_5678 };
            let layout = resolve(&kernel_like(name, inum_bits), &symbols).unwrap();
            assert_eq!(layout.magic, LAYOUT_MAGIC);
            assert_eq!(layout.task_nsproxy, 200);
            assert_eq!(layout.task_tgid, 68);
            assert_eq!(layout.task_pid, 64);
            assert_eq!(layout.task_real_parent, 80);
            assert_eq!(layout.nsproxy_net_ns, 48);
            assert_eq!(layout.net_inum, inum);
            assert_eq!(layout.net_refcount, inum + 4);
            assert_eq!(layout.net_list, 16);
            assert_eq!(layout.net_cookie, 300);
            assert_eq!(layout.work_func, 24);
            assert_eq!(layout.pt_regs_syscall_nr, 120);
            assert_eq!(layout.cleanup_net_addr, 0xffff_1234);
            // This BTF has no sysctl or device structs: those probes do without.
            assert_eq!((layout.sysctl_net_is_seen_addr, layout.netdev_net), (0, u32::MAX));
        }
    }

    #[test]
    fn names_the_member_a_kernel_lacks() {
        let btf = kernel_like("unrelated", 0);
        let err = resolve(&btf, &KernelSymbols { cleanup_net: 1, sysctl_net_is_seen: 0 }).unwrap_err();
        assert_eq!(err.to_string(), "the kernel's struct net has no member ns.__ns_ref or ns.count or count");
    }
}
