//! The namespace inventory against the real system: what lsns sees, fd-held
//! and bind-mounted namespaces, a real runc container, the agent's view as
//! namespaces come and go, and a thousand live namespaces.

use std::{
    collections::BTreeSet,
    os::fd::AsRawFd,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use nstrail::{
    event::CreateVia,
    inventory::{devices, scan, Inventory, NetnsRecord},
};
use nstrail_tests::{field, run, run_ok, Background, NamedNetns, NetnsIdentity, TestAgent};

fn helper() -> &'static str {
    env!("CARGO_BIN_EXE_netns-helper")
}

fn offline() -> Vec<NetnsRecord> {
    let mut scan = scan::scan();
    scan::with_devices(&mut scan, &Default::default());
    Inventory::from_scan(&scan).live_records(&scan)
}

/// A veth pair with one end moved into a namespace; deleted on drop.
struct Veth(String);

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// Inodes of the network namespaces `lsns -t net` lists.
fn lsns_inodes() -> BTreeSet<u32> {
    let out = run_ok("lsns", &["-t", "net", "-J", "-o", "NS"]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("lsns JSON");
    json["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .map(|n| n["ns"].as_u64().or_else(|| n["ns"].as_str().and_then(|s| s.parse().ok())).expect("ns") as u32)
        .collect()
}

#[test]
fn offline_inventory_covers_lsns_and_fd_held_namespaces() {
    nstrail_tests::require_root();
    // A namespace that only an fd of a process in another namespace keeps alive.
    let (mut held, _) = NamedNetns::add("held");
    let held_id = held.identity();
    let (other, _) = NamedNetns::add("other");
    let veth = Veth(format!("nst{}a", std::process::id() % 100000));
    let peer = format!("nst{}b", std::process::id() % 100000);
    run_ok("ip", &["link", "add", &veth.0, "type", "veth", "peer", "name", &peer, "netns", &other.name]);
    let path = held.path().display().to_string();
    let holder = Background::start("ip", &["netns", "exec", &other.name, helper(), "hold-fd", &path]);
    let (holder_pid, holder_fd) = (field(&holder.first_line, "pid") as u32, field(&holder.first_line, "fd") as u32);
    held.delete(); // unmount and unlink: now only the fd holds it

    let before = lsns_inodes();
    let records = offline();
    let after = lsns_inodes();
    let ours: BTreeSet<u32> = records.iter().map(|r| r.inode).collect();
    for inode in before.intersection(&after) {
        assert!(ours.contains(inode), "lsns lists {inode}, the inventory does not");
    }
    let record = records.iter().find(|r| r.id == Some(held_id.id)).expect("fd-held namespace listed");
    assert_eq!(record.inode, held_id.inode);
    assert_eq!((record.processes, record.mounts.len()), (0, 0));
    assert_eq!(record.fds, [(holder_pid, holder_fd)]);
    assert!(!record.host);

    let named = records.iter().find(|r| r.id == Some(other.identity().id)).expect("named namespace");
    assert_eq!(named.names, std::slice::from_ref(&other.name));
    assert_eq!(named.mounts, [other.path().display().to_string()]);
    assert_eq!(named.processes, 1, "the holder process runs in it");
    let devices: Vec<_> = named.devices.iter().map(|d| (d.name.as_str(), d.kind.as_deref())).collect();
    assert_eq!(devices, [("lo", None), (peer.as_str(), Some("veth"))]);
    assert_eq!(named.devices[0].ifindex, 1);
    let host = records.iter().filter(|r| r.host).collect::<Vec<_>>();
    assert_eq!(host.len(), 1);
    // pid 1's namespace, or ours where a sandbox hides pid 1's.
    let expected_host = std::fs::read_link("/proc/1/ns/net")
        .map(|_| NetnsIdentity::readlink_inode(1))
        .unwrap_or_else(|_| NetnsIdentity::readlink_inode(std::process::id()));
    assert_eq!(host[0].inode, expected_host);
    assert!(records.iter().all(|r| r.seen_at_start && r.created.is_none()), "offline: creation unknown");
}

/// A runc container from a busybox rootfs, deleted on drop.
struct RuncContainer {
    id: String,
    bundle: std::path::PathBuf,
}

impl RuncContainer {
    fn start() -> Self {
        Self::start_in(None, "test")
    }

    /// With `netns`: the container joins that network namespace (as docker
    /// and CRI runtimes hand runc a bind-mounted one).
    fn start_in(netns: Option<&Path>, tag: &str) -> Self {
        let id = format!("nstrail-{tag}-{}", std::process::id());
        let bundle = std::env::temp_dir().join(&id);
        let rootfs = bundle.join("rootfs/bin");
        std::fs::create_dir_all(&rootfs).expect("rootfs");
        std::fs::copy("/bin/busybox", rootfs.join("busybox")).expect("copy busybox");
        for applet in ["sh", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join(applet)).expect("applet link");
        }
        let container = Self { id, bundle };
        run_ok("runc", &["spec", "--bundle", &container.bundle.display().to_string()]);
        let config_path = container.bundle.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).expect("config")).expect("json");
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = serde_json::json!(["sleep", "60"]);
        if let Some(path) = netns {
            let namespaces = config["linux"]["namespaces"].as_array_mut().expect("namespaces");
            namespaces.retain(|n| n["type"] != "network");
            namespaces.push(serde_json::json!({"type": "network", "path": path}));
        }
        std::fs::write(&config_path, config.to_string()).expect("write config");
        // The container keeps its stdio: give it none of ours, or reading our
        // pipe to its end would wait for the container to exit.
        let status = Command::new("runc")
            .args(["run", "-d", "--bundle", &container.bundle.display().to_string(), &container.id])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("start runc");
        assert!(status.success(), "runc run failed");
        container
    }

    fn pid(&self) -> u32 {
        let state = run_ok("runc", &["state", &self.id]);
        let json: serde_json::Value = serde_json::from_str(&state.stdout).expect("state");
        json["pid"].as_u64().expect("pid") as u32
    }
}

