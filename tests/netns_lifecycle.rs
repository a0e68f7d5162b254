//! Network namespace lifecycle, end to end: real actions, the real probes in
//! the real kernel, and the exact events each action must produce.

use std::{collections::HashMap, process::Command, time::Duration};

use nstrail::event::{CreateVia, Event, EventBody, Netns};
use nstrail_tests::{field, run_ok, NamedNetns, NetnsIdentity, TestAgent};

const WAIT: Duration = Duration::from_secs(20);
/// How long to keep listening for stray or duplicate events after the expected ones.
const SETTLE: Duration = Duration::from_millis(700);

fn helper() -> &'static str {
    env!("CARGO_BIN_EXE_netns-helper")
}

fn netns(identity: NetnsIdentity) -> Netns {
    Netns::new(identity.inode, identity.id)
}

/// The one create event made by `pid`; panics unless there is exactly one.
fn only_create_by(agent: &TestAgent, pid: u32) -> Event {
    let creates: Vec<_> = agent.log.by_pid(pid).into_iter().filter(|e| e.body.type_name() == "netns_create").collect();
    assert_eq!(creates.len(), 1, "expected one netns_create by pid {pid}; events:\n{}", agent.log.dump());
    creates[0].clone()
}

fn created_netns(event: &Event) -> Netns {
    event.body.netns().cloned().expect("create has a netns")
}

/// Waits for the destroy of `id`, then checks the namespace's whole history
/// is exactly `expected_types` (in order) and ends with one kernel-worker destroy.
fn assert_history(agent: &mut TestAgent, id: u64, expected_types: &[&str]) {
    agent.wait_until(WAIT, &format!("netns_destroy of id {id}"), |log| log.destroyed(id) >= 1);
    agent.settle(SETTLE);
    let history: Vec<&str> = agent.log.touching(id).iter().map(|e| e.body.type_name()).collect();
    assert_eq!(history, expected_types, "history of netns id {id}:\n{}", agent.log.dump());
    let destroy = agent.log.touching(id).into_iter().last().expect("destroy").clone();
    let EventBody::NetnsDestroy { actor, .. } = &destroy.body else { unreachable!() };
    assert!(actor.comm.starts_with("kworker"), "netns cleanup runs in a kernel worker: {actor:?}");
}

#[test]
fn unshare_n_true_creates_then_destroys() {
    let host = NetnsIdentity::of_self();
    let mut agent = TestAgent::start();
    let ran = run_ok("unshare", &["-n", "true"]);
    agent.wait_until(WAIT, "netns_create by unshare", |log| !log.by_pid(ran.pid).is_empty());

    let create = only_create_by(&agent, ran.pid);
    let EventBody::NetnsCreate { actor, parent_netns, via, child, .. } = &create.body else { unreachable!() };
    assert_eq!(actor.comm, "unshare");
    assert_eq!((actor.pid, actor.tid, actor.ppid, actor.uid), (ran.pid, ran.pid, std::process::id(), 0));
    assert_eq!(*via, CreateVia::Unshare);
    assert_eq!(*child, None);
    assert_eq!(parent_netns.clone(), netns(host));
    let id = created_netns(&create).id;
    assert_ne!(id, host.id);
    assert_history(&mut agent, id, &["netns_create", "netns_destroy"]);
    assert_eq!(agent.log.by_pid(ran.pid).len(), 1, "unshare -n true makes one event of its own");
}

#[test]
fn unshare_n_sleep_reports_the_inode_readlink_shows() {
    let host = NetnsIdentity::of_self();
    let mut agent = TestAgent::start();
    let mut sleeper = Command::new("unshare").args(["-n", "sleep", "1"]).spawn().expect("start unshare");
    let pid = sleeper.id();
    agent.wait_until(WAIT, "netns_create by unshare", |log| !log.by_pid(pid).is_empty());
    // The create is emitted when unshare(2) returns, so the process is in it now.
    let live = NetnsIdentity::of_pid(pid);
    assert_eq!(NetnsIdentity::readlink_inode(pid), live.inode);
    sleeper.wait().expect("sleep ends");

    let create = only_create_by(&agent, pid);
    assert_eq!(created_netns(&create), netns(live));
    let EventBody::NetnsCreate { parent_netns, actor, .. } = &create.body else { unreachable!() };
    assert_eq!(parent_netns.clone(), netns(host));
    assert_eq!(actor.comm, "unshare");
    assert_history(&mut agent, live.id, &["netns_create", "netns_destroy"]);
}

