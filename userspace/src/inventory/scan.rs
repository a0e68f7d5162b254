//! What /proc says about network namespaces right now: who is in each, who
//! holds one by an open fd, and where one is bind-mounted.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use procfs::process::Process;

use super::containers;
use crate::{
    event::{text::path_text, Container},
    sys::mountinfo,
};

/// One namespace as seen in /proc.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observed {
    pub inode: u32,
    /// Unique id (NS_GET_ID), when the kernel can say.
    pub id: Option<u64>,
    /// Processes with at least one thread in it.
    pub pids: BTreeSet<u32>,
    /// Open nsfs file descriptors: (pid, fd).
    pub fds: Vec<(u32, u32)>,
    /// nsfs bind mounts, as paths in the agent's view.
    pub mounts: BTreeSet<PathBuf>,
    pub containers: BTreeSet<Container>,
    /// A path to reach it by (a task's ns file, an fd, a mount).
    pub path: Option<PathBuf>,
    /// Its network devices, when asked for ([`with_devices`]).
    pub devices: Vec<super::devices::Device>,
    /// Why its devices could not be listed (it was gone before they were).
    pub devices_unlisted: Option<String>,
}

/// Every network namespace reachable from /proc.
#[derive(Debug, Default)]
pub struct Scan {
    pub namespaces: BTreeMap<u32, Observed>,
    /// Inode of the host namespace (pid 1's, else the agent's own).
    pub host_inode: Option<u32>,
}

fn ns_inode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

/// The inode in a `net:[INODE]` link.
fn link_inode(path: &Path) -> Option<u32> {
    let link = std::fs::read_link(path).ok()?;
    link.to_str()?.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

fn runc_container(id: &str) -> bool {
    !id.is_empty() && !id.contains("..") && Path::new("/run/runc").join(id).join("state.json").exists()
}

/// Device number of the nsfs file system, to recognise nsfs files opened by path.
fn nsfs_dev() -> Option<u64> {
    std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.dev())
}

/// The net namespace inode behind an fd that was opened through a path
/// (a bind mount such as /run/netns/NAME), if it is one.
fn net_ns_behind(fd_path: &Path, nsfs: u64) -> Option<u32> {
    let meta = std::fs::metadata(fd_path).ok()?;
    if meta.dev() != nsfs {
        return None;
    }
    let file = std::fs::File::open(fd_path).ok()?;
    crate::sys::nsfs::is_net_namespace(&file).then_some(meta.ino() as u32)
}

/// Each namespace's id and a path to reach it by, read from one open file
/// whose inode was checked: a path seen earlier in the scan may lead
/// elsewhere by now (a closed fd number reused, a process gone).
#[derive(Default)]
struct Ids {
    by_inode: BTreeMap<u32, (u64, PathBuf)>,
}

impl Ids {
    /// Learns the id of namespace `inode` through `path`, unless known;
    /// a bind mount replaces a path that was learnt otherwise (it lasts).
    fn learn(&mut self, inode: u32, path: PathBuf, is_mount: bool) {
        if self.by_inode.contains_key(&inode) && !is_mount {
            return;
        }
        if let Some(id) = Self::read(inode, &path) {
            self.by_inode.insert(inode, (id, path));
        }
    }

    /// The id of namespace `inode` read through `path`, if it still leads there.
    fn read(inode: u32, path: &Path) -> Option<u64> {
        Self::read_open(inode, &std::fs::File::open(path).ok()?)
    }

    /// The id of namespace `inode` read through an open nsfs file, if it is that one.
    fn read_open(inode: u32, file: &std::fs::File) -> Option<u64> {
        if file.metadata().map(|m| m.ino() as u32).ok() != Some(inode) {
            return None;
        }
        crate::sys::nsfs::ns_id_of(file).ok()
    }
}

pub fn scan() -> Scan {
    let mut out = Scan::default();
    let nsfs = nsfs_dev();
    let mut seen_mount_ns = HashSet::new();
    let mut ids = Ids::default();
    let Ok(processes) = procfs::process::all_processes() else {
        return out;
    };
    let own_pid = std::process::id();
    for process in processes.flatten() {
        let pid = process.pid() as u32;
        // The agent's own descriptors on namespaces, and its threads other
        // than the main one, are its passing look-ups.
        scan_tasks(&process, pid, pid == own_pid, &mut out, &mut ids);
        if pid != own_pid {
            scan_fds(pid, nsfs, &mut out, &mut ids);
        }
        // One mount table per mount namespace is enough.
        let mnt_ns = ns_inode_of(&PathBuf::from(format!("/proc/{pid}/ns/mnt")));
        if mnt_ns.is_some_and(|m| seen_mount_ns.insert(m)) {
            scan_mounts(pid, &mut out, &mut ids);
        }
    }
    for (inode, (id, path)) in ids.by_inode {
        if let Some(observed) = out.namespaces.get_mut(&inode) {
            observed.id = Some(id);
            observed.path = Some(path);
        }
    }
    // readlink works where stat of pid 1's namespace is refused (some sandboxes).
    out.host_inode = link_inode(Path::new("/proc/1/ns/net")).or_else(|| link_inode(Path::new("/proc/self/ns/net")));
    out
}

