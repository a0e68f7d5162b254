//! nsids: the numbers the agent's namespace gives other network namespaces,
//! which rtnetlink uses to say which namespace a notification is about.
//!
//! The kernel only tells a NETLINK_LISTEN_ALL_NSID listener about
//! namespaces that have an nsid in the listener's namespace, so the agent
//! gives every namespace one as soon as it sees it (at start, when a create
//! event arrives, at each rescan). This is the only state nstrail adds to
//! the kernel: an nsid does not keep a namespace alive, is dropped by the
//! kernel with the namespace, and shows up only as `ip netns list-id`
//! entries and `link-netnsid` in `ip link` output.

use std::{
    collections::HashMap,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    event::{Event, EventBody, Netns},
    inventory::{
        devices::{Device, KnownNsids, LinkNotice},
        scan::{self, Scan},
    },
    sys::{nsfs, rtnetlink::Requests},
};

/// Bind-mount directories looked at for a namespace whose creator is gone.
const NAMED_NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];
/// A full /proc rescan for an unknown nsid happens at most this often.
const RESCAN_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// Both directions between nsids (of the agent's namespace) and namespaces.
///
/// The kernel reuses a freed nsid at once, while notifications tagged with
/// it by its previous holder may still wait in the listener's queue, ahead
/// of the RTM_DELNSID that freed it. So the map changes in the listener's
/// order: a holder is dropped when RTM_DELNSID is read, and a new holder of
/// an nsid still mapped waits in `pending` until then.
pub struct NsidMap {
    /// The agent's own namespace: notifications without an nsid are about it.
    own: Netns,
    /// The nsid the agent's namespace has for itself, if someone gave it one.
    own_nsid: Option<i32>,
    by_nsid: HashMap<i32, Netns>,
    /// Shared with the inventory's device listings.
    by_id: KnownNsids,
    pending: HashMap<i32, Netns>,
    requests: Requests,
    last_rescan: Option<Instant>,
    rescan_enabled: bool,
    /// Namespaces the agent failed to give an nsid (logged once each, not retried).
    failed: HashMap<u64, String>,
    /// The next nsid to ask for (see [`give_nsid`](Self::give_nsid)).
    next_nsid: i32,
    /// The last namespaces looked at had an nsid already.
    expect_assigned: bool,
}

impl NsidMap {
    pub fn new(own: Netns, by_id: KnownNsids) -> std::io::Result<Self> {
        let mut requests = Requests::open()?;
        let own_nsid = std::fs::File::open("/proc/thread-self/ns/net")
            .ok()
            .and_then(|f| requests.nsid_of_fd(f.as_raw_fd()).ok().flatten());
        Ok(Self {
            own,
            own_nsid,
            by_nsid: HashMap::new(),
            by_id,
            pending: HashMap::new(),
            requests,
            last_rescan: None,
            rescan_enabled: true,
            failed: HashMap::new(),
            next_nsid: 0,
            expect_assigned: true,
        })
    }

    /// The nsid a listener datagram carries, with the agent's own namespace
    /// (no nsid, its own nsid, or a negative value) as `None`.
    pub fn normalize(&self, nsid: Option<i32>) -> Option<i32> {
        nsid.filter(|n| *n >= 0 && Some(*n) != self.own_nsid)
    }

    pub fn own(&self) -> &Netns {
        &self.own
    }

    pub fn requests(&mut self) -> &mut Requests {
        &mut self.requests
    }

    /// The namespace an nsid names; `None` is the agent's own.
    pub fn get(&self, nsid: Option<i32>) -> Option<Netns> {
        match nsid {
            None => Some(self.own.clone()),
            Some(nsid) => self.by_nsid.get(&nsid).cloned(),
        }
    }

    /// All nsids known, with their namespaces.
    pub fn known(&self) -> impl Iterator<Item = (i32, &Netns)> {
        self.by_nsid.iter().map(|(k, v)| (*k, v))
    }

    /// Like [`get`](Self::get), but looks harder for an nsid the kernel
    /// assigned by itself (a move from the host into a namespace seconds
    /// old): first the nsfs files `pid` has open and is in, then, rarely,
    /// every namespace in /proc.
    pub fn resolve(&mut self, nsid: Option<i32>, pid: Option<u32>) -> Option<Netns> {
        if let Some(netns) = self.get(nsid) {
            return Some(netns);
        }
        if let Some(pid) = pid {
            self.learn_from_process(pid);
            if let Some(netns) = self.get(nsid) {
                return Some(netns);
            }
        }
        self.rescan_if_due();
        self.get(nsid)
    }

