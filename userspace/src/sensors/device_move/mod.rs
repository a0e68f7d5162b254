//! Network devices crossing namespaces, and veth pairs created across them.
//!
//! Where fentry (else kprobes) work, the kernel functions say it directly:
//! `__dev_change_net_namespace` for every move with both namespaces and
//! the actor (reported, with fentry, from `netdev_change_owner`, which it
//! calls once the device has moved), and `register_netdevice` inside `rtnl_newlink` for veth
//! pairs whose ends land in different namespaces. Nothing else is needed:
//! no listener, no nsids.
//!
//! Elsewhere no tracepoint reaches a moved device with its destination, so
//! the kernel's own notifications are the witness (the `rtnetlink`
//! backend): the sensor holds one rtnetlink socket in the agent's namespace with
//! NETLINK_LISTEN_ALL_NSID, joined to RTNLGRP_LINK and RTNLGRP_NSID, which
//! receives link notifications of every namespace that has an nsid there
//! ([`nsids`] gives every namespace one). A socket filter attached to that
//! one socket runs synchronously in the task that caused each notification
//! and records it in this sensor's own ring buffer; nothing else on the
//! system pays anything. [`pairing`] turns the two into events.
//!
//! All of it runs on the sensor's own thread: netlink requests (nsids,
//! device look-ups) and /proc scans never block the agent's event loop.
//! The agent tells the thread about created and destroyed namespaces.

pub mod nsids;
pub mod pairing;

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use aya::{
    maps::{MapData, RingBuf},
    Ebpf,
};
use nstrail_abi::{
    device::{DeviceMoveEvent, LinkNotifyEvent, VethCreateEvent, VethEndRecord},
    event_kind, map_name,
};

use nsids::NsidMap;
use pairing::Pairing;

use super::{
    read_record, Backend, Declaration, Draft, Hook, MessageReceiver, MessageSender, Probe, RecordError, RecordKind,
    Sensor, SensorError, SensorMessage, StartContext,
};
use crate::{
    event::{Actor, Event, EventBody, MovedDevice, Netns, VethEnd},
    inventory::{devices::KnownNsids, scan::Scan},
    sys::{clock::boot_ns, nsfs, rtnetlink::Listener},
};

const MOVE: &str = "__dev_change_net_namespace";
/// Called by `MOVE` once the device is in its destination. With fentry the
/// move is reported there: a fexit is skipped when the trampoline is
/// replaced (another program attached or detached) while a move sleeps in
/// `MOVE`, a kretprobe is not, so the kprobe backend does without it.
const MOVED: &str = "netdev_change_owner";
const NEWLINK: &str = "rtnl_newlink";
const REGISTER: &str = "register_netdevice";
/// The backend that listens to rtnetlink.
const RTNETLINK: &str = "rtnetlink";

static DECLARATION: Declaration = Declaration {
    name: "device_move",
    backends: &[
        Backend {
            name: "fentry",
            probes: &[
                Probe { program: "device_move_fentry", hook: Hook::FEntry { function: MOVE } },
                Probe { program: "device_moved_fentry", hook: Hook::FEntry { function: MOVED } },
                Probe { program: "device_move_fexit", hook: Hook::FExit { function: MOVE } },
                Probe { program: "newlink_fentry", hook: Hook::FEntry { function: NEWLINK } },
                Probe { program: "newlink_fexit", hook: Hook::FExit { function: NEWLINK } },
                Probe { program: "registered_fexit", hook: Hook::FExit { function: REGISTER } },
            ],
        },
        Backend {
            name: "kprobe",
            probes: &[
                Probe { program: "device_move_kprobe", hook: Hook::KProbe { function: MOVE } },
                Probe { program: "device_move_kretprobe", hook: Hook::KRetProbe { function: MOVE } },
                Probe { program: "newlink_kprobe", hook: Hook::KProbe { function: NEWLINK } },
                Probe { program: "newlink_kretprobe", hook: Hook::KRetProbe { function: NEWLINK } },
                Probe { program: "register_kprobe", hook: Hook::KProbe { function: REGISTER } },
                Probe { program: "registered_kretprobe", hook: Hook::KRetProbe { function: REGISTER } },
            ],
        },
        Backend { name: RTNETLINK, probes: &[Probe { program: "device_link_notify", hook: Hook::SensorSocket }] },
    ],
    // Actor records (rtnetlink backend) go to the sensor's own ring
    // (DEVICE_ACTORS); lost ones are counted with the others.
    records: &[
        RecordKind { kind: event_kind::DEVICE_MOVE, lost_as: "device_move" },
        RecordKind { kind: event_kind::VETH_CREATE, lost_as: "veth_create" },
        RecordKind { kind: event_kind::LINK_NOTIFY, lost_as: "device_actor" },
    ],
    // Creates give new namespaces their nsids; destroys tell which
    // namespace a device the cleanup worker brings home came from.
    events: &["device_move", "veth_create"],
    // Notifications the listener's socket dropped (rtnetlink backend).
    losses: &["device_notification"],
    // With the rtnetlink backend: creates give new namespaces their nsids;
    // destroys tell which namespace a device the cleanup worker brings home came from.
    depends_on: &["netns_lifecycle"],
};

