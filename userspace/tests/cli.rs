//! The `nstrail` binary end to end: JSON on stdout from the real probes,
//! clean exit on SIGTERM, and one clear line for what a user gets wrong.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

mod support;

use support::{RunningAgent, NSTRAIL};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn run_streams_the_json_contract_and_exits_cleanly_on_sigterm() {
    assert!(is_root(), "run the tests as root (cargo xtask test)");
    let socket = std::env::temp_dir().join(format!("nstrail-run-{}.sock", std::process::id()));
    let mut agent = Command::new(NSTRAIL)
        .args(["run", "--no-audit-log", "--metrics-listen", "127.0.0.1:0", "--socket"])
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nstrail run");
    let (tx, lines) = mpsc::channel::<String>();
    let stdout = agent.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_matching = |what: &str, pred: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).unwrap_or_else(|_| panic!("no {what} on stdout"));
            let value: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
            if pred(&value) {
                return value;
            }
        }
    };

    let start = next_matching("agent_start", &|v| v["type"] == "agent_start");
    assert_eq!(start["seq"], 1);
    let probes = start["probes"].as_array().expect("probes list");
    assert!(!probes.is_empty() && probes.iter().all(|p| p["attached"] == true), "{start}");

    let unshare = Command::new("unshare").args(["-n", "true"]).spawn().expect("unshare");
    let pid = unshare.id();
    assert!(unshare.wait_with_output().expect("wait").status.success());
    let create = next_matching("netns_create", &|v| v["type"] == "netns_create" && v["actor"]["pid"] == pid);

    // The documented contract, field by field.
    let ts = create["ts"].as_str().expect("ts");
    assert_eq!(ts.len(), "2026-11-28T00:35:04.123456789Z".len(), "RFC 3339 with ns: {ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.');
    assert!(create["seq"].as_u64().expect("seq") > 1);
    assert!(create["netns"]["inode"].as_u64().is_some() && create["netns"]["id"].as_u64().is_some());
    assert!(create["parent_netns"]["inode"].as_u64().is_some());
    assert_eq!(create["via"], "unshare");
    let actor = &create["actor"];
    assert_eq!(actor["comm"], "unshare");
    assert_eq!(actor["tid"], pid);
    assert_eq!(actor["ppid"], std::process::id());
    assert_eq!(actor["uid"], 0);
    assert!(actor["cgroup_id"].as_u64().is_some());

    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) }, 0);
    let status = agent.wait().expect("agent exits");
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
}

