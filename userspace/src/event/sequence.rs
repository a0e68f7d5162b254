//! Gives events their place in the agent's stream: a sequence number and
//! a wall-clock time.

use super::{
    clock::{now_rfc3339, rfc3339, WallClock},
    Event, EventBody,
};

/// Numbers records and stamps them with wall time.
pub struct Sequencer {
    next_seq: u64,
    clock: WallClock,
}

impl Sequencer {
    pub fn new() -> Self {
        Self { next_seq: 1, clock: WallClock::new() }
    }

    /// An event of something the kernel saw at `boot_ns` (CLOCK_BOOTTIME).
    pub fn at(&mut self, boot_ns: u64, body: EventBody) -> Event {
        let ts = rfc3339(self.clock.unix_ns(boot_ns));
        self.stamp(ts, body)
    }

    /// A record of the agent itself (lost counts, agent state), stamped now.
    pub fn now(&mut self, body: EventBody) -> Event {
        self.stamp(now_rfc3339(), body)
    }

    fn stamp(&mut self, ts: String, body: EventBody) -> Event {
        let seq = self.next_seq;
        self.next_seq += 1;
        Event { ts, seq, body }
    }
}

impl Default for Sequencer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_records_one_by_one() {
        let mut s = Sequencer::new();
        let first = s.at(5, EventBody::Lost { count: 1, event_type: "netns_create".into() });
        let second = s.now(EventBody::Lost { count: 2, event_type: "netns_create".into() });
        assert_eq!((first.seq, second.seq), (1, 2));
        assert!(first.ts < second.ts, "boot time 5 ns is long before now");
    }
}
