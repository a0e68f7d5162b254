//! Network namespace lifecycle: create (unshare, clone family), enter
//! (setns) and destroy (the kernel's `cleanup_net` work).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_loop, bpf_task_pt_regs},
    macros::map,
    maps::LruHashMap,
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use nstrail_abi::{
    event_kind,
    netns::{create_via, destroy_seen_at, NetnsCreateEvent, NetnsDestroyEvent, NetnsEnterEvent},
    probe_error, Actor, NetnsRef,
};

use crate::{
    kernel::{
        current_actor, current_netns, current_syscall_nr, current_task, header, layout, layout_ready, netns_ref,
        read_at, task_ids, task_net, task_nsproxy, task_nsproxy_net, ReadFailed,
    },
    maps::{
        count_probe_error, emit, Sighting, CLEANUP_SNAPSHOT, CLEANUP_STATE, DESTROY_REPORTED, MAX_WALKED_NETNS,
        NETNS_BEFORE_SYSCALL,
    },
};

const CLONE_NEWNET: u64 = 0x4000_0000;
/// Offset of the first argument in a `syscalls/sys_enter_*` record.
const SYSCALL_ENTER_ARG0: usize = 16;
/// Offset of the return value in a `syscalls/sys_exit_*` record.
const SYSCALL_EXIT_RET: usize = 16;

// ---- unshare(CLONE_NEWNET) ----------------------------------------------

pub fn on_unshare_enter(ctx: &TracePointContext) {
    // SAFETY: the tracepoint record holds the syscall arguments at fixed offsets.
    let flags: u64 = unsafe { ctx.read_at(SYSCALL_ENTER_ARG0) }.unwrap_or(0);
    if flags & CLONE_NEWNET != 0 {
        remember_netns_before_syscall();
    }
}

pub fn on_unshare_exit(ctx: &TracePointContext) {
    let Some((before, after, actor)) = netns_switched_by_syscall(ctx) else {
        return;
    };
    emit(
        event_kind::NETNS_CREATE,
        NetnsCreateEvent {
            header: header(event_kind::NETNS_CREATE),
            actor,
            netns: after,
            parent_netns: before,
            via: create_via::UNSHARE,
            child_pid: 0,
            child_tid: 0,
            _pad: 0,
        },
    );
}

// ---- setns ----------------------------------------------------------------

pub fn on_setns_enter(_ctx: &TracePointContext) {
    remember_netns_before_syscall();
}

pub fn on_setns_exit(ctx: &TracePointContext) {
    let Some((before, after, actor)) = netns_switched_by_syscall(ctx) else {
        return;
    };
    emit(
        event_kind::NETNS_ENTER,
        NetnsEnterEvent { header: header(event_kind::NETNS_ENTER), actor, netns: after, from_netns: before },
    );
}

fn remember_netns_before_syscall() {
    if !layout_ready() {
        return;
    }
    if let Ok((_, before)) = current_netns() {
        let _ = NETNS_BEFORE_SYSCALL.insert(bpf_get_current_pid_tgid(), before, 0);
    }
}

/// At a syscall's exit: the netns before and after, and the actor, when the
/// syscall succeeded and the thread's netns changed.
#[inline(always)]
fn netns_switched_by_syscall(ctx: &TracePointContext) -> Option<(NetnsRef, NetnsRef, Actor)> {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: value copied out before the entry is removed.
    let before = unsafe { NETNS_BEFORE_SYSCALL.get(key) }.copied()?;
    let _ = NETNS_BEFORE_SYSCALL.remove(key);
    // SAFETY: fixed offset of the return value in sys_exit records.
    let ret: i64 = unsafe { ctx.read_at(SYSCALL_EXIT_RET) }.unwrap_or(-1);
    if ret != 0 {
        return None;
    }
    let (_, after) = current_netns().ok()?;
    if after.cookie == before.cookie {
        return None;
    }
    Some((before, after, current_actor()))
}

