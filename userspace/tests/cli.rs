//! The `nstrail` binary end to end: JSON on stdout from the real probes,
//! clean exit on SIGTERM, and one clear line for what a user gets wrong.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

const NSTRAIL: &str = env!("CARGO_BIN_EXE_nstrail");

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn run_streams_the_json_contract_and_exits_cleanly_on_sigterm() {
    assert!(is_root(), "run the tests as root (cargo xtask test)");
    let mut agent = Command::new(NSTRAIL)
        .args(["run"])
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
