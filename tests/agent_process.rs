//! Endurance of the agent binary, bounded in time: killed with SIGKILL in
//! the middle of a burst and restarted; thousands of API connections.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use nstrail_tests::{audit::rechain, nstrail_binary, require_root, RunningAgent, Scratch};

/// The agent with its API socket and audit log in `dir`.
fn start_agent(dir: &Path) -> RunningAgent {
    let log = dir.join("events.jsonl");
    RunningAgent::start_with(
        &dir.join("api.sock"),
        &["--metrics-listen", "127.0.0.1:0", "--audit-log", log.to_str().unwrap()],
    )
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
    let dir = Scratch::new("kill");
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
    let ls = Command::new(nstrail_binary())
        .arg("ls")
        .arg("--json")
        .arg("--socket")
        .arg(dir.0.join("api.sock"))
        .output()
        .unwrap();
    assert!(ls.status.success());
    let listing: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert!(listing["namespaces"].as_array().unwrap().iter().any(|n| n["host"] == true));
    drop(second);

    // The chain holds, and the restart is a marked segment.
    let verify = Command::new(nstrail_binary()).arg("verify").arg(dir.0.join("events.jsonl")).output().unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{report}{}", String::from_utf8_lossy(&verify.stderr));
    assert!(report.contains(", 2 segments,"), "{report}");
    let log = std::fs::read_to_string(dir.0.join("events.jsonl")).unwrap();
    let restart = log.lines().filter(|l| l.contains("\"type\":\"audit_segment\"")).nth(1).expect("second segment");
    assert!(restart.contains("\"reason\":\"agent_start\""), "{restart}");

    // The outage is marked: the restart says the run before crashed, with
    // the last seq it wrote and the time of its last record.
    let records: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let at = records.iter().position(|r| r["type"] == "audit_segment" && r["reason"] == "agent_start").unwrap();
    let restart = &records[at];
    assert_eq!(restart["previous_run"], "crashed", "{restart}");
    let last_seq = records[..at].iter().rev().find_map(|r| r["seq"].as_u64());
    assert_eq!(restart["previous_last_seq"].as_u64(), last_seq, "{restart}");
    assert_eq!(restart["previous_last_ts"], records[at - 1]["ts"], "{restart}");
    assert!(report.contains("crash: ") && report.contains("did not stop cleanly"), "{report}");
    assert!(report.contains(&format!("its last record was seq {}", last_seq.unwrap())), "{report}");

    // A clean stop is told apart from a crash.
    drop(start_agent(&dir.0));
    let log = std::fs::read_to_string(dir.0.join("events.jsonl")).unwrap();
    let third = log.lines().filter(|l| l.contains("\"type\":\"audit_segment\"")).nth(2).expect("third segment");
    assert!(third.contains("\"previous_run\":\"clean\""), "{third}");
    let verify = Command::new(nstrail_binary()).arg("verify").arg(dir.0.join("events.jsonl")).output().unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{report}");
    assert_eq!(report.matches("crash: ").count(), 1, "{report}");
}

