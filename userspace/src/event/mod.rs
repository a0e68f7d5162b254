//! The events nstrail emits: the JSON contract of docs/events.md, and the
//! conversions from the kernel side's records that every sensor shares.

pub mod clock;
pub mod filter;
pub mod sequence;
pub mod text;

use serde::{Deserialize, Serialize};

/// A container (or pod member) a namespace serves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Container {
    /// docker, containerd, cri-o, podman, runc, systemd-nspawn
    pub runtime: String,
    /// Container id (64 hex digits for most runtimes) or machine name.
    pub id: String,
    /// Kubernetes pod uid, for pod members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// The Kubernetes pod a namespace is the sandbox of, as the container
/// runtime (CRI) tells it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// A network namespace: its identity, and what users call it when known.
/// Two values are equal when they name the same namespace (inode and id);
/// the labels do not take part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Netns {
    /// nsfs inode (`readlink /proc/PID/ns/net`); reused by the kernel.
    pub inode: u32,
    /// Unique for the boot (`net_cookie`, `SO_NETNS_COOKIE`, `NS_GET_ID`).
    pub id: u64,
    /// Name of a bind mount of it (`ip netns` name, docker sandbox id), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Containers whose processes are in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    /// The pod whose sandbox it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
}

impl Netns {
    pub fn new(inode: u32, id: u64) -> Self {
        Self { inode, id, name: None, containers: Vec::new(), pod: None }
    }
}

impl From<nstrail_abi::NetnsRef> for Netns {
    fn from(r: nstrail_abi::NetnsRef) -> Self {
        Self::new(r.inode, r.cookie)
    }
}

impl PartialEq for Netns {
    fn eq(&self, other: &Self) -> bool {
        (self.inode, self.id) == (other.inode, other.id)
    }
}

impl Eq for Netns {}

impl std::hash::Hash for Netns {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.inode, self.id).hash(state);
    }
}

/// The task behind an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

impl From<&nstrail_abi::Actor> for Actor {
    fn from(a: &nstrail_abi::Actor) -> Self {
        let end = a.comm.iter().position(|b| *b == 0).unwrap_or(a.comm.len());
        Self {
            pid: a.pid,
            tid: a.tid,
            ppid: a.ppid,
            uid: a.uid,
            gid: a.gid,
            comm: String::from_utf8_lossy(&a.comm[..end]).into_owned(),
            cgroup_id: a.cgroup_id,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreateVia {
    Unshare,
    Clone,
    Clone3,
    Fork,
    Vfork,
    Unknown,
}

impl CreateVia {
    /// The name used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unshare => "unshare",
            Self::Clone => "clone",
            Self::Clone3 => "clone3",
            Self::Fork => "fork",
            Self::Vfork => "vfork",
            Self::Unknown => "unknown",
        }
    }
}

/// The new task of a clone-family create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Child {
    pub pid: u32,
    pub tid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestroySeenAt {
    /// Found queued for destruction when the kernel's cleanup work started.
    CleanupStart,
    /// Its last reference went while that work was starting.
    CleanupEnd,
    /// Seen in the namespace's own exit (`proc_net_ns_exit`).
    NetExit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SysctlResult {
    /// The write(2) that carried the value succeeded.
    Applied,
    /// The write(2) failed: the kernel refused the value (`errno`).
    Rejected,
    /// nstrail's policy refused it; the writer got EPERM.
    Denied,
    /// The write went through a path nstrail does not watch (io_uring, splice).
    Unknown,
}

impl SysctlResult {
    /// The name used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Rejected => "rejected",
            Self::Denied => "denied",
            Self::Unknown => "unknown",
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A device that moved, as it was before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedDevice {
    /// Name in the source namespace.
    pub name: String,
    /// Link kind (`veth`, `dummy`, `macvlan`, ...); absent for devices
    /// without one (physical NICs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub ifindex_before: u32,
    pub ifindex_after: u32,
    /// Name in the destination (a move may rename).
    pub name_after: String,
}

/// One end of a veth pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethEnd {
    pub name: String,
    pub ifindex: u32,
    /// Absent only when the kernel did not tell the agent (see docs/events.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<Netns>,
}

/// A process holding a namespace by an open nsfs file descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdHolder {
    pub pid: u32,
    pub fd: u32,
    /// The process's name, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
}

/// What keeps a namespace alive besides its member processes (a socket
/// alone is not visible in /proc).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holders {
    /// nsfs bind mounts of it (`/run/netns/NAME`).
    pub mounts: Vec<String>,
    pub fds: Vec<FdHolder>,
}

