//! Shared by the deployment tests (docker.rs, prometheus.rs and the deploy_*.rs
//! binaries): the repository's files, the Python tools `cargo xtask setup`
//! installs, YAML, and a Docker daemon that is cleaned up even when a test
//! fails; the release artefacts and the Kubernetes base (`artefacts`), and
//! the DaemonSet as Docker arguments (`daemonset`).
#![allow(dead_code)]

pub mod artefacts;
pub mod daemonset;

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

/// The workspace root (tests/ is one of its members).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Where `cargo xtask setup` keeps its tools (as xtask/src/setup.rs names it).
fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("NSTRAIL_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("nstrail")
}

/// A program of the Python environment setup made (kubernetes-validate,
/// the Prometheus Operator's CRD models, PyYAML).
pub fn python_tool(name: &str) -> PathBuf {
    let path = cache_root().join("python/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask setup` (it installs the deploy tests' tools)",
        path.display()
    );
    path
}

/// Every document of a YAML file, as JSON.
pub fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(python_tool("python"))
        .args(["-c", "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)"])
        .arg(path)
        .output()
        .expect("run python");
    assert!(out.status.success(), "{} is not YAML: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

/// The only document of a YAML file.
pub fn yaml(path: &Path) -> serde_json::Value {
    let mut docs = yaml_documents(path);
    assert_eq!(docs.len(), 1, "{}: one document", path.display());
    docs.remove(0)
}

/// Output of a finished command, failing the test with its stderr when it failed.
pub fn checked(mut cmd: Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// GET a path on 127.0.0.1:port; the body of a 200 reply.
pub fn http_get(port: u16, path_and_query: &str) -> Option<String> {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?;
    (status == "200").then(|| body.to_owned())
}

/// Percent-encodes a query parameter.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Debian's Docker CLI (another client may come first in PATH).
pub const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";

/// A Docker daemon: the one already running on the default socket, else
/// Debian's dockerd started for this test process with everything of its
/// own under one temporary folder (data, exec root with the containers'
/// netns bind mounts, its containerd), no iptables rules, no ip_forward
/// change and no default bridge. On drop the daemon is stopped, every mount
/// it left unmounted, the folder removed and the host's forwarding
/// settings put back as they were.
pub struct Docker {
    host: String,
    own: Option<OwnDaemon>,
    /// One daemon per test process at a time (tests run in parallel threads).
    _serial: std::sync::MutexGuard<'static, ()>,
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held by whatever in this test process takes over host-wide state (a
/// Docker daemon, a booted systemd, an agent in the host's network
/// namespace, which gives every new namespace an nsid): one at a time.
pub fn host_lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A mounted cgroup hierarchy: v1 (controllers or a name) or cgroup2.
pub struct Hierarchy {
    pub point: PathBuf,
    pub v2: bool,
    /// Super options: the v1 controllers, `name=systemd`.
    pub options: String,
}

/// This host's mounted cgroup hierarchies.
pub fn cgroup_hierarchies() -> Vec<Hierarchy> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let options = right.nth(1).unwrap_or("").to_owned();
            let point = left.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| Hierarchy {
                point: PathBuf::from(point),
                v2: fstype == "cgroup2",
                options,
            })
        })
        .collect()
}

/// Removes a cgroup and every cgroup below it, deepest first, waiting (up
/// to 10 s) for processes that were just killed to leave them.
pub fn remove_cgroup_tree(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    fn children(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect())
            .unwrap_or_default()
    }
    for child in children(dir) {
        remove_cgroup_tree(&child);
    }
    while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct OwnDaemon {
    child: std::process::Child,
    dir: PathBuf,
    forwarding: Vec<(PathBuf, String)>,
    /// What dockerd makes outside its roots whatever it is told, when it
    /// was not there before: its key, the plugin folder, the `docker` cgroups.
    leftovers: Vec<PathBuf>,
}

/// Files and folders (deepest first) dockerd 20.10 creates on the host
/// even with its own data and exec roots.
const DOCKERD_MAKES: &[&str] = &["/etc/docker/key.json", "/run/docker/plugins", "/run/docker"];

/// Host settings dockerd may change (it is told not to; checked anyway).
const FORWARDING: &[&str] = &["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"];

