//! Sysctl writes: `cgroup/sysctl` on the cgroup2 root sees every /proc/sys
//! access (and applies the policy). Whether the kernel then applied a
//! write comes from the return of the sysctl handler (fexit, else a
//! kretprobe on `proc_sys_call_handler`), or, on kernels that allow
//! neither, from the sensor's worker checking the value afterwards: no
//! program runs on every write(2) of the system.
//!
//! The TCP socket count of the write's namespace (`tcp_sockets_in_use`)
//! is read by the worker thread too, never on the agent's event loop;
//! every write passes through it, so their order is kept.

pub mod policy;
pub mod value_text;
mod worker;

use std::sync::mpsc;

use aya::{
    maps::{Array, MapData},
    Ebpf, EbpfLoader,
};
use nstrail_abi::{
    config_slot, event_kind, map_name,
    sysctl::{sysctl_flags, sysctl_result, SysctlRule, SysctlWriteEvent, SYSCTL_WRITE_FIXED},
    HOST_NETNS_COOKIE_GLOBAL,
};

pub use policy::SysctlPolicy;
use value_text::{dotted_name, value_text};
use worker::{Job, Worker, Write};

use super::{
    read_record_prefix, Backend, Declaration, Draft, Hook, MessageReceiver, Probe, RecordError, RecordKind, Sensor,
    SensorError, StartContext,
};
use crate::event::{Actor, Event, EventBody, Netns, SysctlResult};

const ACCESS: Probe = Probe { program: "sysctl_access", hook: Hook::CgroupSysctl };
const HANDLER: &str = "proc_sys_call_handler";
/// The backend without a probe on the handler's return.
const READ_BACK: &str = "read_back";

static DECLARATION: Declaration = Declaration {
    name: "sysctl_write",
    backends: &[
        Backend {
            name: "fentry",
            probes: &[ACCESS, Probe { program: "sysctl_return_fexit", hook: Hook::FExit { function: HANDLER } }],
        },
        Backend {
            name: "kprobe",
            probes: &[
                ACCESS,
                Probe { program: "sysctl_return_kretprobe", hook: Hook::KRetProbe { function: HANDLER } },
            ],
        },
        Backend { name: READ_BACK, probes: &[ACCESS] },
    ],
    records: &[RecordKind { kind: event_kind::SYSCTL_WRITE, lost_as: "sysctl_write" }],
    events: &["sysctl_write"],
    losses: &[],
    depends_on: &[],
};

pub struct SysctlWrites {
    policy: SysctlPolicy,
    /// The host namespace's id for `netns = "host"` rules, and the reason
    /// when it could not be read (read when the programs are configured).
    host_netns: std::sync::OnceLock<Result<u64, String>>,
    batch: Vec<Write>,
    worker: Option<mpsc::Sender<Job>>,
    config: Option<Array<MapData, u32>>,
}

impl SysctlWrites {
    pub fn new(policy: SysctlPolicy) -> Self {
        Self { policy, host_netns: std::sync::OnceLock::new(), batch: Vec::new(), worker: None, config: None }
    }

    fn host_netns(&self) -> &Result<u64, String> {
        self.host_netns.get_or_init(|| crate::sys::nsfs::host_netns_id().map_err(|e| e.to_string()))
    }
}

