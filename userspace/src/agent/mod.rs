//! The agent: loads what the sensors declare, then runs the loop that
//! reads the kernel's records, hands each to the sensor that owns its
//! kind, numbers and labels the events the sensors make, and sends them to
//! every output. It names no sensor.
//!
//! The path of one event:
//! kernel program → ring buffer → [`reader`] → the owning sensor's
//! `record` (→ the sensor's worker thread, for some) → `Draft` →
//! numbered by the `Sequencer`, labelled by the inventory → every
//! sensor's `observe` → [`output`] → each exporter.

mod background;
mod kernel_layout;
mod loader;
mod output;
mod preflight;
mod reader;

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    task::Poll,
    time::Duration,
};

use aya_log::EbpfLogger;

pub use background::BackgroundAgent;
pub use loader::probes_object;
use output::Output;
use reader::{EventReader, KernelCounters};

use crate::{
    event::{sequence::Sequencer, Event, EventBody, ProbeStatus, SensorState, SensorStatus},
    export::Exporter,
    inventory::{refresh, scan, Inventory},
    metrics::{Metrics, MetricsOptions},
    sensors::{self, kind_of, Draft, MessageReceiver, Sensor, SensorMessage, SensorOptions, StartContext},
    sys::proc,
    Error,
};

/// How often lost-record counters are read when no event arrives.
const COUNTER_POLL: Duration = Duration::from_millis(500);
/// Outputs (stdout, audit log) are flushed this long after the first
/// unflushed record, so records close together share one write; the live
/// API stream does not wait.
const FLUSH_DELAY: Duration = Duration::from_millis(5);
/// At stop, the sensors' workers send what they hold: the agent waits as
/// long as they make progress, giving up after this long without a message
/// from any of them, or after [`WORKERS_FINISH_AT_MOST`] in all (below the
/// systemd unit's TimeoutStopSec of 30 s).
const WORKERS_IDLE: Duration = Duration::from_secs(5);
const WORKERS_FINISH_AT_MOST: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Size of the event ring buffer in bytes (a power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
    pub sensors: SensorOptions,
    pub metrics: MetricsOptions,
    /// `[inventory] leak_age`: a namespace without a member process for
    /// this long, claimed by no running container, is reported as leaked.
    pub leak_age: Duration,
    /// `[inventory] cri_socket`: the container runtime asked for pods.
    pub cri_socket: crate::inventory::pods::CriSocket,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 8 * 1024 * 1024,
            sensors: SensorOptions::default(),
            metrics: MetricsOptions::default(),
            leak_age: crate::inventory::leaks::DEFAULT_AGE,
            cri_socket: Default::default(),
        }
    }
}

/// What a run did, for the caller and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub events: u64,
    pub lost: u64,
    pub decode_errors: u64,
}

/// Loaded and attached probes and started sensors, ready to run.
pub struct Agent {
    _ebpf: aya::Ebpf,
    probes: Vec<ProbeStatus>,
    sensor_status: Vec<SensorStatus>,
    sensors: Vec<Box<dyn Sensor>>,
    /// Each sensor's worker, while it sends.
    workers: Vec<Option<MessageReceiver>>,
    /// Record kind → index of the sensor that decodes it.
    owners: HashMap<u32, usize>,
    /// Record kind → `event_type` of lost records.
    lost_as: HashMap<u32, &'static str>,
    events: EventReader,
    counters: KernelCounters,
    probe_log: Option<EbpfLogger<&'static dyn log::Log>>,
    sequencer: Sequencer,
    inventory: Arc<Mutex<Inventory>>,
    metrics: Arc<Metrics>,
    /// Where the inventory's refresh asks for pods.
    cri_socket: crate::inventory::pods::CriSocket,
}

