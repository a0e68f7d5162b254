//! The sysctl sensor's worker thread: every write passes through it, in
//! order. It adds the TCP socket count of the write's namespace and, on
//! kernels where no probe sees the sysctl handler return, finds out the
//! outcome itself:
//!
//! - from the next write to the same sysctl in the same namespace, whose
//!   `old` value is what this write left (exact);
//! - else, once the writer is out of its write, by reading the value back
//!   in that namespace: the new value means applied, the old one rejected
//!   (the kernel's errno is not known this way), anything else unknown.
//!
//! Namespaces are reached through the writer's own ns file while it is in
//! there, else through the latest inventory scan's path of the namespace;
//! the worker thread steps in and out (the lifecycle sensor drops the
//! agent's own namespace entries).

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use crate::{
    event::{EventBody, Netns, SysctlResult},
    inventory::scan::Scan,
    sensors::{Draft, MessageSender, SensorMessage},
    sys::{nsfs, proc, sysctl::same_value},
};

/// How long a socket count is reused within a burst of writes, by the
/// kernel's time of the writes (not the worker's: a worker behind by a
/// burst's length would otherwise hand a count to writes made after the
/// sockets changed).
const SOCKET_COUNT_REUSE: Duration = Duration::from_millis(20);
/// Where `ip netns` and docker bind-mount namespaces.
const NAMED_NETNS_DIRS: [&str; 3] = ["/run/netns", "/var/run/netns", "/run/docker/netns"];
/// A write whose writer might still be in it is read back after at most this long.
const OUTCOME_WAIT: Duration = Duration::from_millis(5);

/// A write on its way through the worker.
pub struct Write {
    pub draft: Draft,
    /// The writer, through which its namespace is reached.
    pub pid: u32,
    pub tid: u32,
    /// The file under /proc/sys (slash form).
    pub path: String,
    /// The kernel side did not see the outcome.
    pub check_outcome: bool,
    /// When the worker first saw it.
    pub seen: Instant,
}

impl Write {
    fn netns(&self) -> &Netns {
        match &self.draft.body {
            EventBody::SysctlWrite { netns, .. } => netns,
            _ => unreachable!("only sysctl writes pass through the worker"),
        }
    }

    fn same_file(&self, other: &Write) -> bool {
        self.path == other.path && self.netns().id == other.netns().id
    }

    fn values(&self) -> (Option<&str>, &str) {
        match &self.draft.body {
            EventBody::SysctlWrite { old, new, .. } => (old.as_deref(), new.as_str()),
            _ => unreachable!("only sysctl writes pass through the worker"),
        }
    }

    fn set_result(&mut self, outcome: SysctlResult) {
        if let EventBody::SysctlWrite { result, .. } = &mut self.draft.body {
            *result = outcome;
        }
        self.check_outcome = false;
    }
}

pub enum Job {
    Writes(Vec<Write>),
    /// The namespace is gone; its sampled count with it.
    Destroyed(u64),
    /// A fresh inventory scan: paths to reach namespaces by.
    Scanned(Arc<Scan>),
}

/// Whether a write at `at` (CLOCK_BOOTTIME) may take the count read for
/// one at `sampled`: made after it, less than [`SOCKET_COUNT_REUSE`] later.
fn same_burst(sampled: u64, at: u64) -> bool {
    at.checked_sub(sampled).is_some_and(|d| d < SOCKET_COUNT_REUSE.as_nanos() as u64)
}

pub struct Worker {
    queue: VecDeque<Write>,
    /// Per namespace id: CLOCK_BOOTTIME of the write its count was read for, the count.
    sockets: HashMap<u64, (u64, Option<u64>)>,
    scan: Arc<Scan>,
    to_agent: MessageSender,
}

/// Most events sent to the agent in one message.
const SEND_AT_MOST: usize = 256;

impl Worker {
    pub fn new(scan: Arc<Scan>, to_agent: MessageSender) -> Self {
        Self { queue: VecDeque::new(), sockets: HashMap::new(), scan, to_agent }
    }

    pub fn run(mut self, jobs: mpsc::Receiver<Job>) {
        loop {
            let job = if self.queue.is_empty() {
                jobs.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
            } else {
                jobs.recv_timeout(Duration::from_millis(1))
            };
            let stopping = match job {
                Ok(job) => {
                    self.take(job);
                    while let Ok(job) = jobs.try_recv() {
                        self.take(job);
                    }
                    false
                }
                Err(mpsc::RecvTimeoutError::Timeout) => false,
                Err(mpsc::RecvTimeoutError::Disconnected) => true,
            };
            if !self.send_ready(stopping) || stopping {
                return;
            }
        }
    }