/// A probe's state after the agent tried to attach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub probe: String,
    pub sensor: String,
    /// The sensor's backend this probe belongs to.
    #[serde(default)]
    pub backend: String,
    /// Where it attaches: `syscalls/sys_exit_write`, `tp_btf/sched_process_fork`, `cgroup/sysctl`.
    pub hook: String,
    pub attached: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How far a sensor got at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorState {
    /// Every probe attached and every sensor it depends on works.
    Attached,
    /// It runs, but a probe of its own or a sensor it depends on failed:
    /// some of its events may be missing or lack detail (`reason`).
    Degraded,
    /// It produces no events.
    Failed,
}

impl SensorState {
    /// The name used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attached => "attached",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
        }
    }
}

/// A sensor's state after the agent started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorStatus {
    pub sensor: String,
    /// The kind of kernel hooks it runs on (`tracepoint`, ...).
    pub backend: String,
    pub state: SensorState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What happened. Serialised with its `type` tag next to `ts` and `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    NetnsCreate {
        netns: Netns,
        actor: Actor,
        parent_netns: Netns,
        via: CreateVia,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        child: Option<Child>,
    },
    NetnsEnter {
        netns: Netns,
        actor: Actor,
        from_netns: Netns,
    },
    NetnsDestroy {
        netns: Netns,
        actor: Actor,
        seen_at: DestroySeenAt,
    },
    SysctlWrite {
        /// Dotted name, as sysctl(8) prints it.
        sysctl: String,
        /// Value before the write (trimmed); absent when the kernel could not read it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        old: Option<String>,
        /// Value written (trimmed).
        new: String,
        /// Set when the name or a value was longer than the probe keeps.
        #[serde(default, skip_serializing_if = "is_false")]
        truncated: bool,
        result: SysctlResult,
        /// errno of a rejected or denied write.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        errno: Option<u32>,
        /// 1-based index of the policy rule that decided, if any matched.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<u32>,
        /// The namespace the write acts on (the writer's).
        netns: Netns,
        actor: Actor,
        /// TCP sockets in use in that namespace when the agent saw the write
        /// (net.* only; absent when no process of the namespace could be read).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tcp_sockets_in_use: Option<u64>,
    },
    /// A network device left one namespace for another.
    DeviceMove {
        device: MovedDevice,
        /// Absent only for a device the kernel returned from a namespace
        /// it was destroying, when the agent could not tell which.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_netns: Option<Netns>,
        /// Absent only when the destination had no nsid the agent could
        /// resolve (see docs/events.md).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_netns: Option<Netns>,
        /// The task that asked for it (or the kernel worker cleaning up a
        /// namespace); absent when its record was lost.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<Actor>,
    },
    /// A veth pair was created with its ends in different namespaces.
    VethCreate {
        /// The end named first (`ip link add NAME type veth ...`).
        device: VethEnd,
        /// The `peer name` end.
        peer: VethEnd,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<Actor>,
    },
    /// Events the kernel side could not deliver (ring buffer full), counted
    /// in-kernel per event type since the previous `lost` record.
    Lost {
        count: u64,
        event_type: String,
    },
    /// A namespace without a member process for longer than `[inventory]
    /// leak_age`, claimed by no running container: an agent record, once
    /// per namespace.
    NetnsLeaked {
        netns: Netns,
        /// Since when it has had no member process, as far as the agent saw.
        without_processes_since: String,
        /// It had none already when the agent started (it may have had none for longer).
        #[serde(default, skip_serializing_if = "is_false")]
        since_agent_start: bool,
        holders: Holders,
    },
    /// A name (bind mount) or container of a namespace became known after
    /// the stream first showed the namespace (runtimes mount and start
    /// their containers after the create): an agent record, once per newly
    /// known name or container, tying the earlier events to them. `netns`
    /// carries the labels as known now.
    NetnsIdentified {
        netns: Netns,
        /// Every name it has now (the short names of its bind mounts).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        names: Vec<String>,
    },
    /// First record of a run: which probes are attached.
    AgentStart {
        version: String,
        kernel: String,
        probes: Vec<ProbeStatus>,
        /// Each sensor's backend and state.
        #[serde(default)]
        sensors: Vec<SensorStatus>,
    },
}

