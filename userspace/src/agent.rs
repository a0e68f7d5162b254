//! The agent pipeline: load -> read -> decode -> correlate -> export.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya_log::EbpfLogger;

use crate::{
    correlate::Correlator,
    decode::{decode, KernelEvent},
    device_moves::{DeviceEvent, DeviceMoves},
    event::{Event, EventBody, Netns, ProbeStatus},
    export::{ExportError, Exporter},
    inventory::{scan, Inventory},
    metrics::{Metrics, MetricsOptions},
    loader::{self, LoadOptions},
    nsid::NsidMap,
    preflight,
    reader::{EventReader, KernelCounters},
    rtnetlink::Listener,
    Error,
};

/// How often lost-event counters are read when no event arrives.
const COUNTER_POLL: Duration = Duration::from_millis(500);
/// Outputs (stdout, audit log) are flushed this long after the first
/// unflushed record, so records close together share one write; the live
/// API stream does not wait.
const FLUSH_DELAY: Duration = Duration::from_millis(5);
/// How often names and containers are refreshed from /proc.
const RELABEL_EVERY: Duration = Duration::from_secs(2);

/// Loaded and attached probes, ready to run.
pub struct Agent {
    _ebpf: aya::Ebpf,
    probes: Vec<ProbeStatus>,
    events: EventReader,
    counters: KernelCounters,
    probe_log: Option<EbpfLogger<&'static dyn log::Log>>,
    correlator: Correlator,
    inventory: Arc<Mutex<Inventory>>,
    metrics: Arc<Metrics>,
    /// The device_move sensor's listener and pairing state, when attached.
    device_listener: Option<Listener>,
    device_moves: Option<Arc<Mutex<DeviceMoves>>>,
}

/// The agent's own network namespace: rtnetlink notifications without an
/// nsid are about it.
fn own_netns() -> std::io::Result<Netns> {
    use std::os::unix::fs::MetadataExt;
    let path = std::path::Path::new("/proc/thread-self/ns/net");
    let inode = std::fs::metadata(path)?.ino() as u32;
    Ok(Netns::new(inode, crate::nsfs::ns_id(path)?))
}

/// What a run did, for the caller and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub events: u64,
    pub lost: u64,
    pub decode_errors: u64,
}

impl Agent {
    /// Checks the host, loads and attaches every probe. Must be called
    /// inside a tokio runtime (the readers register with its reactor).
    pub fn load(options: &LoadOptions) -> Result<Self, Error> {
        Self::load_with_metrics(options, MetricsOptions::default())
    }