    fn take(&mut self, job: Job) {
        match job {
            Job::Writes(writes) => self.queue.extend(writes),
            Job::Destroyed(id) => {
                self.sockets.remove(&id);
            }
            Job::Scanned(scan) => self.scan = scan,
        }
    }

    /// Sends every write at the head of the queue whose outcome is known
    /// (all of them when stopping); false once the agent is gone.
    fn send_ready(&mut self, stopping: bool) -> bool {
        self.outcomes_from_later_writes();
        let mut ready = Vec::new();
        while let Some(head) = self.queue.front() {
            if head.check_outcome && !stopping && !self.writer_done(0) {
                break;
            }
            let mut write = self.queue.pop_front().expect("front exists");
            if write.check_outcome {
                let outcome = self.read_back(&write);
                write.set_result(outcome);
            }
            self.add_socket_count(&mut write);
            ready.push(write.draft);
            // A long backlog goes out in pieces: the agent sees progress
            // (at its stop it waits only while workers make some).
            if ready.len() >= SEND_AT_MOST
                && self.to_agent.send(SensorMessage::Events(std::mem::take(&mut ready))).is_err()
            {
                return false;
            }
        }
        ready.is_empty() || self.to_agent.send(SensorMessage::Events(ready)).is_ok()
    }

    /// A write followed by another to the same file: the later one's old
    /// value is what the earlier one left.
    fn outcomes_from_later_writes(&mut self) {
        for i in 0..self.queue.len() {
            if !self.queue[i].check_outcome {
                continue;
            }
            let Some(later) = (i + 1..self.queue.len()).find(|&j| self.queue[j].same_file(&self.queue[i])) else {
                continue;
            };
            let left = self.queue[later].values().0.map(str::to_owned);
            let outcome = compare(left.as_deref(), self.queue[i].values());
            self.queue[i].set_result(outcome);
        }
    }

    /// Whether the writer of queue entry `index` is out of its write.
    fn writer_done(&self, index: usize) -> bool {
        let write = &self.queue[index];
        if write.seen.elapsed() >= OUTCOME_WAIT {
            return true;
        }
        // A thread is in one syscall at a time: a later write of its own
        // means this one returned.
        if self.queue.iter().skip(index + 1).any(|w| w.tid == write.tid) {
            return true;
        }
        match proc::current_syscall(write.pid, write.tid) {
            proc::Syscall::Gone => true,
            proc::Syscall::Number(nr) => !proc::is_write_syscall(nr),
            proc::Syscall::NotInSyscall => true,
            proc::Syscall::Running | proc::Syscall::Unknown => false,
        }
    }

    fn read_back(&self, write: &Write) -> SysctlResult {
        let file = PathBuf::from("/proc/sys").join(&write.path);
        let now = if write.path.starts_with("net/") {
            self.in_namespace(write, || std::fs::read(&file).ok()).flatten()
        } else if let Some((kind, flag)) = other_namespace_of(&write.path) {
            // Read in the writer's namespace of that kind, while it lives.
            let theirs = format!("/proc/{}/task/{}/ns/{kind}", write.pid, write.tid);
            let same = std::fs::metadata(&theirs).ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                == std::fs::metadata(format!("/proc/thread-self/ns/{kind}"))
                    .ok()
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
            match std::fs::File::open(&theirs) {
                Ok(_) if same => std::fs::read(&file).ok(),
                Ok(ns) => nsfs::run_inside_of_kind(&ns, flag, || std::fs::read(&file).ok()).ok().flatten(),
                Err(_) => None,
            }
        } else {
            std::fs::read(&file).ok()
        };
        let Some(now) = now else { return SysctlResult::Unknown };
        let now = super::value_text::value_text(&now);
        compare(Some(&now), write.values())
    }