#[test]
fn a_flood_of_api_connections_leaves_ls_metrics_and_the_log_working() {
    require_root();
    // Far more than the agent may open (4,096 descriptors here, as with a
    // common LimitNOFILE): an agent that served them all would run out.
    const FLOOD: usize = 18_000;
    let dir = Scratch::new("conns");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = dir.0.join("events.jsonl");
    let socket = dir.0.join("api.sock");
    let agent = RunningAgent::start_limited(
        &socket,
        &["--metrics-listen", &format!("127.0.0.1:{port}"), "--audit-log", log.to_str().unwrap()],
        Some(4096),
    );
    // SAFETY: raising our own soft descriptor limit to the hard one.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        assert!(limit.rlim_max as usize > FLOOD + 500, "the hard descriptor limit leaves no room for the flood");
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let mut flood = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(mut stream) => {
                // Every third client subscribes and never reads; the others say nothing.
                if i % 3 == 0 {
                    let _ = stream.write_all(b"{\"op\":\"subscribe\"}\n");
                }
                flood.push(stream);
            }
            Err(err) => panic!("connection {i} not even queued: {err}"),
        }
    }
    // Events keep flowing to stdout and into the log.
    let marker = Command::new("unshare").args(["-n", "true"]).spawn().unwrap();
    let pid = marker.id();
    marker.wait_with_output().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.lines.lock().unwrap().iter().any(|l| l["type"] == "netns_create" && l["actor"]["pid"] == pid) {
        assert!(Instant::now() < deadline, "events still reach stdout");
        std::thread::sleep(Duration::from_millis(50));
    }
    let marker_logged =
        || std::fs::read_to_string(&log).unwrap_or_default().lines().any(|l| l.contains(&format!("\"pid\":{pid},")));
    while !marker_logged() {
        assert!(Instant::now() < deadline, "events still reach the audit log");
        std::thread::sleep(Duration::from_millis(50));
    }
    // ls and /metrics are answered while every connection is still open.
    let ls = Command::new(nstrail_binary()).arg("ls").arg("--json").arg("--socket").arg(&socket).output().unwrap();
    assert!(ls.status.success(), "{}", String::from_utf8_lossy(&ls.stderr));
    let mut scrape = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    scrape.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    scrape.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut body = String::new();
    scrape.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{}", &body[..body.len().min(200)]);
    let refused = body
        .lines()
        .find_map(|l| l.strip_prefix("nstrail_api_clients_refused_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("refusals counted");
    assert!(refused > 0.0, "beyond the cap, connections are refused and closed");
    let clients =
        body.lines().find_map(|l| l.strip_prefix("nstrail_api_clients ")).and_then(|v| v.trim().parse::<f64>().ok());
    assert!(clients.is_some_and(|c| c <= 256.0 + 1.0), "at most max_clients are served: {clients:?}");
    drop(flood);
    drop(agent);
}

#[test]
fn api_access_is_root_or_the_configured_group_and_others_are_told_why() {
    require_root();
    let dir = Scratch::new("access");
    let socket = dir.0.join("api.sock");
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(nstrail_binary())
            .args(args)
            .output()
            .expect("setpriv")
    };
    // Root only: a user is told it is permission denied, and how to get access.
    let agent = RunningAgent::start(&socket);
    let _ = std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755));
    let denied = as_nobody(&["ls", "--socket", socket.to_str().unwrap()]);
    assert_eq!(denied.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("permission denied on") && stderr.contains("group"), "{stderr}");
    assert!(!stderr.contains("no agent is running"), "{stderr}");
    drop(agent);

    // With `[api] group`: members may use it, still not the world.
    let config = dir.0.join("nstrail.toml");
    std::fs::write(&config, "[api]\ngroup = \"nogroup\"\n").unwrap();
    let agent = RunningAgent::start_with(
        &socket,
        &["--metrics-listen", "127.0.0.1:0", "--no-audit-log", "--config", config.to_str().unwrap()],
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660);
    let allowed = as_nobody(&["ls", "--json", "--socket", socket.to_str().unwrap()]);
    assert!(allowed.status.success(), "{}", String::from_utf8_lossy(&allowed.stderr));
    drop(agent);

    // Offline as a user: says what it cannot see.
    let offline = as_nobody(&["ls", "--offline"]);
    assert!(offline.status.success());
    assert!(
        String::from_utf8_lossy(&offline.stderr).contains("not root"),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
}