impl Sensor for SysctlWrites {
    fn declaration(&self) -> &'static Declaration {
        &DECLARATION
    }

    fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        static UNKNOWN: u64 = 0;
        let cookie = self.host_netns().as_ref().unwrap_or(&UNKNOWN);
        loader.override_global(HOST_NETNS_COOKIE_GLOBAL, cookie, true);
    }

    fn loaded(&mut self, ebpf: &mut Ebpf) -> Result<(), SensorError> {
        if let Err(reason) = self.host_netns() {
            if self.policy.needs_host_netns() {
                return Err(SensorError::Other(format!(
                    "the sysctl policy has netns = \"host\"/\"other\" rules but the host namespace's id cannot be read: {reason}"
                )));
            }
            log::warn!("cannot read the host netns id ({reason}); policy rules cannot tell host from other namespaces");
        }
        let name = map_name::SYSCTL_POLICY;
        let map = ebpf
            .map_mut(name)
            .ok_or(SensorError::Map { name, source: aya::maps::MapError::InvalidName { name: name.into() } })?;
        let mut rules: Array<_, SysctlRule> =
            Array::try_from(map).map_err(|source| SensorError::Map { name, source })?;
        for (index, rule) in self.policy.kernel_rules().iter().enumerate() {
            rules.set(index as u32, rule, 0).map_err(|source| SensorError::Map { name, source })?;
        }
        if !self.policy.rules.is_empty() {
            log::info!("sysctl policy: {} rules active", self.policy.rules.len());
        }
        let name = map_name::PROBE_CONFIG;
        let map = ebpf
            .take_map(name)
            .ok_or(SensorError::Map { name, source: aya::maps::MapError::InvalidName { name: name.into() } })?;
        self.config = Some(Array::try_from(map).map_err(|source| SensorError::Map { name, source })?);
        Ok(())
    }

    fn start(
        &mut self,
        backend: &'static str,
        context: StartContext<'_>,
    ) -> Result<Option<MessageReceiver>, SensorError> {
        if backend != READ_BACK {
            // A probe reports each outcome: the cgroup program parks writes for it.
            let name = map_name::PROBE_CONFIG;
            let config = self.config.as_mut().ok_or(SensorError::Other(format!("no {name} map")))?;
            config.set(config_slot::SYSCTL_OUTCOME_PROBE, 1, 0).map_err(|source| SensorError::Map { name, source })?;
        }
        let (to_agent, from_worker) = tokio::sync::mpsc::unbounded_channel();
        let (to_worker, jobs) = mpsc::channel();
        let worker = Worker::new(context.scan.clone(), to_agent);
        std::thread::Builder::new().name("nstrail-sysctl".into()).spawn(move || worker.run(jobs))?;
        self.worker = Some(to_worker);
        Ok(Some(from_worker))
    }

    fn record(&mut self, kind: u32, bytes: &[u8], _out: &mut Vec<Draft>) -> Result<(), RecordError> {
        if kind != event_kind::SYSCTL_WRITE {
            return Err(RecordError::UnknownKind(kind));
        }
        let record: SysctlWriteEvent = read_record_prefix(bytes, SYSCTL_WRITE_FIXED, "sysctl_write event")?;
        if bytes.len() < record.wire_len() {
            return Err(RecordError::Short { what: "sysctl_write text", len: bytes.len(), need: record.wire_len() });
        }
        self.batch.push(pending(&record));
        Ok(())
    }

    fn records_done(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        if let Some(worker) = &self.worker {
            let _ = worker.send(Job::Writes(batch));
        }
    }

    fn observe(&mut self, event: &Event) {
        if let (EventBody::NetnsDestroy { netns, .. }, Some(worker)) = (&event.body, &self.worker) {
            let _ = worker.send(Job::Destroyed(netns.id));
        }
    }

    fn rescanned(&mut self, scan: &std::sync::Arc<crate::inventory::scan::Scan>) {
        if let Some(worker) = &self.worker {
            let _ = worker.send(Job::Scanned(scan.clone()));
        }
    }

    fn stop(&mut self) {
        self.records_done();
        // The worker sends what it has, then ends and closes its channel.
        self.worker = None;
    }
}

