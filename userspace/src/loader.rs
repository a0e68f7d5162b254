//! Loads the embedded kernel programs with this kernel's layout and attaches
//! every sensor, reporting each probe's outcome.

use std::{collections::HashSet, path::PathBuf};

use aya::{
    maps::Array,
    programs::{links::CgroupAttachMode, BtfTracePoint, CgroupSysctl, ProgramError, SocketFilter, TracePoint},
    Ebpf, EbpfLoader,
};
use nstrail_abi::{map_name, sysctl::SysctlRule, HOST_NETNS_COOKIE_GLOBAL, LAYOUT_GLOBAL};

use crate::{
    btf::Btf,
    event::ProbeStatus,
    kernel_layout,
    policy::SysctlPolicy,
    rtnetlink::Listener,
    sensors::{self, Hook, Probe},
    Error,
};

/// The kernel programs, built by build.rs from ebpf-probes/programs.
static PROBES_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nstrail-probes"));

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Size of the event ring buffer in bytes (a power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
    pub sysctl_policy: SysctlPolicy,
    /// Receive buffer of the device sensor's rtnetlink listener, in bytes
    /// (each link notification takes about 2 KiB of it).
    pub device_listener_buffer_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 8 * 1024 * 1024,
            sysctl_policy: SysctlPolicy::default(),
            device_listener_buffer_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The loaded object and what became of each probe.
pub struct LoadedProbes {
    pub ebpf: Ebpf,
    pub status: Vec<ProbeStatus>,
    /// The rtnetlink listener of the device_move sensor, when it attached.
    pub device_listener: Option<Listener>,
}

const SO_NETNS_COOKIE: libc::c_int = 71;

/// Cookie of the agent's own network namespace, from a socket made in it.
fn own_netns_cookie() -> std::io::Result<u64> {
    if let Ok(id) = crate::nsfs::ns_id(std::path::Path::new("/proc/thread-self/ns/net")) {
        return Ok(id);
    }
    let mut id: u64 = 0;
    // SAFETY: plain socket/getsockopt/close on our own fd.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, (&mut id as *mut u64).cast(), &mut len);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(id)
}

/// Cookie of the host network namespace: that of pid 1 or, where pid 1's
/// namespace cannot be opened (some sandboxes), the agent's own.
pub fn host_netns_cookie() -> std::io::Result<u64> {
    match crate::nsfs::ns_id(std::path::Path::new("/proc/1/ns/net")) {
        Ok(id) => Ok(id),
        Err(err) => {
            let own = own_netns_cookie()?;
            log::info!("pid 1's network namespace is not readable ({err}); taking the agent's own as the host's");
            Ok(own)
        }
    }
}

/// Mount point of the cgroup2 hierarchy (`/sys/fs/cgroup` or, on hybrid
/// systems, `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> Result<PathBuf, Error> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<_> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .ok_or(Error::NoCgroup2)
}