impl EventBody {
    /// The `type` tag, as in JSON.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::NetnsCreate { .. } => "netns_create",
            Self::NetnsEnter { .. } => "netns_enter",
            Self::NetnsDestroy { .. } => "netns_destroy",
            Self::SysctlWrite { .. } => "sysctl_write",
            Self::DeviceMove { .. } => "device_move",
            Self::VethCreate { .. } => "veth_create",
            Self::Lost { .. } => "lost",
            Self::NetnsLeaked { .. } => "netns_leaked",
            Self::NetnsIdentified { .. } => "netns_identified",
            Self::AgentStart { .. } => "agent_start",
        }
    }

    /// The namespace the event is about, if any.
    pub fn netns(&self) -> Option<&Netns> {
        match self {
            Self::NetnsCreate { netns, .. }
            | Self::NetnsEnter { netns, .. }
            | Self::NetnsDestroy { netns, .. }
            | Self::SysctlWrite { netns, .. }
            | Self::NetnsLeaked { netns, .. }
            | Self::NetnsIdentified { netns, .. } => Some(netns),
            Self::DeviceMove { to_netns, .. } => to_netns.as_ref(),
            Self::VethCreate { .. } | Self::Lost { .. } | Self::AgentStart { .. } => None,
        }
    }

    /// Every namespace the event names (the one it is about, and the one
    /// left or created from), for labelling.
    pub fn namespaces_mut(&mut self) -> Vec<&mut Netns> {
        match self {
            Self::NetnsCreate { netns, parent_netns, .. } => vec![netns, parent_netns],
            Self::NetnsEnter { netns, from_netns, .. } => vec![netns, from_netns],
            Self::NetnsDestroy { netns, .. }
            | Self::SysctlWrite { netns, .. }
            | Self::NetnsLeaked { netns, .. }
            | Self::NetnsIdentified { netns, .. } => vec![netns],
            Self::DeviceMove { from_netns, to_netns, .. } => from_netns.iter_mut().chain(to_netns.iter_mut()).collect(),
            Self::VethCreate { device, peer, .. } => device.netns.iter_mut().chain(peer.netns.iter_mut()).collect(),
            Self::Lost { .. } | Self::AgentStart { .. } => vec![],
        }
    }

    pub fn actor(&self) -> Option<&Actor> {
        match self {
            Self::NetnsCreate { actor, .. }
            | Self::NetnsEnter { actor, .. }
            | Self::NetnsDestroy { actor, .. }
            | Self::SysctlWrite { actor, .. } => Some(actor),
            Self::DeviceMove { actor, .. } | Self::VethCreate { actor, .. } => actor.as_ref(),
            Self::Lost { .. } | Self::NetnsLeaked { .. } | Self::NetnsIdentified { .. } | Self::AgentStart { .. } => {
                None
            }
        }
    }
}

/// One record of the event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock time the kernel saw it, RFC 3339 with nanoseconds, UTC.
    pub ts: String,
    /// Agent-wide sequence number, increasing by one per record.
    pub seq: u64,
    #[serde(flatten)]
    pub body: EventBody,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names_match_the_json() {
        for via in [
            CreateVia::Unshare,
            CreateVia::Clone,
            CreateVia::Clone3,
            CreateVia::Fork,
            CreateVia::Vfork,
            CreateVia::Unknown,
        ] {
            assert_eq!(serde_json::to_value(via).unwrap(), via.as_str());
        }
        for result in [SysctlResult::Applied, SysctlResult::Rejected, SysctlResult::Denied, SysctlResult::Unknown] {
            assert_eq!(serde_json::to_value(result).unwrap(), result.as_str());
        }
    }
}