    /// Learns the nsids of the namespaces a process is in or holds open.
    pub fn learn_from_process(&mut self, pid: u32) {
        for path in nsfs_files_of(pid) {
            self.learn_path(&path);
        }
    }

    /// Gives every namespace in /proc an nsid, unless that was done very recently.
    pub fn rescan_if_due(&mut self) {
        if self.rescan_enabled && self.last_rescan.is_none_or(|at| at.elapsed() >= RESCAN_AT_MOST_EVERY) {
            self.last_rescan = Some(Instant::now());
            self.assign_scanned(&scan::scan());
        }
    }

    /// Gives every namespace of a scan an nsid (unless known already).
    pub fn assign_scanned(&mut self, scan: &Scan) {
        let (started, mut given) = (Instant::now(), 0);
        for observed in scan.namespaces.values() {
            let (Some(id), Some(path)) = (observed.id, &observed.path) else { continue };
            if id == self.own.id || self.by_id.contains(id) || self.failed.contains_key(&id) {
                continue;
            }
            given += usize::from(self.assign(path, &Netns::new(observed.inode, id)));
        }
        if given > 0 {
            log::debug!("{given} namespaces of a scan given nsids in {:?}", started.elapsed());
        }
    }

    /// Gives a namespace reported created an nsid, reaching it through the
    /// task that is in it, else through a bind mount.
    pub fn assign_created(&mut self, event: &Event) {
        let EventBody::NetnsCreate { netns, actor, child, .. } = &event.body else { return };
        let mut tasks: Vec<PathBuf> = Vec::new();
        if let Some(child) = child {
            tasks.push(format!("/proc/{}/task/{}/ns/net", child.pid, child.tid).into());
        }
        tasks.push(format!("/proc/{}/task/{}/ns/net", actor.pid, actor.tid).into());
        // The bind mounts only when the creator has already left (`ip netns add`).
        let mounts = NAMED_NETNS_DIRS
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flat_map(|entries| entries.flatten().map(|e| e.path()));
        for path in tasks.into_iter().chain(mounts) {
            if std::fs::metadata(&path).is_ok_and(|m| m.ino() as u32 == netns.inode) && self.assign(&path, netns) {
                return;
            }
        }
        log::debug!("netns {} gone or unreachable before it could get an nsid", netns.id);
    }

    /// Records a known pairing without asking the kernel, and no rescans
    /// (tests and the fuzzer).
    pub fn insert(&mut self, nsid: i32, netns: Netns) {
        self.rescan_enabled = false;
        self.record(nsid, netns);
    }

    /// A namespace was destroyed; its nsid goes when RTM_DELNSID is read.
    pub fn netns_destroyed(&mut self, id: u64) {
        self.failed.remove(&id);
    }

    /// A link notification about the namespace with `nsid` (None: the
    /// agent's own) was read: the device list the inventory keeps for it
    /// follows. One that could not be parsed drops the list.
    pub fn link_notified(&self, nsid: Option<i32>, removed: bool, link: Option<&crate::sys::rtnetlink::Link>) {
        let Some(netns) = nsid.and_then(|nsid| self.by_nsid.get(&nsid)) else { return };
        let notice = match link {
            None => None,
            Some(link) if removed => Some(LinkNotice::Gone { ifindex: link.ifindex as u32 }),
            Some(link) => Some(LinkNotice::Present(Device {
                name: link.name.clone(),
                ifindex: link.ifindex as u32,
                kind: link.kind.clone(),
            })),
        };
        self.by_id.link_notified(netns.id, notice);
    }

    /// RTM_DELNSID read: the holder is gone, a waiting new holder takes over.
    pub fn nsid_deleted(&mut self, nsid: i32) {
        if let Some(netns) = self.by_nsid.remove(&nsid) {
            self.by_id.remove(netns.id);
        }
        if let Some(netns) = self.pending.remove(&nsid) {
            self.by_nsid.insert(nsid, netns);
        }
    }

