use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

/// Inode and unique id of a namespace, read the way users would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetnsIdentity {
    pub inode: u32,
    pub id: u64,
}

impl NetnsIdentity {
    /// Of an nsfs path: /proc/PID/ns/net, /proc/PID/task/TID/ns/net, /run/netns/NAME.
    pub fn of_path(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let inode = file.metadata().expect("stat nsfs file").ino() as u32;
        let id = nstrail::sys::nsfs::ns_id(path).unwrap_or_else(|e| panic!("netns id of {}: {e}", path.display()));
        Self { inode, id }
    }

    pub fn of_pid(pid: u32) -> Self {
        Self::of_path(format!("/proc/{pid}/ns/net"))
    }

    pub fn of_self() -> Self {
        Self::of_path("/proc/thread-self/ns/net")
    }

    /// The inode as `readlink /proc/PID/ns/net` prints it: `net:[INODE]`.
    pub fn readlink_inode(pid: u32) -> u32 {
        let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("readlink ns/net");
        let text = link.to_string_lossy();
        text.trim_start_matches("net:[").trim_end_matches(']').parse().expect("net:[inode]")
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A namespace made with `ip netns add`, deleted on drop (also when a test fails).
pub struct NamedNetns {
    pub name: String,
    deleted: bool,
}

impl NamedNetns {
    /// A unique name for this test process; the namespace is not made yet.
    pub fn unique_name(tag: &str) -> String {
        format!("nstrail-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// Runs `ip netns add NAME` and returns the guard and the `ip` process.
    pub fn add(tag: &str) -> (Self, crate::Ran) {
        let name = Self::unique_name(tag);
        let guard = Self { name: name.clone(), deleted: false };
        let ran = crate::run_ok("ip", &["netns", "add", &name]);
        (guard, ran)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    pub fn identity(&self) -> NetnsIdentity {
        NetnsIdentity::of_path(self.path())
    }

    /// `ip netns del NAME` now; returns the `ip` process.
    pub fn delete(&mut self) -> crate::Ran {
        self.deleted = true;
        crate::run_ok("ip", &["netns", "del", &self.name])
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).status();
        }
    }
}

/// A veth pair made in the host namespace. On drop both ends are deleted
/// wherever they still are in the host (deleting one end deletes the pair;
/// ends moved into a test namespace go with that namespace).
pub struct HostVeth {
    pub name: String,
    pub peer: String,
}

impl HostVeth {
    /// Device names are at most 15 bytes: `nt` + pid + counter + end.
    pub fn unique_names() -> (String, String) {
        let stem = format!("nt{}x{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed));
        (format!("{stem}a"), format!("{stem}b"))
    }

    /// `ip link add NAME type veth peer name PEER`, both in the host.
    pub fn add() -> Self {
        let (name, peer) = Self::unique_names();
        let guard = Self { name: name.clone(), peer: peer.clone() };
        crate::run_ok("ip", &["link", "add", &name, "type", "veth", "peer", "name", &peer]);
        guard
    }
}

impl Drop for HostVeth {
    fn drop(&mut self) {
        for end in [&self.name, &self.peer] {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", end])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The ifindex of `device` in the host (`netns` None) or in a named namespace.
pub fn ifindex(netns: Option<&str>, device: &str) -> u32 {
    let mut args = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-o", "link", "show", "dev", device]);
    let ran = crate::run_ok("ip", &args);
    ran.stdout
        .split(':')
        .next()
        .and_then(|i| i.trim().parse().ok())
        .unwrap_or_else(|| panic!("ifindex of {device}: {:?}", ran.stdout))
}
