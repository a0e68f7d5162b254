//! Loads the embedded kernel programs with this kernel's layout and attaches
//! every sensor, reporting each probe's outcome.

use aya::{
    programs::{BtfTracePoint, ProgramError, TracePoint},
    Ebpf, EbpfLoader,
};
use nstrail_abi::{map_name, LAYOUT_GLOBAL};

use crate::{
    btf::Btf,
    event::ProbeStatus,
    kernel_layout,
    sensors::{self, Hook, Probe},
    Error,
};

/// The kernel programs, built by build.rs from ebpf-probes/programs.
static PROBES_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nstrail-probes"));

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Size of the event ring buffer in bytes (a power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { ring_buffer_bytes: 8 * 1024 * 1024 }
    }
}

/// The loaded object and what became of each probe.
pub struct LoadedProbes {
    pub ebpf: Ebpf,
    pub status: Vec<ProbeStatus>,
}

pub fn load(options: &LoadOptions) -> Result<LoadedProbes, Error> {
    crate::preflight::check()?;
    let btf = Btf::from_running_kernel()?;
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").map_err(Error::KallsymsRead)?;
    let cleanup_net = kernel_layout::find_text_symbol(&kallsyms, "cleanup_net")?;
    let layout = kernel_layout::resolve(&btf, cleanup_net)?;
    log::debug!("kernel layout: {layout:?}");

    let mut ebpf = EbpfLoader::new()
        .override_global(LAYOUT_GLOBAL, &layout, true)
        .map_max_entries(map_name::EVENTS, options.ring_buffer_bytes)
        .load(PROBES_OBJECT)?;

    let aya_btf = aya::Btf::from_sys_fs()?;
    let mut status = Vec::new();
    for sensor in sensors::ALL {
        for probe in sensor.probes {
            let result = attach(&mut ebpf, probe, &aya_btf);
            if let Err(err) = &result {
                log::warn!("probe {} ({}) not attached: {err}", probe.program, sensor.name);
            }
            status.push(ProbeStatus {
                probe: probe.program.to_owned(),
                sensor: sensor.name.to_owned(),
                attached: result.is_ok(),
                error: result.err().map(|e| e.to_string()),
            });
        }
    }
    if status.iter().all(|s| !s.attached) {
        let first = status.iter().find_map(|s| s.error.clone()).unwrap_or_default();
        return Err(Error::NothingAttached(first));
    }
    Ok(LoadedProbes { ebpf, status })
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("program {0} is missing from the eBPF object")]
    Missing(&'static str),
    #[error("{0}")]
    Program(#[from] ProgramError),
}

fn attach(ebpf: &mut Ebpf, probe: &Probe, btf: &aya::Btf) -> Result<(), AttachError> {
    let program = ebpf.program_mut(probe.program).ok_or(AttachError::Missing(probe.program))?;
    match probe.hook {
        Hook::Tracepoint { category, name } => {
            let tp: &mut TracePoint = program.try_into()?;
            tp.load()?;
            tp.attach(category, name)?;
        }
        Hook::BtfTracepoint { name } => {
            let tp: &mut BtfTracePoint = program.try_into()?;
            tp.load(name, btf)?;
            tp.attach()?;
        }
    }
    Ok(())
}