    /// RTM_NEWNSID read: a new holder learned early takes over.
    pub fn nsid_created(&mut self, nsid: i32) {
        if let Some(netns) = self.pending.remove(&nsid) {
            if let Some(old) = self.by_nsid.insert(nsid, netns) {
                self.by_id.remove(old.id);
            }
        }
    }

    /// After the listener lost notifications: what it knew may be stale.
    pub fn resync(&mut self) {
        self.by_nsid.clear();
        self.by_id.clear();
        self.pending.clear();
        self.last_rescan = None;
        self.rescan_if_due();
    }

    fn record(&mut self, nsid: i32, netns: Netns) {
        self.by_id.insert(netns.id, nsid);
        match self.by_nsid.get(&nsid) {
            Some(holder) if *holder != netns => {
                self.pending.insert(nsid, netns);
            }
            _ => {
                self.by_nsid.insert(nsid, netns);
            }
        }
    }

    /// Learns (assigning if needed) the nsid of the namespace at `path`.
    fn learn_path(&mut self, path: &Path) {
        let Ok(file) = std::fs::File::open(path) else { return };
        if !nsfs::is_net_namespace(&file) {
            return;
        }
        let (Ok(meta), Ok(id)) = (file.metadata(), nsfs::ns_id_of(&file)) else { return };
        if id != self.own.id && !self.by_id.contains(id) {
            self.assign(path, &Netns::new(meta.ino() as u32, id));
        }
    }

    /// Opens `path`, checks it is still `netns` and gives it an nsid.
    fn assign(&mut self, path: &Path, netns: &Netns) -> bool {
        let Ok(file) = std::fs::File::open(path) else { return false };
        if nsfs::ns_id_of(&file).is_ok_and(|id| id != netns.id) {
            return false; // the path now leads elsewhere (a reused pid)
        }
        match self.give_nsid(&file) {
            Ok(nsid) => {
                self.record(nsid, netns.clone());
                true
            }
            Err(err) => {
                if self.failed.insert(netns.id, err.to_string()).is_none() {
                    log::warn!("cannot give netns {} an nsid ({err}); moves between it and other non-host namespaces may be missed", netns.id);
                }
                false
            }
        }
    }

    /// The nsid of the namespace open as `file`, given now if it has none.
    ///
    /// Every nsid request makes the kernel walk all the nsids the agent's
    /// namespace has (a linear search of its idr), so at thousands of
    /// namespaces the number of requests is what giving them nsids costs:
    /// the kernel's own way (ask, assign any, ask again) is three walks,
    /// asking for a number picked here is one. Whether a namespace has one
    /// already is asked first only while namespaces keep turning out to
    /// (an agent restarted: they kept the nsids it gave them).
    fn give_nsid(&mut self, file: &std::fs::File) -> std::io::Result<i32> {
        let fd = file.as_raw_fd();
        if self.expect_assigned {
            if let Some(nsid) = self.requests.nsid_of_fd(fd)? {
                return Ok(nsid);
            }
            self.expect_assigned = false;
        }
        for _ in 0..PICKS {
            let picked = self.next_nsid;
            self.next_nsid = picked.checked_add(1).unwrap_or(0);
            match self.requests.new_nsid(fd, picked) {
                Ok(()) => return Ok(picked),
                // It has one already, or `picked` is someone else's.
                Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                    if let Some(nsid) = self.requests.nsid_of_fd(fd)? {
                        self.expect_assigned = true;
                        return Ok(nsid);
                    }
                }
                // A failure may still have assigned one (a late answer).
                Err(err) => return self.requests.nsid_of_fd(fd)?.ok_or(err),
            }
        }
        // Picks keep colliding (another tool gave out a run of numbers).
        self.requests.ensure_nsid(fd)
    }
}

/// Numbers tried in a row before the kernel is left to pick an nsid.
const PICKS: usize = 4;

/// The nsfs files a process is in or holds open (its threads' namespaces
/// and its fds), cheap to list.
fn nsfs_files_of(pid: u32) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from(format!("/proc/{pid}/ns/net"))];
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in entries.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else { continue };
            let target = target.to_string_lossy();
            if target.starts_with("net:[") || NAMED_NETNS_DIRS.iter().any(|d| target.starts_with(d)) {
                out.push(entry.path());
            }
        }
    }
    out
}