/// `nstrail ARGS`: (exit code, stdout, stderr).
fn nstrail(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let out = Command::new(nstrail_binary()).args(args).output().expect("run nstrail");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// `nstrail audit setup-keys` into `dir/keys`: (sealing key file, verification key).
fn setup_keys(dir: &Path) -> (PathBuf, String) {
    let key_file = dir.join("keys/seal.key");
    let (code, stdout, stderr) = nstrail(&[os("audit"), os("setup-keys"), os("--seal-key"), key_file.as_os_str()]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let key = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no verification key printed: {stdout}"))
        .to_owned();
    assert!(stdout.contains("Store it away from this host"), "{stdout}");
    // Never over an existing key without --force.
    let (code, _, stderr) = nstrail(&[os("audit"), os("setup-keys"), os("--seal-key"), key_file.as_os_str()]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("exists") && stderr.contains("--force"), "{stderr}");
    (key_file, key)
}

/// The agent with a log sealed every 100 ms, its metrics on `port`.
fn start_sealed(dir: &Path, key_file: &Path, port: u16) -> RunningAgent {
    let config = dir.join("nstrail.toml");
    std::fs::write(&config, format!("[audit_log]\nseal_key = \"{}\"\nseal_interval = \"100ms\"\n", key_file.display()))
        .unwrap();
    let log = dir.join("events.jsonl");
    RunningAgent::start_with(
        &dir.join("api.sock"),
        &[
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
            "--config",
            config.to_str().unwrap(),
            "--audit-log",
            log.to_str().unwrap(),
        ],
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Value of one series of /metrics (exactly `name{labels}`).
fn metric(port: u16, series: &str) -> f64 {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("number"))
        .unwrap_or_else(|| panic!("no series {series}"))
}

/// `count` namespaces made and destroyed, a little apart, so seals fall between them.
fn paced_churn(count: usize) {
    for _ in 0..count {
        assert!(Command::new("unshare").args(["-n", "true"]).status().unwrap().success());
        std::thread::sleep(Duration::from_millis(40));
    }
}

fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

#[test]
fn a_sealed_log_reveals_cut_tails_cut_heads_and_forgeries() {
    require_root();
    let dir = Scratch::new("sealed");
    let (key_file, key) = setup_keys(&dir.0);
    let port = free_port();
    let agent = start_sealed(&dir.0, &key_file, port);
    paced_churn(30);
    std::thread::sleep(Duration::from_millis(300));
    // Prometheus holds a witness of how far the sealed log reaches.
    assert_eq!(metric(port, "nstrail_audit_sealed"), 1.0);
    assert!(metric(port, "nstrail_audit_seal_epoch") >= 3.0);
    assert!(metric(port, "nstrail_audit_last_sealed_seq") > 10.0);
    assert!(metric(port, "nstrail_audit_last_seal_timestamp_seconds") > 1.7e9);
    drop(agent);

    let log = dir.0.join("events.jsonl");
    let original = log_lines(&log);
    let (code, stdout, stderr) =
        nstrail(&[os("verify"), os("--key"), os(&key), os("--seal-key"), key_file.as_os_str(), log.as_os_str()]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("end: every record is sealed: the log ends with the agent's clean stop"), "{stdout}");
    assert!(stdout.contains("start: the log is complete from its first record"), "{stdout}");

    let copy = dir.0.join("copy.jsonl");
    for n in [1, 5, 10] {
        let kept = &original[..original.len() - n];
        write_lines(&copy, kept);
        // Against the host's key: the seals cut off the end show.
        let (code, stdout, stderr) =
            nstrail(&[os("verify"), os("--key"), os(&key), os("--seal-key"), key_file.as_os_str(), copy.as_os_str()]);
        assert_eq!(code, Some(1), "last {n} deleted: {stdout}");
        assert!(stderr.contains("tail truncation: the host's sealing key is at epoch"), "last {n} deleted: {stderr}");
        // With the key alone: how far the log is validated, and what is not protected.
        let (code, stdout, _) = nstrail(&[os("verify"), os("--key"), os(&key), copy.as_os_str()]);
        assert_eq!(code, Some(0), "{stdout}");
        assert!(stdout.contains("last validated: seal epoch"), "{stdout}");
        if !kept.last().unwrap().contains("\"type\":\"audit_seal\"") {
            assert!(stdout.contains("not sealed: a truncation there cannot be detected"), "last {n} deleted: {stdout}");
        }
    }

    // The first 15 lines cut.
    let first_seal_after = original.iter().skip(15).position(|l| l.contains("\"type\":\"audit_seal\""));
    assert!(first_seal_after.is_some(), "a seal after line 15: {}", original.len());
    write_lines(&copy, &original[15..]);
    let (code, _, stderr) = nstrail(&[os("verify"), os("--key"), os(&key), copy.as_os_str()]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("(head truncation)"), "{stderr}");

    // A record altered and the chain recomputed: the chain is fine, the seals are not.
    let at = original.iter().position(|l| l.contains("\"comm\":\"unshare\"")).unwrap();
    let mut forged = original.clone();
    forged[at] = forged[at].replacen("\"comm\":\"unshare\"", "\"comm\":\"unshard\"", 1);
    write_lines(&copy, &rechain(&forged));
    let (code, stdout, _) = nstrail(&[os("verify"), copy.as_os_str()]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("not verified with a key: pass --key to check the seals"), "{stdout}");
    let (code, _, stderr) = nstrail(&[os("verify"), os("--key"), os(&key), copy.as_os_str()]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("does not verify with the key: the records before it were altered and re-chained"),
        "{stderr}"
    );

    // The same with every seal left out.
    let unsealed: Vec<String> = forged.into_iter().filter(|l| !l.contains("\"type\":\"audit_seal\"")).collect();
    write_lines(&copy, &rechain(&unsealed));
    let (code, stdout, _) = nstrail(&[os("verify"), copy.as_os_str()]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("unsealed: no seal in these files"), "{stdout}");
    let (code, _, stderr) = nstrail(&[os("verify"), os("--key"), os(&key), copy.as_os_str()]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no seal in these files"), "{stderr}");
}

/// Waits until the log at `path` holds a gap record of `cause`.
fn wait_for_gap(path: &Path, cause: &str) {
    let needle = format!("\"type\":\"audit_gap\",\"cause\":\"{cause}\"");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(path).is_ok_and(|t| t.contains(&needle)) {
        assert!(Instant::now() < deadline, "no {cause} gap in {}", path.display());
        let _ = Command::new("unshare").args(["-n", "true"]).status();
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_log_file_deleted_or_moved_while_the_agent_runs_is_reopened_and_marked() {
    require_root();
    let dir = Scratch::new("watch");
    let port = free_port();
    let log = dir.0.join("events.jsonl");
    let agent = RunningAgent::start_with(
        &dir.0.join("api.sock"),
        &["--metrics-listen", &format!("127.0.0.1:{port}"), "--audit-log", log.to_str().unwrap()],
    );
    paced_churn(5);
    std::fs::remove_file(&log).unwrap();
    wait_for_gap(&log, "deleted");
    paced_churn(5);
    let moved = dir.0.join("moved.jsonl");
    std::fs::rename(&log, &moved).unwrap();
    wait_for_gap(&log, "moved");
    paced_churn(5);
    assert_eq!(metric(port, "nstrail_audit_log_reopened_total{reason=\"deleted\"}"), 1.0);
    assert_eq!(metric(port, "nstrail_audit_log_reopened_total{reason=\"moved\"}"), 1.0);
    drop(agent);

    let deleted_gap = log_lines(&moved).into_iter().find(|l| l.contains("\"cause\":\"deleted\"")).unwrap();
    let gap: serde_json::Value = serde_json::from_str(&deleted_gap).unwrap();
    assert!(gap["records_lost"].as_u64().unwrap() >= 5, "{gap}");
    assert_eq!(gap["records_lost"], gap["file_records"], "{gap}");
    // Verified across both reopenings: the moved file given, and not.
    let (code, stdout, stderr) = nstrail(&[os("verify"), moved.as_os_str(), log.as_os_str()]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains(", 2 gaps"), "{stdout}");
    assert!(stdout.contains("the log file was deleted while the agent wrote it: its"), "{stdout}");
    assert!(stdout.contains("the log file was moved away while the agent wrote it; its"), "{stdout}");
    assert!(stdout.contains("records are in the file before"), "{stdout}");
    let (code, stdout, _) = nstrail(&[os("verify"), log.as_os_str()]);
    assert_eq!(code, Some(0), "{stdout}");
    // Every event the agent printed is in one of the two files, in order.
    let logged: Vec<u64> = [&moved, &log]
        .iter()
        .flat_map(|f| log_lines(f))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok()?["seq"].as_u64())
        .collect();
    assert!(logged.windows(2).all(|w| w[1] == w[0] + 1), "no seq gap after the first reopening: {logged:?}");
}
