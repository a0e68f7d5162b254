//! Every live network namespace, with what users know it by: names (bind
//! mounts), containers, member processes, how it came to be, and what was
//! done to it. Built from a /proc scan at start (namespaces found then are
//! "seen at start") and kept current from the events.

pub mod containers;
pub mod devices;
pub mod leaks;
pub mod pods;
pub mod refresh;
pub mod scan;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

pub use devices::Device;
use scan::{name_of_mount, Scan};

use crate::event::{Actor, Container, CreateVia, Event, EventBody, Pod, SysctlResult};

/// How a namespace came to be, when the agent saw it happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub ts: String,
    pub via: CreateVia,
    pub actor: Actor,
}

/// One namespace in the inventory (`nstrail ls --json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsRecord {
    pub inode: u32,
    /// Unique id; absent only on kernels that cannot tell it from /proc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Short names (`ip netns` names, docker sandbox ids) of its bind mounts.
    pub names: Vec<String>,
    /// Its nsfs bind mounts.
    pub mounts: Vec<String>,
    /// The host's namespace (pid 1's).
    pub host: bool,
    /// Containers whose processes are in it (a pod: several).
    pub containers: Vec<Container>,
    /// The pod whose sandbox it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// Processes with at least one thread in it.
    pub processes: u32,
    /// Open nsfs file descriptors holding it, as (pid, fd).
    pub fds: Vec<(u32, u32)>,
    /// Its network devices (empty when not listed).
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Why its devices are not listed, when they could not be (it went away
    /// while being looked at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices_unlisted: Option<String>,
    /// Set when the agent saw it created; absent for namespaces that existed at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Origin>,
    /// It already existed when the agent started (creation unknown).
    pub seen_at_start: bool,
    /// setns() calls into it the agent saw.
    pub enters: u64,
    /// Sysctls written in it (name -> last applied value).
    pub sysctl_overrides: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<String>,
    /// When it was destroyed (only in the recently-destroyed list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed: Option<String>,
    /// Set while it has no member process (agent only; see [`leaks`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub without_processes: Option<leaks::WithoutProcesses>,
}

/// What the events told about one namespace.
#[derive(Debug, Clone, Default)]
struct Tracked {
    inode: u32,
    created: Option<Origin>,
    seen_at_start: bool,
    enters: u64,
    overrides: BTreeMap<String, String>,
    last_event: Option<String>,
    /// Names last seen, kept for the destroyed list (mounts go before the namespace does).
    last_names: Vec<String>,
    /// Containers last seen in it, kept for its teardown's events (their
    /// processes go before its devices and the namespace do).
    last_containers: Vec<Container>,
    /// Its pod, kept likewise for its teardown.
    last_pod: Option<Pod>,
    /// Names and containers the stream has shown for it: those of its
    /// create, those found at agent start, and those announced since by a
    /// `netns_identified` record.
    announced: Labels,
}

/// The labels of one `nstrail_netns_info` series.
pub struct InfoLabels {
    pub inode: String,
    pub id: String,
    pub name: String,
    pub container: String,
    /// `namespace/name`
    pub pod: String,
}

/// Destroyed namespaces kept for late look-ups: at most this many, for at most this long.
const DESTROYED_KEEP: usize = 1024;
const DESTROYED_FOR: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
pub struct Inventory {
    live: HashMap<u64, Tracked>,
    destroyed: VecDeque<(Instant, NetnsRecord)>,
    /// Names and containers from the latest scan, by namespace id, for enriching events.
    labels: HashMap<u64, Labels>,
    leaks: leaks::LeakTracker,
    /// nsids of other namespaces in the agent's, for device listings.
    nsids: devices::KnownNsids,
    /// Pods by the inode of their sandbox's namespace, from the latest look
    /// at the container runtime.
    pods: HashMap<u32, Pod>,
}

/// What a scan says users call a namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    pub names: Vec<String>,
    pub containers: Vec<Container>,
    pub pod: Option<Pod>,
}

impl Inventory {
    /// The state at agent start: everything in the scan was there before us.
    pub fn from_scan(scan: &Scan) -> Self {
        let mut inventory = Self::default();
        for observed in scan.namespaces.values() {
            if let Some(id) = observed.id {
                let announced = inventory.labels_of(observed);
                let tracked = Tracked { inode: observed.inode, seen_at_start: true, announced, ..Default::default() };
                inventory.live.insert(id, tracked);
            }
        }
        inventory.relabel(scan);
        inventory
    }

    /// Takes the pods the container runtime listed, by the inode of their
    /// sandbox's namespace.
    pub fn set_pods(&mut self, pods: HashMap<u32, Pod>) {
        self.pods = pods;
    }