    fn add_socket_count(&mut self, write: &mut Write) {
        let EventBody::SysctlWrite { sysctl, tcp_sockets_in_use, netns, .. } = &write.draft.body else { return };
        if !sysctl.starts_with("net.") {
            return;
        }
        let id = netns.id;
        let at = write.draft.boot_ns;
        let count = match self.sockets.get(&id) {
            Some((sampled, Some(count))) if same_burst(*sampled, at) => Some(*count),
            _ => {
                let count = self
                    .in_namespace(write, || {
                        std::fs::read_to_string("/proc/thread-self/net/sockstat")
                            .ok()
                            .and_then(|s| proc::parse_tcp_inuse(&s))
                    })
                    .flatten();
                if self.sockets.len() > 4096 {
                    self.sockets.retain(|_, (sampled, _)| same_burst(*sampled, at));
                }
                self.sockets.insert(id, (at, count));
                count
            }
        };
        if tcp_sockets_in_use.is_none() {
            let EventBody::SysctlWrite { tcp_sockets_in_use, .. } = &mut write.draft.body else { return };
            *tcp_sockets_in_use = count;
        }
    }

    /// Runs `f` on this thread inside the write's namespace; None when the
    /// namespace cannot be reached any more.
    fn in_namespace<T>(&self, write: &Write, f: impl FnOnce() -> T) -> Option<T> {
        let netns = write.netns();
        let own = format!("/proc/{}/task/{}/ns/net", write.pid, write.tid);
        let scanned =
            self.scan.namespaces.get(&netns.inode).filter(|o| o.id == Some(netns.id)).and_then(|o| o.path.clone());
        // A namespace made a moment ago is in no scan yet: its bind mount may be.
        let mounted = NAMED_NETNS_DIRS
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flat_map(|entries| entries.flatten().map(|e| e.path()))
            .filter(|p| {
                std::fs::metadata(p).is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) as u32 == netns.inode)
            });
        for path in std::iter::once(PathBuf::from(own)).chain(scanned).chain(mounted) {
            let Ok(file) = std::fs::File::open(&path) else { continue };
            // The path must still lead to that namespace (pids and inodes are reused).
            if nsfs::ns_id_of(&file).ok() != Some(netns.id) {
                continue;
            }
            return nsfs::run_inside(&file, f).ok();
        }
        None
    }
}

/// Sysctls outside /proc/sys/net that belong to another kind of namespace
/// (UTS, IPC), with its name under /proc/PID/ns and its CLONE_NEW* flag.
fn other_namespace_of(path: &str) -> Option<(&'static str, libc::c_int)> {
    const IPC: &[&str] = &[
        "kernel/msgmax",
        "kernel/msgmnb",
        "kernel/msgmni",
        "kernel/sem",
        "kernel/shmall",
        "kernel/shmmax",
        "kernel/shmmni",
        "kernel/shm_rmid_forced",
        "kernel/auto_msgmni",
        "kernel/msg_next_id",
        "kernel/sem_next_id",
        "kernel/shm_next_id",
    ];
    if matches!(path, "kernel/hostname" | "kernel/domainname") {
        Some(("uts", libc::CLONE_NEWUTS))
    } else if IPC.contains(&path) || path.starts_with("fs/mqueue/") {
        Some(("ipc", libc::CLONE_NEWIPC))
    } else {
        None
    }
}

/// The outcome of a write from the value found after it.
fn compare(after: Option<&str>, (old, new): (Option<&str>, &str)) -> SysctlResult {
    let Some(after) = after else { return SysctlResult::Unknown };
    if same_value(after, new) {
        SysctlResult::Applied
    } else if old.is_some_and(|old| same_value(after, old)) {
        SysctlResult::Rejected
    } else {
        SysctlResult::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_is_reused_only_within_a_burst_in_kernel_time() {
        let ms = 1_000_000;
        assert!(same_burst(100 * ms, 100 * ms) && same_burst(100 * ms, 119 * ms));
        assert!(!same_burst(100 * ms, 120 * ms), "20 ms later is another burst");
        assert!(!same_burst(100 * ms, 99 * ms), "an earlier write is not counted with a later sample");
    }

    #[test]
    fn outcomes_from_values() {
        assert_eq!(compare(Some("600"), (Some("7200"), "600")), SysctlResult::Applied);
        assert_eq!(compare(Some("7200"), (Some("7200"), "abc")), SysctlResult::Rejected);
        assert_eq!(compare(Some("1024\t65000"), (Some("32768 60999"), "1024 65000")), SysctlResult::Applied);
        assert_eq!(compare(Some("5"), (Some("7200"), "0005")), SysctlResult::Applied);
        assert_eq!(compare(Some("9"), (Some("7200"), "600")), SysctlResult::Unknown, "someone else wrote");
        assert_eq!(compare(None, (Some("1"), "0")), SysctlResult::Unknown);
        assert_eq!(compare(Some("1"), (Some("1"), "1")), SysctlResult::Applied, "the same value again");
    }
}
