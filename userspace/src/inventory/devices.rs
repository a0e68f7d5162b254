//! The network devices of a namespace, listed with an rtnetlink dump: by
//! the namespace's nsid where it has one, else made from a short-lived
//! thread that enters the namespace (the agent filters its own threads'
//! entries out of the event stream).

use std::{
    collections::HashMap,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::Path,
    sync::{Arc, Condvar, Mutex, RwLock},
    time::Duration,
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
/// it gives every namespace one; and each such namespace's devices, once
/// listed, kept current from the sensor's link notifications. Shared
/// between that sensor and the inventory's device listings: asking the
/// kernel for a namespace's nsid (RTM_GETNSID by fd) walks every nsid there
/// is, and one rtnetlink dump per namespace per listing costs more, at
/// thousands of namespaces, than the rest of `nstrail ls`.
///
/// A kept list is only as current as the notifications the sensor has
/// read: a listing first has the sensor read everything queued so far
/// ([`catch_up`](KnownNsids::catch_up)), so that a device made just before
/// `nstrail ls` is in it.
#[derive(Debug, Clone, Default)]
pub struct KnownNsids(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    by_id: RwLock<HashMap<u64, Known>>,
    reads: Mutex<Reads>,
    read_done: Condvar,
}

/// Listings waiting for the sensor to read its listener empty.
#[derive(Debug, Default)]
struct Reads {
    /// The sensor's wake-up (an eventfd), while it follows notifications.
    wake: Option<Arc<OwnedFd>>,
    /// Reads asked for, and reads the sensor has finished (it takes every
    /// request made before it starts a read).
    asked: u64,
    done: u64,
}

/// What is known of one namespace with an nsid here.
#[derive(Debug)]
struct Known {
    nsid: i32,
    /// Its devices: a dump's, with every link notification read since
    /// applied. None until a listing kept one.
    devices: Option<Vec<Device>>,
    /// Link notifications read for it: a dump is kept only if none came
    /// while it ran (one that did may or may not be in the dump).
    notified: u64,
}

/// A link notification, as far as a namespace's device list is concerned.
pub enum LinkNotice {
    /// RTM_NEWLINK: the device appeared, or changed (its name).
    Present(Device),
    /// RTM_DELLINK: the device left (removed, or moved away).
    Gone { ifindex: u32 },
}

impl KnownNsids {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Known>> {
        self.0.by_id.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Known>> {
        self.0.by_id.write().unwrap_or_else(|e| e.into_inner())
    }

    fn reads(&self) -> std::sync::MutexGuard<'_, Reads> {
        self.0.reads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device sensor follows link notifications from now on; `wake`
    /// makes it read its listener.
    pub fn follow(&self, wake: Arc<OwnedFd>) {
        self.reads().wake = Some(wake);
    }

    /// The device sensor stopped: nothing kept stays current.
    pub fn unfollow(&self) {
        self.reads().wake = None;
        self.clear();
        self.0.read_done.notify_all();
    }

    /// Has the device sensor read every notification queued now, waiting
    /// at most `timeout`; false if it did not (or follows none), and then
    /// kept lists must not be used.
    pub fn catch_up(&self, timeout: Duration) -> bool {
        let mut reads = self.reads();
        let Some(wake) = reads.wake.clone() else { return false };
        reads.asked += 1;
        let asked = reads.asked;
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a u64 to the sensor's eventfd.
        unsafe { libc::write(wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        let (reads, _) = self
            .0
            .read_done
            .wait_timeout_while(reads, timeout, |r| r.done < asked && r.wake.is_some())
            .unwrap_or_else(|e| e.into_inner());
        reads.done >= asked
    }

    /// The device sensor is about to read its listener empty: the requests
    /// made so far (pass them to [`read_done`](Self::read_done) after).
    pub fn reading(&self) -> u64 {
        self.reads().asked
    }

    /// The device sensor read its listener empty, having started after
    /// request `asked`.
    pub fn read_done(&self, asked: u64) {
        let mut reads = self.reads();
        if asked > reads.done {
            reads.done = asked;
            self.0.read_done.notify_all();
        }
    }

    pub fn get(&self, id: u64) -> Option<i32> {
        self.read().get(&id).map(|k| k.nsid)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.get(id).is_some()
    }

    /// Namespace `id` has `nsid` here; a different nsid than before drops its devices.
    pub fn insert(&self, id: u64, nsid: i32) {
        let mut known = self.write();
        let entry = known.entry(id).or_insert(Known { nsid, devices: None, notified: 0 });
        if entry.nsid != nsid {
            *entry = Known { nsid, devices: None, notified: entry.notified + 1 };
        }
    }

    pub fn remove(&self, id: u64) {
        self.write().remove(&id);
    }

    pub fn clear(&self) {
        self.write().clear();
    }

    /// The kept devices of namespace `id`, if a listing kept them. The
    /// scan that found the namespace checked its id a moment ago, and they
    /// go with its nsid when the kernel drops that (the namespace is gone).
    pub fn devices(&self, id: u64) -> Option<Vec<Device>> {
        self.read().get(&id)?.devices.clone()
    }

    /// How many link notifications of namespace `id` were read so far
    /// (for [`keep_devices`](Self::keep_devices)).
    fn notified(&self, id: u64) -> Option<u64> {
        self.read().get(&id).map(|k| k.notified)
    }

    /// Keeps a dump of namespace `id`'s devices, made by its nsid after
    /// [`notified`](Self::notified) said `notified_before`, unless a link
    /// notification of it was read since.
    fn keep_devices(&self, id: u64, nsid: i32, notified_before: u64, devices: &[Device]) {
        if let Some(known) = self.write().get_mut(&id) {
            if known.nsid == nsid && known.notified == notified_before {
                known.devices = Some(devices.to_vec());
            }
        }
    }

    /// The device sensor read a link notification of namespace `id`.
    /// Notifications are read in the kernel's order, so applying each to
    /// the kept list (a dump's, which may already show some of them) ends
    /// where the kernel is.
    /// A notice of None (a notification that could not be read) drops the list.
    pub fn link_notified(&self, id: u64, notice: Option<LinkNotice>) {
        let mut known = self.write();
        let Some(known) = known.get_mut(&id) else { return };
        known.notified += 1;
        let Some(notice) = notice else {
            known.devices = None;
            return;
        };
        let Some(devices) = known.devices.as_mut() else { return };
        match notice {
            LinkNotice::Present(device) => match devices.iter_mut().find(|d| d.ifindex == device.ifindex) {
                Some(kept) => *kept = device,
                None => {
                    let at = devices.partition_point(|d| d.ifindex < device.ifindex);
                    devices.insert(at, device);
                }
            },
            LinkNotice::Gone { ifindex } => devices.retain(|d| d.ifindex != ifindex),
        }
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
        if let Some(id) = id {
            if let Some(devices) = self.dump_and_keep(&ns, id) {
                return Ok(devices);
            }
        }
        self.by_nsid(&ns).unwrap_or_else(|| from_inside(&ns))
    }

    /// Lists and keeps the devices of namespace `id` (behind `ns_path`,
    /// which must still be namespace `inode`) if it has a known nsid and
    /// none are kept yet; nothing else (no entering). True if kept now.
    pub fn keep(&mut self, ns_path: &Path, inode: u32, id: u64) -> bool {
        if !self.known.contains(id) || self.known.devices(id).is_some() {
            return false;
        }
        let Ok(ns) = std::fs::File::open(ns_path) else { return false };
        if ns.metadata().map(|m| m.ino() as u32).ok() != Some(inode) {
            return false;
        }
        self.dump_and_keep(&ns, id).is_some()
    }

    /// Devices of namespace `id` (open as `ns`) dumped by its known nsid,
    /// and kept for later listings; None without a known nsid or when the
    /// dump fails.
    fn dump_and_keep(&mut self, ns: &std::fs::File, id: u64) -> Option<Vec<Device>> {
        let nsid = self.known_nsid(ns, id)?;
        let notified_before = self.known.notified(id)?;
        let devices = self.dump_in(nsid)?.ok()?;
        self.known.keep_devices(id, nsid, notified_before, &devices);
        Some(devices)
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

    fn device(ifindex: u32, name: &str) -> Device {
        Device { name: name.into(), ifindex, kind: Some("veth".into()) }
    }

    #[test]
    fn kept_devices_follow_notifications_and_a_dump_raced_by_one_is_not_kept() {
        let known = KnownNsids::default();
        known.insert(7, 3);
        let before = known.notified(7).unwrap();
        known.link_notified(7, Some(LinkNotice::Present(device(5, "a"))));
        known.keep_devices(7, 3, before, &[device(1, "lo")]);
        assert_eq!(known.devices(7), None, "a notification came while the dump ran");

        let before = known.notified(7).unwrap();
        known.keep_devices(7, 3, before, &[device(1, "lo"), device(5, "a")]);
        known.link_notified(7, Some(LinkNotice::Present(device(3, "b"))));
        known.link_notified(7, Some(LinkNotice::Present(device(5, "a-renamed"))));
        known.link_notified(7, Some(LinkNotice::Gone { ifindex: 1 }));
        assert_eq!(known.devices(7), Some(vec![device(3, "b"), device(5, "a-renamed")]));
        known.link_notified(7, None);
        assert_eq!(known.devices(7), None, "an unreadable notification drops the list");

        let before = known.notified(7).unwrap();
        known.insert(7, 4);
        known.keep_devices(7, 3, before, &[device(1, "lo")]);
        assert_eq!(known.devices(7), None, "a dump by an nsid no longer its own");
        known.keep_devices(7, 4, known.notified(7).unwrap(), &[device(1, "lo")]);
        known.remove(7);
        assert_eq!(known.devices(7), None, "gone with its nsid");
        assert!(!known.catch_up(Duration::from_millis(1)), "nothing follows notifications");
    }

    #[test]
    fn lists_the_devices_of_our_own_namespace() {
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let devices = list(Path::new("/proc/self/ns/net"), ours).unwrap();
        assert!(list(Path::new("/proc/self/ns/net"), ours.wrapping_add(1)).is_err(), "another namespace's inode");
        assert!(devices.iter().any(|d| d.name == "lo" && d.ifindex == 1));
    }
}