// ---- unshare and setns at their commit: switch_task_namespaces ----------
//
// Where fentry or kprobes work: `switch_task_namespaces(task, new)` is the
// point of no return of both unshare and setns (called only after every
// failure point), so it fires for successful switches only, and nothing
// else on the system pays. Its entry notes the namespaces before and after
// (the old nsproxy may be freed inside it); its return reports, so the
// task is in the new namespace when the event is read, as with the syscall
// tracepoints. The syscall number in the task's saved registers tells
// unshare from setns; thread exit (new == NULL) and switches that keep the
// network namespace are skipped.

/// A switch in progress, keyed by pid_tgid.
#[repr(C)]
#[derive(Clone, Copy)]
struct Switch {
    before: NetnsRef,
    after: NetnsRef,
    via: u32,
    _pad: u32,
}

/// `Switch::via` of a setns (an enter); anything else is a `create_via`.
const VIA_SETNS: u32 = u32::MAX;

#[map]
static SWITCHING: LruHashMap<u64, Switch> = LruHashMap::with_max_entries(16384, 0);

pub fn on_switch_start(task: u64, new_nsproxy: u64) {
    if new_nsproxy == 0 || !layout_ready() {
        return;
    }
    let _ = try_switch_start(task, new_nsproxy);
}

fn try_switch_start(task: u64, new_nsproxy: u64) -> Result<(), ReadFailed> {
    let old_nsproxy = task_nsproxy(task)?;
    if old_nsproxy == 0 {
        return Ok(());
    }
    let before_net = task_nsproxy_net(old_nsproxy)?;
    let after_net = task_nsproxy_net(new_nsproxy)?;
    if before_net == after_net {
        return Ok(());
    }
    let nr = current_syscall_nr();
    let via = if nr == layout!(nr_unshare) {
        create_via::UNSHARE
    } else if nr == layout!(nr_setns) {
        VIA_SETNS
    } else {
        return Ok(());
    };
    let switch = Switch { before: netns_ref(before_net)?, after: netns_ref(after_net)?, via, _pad: 0 };
    let _ = SWITCHING.insert(bpf_get_current_pid_tgid(), switch, 0);
    Ok(())
}

pub fn on_switch_end() {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: copied out before the entry is removed.
    let Some(switch) = (unsafe { SWITCHING.get(key) }).copied() else {
        return;
    };
    let _ = SWITCHING.remove(key);
    if switch.via == VIA_SETNS {
        emit(
            event_kind::NETNS_ENTER,
            NetnsEnterEvent {
                header: header(event_kind::NETNS_ENTER),
                actor: current_actor(),
                netns: switch.after,
                from_netns: switch.before,
            },
        );
    } else {
        emit(
            event_kind::NETNS_CREATE,
            NetnsCreateEvent {
                header: header(event_kind::NETNS_CREATE),
                actor: current_actor(),
                netns: switch.after,
                parent_netns: switch.before,
                via: switch.via,
                child_pid: 0,
                child_tid: 0,
                _pad: 0,
            },
        );
    }
}

// ---- destruction at the namespace's own exit: proc_net_ns_exit ---------
//
// Where fentry or kprobes work: `proc_net_ns_exit(net)` is a pernet exit
// operation registered at boot, called once per dying namespace (from the
// cleanup worker) while the namespace is still readable. The unwinding of
// a failed `setup_net` calls it too, with references still held: only a
// zero reference count is a destroy.

pub fn on_net_exit(net: u64) {
    if !layout_ready() {
        return;
    }
    report_if_dead(net, destroy_seen_at::NET_EXIT, &current_actor());
}

// ---- clone / clone3 / fork with CLONE_NEWNET ----------------------------

pub fn on_process_fork(ctx: &BtfTracePointContext) {
    if !layout_ready() {
        return;
    }
    let parent: u64 = ctx.arg(0);
    let child: u64 = ctx.arg(1);
    let _ = try_process_fork(parent, child);
}