#[test]
fn ip_netns_add_and_del() {
    let host = NetnsIdentity::of_self();
    let mut agent = TestAgent::start();
    let (mut ns, add) = NamedNetns::add("add");
    let named = ns.identity();
    agent.wait_until(WAIT, "ip netns add events", |log| log.by_pid(add.pid).len() >= 2);

    // ip unshares into the new namespace, bind-mounts it, and setns back.
    let by_ip = agent.log.by_pid(add.pid);
    let types: Vec<_> = by_ip.iter().map(|e| e.body.type_name()).collect();
    assert_eq!(types, ["netns_create", "netns_enter"], "{}", agent.log.dump());
    let EventBody::NetnsCreate { netns: created, parent_netns, via, actor, .. } = &by_ip[0].body else {
        unreachable!()
    };
    assert_eq!((created.clone(), parent_netns.clone(), *via), (netns(named), netns(host), CreateVia::Unshare));
    assert_eq!(actor.comm, "ip");
    let EventBody::NetnsEnter { netns: entered, from_netns, .. } = &by_ip[1].body else { unreachable!() };
    assert_eq!((entered.clone(), from_netns.clone()), (netns(host), netns(named)));
    // The create came before the mount: the name follows in a record of its
    // own, from the rescan the mount sets off (at no fixed place after the create).
    let create_seq = by_ip[0].seq;
    agent.wait_until(WAIT, "netns_identified", |log| {
        log.of_type("netns_identified").any(|e| e.body.netns() == Some(&netns(named)))
    });

    let del = ns.delete();
    agent.wait_until(WAIT, "the destroy", |log| log.destroyed(named.id) >= 1);
    agent.settle(SETTLE);
    let (identified, history): (Vec<&Event>, Vec<&Event>) =
        agent.log.touching(named.id).into_iter().partition(|e| e.body.type_name() == "netns_identified");
    let types: Vec<&str> = history.iter().map(|e| e.body.type_name()).collect();
    assert_eq!(types, ["netns_create", "netns_enter", "netns_destroy"], "{}", agent.log.dump());
    assert_eq!(identified.len(), 1, "named once: {}", agent.log.dump());
    let EventBody::NetnsIdentified { netns: labelled, names } = &identified[0].body else { unreachable!() };
    assert_eq!((names.clone(), labelled.name.clone()), (vec![ns.name.clone()], Some(ns.name.clone())));
    assert!(identified[0].seq > create_seq, "after the create");
    let EventBody::NetnsDestroy { netns: destroyed, .. } = &history[2].body else { unreachable!() };
    assert_eq!(destroyed.name.as_ref(), Some(&ns.name), "the destroy keeps the name");
    assert!(agent.log.by_pid(del.pid).is_empty(), "ip netns del itself makes no netns event");
}

fn clone_helper_creates(mode: &str, expected_via: CreateVia) {
    let host = NetnsIdentity::of_self();
    let mut agent = TestAgent::start();
    let ran = run_ok(helper(), &[mode]);
    let (pid, child, inode, id) = (
        field(&ran.stdout, "pid") as u32,
        field(&ran.stdout, "child") as u32,
        field(&ran.stdout, "inode") as u32,
        field(&ran.stdout, "id"),
    );
    assert_eq!(pid, ran.pid);
    agent.wait_until(WAIT, "netns_create by the helper", |log| !log.by_pid(pid).is_empty());

    let create = only_create_by(&agent, pid);
    let EventBody::NetnsCreate { netns: created, parent_netns, via, actor, child: new_task } = &create.body else {
        unreachable!()
    };
    assert_eq!(created.clone(), Netns::new(inode, id));
    assert_eq!(parent_netns.clone(), netns(host));
    assert_eq!(*via, expected_via);
    assert_eq!(actor.comm, "netns-helper");
    assert_eq!(new_task.map(|c| (c.pid, c.tid)), Some((child, child)));
    assert_history(&mut agent, id, &["netns_create", "netns_destroy"]);
}

#[test]
fn clone_with_clone_newnet() {
    clone_helper_creates("clone", CreateVia::Clone);
}

#[test]
fn clone3_with_clone_newnet() {
    clone_helper_creates("clone3", CreateVia::Clone3);
}

#[test]
fn nsenter_enters_a_named_namespace() {
    let host = NetnsIdentity::of_self();
    let (ns, _) = NamedNetns::add("nsenter");
    let named = ns.identity();
    let mut agent = TestAgent::start();
    let ran = run_ok("nsenter", &[&format!("--net={}", ns.path().display()), "true"]);
    agent.wait_until(WAIT, "netns_enter by nsenter", |log| !log.by_pid(ran.pid).is_empty());
    agent.settle(SETTLE);

    let by_nsenter = agent.log.by_pid(ran.pid);
    assert_eq!(by_nsenter.len(), 1, "{}", agent.log.dump());
    let EventBody::NetnsEnter { netns: entered, from_netns, actor } = &by_nsenter[0].body else {
        panic!("expected netns_enter: {:?}", by_nsenter[0])
    };
    assert_eq!((entered.clone(), from_netns.clone()), (netns(named), netns(host)));
    assert_eq!((actor.comm.as_str(), actor.tid), ("nsenter", ran.pid));
}

