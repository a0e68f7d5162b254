//! Turns rtnetlink link notifications of every namespace, and the kernel
//! side's record of who caused each, into `device_move` and `veth_create`
//! events.
//!
//! - A move is an RTM_DELLINK in the source carrying IFLA_NEW_NETNSID and
//!   IFLA_NEW_IFINDEX, followed (same task, under the same rtnl lock) by an
//!   RTM_NEWLINK with every change bit set in the destination. A failed
//!   move sends neither.
//! - A veth pair across namespaces is an RTM_NEWLINK (all change bits) of a
//!   `veth` with IFLA_LINK_NETNSID: the peer lives elsewhere. The peer's own
//!   RTM_NEWLINK comes just before it.
//! - Devices the kernel returns to the host while destroying a namespace
//!   arrive as an RTM_NEWLINK from the kernel worker running `cleanup_net`;
//!   the dying namespace's nsid is already gone, so no RTM_DELLINK comes.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use nstrail_abi::device::LinkNotifyEvent;

use crate::{
    correlate,
    event::{Actor, EventBody, MovedDevice, Netns, VethEnd},
    nsid::NsidMap,
    rtnetlink::{self, Link, IFI_CHANGE_ALL, RTM_DELLINK, RTM_DELNSID, RTM_NEWLINK, RTM_NEWNSID},
};

/// How long a move's RTM_DELLINK waits for its RTM_NEWLINK, which only
/// comes when the destination has an nsid.
const MOVE_WAIT: Duration = Duration::from_millis(200);
/// Actor records without a message after this long belong to notifications
/// the socket dropped.
const ACTOR_KEEP: Duration = Duration::from_secs(5);
/// Longest the agent spends asking namespaces for a move's lost destination.
const FIND_DESTINATION_BUDGET: Duration = Duration::from_millis(50);
/// Recent device appearances kept to find a veth's peer.
const RECENT_KEEP: usize = 256;

/// An event ready to be numbered, at the kernel time it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEvent {
    pub boot_ns: u64,
    pub body: EventBody,
}

/// One link notification as read, with its actor when recorded.
#[derive(Debug, Clone)]
struct Notice {
    nsid: Option<i32>,
    link: Link,
    actor: Option<LinkNotifyEvent>,
    boot_ns: u64,
}

impl Notice {
    fn pid(&self) -> Option<u32> {
        self.actor.map(|a| a.actor.pid)
    }

    fn actor(&self) -> Option<Actor> {
        self.actor.as_ref().map(|a| correlate::actor(&a.actor))
    }
}

/// A move's first half: the device left `from`.
struct MoveOut {
    notice: Notice,
    from: Option<Netns>,
    deadline: Instant,
}

pub struct DeviceMoves {
    nsids: NsidMap,
    actors: VecDeque<(Instant, LinkNotifyEvent)>,
    moving: VecDeque<MoveOut>,
    recent: VecDeque<Notice>,
    /// Namespaces reported destroyed, with the kernel worker's tid, for
    /// devices returned to the host by that worker.
    destroyed: VecDeque<(u32, u64, Netns)>,
    /// Actor records whose notifications never arrived (socket overruns).
    unmatched: u64,
}

