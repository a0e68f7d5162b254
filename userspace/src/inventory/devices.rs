//! The network devices of a namespace, listed with an rtnetlink dump: by
//! the namespace's nsid where it has one, else made from a short-lived
//! thread that enters the namespace (the agent filters its own threads'
//! entries out of the event stream).

use std::{
    collections::HashMap,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
    sync::{Arc, RwLock},
};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub name: String,
    pub ifindex: u32,
    /// Link kind (`veth`, `bridge`, ...); absent for devices without one (`lo`, physical NICs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

use crate::sys::rtnetlink::{self, Link, NLMSG_DONE, NLMSG_ERROR, RTM_NEWLINK};

/// The nsids the agent's namespace has for other namespaces, by namespace
/// id (netns cookie, never reused), as the device sensor keeps them where
/// it gives every namespace one. Shared between that sensor and the
/// inventory's device listings: asking the kernel for a namespace's nsid
/// (RTM_GETNSID by fd) walks every nsid there is, which at thousands of
/// namespaces costs more than the listings themselves.
#[derive(Debug, Clone, Default)]
pub struct KnownNsids(Arc<RwLock<HashMap<u64, i32>>>);

impl KnownNsids {
    pub fn get(&self, id: u64) -> Option<i32> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(&id).copied()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.get(id).is_some()
    }

    pub fn insert(&self, id: u64, nsid: i32) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(id, nsid);
    }

    pub fn remove(&self, id: u64) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    pub fn clear(&self) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Lists the devices of namespaces. Where the caller's namespace has an
/// nsid for one (the agent gives every namespace one where its device
/// sensor runs on the rtnetlink backend), a single
/// rtnetlink socket asks for its devices by that nsid; otherwise a
/// short-lived thread enters it and asks from inside.
pub struct Lister {
    /// None where no rtnetlink socket could be opened (every listing enters).
    requests: Option<rtnetlink::Requests>,
    known: KnownNsids,
}

impl Default for Lister {
    fn default() -> Self {
        Self::new()
    }
}

impl Lister {
    pub fn new() -> Self {
        Self::with_known(KnownNsids::default())
    }

    /// One that takes the nsids in `known` without asking the kernel.
    pub fn with_known(known: KnownNsids) -> Self {
        Self { requests: rtnetlink::Requests::open().ok(), known }
    }

    /// Devices of the namespace behind an nsfs path, which must still be
    /// namespace `inode` (the process or mount a path went through may be
    /// gone, and inodes are reused) and, where `id` is given, `id`. The
    /// open file keeps the namespace, and so its nsid, while it is listed.
    pub fn list(&mut self, ns_path: &Path, inode: u32, id: Option<u64>) -> std::io::Result<Vec<Device>> {
        let ns = std::fs::File::open(ns_path)?;
        let found = ns.metadata()?.ino() as u32;
        if found != inode {
            return Err(std::io::Error::other(format!("{} is namespace {found} now, not {inode}", ns_path.display())));
        }
        if let Some(Ok(devices)) = id.and_then(|id| self.known_nsid(&ns, id)).and_then(|nsid| self.dump_in(nsid)) {
            return Ok(devices);
        }
        self.by_nsid(&ns).unwrap_or_else(|| from_inside(&ns))
    }

    /// The nsid `known` has for namespace `id`, where `ns` is that
    /// namespace: checked by its id where one ioctl tells it (Linux 6.18+;
    /// before, the inode check of the caller stands, as entering the
    /// namespace to ask would cost more than the nsid saves).
    fn known_nsid(&self, ns: &std::fs::File, id: u64) -> Option<i32> {
        let nsid = self.known.get(id)?;
        match crate::sys::nsfs::ns_id_by_ioctl(ns) {
            Some(found) if found != id => None,
            _ => Some(nsid),
        }
    }

    /// Devices of the namespace behind `ns` asked for by its nsid; None
    /// when it has none here.
    pub fn by_nsid(&mut self, ns: &std::fs::File) -> Option<std::io::Result<Vec<Device>>> {
        let nsid = self.requests.as_mut()?.nsid_of_fd(ns.as_raw_fd()).ok()??;
        self.dump_in(nsid)
    }

    /// Devices of the namespace with `nsid` here; None without a socket.
    fn dump_in(&mut self, nsid: i32) -> Option<std::io::Result<Vec<Device>>> {
        let mut devices = Vec::new();
        Some(self.requests.as_mut()?.dump_links_in(nsid, |data| parse_messages(data, &mut devices)).map(|()| devices))
    }
}

/// Devices of the namespace behind an nsfs path (see [`Lister::list`]).
pub fn list(ns_path: &Path, inode: u32) -> std::io::Result<Vec<Device>> {
    Lister::new().list(ns_path, inode, None)
}

/// Devices of the namespace behind `ns`, asked for from a thread inside it.
pub fn from_inside(ns: &std::fs::File) -> std::io::Result<Vec<Device>> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: only this short-lived thread changes namespace.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                dump_links()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("device listing thread panicked")))
    })
}

fn dump_links() -> std::io::Result<Vec<Device>> {
    let mut devices = Vec::new();
    // The socket is made by this thread, so in the namespace it entered.
    rtnetlink::Requests::open()?.dump_links(|data| parse_messages(data, &mut devices))?;
    Ok(devices)
}

/// Parses one recv() worth of messages; true at the end of the dump.
pub fn parse_messages(data: &[u8], devices: &mut Vec<Device>) -> std::io::Result<bool> {
    for message in rtnetlink::messages(data) {
        let message = message?;
        match message.kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => return Err(std::io::Error::from_raw_os_error(rtnetlink::error_of(&message))),
            RTM_NEWLINK => {
                if let Some(link) = Link::parse(message.payload) {
                    devices.push(Device { name: link.name, ifindex: link.ifindex as u32, kind: link.kind });
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::sys::rtnetlink::tests::link_message;

    fn link(ifindex: u32, name: &str, kind: Option<&str>) -> Vec<u8> {
        link_message(RTM_NEWLINK, ifindex as i32, 0, name, &[], kind)
    }

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn parses_a_link_dump() {
        let mut data = link(1, "lo", None);
        data.extend(link(7, "veth-a", Some("veth")));
        let mut devices = Vec::new();
        assert!(!parse_messages(&data, &mut devices).unwrap());
        assert!(parse_messages(&message(NLMSG_DONE, &[0; 4]), &mut devices).unwrap());
        assert_eq!(
            devices,
            [
                Device { name: "lo".into(), ifindex: 1, kind: None },
                Device { name: "veth-a".into(), ifindex: 7, kind: Some("veth".into()) },
            ]
        );
    }

    #[test]
    fn reports_netlink_errors_and_truncation() {
        let mut devices = Vec::new();
        let err = parse_messages(&message(NLMSG_ERROR, &(-1i32 as u32).to_ne_bytes()), &mut devices).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(1));
        let mut short = link(1, "lo", None);
        short.truncate(20);
        assert!(parse_messages(&short, &mut devices).is_err());
    }

    #[test]
    fn lists_the_devices_of_our_own_namespace() {
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let devices = list(Path::new("/proc/self/ns/net"), ours).unwrap();
        assert!(list(Path::new("/proc/self/ns/net"), ours.wrapping_add(1)).is_err(), "another namespace's inode");
        assert!(devices.iter().any(|d| d.name == "lo" && d.ifindex == 1));
    }
}
