//! An agent running on its own thread, handing events over a channel: for
//! the integration tests and for programs embedding nstrail.

use std::sync::{Arc, Mutex};

use super::{Agent, AgentOptions, RunSummary};
use crate::{
    event::{Event, ProbeStatus, SensorStatus},
    export::{ChannelExporter, Exporter},
    inventory::Inventory,
    Error,
};

pub struct BackgroundAgent {
    pub events: std::sync::mpsc::Receiver<Event>,
    pub probes: Vec<ProbeStatus>,
    pub sensors: Vec<SensorStatus>,
    pub inventory: Arc<Mutex<Inventory>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<RunSummary, Error>>>,
}

impl BackgroundAgent {
    /// Loads the probes and starts reading; returns once every probe is attached.
    pub fn start(options: AgentOptions) -> Result<Self, Error> {
        let (event_tx, events) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("nstrail-agent".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let agent = match Agent::load(&options) {
                    Ok(agent) => {
                        let _ =
                            ready_tx.send(Ok((agent.probes().to_vec(), agent.sensors().to_vec(), agent.inventory())));
                        agent
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return Ok(RunSummary::default());
                    }
                };
                let mut exporters: Vec<Box<dyn Exporter>> = vec![Box::new(ChannelExporter::new(event_tx))];
                agent
                    .run(&mut exporters, async {
                        let _ = stop_rx.await;
                    })
                    .await
            })
        })?;
        let (probes, sensors, inventory) = ready_rx
            .recv()
            .map_err(|_| Error::Io(std::io::Error::other("agent thread ended before loading the probes")))??;
        Ok(Self { events, probes, sensors, inventory, stop: Some(stop), thread: Some(thread) })
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
            Some(thread) => thread.join().map_err(|_| Error::Io(std::io::Error::other("agent thread panicked")))?,
            None => Ok(RunSummary::default()),
        }
    }
}

impl Drop for BackgroundAgent {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
