//! Real Docker (Debian's docker.io) under the real agent: the issue's own
//! example. `docker run --sysctl`, `docker exec`, `docker network connect`
//! and `docker rm -f`, each seen exactly as it happens.

mod deploy_support;

use std::time::{Duration, Instant};

use deploy_support::Docker;
use nstrail_tests::{names_netns, NetnsIdentity, RunningAgent};

#[test]
fn docker_run_exec_network_connect_and_rm_are_seen_exactly() {
    nstrail_tests::require_root();
    let started = Instant::now();
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("ip_forward");
    let docker = Docker::start();
    eprintln!("docker: daemon ready after {:?} (started here: {})", started.elapsed(), docker.is_own());
    let image = docker.busybox_image();
    let first = docker.network("a");
    let second = docker.network("b");
    let container = docker.container("ct");
    let host = NetnsIdentity::of_self();
    let socket = std::env::temp_dir().join(format!("nstrail-docker-{}.sock", std::process::id()));
    let agent = RunningAgent::start(&socket);

    let id = docker.ok(&[
        "run",
        "-d",
        "--name",
        &container.name,
        "--network",
        &first.name,
        "--sysctl",
        "net.ipv4.tcp_keepalive_time=600",
        &image.name,
        "sleep",
        "600",
    ]);
    assert_eq!(id.len(), 64, "container id: {id}");
    let pid: u32 = docker.ok(&["inspect", "-f", "{{.State.Pid}}", &container.name]).parse().expect("pid");
    let netns = NetnsIdentity::of_pid(pid);
    assert_ne!(netns, host);
    agent.wait_for("the container's first veth", |lines| {
        lines.iter().any(|l| l["type"] == "device_move" && names_netns(l, "to_netns", netns.id))
    });
    // `nstrail ls` names the container (the inventory re-reads containers
    // every 2 s); from then on every event about the namespace carries it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = std::process::Command::new(nstrail_tests::nstrail_binary())
            .args(["ls", "--json", "--socket"])
            .arg(&socket)
            .output()
            .expect("nstrail ls");
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ls JSON");
        let record = listed["namespaces"].as_array().and_then(|n| n.iter().find(|r| r["id"] == netns.id).cloned());
        let named = record.as_ref().is_some_and(|r| {
            r["containers"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["runtime"] == "docker" && c["id"] == id.as_str()))
        });
        if named {
            break;
        }
        assert!(Instant::now() < deadline, "nstrail ls never named container {id}: {record:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The stream says so too, in a record of its own (the agent's next rescan).
    agent.wait_for("netns_identified with the container", |lines| {
        lines.iter().any(|l| {
            l["type"] == "netns_identified"
                && names_netns(l, "netns", netns.id)
                && l["netns"]["containers"].as_array().is_some_and(|c| c.iter().any(|c| c["id"] == id.as_str()))
        })
    });
    docker.ok(&["exec", &container.name, "true"]);
    docker.ok(&["network", "connect", &second.name, &container.name]);
    agent.wait_for("the second network's veth", |lines| {
        lines.iter().filter(|l| l["type"] == "device_move" && names_netns(l, "to_netns", netns.id)).count() == 2
    });
    docker.ok(&["rm", "-f", &container.name]);
    agent.wait_for("the container's namespace destroyed", |lines| {
        lines.iter().any(|l| l["type"] == "netns_destroy" && names_netns(l, "netns", netns.id))
    });
    // Anything late or duplicated shows up now.
    std::thread::sleep(Duration::from_millis(500));
    let lines = agent.stop();
    let about: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| ["netns", "to_netns", "from_netns"].iter().any(|k| names_netns(l, k, netns.id)))
        .collect();
    let dump = || about.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n");
    let of_type = |t: &str| about.iter().copied().filter(|l| l["type"] == t).collect::<Vec<_>>();
    let is_this_container = |ns: &serde_json::Value| {
        ns["containers"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["runtime"] == "docker" && c["id"] == id.as_str()))
    };

    // The create: runc's child unshares the container's namespace.
    let creates = of_type("netns_create");
    assert_eq!(creates.len(), 1, "{}", dump());
    let create = creates[0];
    assert_eq!(create["via"], "unshare");
    assert_eq!(create["actor"]["comm"], "runc:[1:CHILD]");
    assert_eq!(create["netns"]["inode"], netns.inode);
    assert_eq!(create["parent_netns"]["id"], host.id);

    // --sysctl: written by runc's init inside the new namespace, with its old value.
    let keepalive: Vec<_> =
        of_type("sysctl_write").into_iter().filter(|l| l["sysctl"] == "net.ipv4.tcp_keepalive_time").collect();
    assert_eq!(keepalive.len(), 1, "{}", dump());
    let write = keepalive[0];
    assert_eq!((write["old"].as_str(), write["new"].as_str()), (Some("7200"), Some("600")));
    assert_eq!(write["result"], "applied");
    assert_eq!(write["actor"]["comm"], "runc:[2:INIT]");

    // The container's interfaces: dockerd moves one veth end in for `run`
    // and one for `network connect`, and both back out on `rm -f`.
    let dockerd = |l: &&serde_json::Value| l["actor"]["comm"] == "dockerd";
    let moves = of_type("device_move");
    let moved_in: Vec<_> = moves.iter().filter(|l| names_netns(l, "to_netns", netns.id)).collect();
    let moved_out: Vec<_> = moves.iter().filter(|l| names_netns(l, "from_netns", netns.id)).collect();
    assert_eq!((moved_in.len(), moved_out.len()), (2, 2), "{}", dump());
    for m in &moved_in {
        assert!(dockerd(m) && m["device"]["kind"] == "veth" && names_netns(m, "from_netns", host.id), "{m}");
    }
    for m in &moved_out {
        assert!(dockerd(m) && m["device"]["kind"] == "veth" && names_netns(m, "to_netns", host.id), "{m}");
    }
    let mut names_in: Vec<_> = moved_in.iter().map(|m| m["device"]["name"].clone()).collect();
    let mut names_out: Vec<_> = moved_out.iter().map(|m| m["device"]["name"].clone()).collect();
    names_in.sort_by_key(|v| v.to_string());
    names_out.sort_by_key(|v| v.to_string());
    assert_eq!(names_in, names_out, "the same two devices come back");

    // docker exec: runc's child joins the namespace (one setns, by a new runc).
    let exec_enters: Vec<_> = of_type("netns_enter")
        .into_iter()
        .filter(|l| l["actor"]["comm"] == "runc:[1:CHILD]" && names_netns(l, "netns", netns.id))
        .collect();
    assert_eq!(exec_enters.len(), 1, "{}", dump());
    assert_ne!(exec_enters[0]["actor"]["pid"], create["actor"]["pid"]);
    assert!(is_this_container(&exec_enters[0]["netns"]));

    // In order: create, sysctl, first move, exec, second move, moves out, destroy.
    let seq = |l: &serde_json::Value| l["seq"].as_u64().expect("seq");
    let (first_in, second_in) = (seq(moved_in[0]).min(seq(moved_in[1])), seq(moved_in[0]).max(seq(moved_in[1])));
    assert!(seq(create) < first_in && seq(exec_enters[0]) < second_in, "{}", dump());
    let connected = moved_in.iter().find(|m| seq(m) == second_in).expect("second move");
    assert!(is_this_container(&connected["to_netns"]), "{connected}");
    let destroys = of_type("netns_destroy");
    assert_eq!(destroys.len(), 1, "destroyed exactly once: {}", dump());
    assert!(moved_out.iter().all(|m| seq(m) < seq(destroys[0])));
    // Teardown events keep the container's id after its processes are gone.
    assert!(is_this_container(&destroys[0]["netns"]), "{}", destroys[0]);
    for m in &moved_out {
        assert!(is_this_container(&m["from_netns"]), "{m}");
    }
    assert!(destroys[0]["actor"]["comm"].as_str().is_some_and(|c| c.starts_with("kworker")), "{}", destroys[0]);
    // The create came before docker's bind mount and the container's
    // process: netns_identified ties it to them, once per new name or
    // container (both may come in one record).
    let identified = of_type("netns_identified");
    assert!((1..=2).contains(&identified.len()), "{}", dump());
    assert!(identified.iter().all(|l| seq(create) < seq(l) && seq(l) < seq(destroys[0])), "{}", dump());
    assert!(identified.iter().any(|l| is_this_container(&l["netns"])), "the container is announced: {}", dump());

    // What dockerd touches on the host goes with it.
    let bridges = [first.bridge.clone(), second.bridge.clone()];
    drop(container);
    drop(first);
    drop(second);
    drop(image);
    let own = docker.is_own();
    drop(docker);
    for bridge in bridges {
        let gone = !std::path::Path::new("/sys/class/net").join(&bridge).exists();
        assert!(gone, "bridge {bridge} removed");
    }
    if own {
        assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("ip_forward"), forwarding);
        let dir = std::env::temp_dir().join(format!("nstrail-docker-{}", std::process::id()));
        assert!(!dir.exists(), "{} removed", dir.display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mounts.contains(&dir.to_string_lossy().into_owned()), "no mount left under {}", dir.display());
    }
    eprintln!("docker: test took {:?}", started.elapsed());
}