    /// What a scan found for one namespace, with its pod from the runtime.
    fn labels_of(&self, observed: &scan::Observed) -> Labels {
        Labels {
            names: observed.mounts.iter().map(|m| name_of_mount(m)).collect(),
            containers: observed.containers.iter().cloned().collect(),
            pod: self.pods.get(&observed.inode).cloned(),
        }
    }

    /// The nsids the agent's namespace has for others, which the device
    /// sensor keeps (where it gives namespaces nsids) and device listings use.
    pub fn nsids(&self) -> devices::KnownNsids {
        self.nsids.clone()
    }

    /// How long a namespace may have no member process before it is leaked.
    pub fn set_leak_age(&mut self, age: Duration) {
        self.leaks.set_age(age);
    }

    /// Takes a fresh scan into the leak count; returns the `netns_leaked`
    /// records of namespaces that crossed the age now.
    pub fn track_leaks(&mut self, scan: &Scan) -> Vec<EventBody> {
        let live = &self.live;
        self.leaks.scanned(scan, |id| live.contains_key(&id), Instant::now())
    }

    /// Live namespaces without a member process now (the host's aside).
    pub fn without_processes(&self) -> usize {
        self.leaks.without_processes()
    }

    /// Takes names and containers from a fresh scan.
    pub fn relabel(&mut self, scan: &Scan) {
        let labels: HashMap<u64, Labels> =
            scan.namespaces.values().filter_map(|o| Some((o.id?, self.labels_of(o)))).collect();
        for observed in scan.namespaces.values() {
            if let Some(tracked) = observed.id.and_then(|id| self.live.get_mut(&id)) {
                if !observed.mounts.is_empty() {
                    tracked.last_names = observed.mounts.iter().map(|m| name_of_mount(m)).collect();
                }
                if !observed.containers.is_empty() {
                    tracked.last_containers = observed.containers.iter().cloned().collect();
                }
                if let Some(pod) = observed.id.and_then(|id| labels.get(&id)).and_then(|l| l.pod.clone()) {
                    tracked.last_pod = Some(pod);
                }
            }
        }
        self.labels = labels;
    }

    /// The `netns_identified` records of a fresh scan: one for each live
    /// namespace (the host's aside) with a name or container the stream has
    /// not shown yet. Only the refresh task asks, so that a listing (which
    /// scans too) never takes an announcement from the stream; the record's
    /// labels are added when it is sent, as for any event.
    pub fn identified(&mut self, scan: &Scan) -> Vec<EventBody> {
        let mut out = Vec::new();
        for observed in scan.namespaces.values() {
            if scan.host_inode == Some(observed.inode) {
                continue;
            }
            let Some(id) = observed.id else { continue };
            let pod = self.pods.get(&observed.inode).cloned();
            let Some(tracked) = self.live.get_mut(&id) else { continue };
            let names: Vec<String> = observed.mounts.iter().map(|m| name_of_mount(m)).collect();
            let announced = &mut tracked.announced;
            let new_names: Vec<&String> = names.iter().filter(|n| !announced.names.contains(n)).collect();
            let new_containers: Vec<&Container> =
                observed.containers.iter().filter(|c| !announced.containers.contains(c)).collect();
            let new_pod = pod.is_some() && announced.pod != pod;
            if new_names.is_empty() && new_containers.is_empty() && !new_pod {
                continue;
            }
            announced.names.extend(new_names.into_iter().cloned());
            announced.containers.extend(new_containers.into_iter().cloned());
            if new_pod {
                announced.pod = pod;
            }
            out.push(EventBody::NetnsIdentified { netns: crate::event::Netns::new(observed.inode, id), names });
        }
        out
    }

    pub fn labels(&self, id: u64) -> Option<&Labels> {
        self.labels.get(&id)
    }

    /// Adds the name and containers the latest scan knows to an event's
    /// namespaces; for one being torn down (its mount or its container's
    /// processes already gone), the name and containers it last had.
    pub fn label(&self, event: &mut Event) {
        for netns in event.body.namespaces_mut() {
            if let Some(labels) = self.labels.get(&netns.id) {
                netns.name = labels.names.first().cloned();
                netns.containers = labels.containers.clone();
                netns.pod = labels.pod.clone();
            }
            let tracked = self.live.get(&netns.id);
            if netns.name.is_none() {
                netns.name = tracked.and_then(|t| t.last_names.first().cloned());
            }
            if netns.containers.is_empty() {
                netns.containers = tracked.map(|t| t.last_containers.clone()).unwrap_or_default();
            }
            if netns.pod.is_none() {
                netns.pod = tracked.and_then(|t| t.last_pod.clone());
            }
        }
    }

