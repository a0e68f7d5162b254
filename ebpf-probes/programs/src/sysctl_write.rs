//! Sysctl writes: a cgroup/sysctl program on the cgroup2 root sees every
//! /proc/sys access. Reads return at once. A write is described (name, old
//! and new value, writer, the namespace of the file written), checked
//! against the policy, and then either denied on the spot, or parked until
//! the sysctl handler returns (fexit/kretprobe on `proc_sys_call_handler`,
//! whose return value tells whether the kernel applied it), or, where no
//! such probe runs, reported at once for userspace to check the outcome.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_loop, bpf_sysctl_get_current_value, bpf_sysctl_get_name, bpf_sysctl_get_new_value,
    },
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
    programs::SysctlContext,
};
use nstrail_abi::{
    config_slot, event_kind, probe_error,
    sysctl::{
        netns_scope, rule_action, sysctl_flags, sysctl_result, SysctlRule, SysctlWriteEvent, MAX_SYSCTL_RULES,
        SYSCTL_NAME_LEN, SYSCTL_TEXT_LEN, SYSCTL_VALUE_LEN, SYSCTL_WRITE_FIXED,
    },
    NetnsRef,
};

use crate::{
    kernel::{current_actor, current_netns, header, layout, layout_ready, netns_ref, read_at},
    maps::{count_lost, count_probe_error, EVENTS},
};

/// Switches set by the agent (`nstrail_abi::config_slot`).
#[map]
pub static PROBE_CONFIG: Array<u32> = Array::with_max_entries(config_slot::COUNT, 0);

/// The write policy, filled by the agent; empty slots end the list.
#[map]
pub static SYSCTL_POLICY: Array<SysctlRule> = Array::with_max_entries(MAX_SYSCTL_RULES, 0);

/// Writes waiting for their syscall to return, keyed by pid_tgid.
#[map]
static SYSCTL_PENDING: LruHashMap<u64, SysctlWriteEvent> = LruHashMap::with_max_entries(4096, 0);

/// Scratch space for building an event (too large for the stack).
#[map]
static SYSCTL_SCRATCH: PerCpuArray<SysctlWriteEvent> = PerCpuArray::with_max_entries(1, 0);

/// The policy walk's state. It lives in map memory rather than on the stack
/// so the verifier treats it as unknown and checks the step callback once,
/// instead of simulating every step with exact values.
#[map]
static POLICY_WALK: PerCpuArray<PolicyWalk> = PerCpuArray::with_max_entries(1, 0);

/// Cookie of the host network namespace (pid 1's), set by the agent.
#[unsafe(no_mangle)]
static HOST_NETNS_COOKIE: u64 = 0;

const ALLOW: i32 = 1;
const DENY: i32 = 0;
const EPERM: u32 = 1;
/// Upper bound of glob steps over all rules for one write.
const MAX_POLICY_STEPS: u32 = 1 << 20;
const NO_STAR: u32 = u32::MAX;

pub fn on_sysctl(ctx: &SysctlContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    if unsafe { (*ctx.sysctl).write } == 0 || !layout_ready() {
        return ALLOW;
    }
    let Some(event) = SYSCTL_SCRATCH.get_ptr_mut(0) else {
        return ALLOW;
    };
    // SAFETY: per-CPU scratch slot, used only during this run.
    let event = unsafe { &mut *event };
    describe_write(ctx, event);

    let key = bpf_get_current_pid_tgid();
    // A write parked earlier by this thread that never came back through a
    // watched syscall: report it now as of unknown outcome.
    if let Some(stale) = SYSCTL_PENDING.get_ptr_mut(key) {
        // SAFETY: map value pointer, valid until removed below.
        unsafe { (*stale).result = sysctl_result::UNKNOWN };
        emit_from(stale);
        let _ = SYSCTL_PENDING.remove(key);
    }

    let rule = decide(event);
    event.rule = rule;
    let denied = rule != 0 && SYSCTL_POLICY.get(rule - 1).is_some_and(|r| r.action == rule_action::DENY);
    if denied {
        event.result = sysctl_result::DENIED;
        event.errno = EPERM;
        emit_from(event);
        return DENY;
    }
    if PROBE_CONFIG.get(config_slot::SYSCTL_OUTCOME_PROBE).copied().unwrap_or(0) == 0 {
        // No probe sees the handler return: userspace checks the outcome.
        event.result = sysctl_result::UNCHECKED;
        emit_from(event);
        return ALLOW;
    }
    if SYSCTL_PENDING.insert(key, &*event, 0).is_err() {
        count_probe_error(probe_error::SYSCTL_PENDING_FULL);
        event.result = sysctl_result::UNKNOWN;
        emit_from(event);
    }
    ALLOW
}

