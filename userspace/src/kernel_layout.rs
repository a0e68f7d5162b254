//! Builds the [`KernelLayout`] the probes read kernel structures with, from
//! the running kernel's BTF and /proc/kallsyms.

use nstrail_abi::{layout::LAYOUT_MAGIC, KernelLayout};

use crate::btf::{Btf, BtfError};

/// Syscall numbers of the architecture the agent runs on.
struct SyscallNumbers {
    clone: u32,
    clone3: u32,
    fork: u32,
    vfork: u32,
}

#[cfg(target_arch = "x86_64")]
const SYSCALLS: SyscallNumbers = SyscallNumbers { clone: 56, clone3: 435, fork: 57, vfork: 58 };
#[cfg(target_arch = "aarch64")]
const SYSCALLS: SyscallNumbers = SyscallNumbers { clone: 220, clone3: 435, fork: u32::MAX, vfork: u32::MAX };
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYSCALLS: SyscallNumbers =
    SyscallNumbers { clone: u32::MAX, clone3: u32::MAX, fork: u32::MAX, vfork: u32::MAX };

/// Member holding the syscall number in `struct pt_regs`, per architecture.
#[cfg(target_arch = "x86_64")]
const PT_REGS_SYSCALL_NR: &[&str] = &["orig_ax"];
#[cfg(target_arch = "aarch64")]
const PT_REGS_SYSCALL_NR: &[&str] = &["syscallno"];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const PT_REGS_SYSCALL_NR: &[&str] = &[];

/// Resolves every offset the probes need. Fails only for offsets without
/// which the lifecycle probes cannot work; the clone syscall number is
/// optional (its absence makes `via` "unknown" for clone-family creates).
pub fn resolve(btf: &Btf, cleanup_net_addr: u64) -> Result<KernelLayout, BtfError> {
    let pt_regs_syscall_nr = btf
        .first_member_offset("pt_regs", PT_REGS_SYSCALL_NR)
        .map(|(offset, _)| offset)
        .unwrap_or(u32::MAX);
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
        cleanup_net_addr,
        nr_clone: SYSCALLS.clone,
        nr_clone3: SYSCALLS.clone3,
        nr_fork: SYSCALLS.fork,
        nr_vfork: SYSCALLS.vfork,
    })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KallsymsError {
    #[error("/proc/kallsyms has no symbol {0}")]
    Missing(&'static str),
    #[error("/proc/kallsyms hides addresses (kernel.kptr_restrict); run as root with kptr_restrict <= 1")]
    Hidden,
}

/// Address of a text symbol in kallsyms-formatted text.
pub fn find_text_symbol(kallsyms: &str, name: &'static str) -> Result<u64, KallsymsError> {
    for line in kallsyms.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(addr), Some(kind), Some(sym)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        // A module symbol has a 4th field ("[module]"); cleanup_net is built in.
        if sym != name || !matches!(kind, "t" | "T") || fields.next().is_some() {
            continue;
        }
        let addr = u64::from_str_radix(addr, 16).map_err(|_| KallsymsError::Missing(name))?;
        return if addr == 0 { Err(KallsymsError::Hidden) } else { Ok(addr) };
    }
    Err(KallsymsError::Missing(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::tests::BtfBuilder;

    #[test]
    fn finds_cleanup_net() {
        let text = "ffffffff81e4f000 T something\nffffffff81e4fa40 t cleanup_net\nffffffffc0000000 t cleanup_net\t[mod]\n";
        assert_eq!(find_text_symbol(text, "cleanup_net"), Ok(0xffffffff81e4fa40));
        assert_eq!(find_text_symbol(text, "other"), Err(KallsymsError::Missing("other")));
        assert_eq!(find_text_symbol("0000000000000000 t cleanup_net\n", "cleanup_net"), Err(KallsymsError::Hidden));
    }

    fn kernel_like(refcount_name: &str, inum_bits: u32) -> Btf {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let u64t = b.int("u64", 8);
        let ptr = b.ptr(int);
        b.strukt("task_struct", 256, &[("pid", int, 64 * 8), ("tgid", int, 68 * 8), ("real_parent", ptr, 80 * 8), ("nsproxy", ptr, 200 * 8)]);
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
            let layout = resolve(&kernel_like(name, inum_bits), 0xffff_1234).unwrap();
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
        }
    }

    #[test]
    fn names_the_member_a_kernel_lacks() {
        let btf = kernel_like("unrelated", 0);
        let err = resolve(&btf, 1).unwrap_err();
        assert_eq!(err.to_string(), "the kernel's struct net has no member ns.__ns_ref or ns.count or count");
    }
}
