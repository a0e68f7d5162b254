//! Reads what the kernel side produced: event records from the ring buffer
//! and the per-CPU counters of lost events and probe errors.

use aya::maps::{MapData, PerCpuArray, RingBuf};
use nstrail_abi::{event_kind, map_name, probe_error};
use tokio::io::{unix::AsyncFd, Interest};

use crate::Error;

/// The events ring buffer, readable from async code.
pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventReader {
    pub fn new(ebpf: &mut aya::Ebpf) -> Result<Self, Error> {
        let map = ebpf.take_map(map_name::EVENTS).ok_or(Error::Map {
            name: map_name::EVENTS,
            source: aya::maps::MapError::InvalidName { name: map_name::EVENTS.into() },
        })?;
        let ring = RingBuf::try_from(map).map_err(|source| Error::Map { name: map_name::EVENTS, source })?;
        Ok(Self { ring: crate::sys::async_fd(ring, Interest::READABLE)? })
    }

    /// Waits until records are available.
    pub async fn readable(&mut self) -> std::io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Hands every available record to `f`; returns how many there were.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let ring = self.ring.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            f(&item);
            n += 1;
        }
        n
    }
}

/// Running totals of a per-CPU counter array, reported as increases.
pub struct CounterDeltas {
    counters: PerCpuArray<MapData, u64>,
    last: Vec<u64>,
}

impl CounterDeltas {
    fn open(ebpf: &mut aya::Ebpf, name: &'static str, len: u32) -> Result<Self, Error> {
        let map = ebpf
            .take_map(name)
            .ok_or(Error::Map { name, source: aya::maps::MapError::InvalidName { name: name.into() } })?;
        let counters = PerCpuArray::try_from(map).map_err(|source| Error::Map { name, source })?;
        Ok(Self { counters, last: vec![0; len as usize] })
    }

    /// (index, increase since the previous call) for every counter that grew.
    pub fn increases(&mut self) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        for (index, last) in self.last.iter_mut().enumerate() {
            let Ok(values) = self.counters.get(&(index as u32), 0) else {
                continue;
            };
            let total: u64 = values.iter().copied().sum();
            if total > *last {
                out.push((index as u32, total - *last));
                *last = total;
            }
        }
        out
    }
}

/// Lost-event and probe-error counters of the kernel side.
pub struct KernelCounters {
    pub lost_events: CounterDeltas,
    pub probe_errors: CounterDeltas,
}

impl KernelCounters {
    pub fn new(ebpf: &mut aya::Ebpf) -> Result<Self, Error> {
        Ok(Self {
            lost_events: CounterDeltas::open(ebpf, map_name::LOST_EVENTS, event_kind::COUNT)?,
            probe_errors: CounterDeltas::open(ebpf, map_name::PROBE_ERRORS, probe_error::COUNT)?,
        })
    }

    /// Records lost since the last call, by record kind.
    pub fn lost(&mut self) -> Vec<(u32, u64)> {
        self.lost_events.increases()
    }

    /// Logs probe-side errors since the last call.
    pub fn log_probe_errors(&mut self) {
        for (which, n) in self.probe_errors.increases() {
            let what = match which {
                probe_error::KERNEL_READ => "kernel reads failed in probes",
                probe_error::NETNS_WALK_TRUNCATED => "namespace walks hit their bound (destroys may be missed)",
                probe_error::LAYOUT_MISSING => "probe runs found no kernel layout (agent bug)",
                probe_error::SYSCTL_PENDING_FULL => {
                    "sysctl writes could not wait for their outcome (reported as unknown)"
                }
                probe_error::SYSCTL_GLOB_BOUND => "sysctl policy matches hit their step bound (taken as not matching)",
                _ => "unknown probe errors",
            };
            log::warn!("{n} {what}");
        }
    }
}
