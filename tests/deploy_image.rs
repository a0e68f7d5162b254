//! The OCI image, run by Docker with exactly the DaemonSet's host access
//! (deploy_support::daemonset), sees the host's namespaces, moves and
//! sysctl writes, and each of its capabilities is needed.
//!
//! The image comes from `cargo xtask dist` (target/dist), which `cargo
//! xtask test` runs first.

mod deploy_support;

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use deploy_support::{
    artefacts::{daemonset_capabilities, dist, VERSION},
    checked,
    daemonset::DaemonSetRun,
    http_get, Docker,
};
use nstrail_tests::{NamedNetns, NetnsIdentity, Scratch};

/// The agent's container, its stdout lines collected.
struct AgentContainer<'a> {
    docker: &'a Docker,
    name: String,
    child: std::process::Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl<'a> AgentContainer<'a> {
    fn start(docker: &'a Docker, image: &str, run: &DaemonSetRun, tag: &str) -> Self {
        let name = format!("nstrail-agent-{tag}-{}", std::process::id());
        let mut child = docker
            .command()
            .arg("run")
            .arg(format!("--name={name}"))
            .args(&run.args)
            .arg(image)
            .args(&run.command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker run");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sink, out) = (lines.clone(), child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(value);
                }
            }
        });
        let (sink, err) = (stderr.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        Self { docker, name, child, lines, stderr }
    }

    /// The agent_start record, or None when the agent exited first.
    fn started(&mut self) -> Option<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(start) = self.lines.lock().unwrap().iter().find(|l| l["type"] == "agent_start") {
                return Some(start.clone());
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(100));
                return None;
            }
            assert!(Instant::now() < deadline, "no agent_start: {}", self.stderr.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for(&self, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| done(l)) {
                return line.clone();
            }
            assert!(Instant::now() < deadline, "the agent in the container never reported {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) -> String {
        let _ = self.docker.output(&["stop", "-t", "30", &self.name]);
        let status = self.child.wait().expect("docker run exits");
        let stderr = self.stderr.lock().unwrap().clone();
        assert!(status.success(), "the agent stops cleanly on SIGTERM ({status}): {stderr}");
        stderr
    }
}

impl Drop for AgentContainer<'_> {
    fn drop(&mut self) {
        let _ = self.docker.output(&["rm", "-f", &self.name]);
        let _ = self.child.wait();
    }
}

fn ls(socket: &Path) -> Vec<serde_json::Value> {
    let mut cmd = Command::new(nstrail_tests::nstrail_binary());
    cmd.args(["ls", "--json", "--socket"]).arg(socket);
    let value: serde_json::Value = serde_json::from_str(&checked(cmd)).expect("ls JSON");
    value["namespaces"].as_array().cloned().unwrap_or_default()
}

/// A namespace only a process of another user is in, and one only a file
/// descriptor of another user's process holds: seeing them takes
/// CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH.
struct OtherUsersNamespaces {
    _member: nstrail_tests::Background,
    _holder: nstrail_tests::Background,
    pub member_inode: u32,
    pub held_inode: u32,
}

impl OtherUsersNamespaces {
    fn new() -> Self {
        let as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
        let (mut first, _) = NamedNetns::add("deploy-member");
        let member_inode = first.identity().inode;
        let mut args: Vec<&str> = vec!["netns", "exec", &first.name];
        args.extend(as_nobody);
        args.extend(["sh", "-c", "echo ready; exec cat"]);
        let member = nstrail_tests::Background::start("ip", &args);
        first.delete();
        let (mut second, _) = NamedNetns::add("deploy-held");
        let held_inode = second.identity().inode;
        let script = format!("exec 3<{}; echo ready; exec cat", second.path().display());
        let mut args: Vec<&str> = as_nobody[1..].to_vec();
        args.extend(["sh", "-c", &script]);
        let holder = nstrail_tests::Background::start("setpriv", &args);
        second.delete();
        Self { _member: member, _holder: holder, member_inode, held_inode }
    }
}