fn try_process_fork(parent: u64, child: u64) -> Result<(), ReadFailed> {
    // Cheap test first: without any CLONE_NEW* flag the child shares the nsproxy.
    let parent_nsproxy = task_nsproxy(parent)?;
    let child_nsproxy = task_nsproxy(child)?;
    if parent_nsproxy == child_nsproxy || child_nsproxy == 0 || parent_nsproxy == 0 {
        return Ok(());
    }
    let parent_net = task_nsproxy_net(parent_nsproxy)?;
    let child_net = task_nsproxy_net(child_nsproxy)?;
    if parent_net == child_net {
        return Ok(());
    }
    let (child_pid, child_tid) = task_ids(child)?;
    emit(
        event_kind::NETNS_CREATE,
        NetnsCreateEvent {
            header: header(event_kind::NETNS_CREATE),
            actor: current_actor(),
            netns: netns_ref(child_net)?,
            parent_netns: netns_ref(parent_net)?,
            via: clone_syscall(parent),
            child_pid,
            child_tid,
            _pad: 0,
        },
    );
    Ok(())
}

/// Which clone-family syscall the parent is in, from its saved registers.
fn clone_syscall(parent: u64) -> u32 {
    let offset = layout!(pt_regs_syscall_nr);
    if offset == u32::MAX {
        return create_via::UNKNOWN;
    }
    // SAFETY: `parent` is the trusted task pointer the tracepoint passed in.
    let regs = unsafe { bpf_task_pt_regs(parent as *mut _) } as u64;
    let Ok(nr) = read_at::<u64>(regs, offset) else {
        return create_via::UNKNOWN;
    };
    let nr = nr as u32;
    if nr == layout!(nr_clone) {
        create_via::CLONE
    } else if nr == layout!(nr_clone3) {
        create_via::CLONE3
    } else if nr == layout!(nr_fork) {
        create_via::FORK
    } else if nr == layout!(nr_vfork) {
        create_via::VFORK
    } else {
        create_via::UNKNOWN
    }
}

// ---- destruction: the kernel's cleanup_net work ------------------------
//
// No tracepoint names a dying namespace. The kernel queues namespaces whose
// refcount reached zero and tears them down in batches in `cleanup_net`, run
// one at a time on the ordered "netns" workqueue. When that work starts we
// walk every namespace (net_namespace_list, reached through init_net) and
// report those with a zero refcount. A namespace whose count drops to zero
// while the walk runs may still be torn down by this same run; so the walk
// remembers every namespace it saw (address, inode and cookie), and when the
// work ends it reports those that now have a zero refcount. The run frees
// the namespaces it tore down before it ends, and a namespace created
// meanwhile may take the freed memory: a remembered address that no longer
// holds the remembered cookie (or cannot be read) was freed, so that
// namespace is reported with the identity remembered. Cookies are never
// reused, so `DESTROY_REPORTED` makes each report happen exactly once.

const LIST_HEAD_PREV: u32 = 8;

#[repr(C)]
struct WalkContext {
    /// `&net_namespace_list`: where the walk stops.
    head: u64,
    /// The next `list_head` to visit.
    node: u64,
    /// Namespaces visited.
    visited: u32,
    _pad: u32,
    actor: Actor,
}

pub fn on_work_start(ctx: &BtfTracePointContext) {
    let work: u64 = ctx.arg(0);
    let Ok(func) = read_at::<u64>(work, layout!(work_func)) else {
        return;
    };
    if func != layout!(cleanup_net_addr) || !layout_ready() {
        return;
    }
    if try_cleanup_start(work).is_err() {
        warn!(ctx, "netns cleanup walk could not start; destroys may be missed");
    }
}