fn pending(e: &SysctlWriteEvent) -> Write {
    let sysctl = dotted_name(e.name());
    let result = match e.result {
        sysctl_result::APPLIED => SysctlResult::Applied,
        sysctl_result::REJECTED => SysctlResult::Rejected,
        sysctl_result::DENIED => SysctlResult::Denied,
        _ => SysctlResult::Unknown,
    };
    let netns = Netns::from(e.netns);
    let path = String::from_utf8_lossy(e.name()).into_owned();
    let body = EventBody::SysctlWrite {
        old: (e.flags & sysctl_flags::OLD_UNAVAILABLE == 0).then(|| value_text(e.old_value())),
        new: value_text(e.new_value()),
        truncated: e.flags & (sysctl_flags::NAME_TRUNCATED | sysctl_flags::OLD_TRUNCATED | sysctl_flags::NEW_TRUNCATED)
            != 0,
        errno: matches!(result, SysctlResult::Rejected | SysctlResult::Denied).then_some(e.errno),
        rule: (e.rule != 0).then_some(e.rule),
        result,
        sysctl,
        netns,
        actor: Actor::from(&e.actor),
        tcp_sockets_in_use: None,
    };
    Write {
        draft: Draft { boot_ns: e.header.boot_ns, body },
        pid: e.actor.pid,
        tid: e.actor.tid,
        path,
        // A truncated value cannot be compared with what is read back.
        check_outcome: e.result == sysctl_result::UNCHECKED && e.flags & sysctl_flags::NEW_TRUNCATED == 0,
        seen: std::time::Instant::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::{records::bytes_of, SensorMessage};
    use nstrail_abi::EventHeader;

    /// A write of `new` over `old` to `name`, by this thread, in its own namespace.
    fn record(name: &str, old: &str, new: &str, result: u32) -> SysctlWriteEvent {
        let mut record = SysctlWriteEvent::zeroed();
        record.header = EventHeader { kind: event_kind::SYSCTL_WRITE, cpu: 0, boot_ns: 9 };
        let text = [name, old, new].concat();
        record.text[..text.len()].copy_from_slice(text.as_bytes());
        record.name_len = name.len() as u32;
        record.old_len = old.len() as u32;
        record.new_len = new.len() as u32;
        record.result = result;
        record.actor.pid = std::process::id();
        // SAFETY: gettid has no preconditions.
        record.actor.tid = unsafe { libc::gettid() } as u32;
        let path = std::path::Path::new("/proc/thread-self/ns/net");
        record.netns.inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap()) as u32;
        record.netns.cookie = crate::sys::nsfs::ns_id(path).unwrap();
        record
    }

    /// The events the sensor makes of `records`, through its worker.
    fn through_the_sensor(records: &[SysctlWriteEvent]) -> Vec<Draft> {
        let mut sensor = SysctlWrites::new(SysctlPolicy::default());
        let context = StartContext {
            scan: &std::sync::Arc::new(Default::default()),
            dependencies: vec![],
            nsids: Default::default(),
        };
        let mut rx = sensor.start(READ_BACK, context).unwrap().unwrap();
        let mut out = Vec::new();
        for record in records {
            // As the kernel writes it: only as long as its text.
            sensor.record(event_kind::SYSCTL_WRITE, &bytes_of(record)[..record.wire_len()], &mut out).unwrap();
        }
        assert!(out.is_empty(), "every write goes through the worker");
        sensor.records_done();
        sensor.stop();
        let mut drafts = Vec::new();
        while let Some(message) = rx.blocking_recv() {
            let SensorMessage::Events(events) = message else { panic!("{message:?}") };
            drafts.extend(events);
        }
        drafts
    }

    fn result_of(draft: &Draft) -> SysctlResult {
        let EventBody::SysctlWrite { result, .. } = &draft.body else { panic!("{draft:?}") };
        *result
    }

    #[test]
    fn a_write_becomes_an_event_with_its_socket_count() {
        let raw = record("net/ipv4/tcp_keepalive_time", "7200\n", "600\n", sysctl_result::APPLIED);
        let drafts = through_the_sensor(&[raw]);
        let EventBody::SysctlWrite { sysctl, old, new, result, tcp_sockets_in_use, netns, .. } = &drafts[0].body else {
            panic!("{drafts:?}")
        };
        assert_eq!(
            (sysctl.as_str(), old.as_deref(), new.as_str(), *result),
            ("net.ipv4.tcp_keepalive_time", Some("7200"), "600", SysctlResult::Applied)
        );
        assert_eq!(netns.id, raw.netns.cookie);
        assert!(tcp_sockets_in_use.is_some(), "read in its namespace");
        assert_eq!(drafts[0].boot_ns, 9);
    }

    #[test]
    fn unchecked_outcomes_come_from_the_next_write_or_the_value_read_back() {
        let now = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
        let now = now.trim();
        let drafts = through_the_sensor(&[
            // Refused: the next write's old value is still the current one.
            record("net/ipv4/ip_forward", now, "abc", sysctl_result::UNCHECKED),
            // Its outcome from reading back: the value it asked for is there.
            record("net/ipv4/ip_forward", now, now, sysctl_result::UNCHECKED),
            // Reported by the kernel side: kept.
            record("net/ipv4/ip_default_ttl", "64", "7", sysctl_result::DENIED),
        ]);
        let results: Vec<_> = drafts.iter().map(result_of).collect();
        assert_eq!(results, [SysctlResult::Rejected, SysctlResult::Applied, SysctlResult::Denied]);
    }
}
