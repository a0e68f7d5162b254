//! Sensors: one module per hook family, each naming its kernel programs and
//! where they attach. The loader attaches them all and reports each one.

pub mod netns_lifecycle;

/// Where a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// A classic tracepoint (tracefs `events/<category>/<name>`).
    Tracepoint { category: &'static str, name: &'static str },
    /// A BTF-typed raw tracepoint (`tp_btf/<name>`).
    BtfTracepoint { name: &'static str },
}

/// One kernel program of a sensor.
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
pub const ALL: &[Sensor] = &[netns_lifecycle::SENSOR];
