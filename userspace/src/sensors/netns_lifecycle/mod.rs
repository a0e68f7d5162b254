//! Network namespace create / enter / destroy, on the cheapest exact hooks
//! the kernel allows:
//!
//! - `fentry` (else `kprobe`): `switch_task_namespaces`, the commit of both
//!   unshare(CLONE_NEWNET) (create) and setns (enter), and
//!   `proc_net_ns_exit`, once per dying namespace (destroy). Nothing else
//!   on the system pays for them.
//! - `tracepoint` (kernels that allow neither): `syscalls/sys_{enter,exit}_unshare`
//!   and `_setns` compare the thread's netns before and after; the destroy
//!   comes from `tp_btf/workqueue_execute_{start,end}` around the kernel's
//!   `cleanup_net` work. Attaching any syscall tracepoint puts every
//!   syscall of every task on the kernel's slow path: the price of such kernels.
//! - clone/clone3/fork with CLONE_NEWNET on every backend:
//!   `tp_btf/sched_process_fork` compares parent and child.

use nstrail_abi::{
    event_kind,
    netns::{create_via, destroy_seen_at, NetnsCreateEvent, NetnsDestroyEvent, NetnsEnterEvent},
};

use super::{read_record, Backend, Declaration, Draft, Hook, Probe, RecordError, RecordKind, Sensor};
use crate::event::{Actor, Child, CreateVia, DestroySeenAt, EventBody, Netns};

const fn tracepoint(program: &'static str, name: &'static str) -> Probe {
    Probe { program, hook: Hook::Tracepoint { category: "syscalls", name } }
}

const fn btf_tracepoint(program: &'static str, name: &'static str) -> Probe {
    Probe { program, hook: Hook::BtfTracepoint { name } }
}

const FORK: Probe = btf_tracepoint("netns_fork", "sched_process_fork");
const SWITCH: &str = "switch_task_namespaces";
const NET_EXIT: &str = "proc_net_ns_exit";

static DECLARATION: Declaration = Declaration {
    name: "netns_lifecycle",
    backends: &[
        Backend {
            name: "fentry",
            probes: &[
                Probe { program: "netns_switch_fentry", hook: Hook::FEntry { function: SWITCH } },
                Probe { program: "netns_switch_fexit", hook: Hook::FExit { function: SWITCH } },
                FORK,
                Probe { program: "netns_exit_fentry", hook: Hook::FEntry { function: NET_EXIT } },
            ],
        },
        Backend {
            name: "kprobe",
            probes: &[
                Probe { program: "netns_switch_kprobe", hook: Hook::KProbe { function: SWITCH } },
                Probe { program: "netns_switch_kretprobe", hook: Hook::KRetProbe { function: SWITCH } },
                FORK,
                Probe { program: "netns_exit_kprobe", hook: Hook::KProbe { function: NET_EXIT } },
            ],
        },
        Backend {
            name: "tracepoint",
            probes: &[
                tracepoint("netns_unshare_enter", "sys_enter_unshare"),
                tracepoint("netns_unshare_exit", "sys_exit_unshare"),
                tracepoint("netns_setns_enter", "sys_enter_setns"),
                tracepoint("netns_setns_exit", "sys_exit_setns"),
                FORK,
                btf_tracepoint("netns_cleanup_start", "workqueue_execute_start"),
                btf_tracepoint("netns_cleanup_end", "workqueue_execute_end"),
            ],
        },
    ],
    records: &[
        RecordKind { kind: event_kind::NETNS_CREATE, lost_as: "netns_create" },
        RecordKind { kind: event_kind::NETNS_ENTER, lost_as: "netns_enter" },
        RecordKind { kind: event_kind::NETNS_DESTROY, lost_as: "netns_destroy" },
    ],
    events: &["netns_create", "netns_enter", "netns_destroy"],
    losses: &[],
    depends_on: &[],
};

pub struct NetnsLifecycle {
    own_pid: u32,
    /// Namespaces the agent made itself (to learn what a new namespace
    /// looks like), whose destroy is not reported either.
    own_created: std::collections::HashSet<u64>,
}

impl NetnsLifecycle {
    pub fn new() -> Self {
        Self { own_pid: std::process::id(), own_created: Default::default() }
    }
}

