//! Network namespace lifecycle events: create, enter, destroy.

use crate::{Actor, EventHeader, NetnsRef};

/// Values of [`NetnsCreateEvent::via`]: the system call that made the namespace.
pub mod create_via {
    /// The creating syscall could not be told (a kernel thread, an unknown number).
    pub const UNKNOWN: u32 = 0;
    pub const UNSHARE: u32 = 1;
    pub const CLONE: u32 = 2;
    pub const CLONE3: u32 = 3;
    pub const FORK: u32 = 4;
    pub const VFORK: u32 = 5;
}

/// Values of [`NetnsDestroyEvent::seen_at`]: which pass of the cleanup saw it.
pub mod destroy_seen_at {
    /// Found with a zero refcount when the kernel's `cleanup_net` work started.
    pub const CLEANUP_START: u32 = 1;
    /// Dropped to zero while `cleanup_net` was already starting; found when it ended.
    pub const CLEANUP_END: u32 = 2;
    /// Seen in the kernel's per-namespace exit function (`proc_net_ns_exit`).
    pub const NET_EXIT: u32 = 3;
}

/// A task made a new network namespace (unshare, or clone with CLONE_NEWNET).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsCreateEvent {
    pub header: EventHeader,
    /// The task that made the system call.
    pub actor: Actor,
    /// The namespace created.
    pub netns: NetnsRef,
    /// The namespace the actor was in before.
    pub parent_netns: NetnsRef,
    /// One of [`create_via`].
    pub via: u32,
    /// For clone-family creates: the new task's pid and tid; 0 for unshare.
    pub child_pid: u32,
    pub child_tid: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers and integer arrays only, no implicit padding (size asserted below).
unsafe impl aya::Pod for NetnsCreateEvent {}

/// A task switched into a different, existing network namespace (setns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsEnterEvent {
    pub header: EventHeader,
    pub actor: Actor,
    /// The namespace entered.
    pub netns: NetnsRef,
    /// The namespace the thread left.
    pub from_netns: NetnsRef,
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers and integer arrays only, no implicit padding (size asserted below).
unsafe impl aya::Pod for NetnsEnterEvent {}

/// The kernel tore a network namespace down.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsDestroyEvent {
    pub header: EventHeader,
    /// The task running the cleanup: normally a kernel worker.
    pub actor: Actor,
    pub netns: NetnsRef,
    /// One of [`destroy_seen_at`].
    pub seen_at: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers and integer arrays only, no implicit padding (size asserted below).
unsafe impl aya::Pod for NetnsDestroyEvent {}

const _: () = assert!(core::mem::size_of::<NetnsCreateEvent>() == 16 + 48 + 16 + 16 + 16);
const _: () = assert!(core::mem::size_of::<NetnsEnterEvent>() == 16 + 48 + 16 + 16);
const _: () = assert!(core::mem::size_of::<NetnsDestroyEvent>() == 16 + 48 + 16 + 8);