    pub fn load_with_metrics(options: &LoadOptions, metrics: MetricsOptions) -> Result<Self, Error> {
        let mut loaded = loader::load(options)?;
        let metrics = Arc::new(Metrics::new(metrics, &loaded.status));
        let probe_log = match EbpfLogger::init(&mut loaded.ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                log::warn!("probe diagnostics unavailable: {err}");
                None
            }
        };
        let events = EventReader::new(&mut loaded.ebpf)?;
        let counters = KernelCounters::new(&mut loaded.ebpf)?;
        // The probes are attached: whatever the scan finds existed before us
        // or is reported by an event from now on.
        let first_scan = scan::scan();
        let inventory = Arc::new(Mutex::new(Inventory::from_scan(&first_scan)));
        let device_moves = match loaded.device_listener.is_some().then(|| own_netns().and_then(NsidMap::new)) {
            Some(Ok(mut nsids)) => {
                // Every namespace gets an nsid, so its notifications reach the listener.
                nsids.assign_scanned(&first_scan);
                Some(Arc::new(Mutex::new(DeviceMoves::new(nsids))))
            }
            Some(Err(err)) => {
                log::warn!("device moves cannot be followed: {err}");
                None
            }
            None => None,
        };
        Ok(Self {
            _ebpf: loaded.ebpf,
            probes: loaded.status,
            events,
            counters,
            probe_log,
            correlator: Correlator::new(),
            inventory,
            metrics,
            device_listener: if device_moves.is_some() { loaded.device_listener } else { None },
            device_moves,
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

    /// Runs until `shutdown` completes or an exporter's consumer goes away,
    /// then drains what the kernel already wrote and flushes every exporter.
    pub async fn run(
        mut self,
        exporters: &mut [Box<dyn Exporter>],
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunSummary, Error> {
        let mut summary = RunSummary::default();
        let mut out = Output { exporters, closed: false, metrics: self.metrics.clone() };
        let start = self.correlator.agent_record(EventBody::AgentStart {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: preflight::kernel_release(),
            probes: self.probes.clone(),
        });
        out.send(&start)?;
        out.flush()?;

        let mut probe_log = match self.probe_log.take() {
            Some(logger) => Some(crate::reader::readable_fd(logger)?),
            None => None,
        };
        let mut device_listener = match self.device_listener.take() {
            Some(listener) => Some(crate::reader::readable_fd(listener)?),
            None => None,
        };
        let mut poll = tokio::time::interval(COUNTER_POLL);
        let relabel = tokio::spawn(relabel_periodically(self.inventory.clone(), self.device_moves.clone()));
        tokio::pin!(shutdown);
        let mut flush_at: Option<tokio::time::Instant> = None;
        while !out.closed {
            tokio::select! {
                _ = &mut shutdown => break,
                ready = self.events.readable() => {
                    ready?;
                    self.pump(&mut out, &mut summary)?;
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
                    match device_listener.as_mut() {
                        Some(fd) => fd.readable_mut().await.map(|mut g| g.clear_ready()),
                        None => std::future::pending().await,
                    }
                } => {
                    ready?;
                    let listener = device_listener.as_mut().expect("listener is readable").get_mut();
                    self.read_device_notifications(listener, &mut out, &mut summary)?;
                    flush_at.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_DELAY);
                }
                _ = async {
                    match self.device_moves.as_ref().and_then(|m| m.lock().expect("device moves lock").next_deadline()) {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let mut ready = Vec::new();
                    if let Some(moves) = &self.device_moves {
                        moves.lock().expect("device moves lock").expire(std::time::Instant::now(), &mut ready);
                    }
                    self.send_device_events(ready, &mut out, &mut summary)?;
                    flush_at.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_DELAY);
                }
                ready = async {
                    match probe_log.as_mut() {
                        Some(fd) => fd.readable_mut().await.map(|mut g| { g.get_inner_mut().flush(); g.clear_ready(); }),
                        None => std::future::pending().await,
                    }
                } => { ready?; }
                // Lost-event counters are read on this tick, not per batch:
                // they cost a syscall per CPU and counter.
                _ = poll.tick() => {
                    // Reading the listener empty lets actor records whose
                    // notifications were dropped be counted, even when no
                    // further notification comes.
                    if let Some(fd) = device_listener.as_mut() {
                        self.read_device_notifications(fd.get_mut(), &mut out, &mut summary)?;
                    }
                    self.report_counters(&mut out, &mut summary)?;
                    flush_at = None;
                    out.flush()?;
                }
            }
        }
        // Whatever the kernel wrote before we stopped still goes out.
        self.pump(&mut out, &mut summary)?;
        if let Some(fd) = device_listener.as_mut() {
            self.read_device_notifications(fd.get_mut(), &mut out, &mut summary)?;
            let mut ready = Vec::new();
            if let Some(moves) = &self.device_moves {
                let far = std::time::Instant::now() + std::time::Duration::from_secs(3600);
                moves.lock().expect("device moves lock").expire(far, &mut ready);
            }
            self.send_device_events(ready, &mut out, &mut summary)?;
        }
        self.report_counters(&mut out, &mut summary)?;
        if let Some(fd) = probe_log.as_mut() {
            fd.get_mut().flush();
        }
        out.flush()?;
        relabel.abort();
        Ok(summary)
    }

    /// Reads every waiting datagram of the device listener and sends the
    /// events they complete.
    fn read_device_notifications(
        &mut self,
        listener: &mut Listener,
        out: &mut Output<'_>,
        summary: &mut RunSummary,
    ) -> Result<(), Error> {
        let Some(moves) = self.device_moves.clone() else { return Ok(()) };
        let mut ready = Vec::new();
        let mut overrun_at = None;
        loop {
            match listener.recv() {
                Ok(Some(datagram)) if datagram.truncated => {
                    summary.decode_errors += 1;
                    out.metrics.decode_error();
                    log::error!("dropping an rtnetlink datagram larger than the listener's buffer");
                }
                Ok(Some(datagram)) => {
                    // The kernel side recorded this datagram's actors before
                    // queueing it: take them from the ring buffer first.
                    self.pump(out, summary)?;
                    let mut moves = moves.lock().expect("device moves lock");
                    if let Err(err) = moves.datagram(datagram.nsid, datagram.data, &mut ready) {
                        summary.decode_errors += 1;
                        out.metrics.decode_error();
                        log::error!("dropping undecodable rtnetlink datagram: {err}");
                    }
                }
                Ok(None) => break,
                Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                    log::warn!("rtnetlink listener overrun: device notifications were dropped");
                    overrun_at = Some(crate::device_moves::now_boot_ns());
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(Error::Io(err)),
            }
        }
        // Read empty now. Actor records of the dropped notifications may
        // still be in the ring buffer: take them first.
        self.pump(out, summary)?;
        {
            let mut moves = moves.lock().expect("device moves lock");
            moves.drained();
            if let Some(at) = overrun_at {
                // Actors from before the overrun that found no message are
                // the dropped notifications (reported as lost).
                moves.overrun(at);
            }
        }
        self.send_device_events(ready, out, summary)
    }

    fn send_device_events(
        &mut self,
        ready: Vec<DeviceEvent>,
        out: &mut Output<'_>,
        summary: &mut RunSummary,
    ) -> Result<(), Error> {
        for DeviceEvent { boot_ns, body } in ready {
            let mut event = self.correlator.record_at(boot_ns, body);
            {
                let mut inventory = self.inventory.lock().expect("inventory lock");
                inventory.label(&mut event);
                inventory.observe(&event);
            }
            summary.events += 1;
            out.send(&event)?;
        }
        Ok(())
    }

    fn pump(&mut self, out: &mut Output<'_>, summary: &mut RunSummary) -> Result<(), Error> {
        let Self { events, correlator, inventory, device_moves, .. } = self;
        let mut result = Ok(());
        events.drain(|bytes| {
            if result.is_err() || out.closed {
                return;
            }
            match decode(bytes) {
                Ok(kernel_event) if is_own_device_listing(&kernel_event) => {}
                Ok(KernelEvent::LinkNotify(record)) => {
                    if let Some(moves) = device_moves {
                        moves.lock().expect("device moves lock").actor_seen(record);
                    }
                }
                Ok(kernel_event) => {
                    let Some(mut event) = correlator.kernel_record(&kernel_event) else { return };
                    if let Some(moves) = device_moves {
                        let mut moves = moves.lock().expect("device moves lock");
                        match &event.body {
                            EventBody::NetnsCreate { .. } => moves.nsids().assign_created(&event),
                            EventBody::NetnsDestroy { netns, actor, .. } => moves.netns_destroyed(actor.tid, netns),
                            _ => {}
                        }
                    }
                    {
                        let mut inventory = inventory.lock().expect("inventory lock");
                        // Labels as known before the event (a destroyed namespace loses them).
                        inventory.label(&mut event);
                        inventory.observe(&event);
                    }
                    summary.events += 1;
                    result = out.send(&event);
                }
                Err(err) => {
                    summary.decode_errors += 1;
                    out.metrics.decode_error();
                    log::error!("dropping undecodable record: {err}");
                }
            }
        });
        result
    }

    /// Lost events become their own records; probe errors go to the log.
    fn report_counters(&mut self, out: &mut Output<'_>, summary: &mut RunSummary) -> Result<(), Error> {
        let mut lost = self.counters.lost();
        if let Some(moves) = &self.device_moves {
            let dropped = moves.lock().expect("device moves lock").take_unmatched();
            if dropped > 0 {
                // The socket buffer overflowed: these notifications (moves
                // among them, maybe) never reached the agent.
                lost.push(("device_notification", dropped));
            }
        }
        for (event_type, count) in lost {
            summary.lost += count;
            log::warn!("kernel ring buffer full: {count} {event_type} events lost");
            let record = self
                .correlator
                .agent_record(EventBody::Lost { count, event_type: event_type.to_owned() });
            out.send(&record)?;
        }
        self.counters.log_probe_errors();
        Ok(())
    }
}

/// The agent's own threads enter namespaces briefly to list their devices
/// (`nstrail ls`); those switches are not events.
fn is_own_device_listing(event: &crate::decode::KernelEvent) -> bool {
    matches!(event, crate::decode::KernelEvent::NetnsEnter(e) if e.actor.pid == std::process::id())
}

/// Names and containers come from /proc, not from events: rescan when the
/// mount table changes (a bind mount such as /run/netns/NAME appears or
/// goes; the kernel flags /proc/self/mountinfo) and every few seconds for
/// the rest (containers starting).
async fn relabel_periodically(inventory: Arc<Mutex<Inventory>>, device_moves: Option<Arc<Mutex<DeviceMoves>>>) {
    use std::io::{Read, Seek};
    let mut mountinfo = std::fs::File::open("/proc/self/mountinfo")
        .and_then(|f| crate::reader::owned_fd_with_interest(f, tokio::io::Interest::PRIORITY))
        .map_err(|err| log::warn!("cannot watch the mount table ({err}); names refresh every {RELABEL_EVERY:?}"))
        .ok();
    let mut every = tokio::time::interval(RELABEL_EVERY);
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            changed = async {
                match mountinfo.as_mut() {
                    Some(fd) => fd.ready_mut(tokio::io::Interest::PRIORITY).await.map(|mut guard| {
                        // Reading the table to its end re-arms the change flag.
                        let file = guard.get_inner_mut();
                        let _ = file.rewind();
                        let _ = std::io::copy(&mut file.take(u64::MAX), &mut std::io::sink());
                        guard.clear_ready();
                    }),
                    None => std::future::pending().await,
                }
            } => {
                if changed.is_err() {
                    mountinfo = None;
                }
                // Mounts come in bursts (container start): let them settle.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if let Ok(scan) = tokio::task::spawn_blocking(scan::scan).await {
            inventory.lock().expect("inventory lock").relabel(&scan);
            if let Some(moves) = &device_moves {
                moves.lock().expect("device moves lock").nsids().assign_scanned(&scan);
            }
        }
    }
}

/// All exporters; stops the run when the consumer of one goes away
/// (a closed pipe, a dropped channel).
struct Output<'a> {
    exporters: &'a mut [Box<dyn Exporter>],
    closed: bool,
    metrics: Arc<Metrics>,
}

