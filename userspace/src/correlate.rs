//! Gives kernel events their place in the agent's stream: a sequence number,
//! a wall-clock time, and userspace types.

use nstrail_abi::{
    netns::{create_via, destroy_seen_at},
    sysctl::{sysctl_flags, sysctl_result, SysctlWriteEvent},
    NetnsRef,
};

use crate::{
    decode::KernelEvent,
    event::{Actor, Child, CreateVia, DestroySeenAt, Event, EventBody, Netns, SysctlResult},
    netns_state::SocketCounts,
    sysctl_text::{dotted_name, value_text},
};

/// Converts CLOCK_BOOTTIME nanoseconds (what the probes stamp) to wall time.
pub struct WallClock {
    /// realtime - boottime, in ns, refreshed now and then to follow clock steps.
    offset_ns: i128,
    refreshed_at_boot_ns: u64,
}

const CLOCK_REFRESH_NS: u64 = 1_000_000_000;

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl WallClock {
    pub fn new() -> Self {
        let mut clock = Self { offset_ns: 0, refreshed_at_boot_ns: 0 };
        clock.refresh();
        clock
    }

    fn refresh(&mut self) {
        let boot = clock_ns(libc::CLOCK_BOOTTIME);
        self.offset_ns = clock_ns(libc::CLOCK_REALTIME) - boot;
        self.refreshed_at_boot_ns = boot as u64;
    }

    /// Unix time in ns for a boot-time stamp.
    pub fn unix_ns(&mut self, boot_ns: u64) -> i128 {
        if boot_ns > self.refreshed_at_boot_ns + CLOCK_REFRESH_NS {
            self.refresh();
        }
        boot_ns as i128 + self.offset_ns
    }

    /// The current time as an RFC 3339 string.
    pub fn now_rfc3339() -> String {
        rfc3339(clock_ns(libc::CLOCK_REALTIME))
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

/// RFC 3339, UTC, always nine fractional digits: `2026-11-28T00:35:04.123456789Z`.
pub fn rfc3339(unix_ns: i128) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

pub fn netns(r: NetnsRef) -> Netns {
    Netns::new(r.inode, r.cookie)
}

pub fn actor(a: &nstrail_abi::Actor) -> Actor {
    let end = a.comm.iter().position(|b| *b == 0).unwrap_or(a.comm.len());
    Actor {
        pid: a.pid,
        tid: a.tid,
        ppid: a.ppid,
        uid: a.uid,
        gid: a.gid,
        comm: String::from_utf8_lossy(&a.comm[..end]).into_owned(),
        cgroup_id: a.cgroup_id,
    }
}

fn via(v: u32) -> CreateVia {
    match v {
        create_via::UNSHARE => CreateVia::Unshare,
        create_via::CLONE => CreateVia::Clone,
        create_via::CLONE3 => CreateVia::Clone3,
        create_via::FORK => CreateVia::Fork,
        create_via::VFORK => CreateVia::Vfork,
        _ => CreateVia::Unknown,
    }
}

fn sysctl_write(e: &SysctlWriteEvent, sockets: &mut SocketCounts) -> EventBody {
    let text = |bytes: &[u8], len: u32| value_text(&bytes[..(len as usize).min(bytes.len())]);
    let sysctl = dotted_name(&e.name[..(e.name_len as usize).min(e.name.len())]);
    let result = match e.result {
        sysctl_result::APPLIED => SysctlResult::Applied,
        sysctl_result::REJECTED => SysctlResult::Rejected,
        sysctl_result::DENIED => SysctlResult::Denied,
        _ => SysctlResult::Unknown,
    };
    let netns = netns(e.netns);
    let tcp_sockets_in_use = if sysctl.starts_with("net.") {
        sockets.tcp_in_use(netns.id, netns.inode, e.actor.pid, e.actor.tid)
    } else {
        None
    };
    EventBody::SysctlWrite {
        old: (e.flags & sysctl_flags::OLD_UNAVAILABLE == 0).then(|| text(&e.old_value, e.old_len)),
        new: text(&e.new_value, e.new_len),
        truncated: e.flags
            & (sysctl_flags::NAME_TRUNCATED | sysctl_flags::OLD_TRUNCATED | sysctl_flags::NEW_TRUNCATED)
            != 0,
        errno: matches!(result, SysctlResult::Rejected | SysctlResult::Denied).then_some(e.errno),
        rule: (e.rule != 0).then_some(e.rule),
        result,
        sysctl,
        netns,
        actor: actor(&e.actor),
        tcp_sockets_in_use,
    }
}

/// Numbers records and stamps them with wall time.
pub struct Correlator {
    next_seq: u64,
    clock: WallClock,
    sockets: SocketCounts,
}

impl Correlator {
    pub fn new() -> Self {
        Self { next_seq: 1, clock: WallClock::new(), sockets: SocketCounts::default() }
    }

    /// A record that did not come from the kernel (lost counts, agent state).
    pub fn agent_record(&mut self, body: EventBody) -> Event {
        self.stamp(WallClock::now_rfc3339(), body)
    }

    /// An event built by the agent from what the kernel saw at `boot_ns`.
    pub fn record_at(&mut self, boot_ns: u64, body: EventBody) -> Event {
        let ts = rfc3339(self.clock.unix_ns(boot_ns));
        self.stamp(ts, body)
    }

    /// The event of a kernel record; None for records that only annotate
    /// others (link notification actors).
    pub fn kernel_record(&mut self, event: &KernelEvent) -> Option<Event> {
        let (boot_ns, body) = match event {
            KernelEvent::NetnsCreate(e) => (
                e.header.boot_ns,
                EventBody::NetnsCreate {
                    netns: netns(e.netns),
                    actor: actor(&e.actor),
                    parent_netns: netns(e.parent_netns),
                    via: via(e.via),
                    child: (e.child_tid != 0).then_some(Child { pid: e.child_pid, tid: e.child_tid }),
                },
            ),
            KernelEvent::NetnsEnter(e) => (
                e.header.boot_ns,
                EventBody::NetnsEnter {
                    netns: netns(e.netns),
                    actor: actor(&e.actor),
                    from_netns: netns(e.from_netns),
                },
            ),
            KernelEvent::NetnsDestroy(e) => (
                e.header.boot_ns,
                EventBody::NetnsDestroy {
                    netns: netns(e.netns),
                    actor: actor(&e.actor),
                    seen_at: if e.seen_at == destroy_seen_at::CLEANUP_END {
                        DestroySeenAt::CleanupEnd
                    } else {
                        DestroySeenAt::CleanupStart
                    },
                },
            ),
            KernelEvent::SysctlWrite(e) => (e.header.boot_ns, sysctl_write(e, &mut self.sockets)),
            KernelEvent::LinkNotify(_) => return None,
        };
        self.remember(&body);
        Some(self.record_at(boot_ns, body))
    }

    fn remember(&mut self, body: &EventBody) {
        if let EventBody::NetnsDestroy { netns, .. } = body {
            self.sockets.forget(netns.id);
        }
    }

    fn stamp(&mut self, ts: String, body: EventBody) -> Event {
        let seq = self.next_seq;
        self.next_seq += 1;
        Event { ts, seq, body }
    }
}

impl Default for Correlator {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nstrail_abi::{netns::NetnsCreateEvent, EventHeader};

    #[test]
    fn formats_rfc3339_with_nanoseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_795_826_104_000_000_123), "2026-11-28T00:35:04.000000123Z");
    }

    #[test]
    fn numbers_records_and_maps_fields() {
        let mut c = Correlator::new();
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"unshare");
        let raw = NetnsCreateEvent {
            header: EventHeader { kind: 1, cpu: 0, boot_ns: 5 },
            actor: nstrail_abi::Actor { pid: 7, tid: 8, ppid: 1, uid: 0, gid: 0, _pad: 0, cgroup_id: 3, comm },
            netns: NetnsRef { inode: 100, _pad: 0, cookie: 200 },
            parent_netns: NetnsRef { inode: 1, _pad: 0, cookie: 2 },
            via: create_via::CLONE3,
            child_pid: 9,
            child_tid: 9,
            _pad: 0,
        };
        let first = c.kernel_record(&KernelEvent::NetnsCreate(raw)).unwrap();
        let second = c.agent_record(EventBody::Lost { count: 1, event_type: "netns_create".into() });
        assert_eq!((first.seq, second.seq), (1, 2));
        let json = serde_json::to_value(&first).unwrap();
        assert_eq!(json["type"], "netns_create");
        assert_eq!(json["netns"], serde_json::json!({"inode": 100, "id": 200}));
        assert_eq!(json["parent_netns"], serde_json::json!({"inode": 1, "id": 2}));
        assert_eq!(json["via"], "clone3");
        assert_eq!(json["child"], serde_json::json!({"pid": 9, "tid": 9}));
        assert_eq!(json["actor"]["comm"], "unshare");
        assert_eq!(json["actor"]["cgroup_id"], 3);
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, first);
    }
}
