//! The agent's local API end to end, through `nstrail tail` and raw
//! clients: the audit log joined with the live stream, slow and broken
//! clients.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nstrail_tests::{nstrail_binary, NamedNetns, RunningAgent};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A child whose stdout lines are collected as they come, and its stderr
/// kept for the failure message (tail reports a `client_dropped` there).
struct Collected {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    errors: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Collected {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(nstrail_binary())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let errors = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let sink = errors.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut errors = sink.lock().unwrap();
                errors.push_str(&line);
                errors.push('\n');
            }
        });
        Self { child, lines, errors }
    }

    fn records(&self) -> Vec<serde_json::Value> {
        self.lines.lock().unwrap().iter().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
    }

    /// How many records of each type, and every `lost` record, for failure messages.
    fn summary(&self) -> String {
        let mut types = std::collections::BTreeMap::<String, usize>::new();
        let mut lost = Vec::new();
        let mut creates_by_ppid = std::collections::BTreeMap::<u64, usize>::new();
        for record in self.records() {
            let kind = record["type"].as_str().unwrap_or("?").to_owned();
            if kind == "netns_create" {
                *creates_by_ppid.entry(record["actor"]["ppid"].as_u64().unwrap_or(0)).or_default() += 1;
            }
            if kind == "lost" {
                lost.push(record.to_string());
            }
            *types.entry(kind).or_default() += 1;
        }
        format!("{types:?}, creates by ppid {creates_by_ppid:?}, lost records: {lost:?}")
    }

    /// Returns once the client shows live events: it shows a create made
    /// after this was called (one more every second until it does). A
    /// client that started but has not subscribed yet would miss them.
    fn wait_until_live(&self) {
        let deadline = Instant::now() + nstrail_tests::patience(Duration::from_secs(30));
        loop {
            let marker = unshare_pid();
            let next = Instant::now() + Duration::from_secs(1);
            while Instant::now() < next {
                if self.records().iter().any(|e| e["type"] == "netns_create" && e["actor"]["pid"] == marker) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if Instant::now() >= deadline {
                let errors = self.errors.lock().unwrap().clone();
                panic!("tail never showed a create made after it started ({}); its stderr: {errors:?}", self.summary());
            }
        }
    }

    /// Whether `done` comes true within the usual patience.
    fn wait_at_most(&self, done: impl Fn(&[serde_json::Value]) -> bool) -> bool {
        let deadline = Instant::now() + nstrail_tests::patience(Duration::from_secs(30));
        while !done(&self.records()) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    fn wait_for(&self, what: &str, done: impl Fn(&[serde_json::Value]) -> bool) {
        if !self.wait_at_most(done) {
            // Each lock is taken and released on its own line: a guard
            // held across the whole panic message would deadlock.
            let read = self.lines.lock().unwrap().len();
            let errors = self.errors.lock().unwrap().clone();
            panic!("timed out waiting for {what}: {read} lines read ({}); tail's stderr: {errors:?}", self.summary());
        }
    }
}

impl Drop for Collected {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

/// Taken by every test here for its whole run: one agent at a time.
/// Every agent start and stop live-patches the trampolines of the kernel
/// functions it hooks. Under software emulation (the VM matrix) that races
/// with the tasks running those functions: the 7.3 guest oopses now and
/// then at an int3 inside `bpf_trampoline_*`, and in one run two agents
/// each missed one create while other tests' agents started and stopped
/// (the cause is not proven). These tests count exact events, so none of
/// them runs beside another.
fn one_agent_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unshare_pid() -> u32 {
    let child = Command::new("unshare").args(["-n", "true"]).spawn().expect("unshare");
    let pid = child.id();
    assert!(child.wait_with_output().expect("wait").status.success());
    pid
}

#[test]
fn tail_joins_the_audit_log_and_the_live_stream_and_filters() {
    assert!(is_root(), "run the tests as root (cargo xtask test)");
    let _serial = one_agent_at_a_time();
    let dir = std::env::temp_dir().join(format!("nstrail-tail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = dir.join("events.jsonl");
    let socket = dir.join("api.sock");
    let agent =
        RunningAgent::start_with(&socket, &["--metrics-listen", "127.0.0.1:0", "--audit-log", log.to_str().unwrap()]);
    let sock = socket.to_str().unwrap();
    let before: Vec<u32> = (0..3).map(|_| unshare_pid()).collect();
    std::thread::sleep(Duration::from_millis(300));

    let joined =
        Collected::spawn(&["tail", "--json", "--since", "1h", "--audit-log", log.to_str().unwrap(), "--socket", sock]);
    let filtered =
        Collected::spawn(&["tail", "--json", "--type", "netns_create", "--comm", "unshare", "--socket", sock]);
    let all_before = |r: &[serde_json::Value]| {
        before.iter().all(|pid| r.iter().any(|e| e["type"] == "netns_create" && e["actor"]["pid"] == *pid))
    };
    if !joined.wait_at_most(all_before) {
        let printed = agent.records();
        let in_log = std::fs::read_to_string(&log).unwrap_or_default();
        panic!(
            "tail did not show the creates by {before:?}; the agent printed them: {}, its log has them: {}; \
             client: {}; tail's stderr: {:?}",
            all_before(&printed),
            before.iter().all(|pid| in_log.contains(&format!("\"pid\":{pid},"))),
            joined.summary(),
            joined.errors.lock().unwrap().clone()
        );
    }
    joined.wait_until_live();
    filtered.wait_until_live();
    let after: Vec<u32> = (0..3).map(|_| unshare_pid()).collect();
    let (ns, _) = NamedNetns::add("tail");
    let created_by = |records: &[serde_json::Value], pid: u32| {
        records.iter().any(|e| e["type"] == "netns_create" && e["actor"]["pid"] == pid)
    };
    joined.wait_for("the later events live", |r| after.iter().all(|pid| created_by(r, *pid)));
    filtered.wait_for("the later creates", |r| after.iter().all(|pid| created_by(r, *pid)));
    drop(ns);
    std::thread::sleep(Duration::from_millis(300));

    // From the log into the stream: every seq once, in order, from the start of the run.
    let seqs: Vec<u64> = joined.records().iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert_eq!(seqs.first(), Some(&1), "starts with the run's first record");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "no gap, no duplicate: {seqs:?}");
    // The filtered follower saw only creates by unshare, and only those after it started.
    let records = filtered.records();
    assert!(records.iter().all(|r| r["type"] == "netns_create" && r["actor"]["comm"] == "unshare"), "{records:?}");
    assert!(!before.iter().any(|pid| created_by(&records, *pid)), "no --since: no history");
    drop(joined);
    drop(filtered);
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_that_never_reads_stalls_nobody_and_is_told_what_it_lost() {
    use std::io::{Read, Write};
    assert!(is_root(), "run the tests as root (cargo xtask test)");
    let _serial = one_agent_at_a_time();
    let dir = std::env::temp_dir().join(format!("nstrail-slow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("nstrail.toml");
    // A queue that holds the kernel's largest bursts (the cleanup worker
    // reports a whole batch of destroys at once) for a client that reads,
    // and overflows many times for one that never does.
    const QUEUE: usize = 1024;
    std::fs::write(&config, format!("[api]\nclient_buffer = {QUEUE}\n")).unwrap();
    let socket = dir.join("api.sock");
    let agent = RunningAgent::start_with(
        &socket,
        &["--metrics-listen", "127.0.0.1:0", "--no-audit-log", "--config", config.to_str().unwrap()],
    );
    let mut stuck = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    stuck.write_all(b"{\"op\":\"subscribe\"}\n").unwrap();
    // Every type, so that a `lost` record would show in a failure message.
    let good = Collected::spawn(&["tail", "--json", "--socket", socket.to_str().unwrap()]);
    good.wait_until_live();

    // A create and a destroy per namespace: enough to fill the stuck
    // client's socket and its queue twice over.
    let count = 2 * QUEUE;
    let ran = nstrail_tests::run_ok(env!("CARGO_BIN_EXE_netns-helper"), &["churn", &count.to_string()]);
    assert_eq!(nstrail_tests::field(&ran.stdout, "created") as usize, count, "every unshare succeeded");
    let churned = |records: &[serde_json::Value]| {
        records.iter().filter(|e| e["type"] == "netns_create" && e["actor"]["ppid"] == ran.pid).count()
    };
    if !good.wait_at_most(|r| churned(r) == count) {
        // Where the missing ones went: the agent's own output has every record it made.
        let printed = agent.records();
        panic!(
            "the reading client got {} of {count} creates, the agent printed {} ({} records in all, {} lost records: {:?}); client: {}; tail's stderr: {:?}",
            churned(&good.records()),
            churned(&printed),
            printed.len(),
            printed.iter().filter(|r| r["type"] == "lost").count(),
            printed.iter().filter(|r| r["type"] == "lost").collect::<Vec<_>>(),
            good.summary(),
            good.errors.lock().unwrap().clone()
        );
    }
    assert!(!good.errors.lock().unwrap().contains("dropped"), "the reading client lost nothing");

    stuck.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains("client_dropped") && Instant::now() < deadline {
        match stuck.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        // Keep events flowing so the drop notice is sent.
        if !String::from_utf8_lossy(&seen).contains("client_dropped") {
            unshare_pid();
        }
    }
    let text = String::from_utf8_lossy(&seen);
    let ack: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or_default()).expect("ack");
    assert_eq!((ack["ok"].as_bool(), ack["subscribed"].as_bool()), (Some(true), Some(true)), "{ack}");
    let notice = text.lines().find(|l| l.contains("client_dropped")).expect("the slow client is told");
    let notice: serde_json::Value = serde_json::from_str(notice).unwrap();
    assert!(notice["count"].as_u64().unwrap() > 0);
    drop(good);
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn garbage_on_the_socket_gets_an_error_and_the_connection_goes_on() {
    use std::io::{Read, Write};
    assert!(is_root(), "run the tests as root (cargo xtask test)");
    let _serial = one_agent_at_a_time();
    let socket = std::env::temp_dir().join(format!("nstrail-garbage-{}.sock", std::process::id()));
    let agent = RunningAgent::start(&socket);
    let mut client = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    client.write_all(b"\x00\xff garbage {{{\n{\"op\":\"launch\"}\n{\"op\":\"inventory\"}\n").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 65536];
    // Three whole lines: the inventory reply may span many reads.
    while text.lines().count() < 3 || !text.ends_with('\n') {
        let n = client.read(&mut buf).expect("reply");
        assert!(n > 0, "connection closed early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let replies: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON reply")).collect();
    assert_eq!(replies[0]["ok"], false);
    assert!(replies[0]["error"].as_str().unwrap().starts_with("bad request"));
    assert_eq!(replies[1]["error"], "unknown op `launch`; known: inventory, show, sysctl, subscribe");
    assert_eq!(replies[2]["ok"], true);
    assert!(replies[2]["namespaces"].as_array().is_some_and(|n| !n.is_empty()));
    agent.stop();
}

#[test]
fn tail_without_an_agent_says_what_to_do() {
    let out =
        Command::new(nstrail_binary()).args(["tail", "--socket", "/nonexistent/nstrail.sock"]).output().expect("tail");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent is running at /nonexistent/nstrail.sock"));
}
