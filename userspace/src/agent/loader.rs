//! Loads the embedded kernel programs with this kernel's layout and
//! attaches each sensor on the first of its backends the kernel allows,
//! reporting every probe and every sensor.

use std::{collections::HashSet, path::Path};

use aya::{
    programs::{
        links::CgroupAttachMode, BtfTracePoint, CgroupSysctl, FEntry, FExit, KProbe, Program, ProgramError,
        SocketFilter, TracePoint,
    },
    Ebpf, EbpfLoader,
};
use nstrail_abi::{map_name, LAYOUT_GLOBAL};

use super::kernel_layout;
use crate::{
    event::{ProbeStatus, SensorState, SensorStatus},
    sensors::{Backend, Hook, Probe, Sensor},
    sys::{btf, kallsyms, proc},
    Error,
};

/// The kernel programs, built by build.rs from ebpf-probes/programs.
static PROBES_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nstrail-probes"));

/// The kernel programs as built (an ELF object, 8-byte aligned), for
/// tests that load a second copy of a program next to the agent's.
pub fn probes_object() -> &'static [u8] {
    PROBES_OBJECT
}

/// The loaded object, and each sensor with what became of it.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub probes: Vec<ProbeStatus>,
    /// Each sensor, its status, and the name of the backend it runs on.
    pub sensors: Vec<(Box<dyn Sensor>, SensorStatus, &'static str)>,
}

pub fn load(mut sensors: Vec<Box<dyn Sensor>>, ring_buffer_bytes: u32) -> Result<Loaded, Error> {
    super::preflight::check()?;
    // Read once: our own reader finds member offsets, aya's attaches BTF programs.
    let btf_data = std::fs::read(btf::VMLINUX).map_err(|source| Error::NoBtf { path: btf::VMLINUX, source })?;
    let layout_btf = btf::Btf::parse(&btf_data)?;
    let aya_btf = aya::Btf::parse(&btf_data, aya::Endianness::default())?;
    let symbols = kallsyms::read()?;
    let symbols = kernel_layout::KernelSymbols {
        cleanup_net: kallsyms::find_text_symbol(&symbols, "cleanup_net")?,
        sysctl_net_is_seen: kallsyms::find_text_symbol(&symbols, "is_seen").unwrap_or(0),
    };
    let layout = kernel_layout::resolve(&layout_btf, &symbols)?;
    log::debug!("kernel layout: {layout:?}");

    let mut ebpf = {
        let mut loader = EbpfLoader::new();
        loader.override_global(LAYOUT_GLOBAL, &layout, true).map_max_entries(map_name::EVENTS, ring_buffer_bytes);
        for sensor in &sensors {
            sensor.configure(&mut loader);
        }
        loader.load(PROBES_OBJECT)?
    };
    for sensor in sensors.iter_mut() {
        sensor.loaded(&mut ebpf).map_err(|source| Error::Sensor { sensor: sensor.declaration().name, source })?;
    }

    let cgroup = proc::cgroup2_root().ok_or(Error::NoCgroup2)?;
    let mut attacher = Attacher { ebpf: &mut ebpf, btf: &aya_btf, cgroup: &cgroup, loaded: HashSet::new() };
    let mut probes = Vec::new();
    let mut started = Vec::new();
    for mut sensor in sensors.drain(..) {
        let (status, backend, sensor_probes) = attacher.attach_sensor(sensor.as_mut());
        probes.extend(sensor_probes);
        started.push((sensor, status, backend));
    }
    if probes.iter().all(|p| !p.attached) {
        let first = probes.iter().find_map(|s| s.error.clone()).unwrap_or_default();
        return Err(Error::NothingAttached(first));
    }
    Ok(Loaded { ebpf, probes, sensors: started })
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("program {0} is missing from the eBPF object")]
    Missing(&'static str),
    #[error("{0}")]
    Program(#[from] ProgramError),
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup { path: std::path::PathBuf, source: std::io::Error },
    #[error("{0}")]
    Socket(crate::sensors::SensorError),
}

/// An attach error in a line or a few: the verifier's log of a refused
/// program is cut to its verdict (its last lines), which says why.
fn describe(err: &AttachError) -> String {
    let AttachError::Program(ProgramError::LoadError { io_error, verifier_log }) = err else {
        return err.to_string();
    };
    let log = verifier_log.to_string();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let verdict = lines[lines.len().saturating_sub(6)..].join(" | ");
    format!("the kernel refused the program ({io_error}); verifier: {verdict}")
}

struct Attacher<'a> {
    ebpf: &'a mut Ebpf,
    btf: &'a aya::Btf,
    cgroup: &'a Path,
    /// Programs loaded into the kernel so far (a program may attach at several hooks).
    loaded: HashSet<&'static str>,
}

