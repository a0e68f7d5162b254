//! Devices crossing namespaces, end to end: real veth pairs moved by `ip`
//! and by a raw rtnetlink client, and the exact events each must produce.

use std::time::Duration;

use nstrail::{
    event::{Event, EventBody, MovedDevice, Netns, VethEnd},
    sensors::SensorOptions,
};
use nstrail_tests::{field, ifindex, run, run_ok, Background, HostVeth, NamedNetns, NetnsIdentity, TestAgent};

const WAIT: Duration = Duration::from_secs(20);
/// How long to keep listening for stray or duplicate events after the expected ones.
const SETTLE: Duration = Duration::from_millis(700);

fn netns(identity: NetnsIdentity) -> Netns {
    Netns::new(identity.inode, identity.id)
}

/// A namespace made by `ip netns add` whose create the agent has reported
/// (so it has given it an nsid, as it does for every namespace it sees).
fn seen_netns(agent: &mut TestAgent, tag: &str) -> NamedNetns {
    let (ns, ran) = NamedNetns::add(tag);
    agent.wait_until(WAIT, "netns_create by ip netns add", |log| {
        !log.by_pid_of_type(ran.pid, "netns_create").is_empty()
    });
    ns
}

/// The one event of `type_name` whose actor is `pid`; panics unless exactly one.
fn only_event(agent: &mut TestAgent, pid: u32, type_name: &str) -> Event {
    agent.wait_until(WAIT, &format!("{type_name} by pid {pid}"), |log| !log.by_pid_of_type(pid, type_name).is_empty());
    agent.settle(SETTLE);
    let events = agent.log.by_pid_of_type(pid, type_name);
    assert_eq!(events.len(), 1, "expected one {type_name} by pid {pid}; events:\n{}", agent.log.dump());
    events[0].clone()
}

/// Checks a device_move event field by field.
fn assert_move(event: &Event, device: MovedDevice, from: NetnsIdentity, to: NetnsIdentity, pid: u32, comm: &str) {
    let EventBody::DeviceMove { device: seen, from_netns, to_netns, actor } = &event.body else {
        panic!("not a device_move: {event:?}")
    };
    assert_eq!(*seen, device);
    assert_eq!(from_netns.clone(), Some(netns(from)));
    assert_eq!(to_netns.clone(), Some(netns(to)));
    let actor = actor.as_ref().expect("the actor is recorded");
    assert_eq!((actor.pid, actor.comm.as_str(), actor.uid), (pid, comm, 0));
}

fn moved_device(event: &Event) -> Option<&String> {
    match &event.body {
        EventBody::DeviceMove { device, .. } => Some(&device.name),
        _ => None,
    }
}

fn veth(name: &str, before: u32, after: u32) -> MovedDevice {
    MovedDevice {
        name: name.to_owned(),
        kind: Some("veth".into()),
        ifindex_before: before,
        ifindex_after: after,
        name_after: name.to_owned(),
    }
}

#[test]
fn ip_link_set_netns_moves_from_host() {
    let host = NetnsIdentity::of_self();
    let mut agent = TestAgent::start();
    // Not waited for: a move from the host gives the namespace an nsid itself.
    let (ns, _) = NamedNetns::add("mvhost");
    let pair = HostVeth::add();
    let before = ifindex(None, &pair.name);

    let ran = run_ok("ip", &["link", "set", &pair.name, "netns", &ns.name]);
    let event = only_event(&mut agent, ran.pid, "device_move");
    let after = ifindex(Some(&ns.name), &pair.name);
    assert_move(&event, veth(&pair.name, before, after), host, ns.identity(), ran.pid, "ip");
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(json["device"]["kind"], "veth");
    assert_eq!(json["to_netns"]["id"], ns.identity().id);
}

