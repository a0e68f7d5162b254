//! What the agent remembers per network namespace from the events it saw.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// How long a namespace's socket count is reused within a burst of writes.
const SOCKET_COUNT_REUSE: Duration = Duration::from_millis(20);

/// Socket counts per namespace id, sampled at most every 20 ms each, so a
/// burst of writes does not cost a procfs read apiece.
#[derive(Debug, Default)]
pub struct SocketCounts {
    sampled: HashMap<u64, (Instant, Option<u64>)>,
}

impl SocketCounts {
    pub fn tcp_in_use(&mut self, netns_id: u64, inode: u32, pid: u32, tid: u32) -> Option<u64> {
        let now = Instant::now();
        if let Some((at, count)) = self.sampled.get(&netns_id) {
            if now.duration_since(*at) < SOCKET_COUNT_REUSE && count.is_some() {
                return *count;
            }
        }
        let count = tcp_sockets_in_use(pid, tid, inode);
        if self.sampled.len() > 4096 {
            self.sampled.retain(|_, (at, _)| now.duration_since(*at) < SOCKET_COUNT_REUSE);
        }
        self.sampled.insert(netns_id, (now, count));
        count
    }

    pub fn forget(&mut self, netns_id: u64) {
        self.sampled.remove(&netns_id);
    }
}

/// TCP sockets in use in the network namespace of task `tid` of process
/// `pid`, from /proc/PID/task/TID/net/sockstat, if that task is still in
/// the namespace with inode `inode`.
pub fn tcp_sockets_in_use(pid: u32, tid: u32, inode: u32) -> Option<u64> {
    for dir in [format!("/proc/{pid}/task/{tid}"), format!("/proc/{pid}")] {
        let still_there = std::fs::read_link(format!("{dir}/ns/net"))
            .is_ok_and(|l| l.to_string_lossy() == format!("net:[{inode}]"));
        if !still_there {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(format!("{dir}/net/sockstat")) {
            return parse_tcp_inuse(&text);
        }
    }
    None
}

/// `inuse` of the `TCP:` line of /proc/net/sockstat.
pub fn parse_tcp_inuse(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(word) = words.next() {
        if word == "inuse" {
            return words.next()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sockstat() {
        let text = "sockets: used 142\nTCP: inuse 7 orphan 0 tw 2 alloc 9 mem 1\nUDP: inuse 3 mem 2\n";
        assert_eq!(parse_tcp_inuse(text), Some(7));
        assert_eq!(parse_tcp_inuse("UDP: inuse 3\n"), None);
    }

    #[test]
    fn reads_own_namespace_socket_count() {
        let me = std::process::id();
        let link = std::fs::read_link("/proc/self/ns/net").unwrap();
        let inode: u32 = link.to_string_lossy().trim_start_matches("net:[").trim_end_matches(']').parse().unwrap();
        assert!(tcp_sockets_in_use(me, me, inode).is_some());
        assert_eq!(tcp_sockets_in_use(me, me, inode.wrapping_add(1)), None, "another namespace is not read");
    }
}