pub fn load(options: &LoadOptions) -> Result<LoadedProbes, Error> {
    crate::preflight::check()?;
    let btf = Btf::from_running_kernel()?;
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").map_err(Error::KallsymsRead)?;
    let cleanup_net = kernel_layout::find_text_symbol(&kallsyms, "cleanup_net")?;
    let layout = kernel_layout::resolve(&btf, cleanup_net)?;
    log::debug!("kernel layout: {layout:?}");
    let host_cookie = match host_netns_cookie() {
        Ok(cookie) => cookie,
        Err(err) if options.sysctl_policy.needs_host_netns() => return Err(Error::HostNetns(err)),
        Err(err) => {
            log::warn!("cannot read the host netns id ({err}); policy rules cannot tell host from other namespaces");
            0
        }
    };

    let mut ebpf = EbpfLoader::new()
        .override_global(LAYOUT_GLOBAL, &layout, true)
        .override_global(HOST_NETNS_COOKIE_GLOBAL, &host_cookie, true)
        .map_max_entries(map_name::EVENTS, options.ring_buffer_bytes)
        .load(PROBES_OBJECT)?;
    install_policy(&mut ebpf, &options.sysctl_policy)?;

    let aya_btf = aya::Btf::from_sys_fs()?;
    let cgroup = cgroup2_root()?;
    let mut loaded = HashSet::new();
    let mut status = Vec::new();
    let mut device_listener = None;
    for sensor in sensors::ALL {
        for probe in sensor.probes {
            let result = attach(&mut ebpf, probe, &aya_btf, &cgroup, &mut loaded, options, &mut device_listener);
            if let Err(err) = &result {
                log::warn!("probe {} at {} ({}) not attached: {err}", probe.program, probe.hook.describe(), sensor.name);
            }
            status.push(ProbeStatus {
                probe: probe.program.to_owned(),
                sensor: sensor.name.to_owned(),
                hook: probe.hook.describe(),
                attached: result.is_ok(),
                error: result.err().map(|e| e.to_string()),
            });
        }
    }
    if status.iter().all(|s| !s.attached) {
        let first = status.iter().find_map(|s| s.error.clone()).unwrap_or_default();
        return Err(Error::NothingAttached(first));
    }
    Ok(LoadedProbes { ebpf, status, device_listener })
}

fn install_policy(ebpf: &mut Ebpf, policy: &SysctlPolicy) -> Result<(), Error> {
    let name = map_name::SYSCTL_POLICY;
    let map = ebpf.map_mut(name).ok_or(Error::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })?;
    let mut rules: Array<_, SysctlRule> = Array::try_from(map).map_err(|source| Error::Map { name, source })?;
    for (index, rule) in policy.kernel_rules().iter().enumerate() {
        rules.set(index as u32, rule, 0).map_err(|source| Error::Map { name, source })?;
    }
    if !policy.rules.is_empty() {
        log::info!("sysctl policy: {} rules active", policy.rules.len());
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("program {0} is missing from the eBPF object")]
    Missing(&'static str),
    #[error("{0}")]
    Program(#[from] ProgramError),
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: std::io::Error },
    #[error("cannot open the rtnetlink listener (NETLINK_LISTEN_ALL_NSID, Linux 4.2+; moves report IFLA_NEW_IFINDEX from 4.16): {0}")]
    Listener(std::io::Error),
}

fn attach(
    ebpf: &mut Ebpf,
    probe: &Probe,
    btf: &aya::Btf,
    cgroup: &std::path::Path,
    loaded: &mut HashSet<&'static str>,
    options: &LoadOptions,
    device_listener: &mut Option<Listener>,
) -> Result<(), AttachError> {
    let program = ebpf.program_mut(probe.program).ok_or(AttachError::Missing(probe.program))?;
    let first = loaded.insert(probe.program);
    match probe.hook {
        Hook::Tracepoint { category, name } => {
            let tp: &mut TracePoint = program.try_into()?;
            if first {
                tp.load()?;
            }
            tp.attach(category, name)?;
        }
        Hook::BtfTracepoint { name } => {
            let tp: &mut BtfTracePoint = program.try_into()?;
            if first {
                tp.load(name, btf)?;
            }
            tp.attach()?;
        }
        Hook::CgroupSysctl => {
            let prog: &mut CgroupSysctl = program.try_into()?;
            if first {
                prog.load()?;
            }
            let dir = std::fs::File::open(cgroup)
                .map_err(|source| AttachError::Cgroup { path: cgroup.to_path_buf(), source })?;
            prog.attach(&dir, CgroupAttachMode::Single)?;
        }
        Hook::RtnetlinkListener => {
            let prog: &mut SocketFilter = program.try_into()?;
            if first {
                prog.load()?;
            }
            let listener = Listener::open(options.device_listener_buffer_bytes).map_err(AttachError::Listener)?;
            prog.attach(&listener)?;
            *device_listener = Some(listener);
        }
    }
    Ok(())
}