#[test]
fn ip_n_a_link_set_netns_b_moves_between_namespaces() {
    let mut agent = TestAgent::start();
    let a = seen_netns(&mut agent, "mva");
    let b = seen_netns(&mut agent, "mvb");
    let pair = HostVeth::add();
    let first = run_ok("ip", &["link", "set", &pair.name, "netns", &a.name]);
    only_event(&mut agent, first.pid, "device_move");
    let before = ifindex(Some(&a.name), &pair.name);

    let ran = run_ok("ip", &["-n", &a.name, "link", "set", &pair.name, "netns", &b.name]);
    let event = only_event(&mut agent, ran.pid, "device_move");
    let after = ifindex(Some(&b.name), &pair.name);
    assert_move(&event, veth(&pair.name, before, after), a.identity(), b.identity(), ran.pid, "ip");
    // Tests run side by side: count only this device's moves.
    let moves_of_ours = agent.log.of_type("device_move").filter(|e| moved_device(e) == Some(&pair.name)).count();
    assert_eq!(moves_of_ours, 2, "{}", agent.log.dump());
}

/// The nsid `ip netns list` shows for a named namespace, if it has one here.
fn listed_nsid(name: &str) -> Option<u32> {
    let listed = run_ok("ip", &["netns", "list"]).stdout;
    let line = listed.lines().find(|l| l.split_whitespace().next() == Some(name))?;
    line.split("(id: ").nth(1)?.trim_end_matches(')').parse().ok()
}

