//! The `nstrail` binary end to end: JSON on stdout from the real probes,
//! clean exit on SIGTERM, and one clear line for what a user gets wrong.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nstrail_tests::{nstrail_binary, NamedNetns, RunningAgent};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn run_streams_the_json_contract_and_exits_cleanly_on_sigterm() {
    assert!(is_root(), "run the tests as root (cargo xtask test)");
    let socket = std::env::temp_dir().join(format!("nstrail-run-{}.sock", std::process::id()));
    let mut agent = Command::new(nstrail_binary())
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
        let deadline = Instant::now() + nstrail_tests::patience(Duration::from_secs(20));
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
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(nstrail_binary())
        .arg("run")
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
    let out = Command::new(nstrail_binary()).args(["run", "--ring-buffer-mib", "3"]).output().expect("run nstrail");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 MiB: the ring buffer size must be a power of two from 1 to 1024"), "{stderr}");

    let out = Command::new(nstrail_binary()).args(["run", "--format", "xml"]).output().expect("run nstrail");
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
    let out = Command::new(nstrail_binary()).args(["run", "--config"]).arg(&path).output().expect("run nstrail");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "nstrail: error: config {}: line 7: unknown variant `elsewhere`, expected one of `any`, `host`, `other`",
        path.display()
    );
    assert_eq!(stderr.trim(), expected);

    let missing =
        Command::new(nstrail_binary()).args(["run", "--config", "/nonexistent/nstrail.toml"]).output().expect("run");
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read config /nonexistent/nstrail.toml: No such file")
    );
}

fn ls_json(socket: &std::path::Path) -> Vec<serde_json::Value> {
    let out = Command::new(nstrail_binary())
        .arg("ls")
        .arg("--json")
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("nstrail ls");
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
    let (ns, _) = NamedNetns::add("cli-ls");

    let records = ls_json(&socket);
    let record = named(&records, &ns.name).expect("ls shows the new namespace by name");
    assert_eq!(record["created"]["actor"]["comm"], "ip");
    assert_eq!(record["created"]["via"], "unshare");
    assert_eq!(record["seen_at_start"], false);
    let id = record["id"].as_u64().expect("id");
    assert_eq!(records.iter().filter(|r| r["host"] == true).count(), 1);
    let table = Command::new(nstrail_binary()).arg("ls").arg("--socket").arg(&socket).output().expect("ls");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("INODE"), "{table}");
    assert!(table.lines().any(|l| l.contains(&ns.name) && l.contains("ip[")), "{table}");
    let agent_pid = agent.child.id();
    let lines = agent.stop();
    assert!(
        !lines.iter().any(|l| l["type"] == "netns_enter" && l["actor"]["pid"] == agent_pid),
        "listing devices does not show up as the agent entering namespaces"
    );

    // Restarted: the namespace is known again, as existing before the agent,
    // and no create is invented for it.
    let agent = RunningAgent::start(&socket);
    let record = named(&ls_json(&socket), &ns.name).cloned().expect("still listed after restart");
    assert_eq!((record["id"].as_u64(), record["seen_at_start"].as_bool()), (Some(id), Some(true)));
    assert!(record.get("created").is_none());
    let name = ns.name.clone();
    drop(ns);
    std::thread::sleep(Duration::from_millis(500));
    assert!(named(&ls_json(&socket), &name).is_none(), "dropped after del");
    let lines = agent.stop();
    assert!(
        !lines.iter().any(|l| l["type"] == "netns_create" && l["netns"]["id"] == id),
        "no fake create after a restart"
    );
    assert!(lines.iter().any(|l| l["type"] == "netns_destroy" && l["netns"]["id"] == id));
    assert!(!socket.exists(), "the socket is removed on exit");
}

/// Devices of a named namespace as `ip -d -j link` lists them: (ifindex, name, kind).
fn ip_links(netns: &str) -> Vec<(u64, String, Option<String>)> {
    let out = nstrail_tests::run_ok("ip", &["-n", netns, "-d", "-j", "link", "show"]);
    let links: serde_json::Value = serde_json::from_str(&out.stdout).expect("ip -j");
    let mut links: Vec<_> = links
        .as_array()
        .expect("links")
        .iter()
        .map(|l| {
            let kind = l["linkinfo"]["info_kind"].as_str().map(str::to_owned);
            (l["ifindex"].as_u64().expect("ifindex"), l["ifname"].as_str().expect("ifname").to_owned(), kind)
        })
        .collect();
    links.sort();
    links
}