    /// Updates the inventory with an event the agent emitted.
    pub fn observe(&mut self, event: &Event) {
        match &event.body {
            EventBody::NetnsCreate { netns, actor, via, .. } => {
                let tracked = self.live.entry(netns.id).or_default();
                tracked.inode = netns.inode;
                tracked.created = Some(Origin { ts: event.ts.clone(), via: *via, actor: actor.clone() });
                tracked.seen_at_start = false;
                // What the create showed (labelled before it is observed).
                tracked.announced = Labels {
                    names: netns.name.iter().cloned().collect(),
                    containers: netns.containers.clone(),
                    pod: netns.pod.clone(),
                };
            }
            EventBody::NetnsEnter { netns, .. } => {
                let tracked =
                    self.live.entry(netns.id).or_insert_with(|| Tracked { inode: netns.inode, ..Default::default() });
                tracked.enters += 1;
            }
            EventBody::SysctlWrite { sysctl, new, result: SysctlResult::Applied, netns, .. } => {
                let tracked =
                    self.live.entry(netns.id).or_insert_with(|| Tracked { inode: netns.inode, ..Default::default() });
                tracked.overrides.insert(sysctl.clone(), new.clone());
            }
            EventBody::NetnsDestroy { netns, .. } => {
                self.leaks.forget(netns.id);
                let tracked = self.live.remove(&netns.id).unwrap_or_default();
                let mut labels = self.labels.remove(&netns.id).unwrap_or_default();
                if labels.names.is_empty() {
                    labels.names = tracked.last_names.clone();
                }
                if labels.containers.is_empty() {
                    labels.containers = tracked.last_containers.clone();
                }
                if labels.pod.is_none() {
                    labels.pod = tracked.last_pod.clone();
                }
                let mut record = record_of(netns.inode, Some(netns.id), &tracked, None, &labels, false);
                record.destroyed = Some(event.ts.clone());
                record.last_event = Some(event.ts.clone());
                self.destroyed.push_back((Instant::now(), record));
                self.trim_destroyed();
                return;
            }
            _ => {}
        }
        if let Some(netns) = event.body.netns() {
            if let Some(tracked) = self.live.get_mut(&netns.id) {
                tracked.last_event = Some(event.ts.clone());
            }
        }
    }

    fn trim_destroyed(&mut self) {
        let now = Instant::now();
        while self.destroyed.len() > DESTROYED_KEEP
            || self.destroyed.front().is_some_and(|(at, _)| now.duration_since(*at) > DESTROYED_FOR)
        {
            self.destroyed.pop_front();
        }
    }

    /// Namespaces alive now, as far as the agent knows.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// The labels (inode, id, name, first container, pod) of up to `limit`
    /// live namespaces, for the opt-in info series.
    pub fn info_labels(&self, limit: usize) -> Vec<InfoLabels> {
        let mut ids: Vec<_> = self.live.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .take(limit)
            .map(|id| {
                let tracked = &self.live[&id];
                let labels = self.labels.get(&id);
                let name =
                    labels.and_then(|l| l.names.first()).or(tracked.last_names.first()).cloned().unwrap_or_default();
                let container = labels
                    .and_then(|l| l.containers.first())
                    .map(|c| format!("{}:{}", c.runtime, c.id))
                    .unwrap_or_default();
                let pod = labels
                    .and_then(|l| l.pod.as_ref())
                    .or(tracked.last_pod.as_ref())
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .unwrap_or_default();
                InfoLabels { inode: tracked.inode.to_string(), id: id.to_string(), name, container, pod }
            })
            .collect()
    }

    /// The sysctls written in a namespace since the agent started.
    pub fn sysctl_overrides(&self, id: u64) -> Option<&BTreeMap<String, String>> {
        self.live.get(&id).map(|t| &t.overrides)
    }

    /// Every live namespace: what a fresh scan finds, joined with what the
    /// events said; namespaces the agent saw created but the scan cannot
    /// reach (held only by a socket) are listed too.
    pub fn live_records(&mut self, scan: &Scan) -> Vec<NetnsRecord> {
        self.relabel(scan);
        let mut out = Vec::new();
        let mut listed = std::collections::HashSet::new();
        for observed in scan.namespaces.values() {
            let tracked = observed.id.and_then(|id| self.live.get(&id));
            let default = Tracked { inode: observed.inode, seen_at_start: tracked.is_none(), ..Default::default() };
            let tracked = tracked.unwrap_or(&default);
            let labels = self.labels_of(observed);
            let host = scan.host_inode == Some(observed.inode);
            let mut record = record_of(observed.inode, observed.id, tracked, Some(observed), &labels, host);
            record.mounts = observed.mounts.iter().map(|m| crate::event::text::path_text(m)).collect();
            if let Some(id) = observed.id {
                listed.insert(id);
            }
            out.push(record);
        }
        for (id, tracked) in &self.live {
            if !listed.contains(id) && tracked.created.is_some() {
                out.push(record_of(tracked.inode, Some(*id), tracked, None, &Labels::default(), false));
            }
        }
        let now = Instant::now();
        for record in &mut out {
            record.without_processes = record.id.and_then(|id| self.leaks.status(id, now));
        }
        out.sort_by_key(|r| (!r.host, r.inode, r.id));
        out
    }