/// Namespaces that exist before the agent starts get nsids from its start
/// scan: the numbers it asks for may be taken (by `ip netns set`, by the
/// kernel for a move, by other tests' namespaces) and some namespaces have
/// one already. Moves between them still name both ends.
#[test]
fn moves_between_namespaces_older_than_the_agent_name_both_ends() {
    let (a, _) = NamedNetns::add("olda");
    let (b, _) = NamedNetns::add("oldb");
    let (c, _) = NamedNetns::add("oldc");
    // Refused when an agent of a test running alongside gave it one first.
    run("ip", &["netns", "set", &b.name, "auto"]);
    let pair = HostVeth::add();
    // The kernel gives `a` an nsid for this move.
    run_ok("ip", &["link", "set", &pair.name, "netns", &a.name]);
    let b_nsid = listed_nsid(&b.name).expect("b has an nsid");

    let mut agent = TestAgent::start();
    // Only the rtnetlink backend gives namespaces nsids (the kernel
    // functions' backends need none); the moves are checked on every one.
    let gives_nsids = agent.backend("device_move") == "rtnetlink";
    let deadline = std::time::Instant::now() + WAIT;
    while gives_nsids && [&a, &b, &c].iter().any(|ns| listed_nsid(&ns.name).is_none()) {
        assert!(std::time::Instant::now() < deadline, "the agent gave no nsid to one of them");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(listed_nsid(&b.name), Some(b_nsid), "an nsid given before is kept");
    if gives_nsids {
        let ids: std::collections::BTreeSet<_> = [&a, &b, &c].iter().map(|ns| listed_nsid(&ns.name)).collect();
        assert_eq!(ids.len(), 3, "three nsids: {ids:?}");
    }

    for (from, to) in [(&a, &c), (&c, &b)] {
        let before = ifindex(Some(&from.name), &pair.name);
        let ran = run_ok("ip", &["-n", &from.name, "link", "set", &pair.name, "netns", &to.name]);
        let event = only_event(&mut agent, ran.pid, "device_move");
        let after = ifindex(Some(&to.name), &pair.name);
        assert_move(&event, veth(&pair.name, before, after), from.identity(), to.identity(), ran.pid, "ip");
    }
}

#[test]
fn veth_created_with_its_peer_in_another_namespace() {
    let host = NetnsIdentity::of_self();
    let mut agent = TestAgent::start();
    let (ns, _) = NamedNetns::add("vcreate");
    let (name, peer) = HostVeth::unique_names();
    let _guard = HostVeth { name: name.clone(), peer: peer.clone() };

    let ran = run_ok("ip", &["link", "add", &name, "type", "veth", "peer", "name", &peer, "netns", &ns.name]);
    let event = only_event(&mut agent, ran.pid, "veth_create");
    let EventBody::VethCreate { device, peer: peer_end, actor } = &event.body else { unreachable!() };
    assert_eq!(*device, VethEnd { name: name.clone(), ifindex: ifindex(None, &name), netns: Some(netns(host)) });
    assert_eq!(
        *peer_end,
        VethEnd { name: peer.clone(), ifindex: ifindex(Some(&ns.name), &peer), netns: Some(netns(ns.identity())) }
    );
    let actor = actor.as_ref().expect("actor");
    assert_eq!((actor.pid, actor.comm.as_str()), (ran.pid, "ip"));
    assert!(agent.log.by_pid_of_type(ran.pid, "device_move").is_empty(), "a create is not a move");

    // Both ends in one namespace is no cross-namespace create.
    let local = HostVeth::add();
    agent.settle(SETTLE);
    let of_local = agent.log.of_type("veth_create").filter(|e| {
        matches!(&e.body, EventBody::VethCreate { device, peer, .. } if device.name == local.name || peer.name == local.name)
    });
    assert_eq!(of_local.count(), 0, "{}", agent.log.dump());
}

#[test]
fn veth_created_between_two_other_namespaces() {
    let mut agent = TestAgent::start();
    let a = seen_netns(&mut agent, "vca");
    let b = seen_netns(&mut agent, "vcb");
    let (name, peer) = HostVeth::unique_names();
    let ran =
        run_ok("ip", &["-n", &a.name, "link", "add", &name, "type", "veth", "peer", "name", &peer, "netns", &b.name]);
    let event = only_event(&mut agent, ran.pid, "veth_create");
    let EventBody::VethCreate { device, peer: peer_end, .. } = &event.body else { unreachable!() };
    assert_eq!(
        *device,
        VethEnd { name: name.clone(), ifindex: ifindex(Some(&a.name), &name), netns: Some(netns(a.identity())) }
    );
    assert_eq!(
        *peer_end,
        VethEnd { name: peer.clone(), ifindex: ifindex(Some(&b.name), &peer), netns: Some(netns(b.identity())) }
    );
}

#[test]
fn a_move_refused_for_a_name_clash_is_not_reported() {
    let mut agent = TestAgent::start();
    let ns = seen_netns(&mut agent, "clash");
    let pair = HostVeth::add();
    // The namespace already has a device with that name.
    run_ok("ip", &["-n", &ns.name, "link", "add", &pair.name, "type", "veth", "peer", "name", "clashpeer"]);

    let before = ifindex(None, &pair.name);
    let ran = run("ip", &["link", "set", &pair.name, "netns", &ns.name]);
    assert!(!ran.success, "the kernel refuses the move");
    // A successful move afterwards proves the agent was listening.
    let ok = run_ok("ip", &["link", "set", &pair.peer, "netns", &ns.name]);
    only_event(&mut agent, ok.pid, "device_move");
    assert!(agent.log.by_pid(ran.pid).iter().all(|e| e.body.type_name() != "device_move"), "{}", agent.log.dump());
    assert_eq!(ifindex(None, &pair.name), before, "the refused device is still in the host");
}

#[test]
fn a_raw_rtnetlink_client_moving_with_sendto_is_the_actor() {
    let host = NetnsIdentity::of_self();
    let mut agent = TestAgent::start();
    let ns = seen_netns(&mut agent, "sendto");
    let pair = HostVeth::add();
    let before = ifindex(None, &pair.name);

    let ran = run_ok(env!("CARGO_BIN_EXE_netns-helper"), &["move-link", &pair.name, &ns.path().to_string_lossy()]);
    assert_eq!(field(&ran.stdout, "errno"), 0, "the helper's move succeeded");
    let tid = field(&ran.stdout, "tid") as u32;
    let event = only_event(&mut agent, ran.pid, "device_move");
    let after = ifindex(Some(&ns.name), &pair.name);
    assert_move(&event, veth(&pair.name, before, after), host, ns.identity(), ran.pid, "netns-helper");
    let EventBody::DeviceMove { actor: Some(actor), .. } = &event.body else { unreachable!() };
    assert_eq!(actor.tid, tid, "the thread that sent the request");
    assert_ne!(actor.tid, actor.pid);
}

#[test]
fn a_thread_switched_into_a_namespace_moves_a_device_back_to_the_host() {
    // What the CNI host-device plugin does on DEL: a thread of the plugin
    // enters the container's namespace and sends the device home.
    let host = NetnsIdentity::of_self();
    let mut agent = TestAgent::start();
    let ns = seen_netns(&mut agent, "home");
    let pair = HostVeth::add();
    run_ok("ip", &["link", "set", &pair.name, "netns", &ns.name]);
    let before = ifindex(Some(&ns.name), &pair.name);

    let home = format!("/proc/{}/ns/net", std::process::id());
    let ran =
        run_ok(env!("CARGO_BIN_EXE_netns-helper"), &["move-link", &pair.name, &home, &ns.path().to_string_lossy()]);
    assert_eq!(field(&ran.stdout, "errno"), 0, "the helper's move succeeded");
    let event = only_event(&mut agent, ran.pid, "device_move");
    assert_move(
        &event,
        veth(&pair.name, before, ifindex(None, &pair.name)),
        ns.identity(),
        host,
        ran.pid,
        "netns-helper",
    );
    let EventBody::DeviceMove { actor: Some(actor), .. } = &event.body else { unreachable!() };
    assert_eq!(actor.tid as u64, field(&ran.stdout, "tid"));
    // The same thread's entry into the namespace is its own event.
    let enters = agent.log.by_pid_of_type(ran.pid, "netns_enter");
    assert_eq!(enters.len(), 1, "{}", agent.log.dump());
    assert_eq!(enters[0].body.netns().map(|n| n.id), Some(ns.identity().id));
}

#[test]
fn a_move_into_a_namespace_made_a_moment_before_is_reported() {
    // The hard case: the destination is created and receives the device
    // within microseconds, between two namespaces that are not the host's,
    // before the agent can have given the new one an nsid.
    let mut agent = TestAgent::start();
    let a = seen_netns(&mut agent, "fresh");
    let pair = HostVeth::add();
    run_ok("ip", &["link", "set", &pair.name, "netns", &a.name]);
    let before = ifindex(Some(&a.name), &pair.name);

    let helper = Background::start(
        env!("CARGO_BIN_EXE_netns-helper"),
        &["move-into-new", &pair.name, &a.path().to_string_lossy()],
    );
    assert_eq!(field(&helper.first_line, "errno"), 0, "the helper's move succeeded");
    let fresh = NetnsIdentity { inode: field(&helper.first_line, "inode") as u32, id: field(&helper.first_line, "id") };
    let event = only_event(&mut agent, helper.pid(), "device_move");
    let EventBody::DeviceMove { device, from_netns, to_netns, actor } = &event.body else { unreachable!() };
    assert_eq!((device.name.as_str(), device.ifindex_before), (pair.name.as_str(), before));
    assert_eq!(from_netns.clone(), Some(netns(a.identity())));
    assert_eq!(to_netns.clone(), Some(netns(fresh)), "{}", agent.log.dump());
    assert_eq!(actor.as_ref().map(|a| a.tid as u64), Some(field(&helper.first_line, "tid")));
}

#[test]
fn notifications_the_listener_drops_are_counted_as_lost() {
    // A listener with room for a few notifications, and an agent held up
    // (the test holds the device worker's gate) while one `ip`
    // makes 40 veth pairs across namespaces: the socket overflows. Where the
    // kernel functions are probed there is no listener to overflow: the same
    // burst is reported whole.
    let gate = std::sync::Arc::new(std::sync::Mutex::new(()));
    let options = SensorOptions {
        device_listener_buffer_bytes: 4096,
        device_worker_gate: Some(gate.clone()),
        ..Default::default()
    };
    let mut agent = TestAgent::start_with(options);
    let ns = seen_netns(&mut agent, "overrun");
    let stem = HostVeth::unique_names().0;
    let batch = std::env::temp_dir().join(format!("{stem}.batch"));
    let lines: String =
        (0..40).map(|i| format!("link add {stem}{i} type veth peer name p{i} netns {}\n", ns.name)).collect();
    std::fs::write(&batch, lines).expect("batch file");
    let held = gate.lock().expect("device worker gate");
    let ran = run("ip", &["-batch", &batch.to_string_lossy()]);
    drop(held);
    let _ = std::fs::remove_file(&batch);
    assert!(ran.success, "ip -batch made the pairs");

    if agent.backend("device_move") != "rtnetlink" {
        agent.wait_until(WAIT, "all 40 veth pairs", |log| log.by_pid_of_type(ran.pid, "veth_create").len() >= 40);
        agent.settle(SETTLE);
        assert_eq!(agent.log.by_pid_of_type(ran.pid, "veth_create").len(), 40, "{}", agent.log.dump());
        assert_eq!(agent.log.lost(), 0);
        return;
    }
    let dropped = |log: &nstrail_tests::EventLog| {
        log.events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::Lost { count, event_type } if event_type == "device_notification" => Some(*count),
                _ => None,
            })
            .sum::<u64>()
    };
    agent.wait_until(WAIT, "a lost record for dropped device notifications", |log| dropped(log) > 0);
    let created = agent.log.by_pid_of_type(ran.pid, "veth_create").len();
    assert!(created < 40, "the overflow hid some creates: {created} reported");
    // Each pair is two notifications (peer, then device): every one not
    // turned into an event is counted.
    assert!(dropped(&agent.log) as usize >= 40 - created, "{}", agent.log.dump());

    // The agent re-learned its nsids and goes on.
    let pair = HostVeth::add();
    let after = run_ok("ip", &["link", "set", &pair.name, "netns", &ns.name]);
    let event = only_event(&mut agent, after.pid, "device_move");
    let EventBody::DeviceMove { to_netns, .. } = &event.body else { unreachable!() };
    assert_eq!(to_netns.clone(), Some(netns(ns.identity())));
}