/// Devices `nstrail ls --json` shows for a named namespace, in the same form.
fn listed_links(records: &[serde_json::Value], netns: &str) -> Vec<(u64, String, Option<String>)> {
    let record = named(records, netns).unwrap_or_else(|| panic!("{netns} listed"));
    assert!(record.get("devices_unlisted").is_none(), "{record}");
    let mut links: Vec<_> = record["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            let kind = d["kind"].as_str().map(str::to_owned);
            (d["ifindex"].as_u64().expect("ifindex"), d["name"].as_str().expect("name").to_owned(), kind)
        })
        .collect();
    links.sort();
    links
}

/// Where the agent keeps each namespace's devices between listings (kept
/// current from its link notifications), a listing right after a change
/// still shows the devices as `ip` does: created, renamed, moved away and
/// in, deleted, many at once. (Veth pairs: they need no kernel module.)
#[test]
fn ls_shows_devices_as_they_are_right_after_each_change() {
    assert!(is_root(), "run the tests as root (cargo xtask test)");
    let socket = std::env::temp_dir().join(format!("nstrail-ls-devices-{}.sock", std::process::id()));
    let agent = RunningAgent::start(&socket);
    let (a, _) = NamedNetns::add("devs-a");
    let (b, _) = NamedNetns::add("devs-b");
    let ip = |netns: &NamedNetns, args: &str| {
        let mut full = vec!["-n", netns.name.as_str()];
        full.extend(args.split(' '));
        nstrail_tests::run_ok("ip", &full);
    };
    ip(&a, "link add d1 type veth peer name d1p");
    ip(&a, "link add va type veth peer name vb");
    let check = |after: &str| {
        let records = ls_json(&socket);
        for netns in [&a, &b] {
            assert_eq!(listed_links(&records, &netns.name), ip_links(&netns.name), "{} after {after}", netns.name);
        }
    };
    // The first listings dump each namespace; later ones find their devices kept.
    check("creation");
    check("creation, listed again");
    let many: Vec<String> = (0..20).map(|i| format!("link add m{i} type veth peer name m{i}p")).collect();
    let changes: Vec<(&NamedNetns, &str)> = vec![
        (&a, "link set d1 name d1-renamed"),
        (&a, "link add d2 type veth peer name d2p"),
        (&a, "link set d2 netns PLACEHOLDER"),
        (&a, "link del va"),
        (&b, "link set d2 name d2-in-b"),
    ];
    for (netns, change) in changes {
        let change = change.replace("PLACEHOLDER", &b.name);
        ip(netns, &change);
        check(&change);
    }
    for change in &many {
        ip(&b, change);
    }
    check("20 new veth pairs");
    for i in 0..20 {
        ip(&b, &format!("link del m{i}"));
    }
    check("20 veth pairs deleted");
    agent.stop();
}