impl Drop for RuncContainer {
    fn drop(&mut self) {
        let _ = Command::new("runc").args(["delete", "-f", &self.id]).status();
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

/// Docker's teardown: the container's processes go, then its devices leave
/// the namespace, then the bind mount goes and the namespace with it. The
/// container's label stays on those events, though no process is left.
#[test]
fn labels_stay_on_a_namespaces_teardown_events() {
    let (mut ns, _) = NamedNetns::add("teardown");
    let id = ns.identity();
    let veth = Veth(format!("ntd{}a", std::process::id() % 100000));
    let inside = format!("ntd{}b", std::process::id() % 100000);
    run_ok("ip", &["link", "add", &veth.0, "type", "veth", "peer", "name", &inside, "netns", &ns.name]);
    let mut agent = TestAgent::start();
    let container = RuncContainer::start_in(Some(&ns.path()), "teardown");
    let inventory = agent.inventory();
    let deadline = Instant::now() + Duration::from_secs(10);
    while inventory.lock().unwrap().labels(id.id).is_none_or(|l| l.containers.is_empty()) {
        assert!(Instant::now() < deadline, "the agent never saw the container");
        std::thread::sleep(Duration::from_millis(50));
    }
    let container_id = container.id.clone();
    drop(container);
    // Rescans run every 2 s: the next ones see the namespace without it.
    std::thread::sleep(Duration::from_millis(4500));
    let moved = run_ok("ip", &["-n", &ns.name, "link", "set", &inside, "netns", "1"]);
    let _ = run("ip", &["link", "del", &inside]);
    ns.delete();
    agent.wait_until(Duration::from_secs(20), "the move home and the destroy", |log| {
        !log.by_pid_of_type(moved.pid, "device_move").is_empty() && log.destroyed(id.id) == 1
    });
    let labelled = |netns: Option<&nstrail::event::Netns>| {
        netns.is_some_and(|n| n.containers.iter().any(|c| c.runtime == "runc" && c.id == container_id))
    };
    let moved_event = agent.log.by_pid_of_type(moved.pid, "device_move")[0].clone();
    let nstrail::event::EventBody::DeviceMove { from_netns, .. } = &moved_event.body else { unreachable!() };
    assert!(labelled(from_netns.as_ref()), "the move out carries the container: {moved_event:?}");
    let destroy = agent.log.of_type("netns_destroy").find(|e| e.body.netns().is_some_and(|n| n.id == id.id)).cloned();
    let destroy = destroy.expect("destroyed");
    assert!(labelled(destroy.body.netns()), "the destroy carries the container: {destroy:?}");
    assert_eq!(destroy.body.netns().and_then(|n| n.name.clone()), Some(ns.name.clone()), "and the name");
}

#[test]
fn a_runc_container_is_attributed() {
    nstrail_tests::require_root();
    let container = RuncContainer::start();
    let pid = container.pid();
    let netns = NetnsIdentity::of_pid(pid);
    let records = offline();
    let record = records.iter().find(|r| r.id == Some(netns.id)).expect("container namespace listed");
    assert_eq!(record.processes, 1);
    assert_eq!(record.containers.len(), 1);
    assert_eq!(
        (record.containers[0].runtime.as_str(), record.containers[0].id.as_str()),
        ("runc", container.id.as_str())
    );
    assert!(!record.host);
}

#[test]
fn the_agent_tracks_namespaces_as_they_come_and_go() {
    let mut agent = TestAgent::start();
    let inventory = agent.inventory();
    let (mut ns, add) = NamedNetns::add("inv");
    let id = ns.identity();
    run_ok("ip", &["netns", "exec", &ns.name, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    agent.wait_until(Duration::from_secs(20), "the sysctl write", |log| {
        log.of_type("sysctl_write").any(|e| e.body.netns().is_some_and(|n| n.id == id.id))
    });

    let live = inventory.lock().unwrap().live_records(&scan::scan());
    assert_eq!(live.iter().filter(|r| r.host).count(), 1);
    let record = live.iter().find(|r| r.id == Some(id.id)).expect("new namespace listed");
    assert_eq!(record.names, [ns.name.clone()]);
    assert!(!record.seen_at_start);
    let created = record.created.as_ref().expect("creation seen");
    assert_eq!((created.via, created.actor.comm.as_str(), created.actor.pid), (CreateVia::Unshare, "ip", add.pid));
    // The enter by `ip netns exec` (which then became sysctl): exactly one.
    // Others may enter too (a concurrent `nstrail ls` lists devices from inside).
    let log = &agent.log;
    let writer = log
        .of_type("sysctl_write")
        .find(|e| e.body.netns().is_some_and(|n| n.id == id.id))
        .and_then(|e| e.body.actor())
        .expect("the write's actor")
        .pid;
    let enters_by_ip = log
        .by_pid_of_type(writer, "netns_enter")
        .into_iter()
        .filter(|e| e.body.netns().is_some_and(|n| n.id == id.id))
        .count();
    assert_eq!(enters_by_ip, 1, "ip netns exec entered it once");
    let enters_seen = log.of_type("netns_enter").filter(|e| e.body.netns().is_some_and(|n| n.id == id.id)).count();
    assert!(record.enters >= 1 && record.enters as usize <= enters_seen + 8, "{} enters counted", record.enters);
    assert_eq!(record.sysctl_overrides.get("net.ipv4.ip_forward").map(String::as_str), Some("1"));

    ns.delete();
    agent.wait_until(Duration::from_secs(20), "the destroy", |log| log.destroyed(id.id) == 1);
    let mut inventory = inventory.lock().unwrap();
    assert!(inventory.live_records(&scan::scan()).iter().all(|r| r.id != Some(id.id)), "dropped once destroyed");
    let gone = inventory.destroyed_records().into_iter().find(|r| r.id == Some(id.id)).expect("kept as destroyed");
    assert!(gone.destroyed.is_some());
    assert_eq!(gone.names, [ns.name.clone()], "its name is remembered");
}

#[test]
fn a_thousand_live_namespaces_are_all_listed() {
    nstrail_tests::require_root();
    let holder = Background::start(helper(), &["hold-many", "1000"]);
    assert_eq!(field(&holder.first_line, "held"), 1000);
    let start = Instant::now();
    let records = offline();
    eprintln!("offline inventory of {} namespaces took {:?}", records.len(), start.elapsed());
    let held: Vec<_> =
        records.iter().filter(|r| r.processes == 0 && r.fds.iter().any(|(pid, _)| *pid == holder.pid())).collect();
    assert_eq!(held.len(), 1000);
    let ids: BTreeSet<_> = held.iter().map(|r| r.id.expect("id")).collect();
    assert_eq!(ids.len(), 1000, "each is a distinct namespace");
    // Each is held by exactly one of the holder's fds (a concurrent scanner's
    // passing look-ups may show up beside it).
    assert!(held.iter().all(|r| r.fds.iter().filter(|(pid, _)| *pid == holder.pid()).count() == 1));
    assert!(Path::new(&format!("/proc/{}", holder.pid())).exists());
}

#[test]
fn events_carry_the_names_and_containers_of_their_namespaces() {
    let container = RuncContainer::start();
    let (ns, _) = NamedNetns::add("label");
    let id = ns.identity();
    let container_netns = NetnsIdentity::of_pid(container.pid());
    let mut agent = TestAgent::start();
    let inventory = agent.inventory();
    // The agent learns names from the mount table and containers from /proc.
    let deadline = Instant::now() + Duration::from_secs(10);
    while inventory.lock().unwrap().labels(id.id).is_none_or(|l| l.names.is_empty()) {
        assert!(Instant::now() < deadline, "the agent never learned the name");
        std::thread::sleep(Duration::from_millis(50));
    }

    let exec = run_ok("ip", &["netns", "exec", &ns.name, "true"]);
    let path = format!("--net=/proc/{}/ns/net", container.pid());
    let enter = run_ok("nsenter", &[&path, "true"]);
    agent.wait_until(Duration::from_secs(20), "both enters", |log| {
        !log.by_pid(exec.pid).is_empty() && !log.by_pid(enter.pid).is_empty()
    });
    let into_named = agent.log.by_pid(exec.pid)[0].body.netns().cloned().expect("netns");
    assert_eq!((into_named.id, into_named.name.as_deref()), (id.id, Some(ns.name.as_str())));
    assert!(into_named.containers.is_empty());
    let into_container = agent.log.by_pid(enter.pid)[0].body.netns().cloned().expect("netns");
    assert_eq!(into_container.id, container_netns.id);
    assert_eq!(into_container.name, None);
    let runtimes: Vec<_> = into_container.containers.iter().map(|c| (c.runtime.as_str(), c.id.as_str())).collect();
    assert_eq!(runtimes, [("runc", container.id.as_str())]);
}

#[test]
fn devices_listed_by_nsid_are_those_seen_from_inside() {
    nstrail_tests::require_root();
    let (ns, _) = NamedNetns::add("nsid");
    // Both ends inside (a peer outside would make the kernel give the namespace an nsid).
    run_ok("ip", &["netns", "exec", &ns.name, "ip", "link", "add", "nstin0", "type", "veth", "peer", "name", "nstin1"]);
    let file = std::fs::File::open(ns.path()).unwrap();
    let mut lister = devices::Lister::new();
    assert!(lister.by_nsid(&file).is_none(), "a fresh namespace has no nsid here");
    let inside = devices::from_inside(&file).unwrap();
    let names: Vec<_> = inside.iter().map(|d| (d.name.as_str(), d.kind.as_deref())).collect();
    assert_eq!(names, [("lo", None), ("nstin1", Some("veth")), ("nstin0", Some("veth"))]);

    nstrail::sys::rtnetlink::Requests::open().unwrap().ensure_nsid(file.as_raw_fd()).unwrap();
    let by_nsid = lister.by_nsid(&file).expect("an nsid now").unwrap();
    assert_eq!(by_nsid, inside);
    // And list() takes that way, with the namespace checked by inode.
    assert_eq!(lister.list(&ns.path(), ns.identity().inode, None).unwrap(), inside);
    assert!(lister.list(&ns.path(), ns.identity().inode.wrapping_add(1), None).is_err());
}