/// The namespace a write acts on: that of the /proc/sys file (where it was
/// opened), which need not be the writer's current one. Net sysctl tables
/// belong to a set inside `struct net` whose `is_seen` is the kernel's
/// `is_seen`; any other table acts on the whole system: the writer's
/// namespace is reported for those.
fn file_netns(ctx: &SysctlContext) -> Option<NetnsRef> {
    let is_seen_addr = layout!(sysctl_net_is_seen_addr);
    if is_seen_addr == 0 {
        return None;
    }
    // The context register points at the kernel's struct bpf_sysctl_kern.
    let kern = ctx.sysctl as u64;
    let head: u64 = read_at(kern, layout!(bpf_sysctl_kern_head)).ok()?;
    let set: u64 = read_at(head, layout!(ctl_table_header_set)).ok()?;
    if set == 0 {
        return None;
    }
    let is_seen: u64 = read_at(set, layout!(ctl_table_set_is_seen)).ok()?;
    if is_seen != is_seen_addr {
        return None;
    }
    netns_ref(set - layout!(net_sysctls) as u64).ok()
}

fn describe_write(ctx: &SysctlContext, event: &mut SysctlWriteEvent) {
    event.header = header(event_kind::SYSCTL_WRITE);
    event.actor = current_actor();
    event.netns = file_netns(ctx).or_else(|| current_netns().ok().map(|(_, n)| n)).unwrap_or_default();
    event.result = 0;
    event.errno = 0;
    event.flags = 0;
    event.rule = 0;
    let raw = ctx.sysctl;
    // SAFETY: the buffers are map memory of the stated sizes; the helpers
    // NUL-terminate and return the length or -E2BIG when they had to cut.
    // Packed one after the other (each helper writes at most its buffer
    // length, NUL included, which the next part overwrites); the masks are
    // no-ops on the values but show the verifier the offsets' bounds.
    let text = event.text.as_mut_ptr();
    // SAFETY: name at 0, 128 bytes.
    let name = unsafe { bpf_sysctl_get_name(raw, text.cast(), SYSCTL_NAME_LEN as u64, 0) };
    event.name_len = text_len(name, SYSCTL_NAME_LEN, sysctl_flags::NAME_TRUNCATED, &mut event.flags);
    let old_at = (event.name_len & 0x7f) as usize;
    // SAFETY: old value at most 127 in, 128 bytes: within the 384-byte text.
    let old = unsafe { bpf_sysctl_get_current_value(raw, text.add(old_at).cast(), SYSCTL_VALUE_LEN as u64) };
    event.old_len = if old < 0 && old != -E2BIG {
        event.flags |= sysctl_flags::OLD_UNAVAILABLE;
        0
    } else {
        text_len(old, SYSCTL_VALUE_LEN, sysctl_flags::OLD_TRUNCATED, &mut event.flags)
    };
    let new_at = ((event.name_len + event.old_len) & 0xff) as usize;
    // SAFETY: new value at most 254 in, 128 bytes: within the 384-byte text.
    let new = unsafe { bpf_sysctl_get_new_value(raw, text.add(new_at).cast(), SYSCTL_VALUE_LEN as u64) };
    event.new_len = text_len(new, SYSCTL_VALUE_LEN, sysctl_flags::NEW_TRUNCATED, &mut event.flags);
}

const E2BIG: i64 = 7;

/// Length of the text a sysctl helper wrote; -E2BIG means cut to the buffer.
fn text_len(ret: i64, buf_len: usize, truncated_flag: u32, flags: &mut u32) -> u32 {
    if ret == -E2BIG {
        *flags |= truncated_flag;
        (buf_len - 1) as u32
    } else if ret < 0 {
        0
    } else {
        (ret as u32).min(buf_len as u32 - 1)
    }
}

// ---- policy ---------------------------------------------------------------

/// State of the walk over rules; one glob step per `bpf_loop` iteration.
#[repr(C)]
struct PolicyWalk {
    rule: u32,
    /// Glob state for the current rule: pattern index, name index, last star.
    pi: u32,
    ni: u32,
    star: u32,
    mark: u32,
    /// 1-based index of the deciding rule, 0 while undecided.
    decided: u32,
    host: u32,
    _pad: u32,
}

/// Returns the 1-based index of the first rule matching the write, or 0.
fn decide(event: &SysctlWriteEvent) -> u32 {
    let first_used = SYSCTL_POLICY.get(0).is_some_and(|r| r.action != rule_action::NONE);
    if !first_used {
        return 0;
    }
    // SAFETY: plain static; volatile keeps the agent-set value.
    let host_cookie = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(HOST_NETNS_COOKIE)) };
    let Some(walk) = POLICY_WALK.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot, used only during this program run.
    unsafe {
        *walk = PolicyWalk {
            rule: 0,
            pi: 0,
            ni: 0,
            star: NO_STAR,
            mark: 0,
            decided: 0,
            host: (event.netns.cookie == host_cookie) as u32,
            _pad: 0,
        };
    }
    // SAFETY: the callback finds its state in POLICY_WALK itself.
    let steps = unsafe { bpf_loop(MAX_POLICY_STEPS, policy_step as *mut c_void, core::ptr::null_mut(), 0) };
    // SAFETY: as above.
    let decided = unsafe { (*walk).decided };
    if steps as u32 >= MAX_POLICY_STEPS && decided == 0 {
        count_probe_error(probe_error::SYSCTL_GLOB_BOUND);
    }
    decided
}