impl Output<'_> {
    fn send(&mut self, event: &Event) -> Result<(), Error> {
        self.metrics.observe(event);
        let json = serde_json::to_string(event).map_err(std::io::Error::from)?;
        for exporter in self.exporters.iter_mut() {
            if let Err(err) = exporter.export(event, &json) {
                closed_or_error(&mut self.closed, exporter.name(), err)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        for exporter in self.exporters.iter_mut() {
            if let Err(err) = exporter.flush() {
                closed_or_error(&mut self.closed, exporter.name(), err)?;
            }
        }
        Ok(())
    }
}

fn closed_or_error(closed: &mut bool, name: &str, err: ExportError) -> Result<(), Error> {
    {
        match err {
            ExportError::Closed => *closed = true,
            ExportError::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe => *closed = true,
            ExportError::Io(e) => {
                return Err(Error::Io(std::io::Error::new(e.kind(), format!("{name} output: {e}"))))
            }
        }
        Ok(())
    }
}

/// An agent running on its own thread, handing events over a channel.
/// Used by the integration tests and by programs embedding nstrail.
pub struct BackgroundAgent {
    pub events: std::sync::mpsc::Receiver<Event>,
    pub probes: Vec<ProbeStatus>,
    pub inventory: Arc<Mutex<Inventory>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<RunSummary, Error>>>,
}

impl BackgroundAgent {
    /// Loads the probes and starts reading; returns once every probe is attached.
    pub fn start(options: LoadOptions) -> Result<Self, Error> {
        let (event_tx, events) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("nstrail-agent".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let agent = match Agent::load(&options) {
                    Ok(agent) => {
                        let _ = ready_tx.send(Ok((agent.probes().to_vec(), agent.inventory())));
                        agent
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return Ok(RunSummary::default());
                    }
                };
                let mut exporters: Vec<Box<dyn Exporter>> =
                    vec![Box::new(crate::export::ChannelExporter::new(event_tx))];
                agent.run(&mut exporters, async { let _ = stop_rx.await; }).await
            })
        })?;
        let (probes, inventory) = ready_rx.recv().map_err(|_| {
            Error::Io(std::io::Error::other("agent thread ended before loading the probes"))
        })??;
        Ok(Self { events, probes, inventory, stop: Some(stop), thread: Some(thread) })
    }

    /// Stops reading, drains and returns the run's summary.
    pub fn stop(mut self) -> Result<RunSummary, Error> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<RunSummary, Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| Error::Io(std::io::Error::other("agent thread panicked")))?,
            None => Ok(RunSummary::default()),
        }
    }
}

impl Drop for BackgroundAgent {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