    /// Recently destroyed namespaces, oldest first.
    pub fn destroyed_records(&self) -> Vec<NetnsRecord> {
        self.destroyed.iter().map(|(_, r)| r.clone()).collect()
    }
}

fn record_of(
    inode: u32,
    id: Option<u64>,
    tracked: &Tracked,
    observed: Option<&scan::Observed>,
    labels: &Labels,
    host: bool,
) -> NetnsRecord {
    NetnsRecord {
        inode,
        id,
        names: labels.names.clone(),
        mounts: Vec::new(),
        host,
        containers: labels.containers.clone(),
        pod: labels.pod.clone(),
        processes: observed.map_or(0, |o| o.pids.len() as u32),
        fds: observed.map(|o| o.fds.clone()).unwrap_or_default(),
        devices: observed.map(|o| o.devices.clone()).unwrap_or_default(),
        devices_unlisted: observed.and_then(|o| o.devices_unlisted.clone()),
        created: tracked.created.clone(),
        seen_at_start: tracked.seen_at_start,
        enters: tracked.enters,
        sysctl_overrides: tracked.overrides.clone(),
        last_event: tracked.last_event.clone(),
        destroyed: None,
        without_processes: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Actor, Netns};

    fn observed(inode: u32, id: u64, mounts: &[&str], containers: &[&str]) -> (u32, scan::Observed) {
        let observed = scan::Observed {
            inode,
            id: Some(id),
            mounts: mounts.iter().map(Into::into).collect(),
            containers: containers
                .iter()
                .map(|c| Container { runtime: "runc".into(), id: (*c).into(), pod_uid: None })
                .collect(),
            ..Default::default()
        };
        (inode, observed)
    }

    fn scan_of(namespaces: Vec<(u32, scan::Observed)>) -> Scan {
        Scan { namespaces: namespaces.into_iter().collect(), host_inode: Some(1) }
    }

    fn names_identified(inventory: &mut Inventory, scan: &Scan) -> Vec<(u64, Vec<String>)> {
        inventory.relabel(scan);
        inventory
            .identified(scan)
            .into_iter()
            .map(|body| match body {
                EventBody::NetnsIdentified { netns, names } => (netns.id, names),
                other => panic!("not an identification: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_name_or_container_found_after_the_create_is_announced_once() {
        let at_start = scan_of(vec![observed(1, 10, &[], &[]), observed(2, 20, &["/run/netns/old"], &["c1"])]);
        let mut inventory = Inventory::from_scan(&at_start);
        assert_eq!(names_identified(&mut inventory, &at_start), [], "what was known at start is not news");

        let create = EventBody::NetnsCreate {
            netns: Netns::new(3, 30),
            parent_netns: Netns::new(1, 10),
            via: CreateVia::Unshare,
            actor: Actor { pid: 5, tid: 5, ppid: 1, uid: 0, gid: 0, comm: "ip".into(), cgroup_id: 1 },
            child: None,
        };
        inventory.observe(&Event { ts: "t".into(), seq: 1, body: create });
        let later = |mounts: &[&str], containers: &[&str], host: &[&str]| {
            scan_of(vec![
                observed(1, 10, &[], host),
                observed(2, 20, &["/run/netns/old"], &["c1"]),
                observed(3, 30, mounts, containers),
            ])
        };
        assert_eq!(names_identified(&mut inventory, &later(&[], &[], &[])), [], "nothing known yet");
        let named = later(&["/run/netns/web"], &[], &[]);
        inventory.live_records(&named);
        assert_eq!(names_identified(&mut inventory, &named), [(30, vec!["web".to_owned()])], "a listing takes nothing");
        assert_eq!(names_identified(&mut inventory, &named), [], "once");
        let filled = later(&["/run/netns/web"], &["c2"], &["host-net"]);
        let web = vec!["web".to_owned()];
        assert_eq!(names_identified(&mut inventory, &filled), [(30, web)], "a new container; the host's aside");
        assert_eq!(names_identified(&mut inventory, &later(&[], &[], &[])), []);
        assert_eq!(names_identified(&mut inventory, &filled), [], "labels that come back are not news");
    }
}
