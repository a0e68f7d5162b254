//! The answers no other tool gives, from the real agent about one real
//! namespace: its whole story (`nstrail show`) while it lives, once it is
//! destroyed and after its inode went to a new namespace; its sysctls
//! against the host's (`nstrail sysctl`, the expected set derived from a
//! fresh namespace on this kernel); and an answer cut short by its reader
//! (`| head`). Leaked namespaces and escaped names: answers_leaked.rs.

mod answers_support;

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::{Duration, Instant},
};

use answers_support::{helper, os, wait_json, Agent};
use nstrail_tests::{field, nstrail_binary, require_root, run_ok, Background, HostVeth, NamedNetns, Scratch};
use serde_json::Value;

/// `sysctl -a` as name → value (white space normalised), in a namespace or the host.
fn sysctl_all(netns: Option<&str>) -> BTreeMap<String, String> {
    let out = match netns {
        Some(ns) => run_ok("ip", &["netns", "exec", ns, "sysctl", "-a"]),
        None => run_ok("sysctl", &["-a"]),
    };
    out.stdout
        .lines()
        .filter(|l| l.starts_with("net."))
        .filter_map(|l| l.split_once(" = ").or_else(|| l.strip_suffix(" =").map(|n| (n, ""))))
        .map(|(name, value)| (name.to_owned(), normal(value)))
        .collect()
}

fn normal(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// (type, actor pid) of each record, but for entries by processes not in
/// `ours`: other tests on this host (another agent's device listing, its
/// test threads) step into every namespace, and an entry changes nothing.
/// Any other record by anyone stays, so a stray write or veth still fails.
/// The `netns_identified` record comes from a rescan, at no fixed step:
/// [`identified`] checks it.
fn steps(timeline: &Value, ours: &BTreeSet<u64>) -> Vec<(String, u64)> {
    timeline
        .as_array()
        .expect("timeline")
        .iter()
        .map(|r| (r["type"].as_str().unwrap().to_owned(), r["actor"]["pid"].as_u64().unwrap_or(0)))
        .filter(|(kind, pid)| (kind != "netns_enter" || ours.contains(pid)) && kind != "netns_identified")
        .collect()
}

/// The names of each `netns_identified` record of a timeline, which must
/// all come after its create.
fn identified(timeline: &Value) -> Vec<Value> {
    let records = timeline.as_array().expect("timeline");
    let create = records.iter().position(|r| r["type"] == "netns_create").expect("a create");
    let found: Vec<(usize, Value)> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r["type"] == "netns_identified")
        .map(|(i, r)| (i, r["names"].clone()))
        .collect();
    assert!(found.iter().all(|(i, _)| *i > create), "identified after the create: {timeline}");
    found.into_iter().map(|(_, names)| names).collect()
}

/// Devices as `ip -d -j addr` shows them: (ifindex, name, kind, state, flags, mtu, mac, addresses).
fn ip_devices(netns: &str) -> Vec<Value> {
    let out = run_ok("ip", &["-n", netns, "-d", "-j", "addr", "show"]);
    let links: Value = serde_json::from_str(&out.stdout).expect("ip -j");
    let flags = |v: &Value| {
        let mut f: Vec<String> = v.as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_owned()).collect();
        f.sort();
        f
    };
    links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let addresses: Vec<String> = l["addr_info"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
                .collect();
            serde_json::json!([
                l["ifindex"],
                l["ifname"],
                l["linkinfo"]["info_kind"],
                l["operstate"],
                flags(&l["flags"]),
                l["mtu"],
                l["address"],
                addresses
            ])
        })
        .collect()
}

fn shown_devices(story: &Value) -> Vec<Value> {
    story["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let mut flags: Vec<String> =
                d["flags"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_owned()).collect();
            flags.sort();
            serde_json::json!([
                d["ifindex"],
                d["name"],
                d["kind"],
                d["state"],
                flags,
                d["mtu"],
                d["mac"],
                d["addresses"]
            ])
        })
        .collect()
}

/// The routes of the main table, and the `ip` that stepped in to count them.
fn route_count(netns: &str, family: &str) -> (u64, u32) {
    let ran = run_ok("ip", &["-n", netns, family, "route", "show", "table", "main"]);
    (ran.stdout.lines().count() as u64, ran.pid)
}

