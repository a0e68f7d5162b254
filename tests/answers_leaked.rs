//! Leaked namespaces, from the real agent: `nstrail ls --leaked`, the
//! `netns_leaked` record (once each, in the stream, the audit log and the
//! metrics), `tail`, `show` and `sysctl` on them; and names with escape
//! sequences and newlines, printed escaped. One namespace's story and its
//! sysctls: answers_story.rs.

mod answers_support;

use std::{
    collections::BTreeSet,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use answers_support::{helper, os, wait_json, Agent};
use nstrail_tests::{field, nstrail_binary, require_root, Background, NamedNetns, Scratch};
use serde_json::Value;

/// A namespace bind-mounted at `path` and nowhere else (`unshare
/// --net=FILE`); unmounted and removed on drop, with the folders it made.
struct BoundNetns {
    path: PathBuf,
    made_dirs: Vec<PathBuf>,
}

impl BoundNetns {
    fn new(path: PathBuf) -> Self {
        let mut made_dirs = Vec::new();
        for dir in path.ancestors().skip(1).collect::<Vec<_>>().into_iter().rev() {
            if !dir.exists() {
                std::fs::create_dir(dir).expect("mount folder");
                made_dirs.push(dir.to_path_buf());
            }
        }
        made_dirs.reverse();
        let guard = Self { path: path.clone(), made_dirs };
        std::fs::write(&path, b"").expect("mount point");
        let mut arg = std::ffi::OsString::from("--net=");
        arg.push(&path);
        assert!(Command::new("unshare").arg(arg).arg("true").status().expect("unshare").success());
        guard
    }
}

fn cstring(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL")
}

impl Drop for BoundNetns {
    fn drop(&mut self) {
        // SAFETY: a valid path string; detaching our own bind mount.
        unsafe { libc::umount2(cstring(&self.path).as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_file(&self.path);
        for dir in &self.made_dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn leaked_ids(listing: &Value) -> BTreeSet<u64> {
    listing["leaked"].as_array().expect("leaked").iter().filter_map(|l| l["id"].as_u64()).collect()
}

fn ns_id(path: &Path) -> u64 {
    nstrail::sys::nsfs::ns_id(path).expect("namespace id")
}

#[test]
fn leaked_namespaces_are_named_with_their_holders_once_and_escaped() {
    require_root();
    let dir = Scratch::new("leaks");
    let agent = Agent::start(&dir.0);
    // Held by an fd of a sleeping process only.
    let (mut held, _) = NamedNetns::add("leak-fd");
    let fd_id = held.identity().id;
    let holder = Background::start(helper(), &["hold-fd", &held.path().display().to_string()]);
    let (holder_pid, holder_fd) = (field(&holder.first_line, "pid"), field(&holder.first_line, "fd"));
    held.delete();
    // Held by a bind mount only, under a name with an escape sequence and a newline.
    let name = format!("nt-\u{1b}[31mred\n-leak-{}", std::process::id());
    let escaped = format!("nt-\\e[31mred\\n-leak-{}", std::process::id());
    let mounted = BoundNetns::new(Path::new("/run/netns").join(&name));
    let mount_id = ns_id(&mounted.path);
    // A namespace with a process in it.
    let (busy, _) = NamedNetns::add("leak-busy");
    let busy_id = busy.identity().id;
    let _member = Background::start("ip", &["netns", "exec", &busy.name, helper(), "tcp-listen"]);

    let started = Instant::now();
    let listing =
        wait_json(&agent, &["ls", "--leaked"], "both leaks", |l| leaked_ids(l).is_superset(&[fd_id, mount_id].into()));
    eprintln!("leaked after {:?} (leak age 2 s, rescans every 2 s)", started.elapsed());
    assert!(!leaked_ids(&listing).contains(&busy_id), "a namespace with a process is not leaked");
    let leak = |id: u64| listing["leaked"].as_array().unwrap().iter().find(|l| l["id"] == id).unwrap().clone();
    let by_fd = leak(fd_id);
    assert_eq!(
        by_fd["holders"],
        serde_json::json!({"mounts": [], "fds": [{"pid": holder_pid, "fd": holder_fd, "comm": "netns-helper"}]})
    );
    assert!(by_fd["age_seconds"].as_u64().unwrap() >= 2 && by_fd["without_processes_since"].is_string());
    let by_mount = leak(mount_id);
    assert_eq!(by_mount["holders"], serde_json::json!({"mounts": [mounted.path.to_str().unwrap()], "fds": []}));
    assert_eq!(by_mount["names"], serde_json::json!([name]));
    assert!(leaked_ids(&agent.json(&["ls", "--leaked", "--older-than", "1h"])).is_disjoint(&[fd_id, mount_id].into()));
    assert!(leaked_ids(&agent.json(&["ls", "--leaked", "--older-than", "1s"])).is_superset(&[fd_id, mount_id].into()));

    // One netns_leaked record each, in the stream, the log and the metrics, however long it stays.
    std::thread::sleep(Duration::from_millis(4500));
    let leaked_records = || -> Vec<Value> {
        agent._agent.lines.lock().unwrap().iter().filter(|l| l["type"] == "netns_leaked").cloned().collect()
    };
    let ours = |records: Vec<Value>| -> Vec<Value> {
        records
            .into_iter()
            .filter(|r| [fd_id, mount_id, busy_id].contains(&r["netns"]["id"].as_u64().unwrap()))
            .collect()
    };
    let before = leaked_records();
    let stream = ours(before.clone());
    let ids: Vec<u64> = stream.iter().filter_map(|l| l["netns"]["id"].as_u64()).collect();
    assert_eq!(ids.iter().filter(|i| **i == fd_id).count(), 1, "once per namespace: {stream:?}");
    assert_eq!(ids.iter().filter(|i| **i == mount_id).count(), 1, "once per namespace: {stream:?}");
    assert_eq!(ids.len(), 2, "none for the namespace with a process: {stream:?}");
    let record = stream.iter().find(|l| l["netns"]["id"] == fd_id).unwrap();
    assert_eq!(
        record["holders"]["fds"],
        serde_json::json!([{"pid": holder_pid, "fd": holder_fd, "comm": "netns-helper"}])
    );
    assert_eq!(record["without_processes_since"], by_fd["without_processes_since"]);
    let record = stream.iter().find(|l| l["netns"]["id"] == mount_id).unwrap();
    assert_eq!(record["netns"]["name"], name.as_str());
    let logged = std::fs::read_to_string(&agent.log).expect("audit log");
    let logged: Vec<Value> = logged
        .lines()
        .filter_map(|l| nstrail::audit::split_line(l).and_then(|(json, _, _)| serde_json::from_str(&json).ok()))
        .filter(|r: &Value| r["type"] == "netns_leaked")
        .collect();
    assert_eq!(ours(logged), stream, "the audit log has the same records");
    let metrics = agent.scrape();
    std::thread::sleep(Duration::from_millis(200));
    let after = leaked_records();
    let value = |name: &str| -> f64 {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(-1.0)
    };
    // Other tests' namespaces may leak meanwhile: the count lies between the records before and after.
    let counted = value("nstrail_netns_leaked_total");
    assert!(before.len() as f64 <= counted && counted <= after.len() as f64, "{counted}: {metrics}");
    assert!(value("nstrail_netns_without_processes") >= 2.0, "{metrics}");

    // tail --type netns_leaked, from the log: escaped.
    let mut tail = agent.command(&[
        os("tail"),
        os("--since"),
        os("10m"),
        os("--type"),
        os("netns_leaked"),
        os("--audit-log"),
        agent.log.as_os_str(),
    ]);
    let mut tail = tail.stdout(std::process::Stdio::piped()).spawn().expect("tail");
    let stdout = tail.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("the mount's leak in tail");
        if line.contains(&format!("(id {mount_id} ")) {
            break line;
        }
    };
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(line.contains(&format!("{escaped}) leaked: no member process since")), "{line}");
    assert!(!line.chars().any(|c| c.is_control()), "{line:?}");

    // Text: every name escaped.
    let table = agent.text(&[os("ls"), os("--leaked")]);
    let header: Vec<&str> =
        table.lines().next().unwrap().split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(header, ["INODE", "ID", "NAME", "NO PROCESS SINCE", "FOR", "HELD BY"], "{table}");
    // Word by word: inode, id, name, since (date, time), age, holder.
    let row_of = |id: u64| -> Vec<String> {
        let row = table.lines().find(|l| l.split_whitespace().nth(1) == Some(&id.to_string())).expect("its row");
        row.split_whitespace().map(str::to_owned).collect()
    };
    let since = |leak: &Value| -> Vec<String> {
        let since = leak["without_processes_since"].as_str().unwrap();
        since[..19].split('T').map(str::to_owned).collect()
    };
    let age_shown = |words: &mut Vec<String>| {
        let age = words.remove(5);
        let secs: u64 = age.strip_suffix('s').and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("age {age}"));
        assert!((2..120).contains(&secs), "{age}");
    };
    let mut words = row_of(mount_id);
    age_shown(&mut words);
    let mut want = vec![mounted_inode(&mounted).to_string(), mount_id.to_string(), escaped.clone()];
    want.extend(since(&by_mount));
    want.extend(["mount".to_owned(), format!("/run/netns/{escaped}")]);
    assert_eq!(words, want, "{table}");
    let mut words = row_of(fd_id);
    age_shown(&mut words);
    let mut want = vec![by_fd["inode"].to_string(), fd_id.to_string(), "-".to_owned()];
    want.extend(since(&by_fd));
    want.extend(["fd", &holder_fd.to_string(), "of", &format!("netns-helper[{holder_pid}]")].map(str::to_owned));
    assert_eq!(words, want, "{table}");
    let story = agent.text(&[os("show"), os(&name)]);
    assert!(
        story.starts_with(&format!("netns {} (id {mount_id}) {escaped}: live\n", mounted_inode(&mounted))),
        "{story}"
    );
    assert!(story.contains("LEAKED"), "{story}");
    let sysctls = agent.text(&[os("sysctl"), os(&name)]);
    assert!(sysctls.lines().next().unwrap().contains(&escaped), "{sysctls}");
    let refused = agent.refused(&[os("show"), os("\u{1b}[31mnope\n")]);
    assert!(refused.starts_with("nstrail: error: no namespace matches \\e[31mnope\\n: "), "{refused:?}");

    // Two namespaces with one name: refused, with both.
    let twin = BoundNetns::new(Path::new("/run/docker/netns").join(&name));
    let twin_id = ns_id(&twin.path);
    let ambiguous = agent.refused(&[os("show"), os(&name)]);
    assert!(ambiguous.starts_with(&format!("nstrail: error: {escaped} matches 2 namespaces: ")), "{ambiguous}");
    assert!(
        ambiguous.contains(&format!("(id {mount_id}, {escaped})"))
            && ambiguous.contains(&format!("(id {twin_id}, {escaped})"))
    );
    assert!(ambiguous.trim_end().ends_with("; ask by id") && ambiguous.lines().count() == 1, "{ambiguous}");
    drop(twin);

    // Offline: every namespace without a process now, age unknown.
    let offline = Command::new(nstrail_binary()).args(["ls", "--leaked", "--offline", "--json"]).output().expect("ls");
    let offline: Value = serde_json::from_slice(&offline.stdout).expect("JSON");
    assert_eq!(offline["age_known"], false);
    assert!(leaked_ids(&offline).is_superset(&[fd_id, mount_id].into()) && !leaked_ids(&offline).contains(&busy_id));
    let text = Command::new(nstrail_binary()).args(["ls", "--leaked", "--offline"]).output().expect("ls");
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("(offline: every namespace without a member process now; how long it has had none"),
        "{text}"
    );
    assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
    drop((holder, mounted));
}

fn mounted_inode(bound: &BoundNetns) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&bound.path).expect("stat"))
}