#[test]
fn the_image_with_exactly_the_daemonsets_access_sees_host_namespaces_moves_and_sysctls() {
    nstrail_tests::require_root();
    let started = Instant::now();
    let docker = Docker::start();
    let image = docker.load(&dist(&format!("nstrail-{VERSION}-image.tar")), &format!("nstrail:{VERSION}"));
    let state = Scratch::new("daemonset");
    let run = DaemonSetRun::from_manifest(&state.0, None);
    let others = OtherUsersNamespaces::new();
    let mut agent = AgentContainer::start(&docker, &image.name, &run, "full");
    let start = agent.started().unwrap_or_else(|| panic!("the agent exited: {}", agent.stderr.lock().unwrap()));
    let failed: Vec<_> = start["probes"].as_array().unwrap().iter().filter(|p| p["attached"] != true).collect();
    assert!(failed.is_empty(), "probes failed in the container: {failed:?}");
    assert!(start["sensors"].as_array().unwrap().iter().all(|s| s["state"] == "attached"), "{start}");

    // Exactly the manifest's privileges, no more.
    let inspect: serde_json::Value = serde_json::from_str(&docker.ok(&["inspect", &agent.name])).expect("inspect");
    let host_config = &inspect[0]["HostConfig"];
    assert_eq!(host_config["Privileged"], false);
    assert_eq!(host_config["CapDrop"], serde_json::json!(["ALL"]));
    let mut caps: Vec<String> = host_config["CapAdd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().trim_start_matches("CAP_").to_owned())
        .collect();
    caps.sort();
    let mut wanted: Vec<String> =
        daemonset_capabilities().iter().map(|c| c.trim_start_matches("CAP_").to_owned()).collect();
    wanted.sort();
    assert_eq!(caps, wanted);
    assert_eq!((host_config["NetworkMode"].as_str(), host_config["PidMode"].as_str()), (Some("host"), Some("host")));
    assert_eq!(host_config["ReadonlyRootfs"], true);

    // The host's namespaces: the host itself, and those only other users reach.
    let host = NetnsIdentity::of_self();
    let listed = ls(&run.socket);
    let record = |inode: u32| listed.iter().find(|r| r["inode"] == inode).cloned();
    let host_record = record(host.inode).expect("the host namespace is listed");
    assert_eq!(
        (host_record["host"].as_bool(), host_record["id"].as_u64()),
        (Some(true), Some(host.id)),
        "{host_record}"
    );
    assert!(host_record["processes"].as_u64() > Some(1));
    assert_eq!(
        record(others.member_inode).map(|r| r["processes"].clone()),
        Some(serde_json::json!(1)),
        "another user's process"
    );
    assert!(
        record(others.held_inode).is_some_and(|r| r["fds"].as_array().is_some_and(|f| !f.is_empty())),
        "another user's fd"
    );

    // A create, a move and a sysctl write on the host, with host pids.
    let (ns, added) = NamedNetns::add("deploy-ds");
    let identity = ns.identity();
    let create = agent.wait_for("the create", |l| l["type"] == "netns_create" && l["netns"]["id"] == identity.id);
    assert_eq!(
        (create["actor"]["pid"].as_u64(), create["actor"]["comm"].as_str()),
        (Some(u64::from(added.pid)), Some("ip"))
    );
    assert_eq!(create["parent_netns"]["id"], host.id);
    let veth = nstrail_tests::HostVeth::add();
    let moved = nstrail_tests::run_ok("ip", &["link", "set", &veth.peer, "netns", &ns.name]);
    let device_move =
        agent.wait_for("the move", |l| l["type"] == "device_move" && l["device"]["name"] == veth.peer.as_str());
    assert_eq!(device_move["to_netns"]["id"], identity.id);
    assert_eq!(device_move["from_netns"]["id"], host.id);
    assert_eq!(device_move["actor"]["pid"].as_u64(), Some(u64::from(moved.pid)));
    let wrote = nstrail_tests::run_ok(
        "ip",
        &["netns", "exec", &ns.name, "sysctl", "-q", "-w", "net.ipv4.tcp_keepalive_time=613"],
    );
    let write = agent.wait_for("the sysctl write", |l| l["type"] == "sysctl_write" && l["new"] == "613");
    assert_eq!((write["old"].as_str(), write["result"].as_str()), (Some("7200"), Some("applied")), "{write}");
    assert_eq!(write["netns"]["id"], identity.id);
    assert_eq!(write["actor"]["pid"].as_u64(), Some(u64::from(wrote.pid)), "ip netns exec execs sysctl: the host pid");
    assert!(write["tcp_sockets_in_use"].is_u64(), "read in the namespace through /run/netns: {write}");
    let metrics = http_get(run.metrics_port, "/metrics").expect("metrics served on the host network");
    assert!(metrics.contains("nstrail_netns_created_total{via=\"unshare\"}"), "{metrics}");
    drop(veth);
    drop(ns);
    agent.wait_for("the destroy", |l| l["type"] == "netns_destroy" && l["netns"]["id"] == identity.id);
    let log = agent.stop();
    assert!(log.contains("probes attached; streaming events"), "{log}");
    drop(others);
    eprintln!("deploy: image under docker took {:?}", started.elapsed());
}

/// What goes missing without one capability, on this kernel.
#[test]
fn each_capability_of_the_daemonset_is_needed() {
    nstrail_tests::require_root();
    let started = Instant::now();
    let docker = Docker::start();
    let image = docker.load(&dist(&format!("nstrail-{VERSION}-image.tar")), &format!("nstrail:{VERSION}"));
    let others = OtherUsersNamespaces::new();
    let read = |path: &str| std::fs::read_to_string(path).ok().and_then(|v| v.trim().parse::<i64>().ok()).unwrap_or(0);
    // kallsyms shows addresses without CAP_SYSLOG only with kptr_restrict 0 and perf_event_paranoid <= 1.
    let syslog_needed = read("/proc/sys/kernel/kptr_restrict") > 0 || read("/proc/sys/kernel/perf_event_paranoid") > 1;
    for cap in ["SYS_ADMIN", "NET_ADMIN", "NET_BROADCAST", "SYS_PTRACE", "DAC_READ_SEARCH", "SYSLOG"] {
        let state = Scratch::new(&format!("cap-{}", cap.to_lowercase()));
        let run = DaemonSetRun::from_manifest(&state.0, Some(cap));
        let mut agent = AgentContainer::start(&docker, &image.name, &run, &cap.to_lowercase());
        let start = agent.started();
        let stderr = || agent.stderr.lock().unwrap().clone();
        match cap {
            "SYS_ADMIN" => assert!(start.is_none(), "without {cap} the agent cannot load its programs: {start:?}"),
            "SYSLOG" if syslog_needed => {
                assert!(start.is_none() && stderr().contains("/proc/kallsyms hides addresses"), "{}", stderr())
            }
            "SYSLOG" => assert!(start.is_some()),
            "NET_BROADCAST" => {
                // Only the rtnetlink backend (kernels without fentry or
                // kprobes) listens to other namespaces' notifications.
                let start = start.expect("starts");
                let device =
                    start["sensors"].as_array().unwrap().iter().find(|s| s["sensor"] == "device_move").cloned();
                let device = device.expect("device_move sensor");
                assert!(device["state"] != "attached" || device["backend"] != "rtnetlink", "without {cap}: {device}");
            }
            "NET_ADMIN" => {
                // The agent's own word counts: another agent on this host
                // (this file's run one at a time, other test binaries' before
                // or after it; other checkouts' tests may not) can give a new
                // namespace its nsid first, and then this one has nothing to
                // ask. A few namespaces, so one of them is the agent's to
                // number.
                start.expect("starts");
                let refused = |log: &str| log.contains("an nsid (Operation not permitted");
                for attempt in 0..5 {
                    let (ns, _) = NamedNetns::add(&format!("deploy-nsid{attempt}"));
                    let id = ns.identity().id;
                    agent.wait_for("the create", |l| l["type"] == "netns_create" && l["netns"]["id"] == id);
                    std::thread::sleep(Duration::from_millis(300));
                    drop(ns);
                    if refused(&stderr()) {
                        break;
                    }
                }
                let log = stderr();
                assert!(refused(&log), "without {cap}: {log}");
            }
            "SYS_PTRACE" | "DAC_READ_SEARCH" => {
                start.expect("starts");
                std::thread::sleep(Duration::from_millis(300));
                let listed = ls(&run.socket);
                let (inode, what) = if cap == "SYS_PTRACE" {
                    (others.member_inode, "a namespace only another user's process is in")
                } else {
                    (others.held_inode, "a namespace only another user's fd holds")
                };
                let seen = listed.iter().find(|r| r["inode"] == inode);
                let complete =
                    seen.is_some_and(|r| r["processes"] == 1 || r["fds"].as_array().is_some_and(|f| !f.is_empty()));
                assert!(!complete, "without {cap}: {what} should be out of reach: {seen:?}");
            }
            _ => unreachable!(),
        }
        drop(agent);
    }
    drop(others);
    eprintln!("deploy: capability runs took {:?}", started.elapsed());
}