impl Agent {
    /// Checks the host, loads and attaches every sensor's probes, and
    /// starts the sensors. Must be called inside a tokio runtime (the
    /// readers register with its reactor).
    pub fn load(options: &AgentOptions) -> Result<Self, Error> {
        let loaded = loader::load(sensors::all(&options.sensors), options.ring_buffer_bytes)?;
        let mut ebpf = loaded.ebpf;
        let probe_log = match EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                log::warn!("probe diagnostics unavailable: {err}");
                None
            }
        };
        let events = EventReader::new(&mut ebpf)?;
        let counters = KernelCounters::new(&mut ebpf)?;
        // The probes are attached: whatever the scan finds existed before us
        // or is reported by an event from now on.
        let first_scan = Arc::new(scan::scan());
        let mut inventory = Inventory::from_scan(&first_scan);
        inventory.set_leak_age(options.leak_age);
        // Namespaces without a member process now have had none since the agent started, at least.
        inventory.track_leaks(&first_scan);
        let nsids = inventory.nsids();
        let inventory = Arc::new(Mutex::new(inventory));

        let (mut sensors, mut sensor_status, mut workers) = (Vec::new(), Vec::new(), Vec::new());
        let (mut owners, mut lost_as) = (HashMap::new(), HashMap::new());
        let mut running: HashMap<&'static str, bool> = HashMap::new();
        for (mut sensor, mut status, backend) in loaded.sensors {
            let declaration = sensor.declaration();
            let dependencies: Vec<_> =
                declaration.depends_on.iter().map(|d| (*d, running.get(d).copied().unwrap_or(false))).collect();
            let mut worker = None;
            if status.state != SensorState::Failed {
                let context =
                    StartContext { scan: &first_scan, dependencies: dependencies.clone(), nsids: nsids.clone() };
                match sensor.start(backend, context) {
                    Ok(receiver) => worker = receiver,
                    Err(err) => {
                        status.state = SensorState::Failed;
                        status.reason = Some(format!("cannot start: {err}"));
                    }
                }
            }
            let missing: Vec<_> = dependencies.iter().filter(|(_, up)| !up).map(|(name, _)| *name).collect();
            if status.state == SensorState::Attached && !missing.is_empty() {
                status.state = SensorState::Degraded;
                status.reason = Some(format!("depends on {}, which does not run", missing.join(", ")));
            }
            match status.state {
                SensorState::Attached => log::info!("sensor {} runs on {}", status.sensor, status.backend),
                _ => log::warn!(
                    "sensor {} is {} on {}: {}",
                    status.sensor,
                    status.state.as_str(),
                    status.backend,
                    status.reason.as_deref().unwrap_or("")
                ),
            }
            running.insert(declaration.name, status.state != SensorState::Failed);
            for record in declaration.records {
                owners.insert(record.kind, sensors.len());
                lost_as.insert(record.kind, record.lost_as);
            }
            sensors.push(sensor);
            sensor_status.push(status);
            workers.push(worker);
        }
        let declarations: Vec<_> = sensors.iter().map(|s| s.declaration()).collect();
        let metrics = Arc::new(Metrics::new(options.metrics.clone(), &loaded.probes, &declarations, &sensor_status));
        Ok(Self {
            _ebpf: ebpf,
            probes: loaded.probes,
            sensor_status,
            sensors,
            workers,
            owners,
            lost_as,
            events,
            counters,
            probe_log,
            sequencer: Sequencer::new(),
            inventory,
            metrics,
            cri_socket: options.cri_socket.clone(),
        })
    }

    /// The agent's metrics, for the /metrics endpoint.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The live inventory, shared with the local API.
    pub fn inventory(&self) -> Arc<Mutex<Inventory>> {
        self.inventory.clone()
    }

    pub fn probes(&self) -> &[ProbeStatus] {
        &self.probes
    }

    pub fn sensors(&self) -> &[SensorStatus] {
        &self.sensor_status
    }

    /// Runs until `shutdown` completes or an exporter's consumer goes away,
    /// then takes what the kernel and the sensors still hold and flushes
    /// every exporter.
    pub async fn run(
        mut self,
        exporters: &mut [Box<dyn Exporter>],
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunSummary, Error> {
        let mut summary = RunSummary::default();
        let mut out = Output::new(exporters, self.metrics.clone());
        let start = self.sequencer.now(EventBody::AgentStart {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: proc::kernel_release(),
            probes: self.probes.clone(),
            sensors: self.sensor_status.clone(),
        });
        out.send(&start)?;
        out.flush()?;

        let mut probe_log = match self.probe_log.take() {
            Some(logger) => Some(crate::sys::async_fd(logger, tokio::io::Interest::READABLE)?),
            None => None,
        };
        let (scan_tx, mut scans) = tokio::sync::mpsc::channel(1);
        let (record_tx, mut records) = tokio::sync::mpsc::channel(4);
        let pods = crate::inventory::pods::PodWatch::new(self.cri_socket.clone());
        let refresh = tokio::spawn(refresh::run(self.inventory.clone(), pods, scan_tx, record_tx));
        let mut poll = tokio::time::interval(COUNTER_POLL);
        tokio::pin!(shutdown);
        let mut flush_at: Option<tokio::time::Instant> = None;
        while !out.closed {
            let working = self.workers.iter().any(Option::is_some);
            tokio::select! {
                _ = &mut shutdown => break,
                ready = self.events.readable() => {
                    ready?;
                    self.pump(&mut out, &mut summary)?;
                    flush_at.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_DELAY);
                }
                Some((index, message)) = next_message(&mut self.workers), if working => {
                    self.take_message(index, message, &mut out, &mut summary)?;
                    flush_at.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_DELAY);
                }
                Some(scan) = scans.recv() => {
                    for sensor in self.sensors.iter_mut() {
                        sensor.rescanned(&scan);
                    }
                }
                // The refresh runs outside this loop: its records come here to be numbered.
                Some(bodies) = records.recv() => {
                    for body in bodies {
                        self.emit_now(body, &mut out, &mut summary)?;
                    }
                    flush_at.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_DELAY);
                }
                _ = async {
                    match flush_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    flush_at = None;
                    out.flush()?;
                }
                ready = async {
                    match probe_log.as_mut() {
                        Some(fd) => fd.readable_mut().await.map(|mut g| { g.get_inner_mut().flush(); g.clear_ready(); }),
                        None => std::future::pending().await,
                    }
                } => { ready?; }
                // Lost-record counters are read on this tick, not per batch:
                // they cost a syscall per CPU and counter.
                _ = poll.tick() => {
                    self.report_counters(&mut out, &mut summary)?;
                    flush_at = None;
                    out.flush()?;
                }
            }
        }
        refresh.abort();
        // Whatever the kernel wrote before we stopped still goes out, and
        // so does what the sensors' workers hold.
        self.pump(&mut out, &mut summary)?;
        for sensor in self.sensors.iter_mut() {
            sensor.stop();
        }
        let stopping = tokio::time::Instant::now();
        let mut idle_until = stopping + WORKERS_IDLE;
        while self.workers.iter().any(Option::is_some) && !out.closed {
            let give_up = idle_until.min(stopping + WORKERS_FINISH_AT_MOST);
            tokio::select! {
                Some((index, message)) = next_message(&mut self.workers) => {
                    self.take_message(index, message, &mut out, &mut summary)?;
                    idle_until = tokio::time::Instant::now() + WORKERS_IDLE;
                }
                _ = tokio::time::sleep_until(give_up) => {
                    let waited = stopping.elapsed();
                    log::error!(
                        "sensor workers did not finish within {waited:.1?} of the stop ({WORKERS_IDLE:?} without \
                         progress at most): what they still held is not reported"
                    );
                    break;
                }
            }
        }
        self.report_counters(&mut out, &mut summary)?;
        if let Some(fd) = probe_log.as_mut() {
            fd.get_mut().flush();
        }
        out.close()?;
        Ok(summary)
    }

    /// Hands every record in the ring buffer to its sensor, then sends the
    /// events they made.
    fn pump(&mut self, out: &mut Output<'_>, summary: &mut RunSummary) -> Result<(), Error> {
        let Self { events, sensors, owners, metrics, .. } = self;
        let mut drafts = Vec::new();
        let mut undecodable = 0;
        events.drain(|bytes| {
            let result = kind_of(bytes).and_then(|kind| match owners.get(&kind) {
                Some(&owner) => sensors[owner].record(kind, bytes, &mut drafts),
                None => Err(sensors::RecordError::UnknownKind(kind)),
            });
            if let Err(err) = result {
                undecodable += 1;
                metrics.decode_error();
                log::error!("dropping undecodable record: {err}");
            }
        });
        summary.decode_errors += undecodable;
        for sensor in sensors.iter_mut() {
            sensor.records_done();
        }
        for draft in drafts {
            if out.closed {
                break;
            }
            self.emit(draft, out, summary)?;
        }
        Ok(())
    }

    fn take_message(
        &mut self,
        index: usize,
        message: Option<SensorMessage>,
        out: &mut Output<'_>,
        summary: &mut RunSummary,
    ) -> Result<(), Error> {
        match message {
            None => self.workers[index] = None,
            Some(SensorMessage::Events(drafts)) => {
                for draft in drafts {
                    self.emit(draft, out, summary)?;
                }
            }
            Some(SensorMessage::Lost { event_type, count }) => self.lost(event_type, count, out, summary)?,
            Some(SensorMessage::DecodeError(error)) => {
                summary.decode_errors += 1;
                self.metrics.decode_error();
                log::error!("{}: {error}", self.sensor_status[index].sensor);
            }
        }
        Ok(())
    }

    /// Numbers, labels and sends one event; every sensor sees it.
    fn emit(&mut self, draft: Draft, out: &mut Output<'_>, summary: &mut RunSummary) -> Result<(), Error> {
        let event = self.sequencer.at(draft.boot_ns, draft.body);
        self.send_labelled(event, out, summary)
    }

    /// A record of the agent's own (stamped now), labelled and sent like an event.
    fn emit_now(&mut self, body: EventBody, out: &mut Output<'_>, summary: &mut RunSummary) -> Result<(), Error> {
        let event = self.sequencer.now(body);
        self.send_labelled(event, out, summary)
    }

    fn send_labelled(&mut self, mut event: Event, out: &mut Output<'_>, summary: &mut RunSummary) -> Result<(), Error> {
        {
            let mut inventory = self.inventory.lock().expect("inventory lock");
            // Labels as known before the event (a destroyed namespace loses them).
            inventory.label(&mut event);
            inventory.observe(&event);
        }
        for sensor in self.sensors.iter_mut() {
            sensor.observe(&event);
        }
        summary.events += 1;
        out.send(&event)
    }

    fn lost(
        &mut self,
        event_type: &str,
        count: u64,
        out: &mut Output<'_>,
        summary: &mut RunSummary,
    ) -> Result<(), Error> {
        summary.lost += count;
        log::warn!("{count} {event_type} records lost before they reached the agent");
        let record = self.sequencer.now(EventBody::Lost { count, event_type: event_type.to_owned() });
        out.send(&record)
    }

    /// Lost records become their own records; probe errors go to the log.
    fn report_counters(&mut self, out: &mut Output<'_>, summary: &mut RunSummary) -> Result<(), Error> {
        for (kind, count) in self.counters.lost() {
            let event_type = self.lost_as.get(&kind).copied().unwrap_or("unknown");
            self.lost(event_type, count, out, summary)?;
        }
        self.counters.log_probe_errors();
        Ok(())
    }
}

/// The next message of any sensor worker still sending, with its index;
/// `None` as the message once that worker finished. Completes with `None`
/// when no worker sends any more.
fn next_message(
    workers: &mut [Option<MessageReceiver>],
) -> impl Future<Output = Option<(usize, Option<SensorMessage>)>> + '_ {
    std::future::poll_fn(move |cx| {
        let mut open = false;
        for (index, worker) in workers.iter_mut().enumerate() {
            if let Some(receiver) = worker {
                open = true;
                if let Poll::Ready(message) = receiver.poll_recv(cx) {
                    return Poll::Ready(Some((index, message)));
                }
            }
        }
        if open {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    })
}
