use std::time::{Duration, Instant};

use nstrail::{
    agent::AgentOptions,
    agent::BackgroundAgent,
    event::{Event, EventBody},
    sensors::SensorOptions,
};

/// The real agent pipeline with the real probes, events kept for assertions.
pub struct TestAgent {
    agent: Option<BackgroundAgent>,
    pub log: EventLog,
}

impl TestAgent {
    /// Loads and attaches every probe; fails the test if any did not attach.
    pub fn start() -> Self {
        Self::start_with(SensorOptions::default())
    }

    /// With these sensor options; fails the test if any probe did not
    /// attach or any sensor does not run in full.
    pub fn start_with(sensors: SensorOptions) -> Self {
        crate::require_root();
        let agent =
            BackgroundAgent::start(AgentOptions { sensors, ..Default::default() }).expect("agent loads its probes");
        let failed: Vec<_> = agent.probes.iter().filter(|p| !p.attached).collect();
        assert!(failed.is_empty(), "probes failed to attach: {failed:?}");
        let degraded: Vec<_> =
            agent.sensors.iter().filter(|s| s.state != nstrail::event::SensorState::Attached).collect();
        assert!(degraded.is_empty(), "sensors not running in full: {degraded:?}");
        Self { agent: Some(agent), log: EventLog::default() }
    }

    /// The backend a sensor runs on (`fentry`, `kprobe`, `tracepoint`, ...).
    pub fn backend(&self, sensor: &str) -> String {
        let agent = self.agent.as_ref().expect("agent running");
        agent.sensors.iter().find(|s| s.sensor == sensor).map(|s| s.backend.clone()).unwrap_or_default()
    }

    /// Whether this kernel lets the sysctl sensor see the kernel's errno of
    /// a refused write (every backend but `read_back`, which checks the value).
    pub fn sysctl_errno_known(&self) -> bool {
        self.backend("sysctl_write") != "read_back"
    }

    /// The agent's live inventory.
    pub fn inventory(&self) -> std::sync::Arc<std::sync::Mutex<nstrail::inventory::Inventory>> {
        self.agent.as_ref().expect("agent running").inventory.clone()
    }

    fn pull(&mut self, wait: Duration) -> bool {
        let agent = self.agent.as_ref().expect("agent running");
        match agent.events.recv_timeout(wait) {
            Ok(event) => {
                self.log.push(event);
                while let Ok(event) = agent.events.try_recv() {
                    self.log.push(event);
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Collects events until `done` holds for the log, or panics after `timeout`.
    pub fn wait_until(&mut self, timeout: Duration, what: &str, done: impl Fn(&EventLog) -> bool) {
        let timeout = crate::patience(timeout);
        let deadline = Instant::now() + timeout;
        while !done(&self.log) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("timed out after {timeout:?} waiting for {what}; events seen:\n{}", self.log.dump());
            }
            self.pull(left.min(Duration::from_millis(100)));
        }
    }

    /// Keeps collecting for `quiet`, so a later duplicate or stray event shows up.
    pub fn settle(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while Instant::now() < deadline {
            self.pull(Duration::from_millis(50));
        }
    }

    /// Stops the agent and returns its run summary (lost counts).
    pub fn stop(&mut self) -> nstrail::agent::RunSummary {
        let agent = self.agent.take().expect("agent running");
        // Take what is still queued before stopping.
        while let Ok(event) = agent.events.try_recv() {
            self.log.push(event);
        }
        agent.stop().expect("agent stops cleanly")
    }
}

/// Events seen so far.
#[derive(Default)]
pub struct EventLog {
    pub events: Vec<Event>,
}

impl EventLog {
    fn push(&mut self, event: Event) {
        if let Some(last) = self.events.last() {
            assert_eq!(event.seq, last.seq + 1, "seq must increase by one");
        }
        self.events.push(event);
    }

    /// Events about namespace `id` (as `netns`, or as `parent_netns` / `from_netns`).
    pub fn touching(&self, id: u64) -> Vec<&Event> {
        self.events
            .iter()
            .filter(|e| match &e.body {
                EventBody::NetnsCreate { netns, parent_netns, .. } => netns.id == id || parent_netns.id == id,
                EventBody::NetnsEnter { netns, from_netns, .. } => netns.id == id || from_netns.id == id,
                other => other.netns().is_some_and(|n| n.id == id),
            })
            .collect()
    }

    /// Events of one type whose actor is process `pid`.
    pub fn by_pid_of_type(&self, pid: u32, type_name: &str) -> Vec<&Event> {
        self.by_pid(pid).into_iter().filter(|e| e.body.type_name() == type_name).collect()
    }

    /// Events whose actor is process `pid`.
    pub fn by_pid(&self, pid: u32) -> Vec<&Event> {
        self.events.iter().filter(|e| e.body.actor().is_some_and(|a| a.pid == pid)).collect()
    }

    pub fn of_type<'a>(&'a self, type_name: &'a str) -> impl Iterator<Item = &'a Event> + 'a {
        self.events.iter().filter(move |e| e.body.type_name() == type_name)
    }

    pub fn destroyed(&self, id: u64) -> usize {
        self.of_type("netns_destroy").filter(|e| e.body.netns().is_some_and(|n| n.id == id)).count()
    }

    pub fn lost(&self) -> u64 {
        self.events.iter().map(|e| if let EventBody::Lost { count, .. } = e.body { count } else { 0 }).sum()
    }

    pub fn dump(&self) -> String {
        self.events.iter().map(|e| serde_json::to_string(e).unwrap_or_default()).collect::<Vec<_>>().join("\n")
    }
}