#[test]
fn not_root_gets_one_clear_line() {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", NSTRAIL, "run"])
        .output()
        .expect("run setpriv");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "nstrail: error: nstrail must run as root (it loads eBPF programs); try: sudo nstrail ..."
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_arguments_are_refused_with_the_reason() {
    let out = Command::new(NSTRAIL).args(["run", "--ring-buffer-mib", "3"]).output().expect("run nstrail");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 MiB: the ring buffer size must be a power of two from 1 to 1024"), "{stderr}");

    let out = Command::new(NSTRAIL).args(["run", "--format", "xml"]).output().expect("run nstrail");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'xml'"));
}

#[test]
fn an_invalid_policy_file_is_refused_at_start_with_line_and_reason() {
    let dir = std::env::temp_dir().join(format!("nstrail-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[sysctl_policy]\nenabled = true\n\n[[sysctl_policy.rules]]\naction = \"deny\"\nsysctl = \"net.*\"\nnetns = \"elsewhere\"\n")
        .expect("write config");
    let out = Command::new(NSTRAIL).args(["run", "--config"]).arg(&path).output().expect("run nstrail");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("nstrail: error: config {}: line 7: unknown variant `elsewhere`, expected one of `any`, `host`, `other`", path.display());
    assert_eq!(stderr.trim(), expected);

    let missing = Command::new(NSTRAIL).args(["run", "--config", "/nonexistent/nstrail.toml"]).output().expect("run");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read config /nonexistent/nstrail.toml: No such file"));
}

/// `ip netns add` with a drop guard.
struct Netns(String);

impl Netns {
    fn add(tag: &str) -> Self {
        let name = format!("nstrail-cli-{tag}-{}", std::process::id());
        assert!(Command::new("ip").args(["netns", "add", &name]).status().expect("ip").success());
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ls_json(socket: &std::path::Path) -> Vec<serde_json::Value> {
    let out = Command::new(NSTRAIL).arg("ls").arg("--json").arg("--socket").arg(socket).output().expect("nstrail ls");
    assert!(out.status.success(), "ls failed: {}", String::from_utf8_lossy(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ls JSON");
    value["namespaces"].as_array().expect("namespaces").clone()
}

fn named<'a>(records: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    records.iter().find(|r| r["names"].as_array().is_some_and(|n| n.iter().any(|v| v == name)))
}

#[test]
fn ls_asks_the_agent_and_a_restarted_agent_rebuilds_the_same_view() {
    assert!(is_root(), "run the tests as root (cargo xtask test)");
    let socket = std::env::temp_dir().join(format!("nstrail-ls-{}.sock", std::process::id()));
    let agent = RunningAgent::start(&socket);
    let ns = Netns::add("ls");

    let records = ls_json(&socket);
    let record = named(&records, &ns.0).expect("ls shows the new namespace by name");
    assert_eq!(record["created"]["actor"]["comm"], "ip");
    assert_eq!(record["created"]["via"], "unshare");
    assert_eq!(record["seen_at_start"], false);
    let id = record["id"].as_u64().expect("id");
    assert_eq!(records.iter().filter(|r| r["host"] == true).count(), 1);
    let table = Command::new(NSTRAIL).arg("ls").arg("--socket").arg(&socket).output().expect("ls");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("INODE"), "{table}");
    assert!(table.lines().any(|l| l.contains(&ns.0) && l.contains("ip[")), "{table}");
    let agent_pid = agent.child.id();
    let lines = agent.stop();
    assert!(
        !lines.iter().any(|l| l["type"] == "netns_enter" && l["actor"]["pid"] == agent_pid),
        "listing devices does not show up as the agent entering namespaces"
    );

    // Restarted: the namespace is known again, as existing before the agent,
    // and no create is invented for it.
    let agent = RunningAgent::start(&socket);
    let record = named(&ls_json(&socket), &ns.0).cloned().expect("still listed after restart");
    assert_eq!((record["id"].as_u64(), record["seen_at_start"].as_bool()), (Some(id), Some(true)));
    assert!(record.get("created").is_none());
    drop(ns);
    std::thread::sleep(Duration::from_millis(500));
    assert!(named(&ls_json(&socket), &format!("nstrail-cli-ls-{}", std::process::id())).is_none(), "dropped after del");
    let lines = agent.stop();
    assert!(
        !lines.iter().any(|l| l["type"] == "netns_create" && l["netns"]["id"] == id),
        "no fake create after a restart"
    );
    assert!(lines.iter().any(|l| l["type"] == "netns_destroy" && l["netns"]["id"] == id));
    assert!(!socket.exists(), "the socket is removed on exit");
}

#[test]
fn ls_without_an_agent_says_what_to_do() {
    let out = Command::new(NSTRAIL).args(["ls", "--socket", "/nonexistent/nstrail.sock"]).output().expect("ls");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "nstrail: error: no agent is running at /nonexistent/nstrail.sock (No such file or directory (os error 2)); \
         start one with `nstrail run`, or use `nstrail ls --offline` to scan /proc directly"
    );
}

#[test]
fn ls_offline_scans_proc() {
    assert!(is_root(), "run the tests as root (cargo xtask test)");
    let out = Command::new(NSTRAIL).args(["ls", "--offline", "--json"]).output().expect("ls");
    assert!(out.status.success());
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let own = std::fs::read_link("/proc/self/ns/net").expect("own netns").to_string_lossy().into_owned();
    let inode: u64 = own.trim_start_matches("net:[").trim_end_matches(']').parse().expect("inode");
    let records = value["namespaces"].as_array().expect("namespaces");
    assert!(records.iter().any(|r| r["inode"] == inode && r["processes"].as_u64() > Some(0)));
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// Value of one series (`name{labels}` exactly as exposed), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("number"))
        .unwrap_or(0.0)
}

#[test]
fn metrics_count_known_actions_and_pass_promtool() {
    assert!(is_root(), "run the tests as root (cargo xtask test)");
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("nstrail-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("nstrail.toml");
    std::fs::write(&config, "[metrics]\nnetns_info = true\n").expect("config");
    let socket = dir.join("api.sock");
    let listen = format!("127.0.0.1:{port}");
    let agent =
        RunningAgent::start_with(&socket, &["--metrics-listen", &listen, "--config", config.to_str().unwrap(), "--no-audit-log"]);

    let before = scrape(port);
    assert_eq!(value(&before, "nstrail_probes{state=\"failed\"}"), 0.0);
    assert!(value(&before, "nstrail_probes{state=\"attached\"}") >= 13.0);
    assert_eq!(value(&before, "nstrail_events_lost_total{type=\"netns_create\"}"), 0.0);
    assert_eq!(value(&before, "nstrail_build_info{version=\"0.1.0\"}"), 1.0);

    let ns = Netns::add("metrics");
    for _ in 0..3 {
        assert!(Command::new("unshare").args(["-n", "true"]).status().expect("unshare").success());
    }
    let sysctl = Command::new("ip")
        .args(["netns", "exec", &ns.0, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .status()
        .expect("sysctl");
    assert!(sysctl.success());
    let veth = format!("ntm{}", std::process::id() % 100_000);
    let added = Command::new("ip")
        .args(["link", "add", &veth, "type", "veth", "peer", "name", &format!("{veth}p"), "netns", &ns.0])
        .status()
        .expect("ip link add");
    assert!(added.success());
    let moved = Command::new("ip").args(["link", "set", &veth, "netns", &ns.0]).status().expect("ip link set");
    assert!(moved.success(), "the veth goes with the namespace when the test ends");
    // Let the agent see the namespace's name (mount table) and the events.
    std::thread::sleep(Duration::from_millis(800));
    let after = scrape(port);
    let grew = |series: &str| value(&after, series) - value(&before, series);
    // Other tests run in parallel: at least what this test did.
    assert!(grew("nstrail_netns_created_total{via=\"unshare\"}") >= 4.0, "{after}");
    assert!(grew("nstrail_sysctl_writes_total{result=\"applied\",sysctl=\"net.ipv4.ip_forward\"}") >= 1.0);
    assert!(grew("nstrail_events_total{type=\"netns_destroy\"}") >= 3.0);
    assert!(grew("nstrail_events_total{type=\"veth_create\"}") >= 1.0, "{after}");
    assert!(grew("nstrail_device_moves_total{kind=\"veth\"}") >= 1.0, "{after}");
    assert!(value(&after, "nstrail_netns_live") >= 2.0, "host and the named namespace");
    assert!(
        after.lines().any(|l| l.starts_with("nstrail_netns_info{") && l.contains(&format!("name=\"{}\"", ns.0))),
        "opt-in info series names the namespace:\n{after}"
    );

    let checked = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(after.as_bytes())?;
            child.wait_with_output()
        })
        .expect("run promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    drop(ns);
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_flushes_every_event_into_a_verifiable_audit_log() {
    assert!(is_root(), "run the tests as root (cargo xtask test)");
    let dir = std::env::temp_dir().join(format!("nstrail-auditcli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = dir.join("log/events.jsonl");
    let socket = dir.join("api.sock");
    let agent = RunningAgent::start_with(
        &socket,
        &["--metrics-listen", "127.0.0.1:0", "--audit-log", log.to_str().unwrap()],
    );
    let mut pids = Vec::new();
    for _ in 0..20 {
        let child = Command::new("unshare").args(["-n", "true"]).spawn().expect("unshare");
        pids.push(child.id());
        assert!(child.wait_with_output().expect("wait").status.success());
    }
    // Stop at once: whatever the agent printed must also be in the log.
    let printed = agent.stop();
    let logged: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let seqs = |records: &[serde_json::Value]| -> Vec<u64> { records.iter().filter_map(|r| r["seq"].as_u64()).collect() };
    assert_eq!(seqs(&logged), seqs(&printed), "the log holds exactly what was streamed");
    assert!(seqs(&logged).windows(2).all(|w| w[1] == w[0] + 1), "no seq gap");
    let creates = logged.iter().filter(|r| r["type"] == "netns_create" && pids.contains(&(r["actor"]["pid"].as_u64().unwrap() as u32)));
    assert_eq!(creates.count(), 20);

    let out = Command::new(NSTRAIL).arg("verify").arg(&log).output().expect("verify");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK: "));

    // One altered byte: verify fails and names the line.
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("\"comm\":\"unshare\"", "\"comm\":\"unshard\"", 1)).unwrap();
    let out = Command::new(NSTRAIL).arg("verify").arg(&log).output().expect("verify");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("was altered: its hash does not match its content"), "{stderr}");

    let missing = Command::new(NSTRAIL).args(["verify", "/nonexistent/events.jsonl"]).output().expect("verify");
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr).trim(),
        "nstrail: error: cannot read /nonexistent/events.jsonl: No such file or directory (os error 2)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A child whose stdout lines are collected as they come.
struct Collected {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Collected {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(NSTRAIL).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    fn records(&self) -> Vec<serde_json::Value> {
        self.lines.lock().unwrap().iter().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
    }

    fn wait_for(&self, what: &str, done: impl Fn(&[serde_json::Value]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(&self.records()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
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

fn unshare_pid() -> u32 {
    let child = Command::new("unshare").args(["-n", "true"]).spawn().expect("unshare");
    let pid = child.id();
    assert!(child.wait_with_output().expect("wait").status.success());
    pid
}

#[test]
fn tail_joins_the_audit_log_and_the_live_stream_and_filters() {
    assert!(is_root(), "run the tests as root (cargo xtask test)");
    let dir = std::env::temp_dir().join(format!("nstrail-tail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = dir.join("events.jsonl");
    let socket = dir.join("api.sock");
    let agent = RunningAgent::start_with(&socket, &["--metrics-listen", "127.0.0.1:0", "--audit-log", log.to_str().unwrap()]);
    let sock = socket.to_str().unwrap();
    let before: Vec<u32> = (0..3).map(|_| unshare_pid()).collect();
    std::thread::sleep(Duration::from_millis(300));

    let joined = Collected::spawn(&["tail", "--json", "--since", "1h", "--audit-log", log.to_str().unwrap(), "--socket", sock]);
    let filtered = Collected::spawn(&["tail", "--json", "--type", "netns_create", "--comm", "unshare", "--socket", sock]);
    joined.wait_for("the earlier events from the log", |r| {
        before.iter().all(|pid| r.iter().any(|e| e["type"] == "netns_create" && e["actor"]["pid"] == *pid))
    });
    std::thread::sleep(Duration::from_millis(300));
    let after: Vec<u32> = (0..3).map(|_| unshare_pid()).collect();
    let ns = Netns::add("tail");
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
    let dir = std::env::temp_dir().join(format!("nstrail-slow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("nstrail.toml");
    std::fs::write(&config, "[api]\nclient_buffer = 64\n").unwrap();
    let socket = dir.join("api.sock");
    let agent = RunningAgent::start_with(
        &socket,
        &["--metrics-listen", "127.0.0.1:0", "--no-audit-log", "--config", config.to_str().unwrap()],
    );
    let mut stuck = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    stuck.write_all(b"{\"op\":\"subscribe\"}\n").unwrap();
    let good = Collected::spawn(&["tail", "--json", "--type", "netns_create", "--socket", socket.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));

    // Enough events to fill the stuck client's socket and its queue many times.
    let pids: Vec<u32> = (0..400).map(|_| unshare_pid()).collect();
    good.wait_for("every create at the reading client", |r| {
        pids.iter().all(|pid| r.iter().any(|e| e["actor"]["pid"] == *pid))
    });

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
    assert_eq!(replies[1]["error"], "unknown op `launch`; known: inventory, subscribe");
    assert_eq!(replies[2]["ok"], true);
    assert!(replies[2]["namespaces"].as_array().is_some_and(|n| !n.is_empty()));
    agent.stop();
}

#[test]
fn tail_without_an_agent_says_what_to_do() {
    let out = Command::new(NSTRAIL).args(["tail", "--socket", "/nonexistent/nstrail.sock"]).output().expect("tail");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent is running at /nonexistent/nstrail.sock"));
}
