//! The binary contract between nstrail's eBPF programs and its agent.
//!
//! Every record the kernel side writes into the event ring buffer starts with
//! an [`EventHeader`]; its `kind` says which `#[repr(C)]` struct follows.
//! All structs use fixed-width fields, no `bool`, and explicit padding, and
//! their sizes are checked at compile time so both sides agree byte for byte.
#![no_std]

pub mod device;
pub mod layout;
pub mod netns;
pub mod sysctl;

pub use layout::KernelLayout;

/// Length of a task's `comm`, as in the kernel's `TASK_COMM_LEN`.
pub const TASK_COMM_LEN: usize = 16;

/// Values of [`EventHeader::kind`].
pub mod event_kind {
    pub const NETNS_CREATE: u32 = 1;
    pub const NETNS_ENTER: u32 = 2;
    pub const NETNS_DESTROY: u32 = 3;
    pub const SYSCTL_WRITE: u32 = 4;
    /// Who caused a link notification (see [`crate::device::LinkNotifyEvent`]).
    pub const LINK_NOTIFY: u32 = 5;
    /// A device moved between namespaces, seen in the kernel function that moves it.
    pub const DEVICE_MOVE: u32 = 6;
    /// A veth pair created with its ends in different namespaces.
    pub const VETH_CREATE: u32 = 7;
    /// One past the largest kind: the length of the lost-events counter array.
    pub const COUNT: u32 = 8;
}

/// Names of the maps the agent opens. One place, so neither side spells them twice.
pub mod map_name {
    pub const EVENTS: &str = "EVENTS";
    pub const LOST_EVENTS: &str = "LOST_EVENTS";
    pub const PROBE_ERRORS: &str = "PROBE_ERRORS";
    pub const SYSCTL_POLICY: &str = "SYSCTL_POLICY";
    /// The device sensor's own ring: who caused each link notification.
    pub const DEVICE_ACTORS: &str = "DEVICE_ACTORS";
    /// Switches userspace sets once it knows which probes attached
    /// (indices in [`crate::config_slot`]).
    pub const PROBE_CONFIG: &str = "PROBE_CONFIG";
}

/// Name of the global the agent fills with struct offsets of the running kernel.
pub const LAYOUT_GLOBAL: &str = "LAYOUT";
/// Name of the global holding the host network namespace's cookie (that of pid 1).
pub const HOST_NETNS_COOKIE_GLOBAL: &str = "HOST_NETNS_COOKIE";

/// Slots of the `PROBE_CONFIG` array (u32 each, 0 until userspace sets them).
pub mod config_slot {
    /// 1: a program on the return of the sysctl handler reports each
    /// write's outcome, so the cgroup/sysctl program parks writes for it;
    /// 0: it reports them at once (userspace checks the outcome).
    pub const SYSCTL_OUTCOME_PROBE: u32 = 0;
    pub const COUNT: u32 = 1;
}

/// Indices of the per-CPU `PROBE_ERRORS` counters.
pub mod probe_error {
    /// A `bpf_probe_read_kernel` of a task or namespace field failed.
    pub const KERNEL_READ: u32 = 0;
    /// The namespace list walk at cleanup hit its bound before the list ended.
    pub const NETNS_WALK_TRUNCATED: u32 = 1;
    /// The layout global was never filled in by the agent.
    pub const LAYOUT_MISSING: u32 = 2;
    /// A sysctl write could not be parked until its syscall returned.
    pub const SYSCTL_PENDING_FULL: u32 = 3;
    /// A policy glob hit its step bound; the rule was taken as not matching.
    pub const SYSCTL_GLOB_BOUND: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// First bytes of every record in the events ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`event_kind`].
    pub kind: u32,
    /// CPU the probe ran on.
    pub cpu: u32,
    /// `bpf_ktime_get_boot_ns()` when the probe ran (CLOCK_BOOTTIME).
    pub boot_ns: u64,
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers and integer arrays only, no implicit padding (size asserted below).
unsafe impl aya::Pod for EventHeader {}

/// The task that caused an event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    /// Process id (thread group id) in the initial pid namespace.
    pub pid: u32,
    /// Thread id in the initial pid namespace.
    pub tid: u32,
    /// Process id of the real parent.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    /// cgroup v2 id of the task (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    /// Thread name, NUL padded.
    pub comm: [u8; TASK_COMM_LEN],
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers and integer arrays only, no implicit padding (size asserted below).
unsafe impl aya::Pod for Actor {}

/// Identity of a network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetnsRef {
    /// nsfs inode number, as `readlink /proc/PID/ns/net` shows. Reused quickly.
    pub inode: u32,
    pub _pad: u32,
    /// `net->net_cookie`: unique for the boot, never reused. Equal to
    /// `SO_NETNS_COOKIE` and, on 6.18+, to the `NS_GET_ID` ioctl.
    pub cookie: u64,
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers and integer arrays only, no implicit padding (size asserted below).
unsafe impl aya::Pod for NetnsRef {}

const _: () = assert!(core::mem::size_of::<EventHeader>() == 16);
const _: () = assert!(core::mem::size_of::<Actor>() == 48);
const _: () = assert!(core::mem::size_of::<NetnsRef>() == 16);