fn entry(out: &mut Scan, inode: u32) -> &mut Observed {
    out.namespaces.entry(inode).or_insert_with(|| Observed { inode, ..Default::default() })
}

fn scan_tasks(process: &Process, pid: u32, main_thread_only: bool, out: &mut Scan, ids: &mut Ids) {
    let cgroup = process.cgroups().ok().and_then(|groups| containers::cgroup_path(&groups.0));
    let container = cgroup.and_then(|p| containers::from_cgroup_path(&p, &runc_container));
    let Ok(tasks) = process.tasks() else {
        return;
    };
    let mut inodes = BTreeSet::new();
    for task in tasks.flatten().filter(|t| !main_thread_only || t.tid as u32 == pid) {
        let path = PathBuf::from(format!("/proc/{pid}/task/{}/ns/net", task.tid));
        if let Some(inode) = ns_inode_of(&path) {
            if inodes.insert(inode) {
                ids.learn(inode, path, false);
            }
        }
    }
    for inode in inodes {
        let observed = entry(out, inode);
        observed.pids.insert(pid);
        if let Some(container) = &container {
            observed.containers.insert(container.clone());
        }
    }
}

/// One open fd on a network namespace: its number, the namespace's
/// inode, and the id read through it (unless the scan knew the id already).
struct FdOnNetns {
    fd: u32,
    inode: u32,
    id: Option<u64>,
}

fn scan_fds(pid: u32, nsfs: Option<u64>, out: &mut Scan, ids: &mut Ids) {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return;
    };
    let fds: Vec<u32> = entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    // A process holding thousands of namespaces (a runtime, a test
    // harness) costs a readlink, an open and an ioctl per fd: spread over
    // the cores.
    let threads =
        if fds.len() < 512 { 1 } else { std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4) };
    let Ok(table) = crate::sys::proc::FdDir::open(pid) else {
        return;
    };
    let (known, table) = (&ids.by_inode, &table);
    let found: Vec<FdOnNetns> = std::thread::scope(|scope| {
        let parts: Vec<_> = fds
            .chunks(fds.len().div_ceil(threads).max(1))
            .map(|part| {
                scope.spawn(move || {
                    part.iter().filter_map(|&fd| fd_on_netns(table, pid, fd, nsfs, known)).collect::<Vec<_>>()
                })
            })
            .collect();
        parts.into_iter().flat_map(|part| part.join().unwrap_or_default()).collect()
    });
    for FdOnNetns { fd, inode, id } in found {
        entry(out, inode).fds.push((pid, fd));
        if let Some(id) = id {
            ids.by_inode.entry(inode).or_insert_with(|| (id, PathBuf::from(format!("/proc/{pid}/fd/{fd}"))));
        }
    }
}

/// What fd `fd` of `pid` (in its open file table `table`) is, if a network namespace.
fn fd_on_netns(
    table: &crate::sys::proc::FdDir,
    pid: u32,
    fd: u32,
    nsfs: Option<u64>,
    known: &BTreeMap<u32, (u64, PathBuf)>,
) -> Option<FdOnNetns> {
    let target = table.target(fd).ok()?;
    let inode = match target.to_str().and_then(|t| t.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()) {
        Some(inode) => inode,
        // Opened through a bind mount: the link shows the mount's path.
        None if target.is_absolute() => net_ns_behind(&PathBuf::from(format!("/proc/{pid}/fd/{fd}")), nsfs?)?,
        None => return None,
    };
    let id = match known.contains_key(&inode) {
        true => None,
        false => table.open_target(fd).ok().and_then(|file| Ids::read_open(inode, &file)),
    };
    Some(FdOnNetns { fd, inode, id })
}

fn scan_mounts(pid: u32, out: &mut Scan, ids: &mut Ids) {
    let Ok(mounts) = mountinfo::of_process(pid) else {
        return;
    };
    for mount in mounts {
        if mount.fs_type != "nsfs" {
            continue;
        }
        let Some(inode) = mountinfo::nsfs_net_inode(&mount.root) else {
            continue;
        };
        // Through /proc/PID/root the path resolves in that process's mount namespace.
        let through_root = PathBuf::from(format!("/proc/{pid}/root"))
            .join(mount.mount_point.strip_prefix("/").unwrap_or(&mount.mount_point));
        entry(out, inode).mounts.insert(mount.mount_point.clone());
        ids.learn(inode, through_root, true);
    }
}

/// How long a listing waits for the device sensor to read the link
/// notifications queued (it may be busy giving thousands of namespaces
/// nsids at start); after that, devices are dumped afresh.
const CATCH_UP_AT_MOST: std::time::Duration = std::time::Duration::from_millis(250);

