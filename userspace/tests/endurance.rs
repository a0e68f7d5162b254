//! Endurance of the agent binary, bounded in time: killed with SIGKILL in
//! the middle of a burst and restarted; thousands of API connections.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

mod support;

use support::{RunningAgent, NSTRAIL};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "run the tests as root (cargo xtask test)");
}

/// The agent with its API socket and audit log in `dir`.
fn start_agent(dir: &Path) -> RunningAgent {
    let log = dir.join("events.jsonl");
    RunningAgent::start_with(&dir.join("api.sock"), &["--metrics-listen", "127.0.0.1:0", "--audit-log", log.to_str().unwrap()])
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(tag: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("nstrail-endure-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// `count` namespaces made and destroyed by `unshare -n true`, in a thread.
fn churn(count: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for _ in 0..count {
            let _ = Command::new("unshare").args(["-n", "true"]).status();
        }
    })
}

#[test]
fn killed_mid_burst_and_restarted_the_log_marks_it_and_nothing_is_doubled() {
    require_root();
    let dir = scratch("kill");
    let first = start_agent(&dir.0);
    let burst = churn(600);
    let deadline = Instant::now() + Duration::from_secs(30);
    while first.creates().len() < 50 {
        assert!(Instant::now() < deadline, "the burst reaches the agent");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut first = first;
    first.child.kill().expect("SIGKILL");
    let _ = first.child.wait();
    let before: Vec<u64> = first.creates();

    let second = start_agent(&dir.0);
    burst.join().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let after = second.creates();
    let doubled: Vec<_> = after.iter().filter(|id| before.contains(id)).collect();
    assert!(doubled.is_empty(), "no namespace is reported created twice across the restart: {doubled:?}");
    assert!(!after.is_empty(), "the restarted agent goes on reporting");

    // The inventory is rebuilt from /proc.
    let ls = Command::new(NSTRAIL).arg("ls").arg("--json").arg("--socket").arg(dir.0.join("api.sock")).output().unwrap();
    assert!(ls.status.success());
    let listing: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert!(listing["namespaces"].as_array().unwrap().iter().any(|n| n["host"] == true));
    drop(second);

    // The chain holds, and the restart is a marked segment.
    let verify = Command::new(NSTRAIL).arg("verify").arg(dir.0.join("events.jsonl")).output().unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{report}{}", String::from_utf8_lossy(&verify.stderr));
    assert!(report.contains(", 2 segments,"), "{report}");
    let log = std::fs::read_to_string(dir.0.join("events.jsonl")).unwrap();
    let restart = log.lines().filter(|l| l.contains("\"type\":\"audit_segment\"")).nth(1).expect("second segment");
    assert!(restart.contains("\"reason\":\"agent_start\""), "{restart}");
}

#[test]
fn thousands_of_api_connections_do_not_stop_the_agent() {
    require_root();
    let dir = scratch("conns");
    let agent = start_agent(&dir.0);
    let socket = dir.0.join("api.sock");
    // SAFETY: raising our own descriptor limit for the test's connections.
    unsafe {
        let limit = libc::rlimit { rlim_cur: 8192, rlim_max: 8192 };
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let mut idle = Vec::new();
    for i in 0..3000 {
        match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(mut stream) => {
                // Every third client subscribes and never reads; the others say nothing.
                if i % 3 == 0 {
                    let _ = stream.write_all(b"{\"op\":\"subscribe\"}\n");
                }
                idle.push(stream);
            }
            Err(err) => panic!("connection {i} refused: {err}"),
        }
    }
    // Events keep flowing and a new client is served.
    let marker = Command::new("unshare").args(["-n", "true"]).spawn().unwrap();
    let pid = marker.id();
    marker.wait_with_output().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.lines.lock().unwrap().iter().any(|l| l["type"] == "netns_create" && l["actor"]["pid"] == pid) {
        assert!(Instant::now() < deadline, "events still reach stdout");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(idle.drain(..1000).collect::<Vec<_>>());
    let ls = Command::new(NSTRAIL).arg("ls").arg("--json").arg("--socket").arg(&socket).output().unwrap();
    assert!(ls.status.success(), "{}", String::from_utf8_lossy(&ls.stderr));
    let mut probe = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    probe.write_all(b"{\"op\":\"inventory\"}\n").unwrap();
    probe.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(probe.read(&mut byte).unwrap(), 1, "a new client gets an answer");
    drop(idle);
}
