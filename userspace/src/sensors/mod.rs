//! Sensors: one module per hook family, each naming its kernel programs and
//! where they attach. The loader attaches them all and reports each one.

pub mod device_move;
pub mod netns_lifecycle;
pub mod sysctl_write;

/// Where a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// A classic tracepoint (tracefs `events/<category>/<name>`).
    Tracepoint { category: &'static str, name: &'static str },
    /// A BTF-typed raw tracepoint (`tp_btf/<name>`).
    BtfTracepoint { name: &'static str },
    /// `cgroup/sysctl` on the root of the cgroup2 hierarchy (through a
    /// bpf_link, so other agents' programs there keep running).
    CgroupSysctl,
    /// A socket filter on the agent's rtnetlink listener (one socket, made
    /// by the loader; see `device_move`).
    RtnetlinkListener,
}

impl Hook {
    /// Where it attaches, for messages: `syscalls/sys_exit_write`, `tp_btf/...`.
    pub fn describe(&self) -> String {
        match self {
            Hook::Tracepoint { category, name } => format!("{category}/{name}"),
            Hook::BtfTracepoint { name } => format!("tp_btf/{name}"),
            Hook::CgroupSysctl => "cgroup/sysctl".to_owned(),
            Hook::RtnetlinkListener => "socket_filter/rtnetlink_listener".to_owned(),
        }
    }
}

/// One kernel program of a sensor at one hook (a program may be listed
/// several times, once per hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The program's function name in ebpf-probes/programs.
    pub program: &'static str,
    pub hook: Hook,
}

/// A family of probes that together produce some event types.
#[derive(Debug, Clone, Copy)]
pub struct Sensor {
    pub name: &'static str,
    pub probes: &'static [Probe],
}

/// Every sensor the agent runs.
pub const ALL: &[Sensor] = &[netns_lifecycle::SENSOR, sysctl_write::SENSOR, device_move::SENSOR];
