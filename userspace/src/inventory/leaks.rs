//! Leaked namespaces: alive, without a member process for longer than
//! `[inventory] leak_age`, and claimed by no running container or pod.
//! Every scan of the periodic refresh (every 2 s) comes here; the time
//! without processes is counted from the first scan that found none.
//!
//! "Claimed": a container (or a member of a pod) seen in the namespace
//! while it had processes still has a process somewhere on the host; a pod
//! whose sandbox restarts keeps its namespace that way. Namespaces held
//! only by a socket are not in /proc, so neither tracked nor reported.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::scan::Scan;
use crate::event::{clock::now_rfc3339, text::path_text, Container, EventBody, FdHolder, Holders, Netns};

/// Default of `[inventory] leak_age`.
pub const DEFAULT_AGE: Duration = Duration::from_secs(600);

/// A namespace without member processes, as `nstrail ls --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithoutProcesses {
    /// Since when it has had none (the first scan that found none).
    pub since: String,
    /// It had none already when the agent started.
    pub since_agent_start: bool,
    /// Running containers or pods seen in it earlier: while one runs it is not leaked.
    pub claimed_by: Vec<Container>,
    /// Without processes for longer than the leak age, and claimed by none.
    pub leaked: bool,
}

#[derive(Debug, Clone)]
struct Since {
    at: Instant,
    ts: String,
    since_agent_start: bool,
    claimed_by: Vec<Container>,
}

#[derive(Debug)]
pub struct LeakTracker {
    age: Duration,
    scanned_once: bool,
    /// Namespace id → since when it has had no member process.
    without: HashMap<u64, Since>,
    /// Containers seen in each namespace while it had member processes.
    containers_seen: HashMap<u64, BTreeSet<Container>>,
    /// Reported already: once per namespace.
    reported: HashSet<u64>,
}

impl Default for LeakTracker {
    fn default() -> Self {
        Self::new(DEFAULT_AGE)
    }
}

impl LeakTracker {
    pub fn new(age: Duration) -> Self {
        Self {
            age,
            scanned_once: false,
            without: HashMap::new(),
            containers_seen: HashMap::new(),
            reported: HashSet::new(),
        }
    }

    pub fn set_age(&mut self, age: Duration) {
        self.age = age;
    }

    /// Takes a scan at `now`; `alive` says which ids the inventory holds
    /// as alive (a scan may have been made just before a destroy). Returns
    /// the `netns_leaked` records of namespaces that crossed the age now
    /// (holders' names not filled in: see [`fill_comms`]).
    pub fn scanned(&mut self, scan: &Scan, alive: impl Fn(u64) -> bool, now: Instant) -> Vec<EventBody> {
        let running: BTreeSet<&Container> =
            scan.namespaces.values().filter(|o| !o.pids.is_empty()).flat_map(|o| o.containers.iter()).collect();
        let running_pods: BTreeSet<&str> = running.iter().filter_map(|c| c.pod_uid.as_deref()).collect();
        let first = !self.scanned_once;
        self.scanned_once = true;
        let mut seen = HashSet::new();
        let mut leaked = Vec::new();
        for observed in scan.namespaces.values() {
            let Some(id) = observed.id.filter(|id| alive(*id)) else { continue };
            if scan.host_inode == Some(observed.inode) {
                continue;
            }
            seen.insert(id);
            if !observed.pids.is_empty() {
                self.without.remove(&id);
                if !observed.containers.is_empty() {
                    self.containers_seen.entry(id).or_default().extend(observed.containers.iter().cloned());
                }
                continue;
            }
            let claimed_by: Vec<Container> = self
                .containers_seen
                .get(&id)
                .into_iter()
                .flatten()
                .filter(|c| running.contains(c) || c.pod_uid.as_deref().is_some_and(|p| running_pods.contains(p)))
                .cloned()
                .collect();
            let since = self.without.entry(id).or_insert_with(|| Since {
                at: now,
                ts: now_rfc3339(),
                since_agent_start: first,
                claimed_by: Vec::new(),
            });
            since.claimed_by = claimed_by;
            if now.duration_since(since.at) >= self.age && since.claimed_by.is_empty() && self.reported.insert(id) {
                let holders = Holders {
                    mounts: observed.mounts.iter().map(|m| path_text(m)).collect(),
                    fds: observed.fds.iter().map(|&(pid, fd)| FdHolder { pid, fd, comm: None }).collect(),
                };
                leaked.push(EventBody::NetnsLeaked {
                    netns: Netns::new(observed.inode, id),
                    without_processes_since: since.ts.clone(),
                    since_agent_start: since.since_agent_start,
                    holders,
                });
            }
        }
        // Out of /proc (gone, or held by a socket only): no longer judged.
        self.without.retain(|id, _| seen.contains(id));
        leaked
    }

    /// The namespace was destroyed.
    pub fn forget(&mut self, id: u64) {
        self.without.remove(&id);
        self.containers_seen.remove(&id);
        self.reported.remove(&id);
    }