/// 100 veth pairs, each with one end moved into a namespace of its own
/// (25 under emulation).
#[test]
fn many_veth_pairs_moved_into_as_many_namespaces() {
    let pairs_wanted = nstrail_tests::scaled(100, 25);
    let mut agent = TestAgent::start();
    let mut namespaces = Vec::new();
    let mut pairs = Vec::new();
    let mut movers = Vec::new();
    for _ in 0..pairs_wanted {
        let (ns, _) = NamedNetns::add("hundred");
        let pair = HostVeth::add();
        movers.push(run_ok("ip", &["link", "set", &pair.peer, "netns", &ns.name]).pid);
        namespaces.push(ns);
        pairs.push(pair);
    }
    // Tests run side by side: count only moves of this test's devices.
    let ours: std::collections::HashSet<String> = pairs.iter().map(|p| p.peer.clone()).collect();
    let count_ours = |log: &nstrail_tests::EventLog| {
        log.of_type("device_move").filter(|e| moved_device(e).is_some_and(|n| ours.contains(n))).count()
    };
    agent.wait_until(WAIT, "every device_move", |log| count_ours(log) >= pairs_wanted);
    agent.settle(SETTLE);
    assert_eq!(count_ours(&agent.log), pairs_wanted, "{}", agent.log.dump());
    for ((ns, pair), pid) in namespaces.iter().zip(&pairs).zip(&movers) {
        let found: Vec<_> = agent.log.by_pid_of_type(*pid, "device_move");
        assert_eq!(found.len(), 1, "one move by {pid}");
        let EventBody::DeviceMove { device, to_netns, .. } = &found[0].body else { unreachable!() };
        assert_eq!(device.name, pair.peer);
        assert_eq!(to_netns.clone(), Some(netns(ns.identity())));
    }
    let summary = agent.stop();
    assert_eq!((summary.lost, agent.log.lost()), (0, 0), "nothing lost: {summary:?}");
}