/// What attaching one backend gave.
struct Attempt {
    backend: &'static Backend,
    /// Each probe's error, if it failed.
    results: Vec<(&'static Probe, Option<String>)>,
    /// Undoes the attached probes, when another backend is taken instead.
    links: Vec<(&'static str, Link)>,
}

enum Link {
    Tracepoint(aya::programs::trace_point::TracePointLinkId),
    BtfTracepoint(aya::programs::tp_btf::BtfTracePointLinkId),
    CgroupSysctl(aya::programs::cgroup_sysctl::CgroupSysctlLinkId),
    /// The socket the filter sits on (owned by its sensor).
    SocketFilter(std::os::fd::RawFd),
    FEntry(aya::programs::fentry::FEntryLinkId),
    FExit(aya::programs::fexit::FExitLinkId),
    KProbe(aya::programs::kprobe::KProbeLinkId),
}

impl Attempt {
    fn attached(&self) -> usize {
        self.results.iter().filter(|(_, error)| error.is_none()).count()
    }
}

impl Attacher<'_> {
    /// Tries the sensor's backends in order; the first whose probes all
    /// attach wins, else the one that attached the most runs degraded.
    fn attach_sensor(&mut self, sensor: &mut dyn Sensor) -> (SensorStatus, &'static str, Vec<ProbeStatus>) {
        let declaration = sensor.declaration();
        let mut best: Option<Attempt> = None;
        let mut refused = Vec::new();
        for backend in declaration.backends {
            let attempt = self.attach_backend(sensor, backend);
            let complete = attempt.attached() == backend.probes.len();
            if !complete {
                let first_error =
                    attempt.results.iter().find_map(|(p, e)| e.as_ref().map(|e| format!("{}: {e}", p.program)));
                refused.push(format!("{} ({})", backend.name, first_error.unwrap_or_default()));
            }
            match best.take() {
                Some(previous) if !complete && previous.attached() >= attempt.attached() => {
                    self.detach(attempt);
                    best = Some(previous);
                }
                previous => {
                    if let Some(previous) = previous {
                        self.detach(previous);
                    }
                    best = Some(attempt);
                }
            }
            if complete {
                break;
            }
        }
        let best = best.expect("every sensor has a backend");
        let attached = best.attached();
        let state = if attached == best.backend.probes.len() {
            SensorState::Attached
        } else if attached > 0 {
            SensorState::Degraded
        } else {
            SensorState::Failed
        };
        let reason = (state != SensorState::Attached).then(|| format!("not attached: {}", refused.join("; ")));
        if state == SensorState::Attached && !refused.is_empty() {
            log::info!(
                "sensor {}: {} refused by this kernel, {} used",
                declaration.name,
                refused.join("; "),
                best.backend.name
            );
        }
        let probes = best
            .results
            .iter()
            .map(|(probe, error)| ProbeStatus {
                probe: probe.program.to_owned(),
                sensor: declaration.name.to_owned(),
                backend: best.backend.name.to_owned(),
                hook: probe.hook.describe(),
                attached: error.is_none(),
                error: error.clone(),
            })
            .collect();
        for (probe, error) in &best.results {
            if let Some(error) = error {
                log::warn!(
                    "probe {} at {} ({}) not attached: {error}",
                    probe.program,
                    probe.hook.describe(),
                    declaration.name
                );
            }
        }
        let status =
            SensorStatus { sensor: declaration.name.to_owned(), backend: best.backend.name.to_owned(), state, reason };
        (status, best.backend.name, probes)
    }

    fn attach_backend(&mut self, sensor: &mut dyn Sensor, backend: &'static Backend) -> Attempt {
        let mut attempt = Attempt { backend, results: Vec::new(), links: Vec::new() };
        for probe in backend.probes {
            match self.attach(sensor, probe) {
                Ok(link) => {
                    attempt.links.push((probe.program, link));
                    attempt.results.push((probe, None));
                }
                Err(err) => attempt.results.push((probe, Some(describe(&err)))),
            }
        }
        attempt
    }

    fn detach(&mut self, attempt: Attempt) {
        for (program, link) in attempt.links {
            let Some(program) = self.ebpf.program_mut(program) else { continue };
            let result = match (program, link) {
                (Program::TracePoint(p), Link::Tracepoint(id)) => p.detach(id),
                (Program::BtfTracePoint(p), Link::BtfTracepoint(id)) => p.detach(id),
                (Program::CgroupSysctl(p), Link::CgroupSysctl(id)) => p.detach(id),
                (Program::FEntry(p), Link::FEntry(id)) => p.detach(id),
                (Program::FExit(p), Link::FExit(id)) => p.detach(id),
                (Program::KProbe(p), Link::KProbe(id)) => p.detach(id),
                (Program::SocketFilter(_), Link::SocketFilter(fd)) => {
                    // SAFETY: the sensor that owns the socket is alive and keeps it open.
                    SocketFilter::detach(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
                }
                _ => Ok(()),
            };
            if let Err(err) = result {
                log::warn!("detaching a probe of an unused backend failed: {err}");
            }
        }
    }

    fn attach(&mut self, sensor: &mut dyn Sensor, probe: &'static Probe) -> Result<Link, AttachError> {
        let program = self.ebpf.program_mut(probe.program).ok_or(AttachError::Missing(probe.program))?;
        let first = self.loaded.insert(probe.program);
        let result = match probe.hook {
            Hook::Tracepoint { category, name } => {
                let tp: &mut TracePoint = program.try_into()?;
                if first {
                    tp.load()?;
                }
                tp.attach(category, name).map(Link::Tracepoint)
            }
            Hook::BtfTracepoint { name } => {
                let tp: &mut BtfTracePoint = program.try_into()?;
                if first {
                    tp.load(name, self.btf)?;
                }
                tp.attach().map(Link::BtfTracepoint)
            }
            Hook::CgroupSysctl => {
                let prog: &mut CgroupSysctl = program.try_into()?;
                if first {
                    prog.load()?;
                }
                let dir = std::fs::File::open(self.cgroup)
                    .map_err(|source| AttachError::Cgroup { path: self.cgroup.to_path_buf(), source })?;
                prog.attach(&dir, CgroupAttachMode::Single).map(Link::CgroupSysctl)
            }
            Hook::SensorSocket => {
                let prog: &mut SocketFilter = program.try_into()?;
                if first {
                    prog.load()?;
                }
                let socket = sensor.socket().map_err(AttachError::Socket)?;
                let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
                prog.attach(socket).map(|()| Link::SocketFilter(fd))
            }
            Hook::FEntry { function } => {
                let prog: &mut FEntry = program.try_into()?;
                if first {
                    prog.load(function, self.btf)?;
                }
                prog.attach().map(Link::FEntry)
            }
            Hook::FExit { function } => {
                let prog: &mut FExit = program.try_into()?;
                if first {
                    prog.load(function, self.btf)?;
                }
                prog.attach().map(Link::FExit)
            }
            Hook::KProbe { function } | Hook::KRetProbe { function } => {
                let prog: &mut KProbe = program.try_into()?;
                if first {
                    prog.load()?;
                }
                prog.attach(function, 0).map(Link::KProbe)
            }
        };
        Ok(result?)
    }
}
