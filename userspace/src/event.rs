//! The events nstrail emits: the JSON contract of docs/events.md.

use serde::{Deserialize, Serialize};

/// Identity of a network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Netns {
    /// nsfs inode (`readlink /proc/PID/ns/net`); reused by the kernel.
    pub inode: u32,
    /// Unique for the boot (`net_cookie`, `SO_NETNS_COOKIE`, `NS_GET_ID`).
    pub id: u64,
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

/// The new task of a clone-family create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Child {
    pub pid: u32,
    pub tid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestroySeenAt {
    CleanupStart,
    CleanupEnd,
}

/// A probe's state after the agent tried to attach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub probe: String,
    pub sensor: String,
    pub attached: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    /// Events the kernel side could not deliver (ring buffer full), counted
    /// in-kernel per event type since the previous `lost` record.
    Lost {
        count: u64,
        event_type: String,
    },
    /// First record of a run: which probes are attached.
    AgentStart {
        version: String,
        kernel: String,
        probes: Vec<ProbeStatus>,
    },
}

impl EventBody {
    /// The `type` tag, as in JSON.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::NetnsCreate { .. } => "netns_create",
            Self::NetnsEnter { .. } => "netns_enter",
            Self::NetnsDestroy { .. } => "netns_destroy",
            Self::Lost { .. } => "lost",
            Self::AgentStart { .. } => "agent_start",
        }
    }

    /// The namespace the event is about, if any.
    pub fn netns(&self) -> Option<Netns> {
        match self {
            Self::NetnsCreate { netns, .. }
            | Self::NetnsEnter { netns, .. }
            | Self::NetnsDestroy { netns, .. } => Some(*netns),
            Self::Lost { .. } | Self::AgentStart { .. } => None,
        }
    }

    pub fn actor(&self) -> Option<&Actor> {
        match self {
            Self::NetnsCreate { actor, .. }
            | Self::NetnsEnter { actor, .. }
            | Self::NetnsDestroy { actor, .. } => Some(actor),
            Self::Lost { .. } | Self::AgentStart { .. } => None,
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
