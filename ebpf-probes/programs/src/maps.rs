//! Maps shared by the programs. Names match `nstrail_abi::map_name`.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use nstrail_abi::{event_kind, probe_error, NetnsRef};

/// Every event record. Userspace may resize it (`EbpfLoader::set_max_entries`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Actor records of link notifications, read by the device sensor's own
/// thread right before the notifications themselves.
#[map]
pub static DEVICE_ACTORS: RingBuf = RingBuf::with_byte_size(2 * 1024 * 1024, 0);

/// Records that did not fit in their ring buffer, per event kind.
#[map]
pub static LOST_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(event_kind::COUNT, 0);

/// Probe-side failures, indexed by `nstrail_abi::probe_error`.
#[map]
pub static PROBE_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(probe_error::COUNT, 0);

/// The netns a thread was in when it entered unshare/setns, keyed by pid_tgid.
#[map]
pub static NETNS_BEFORE_SYSCALL: LruHashMap<u64, NetnsRef> = LruHashMap::with_max_entries(16384, 0);

/// Upper bound of namespaces the cleanup walk visits in one pass.
pub const MAX_WALKED_NETNS: u32 = 65536;

/// One namespace seen when the current cleanup started: where it was, and
/// who it was (the memory may hold another namespace by the time the work
/// ends).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Sighting {
    pub net: u64,
    pub netns: NetnsRef,
}

/// Namespaces seen when the current cleanup started.
#[map]
pub static CLEANUP_SNAPSHOT: Array<Sighting> = Array::with_max_entries(MAX_WALKED_NETNS, 0);

/// State of the running `cleanup_net` work item (the netns workqueue is
/// ordered: one runs at a time).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CleanupState {
    /// Address of the running cleanup work_struct; 0 when none runs.
    pub work: u64,
    /// Entries of `CLEANUP_SNAPSHOT` filled for this run.
    pub snapshot_len: u32,
    pub _pad: u32,
}

#[map]
pub static CLEANUP_STATE: Array<CleanupState> = Array::with_max_entries(1, 0);

/// Cookies of namespaces already reported destroyed (cookies are never reused).
#[map]
pub static DESTROY_REPORTED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// Writes an event into the shared ring buffer, or counts it lost.
#[inline(always)]
pub fn emit<T: 'static>(kind: u32, event: T) {
    emit_to(&EVENTS, kind, event)
}

/// Writes a record into `ring`, or counts it lost.
#[inline(always)]
pub fn emit_to<T: 'static>(ring: &RingBuf, kind: u32, event: T) {
    match ring.reserve::<T>(0) {
        Some(mut slot) => {
            slot.write(event);
            slot.submit(0);
        }
        None => count_lost(kind),
    }
}

pub fn count_lost(kind: u32) {
    bump(&LOST_EVENTS, kind);
}

pub fn count_probe_error(which: u32) {
    bump(&PROBE_ERRORS, which);
}

fn bump(counters: &PerCpuArray<u64>, index: u32) {
    if let Some(counter) = counters.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, programs do not preempt each other on one CPU.
        unsafe { *counter += 1 };
    }
}
