//! The live event stream for API clients. The agent hands every record to
//! the hub, which keeps the most recent ones (for clients joining from the
//! audit log) and copies each to every subscriber's bounded queue. A client
//! that reads too slowly loses events, counted and told to it; it never
//! slows the agent or other clients.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::mpsc;

use super::{ExportError, Exporter};
use crate::{event::Event, metrics::Metrics};

/// Records kept for replay to clients joining late.
const RECENT: usize = 10_000;

struct Subscriber {
    queue: mpsc::Sender<Arc<str>>,
    dropped: Arc<AtomicU64>,
}

pub struct EventHub {
    inner: Mutex<HubState>,
    client_buffer: usize,
    metrics: Option<Arc<Metrics>>,
}

struct HubState {
    recent: VecDeque<(u64, Arc<str>)>,
    subscribers: Vec<Subscriber>,
}

/// What a new subscriber gets: missed records to send first, then a queue.
pub struct Subscription {
    pub replay: Vec<Arc<str>>,
    pub live: mpsc::Receiver<Arc<str>>,
    /// Events dropped for this client because its queue was full.
    pub dropped: Arc<AtomicU64>,
    /// Replay asked to start after a seq the hub no longer holds.
    pub replay_incomplete: bool,
}

impl EventHub {
    pub fn new(client_buffer: usize, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(HubState { recent: VecDeque::with_capacity(RECENT), subscribers: Vec::new() }),
            client_buffer: client_buffer.max(1),
            metrics,
        })
    }

    /// Hands a record to every subscriber without ever waiting.
    pub fn publish(&self, seq: u64, line: Arc<str>) {
        let mut state = self.inner.lock().expect("hub lock");
        if state.recent.len() == RECENT {
            state.recent.pop_front();
        }
        state.recent.push_back((seq, line.clone()));
        state.subscribers.retain(|s| match s.queue.try_send(line.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.api_client_drops.inc();
                }
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// The records kept now (the most recent ones of this run), oldest first.
    pub fn recent(&self) -> Vec<(u64, Arc<str>)> {
        self.inner.lock().expect("hub lock").recent.iter().cloned().collect()
    }

    /// Subscribes; with `after_seq`, first replays the kept records after it.
    /// Replay and registration happen under one lock: nothing is missed or doubled.
    pub fn subscribe(&self, after_seq: Option<u64>) -> Subscription {
        let (queue, live) = mpsc::channel(self.client_buffer);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut state = self.inner.lock().expect("hub lock");
        let (replay, replay_incomplete) = match after_seq {
            Some(after) => {
                let oldest = state.recent.front().map(|(s, _)| *s);
                let replay = state.recent.iter().filter(|(s, _)| *s > after).map(|(_, l)| l.clone()).collect();
                (replay, oldest.is_some_and(|o| o > after + 1))
            }
            None => (Vec::new(), false),
        };
        state.subscribers.push(Subscriber { queue, dropped: dropped.clone() });
        Subscription { replay, live, dropped, replay_incomplete }
    }
}

/// The hub as an exporter of the agent.
pub struct HubExporter(pub Arc<EventHub>);

impl Exporter for HubExporter {
    fn name(&self) -> &'static str {
        "api stream"
    }

    fn export(&mut self, event: &Event, json: &str) -> Result<(), ExportError> {
        self.0.publish(event.seq, Arc::from(json));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_client_queue_drops_and_counts_without_blocking() {
        let hub = EventHub::new(2, None);
        let mut slow = hub.subscribe(None);
        let mut fast = hub.subscribe(None);
        for seq in 1..=5 {
            hub.publish(seq, Arc::from(format!("{seq}")));
            assert_eq!(&*fast.live.recv().await.unwrap(), seq.to_string());
        }
        assert_eq!(slow.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(&*slow.live.recv().await.unwrap(), "1");
    }

    #[tokio::test]
    async fn replay_joins_without_gap_or_duplicate() {
        let hub = EventHub::new(16, None);
        for seq in 1..=5 {
            hub.publish(seq, Arc::from(format!("{seq}")));
        }
        let mut sub = hub.subscribe(Some(3));
        hub.publish(6, Arc::from("6"));
        let replayed: Vec<String> = sub.replay.iter().map(|l| l.to_string()).collect();
        assert_eq!(replayed, ["4", "5"]);
        assert_eq!(&*sub.live.recv().await.unwrap(), "6");
        assert!(!sub.replay_incomplete);
    }
}
