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

use super::nsids::NsidMap;
use crate::{
    event::{Actor, EventBody, MovedDevice, Netns, VethEnd},
    sensors::Draft,
    sys::{
        clock::boot_ns,
        rtnetlink::{self, Link, IFI_CHANGE_ALL, RTM_DELLINK, RTM_DELNSID, RTM_NEWLINK, RTM_NEWNSID},
    },
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
/// How long a device that appeared in the agent's namespace while a
/// cleanup ran waits for the destroy report of the namespace it may have
/// come back from (that report reaches the sensor by another path).
const RETURN_WAIT: Duration = Duration::from_millis(500);

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
        self.actor.as_ref().map(|a| Actor::from(&a.actor))
    }
}

/// A move's first half: the device left `from`.
struct MoveOut {
    notice: Notice,
    from: Option<Netns>,
    deadline: Instant,
}

/// Pairs the listener's notifications with their actors, and moves
/// departures with their arrivals.
pub struct Pairing {
    nsids: NsidMap,
    actors: VecDeque<(Instant, LinkNotifyEvent)>,
    moving: VecDeque<MoveOut>,
    /// Devices a cleanup worker registered here before its destroy report
    /// arrived, with their deadline.
    returning: VecDeque<(Instant, Notice)>,
    recent: VecDeque<Notice>,
    /// Namespaces reported destroyed, with the kernel worker's tid, for
    /// devices returned to the host by that worker.
    destroyed: VecDeque<(u32, u64, Netns)>,
    /// Actor records whose notifications never arrived (socket overruns).
    unmatched: u64,
}

impl Pairing {
    pub fn new(nsids: NsidMap) -> Self {
        Self {
            nsids,
            actors: VecDeque::new(),
            moving: VecDeque::new(),
            returning: VecDeque::new(),
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

    /// A namespace was reported destroyed by `actor_tid` (a kernel worker);
    /// devices that worker already brought home are reported now.
    pub fn netns_destroyed(&mut self, actor_tid: u32, netns: &Netns, out: &mut Vec<Draft>) {
        self.nsids.netns_destroyed(netns.id);
        self.destroyed.push_back((actor_tid, boot_ns(), netns.clone()));
        while self.destroyed.len() > RECENT_KEEP {
            self.destroyed.pop_front();
        }
        let waiting = std::mem::take(&mut self.returning);
        for (deadline, notice) in waiting {
            match self.returned_by_cleanup(&notice) {
                Return::Home(event) => out.push(*event),
                Return::NoDestroyYet => self.returning.push_back((deadline, notice)),
                Return::Not => {}
            }
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
        let moving = self.moving.front().map(|m| m.deadline);
        let returning = self.returning.front().map(|(at, _)| *at);
        moving.into_iter().chain(returning).min()
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
    pub fn datagram(&mut self, nsid: Option<i32>, data: &[u8], out: &mut Vec<Draft>) -> std::io::Result<()> {
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
                    let link = Link::parse(message.payload);
                    self.nsids.link_notified(nsid, message.kind == RTM_DELLINK, link.as_ref());
                    let Some(link) = link else { continue };
                    let actor = self.take_actor(message.kind, message.len, &link);
                    let boot_ns = actor.map(|a| a.header.boot_ns).unwrap_or_else(boot_ns);
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

    fn appeared(&mut self, notice: Notice, out: &mut Vec<Draft>) {
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
        } else {
            match self.returned_by_cleanup(&notice) {
                Return::Home(event) => out.push(*event),
                Return::NoDestroyYet => self.returning.push_back((Instant::now() + RETURN_WAIT, notice.clone())),
                Return::Not => {}
            }
        }
        self.recent.push_back(notice);
        while self.recent.len() > RECENT_KEEP {
            self.recent.pop_front();
        }
    }

    /// The second end of a veth pair appeared; its peer came just before
    /// (when its namespace has an nsid) or is asked for.
    fn veth_created(&mut self, notice: &Notice) -> Draft {
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
        let device = VethEnd {
            name: link.name.clone(),
            ifindex: link.ifindex as u32,
            netns: self.nsids.resolve(notice.nsid, notice.pid()),
        };
        Draft { boot_ns: notice.boot_ns, body: EventBody::VethCreate { device, peer, actor: notice.actor() } }
    }

    /// A device the kernel worker brought back from a namespace it is
    /// destroying (physical NICs and devices without rtnl ops).
    fn returned_by_cleanup(&mut self, notice: &Notice) -> Return {
        let Some(actor) = notice.actor else { return Return::Not };
        if actor.in_netns_cleanup == 0 || notice.nsid.is_some() {
            return Return::Not;
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
            // Not the worker running cleanup_net (a new device), or its
            // destroy report is still on its way.
            return Return::NoDestroyYet;
        }
        let from = (dying.len() == 1).then(|| dying[0].clone());
        let link = &notice.link;
        Return::Home(Box::new(Draft {
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
        }))
    }

    /// Moves whose destination never sent its RTM_NEWLINK in time (it had
    /// no nsid): the destination is looked for among known namespaces by
    /// the device's new ifindex and name.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Draft>) {
        // No destroy report came for these: devices registered while a cleanup ran.
        self.returning.retain(|(deadline, _)| *deadline > now);
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
    fn finish_moves_from(&mut self, nsid: i32, out: &mut Vec<Draft>) {
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
                log::debug!(
                    "gave up looking for the destination of {} after {FIND_DESTINATION_BUDGET:?}",
                    notice.link.name
                );
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

/// Feeds one datagram to a fresh pairing whose nsid map knows two
/// namespaces and never rescans /proc (for the fuzzer).
#[doc(hidden)]
pub fn fuzz_datagram(data: &[u8]) {
    let Ok(mut nsids) = NsidMap::new(Netns::new(4026531833, 3), Default::default()) else { return };
    nsids.insert(1, Netns::new(4026532001, 101));
    nsids.insert(2, Netns::new(4026532002, 102));
    let mut pairing = Pairing::new(nsids);
    let mut out = Vec::new();
    for nsid in [None, Some(1), Some(2)] {
        let _ = pairing.datagram(nsid, data, &mut out);
    }
    pairing.drained();
    pairing.expire(Instant::now() + Duration::from_secs(3600), &mut out);
}

/// Whether a device that appeared in the agent's namespace came back from
/// a namespace being destroyed.
enum Return {
    Home(Box<Draft>),
    NoDestroyYet,
    Not,
}

fn move_event(
    departed: Notice,
    from: Option<Netns>,
    after: (&str, i32),
    to: Option<Netns>,
    actor: Option<Actor>,
) -> Draft {
    Draft {
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
mod tests;