#[test]
fn ip_netns_exec_is_an_enter_not_a_create() {
    let host = NetnsIdentity::of_self();
    let (ns, _) = NamedNetns::add("exec");
    let named = ns.identity();
    let mut agent = TestAgent::start();
    let ran = run_ok("ip", &["netns", "exec", &ns.name, "true"]);
    agent.wait_until(WAIT, "netns_enter by ip netns exec", |log| !log.by_pid(ran.pid).is_empty());
    agent.settle(SETTLE);

    let by_ip = agent.log.by_pid(ran.pid);
    let types: Vec<_> = by_ip.iter().map(|e| e.body.type_name()).collect();
    assert_eq!(types, ["netns_enter"], "{}", agent.log.dump());
    let EventBody::NetnsEnter { netns: entered, from_netns, actor } = &by_ip[0].body else { unreachable!() };
    assert_eq!((entered.clone(), from_netns.clone()), (netns(named), netns(host)));
    assert_eq!(actor.comm, "ip");
    assert_eq!(agent.log.touching(named.id).len(), 1, "nothing else about the namespace");
}

#[test]
fn one_thread_of_a_process_enters_alone() {
    let host = NetnsIdentity::of_self();
    let (ns, _) = NamedNetns::add("thread");
    let named = ns.identity();
    let mut agent = TestAgent::start();
    let ran = run_ok(helper(), &["setns-thread", &ns.path().display().to_string()]);
    let (pid, tid) = (field(&ran.stdout, "pid") as u32, field(&ran.stdout, "tid") as u32);
    assert_ne!(pid, tid, "the switch happens on a second thread");
    assert_eq!(field(&ran.stdout, "id"), named.id, "the thread really is in the namespace");
    agent.wait_until(WAIT, "netns_enter by the helper thread", |log| !log.by_pid(pid).is_empty());
    agent.settle(SETTLE);

    let events = agent.log.by_pid(pid);
    assert_eq!(events.len(), 1, "{}", agent.log.dump());
    let EventBody::NetnsEnter { netns: entered, from_netns, actor } = &events[0].body else { unreachable!() };
    assert_eq!((entered.clone(), from_netns.clone()), (netns(named), netns(host)));
    assert_eq!((actor.pid, actor.tid), (pid, tid));
}

#[test]
fn an_open_fd_keeps_a_namespace_until_closed() {
    let mut agent = TestAgent::start();
    let mut sleeper = Command::new("unshare").args(["-n", "sleep", "30"]).spawn().expect("start unshare");
    let pid = sleeper.id();
    agent.wait_until(WAIT, "netns_create", |log| !log.by_pid(pid).is_empty());
    let identity = NetnsIdentity::of_pid(pid);
    let holder = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("open ns fd");
    sleeper.kill().expect("kill sleep");
    sleeper.wait().expect("reap sleep");

    agent.settle(Duration::from_millis(1500));
    assert_eq!(agent.log.destroyed(identity.id), 0, "an open fd keeps the namespace alive:\n{}", agent.log.dump());

    drop(holder);
    assert_history(&mut agent, identity.id, &["netns_create", "netns_destroy"]);
}

/// 200 namespaces made and destroyed back to back (50 under emulation).
#[test]
fn churn_of_many_namespaces_is_reported_exactly() {
    let count = nstrail_tests::scaled(200, 50);
    let mut agent = TestAgent::start();
    let ran = run_ok(helper(), &["churn", &count.to_string()]);
    assert_eq!(field(&ran.stdout, "created") as usize, count, "every unshare succeeded");
    let creates_of = |log: &nstrail_tests::EventLog| -> Vec<u64> {
        log.of_type("netns_create")
            .filter(|e| e.body.actor().is_some_and(|a| a.ppid == ran.pid))
            .filter_map(|e| e.body.netns().map(|n| n.id))
            .collect()
    };
    agent.wait_until(WAIT, "every create", |log| creates_of(log).len() >= count);
    agent.wait_until(Duration::from_secs(60), "every destroy", |log| {
        creates_of(log).iter().all(|id| log.destroyed(*id) >= 1)
    });
    agent.settle(Duration::from_secs(1));
    let summary = agent.stop();

    let created = creates_of(&agent.log);
    let mut per_id: HashMap<u64, usize> = HashMap::new();
    for id in &created {
        *per_id.entry(*id).or_default() += 1;
    }
    assert_eq!(created.len(), count, "exactly {count} creates");
    assert_eq!(per_id.len(), count, "{count} distinct namespaces, none doubled");
    for id in per_id.keys() {
        assert_eq!(agent.log.destroyed(*id), 1, "namespace {id} destroyed exactly once");
    }
    assert_eq!((summary.lost, agent.log.lost()), (0, 0), "no event lost");
    assert_eq!(summary.decode_errors, 0);
}
