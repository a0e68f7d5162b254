//! What the system says can be written by anyone: a namespace bind-mounted
//! under a name with terminal escape sequences and a newline, a veth named
//! with escapes, a process whose name is an escape sequence. `nstrail ls`
//! and `nstrail tail` show them escaped, list the namespace once under its
//! real name, and JSON keeps the exact bytes.

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use nstrail_tests::{nstrail_binary, require_root, NetnsIdentity, RunningAgent};

/// Sets the terminal's title, then clears the screen; then a newline.
const HOSTILE: &str = "nt-\u{1b}]0;owned\u{7}\u{1b}[2J-\n-end";

/// A namespace whose only bind mount is at /run/netns/<name>; unmounted
/// and removed on drop.
struct BoundNetns {
    path: PathBuf,
}

impl BoundNetns {
    fn new(name: &str) -> Self {
        let dir = Path::new("/run/netns");
        std::fs::create_dir_all(dir).expect("/run/netns");
        let path = dir.join(format!("{name}-{}", std::process::id()));
        let guard = Self { path: path.clone() };
        // unshare --net=FILE makes a namespace and bind-mounts it at FILE.
        std::fs::write(&path, b"").expect("mount point");
        let mut arg = std::ffi::OsString::from("--net=");
        arg.push(&path);
        let status = Command::new("unshare").arg(arg).arg("true").status().expect("unshare");
        assert!(status.success(), "unshare --net=FILE");
        guard
    }
}

impl Drop for BoundNetns {
    fn drop(&mut self) {
        let path = std::ffi::CString::new(self.path.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: a valid path string; detaching our own bind mount.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Output of an nstrail command, checked for raw control bytes.
fn nstrail(args: &[&OsStr]) -> String {
    let out = Command::new(nstrail_binary()).args(args).output().expect("nstrail");
    assert!(out.status.success(), "nstrail {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn no_raw_controls(text: &str) {
    let raw: Vec<char> = text.chars().filter(|c| c.is_control() && *c != '\n').collect();
    assert!(raw.is_empty(), "raw control characters reach the terminal: {raw:?} in\n{text}");
}

#[test]
fn hostile_names_are_escaped_in_ls_and_tail_and_listed_once() {
    require_root();
    let bound = BoundNetns::new(HOSTILE);
    let identity = NetnsIdentity::of_path(&bound.path);
    let shown_name = format!("{HOSTILE}-{}", std::process::id());
    let escaped = format!("nt-\\e]0;owned\\x07\\e[2J-\\n-end-{}", std::process::id());

    // A veth with an escape-sequence name inside it (the kernel refuses
    // only '/', ':' and white space in device names).
    let device = "\u{1b}[2Jv";
    let peer = format!("ntp{}", std::process::id() % 100_000);
    let mut netns_arg = std::ffi::OsString::from("--net=");
    netns_arg.push(&bound.path);
    let added = Command::new("nsenter")
        .arg(&netns_arg)
        .args(["ip", "link", "add", device, "type", "veth", "peer", "name", &peer])
        .status()
        .expect("ip link add");
    assert!(added.success());

    let socket = std::env::temp_dir().join(format!("nstrail-hostile-{}.sock", std::process::id()));
    let agent = RunningAgent::start(&socket);

    // JSON: the exact name, once; never "before agent" twice.
    let listing: serde_json::Value =
        serde_json::from_str(&nstrail(&["ls".as_ref(), "--json".as_ref(), "--socket".as_ref(), socket.as_os_str()]))
            .expect("ls JSON");
    let records: Vec<_> = listing["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .filter(|r| r["id"].as_u64() == Some(identity.id))
        .collect();
    assert_eq!(records.len(), 1, "listed once: {records:?}");
    assert_eq!(records[0]["names"], serde_json::json!([shown_name]));
    assert!(records[0]["devices"].as_array().expect("devices").iter().any(|d| d["name"] == device), "{records:?}");

    // Text: escaped, nothing raw.
    let table = nstrail(&["ls".as_ref(), "--socket".as_ref(), socket.as_os_str()]);
    no_raw_controls(&table);
    let row = table.lines().find(|l| l.starts_with(&identity.inode.to_string())).expect("its row");
    assert!(row.contains(&escaped), "{row}");
    assert!(row.contains("\\e[2Jv"), "the device name escaped: {row}");

    // tail: a process named with an escape sequence enters it.
    let mut tail = Command::new(nstrail_binary())
        .args(["tail", "--type", "netns_enter", "--socket"])
        .arg(&socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tail");
    let dir = std::env::temp_dir().join(format!("nstrail-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let evil = dir.join("\u{1b}[31mevil");
    let _ = std::fs::remove_file(&evil);
    std::os::unix::fs::symlink(which("nsenter"), &evil).expect("symlink");
    let stdout = tail.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Entered again every second until tail shows it: tail may not have
    // subscribed yet when the first enter happens.
    let deadline = Instant::now() + nstrail_tests::patience(Duration::from_secs(20));
    let line = 'found: loop {
        let entered = Command::new(&evil).arg(&netns_arg).arg("true").status().expect("enter");
        assert!(entered.success());
        let next = Instant::now() + Duration::from_secs(1);
        while let Ok(line) = lines.recv_timeout(next.saturating_duration_since(Instant::now())) {
            if line.contains("\\e[31mevil") {
                break 'found line;
            }
        }
        assert!(Instant::now() < deadline, "the enter never showed in tail");
    };
    let _ = tail.kill();
    let _ = tail.wait();
    no_raw_controls(&line);
    assert!(line.contains(&escaped), "the namespace name, escaped: {line}");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(program)).find(|p| p.is_file()))
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}
