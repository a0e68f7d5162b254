//! Sensors: one folder per hook family. A sensor declares its kernel
//! programs and where they attach (one set per backend), decodes the
//! records its programs write into events, and may own an extra source of
//! events (a socket, a worker thread). The agent loads what the sensors
//! declare, hands each record to the sensor that owns its kind, and shows
//! every event to every sensor; it knows no family by name.
//!
//! Adding a sensor: a folder here with a `Sensor` implementation, and one
//! line in [`all`].

pub mod device_move;
pub mod netns_lifecycle;
mod records;
pub mod sysctl_write;

use std::os::fd::BorrowedFd;

use aya::{Ebpf, EbpfLoader};

pub use records::{kind_of, read_record, read_record_prefix, RecordError};

use crate::{
    event::{Event, EventBody},
    inventory::scan::Scan,
};

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
    /// A socket filter on a socket the sensor opens itself ([`Sensor::socket`]).
    SensorSocket,
    /// The entry of a kernel function (`fentry/<function>`, BPF trampoline).
    FEntry { function: &'static str },
    /// The return of a kernel function (`fexit/<function>`).
    FExit { function: &'static str },
    /// A kprobe at the entry of a kernel function.
    KProbe { function: &'static str },
    /// A kretprobe at its return.
    KRetProbe { function: &'static str },
}

impl Hook {
    /// Where it attaches, for messages: `syscalls/sys_exit_write`, `tp_btf/...`.
    pub fn describe(&self) -> String {
        match self {
            Hook::Tracepoint { category, name } => format!("{category}/{name}"),
            Hook::BtfTracepoint { name } => format!("tp_btf/{name}"),
            Hook::CgroupSysctl => "cgroup/sysctl".to_owned(),
            Hook::SensorSocket => "socket_filter".to_owned(),
            Hook::FEntry { function } => format!("fentry/{function}"),
            Hook::FExit { function } => format!("fexit/{function}"),
            Hook::KProbe { function } => format!("kprobe/{function}"),
            Hook::KRetProbe { function } => format!("kretprobe/{function}"),
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

/// One way to run a sensor: a kind of kernel hook and the probes that use
/// it. The loader takes the first backend of a sensor whose probes all
/// attach on the running kernel.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    /// `tracepoint`, ...: what `agent_start` and `nstrail_probes` report.
    pub name: &'static str,
    pub probes: &'static [Probe],
}

/// A record kind (`nstrail_abi::event_kind`) a sensor's programs write.
#[derive(Debug, Clone, Copy)]
pub struct RecordKind {
    pub kind: u32,
    /// The `event_type` of `lost` records when the kernel could not deliver one.
    pub lost_as: &'static str,
}

/// What a sensor is, for the loader and the dispatcher.
#[derive(Debug, Clone, Copy)]
pub struct Declaration {
    pub name: &'static str,
    /// In order of preference.
    pub backends: &'static [Backend],
    /// Kinds of the records its programs write into the shared ring buffer
    /// (and into any ring of its own).
    pub records: &'static [RecordKind],
    /// The `type`s of the events it makes.
    pub events: &'static [&'static str],
    /// `event_type`s of `lost` records its own worker reports (besides its record kinds).
    pub losses: &'static [&'static str],
    /// Sensors whose events it needs; when one of them does not run, this
    /// one runs degraded.
    pub depends_on: &'static [&'static str],
}

/// An event made by a sensor, not numbered yet: the agent gives it its
/// sequence number, wall time and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// CLOCK_BOOTTIME of what the kernel saw.
    pub boot_ns: u64,
    pub body: EventBody,
}

/// What a sensor's own worker sends the agent.
#[derive(Debug)]
pub enum SensorMessage {
    /// Events, in the order they are to be numbered.
    Events(Vec<Draft>),
    /// Events of this `event_type` that never reached the sensor.
    Lost { event_type: &'static str, count: u64 },
    /// A record the sensor could not decode.
    DecodeError(String),
}

pub type MessageReceiver = tokio::sync::mpsc::UnboundedReceiver<SensorMessage>;
pub type MessageSender = tokio::sync::mpsc::UnboundedSender<SensorMessage>;

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("eBPF map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("{0}")]
    Other(String),
}

/// What a sensor gets when the agent starts it.
pub struct StartContext<'a> {
    /// The /proc scan made right after every probe was attached.
    pub scan: &'a std::sync::Arc<Scan>,
    /// Whether each sensor it depends on runs (name, running).
    pub dependencies: Vec<(&'static str, bool)>,
    /// The nsids of other namespaces in the agent's, shared with the
    /// inventory's device listings, for a sensor that gives them out.
    pub nsids: crate::inventory::devices::KnownNsids,
}

/// Options of all sensors, from the configuration.
#[derive(Debug, Clone)]
pub struct SensorOptions {
    pub sysctl_policy: sysctl_write::SysctlPolicy,
    /// Receive buffer of the device sensor's rtnetlink listener, in bytes
    /// (each link notification takes about 2 KiB of it).
    pub device_listener_buffer_bytes: u32,
    /// The device sensor's worker takes this lock each time it wakes up:
    /// holding it stalls the worker as a busy host would (for tests).
    pub device_worker_gate: Option<std::sync::Arc<std::sync::Mutex<()>>>,
}

impl Default for SensorOptions {
    fn default() -> Self {
        Self {
            sysctl_policy: Default::default(),
            device_listener_buffer_bytes: 16 * 1024 * 1024,
            device_worker_gate: None,
        }
    }
}

pub trait Sensor: Send {
    fn declaration(&self) -> &'static Declaration;

    /// Before the object is loaded: set the globals this sensor's programs read.
    fn configure<'a>(&'a self, _loader: &mut EbpfLoader<'a>) {}

    /// After the object is loaded, before anything attaches: fill the maps
    /// its programs read, take the maps it reads itself.
    fn loaded(&mut self, _ebpf: &mut Ebpf) -> Result<(), SensorError> {
        Ok(())
    }

    /// The socket a [`Hook::SensorSocket`] program attaches to.
    fn socket(&mut self) -> Result<BorrowedFd<'_>, SensorError> {
        Err(SensorError::Other(format!("sensor {} has no socket", self.declaration().name)))
    }

    /// Called once the probes are attached (`backend` is the one chosen).
    /// Returns the receiver of its worker's messages, if it has a worker.
    fn start(
        &mut self,
        _backend: &'static str,
        _context: StartContext<'_>,
    ) -> Result<Option<MessageReceiver>, SensorError> {
        Ok(None)
    }

    /// One record of one of its kinds, from the shared ring buffer. Events
    /// go to `out`, or later through its worker.
    fn record(&mut self, kind: u32, bytes: &[u8], out: &mut Vec<Draft>) -> Result<(), RecordError>;

    /// The agent has handed it every record available now.
    fn records_done(&mut self) {}

    /// Every event the agent emits, after numbering and labelling.
    fn observe(&mut self, _event: &Event) {}

    /// A fresh /proc scan of the inventory's periodic refresh.
    fn rescanned(&mut self, _scan: &std::sync::Arc<Scan>) {}

    /// The agent stops: finish what is pending (its worker sends the rest,
    /// then closes its channel).
    fn stop(&mut self) {}
}

/// Decodes one ring-buffer record with the sensor that owns its kind, as
/// the agent would (for the fuzzer: no kernel, no worker threads).
#[doc(hidden)]
pub fn fuzz_records(bytes: &[u8]) {
    let Ok(kind) = kind_of(bytes) else { return };
    let mut out = Vec::new();
    for mut sensor in all(&SensorOptions::default()) {
        if sensor.declaration().records.iter().any(|r| r.kind == kind) {
            let _ = sensor.record(kind, bytes, &mut out);
        }
    }
}

/// Every sensor the agent runs, in start order (a sensor after those it depends on).
pub fn all(options: &SensorOptions) -> Vec<Box<dyn Sensor>> {
    vec![
        Box::new(netns_lifecycle::NetnsLifecycle::new()),
        Box::new(sysctl_write::SysctlWrites::new(options.sysctl_policy.clone())),
        Box::new(device_move::DeviceMoves::new(
            options.device_listener_buffer_bytes,
            options.device_worker_gate.clone(),
        )),
    ]
}