/// CLOCK_BOOTTIME now, the clock of the kernel side's records.
pub fn now_boot_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into our timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl DeviceMoves {
    pub fn new(nsids: NsidMap) -> Self {
        Self {
            nsids,
            actors: VecDeque::new(),
            moving: VecDeque::new(),
            recent: VecDeque::new(),
            destroyed: VecDeque::new(),
            unmatched: 0,
        }
    }

    pub fn nsids(&mut self) -> &mut NsidMap {
        &mut self.nsids
    }

    /// A kernel record of who caused a notification about to be read.
    pub fn actor_seen(&mut self, record: LinkNotifyEvent) {
        self.actors.push_back((Instant::now(), record));
    }

    /// A namespace was reported destroyed by `actor_tid` (a kernel worker).
    pub fn netns_destroyed(&mut self, actor_tid: u32, netns: &Netns) {
        self.nsids.netns_destroyed(netns.id);
        self.destroyed.push_back((actor_tid, now_boot_ns(), netns.clone()));
        while self.destroyed.len() > RECENT_KEEP {
            self.destroyed.pop_front();
        }
    }

    /// The listener's socket reported an overflow at `at_boot_ns` and has
    /// been read empty since: actor records the kernel made before then
    /// that found no message belong to dropped notifications, and the nsid
    /// map may have missed changes.
    pub fn overrun(&mut self, at_boot_ns: u64) {
        let before = self.actors.len();
        self.actors.retain(|(_, a)| a.header.boot_ns > at_boot_ns);
        self.unmatched += (before - self.actors.len()) as u64;
        self.nsids.resync();
    }

    /// Notifications dropped since the last call (their actors never
    /// found a message).
    pub fn take_unmatched(&mut self) -> u64 {
        std::mem::take(&mut self.unmatched)
    }

    /// When [`expire`](Self::expire) has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.moving.front().map(|m| m.deadline)
    }

    /// Takes the actor record of one message: same type, device, name and length.
    fn take_actor(&mut self, kind: u16, len: u32, link: &Link) -> Option<LinkNotifyEvent> {
        let same_name = |a: &LinkNotifyEvent| {
            let end = a.ifname.iter().position(|b| *b == 0).unwrap_or(a.ifname.len());
            end == 0 || a.ifname[..end] == *link.name.as_bytes()
        };
        let at = self.actors.iter().position(|(_, a)| {
            a.nlmsg_type == kind && a.nlmsg_len == len && a.ifindex == link.ifindex && same_name(a)
        })?;
        self.actors.remove(at).map(|(_, a)| a)
    }

    /// Handles one datagram of the listener.
    pub fn datagram(&mut self, nsid: Option<i32>, data: &[u8], out: &mut Vec<DeviceEvent>) -> std::io::Result<()> {
        let nsid = self.nsids.normalize(nsid);
        for message in rtnetlink::messages(data) {
            let message = message?;
            match message.kind {
                RTM_DELNSID if nsid.is_none() => {
                    if let Some(gone) = rtnetlink::nsid_of(message.payload) {
                        self.finish_moves_from(gone, out);
                        self.recent.retain(|r| r.nsid != Some(gone));
                        self.nsids.nsid_deleted(gone);
                    }
                }
                RTM_NEWNSID if nsid.is_none() => {
                    if let Some(new) = rtnetlink::nsid_of(message.payload) {
                        self.nsids.nsid_created(new);
                    }
                }
                RTM_NEWLINK | RTM_DELLINK => {
                    let Some(link) = Link::parse(message.payload) else { continue };
                    let actor = self.take_actor(message.kind, message.len, &link);
                    let boot_ns = actor.map(|a| a.header.boot_ns).unwrap_or_else(now_boot_ns);
                    let notice = Notice { nsid, link, actor, boot_ns };
                    if message.kind == RTM_DELLINK {
                        self.removed(notice);
                    } else {
                        self.appeared(notice, out);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The listener has been read empty: actor records this old found no
    /// message, so theirs were dropped. (Only then: a backlog in the socket
    /// may hold messages whose records were taken from the ring long ago.)
    pub fn drained(&mut self) {
        if self.actors.front().is_some_and(|(seen, _)| seen.elapsed() > ACTOR_KEEP) {
            let before = self.actors.len();
            self.actors.retain(|(seen, _)| seen.elapsed() <= ACTOR_KEEP);
            self.unmatched += (before - self.actors.len()) as u64;
        }
    }

    fn removed(&mut self, notice: Notice) {
        self.recent.retain(|r| !(r.nsid == notice.nsid && r.link.ifindex == notice.link.ifindex));
        if notice.link.new_netnsid.is_none() {
            return; // deleted, not moved
        }
        let from = self.nsids.resolve(notice.nsid, notice.pid());
        self.moving.push_back(MoveOut { notice, from, deadline: Instant::now() + MOVE_WAIT });
    }

    fn appeared(&mut self, notice: Notice, out: &mut Vec<DeviceEvent>) {
        if notice.link.change != IFI_CHANGE_ALL {
            return; // a state change of a device already there
        }
        let arrived = self.moving.iter().position(|m| {
            m.notice.link.new_ifindex == Some(notice.link.ifindex)
                && m.notice.nsid != notice.nsid
                // From the agent's namespace, IFLA_NEW_NETNSID is one of its own nsids.
                && (m.notice.nsid.is_some() || m.notice.link.new_netnsid == notice.nsid)
                && (m.notice.pid().is_none() || notice.pid().is_none() || m.notice.pid() == notice.pid())
        });
        if let Some(at) = arrived {
            let departed = self.moving.remove(at).expect("position is in range");
            let to = self.nsids.resolve(notice.nsid, notice.pid());
            let actor = departed.notice.actor().or_else(|| notice.actor());
            out.push(move_event(departed.notice, departed.from, (&notice.link.name, notice.link.ifindex), to, actor));
        } else if notice.link.kind.as_deref() == Some("veth") && notice.link.link_netnsid.is_some() {
            let event = self.veth_created(&notice);
            out.push(event);
        } else if let Some(event) = self.returned_by_cleanup(&notice) {
            out.push(event);
        }
        self.recent.push_back(notice);
        while self.recent.len() > RECENT_KEEP {
            self.recent.pop_front();
        }
    }

    /// The second end of a veth pair appeared; its peer came just before
    /// (when its namespace has an nsid) or is asked for.
    fn veth_created(&mut self, notice: &Notice) -> DeviceEvent {
        let link = &notice.link;
        let peer_ifindex = link.link.unwrap_or(0);
        let peer_notice = self.recent.iter().rev().find(|r| {
            r.link.ifindex == peer_ifindex
                && r.nsid != notice.nsid
                && (notice.nsid.is_some() || r.nsid == link.link_netnsid)
                && r.link.kind.as_deref() == Some("veth")
                && (r.pid().is_none() || notice.pid().is_none() || r.pid() == notice.pid())
        });
        let peer = match (peer_notice, notice.nsid, link.link_netnsid) {
            (Some(p), _, _) => {
                let (nsid, pid, name) = (p.nsid, p.pid(), p.link.name.clone());
                VethEnd { name, ifindex: peer_ifindex as u32, netns: self.nsids.resolve(nsid, pid) }
            }
            // Seen from the agent's namespace, IFLA_LINK_NETNSID is one of its nsids.
            (None, None, Some(peer_nsid)) => {
                let name = self.nsids.requests().link_in(peer_nsid, peer_ifindex).ok().flatten().map(|l| l.name);
                VethEnd {
                    name: name.unwrap_or_default(),
                    ifindex: peer_ifindex as u32,
                    netns: self.nsids.resolve(Some(peer_nsid), notice.pid()),
                }
            }
            // An nsid of another namespace, for a peer not heard of.
            _ => VethEnd { name: String::new(), ifindex: peer_ifindex as u32, netns: None },
        };
        let device =
            VethEnd { name: link.name.clone(), ifindex: link.ifindex as u32, netns: self.nsids.resolve(notice.nsid, notice.pid()) };
        DeviceEvent { boot_ns: notice.boot_ns, body: EventBody::VethCreate { device, peer, actor: notice.actor() } }
    }

    /// A device the kernel worker brought back from a namespace it is
    /// destroying (physical NICs and devices without rtnl ops).
    fn returned_by_cleanup(&mut self, notice: &Notice) -> Option<DeviceEvent> {
        let actor = notice.actor?;
        if actor.in_netns_cleanup == 0 || notice.nsid.is_some() {
            return None;
        }
        // Namespaces this worker reported destroyed in this cleanup run:
        // when only one, the device came from it.
        let dying: Vec<&Netns> = self
            .destroyed
            .iter()
            .filter(|(tid, at, _)| *tid == actor.actor.tid && notice.boot_ns.saturating_sub(*at) < 10_000_000_000)
            .map(|(_, _, n)| n)
            .collect();
        if dying.is_empty() {
            return None; // not the worker running cleanup_net: a new device
        }
        let from = (dying.len() == 1).then(|| dying[0].clone());
        let link = &notice.link;
        Some(DeviceEvent {
            boot_ns: notice.boot_ns,
            body: EventBody::DeviceMove {
                device: MovedDevice {
                    name: link.name.clone(),
                    kind: link.kind.clone(),
                    ifindex_before: 0,
                    ifindex_after: link.ifindex as u32,
                    name_after: link.name.clone(),
                },
                from_netns: from,
                to_netns: self.nsids.get(None),
                actor: notice.actor(),
            },
        })
    }

    /// Moves whose destination never sent its RTM_NEWLINK in time (it had
    /// no nsid): the destination is looked for among known namespaces by
    /// the device's new ifindex and name.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<DeviceEvent>) {
        while self.moving.front().is_some_and(|m| m.deadline <= now) {
            let departed = self.moving.pop_front().expect("front exists");
            let to = self.find_destination(&departed.notice);
            // The name in the destination is not known: a rename would
            // have come with the RTM_NEWLINK that never did.
            let name = departed.notice.link.name.clone();
            let ifindex = departed.notice.link.new_ifindex.unwrap_or(0);
            let actor = departed.notice.actor();
            out.push(move_event(departed.notice, departed.from, (&name, ifindex), to, actor));
        }
    }

    /// An nsid is being deleted: moves from it waiting for their second
    /// half are reported now, before the nsid can name another namespace.
    fn finish_moves_from(&mut self, nsid: i32, out: &mut Vec<DeviceEvent>) {
        if self.moving.iter().any(|m| m.notice.nsid == Some(nsid)) {
            for m in self.moving.iter_mut().filter(|m| m.notice.nsid == Some(nsid)) {
                m.deadline = Instant::now();
            }
            self.moving.make_contiguous().sort_by_key(|m| m.deadline);
            self.expire(Instant::now(), out);
        }
    }

    fn find_destination(&mut self, notice: &Notice) -> Option<Netns> {
        let ifindex = notice.link.new_ifindex?;
        // The destination may have been given an nsid meanwhile.
        if let Some(pid) = notice.pid() {
            self.nsids.learn_from_process(pid);
        }
        self.nsids.rescan_if_due();
        let candidates: Vec<(i32, Netns)> =
            self.nsids.known().filter(|(nsid, _)| Some(*nsid) != notice.nsid).map(|(k, v)| (k, v.clone())).collect();
        let mut found = None;
        let budget = Instant::now() + FIND_DESTINATION_BUDGET;
        for (nsid, netns) in candidates {
            if Instant::now() > budget {
                log::debug!("gave up looking for the destination of {} after {FIND_DESTINATION_BUDGET:?}", notice.link.name);
                return None;
            }
            let Ok(Some(link)) = self.nsids.requests().link_in(nsid, ifindex) else { continue };
            if link.name == notice.link.name && link.kind == notice.link.kind {
                if found.is_some() {
                    return None; // ambiguous
                }
                found = Some(netns);
            }
        }
        found
    }
}

fn move_event(departed: Notice, from: Option<Netns>, after: (&str, i32), to: Option<Netns>, actor: Option<Actor>) -> DeviceEvent {
    DeviceEvent {
        boot_ns: departed.boot_ns,
        body: EventBody::DeviceMove {
            device: MovedDevice {
                ifindex_before: departed.link.ifindex as u32,
                ifindex_after: after.1 as u32,
                name_after: after.0.to_owned(),
                name: departed.link.name,
                kind: departed.link.kind,
            },
            from_netns: from,
            to_netns: to,
            actor,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtnetlink::{tests::link_message, IFLA_LINK, IFLA_LINK_NETNSID, IFLA_NEW_IFINDEX, IFLA_NEW_NETNSID};
    use nstrail_abi::{event_kind, EventHeader};

    const HOST: u64 = 3;

    fn moves() -> DeviceMoves {
        let mut nsids = NsidMap::new(Netns::new(4026531833, HOST)).expect("rtnetlink socket");
        // Numbers no real namespace of this test machine uses.
        nsids.insert(9001, Netns::new(4026532001, 101));
        nsids.insert(9002, Netns::new(4026532002, 102));
        DeviceMoves::new(nsids)
    }

    /// A notification as the listener reads it, with its actor recorded first.
    fn notify(moves: &mut DeviceMoves, nsid: Option<i32>, message: Vec<u8>, pid: u32, out: &mut Vec<DeviceEvent>) {
        let len = u32::from_ne_bytes(message[0..4].try_into().unwrap());
        let kind = u16::from_ne_bytes(message[4..6].try_into().unwrap());
        let ifindex = i32::from_ne_bytes(message[20..24].try_into().unwrap());
        let mut record = LinkNotifyEvent {
            header: EventHeader { kind: event_kind::LINK_NOTIFY, cpu: 0, boot_ns: 77 },
            nlmsg_len: len,
            nlmsg_type: kind,
            ifindex,
            ..Default::default()
        };
        record.actor.pid = pid;
        record.actor.tid = pid;
        record.actor.comm[..2].copy_from_slice(b"ip");
        moves.actor_seen(record);
        moves.datagram(nsid, &message, out).unwrap();
    }

    #[test]
    fn pairs_a_move_between_two_namespaces() {
        let mut moves = moves();
        let mut out = Vec::new();
        // Leaves 9001 for "nsid 5 of the source", arrives in 9002 as ifindex 12, renamed.
        let out_of_a = link_message(RTM_DELLINK, 7, IFI_CHANGE_ALL, "eth9", &[(IFLA_NEW_NETNSID, 5), (IFLA_NEW_IFINDEX, 12)], Some("veth"));
        notify(&mut moves, Some(9001), out_of_a, 40, &mut out);
        assert!(out.is_empty(), "waits for the arrival");
        let into_b = link_message(RTM_NEWLINK, 12, IFI_CHANGE_ALL, "eth0", &[(IFLA_LINK, 3), (IFLA_LINK_NETNSID, 0)], Some("veth"));
        notify(&mut moves, Some(9002), into_b, 40, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        let EventBody::DeviceMove { device, from_netns, to_netns, actor } = &out[0].body else { panic!("{out:?}") };
        assert_eq!(
            *device,
            MovedDevice { name: "eth9".into(), kind: Some("veth".into()), ifindex_before: 7, ifindex_after: 12, name_after: "eth0".into() }
        );
        assert_eq!((from_netns.as_ref().unwrap().id, to_netns.as_ref().unwrap().id), (101, 102));
        assert_eq!(actor.as_ref().map(|a| (a.pid, a.comm.as_str())), Some((40, "ip")));
        assert_eq!(out[0].boot_ns, 77);
        assert_eq!(moves.take_unmatched(), 0);
        assert_eq!(moves.next_deadline(), None);
    }

    #[test]
    fn state_changes_and_deletions_are_not_events() {
        let mut moves = moves();
        let mut out = Vec::new();
        notify(&mut moves, None, link_message(RTM_NEWLINK, 4, 1, "eth0", &[], None), 1, &mut out);
        notify(&mut moves, None, link_message(RTM_DELLINK, 4, IFI_CHANGE_ALL, "eth0", &[], None), 1, &mut out);
        // A new device with its peer in the same namespace.
        notify(&mut moves, None, link_message(RTM_NEWLINK, 5, IFI_CHANGE_ALL, "v0", &[(IFLA_LINK, 6)], Some("veth")), 1, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(moves.next_deadline(), None);
    }

    #[test]
    fn pairs_the_two_ends_of_a_veth_made_across_namespaces() {
        let mut moves = moves();
        let mut out = Vec::new();
        // The peer registers first (its peer not set yet), then the device, pointing at it.
        notify(&mut moves, Some(9002), link_message(RTM_NEWLINK, 2, IFI_CHANGE_ALL, "c2", &[(IFLA_LINK, 0)], Some("veth")), 50, &mut out);
        let device = link_message(RTM_NEWLINK, 5, IFI_CHANGE_ALL, "c1", &[(IFLA_LINK, 2), (IFLA_LINK_NETNSID, 1)], Some("veth"));
        notify(&mut moves, Some(9001), device, 50, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        let EventBody::VethCreate { device, peer, .. } = &out[0].body else { panic!("{out:?}") };
        assert_eq!((device.name.as_str(), device.ifindex, device.netns.as_ref().unwrap().id), ("c1", 5, 101));
        assert_eq!((peer.name.as_str(), peer.ifindex, peer.netns.as_ref().unwrap().id), ("c2", 2, 102));
    }

    #[test]
    fn a_move_whose_arrival_never_comes_is_reported_when_it_expires() {
        let mut moves = moves();
        let mut out = Vec::new();
        let out_of_a = link_message(RTM_DELLINK, 7, IFI_CHANGE_ALL, "eth9", &[(IFLA_NEW_NETNSID, 5), (IFLA_NEW_IFINDEX, 12)], Some("veth"));
        notify(&mut moves, Some(9001), out_of_a, 40, &mut out);
        let deadline = moves.next_deadline().expect("waiting");
        moves.expire(deadline, &mut out);
        assert_eq!(out.len(), 1);
        let EventBody::DeviceMove { device, from_netns, to_netns, .. } = &out[0].body else { panic!("{out:?}") };
        assert_eq!((device.ifindex_after, device.name_after.as_str()), (12, "eth9"));
        assert_eq!(from_netns.as_ref().unwrap().id, 101);
        assert_eq!(*to_netns, None, "no namespace has that device");
    }

    #[test]
    fn a_reused_nsid_names_its_new_holder_only_after_the_old_one_is_deleted() {
        let mut moves = moves();
        let mut out = Vec::new();
        // The kernel freed 9001 and gave it to a new namespace; the agent
        // learned that before reading the old holder's last messages.
        moves.nsids().insert(9001, Netns::new(4026532003, 103));
        let out_of_old = link_message(RTM_DELLINK, 7, IFI_CHANGE_ALL, "eth9", &[(IFLA_NEW_NETNSID, 5), (IFLA_NEW_IFINDEX, 7)], Some("veth"));
        notify(&mut moves, Some(9001), out_of_old, 40, &mut out);
        notify(&mut moves, Some(9002), link_message(RTM_NEWLINK, 7, IFI_CHANGE_ALL, "eth9", &[], Some("veth")), 40, &mut out);
        let EventBody::DeviceMove { from_netns, .. } = &out[0].body else { panic!("{out:?}") };
        assert_eq!(from_netns.as_ref().unwrap().id, 101, "the old holder");
        let mut delnsid = vec![0u8; 4];
        delnsid.extend_from_slice(&8u16.to_ne_bytes());
        delnsid.extend_from_slice(&1u16.to_ne_bytes());
        delnsid.extend_from_slice(&9001i32.to_ne_bytes());
        let mut message = Vec::new();
        message.extend_from_slice(&((16 + delnsid.len()) as u32).to_ne_bytes());
        message.extend_from_slice(&RTM_DELNSID.to_ne_bytes());
        message.extend_from_slice(&[0; 10]);
        message.extend_from_slice(&delnsid);
        moves.datagram(None, &message, &mut out).unwrap();
        assert_eq!(moves.nsids().get(Some(9001)).map(|n| n.id), Some(103), "the new holder");
    }

    #[test]
    fn actors_are_told_apart_by_device_name() {
        let mut moves = moves();
        let mut out = Vec::new();
        // Two namespaces, each with a new device of ifindex 2 and the same message length.
        let second = link_message(RTM_NEWLINK, 2, IFI_CHANGE_ALL, "bbbb", &[(IFLA_LINK, 9), (IFLA_LINK_NETNSID, 0)], Some("veth"));
        for (pid, name) in [(61, "aaaa"), (62, "bbbb")] {
            let mut record =
                LinkNotifyEvent { nlmsg_type: RTM_NEWLINK, ifindex: 2, nlmsg_len: second.len() as u32, ..Default::default() };
            record.actor.pid = pid;
            record.ifname[..4].copy_from_slice(name.as_bytes());
            moves.actor_seen(record);
        }
        moves.datagram(Some(9002), &second, &mut out).unwrap();
        let EventBody::VethCreate { actor, .. } = &out[0].body else { panic!("{out:?}") };
        assert_eq!(actor.as_ref().map(|a| a.pid), Some(62));
        assert_eq!(moves.actors.len(), 1);
        assert_eq!(moves.actors[0].1.actor.pid, 61);
    }

    #[test]
    fn a_device_the_cleanup_worker_brings_home_moved_from_the_dying_namespace() {
        let mut moves = moves();
        let mut out = Vec::new();
        let dying = Netns::new(4026532009, 109);
        moves.netns_destroyed(35, &dying);
        let home = link_message(RTM_NEWLINK, 3, IFI_CHANGE_ALL, "eth1", &[], None);
        let mut record = LinkNotifyEvent {
            header: EventHeader { kind: event_kind::LINK_NOTIFY, cpu: 0, boot_ns: now_boot_ns() },
            nlmsg_len: home.len() as u32,
            nlmsg_type: RTM_NEWLINK,
            ifindex: 3,
            in_netns_cleanup: 1,
            ..Default::default()
        };
        record.actor.tid = 35;
        record.actor.comm[..7].copy_from_slice(b"kworker");
        moves.actor_seen(record);
        moves.datagram(None, &home, &mut out).unwrap();
        let EventBody::DeviceMove { device, from_netns, to_netns, actor } = &out[0].body else { panic!("{out:?}") };
        assert_eq!((device.name.as_str(), device.kind.as_deref(), device.ifindex_before, device.ifindex_after), ("eth1", None, 0, 3));
        assert_eq!((from_netns.clone(), to_netns.as_ref().map(|n| n.id)), (Some(dying), Some(HOST)));
        assert_eq!(actor.as_ref().map(|a| a.comm.as_str()), Some("kworker"));

        // Another task registering a device while a cleanup runs is no move.
        let mut out = Vec::new();
        let new_device = link_message(RTM_NEWLINK, 4, IFI_CHANGE_ALL, "eth2", &[], None);
        record.nlmsg_len = new_device.len() as u32;
        record.ifindex = 4;
        record.actor.tid = 36;
        moves.actor_seen(record);
        moves.datagram(None, &new_device, &mut out).unwrap();
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn counts_actor_records_whose_message_never_came() {
        let mut moves = moves();
        let mut record = LinkNotifyEvent { nlmsg_type: RTM_NEWLINK, ifindex: 99, nlmsg_len: 1, ..Default::default() };
        record.actor.pid = 1;
        moves.actors.push_back((Instant::now() - ACTOR_KEEP - Duration::from_secs(1), record));
        let mut out = Vec::new();
        notify(&mut moves, None, link_message(RTM_NEWLINK, 4, 1, "eth0", &[], None), 1, &mut out);
        assert_eq!(moves.take_unmatched(), 0, "counted only once the socket is read empty");
        moves.drained();
        assert_eq!(moves.take_unmatched(), 1);
        assert!(moves.actors.is_empty());
    }
}
