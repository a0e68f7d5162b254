//! What /proc says about network namespaces right now: who is in each, who
//! holds one by an open fd, and where one is bind-mounted.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use procfs::process::{FDTarget, Process};

use super::containers::{self, Container};


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

/// `net:[4026532177]` mount roots of nsfs mounts.
fn nsfs_net_inode(root: &str) -> Option<u32> {
    root.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
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
    crate::nsfs::is_net_namespace(&file).then_some(meta.ino() as u32)
}

pub fn scan() -> Scan {
    let mut out = Scan::default();
    let nsfs = nsfs_dev();
    let mut seen_mount_ns = HashSet::new();
    // A path per namespace to ask its id through, found while scanning.
    let mut id_paths: BTreeMap<u32, PathBuf> = BTreeMap::new();
    let Ok(processes) = procfs::process::all_processes() else {
        return out;
    };
    for process in processes.flatten() {
        let pid = process.pid() as u32;
        scan_tasks(&process, pid, &mut out, &mut id_paths);
        scan_fds(&process, pid, nsfs, &mut out, &mut id_paths);
        // One mount table per mount namespace is enough.
        let mnt_ns = ns_inode_of(&PathBuf::from(format!("/proc/{pid}/ns/mnt")));
        if mnt_ns.is_some_and(|m| seen_mount_ns.insert(m)) {
            scan_mounts(&process, pid, &mut out, &mut id_paths);
        }
    }
    for (inode, path) in id_paths {
        if let Some(observed) = out.namespaces.get_mut(&inode) {
            observed.id = crate::nsfs::ns_id(&path).ok();
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

fn scan_tasks(process: &Process, pid: u32, out: &mut Scan, id_paths: &mut BTreeMap<u32, PathBuf>) {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok().and_then(|t| containers::cgroup_path(&t));
    let container = cgroup.and_then(|p| containers::from_cgroup_path(&p, &runc_container));
    let Ok(tasks) = process.tasks() else {
        return;
    };
    let mut inodes = BTreeSet::new();
    for task in tasks.flatten() {
        let path = PathBuf::from(format!("/proc/{pid}/task/{}/ns/net", task.tid));
        if let Some(inode) = ns_inode_of(&path) {
            if inodes.insert(inode) {
                id_paths.entry(inode).or_insert(path);
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

fn scan_fds(process: &Process, pid: u32, nsfs: Option<u64>, out: &mut Scan, id_paths: &mut BTreeMap<u32, PathBuf>) {
    let Ok(fds) = process.fd() else {
        return;
    };
    for fd in fds.flatten() {
        let fd_path = PathBuf::from(format!("/proc/{pid}/fd/{}", fd.fd));
        let inode = match &fd.target {
            FDTarget::Net(inode) => Some(*inode as u32),
            // Opened through a bind mount: the link shows the mount's path.
            FDTarget::Path(_) => nsfs.and_then(|dev| net_ns_behind(&fd_path, dev)),
            _ => None,
        };
        if let Some(inode) = inode {
            entry(out, inode).fds.push((pid, fd.fd as u32));
            id_paths.entry(inode).or_insert(fd_path);
        }
    }
}

fn scan_mounts(process: &Process, pid: u32, out: &mut Scan, id_paths: &mut BTreeMap<u32, PathBuf>) {
    let Ok(mounts) = process.mountinfo() else {
        return;
    };
    for mount in mounts {
        if mount.fs_type != "nsfs" {
            continue;
        }
        let Some(inode) = nsfs_net_inode(&mount.root) else {
            continue;
        };
        // Through /proc/PID/root the path resolves in that process's mount namespace.
        let through_root = PathBuf::from(format!("/proc/{pid}/root")).join(mount.mount_point.strip_prefix("/").unwrap_or(&mount.mount_point));
        entry(out, inode).mounts.insert(mount.mount_point.clone());
        id_paths.entry(inode).or_insert(through_root);
    }
}

/// Lists every scanned namespace's devices (a thread enters each briefly).
pub fn with_devices(scan: &mut Scan) {
    for observed in scan.namespaces.values_mut() {
        if let Some(path) = &observed.path {
            observed.devices = super::devices::list(path).unwrap_or_default();
        }
    }
}

/// The short name users know a bind-mounted namespace by: NAME of
/// /run/netns/NAME and the like, else the whole path.
pub fn name_of_mount(path: &Path) -> String {
    for dir in ["/run/netns", "/var/run/netns", "/run/docker/netns", "/var/run/docker/netns"] {
        if let Ok(rest) = path.strip_prefix(dir) {
            return rest.to_string_lossy().into_owned();
        }
    }
    path.to_string_lossy().into_owned()
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
    fn nsfs_roots() {
        assert_eq!(nsfs_net_inode("net:[4026532177]"), Some(4026532177));
        assert_eq!(nsfs_net_inode("mnt:[4026531841]"), None);
    }

    #[test]
    fn finds_its_own_namespace_with_itself_in_it() {
        let scan = scan();
        let own = ns_inode_of(Path::new("/proc/self/ns/net")).unwrap();
        let observed = &scan.namespaces[&own];
        assert!(observed.pids.contains(&std::process::id()));
        assert_eq!(observed.id, crate::nsfs::ns_id(Path::new("/proc/self/ns/net")).ok());
    }
}