#[test]
fn ls_without_an_agent_says_what_to_do() {
    let out =
        Command::new(nstrail_binary()).args(["ls", "--socket", "/nonexistent/nstrail.sock"]).output().expect("ls");
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
    let out = Command::new(nstrail_binary()).args(["ls", "--offline", "--json"]).output().expect("ls");
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

/// The sum of every series of `metric` whose labels include `label`.
fn sum_with_label(text: &str, metric: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| l.split_once('}').is_some_and(|(labels, _)| labels.contains(label)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
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
    let agent = RunningAgent::start_with(
        &socket,
        &["--metrics-listen", &listen, "--config", config.to_str().unwrap(), "--no-audit-log"],
    );

    let before = scrape(port);
    assert_eq!(sum_with_label(&before, "nstrail_probes", "state=\"failed\""), 0.0);
    assert!(sum_with_label(&before, "nstrail_probes", "state=\"attached\"") >= 3.0, "{before}");
    for sensor in ["netns_lifecycle", "sysctl_write", "device_move"] {
        assert!(sum_with_label(&before, "nstrail_probes", &format!("sensor=\"{sensor}\"")) >= 1.0, "{before}");
        let this = format!("sensor=\"{sensor}\"");
        let state = |state: &str| {
            before
                .lines()
                .filter(|l| {
                    l.starts_with("nstrail_sensors{") && l.contains(&this) && l.contains(&format!("state=\"{state}\""))
                })
                .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
                .sum::<f64>()
        };
        assert_eq!((state("attached"), state("degraded"), state("failed")), (1.0, 0.0, 0.0), "{sensor}: {before}");
    }
    assert_eq!(value(&before, "nstrail_events_lost_total{type=\"netns_create\"}"), 0.0);
    assert_eq!(value(&before, "nstrail_build_info{version=\"0.1.0\"}"), 1.0);

    let (ns, _) = NamedNetns::add("cli-metrics");
    for _ in 0..3 {
        assert!(Command::new("unshare").args(["-n", "true"]).status().expect("unshare").success());
    }
    let sysctl = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .status()
        .expect("sysctl");
    assert!(sysctl.success());
    let veth = format!("ntm{}", std::process::id() % 100_000);
    let added = Command::new("ip")
        .args(["link", "add", &veth, "type", "veth", "peer", "name", &format!("{veth}p"), "netns", &ns.name])
        .status()
        .expect("ip link add");
    assert!(added.success());
    let moved = Command::new("ip").args(["link", "set", &veth, "netns", &ns.name]).status().expect("ip link set");
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
        after.lines().any(|l| l.starts_with("nstrail_netns_info{") && l.contains(&format!("name=\"{}\"", ns.name))),
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
    let agent =
        RunningAgent::start_with(&socket, &["--metrics-listen", "127.0.0.1:0", "--audit-log", log.to_str().unwrap()]);
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
    let seqs =
        |records: &[serde_json::Value]| -> Vec<u64> { records.iter().filter_map(|r| r["seq"].as_u64()).collect() };
    assert_eq!(seqs(&logged), seqs(&printed), "the log holds exactly what was streamed");
    assert!(seqs(&logged).windows(2).all(|w| w[1] == w[0] + 1), "no seq gap");
    let creates = logged
        .iter()
        .filter(|r| r["type"] == "netns_create" && pids.contains(&(r["actor"]["pid"].as_u64().unwrap() as u32)));
    assert_eq!(creates.count(), 20);

    let out = Command::new(nstrail_binary()).arg("verify").arg(&log).output().expect("verify");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK: "));

    // One altered byte: verify fails and names the line.
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("\"comm\":\"unshare\"", "\"comm\":\"unshard\"", 1)).unwrap();
    let out = Command::new(nstrail_binary()).arg("verify").arg(&log).output().expect("verify");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("was altered: its hash does not match its content"), "{stderr}");

    let missing =
        Command::new(nstrail_binary()).args(["verify", "/nonexistent/events.jsonl"]).output().expect("verify");
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr).trim(),
        "nstrail: error: cannot read /nonexistent/events.jsonl: No such file or directory (os error 2)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn verify_shows_escape_sequences_from_the_log_instead_of_sending_them() {
    let dir = std::env::temp_dir().join(format!("nstrail-verifyesc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A log whose writer put a title-setting and a screen-clearing sequence
    // into a gap's reason and a record: the chain is intact, so verify
    // reports the gap, quoting the reason.
    let hostile = "x\u{1b}]0;owned\u{7}\u{1b}[2J";
    let gap = serde_json::json!({"ts": hostile, "type": "audit_gap", "records_lost": 1, "reason": hostile}).to_string();
    let (first, hash) = nstrail::audit::chained_line(nstrail::audit::GENESIS, &gap);
    let log = dir.join("events.jsonl");
    std::fs::write(&log, &first).unwrap();
    let out = Command::new(nstrail_binary()).arg("verify").arg(&log).output().expect("verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("records lost: x\\e]0;owned\\x07\\e[2J"), "{stdout}");
    assert!(!stdout.contains('\u{1b}') && !stdout.contains('\u{7}'), "{stdout:?}");
    // A broken chain's message quotes the log too.
    let seal = serde_json::json!({"ts": hostile, "type": "audit_seal", "epoch": 0, "key_id": hostile, "file_offset": first.len()})
        .to_string();
    let (second, _) = nstrail::audit::chained_line(&hash, &seal);
    std::fs::write(&log, format!("{first}{second}")).unwrap();
    let key = "ab".repeat(32);
    let out = Command::new(nstrail_binary()).args(["verify", "--key", &key]).arg(&log).output().expect("verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("made with another key (key id x\\e]0;owned\\x07\\e[2J;"), "{stderr}");
    assert!(!stderr.contains('\u{1b}') && !stderr.contains('\u{7}'), "{stderr:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
