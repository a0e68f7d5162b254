//! Errors a user can hit when starting the agent, each saying what went
//! wrong and what to do.

use crate::{
    sensors::SensorError,
    sys::{btf::BtfError, kallsyms::KallsymsError},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nstrail must run as root (it loads eBPF programs); try: sudo nstrail ...")]
    NotRoot,
    #[error(
        "cannot read the kernel's BTF at {path}: {source}; nstrail needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf { path: &'static str, source: std::io::Error },
    #[error(
        "cannot use the kernel's BTF: {0}; this kernel's layout is not supported, please report it with `uname -r`"
    )]
    Btf(#[from] BtfError),
    #[error("cannot read the kernel's BTF for attaching probes: {0}")]
    AyaBtf(#[from] aya::BtfError),
    #[error("cannot find kernel symbols: {0}")]
    Kallsyms(#[from] KallsymsError),
    #[error("no cgroup2 file system is mounted; mount one (e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`) and start again")]
    NoCgroup2,
    #[error("tracefs is not mounted at /sys/kernel/tracing and mounting it failed: {0}; mount it (`mount -t tracefs tracefs /sys/kernel/tracing`) and start again")]
    TraceFs(std::io::Error),
    #[error("the kernel refused nstrail's eBPF programs: {0}; is BPF restricted here (lockdown, seccomp, kernel.unprivileged_bpf_disabled)?")]
    BpfRefused(#[from] aya::EbpfError),
    #[error("cannot open eBPF map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("sensor {sensor}: {source}")]
    Sensor { sensor: &'static str, source: SensorError },
    #[error("no probe could be attached: {0}")]
    NothingAttached(String),
    #[error(
        "cannot serve metrics on {addr}: {source}; choose another address with --metrics-listen or [metrics] listen"
    )]
    MetricsBind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