impl Docker {
    pub fn start() -> Self {
        nstrail_tests::require_root();
        let serial = host_lock();
        assert!(
            Path::new(DOCKER).exists() && Path::new(DOCKERD).exists(),
            "Debian's docker.io is missing: run `cargo xtask setup`"
        );
        let system = "unix:///var/run/docker.sock".to_owned();
        if Path::new("/var/run/docker.sock").exists() && Self::answers(&system) {
            return Self { host: system, own: None, _serial: serial };
        }
        let dir = std::env::temp_dir().join(format!("nstrail-docker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("docker dir");
        let forwarding =
            FORWARDING.iter().filter_map(|p| std::fs::read_to_string(p).ok().map(|v| (PathBuf::from(p), v))).collect();
        // With the cgroupfs driver (no systemd on the host), runc puts
        // containers under a `docker` cgroup in every hierarchy, and nobody
        // removes it.
        let cgroups = cgroup_hierarchies().into_iter().map(|h| h.point.join("docker"));
        let leftovers = DOCKERD_MAKES.iter().map(PathBuf::from).chain(cgroups).filter(|p| !p.exists()).collect();
        let host = format!("unix://{}", dir.join("docker.sock").display());
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("dockerd log");
        let child = Command::new(DOCKERD)
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .args(["-H", &host])
            .args(["--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let docker = Self { host, own: Some(OwnDaemon { child, dir, forwarding, leftovers }), _serial: serial };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !Self::answers(&docker.host) {
            let own = docker.own.as_ref().expect("own daemon");
            let log = std::fs::read_to_string(own.dir.join("dockerd.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "dockerd did not answer within 60 s:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
        docker
    }

    fn answers(host: &str) -> bool {
        Command::new(DOCKER)
            .args(["-H", host, "version", "--format", "{{.Server.Version}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Whether this test process started the daemon.
    pub fn is_own(&self) -> bool {
        self.own.is_some()
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(DOCKER);
        cmd.args(["-H", &self.host]);
        cmd
    }

    /// `docker ARGS`, its trimmed stdout; fails the test if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let mut cmd = self.command();
        cmd.args(args);
        checked(cmd)
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run docker")
    }

    /// A busybox image made with `docker import` (no registry), removed on drop.
    pub fn busybox_image(&self) -> Image<'_> {
        let name = format!("nstrail-test-busybox:{}", std::process::id());
        let rootfs = std::env::temp_dir().join(format!("nstrail-busybox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&rootfs);
        std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
        for tool in ["sh", "sleep", "true", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).expect("symlink");
        }
        let tar = Command::new("tar").arg("-C").arg(&rootfs).args(["-c", "."]).stdout(Stdio::piped()).spawn();
        let mut tar = tar.expect("tar");
        let mut import = self.command();
        import.args(["import", "-", &name]).stdin(tar.stdout.take().expect("tar stdout"));
        let image = Image { docker: self, name: name.clone() };
        checked(import);
        assert!(tar.wait().expect("tar").success());
        let _ = std::fs::remove_dir_all(&rootfs);
        image
    }

    /// Loads a `docker save` / OCI archive; the image named `tag` in it is
    /// removed on drop unless it was there before.
    pub fn load(&self, archive: &Path, tag: &str) -> Image<'_> {
        let existed = self.output(&["image", "inspect", tag]).status.success();
        let out = self.ok(&["load", "-i", archive.to_str().expect("UTF-8 path")]);
        assert!(out.contains(tag), "docker load: {out}");
        let name = if existed {
            // Keep the user's image: ours gets a name of its own.
            let own = format!("nstrail-test-image:{}", std::process::id());
            self.ok(&["tag", tag, &own]);
            own
        } else {
            tag.to_owned()
        };
        Image { docker: self, name }
    }

    /// A bridge network named uniquely (its bridge too), removed on drop.
    pub fn network(&self, tag: &str) -> Network<'_> {
        let name = format!("nstrail-{tag}-{}", std::process::id());
        let bridge = format!("ntd{}{}", std::process::id() % 100_000, tag.chars().next().unwrap_or('x'));
        let network = Network { docker: self, name: name.clone(), bridge: bridge.clone() };
        self.ok(&["network", "create", "--internal", "-o", &format!("com.docker.network.bridge.name={bridge}"), &name]);
        network
    }

    /// A container name removed (`docker rm -f`) on drop.
    pub fn container(&self, tag: &str) -> Container<'_> {
        Container { docker: self, name: format!("nstrail-{tag}-{}", std::process::id()) }
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let Some(own) = self.own.as_mut() else { return };
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(own.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && matches!(own.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(own.child.try_wait(), Ok(None)) {
            let _ = own.child.kill();
            let _ = own.child.wait();
        }
        // dockerd leaves its host-network namespace's bind mount (exec/netns/default),
        // and a killed one its containers' mounts: innermost first.
        let dir = own.dir.to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut under: Vec<&str> =
            mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&dir)).collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in under {
            if let Ok(path) = std::ffi::CString::new(mount) {
                // SAFETY: a NUL-terminated path.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _ = std::fs::remove_dir_all(&own.dir);
        for path in &own.leftovers {
            // Folders only when empty: nothing of anybody else's goes.
            let _ = if path.is_dir() { std::fs::remove_dir(path) } else { std::fs::remove_file(path) };
        }
        for (path, value) in &own.forwarding {
            if std::fs::read_to_string(path).ok().as_ref() != Some(value) {
                let _ = std::fs::write(path, value);
            }
        }
    }
}

pub struct Image<'a> {
    docker: &'a Docker,
    pub name: String,
}

impl Drop for Image<'_> {
    fn drop(&mut self) {
        let _ = self.docker.output(&["rmi", "-f", &self.name]);
    }
}

pub struct Network<'a> {
    docker: &'a Docker,
    pub name: String,
    /// The Linux bridge behind it.
    pub bridge: String,
}

impl Drop for Network<'_> {
    fn drop(&mut self) {
        let _ = self.docker.output(&["network", "rm", &self.name]);
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).stderr(Stdio::null()).status();
    }
}

pub struct Container<'a> {
    docker: &'a Docker,
    pub name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.docker.output(&["rm", "-f", &self.name]);
    }
}