    /// Whether and since when namespace `id` has had no member process.
    pub fn status(&self, id: u64, now: Instant) -> Option<WithoutProcesses> {
        self.without.get(&id).map(|s| WithoutProcesses {
            since: s.ts.clone(),
            since_agent_start: s.since_agent_start,
            claimed_by: s.claimed_by.clone(),
            leaked: s.claimed_by.is_empty() && now.duration_since(s.at) >= self.age,
        })
    }

    /// Live namespaces (not the host's) without a member process now.
    pub fn without_processes(&self) -> usize {
        self.without.len()
    }
}

/// Names the processes holding leaked namespaces by fds (reads /proc).
pub fn fill_comms(records: &mut [EventBody]) {
    for record in records {
        if let EventBody::NetnsLeaked { holders, .. } = record {
            for holder in &mut holders.fds {
                holder.comm = crate::sys::proc::comm(holder.pid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::scan::Observed;

    fn container(id: &str, pod: Option<&str>) -> Container {
        Container { runtime: "containerd".into(), id: id.into(), pod_uid: pod.map(str::to_owned) }
    }

    fn scan(namespaces: Vec<Observed>) -> Scan {
        Scan { namespaces: namespaces.into_iter().map(|o| (o.inode, o)).collect(), host_inode: Some(1) }
    }

    fn ns(inode: u32, pids: &[u32], containers: &[Container]) -> Observed {
        Observed {
            inode,
            id: Some(inode as u64 + 1000),
            pids: pids.iter().copied().collect(),
            containers: containers.iter().cloned().collect(),
            mounts: [std::path::PathBuf::from(format!("/run/netns/n{inode}"))].into(),
            fds: vec![(42, 7)],
            ..Default::default()
        }
    }

    #[test]
    fn a_namespace_without_processes_leaks_once_after_the_age() {
        let mut tracker = LeakTracker::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let host = ns(1, &[1], &[]);
        let all = |_| true;
        assert!(tracker.scanned(&scan(vec![host.clone(), ns(5, &[], &[]), ns(6, &[9], &[])]), all, t0).is_empty());
        assert_eq!(tracker.without_processes(), 1);
        let status = tracker.status(1005, t0 + Duration::from_secs(3)).unwrap();
        assert!(status.since_agent_start && !status.leaked);
        assert!(tracker.status(1006, t0).is_none() && tracker.status(1001, t0).is_none(), "members; the host");

        let later = t0 + Duration::from_secs(11);
        let now = scan(vec![host.clone(), ns(5, &[], &[]), ns(6, &[9], &[]), ns(7, &[], &[])]);
        let leaked = tracker.scanned(&now, all, later);
        assert_eq!(leaked.len(), 1);
        let EventBody::NetnsLeaked { netns, since_agent_start, holders, .. } = &leaked[0] else { panic!() };
        assert_eq!((netns.inode, netns.id, *since_agent_start), (5, 1005, true));
        assert_eq!(holders.mounts, ["/run/netns/n5"]);
        assert_eq!(holders.fds, [FdHolder { pid: 42, fd: 7, comm: None }]);
        assert!(!tracker.status(1007, later).unwrap().since_agent_start, "seen without processes after the start");
        assert!(tracker.scanned(&now, all, later + Duration::from_secs(60)).len() == 1, "7 now; 5 not again");
        assert!(tracker.status(1005, later).unwrap().leaked);

        // A process comes back: the clock starts again, but it was reported once.
        let back = scan(vec![host, ns(5, &[3], &[])]);
        tracker.scanned(&back, all, later);
        assert!(tracker.status(1005, later).is_none());
        assert_eq!(tracker.without_processes(), 0, "7 left /proc");
        tracker.forget(1005);
    }

    #[test]
    fn a_running_container_or_pod_claims_its_namespace() {
        let mut tracker = LeakTracker::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let all = |_| true;
        let pause = container("a", Some("pod-1"));
        let app = container("b", Some("pod-1"));
        tracker.scanned(
            &scan(vec![
                ns(1, &[1], &[]),
                ns(5, &[9], std::slice::from_ref(&pause)),
                ns(6, &[8], std::slice::from_ref(&app)),
            ]),
            all,
            t0,
        );
        // The sandbox's process is gone; another container of the pod still runs.
        let later = t0 + Duration::from_secs(5);
        let leaked = tracker.scanned(&scan(vec![ns(1, &[1], &[]), ns(5, &[], &[]), ns(6, &[8], &[app])]), all, later);
        assert!(leaked.is_empty());
        assert_eq!(tracker.status(1005, later).unwrap().claimed_by, [pause]);
        // The pod is gone too: leaked at the next scan.
        let leaked =
            tracker.scanned(&scan(vec![ns(1, &[1], &[]), ns(5, &[], &[])]), all, later + Duration::from_secs(2));
        assert_eq!(leaked.len(), 1);
        // Not alive in the inventory (destroyed meanwhile): not judged.
        let mut other = LeakTracker::new(Duration::ZERO);
        assert!(other.scanned(&scan(vec![ns(5, &[], &[])]), |_| false, t0).is_empty());
    }
}