fn try_cleanup_start(work: u64) -> Result<(), ReadFailed> {
    let state = CLEANUP_STATE.get_ptr_mut(0).ok_or(ReadFailed)?;
    // Kernel workers run in init_net, the first entry of net_namespace_list,
    // so init_net.list.prev is the list head itself.
    let init_net = task_net(current_task())?;
    let init_node = init_net + layout!(net_list) as u64;
    let head: u64 = read_at(init_node, LIST_HEAD_PREV)?;
    let mut walk = WalkContext { head, node: read_at(head, 0)?, visited: 0, _pad: 0, actor: current_actor() };
    // SAFETY: the callback only touches `walk` through the pointer given here.
    unsafe {
        bpf_loop(MAX_WALKED_NETNS, walk_at_start as *mut c_void, &mut walk as *mut WalkContext as *mut c_void, 0);
    }
    if walk.node != walk.head {
        count_probe_error(probe_error::NETNS_WALK_TRUNCATED);
    }
    // SAFETY: single-entry array slot; cleanup runs are serialised by the kernel.
    unsafe {
        (*state).work = work;
        (*state).snapshot_len = walk.visited;
    }
    Ok(())
}

unsafe extern "C" fn walk_at_start(index: u64, walk: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer try_cleanup_start gave it.
    let walk = unsafe { &mut *(walk as *mut WalkContext) };
    if walk.node == walk.head || walk.node == 0 {
        return 1;
    }
    let net = walk.node - layout!(net_list) as u64;
    if let Some(slot) = CLEANUP_SNAPSHOT.get_ptr_mut(index as u32) {
        // An unreadable namespace is remembered as nothing (cookie 0).
        let netns = netns_ref(net).unwrap_or_default();
        // SAFETY: array slot owned by the single running cleanup.
        unsafe { *slot = Sighting { net, netns } };
    }
    walk.visited = index as u32 + 1;
    report_if_dead(net, destroy_seen_at::CLEANUP_START, &walk.actor);
    match read_at::<u64>(walk.node, 0) {
        Ok(next) => {
            walk.node = next;
            0
        }
        Err(ReadFailed) => 1,
    }
}

pub fn on_work_end(ctx: &BtfTracePointContext) {
    let work: u64 = ctx.arg(0);
    let Some(state) = CLEANUP_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: single-entry array slot; cleanup runs are serialised.
    let (running, len) = unsafe { ((*state).work, (*state).snapshot_len) };
    if running == 0 || running != work {
        return;
    }
    let mut actor = current_actor();
    // SAFETY: the callback only touches `actor` through the pointer given here.
    unsafe {
        bpf_loop(len, walk_at_end as *mut c_void, &mut actor as *mut Actor as *mut c_void, 0);
        (*state).work = 0;
        (*state).snapshot_len = 0;
    }
}

unsafe extern "C" fn walk_at_end(index: u64, actor: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer on_work_end gave it.
    let actor = unsafe { &*(actor as *const Actor) };
    let Some(seen) = CLEANUP_SNAPSHOT.get(index as u32).copied() else {
        return 1;
    };
    if seen.netns.cookie == 0 {
        return 0;
    }
    match read_at::<u64>(seen.net, layout!(net_cookie)) {
        Ok(cookie) if cookie == seen.netns.cookie => report_if_dead(seen.net, destroy_seen_at::CLEANUP_END, actor),
        // Freed by this run (and maybe taken by a newer namespace).
        _ => report_destroyed(seen.netns, destroy_seen_at::CLEANUP_END, actor),
    }
    0
}

#[inline(always)]
fn report_if_dead(net: u64, seen_at: u32, actor: &Actor) {
    let Ok(refcount) = read_at::<u32>(net, layout!(net_refcount)) else {
        return;
    };
    if refcount != 0 {
        return;
    }
    let Ok(netns) = netns_ref(net) else {
        return;
    };
    report_destroyed(netns, seen_at, actor);
}

#[inline(always)]
fn report_destroyed(netns: NetnsRef, seen_at: u32, actor: &Actor) {
    // SAFETY: presence test only.
    if unsafe { DESTROY_REPORTED.get(netns.cookie) }.is_some() {
        return;
    }
    let _ = DESTROY_REPORTED.insert(netns.cookie, 1, 0);
    emit(
        event_kind::NETNS_DESTROY,
        NetnsDestroyEvent { header: header(event_kind::NETNS_DESTROY), actor: *actor, netns, seen_at, _pad: 0 },
    );
}
