//! Sysctl writes (cgroup/sysctl on the cgroup2 root) and the write policy.

use crate::{Actor, EventHeader, NetnsRef, TASK_COMM_LEN};

/// Bytes kept of a sysctl's name (slash form, `net/ipv4/ip_forward`).
pub const SYSCTL_NAME_LEN: usize = 128;
/// Bytes kept of a value; longer ones are cut and flagged.
pub const SYSCTL_VALUE_LEN: usize = 128;
/// Rules the kernel side evaluates, at most.
pub const MAX_SYSCTL_RULES: u32 = 64;

/// Values of [`SysctlWriteEvent::result`].
pub mod sysctl_result {
    /// The write(2) carrying the value returned success.
    pub const APPLIED: u32 = 1;
    /// The write(2) failed (the handler refused the value); `errno` says why.
    pub const REJECTED: u32 = 2;
    /// nstrail's policy refused it; the writer got EPERM.
    pub const DENIED: u32 = 3;
    /// The write did not come back through a syscall nstrail watches
    /// (io_uring, splice): the outcome is unknown.
    pub const UNKNOWN: u32 = 4;
    /// No probe saw the handler return on this kernel: the agent checks
    /// the outcome itself (never in an event).
    pub const UNCHECKED: u32 = 5;
}

/// Bits of [`SysctlWriteEvent::flags`].
pub mod sysctl_flags {
    pub const NAME_TRUNCATED: u32 = 1;
    pub const OLD_TRUNCATED: u32 = 2;
    pub const NEW_TRUNCATED: u32 = 4;
    /// The current value could not be read.
    pub const OLD_UNAVAILABLE: u32 = 8;
}

/// Bytes of [`SysctlWriteEvent::text`]: name, old and new value, packed.
pub const SYSCTL_TEXT_LEN: usize = SYSCTL_NAME_LEN + 2 * SYSCTL_VALUE_LEN;

/// A write to a file under /proc/sys. In the ring buffer it is only as long
/// as its text: [`SYSCTL_WRITE_FIXED`] bytes, then `name_len + old_len + new_len`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysctlWriteEvent {
    pub header: EventHeader,
    pub actor: Actor,
    /// The writer's network namespace (the one a net.* write acts on).
    pub netns: NetnsRef,
    /// One of [`sysctl_result`].
    pub result: u32,
    /// Positive errno for `REJECTED` and `DENIED`.
    pub errno: u32,
    /// Bits of [`sysctl_flags`].
    pub flags: u32,
    pub name_len: u32,
    pub old_len: u32,
    pub new_len: u32,
    /// 1-based index of the policy rule that decided; 0 when none matched.
    pub rule: u32,
    pub _pad: u32,
    /// The name (slash form), then the old value, then the new one, each
    /// `*_len` bytes long, one after the other.
    pub text: [u8; SYSCTL_TEXT_LEN],
}

/// Bytes of a [`SysctlWriteEvent`] before its text.
pub const SYSCTL_WRITE_FIXED: usize = core::mem::size_of::<SysctlWriteEvent>() - SYSCTL_TEXT_LEN;

impl SysctlWriteEvent {
    /// Bytes of the record as written to the ring buffer.
    pub fn wire_len(&self) -> usize {
        SYSCTL_WRITE_FIXED + self.text_len()
    }

    fn text_len(&self) -> usize {
        (self.name_len as usize + self.old_len as usize + self.new_len as usize).min(SYSCTL_TEXT_LEN)
    }

    fn part(&self, start: usize, len: u32) -> &[u8] {
        let start = start.min(SYSCTL_TEXT_LEN);
        &self.text[start..(start + len as usize).min(SYSCTL_TEXT_LEN)]
    }

    pub fn name(&self) -> &[u8] {
        self.part(0, self.name_len)
    }

    pub fn old_value(&self) -> &[u8] {
        self.part(self.name_len as usize, self.old_len)
    }

    pub fn new_value(&self) -> &[u8] {
        self.part(self.name_len as usize + self.old_len as usize, self.new_len)
    }
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers and integer arrays only, no implicit padding (size asserted below).
unsafe impl aya::Pod for SysctlWriteEvent {}

impl Default for SysctlWriteEvent {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl SysctlWriteEvent {
    pub const fn zeroed() -> Self {
        Self {
            header: EventHeader { kind: 0, cpu: 0, boot_ns: 0 },
            actor: Actor { pid: 0, tid: 0, ppid: 0, uid: 0, gid: 0, _pad: 0, cgroup_id: 0, comm: [0; TASK_COMM_LEN] },
            netns: NetnsRef { inode: 0, _pad: 0, cookie: 0 },
            result: 0,
            errno: 0,
            flags: 0,
            name_len: 0,
            old_len: 0,
            new_len: 0,
            rule: 0,
            _pad: 0,
            text: [0; SYSCTL_TEXT_LEN],
        }
    }
}

/// Values of [`SysctlRule::action`].
pub mod rule_action {
    /// An empty slot: the end of the rule list.
    pub const NONE: u32 = 0;
    pub const ALLOW: u32 = 1;
    pub const DENY: u32 = 2;
}

/// Values of [`SysctlRule::netns_scope`].
pub mod netns_scope {
    pub const ANY: u32 = 0;
    /// Only writes from the host's network namespace (that of pid 1).
    pub const HOST: u32 = 1;
    /// Only writes from any other network namespace.
    pub const OTHER: u32 = 2;
}

/// One policy rule; the first rule that matches a write decides it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysctlRule {
    pub action: u32,
    pub netns_scope: u32,
    /// Glob over the slash-form name (`*` matches any run of bytes).
    pub pattern_len: u32,
    /// 0: any writer.
    pub comm_len: u32,
    pub pattern: [u8; SYSCTL_NAME_LEN],
    pub comm: [u8; TASK_COMM_LEN],
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers and integer arrays only, no implicit padding (size asserted below).
unsafe impl aya::Pod for SysctlRule {}

impl SysctlRule {
    pub const fn empty() -> Self {
        Self {
            action: rule_action::NONE,
            netns_scope: netns_scope::ANY,
            pattern_len: 0,
            comm_len: 0,
            pattern: [0; SYSCTL_NAME_LEN],
            comm: [0; TASK_COMM_LEN],
        }
    }
}

const _: () = assert!(core::mem::size_of::<SysctlWriteEvent>() == 16 + 48 + 16 + 32 + 3 * 128);
const _: () = assert!(SYSCTL_WRITE_FIXED == 112);
const _: () = assert!(core::mem::size_of::<SysctlRule>() == 16 + 128 + 16);