/// How often the listener is read empty without a notification (to count
/// dropped ones) and lost counts are sent.
const TICK: Duration = Duration::from_millis(500);

enum Command {
    Created(Box<Event>),
    Destroyed { worker_tid: u32, netns: Netns },
    Scanned(Arc<Scan>),
    Stop,
}

pub struct DeviceMoves {
    listener_buffer_bytes: u32,
    gate: Option<Arc<Mutex<()>>>,
    listener: Option<Listener>,
    actors: Option<RingBuf<MapData>>,
    commands: Option<mpsc::Sender<Command>>,
    wake: Option<Arc<OwnedFd>>,
}

impl DeviceMoves {
    pub fn new(listener_buffer_bytes: u32, gate: Option<Arc<Mutex<()>>>) -> Self {
        Self { listener_buffer_bytes, gate, listener: None, actors: None, commands: None, wake: None }
    }

    fn send(&self, command: Command) {
        if let (Some(commands), Some(wake)) = (&self.commands, &self.wake) {
            if commands.send(command).is_ok() {
                signal(wake);
            }
        }
    }
}

impl Sensor for DeviceMoves {
    fn declaration(&self) -> &'static Declaration {
        &DECLARATION
    }

    fn loaded(&mut self, ebpf: &mut Ebpf) -> Result<(), SensorError> {
        let name = map_name::DEVICE_ACTORS;
        let map = ebpf
            .take_map(name)
            .ok_or(SensorError::Map { name, source: aya::maps::MapError::InvalidName { name: name.into() } })?;
        self.actors = Some(RingBuf::try_from(map).map_err(|source| SensorError::Map { name, source })?);
        Ok(())
    }

    fn socket(&mut self) -> Result<BorrowedFd<'_>, SensorError> {
        if self.listener.is_none() {
            let listener = Listener::open(self.listener_buffer_bytes).map_err(|e| {
                SensorError::Other(format!(
                    "cannot open the rtnetlink listener (NETLINK_LISTEN_ALL_NSID, Linux 4.2+; moves report IFLA_NEW_IFINDEX from 4.16): {e}"
                ))
            })?;
            self.listener = Some(listener);
        }
        Ok(self.listener.as_ref().expect("opened above").as_fd())
    }

    fn start(
        &mut self,
        backend: &'static str,
        context: StartContext<'_>,
    ) -> Result<Option<MessageReceiver>, SensorError> {
        if backend != RTNETLINK {
            // The kernel functions report everything through the shared ring.
            self.actors = None;
            return Ok(None);
        }
        let (Some(listener), Some(actors)) = (self.listener.take(), self.actors.take()) else {
            return Err(SensorError::Other("the device listener is not attached".into()));
        };
        let own = own_netns()?;
        let nsids = NsidMap::new(own, context.nsids.clone())?;
        let known = context.nsids.clone();
        let (to_agent, from_worker) = tokio::sync::mpsc::unbounded_channel();
        let (commands, inbox) = mpsc::channel();
        // SAFETY: a plain eventfd call; the fd is owned right away.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(SensorError::Io(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor no one else owns.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        // Every namespace known now gets an nsid first thing on the thread.
        commands.send(Command::Scanned(context.scan.clone())).ok();
        let worker = Worker {
            pairing: Pairing::new(nsids),
            listener,
            actors,
            inbox,
            wake: wake.clone(),
            to_agent,
            ready: Vec::new(),
            gate: self.gate.clone(),
            known: known.clone(),
        };
        std::thread::Builder::new().name("nstrail-devices".into()).spawn(move || worker.run())?;
        known.follow(wake.clone());
        self.commands = Some(commands);
        self.wake = Some(wake);
        Ok(Some(from_worker))
    }

    fn record(&mut self, kind: u32, bytes: &[u8], out: &mut Vec<Draft>) -> Result<(), RecordError> {
        let draft = match kind {
            event_kind::DEVICE_MOVE => moved(&read_record(bytes, "device_move record")?),
            event_kind::VETH_CREATE => veth_created(&read_record(bytes, "veth_create record")?),
            // Actor records come through the sensor's own ring, never the shared one.
            other => return Err(RecordError::UnknownKind(other)),
        };
        out.push(draft);
        Ok(())
    }

    fn observe(&mut self, event: &Event) {
        match &event.body {
            EventBody::NetnsCreate { .. } => self.send(Command::Created(Box::new(event.clone()))),
            EventBody::NetnsDestroy { netns, actor, .. } => {
                self.send(Command::Destroyed { worker_tid: actor.tid, netns: netns.clone() })
            }
            _ => {}
        }
    }

    fn rescanned(&mut self, scan: &Arc<Scan>) {
        self.send(Command::Scanned(scan.clone()));
    }

    fn stop(&mut self) {
        self.send(Command::Stop);
        self.commands = None;
    }
}