impl Default for NetnsLifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Sensor for NetnsLifecycle {
    fn declaration(&self) -> &'static Declaration {
        &DECLARATION
    }

    fn record(&mut self, kind: u32, bytes: &[u8], out: &mut Vec<Draft>) -> Result<(), RecordError> {
        let draft = match kind {
            event_kind::NETNS_CREATE => {
                let e: NetnsCreateEvent = read_record(bytes, "netns_create event")?;
                // The agent makes a namespace of its own once, to read what
                // a new one gets (`nstrail sysctl`): neither it nor its
                // destroy is what users ask about.
                if e.actor.pid == self.own_pid {
                    self.own_created.insert(e.netns.cookie);
                    return Ok(());
                }
                create(&e)
            }
            event_kind::NETNS_ENTER => {
                let e: NetnsEnterEvent = read_record(bytes, "netns_enter event")?;
                // The agent's own threads step into namespaces to read their
                // ids and devices; those are not what users ask about.
                if e.actor.pid == self.own_pid {
                    return Ok(());
                }
                enter(&e)
            }
            event_kind::NETNS_DESTROY => {
                let e: NetnsDestroyEvent = read_record(bytes, "netns_destroy event")?;
                if self.own_created.remove(&e.netns.cookie) {
                    return Ok(());
                }
                destroy(&e)
            }
            other => return Err(RecordError::UnknownKind(other)),
        };
        out.push(draft);
        Ok(())
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

fn create(e: &NetnsCreateEvent) -> Draft {
    Draft {
        boot_ns: e.header.boot_ns,
        body: EventBody::NetnsCreate {
            netns: Netns::from(e.netns),
            actor: Actor::from(&e.actor),
            parent_netns: Netns::from(e.parent_netns),
            via: via(e.via),
            child: (e.child_tid != 0).then_some(Child { pid: e.child_pid, tid: e.child_tid }),
        },
    }
}

fn enter(e: &NetnsEnterEvent) -> Draft {
    Draft {
        boot_ns: e.header.boot_ns,
        body: EventBody::NetnsEnter {
            netns: Netns::from(e.netns),
            actor: Actor::from(&e.actor),
            from_netns: Netns::from(e.from_netns),
        },
    }
}

fn destroy(e: &NetnsDestroyEvent) -> Draft {
    Draft {
        boot_ns: e.header.boot_ns,
        body: EventBody::NetnsDestroy {
            netns: Netns::from(e.netns),
            actor: Actor::from(&e.actor),
            seen_at: match e.seen_at {
                destroy_seen_at::CLEANUP_END => DestroySeenAt::CleanupEnd,
                destroy_seen_at::NET_EXIT => DestroySeenAt::NetExit,
                _ => DestroySeenAt::CleanupStart,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::records::bytes_of;
    use nstrail_abi::{EventHeader, NetnsRef};

    fn raw_actor(pid: u32) -> nstrail_abi::Actor {
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"unshare");
        nstrail_abi::Actor { pid, tid: pid + 1, ppid: 1, uid: 0, gid: 0, _pad: 0, cgroup_id: 3, comm }
    }

    fn decode(sensor: &mut NetnsLifecycle, kind: u32, bytes: &[u8]) -> Vec<Draft> {
        let mut out = Vec::new();
        sensor.record(kind, bytes, &mut out).unwrap();
        out
    }

    #[test]
    fn maps_a_clone3_create() {
        let raw = NetnsCreateEvent {
            header: EventHeader { kind: event_kind::NETNS_CREATE, cpu: 0, boot_ns: 5 },
            actor: raw_actor(7),
            netns: NetnsRef { inode: 100, _pad: 0, cookie: 200 },
            parent_netns: NetnsRef { inode: 1, _pad: 0, cookie: 2 },
            via: create_via::CLONE3,
            child_pid: 9,
            child_tid: 9,
            _pad: 0,
        };
        let drafts = decode(&mut NetnsLifecycle::new(), event_kind::NETNS_CREATE, &bytes_of(&raw));
        assert_eq!(drafts.len(), 1);
        assert_eq!(drafts[0].boot_ns, 5);
        let event = crate::event::Event { ts: "t".into(), seq: 1, body: drafts[0].body.clone() };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "netns_create");
        assert_eq!(json["netns"], serde_json::json!({"inode": 100, "id": 200}));
        assert_eq!(json["parent_netns"], serde_json::json!({"inode": 1, "id": 2}));
        assert_eq!(json["via"], "clone3");
        assert_eq!(json["child"], serde_json::json!({"pid": 9, "tid": 9}));
        assert_eq!(json["actor"]["comm"], "unshare");
        assert_eq!(json["actor"]["cgroup_id"], 3);
        let back: crate::event::Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn maps_enters_and_destroys_and_skips_its_own_enters() {
        let mut sensor = NetnsLifecycle::new();
        let enter = NetnsEnterEvent {
            header: EventHeader { kind: event_kind::NETNS_ENTER, cpu: 1, boot_ns: 42 },
            actor: raw_actor(10),
            netns: NetnsRef { inode: 4026532177, _pad: 0, cookie: 9 },
            from_netns: NetnsRef { inode: 4026531840, _pad: 0, cookie: 1 },
        };
        let drafts = decode(&mut sensor, event_kind::NETNS_ENTER, &bytes_of(&enter));
        let EventBody::NetnsEnter { netns, from_netns, actor } = &drafts[0].body else { panic!("{drafts:?}") };
        assert_eq!((netns.id, from_netns.id, actor.pid, actor.tid), (9, 1, 10, 11));

        let own = NetnsEnterEvent { actor: raw_actor(std::process::id()), ..enter };
        assert!(decode(&mut sensor, event_kind::NETNS_ENTER, &bytes_of(&own)).is_empty());

        let destroy = NetnsDestroyEvent {
            header: EventHeader { kind: event_kind::NETNS_DESTROY, ..enter.header },
            actor: enter.actor,
            netns: enter.netns,
            seen_at: destroy_seen_at::CLEANUP_END,
            _pad: 0,
        };
        let drafts = decode(&mut sensor, event_kind::NETNS_DESTROY, &bytes_of(&destroy));
        assert!(matches!(drafts[0].body, EventBody::NetnsDestroy { seen_at: DestroySeenAt::CleanupEnd, .. }));
    }

    #[test]
    fn skips_its_own_creates_and_their_destroys() {
        let mut sensor = NetnsLifecycle::new();
        let own = NetnsCreateEvent {
            header: EventHeader { kind: event_kind::NETNS_CREATE, cpu: 0, boot_ns: 5 },
            actor: raw_actor(std::process::id()),
            netns: NetnsRef { inode: 100, _pad: 0, cookie: 200 },
            parent_netns: NetnsRef { inode: 1, _pad: 0, cookie: 2 },
            via: create_via::UNSHARE,
            ..Default::default()
        };
        assert!(decode(&mut sensor, event_kind::NETNS_CREATE, &bytes_of(&own)).is_empty());
        let destroy = |cookie| NetnsDestroyEvent {
            header: EventHeader { kind: event_kind::NETNS_DESTROY, cpu: 0, boot_ns: 9 },
            actor: raw_actor(77),
            netns: NetnsRef { inode: 100, _pad: 0, cookie },
            seen_at: destroy_seen_at::NET_EXIT,
            _pad: 0,
        };
        assert!(decode(&mut sensor, event_kind::NETNS_DESTROY, &bytes_of(&destroy(200))).is_empty());
        // Its inode reused by someone else's namespace: that one is reported.
        let theirs =
            NetnsCreateEvent { actor: raw_actor(77), netns: NetnsRef { inode: 100, _pad: 0, cookie: 201 }, ..own };
        assert_eq!(decode(&mut sensor, event_kind::NETNS_CREATE, &bytes_of(&theirs)).len(), 1);
        assert_eq!(decode(&mut sensor, event_kind::NETNS_DESTROY, &bytes_of(&destroy(201))).len(), 1);
        assert_eq!(decode(&mut sensor, event_kind::NETNS_DESTROY, &bytes_of(&destroy(200))).len(), 1, "once only");
    }

    #[test]
    fn refuses_short_records() {
        let enter = NetnsEnterEvent::default();
        let mut out = Vec::new();
        let err = NetnsLifecycle::new().record(event_kind::NETNS_ENTER, &bytes_of(&enter)[..40], &mut out).unwrap_err();
        assert_eq!(
            err,
            RecordError::Short { what: "netns_enter event", len: 40, need: std::mem::size_of::<NetnsEnterEvent>() }
        );
    }
}