/// A copy of the agent's move program loaded beside it, attached to and
/// detached from `__dev_change_net_namespace` over and over on a thread,
/// as another tool starting and stopping would: each time, the kernel
/// replaces the function's trampoline. Stops when dropped.
struct TrampolineChurn {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    swaps: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TrampolineChurn {
    fn start() -> Self {
        use std::sync::atomic::Ordering;
        let btf = aya::Btf::from_sys_fs().expect("vmlinux BTF");
        // Its layout is never filled in: the copy returns at once.
        let mut ebpf = aya::Ebpf::load(nstrail::agent::probes_object()).expect("probes object loads");
        {
            let program: &mut aya::programs::FEntry =
                ebpf.program_mut("device_move_fentry").expect("program").try_into().expect("an fentry program");
            program.load("__dev_change_net_namespace", &btf).expect("fentry program loads");
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swaps = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop_flag, counter) = (stop.clone(), swaps.clone());
        let thread = std::thread::spawn(move || {
            let program: &mut aya::programs::FEntry =
                ebpf.program_mut("device_move_fentry").expect("program").try_into().expect("an fentry program");
            while !stop_flag.load(Ordering::Relaxed) {
                match program.attach() {
                    Ok(link) => {
                        program.detach(link).expect("detach");
                        counter.fetch_add(2, Ordering::Relaxed);
                    }
                    // The kernel may not have unlinked the last detach yet.
                    Err(aya::programs::ProgramError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::EBUSY) =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(1))
                    }
                    Err(e) => panic!("attaching the copy: {e}"),
                }
            }
        });
        Self { stop, swaps, thread: Some(thread) }
    }

    fn swaps(&self) -> usize {
        self.swaps.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for TrampolineChurn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn moves_are_reported_while_another_program_attaches_to_the_move_function() {
    // A move sleeps inside __dev_change_net_namespace (rcu_barrier,
    // synchronize_net); a trampoline replaced meanwhile skips its fexit
    // programs. Every move must still be reported, once.
    let mut agent = TestAgent::start();
    if agent.backend("device_move") != "fentry" {
        eprintln!("device_move runs on {}: no trampoline here", agent.backend("device_move"));
        return;
    }
    let ns = seen_netns(&mut agent, "swap");
    let pair = HostVeth::add();
    let home = std::process::id().to_string();
    let churn = TrampolineChurn::start();
    const MOVES: usize = 16;
    let mut actors = Vec::new();
    for i in 0..MOVES {
        let ran = if i % 2 == 0 {
            run_ok("ip", &["link", "set", &pair.name, "netns", &ns.name])
        } else {
            run_ok("ip", &["-n", &ns.name, "link", "set", &pair.name, "netns", &home])
        };
        actors.push(ran.pid);
    }
    let swaps = churn.swaps();
    drop(churn);
    assert!(swaps >= MOVES, "the trampoline was replaced only {swaps} times during {MOVES} moves");
    let reported = |log: &nstrail_tests::EventLog| {
        actors.iter().filter(|pid| !log.by_pid_of_type(**pid, "device_move").is_empty()).count()
    };
    agent.wait_until(WAIT, &format!("{MOVES} device moves"), |log| reported(log) == MOVES);
    agent.settle(SETTLE);
    let moves: Vec<_> = agent.log.of_type("device_move").filter(|e| moved_device(e) == Some(&pair.name)).collect();
    assert_eq!(moves.len(), MOVES, "one event per move, with {swaps} trampoline swaps; events:\n{}", agent.log.dump());
}