/// Starts the next rule; returns 1 (stop) when the list is over.
fn next_rule(walk: &mut PolicyWalk) -> i64 {
    walk.rule += 1;
    walk.pi = 0;
    walk.ni = 0;
    walk.star = NO_STAR;
    walk.mark = 0;
    if walk.rule >= MAX_SYSCTL_RULES {
        1
    } else {
        0
    }
}

unsafe extern "C" fn policy_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(walk) = POLICY_WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU slot owned by the running program.
    let walk = unsafe { &mut *walk };
    let Some(rule) = SYSCTL_POLICY.get(walk.rule) else {
        return 1;
    };
    if rule.action == rule_action::NONE {
        return 1;
    }
    let Some(event) = SYSCTL_SCRATCH.get(0) else {
        return 1;
    };
    // Cheap conditions first: scope and writer.
    if walk.pi == 0 && walk.ni == 0 && walk.star == NO_STAR && !writer_matches(rule, event, walk.host) {
        return next_rule(walk);
    }
    let plen = rule.pattern_len.min(SYSCTL_NAME_LEN as u32);
    let nlen = event.name_len.min(SYSCTL_NAME_LEN as u32);
    let pat = |i: u32| rule.pattern[name_index(i)];
    if walk.ni < nlen {
        let c = event.text[name_index(walk.ni)];
        if walk.pi < plen && pat(walk.pi) == b'*' {
            walk.star = walk.pi;
            walk.mark = walk.ni;
            walk.pi += 1;
        } else if walk.pi < plen && pat(walk.pi) == c {
            walk.pi += 1;
            walk.ni += 1;
        } else if walk.star != NO_STAR {
            walk.pi = walk.star + 1;
            walk.mark += 1;
            walk.ni = walk.mark;
        } else {
            return next_rule(walk);
        }
        return 0;
    }
    // Name consumed: only trailing stars may remain.
    if walk.pi < plen && pat(walk.pi) == b'*' {
        walk.pi += 1;
        return 0;
    }
    if walk.pi == plen {
        walk.decided = walk.rule + 1;
        return 1;
    }
    next_rule(walk)
}

/// An index into a name buffer the verifier can see is in bounds. LLVM
/// knows the indices are below the (clamped) lengths and would drop a plain
/// mask, but older verifiers (6.1) cannot follow a bound from comparing two
/// registers: the volatile read hides the range from LLVM, so the mask stays.
#[inline(always)]
fn name_index(i: u32) -> usize {
    // SAFETY: reading a local through a pointer to it.
    let i = unsafe { core::ptr::read_volatile(&i) };
    (i as usize) & (SYSCTL_NAME_LEN - 1)
}

fn writer_matches(rule: &SysctlRule, event: &SysctlWriteEvent, host: u32) -> bool {
    let scope_ok = match rule.netns_scope {
        netns_scope::HOST => host == 1,
        netns_scope::OTHER => host == 0,
        _ => true,
    };
    scope_ok && (rule.comm_len == 0 || rule.comm == event.actor.comm)
}

// ---- outcome: the sysctl handler returns ---------------------------------

/// `-ERESTARTNOINTR`: the handler asked for the syscall to be restarted
/// (some take rtnl_lock with trylock); the cgroup program will see the
/// write again.
const ERESTARTNOINTR: i64 = -513;

/// At the return of `proc_sys_call_handler` (fexit or kretprobe): the
/// outcome of the write this thread parked, if any. The cgroup program ran
/// inside this same call, so the pairing is exact; every write path
/// (write, writev, pwrite, splice, sendfile, io_uring) goes through it.
pub fn on_handler_return(ret: i64) {
    let key = bpf_get_current_pid_tgid();
    let Some(pending) = SYSCTL_PENDING.get_ptr_mut(key) else {
        return;
    };
    if ret == ERESTARTNOINTR {
        let _ = SYSCTL_PENDING.remove(key);
        return;
    }
    // SAFETY: map value pointer, valid until removed below.
    unsafe {
        if ret < 0 {
            (*pending).result = sysctl_result::REJECTED;
            (*pending).errno = (-ret) as u32;
        } else {
            (*pending).result = sysctl_result::APPLIED;
        }
    }
    emit_from(pending);
    let _ = SYSCTL_PENDING.remove(key);
}

/// Copies an event that lives in map memory into the ring buffer, only as
/// long as its text.
fn emit_from(event: *const SysctlWriteEvent) {
    // SAFETY: `event` points at a whole SysctlWriteEvent in map memory.
    let event = unsafe { &*event };
    let text = (event.name_len + event.old_len + event.new_len).min(SYSCTL_TEXT_LEN as u32) as usize;
    // SAFETY: at most the whole struct, which lives in map memory.
    let bytes = unsafe {
        core::slice::from_raw_parts((event as *const SysctlWriteEvent).cast::<u8>(), SYSCTL_WRITE_FIXED + text)
    };
    if EVENTS.output::<[u8]>(bytes, 0).is_err() {
        count_lost(event_kind::SYSCTL_WRITE);
    }
}