/// Text of a NUL-padded kernel name buffer.
fn name_text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    crate::event::text::escape_bytes(&bytes[..end])
}

fn moved(e: &DeviceMoveEvent) -> Draft {
    let kind = name_text(&e.kind);
    Draft {
        boot_ns: e.header.boot_ns,
        body: EventBody::DeviceMove {
            device: MovedDevice {
                name: name_text(&e.name_before),
                kind: (!kind.is_empty()).then_some(kind),
                ifindex_before: e.ifindex_before,
                ifindex_after: e.ifindex_after,
                name_after: name_text(&e.name_after),
            },
            from_netns: Some(Netns::from(e.from_netns)),
            to_netns: Some(Netns::from(e.to_netns)),
            actor: Some(Actor::from(&e.actor)),
        },
    }
}

fn veth_created(e: &VethCreateEvent) -> Draft {
    let end =
        |r: &VethEndRecord| VethEnd { name: name_text(&r.name), ifindex: r.ifindex, netns: Some(Netns::from(r.netns)) };
    Draft {
        boot_ns: e.header.boot_ns,
        body: EventBody::VethCreate { device: end(&e.device), peer: end(&e.peer), actor: Some(Actor::from(&e.actor)) },
    }
}

/// The agent's own network namespace: notifications without an nsid are about it.
fn own_netns() -> std::io::Result<Netns> {
    use std::os::unix::fs::MetadataExt;
    let path = std::path::Path::new("/proc/thread-self/ns/net");
    let inode = std::fs::metadata(path)?.ino() as u32;
    Ok(Netns::new(inode, nsfs::ns_id(path)?))
}