/// A value for `name` other than the host's.
fn other_than_host(name: &str, wanted: &str, instead: &str) -> String {
    let host = std::fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/"))).expect("host value");
    if host.trim() == wanted { instead } else { wanted }.to_owned()
}

#[test]
fn show_and_sysctl_tell_the_whole_story_live_destroyed_and_after_inode_reuse() {
    require_root();
    let dir = Scratch::new("story");
    let agent = Agent::start(&dir.0);
    let (mut ns, add) = NamedNetns::add("story");
    let identity = ns.identity();
    let (host_end, inner) = HostVeth::unique_names();
    let _veth = HostVeth { name: host_end.clone(), peer: inner.clone() };
    let link = run_ok("ip", &["link", "add", &host_end, "type", "veth", "peer", "name", &inner, "netns", &ns.name]);
    let subnet = 10 + std::process::id() % 200;
    let address = format!("10.{subnet}.7.1/24");
    let addr = run_ok("ip", &["-n", &ns.name, "addr", "add", &address, "dev", &inner]);
    let up = run_ok("ip", &["-n", &ns.name, "link", "set", &inner, "up"]);
    let lo = run_ok("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
    let route = run_ok(
        "ip",
        &["-n", &ns.name, "route", "add", &format!("10.{subnet}.8.0/24"), "via", &format!("10.{subnet}.7.2")],
    );
    let somaxconn = other_than_host("net.core.somaxconn", "100", "101");
    let write1 =
        run_ok("ip", &["netns", "exec", &ns.name, "sysctl", "-qw", &format!("net.core.somaxconn={somaxconn}")]);
    // The sensor counts TCP sockets when its worker handles a write, which
    // under load is after the write: the listener comes once the first
    // write is reported, so that one is counted without it.
    agent.wait_record("the first sysctl write", |r| r["type"] == "sysctl_write" && r["actor"]["pid"] == write1.pid);
    let listener = Background::start("ip", &["netns", "exec", &ns.name, helper(), "tcp-listen"]);
    // Past the 20 ms in which a burst of writes shares one socket count.
    std::thread::sleep(Duration::from_millis(50));
    let keepalive = other_than_host("net.ipv4.tcp_keepalive_time", "600", "601");
    let echo = format!("echo {keepalive} > /proc/sys/net/ipv4/tcp_keepalive_time");
    let write2 = run_ok("nsenter", &[&format!("--net={}", ns.path().display()), "sh", "-c", &echo]);

    let (routes4, routes6) = (route_count(&ns.name, "-4"), route_count(&ns.name, "-6"));
    let expected: Vec<(String, u64)> = [
        ("netns_create", add.pid),
        ("netns_enter", add.pid),
        ("veth_create", link.pid),
        ("netns_enter", addr.pid),
        ("netns_enter", up.pid),
        ("netns_enter", lo.pid),
        ("netns_enter", route.pid),
        ("netns_enter", write1.pid),
        ("sysctl_write", write1.pid),
        ("netns_enter", listener.pid()),
        ("netns_enter", write2.pid),
        ("sysctl_write", write2.pid),
        ("netns_enter", routes4.1),
        ("netns_enter", routes6.1),
    ]
    .into_iter()
    .map(|(t, p)| (t.to_owned(), p as u64))
    .collect();
    let ours: BTreeSet<u64> = expected.iter().map(|(_, pid)| *pid).collect();
    let routes_before = (routes4.0, routes6.0);
    let story = wait_json(&agent, &["show", &ns.name], "the last step in the story, and the name", |s| {
        steps(&s["timeline"], &ours).len() >= expected.len() && !identified(&s["timeline"]).is_empty()
    });
    let routes_after = (route_count(&ns.name, "-4").0, route_count(&ns.name, "-6").0);
    assert_eq!(routes_before, routes_after, "the routes held still");

    // Who it is, who is in it, what holds it.
    assert_eq!(
        (story["state"].as_str(), story["netns"]["inode"].as_u64()),
        (Some("live"), Some(identity.inode as u64))
    );
    assert_eq!(story["netns"]["id"], identity.id);
    assert_eq!(story["netns"]["names"], serde_json::json!([ns.name]));
    assert_eq!(story["members"], serde_json::json!([{"pid": listener.pid(), "comm": "netns-helper"}]));
    let mount = ns.path().display().to_string();
    assert_eq!(story["holders"], serde_json::json!({"mounts": [mount], "fds": []}));
    // What is in it, as ip and ss see it.
    assert_eq!(shown_devices(&story), ip_devices(&ns.name));
    let addresses = story["devices"].as_array().unwrap().iter().find(|d| d["name"] == inner.as_str()).unwrap();
    assert_eq!(addresses["addresses"], serde_json::json!([address]));
    assert_eq!(story["routes"], serde_json::json!({"ipv4": routes_after.0, "ipv6": routes_after.1}));
    assert_eq!(routes_after.0, 2, "the subnet's own route and the one added");
    assert_eq!(story["listening"], serde_json::json!({"tcp": 1, "tcp6": 0}));
    // Its story, in order, each step with its actor; its name once known.
    assert_eq!(steps(&story["timeline"], &ours), expected);
    assert_eq!(identified(&story["timeline"]), [serde_json::json!([ns.name])], "named once, after the create");
    let writes: Vec<_> = story["timeline"].as_array().unwrap().iter().filter(|r| r["type"] == "sysctl_write").collect();
    let (w1, w2) = (writes[0], writes[1]);
    assert_eq!((w1["sysctl"].as_str(), w1["new"].as_str()), (Some("net.core.somaxconn"), Some(somaxconn.as_str())));
    assert_eq!(
        (w2["sysctl"].as_str(), w2["new"].as_str()),
        (Some("net.ipv4.tcp_keepalive_time"), Some(keepalive.as_str()))
    );
    assert_eq!((w1["tcp_sockets_in_use"].as_u64(), w2["tcp_sockets_in_use"].as_u64()), (Some(0), Some(1)));

    // sysctl: exactly the written values and what a new namespace differs in on this kernel.
    let host = sysctl_all(None);
    let (fresh, _) = NamedNetns::add("fresh");
    let fresh_values = sysctl_all(Some(&fresh.name));
    drop(fresh);
    let mut want: BTreeMap<String, String> = fresh_values
        .iter()
        .filter(|(name, value)| host.get(*name).is_some_and(|h| h != *value))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    want.insert("net.core.somaxconn".into(), somaxconn.clone());
    want.insert("net.ipv4.tcp_keepalive_time".into(), keepalive.clone());
    let report = agent.json(&["sysctl", &ns.name]);
    let entries = report["sysctls"].as_array().expect("sysctls");
    let got: BTreeMap<String, String> = entries
        .iter()
        .map(|e| (e["sysctl"].as_str().unwrap().to_owned(), normal(e["value"].as_str().unwrap())))
        .collect();
    assert_eq!(got, want);
    for entry in entries {
        let (name, origin) = (entry["sysctl"].as_str().unwrap(), entry["origin"].as_str().unwrap());
        match name {
            "net.core.somaxconn" | "net.ipv4.tcp_keepalive_time" => {
                let writer = if name == "net.core.somaxconn" { (write1.pid, "sysctl") } else { (write2.pid, "sh") };
                assert_eq!(origin, "written", "{entry}");
                let actor = &entry["written"]["actor"];
                assert_eq!((actor["pid"].as_u64(), actor["comm"].as_str()), (Some(writer.0 as u64), Some(writer.1)));
                assert_eq!(entry["changed_too_late"].as_bool().unwrap_or(false), name != "net.core.somaxconn");
            }
            _ => {
                assert_eq!(origin, "new_namespace_default", "{entry}");
                assert_eq!(entry["host"].as_str().map(normal), host.get(name).cloned());
            }
        }
    }
    let table = agent.text(&[os("sysctl"), os(&ns.name)]);
    let row = table.lines().find(|l| l.starts_with("net.ipv4.tcp_keepalive_time")).expect("its row");
    assert!(row.contains(&format!("written by sh[{}]", write2.pid)), "{table}");
    assert!(row.contains("CHANGED TOO LATE? 1 TCP socket was in use then"), "{table}");
    // Every row of the text, cell by cell, is the JSON's entry.
    let mut lines = table.lines();
    assert_eq!(
        lines.next(),
        Some(
            format!(
                "netns {} (id {}) {}: net.* sysctls that differ from the host's, or were written",
                identity.inode, identity.id, ns.name
            )
            .as_str()
        )
    );
    let want_rows: Vec<Vec<String>> =
        std::iter::once(["SYSCTL", "VALUE", "HOST", "ORIGIN"].map(str::to_owned).to_vec())
            .chain(entries.iter().map(|e| {
                let safe = |v: &Value| v.as_str().map_or("-".to_owned(), |v| v.replace('\t', "\\t"));
                let origin = match e["origin"].as_str().unwrap() {
                    "written" => {
                        let w = &e["written"];
                        let late = match w["tcp_sockets_in_use"].as_u64() {
                            Some(1) => "; CHANGED TOO LATE? 1 TCP socket was in use then".to_owned(),
                            Some(n) if n > 1 => format!("; CHANGED TOO LATE? {n} TCP sockets were in use then"),
                            _ => String::new(),
                        };
                        let (comm, pid, ts) = (&w["actor"]["comm"], &w["actor"]["pid"], &w["ts"]);
                        format!("written by {}[{pid}] at {}{late}", comm.as_str().unwrap(), ts.as_str().unwrap())
                    }
                    "new_namespace_default" => "default of a new namespace".to_owned(),
                    other => panic!("origin {other}: {e}"),
                };
                vec![safe(&e["sysctl"]), safe(&e["value"]), safe(&e["host"]), origin]
            }))
            .collect();
    let rows: Vec<Vec<String>> = lines
        .by_ref()
        .take(want_rows.len())
        .map(|l| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect())
        .collect();
    assert_eq!(rows, want_rows, "{table}");
    assert_eq!(
        lines.collect::<Vec<_>>(),
        ["1 written while TCP sockets existed in the namespace: sockets made before may keep the old value"],
        "{table}"
    );
    assert_eq!(story["sysctls"].as_array().unwrap().len(), entries.len(), "show lists the same sysctls");

    // Offline: the same values, read by stepping in, with the log's history.
    let offline = Command::new(nstrail_binary())
        .args(["sysctl", &ns.name, "--offline", "--json", "--audit-log"])
        .arg(&agent.log)
        .output()
        .expect("sysctl --offline");
    assert!(offline.status.success(), "{}", String::from_utf8_lossy(&offline.stderr));
    let offline: Value = serde_json::from_slice(&offline.stdout).expect("JSON");
    let offline_got: BTreeMap<String, String> = offline["sysctls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["sysctl"].as_str().unwrap().to_owned(), normal(e["value"].as_str().unwrap())))
        .collect();
    assert_eq!(offline_got, want);
    let notes = offline["notes"].to_string();
    assert!(notes.contains("stepped into the namespace itself"), "{notes}");
    assert!(offline["sysctls"].as_array().unwrap().iter().any(|e| e["written"]["actor"]["pid"] == write2.pid));

    let text = agent.text(&[os("show"), os(&ns.name)]);
    assert!(text.starts_with(&format!("netns {} (id {}) {}: live\n", identity.inode, identity.id, ns.name)), "{text}");
    assert!(text.contains(&format!("netns-helper[{}]", listener.pid())), "{text}");
    assert!(text.contains("tcp 1, tcp6 0"), "{text}");

    // Destroyed: its story stays, by id, and so does its name.
    drop(listener);
    ns.delete();
    let gone = wait_json(&agent, &["show", &identity.id.to_string()], "the destroy", |s| s["state"] == "destroyed");
    let after = steps(&gone["timeline"], &ours);
    assert_eq!(after[..expected.len()], expected[..], "the same story");
    assert_eq!(after.len(), expected.len() + 1, "the story and its end: {after:?}");
    assert_eq!(after.last().map(|s| s.0.as_str()), Some("netns_destroy"));
    assert_eq!(identified(&gone["timeline"]), [serde_json::json!([ns.name])]);
    assert_eq!(gone["netns"]["names"], serde_json::json!([ns.name]));
    assert!(gone["devices"].as_array().unwrap().is_empty() && gone["members"].as_array().unwrap().is_empty());
    assert_eq!(gone["netns"]["sysctl_overrides"]["net.ipv4.tcp_keepalive_time"], keepalive.as_str());
    let refused = agent.refused(&[os("sysctl"), os(&identity.id.to_string())]);
    assert!(
        refused
            .starts_with(&format!("nstrail: error: namespace id {} (inode {}) is gone", identity.id, identity.inode)),
        "{refused}"
    );

    // Its inode taken by a new namespace: the inode means the new one, the id the old.
    // The kernel hands out the lowest free inode; other tests on this host
    // make namespaces too and may hold it a while: tried again until ours.
    let deadline = Instant::now() + nstrail_tests::patience(Duration::from_secs(20));
    let reuse = loop {
        std::thread::sleep(Duration::from_millis(200));
        let reuse = Background::start(helper(), &["reuse-inode", &identity.inode.to_string(), "500"]);
        if field(&reuse.first_line, "inode") == identity.inode as u64 {
            break reuse;
        }
        assert!(Instant::now() < deadline, "inode {} never came free again", identity.inode);
    };
    let new_id = field(&reuse.first_line, "id");
    let now =
        wait_json(&agent, &["show", &identity.inode.to_string()], "the new namespace", |s| s["netns"]["id"] == new_id);
    assert_eq!(now["state"], "live");
    assert_eq!(now["holders"]["fds"].as_array().unwrap().len(), 1, "held by the helper's fd: {now}");
    // Other tests' namespaces may have had the inode too since the agent
    // started: ours among them.
    let prefix = format!("{} also meant destroyed namespace", identity.inode);
    let notes = now["notes"].as_array().unwrap();
    let note = notes.iter().filter_map(Value::as_str).find(|n| n.starts_with(&prefix)).unwrap_or_else(|| {
        panic!("no note on the inode's older namespaces: {notes:?}");
    });
    let older: Vec<u64> = note
        .split_once(':')
        .unwrap()
        .0
        .split("id ")
        .skip(1)
        .map(|id| id.trim_end_matches([',', ' ']).parse().expect("an id"))
        .collect();
    assert!(older.contains(&identity.id), "{note}");
    // Each a destroyed namespace with this inode, the most recently destroyed first.
    let destroyed_at: Vec<String> = older
        .iter()
        .map(|id| {
            let other = agent.json(&["show", &id.to_string()]);
            assert_eq!(
                (other["state"].as_str(), other["netns"]["inode"].as_u64()),
                (Some("destroyed"), Some(identity.inode as u64)),
                "{other}"
            );
            other["netns"]["destroyed"].as_str().expect("when").to_owned()
        })
        .collect();
    assert!(destroyed_at.windows(2).all(|w| w[0] >= w[1]), "{note}: {destroyed_at:?}");
    let listed: Vec<String> = older.iter().map(u64::to_string).collect();
    let (many, story) = if older.len() > 1 { ("s", "their stories") } else { ("", "its story") };
    assert_eq!(
        note,
        format!("{prefix}{many} id {}: ask by id (`nstrail show {}`) for {story}", listed.join(", id "), older[0])
    );
    assert!(agent.text(&[os("show"), os(&identity.inode.to_string())]).contains(note));
    let old = agent.json(&["show", &identity.id.to_string()]);
    assert_eq!((old["state"].as_str(), old["netns"]["id"].as_u64()), (Some("destroyed"), Some(identity.id)));

    let unknown = agent.refused(&[os("show"), os("nstrail-no-such-namespace")]);
    assert_eq!(
        unknown,
        "nstrail: error: no namespace matches nstrail-no-such-namespace: it is not the inode, id, name, container or pod of a live namespace, nor of one destroyed recently or named in the audit log\n"
    );
}

#[test]
fn an_answer_piped_into_head_ends_quietly() {
    require_root();
    use std::io::BufRead;
    let (ns, _) = NamedNetns::add("pipe");
    let mut child = Command::new(nstrail_binary())
        .args(["sysctl", &ns.name, "--all", "--offline", "--audit-log", "/nonexistent/nstrail.jsonl"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nstrail sysctl");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("first line");
    // The reader is gone (`| head -1`); hundreds of rows are still to come.
    let out = child.wait_with_output().expect("wait");
    assert!(first.starts_with("netns "), "{first}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}