/// Lists every scanned namespace's devices: those `known` keeps, once the
/// device sensor has read what is queued; the rest by nsid, those in
/// `known` first, else from inside ([`super::devices::Lister`]).
/// A path learnt during the scan can be gone by now (its process exited):
/// every other way in that the scan saw is tried before giving up, and a
/// namespace whose devices could not be listed says so in `devices_unlisted`.
pub fn with_devices(scan: &mut Scan, known: &super::devices::KnownNsids) {
    // Devices kept from an earlier listing (and kept current since) cost
    // nothing; the rest one rtnetlink round trip each, mostly spent in the
    // kernel: spread over the cores (each thread with its own socket).
    let current = known.catch_up(CATCH_UP_AT_MOST);
    let mut namespaces: Vec<&mut Observed> = scan
        .namespaces
        .values_mut()
        .filter_map(|observed| match observed.id.filter(|_| current).and_then(|id| known.devices(id)) {
            Some(devices) => {
                observed.devices = devices;
                None
            }
            None => Some(observed),
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    let per_thread = namespaces.len().div_ceil(threads).max(256);
    std::thread::scope(|scope| {
        for part in namespaces.chunks_mut(per_thread) {
            scope.spawn(|| {
                let mut lister = super::devices::Lister::with_known(known.clone());
                for observed in part {
                    list_devices(&mut lister, observed);
                }
            });
        }
    });
}

/// Lists and keeps, for later listings, the devices of every scanned
/// namespace that has a known nsid and none kept yet (see
/// [`super::devices::KnownNsids`]); returns how many.
pub fn keep_devices(scan: &Scan, known: &super::devices::KnownNsids) -> usize {
    let mut lister = super::devices::Lister::with_known(known.clone());
    let mut kept = 0;
    for observed in scan.namespaces.values() {
        let Some(id) = observed.id else { continue };
        if observed.ways_in().iter().any(|path| lister.keep(path, observed.inode, id)) {
            kept += 1;
        }
    }
    kept
}

fn list_devices(lister: &mut super::devices::Lister, observed: &mut Observed) {
    let mut last_error = None;
    for path in observed.ways_in() {
        match lister.list(&path, observed.inode, observed.id) {
            Ok(devices) => {
                observed.devices = devices;
                last_error = None;
                break;
            }
            Err(err) => last_error = Some(format!("{}: {err}", path.display())),
        }
    }
    observed.devices_unlisted = last_error;
}

impl Observed {
    /// Every path to this namespace the scan saw, the one its id was read
    /// through first.
    pub fn ways_in(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.path.iter().cloned().collect();
        paths.extend(self.mounts.iter().cloned());
        paths.extend(self.pids.iter().map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net"))));
        paths.extend(self.fds.iter().map(|(pid, fd)| PathBuf::from(format!("/proc/{pid}/fd/{fd}"))));
        paths
    }
}

/// The short name users know a bind-mounted namespace by: NAME of
/// /run/netns/NAME and the like, else the whole path.
pub fn name_of_mount(path: &Path) -> String {
    for dir in ["/run/netns", "/var/run/netns", "/run/docker/netns", "/var/run/docker/netns"] {
        if let Ok(rest) = path.strip_prefix(dir) {
            return path_text(rest);
        }
    }
    path_text(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_mounts() {
        assert_eq!(name_of_mount(Path::new("/run/netns/blue")), "blue");
        assert_eq!(name_of_mount(Path::new("/var/run/docker/netns/1a2b3c")), "1a2b3c");
        assert_eq!(name_of_mount(Path::new("/srv/ns/x")), "/srv/ns/x");
    }

    #[test]
    fn names_keep_odd_bytes() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(name_of_mount(Path::new("/run/netns/rt sp")), "rt sp");
        assert_eq!(name_of_mount(Path::new(std::ffi::OsStr::from_bytes(b"/run/netns/a\xff\xfe"))), "a\\xff\\xfe");
        assert_eq!(name_of_mount(Path::new(std::ffi::OsStr::from_bytes(b"/run/netns/\xff"))), "\\xff");
    }

    #[test]
    fn finds_its_own_namespace_with_itself_in_it() {
        let scan = scan();
        let own = ns_inode_of(Path::new("/proc/self/ns/net")).unwrap();
        let observed = &scan.namespaces[&own];
        assert!(observed.pids.contains(&std::process::id()));
        assert_eq!(observed.id, crate::sys::nsfs::ns_id(Path::new("/proc/self/ns/net")).ok());
    }

    #[test]
    fn its_own_threads_elsewhere_are_passing_look_ups() {
        let (id, listed) = crate::sys::nsfs::run_in_new(|| {
            let id = crate::sys::nsfs::own_netns_cookie().unwrap();
            (id, scan().namespaces.values().any(|o| o.id == Some(id)))
        })
        .unwrap();
        assert!(id != 0 && !listed, "a thread of its own in namespace {id} does not make it a member");
    }
}