fn signal(eventfd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes from a u64 to our eventfd.
    unsafe { libc::write(eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// The sensor's thread: the listener, the actor ring and the pairing.
struct Worker {
    pairing: Pairing,
    listener: Listener,
    actors: RingBuf<MapData>,
    inbox: mpsc::Receiver<Command>,
    wake: Arc<OwnedFd>,
    to_agent: MessageSender,
    ready: Vec<Draft>,
    gate: Option<Arc<Mutex<()>>>,
    /// The inventory's nsids and kept device lists, which this thread keeps current.
    known: KnownNsids,
}

impl Worker {
    fn run(mut self) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let now = Instant::now();
            let until = self.pairing.next_deadline().map_or(next_tick, |at| at.min(next_tick));
            self.wait(until.saturating_duration_since(now));
            let gate = self.gate.clone();
            let _held = gate.as_ref().map(|g| g.lock().unwrap_or_else(|e| e.into_inner()));
            let stop = self.take_commands();
            // Listings waiting for every notification queued before they
            // asked (see KnownNsids::catch_up) are served by this read.
            let asked = self.known.reading();
            self.read_notifications();
            self.known.read_done(asked);
            self.pairing.expire(Instant::now(), &mut self.ready);
            if stop {
                // Whatever is still waiting for its second half goes out now.
                self.pairing.expire(Instant::now() + Duration::from_secs(3600), &mut self.ready);
            }
            if stop || Instant::now() >= next_tick {
                next_tick = Instant::now() + TICK;
                let dropped = self.pairing.take_unmatched();
                if dropped > 0 {
                    // The socket buffer overflowed: these notifications
                    // (moves among them, maybe) never reached the agent.
                    let lost = SensorMessage::Lost { event_type: "device_notification", count: dropped };
                    if self.to_agent.send(lost).is_err() {
                        return;
                    }
                }
            }
            if !self.ready.is_empty()
                && self.to_agent.send(SensorMessage::Events(std::mem::take(&mut self.ready))).is_err()
            {
                return;
            }
            if stop {
                self.known.unfollow();
                return;
            }
        }
    }

    /// Sleeps until a notification or a command arrives, or `timeout` passes.
    fn wait(&mut self, timeout: Duration) {
        let mut fds = [
            libc::pollfd { fd: self.listener.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: polling two valid descriptors of ours.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if fds[1].revents != 0 {
            let mut count: u64 = 0;
            // SAFETY: reading the 8-byte counter of our eventfd.
            unsafe { libc::read(self.wake.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        }
    }

    /// Handles what the agent sent; true once it asked to stop.
    fn take_commands(&mut self) -> bool {
        let mut stop = false;
        while let Ok(command) = self.inbox.try_recv() {
            match command {
                Command::Created(event) => self.pairing.nsids().assign_created(&event),
                Command::Destroyed { worker_tid, netns } => {
                    self.pairing.netns_destroyed(worker_tid, &netns, &mut self.ready)
                }
                Command::Scanned(scan) => self.pairing.nsids().assign_scanned(&scan),
                Command::Stop => stop = true,
            }
        }
        stop
    }

    /// Who caused the notifications queued so far.
    fn take_actors(&mut self) {
        while let Some(item) = self.actors.next() {
            match read_record::<LinkNotifyEvent>(&item, "link_notify record") {
                Ok(record) => self.pairing.actor_seen(record),
                Err(err) => {
                    let _ = self.to_agent.send(SensorMessage::DecodeError(err.to_string()));
                }
            }
        }
    }

    /// Reads every waiting datagram of the listener.
    fn read_notifications(&mut self) {
        let mut overrun_at = None;
        loop {
            // The socket filter recorded a datagram's actors before the
            // kernel queued it: take them first.
            self.take_actors();
            match self.listener.recv() {
                Ok(Some(datagram)) if datagram.truncated => {
                    let message = "dropping an rtnetlink datagram larger than the listener's buffer".to_owned();
                    let _ = self.to_agent.send(SensorMessage::DecodeError(message));
                }
                Ok(Some(datagram)) => {
                    if let Err(err) = self.pairing.datagram(datagram.nsid, datagram.data, &mut self.ready) {
                        let _ = self
                            .to_agent
                            .send(SensorMessage::DecodeError(format!("undecodable rtnetlink datagram: {err}")));
                    }
                }
                Ok(None) => break,
                Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                    log::warn!("rtnetlink listener overrun: device notifications were dropped");
                    overrun_at = Some(boot_ns());
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    log::error!("reading the rtnetlink listener failed: {err}");
                    break;
                }
            }
        }
        // Read empty now. Actor records of dropped notifications may still
        // be in the ring: take them first.
        self.take_actors();
        self.pairing.drained();
        if let Some(at) = overrun_at {
            // Actors from before the overrun that found no message are the
            // dropped notifications (reported as lost).
            self.pairing.overrun(at);
        }
    }
}
