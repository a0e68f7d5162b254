//! Pod identity from the container runtime: Debian's containerd with its
//! CRI plugin, started by this test with a private root, socket and CNI
//! bridge, drives pod sandboxes through the CRI API as kubelet does
//! (RunPodSandbox with pod-level sysctls, StopPodSandbox, RemovePodSandbox).
//! The agent, asking that runtime, names the pod on the namespace's events.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nstrail::sys::cri::{proto::Writer, Runtime};
use nstrail_tests::{names_netns, NetnsIdentity, RunningAgent, Scratch};

const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const SANDBOX_IMAGE: &str = "localhost/nstrail-test/pause:1";
/// The CNI bridge of the test's pods (no gateway, no masquerading: CNI
/// touches neither iptables nor ip_forward).
const BRIDGE: &str = "nstrailcri0";
const CGROUP_PARENT: &str = "/nstrail-cri-test";

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime").block_on(future)
}

/// One CRI call; panics with the runtime's message when it fails.
fn call(socket: &Path, method: &'static str, request: Writer) -> Vec<u8> {
    block_on(async {
        let mut runtime = Runtime::connect(socket).await.expect("connect to containerd's CRI");
        runtime.call(method, &request.into_bytes()).await.unwrap_or_else(|err| panic!("{method}: {err}"))
    })
}

/// Debian's containerd with the CRI plugin, rooted in a scratch folder,
/// stopped and cleaned up (sandboxes, shims, bridge, cgroups, mounts) when
/// dropped.
struct Containerd {
    dir: Scratch,
    child: std::process::Child,
    socket: PathBuf,
    ip_forward: String,
    made_run_containerd: bool,
    /// Shim sockets that were there before (containerd 1.6 shims always
    /// listen in /run/containerd/s, whatever the config says).
    shim_sockets_before: Vec<PathBuf>,
}

const SHIM_SOCKETS: &str = "/run/containerd/s";

fn shim_sockets() -> Vec<PathBuf> {
    std::fs::read_dir(SHIM_SOCKETS).into_iter().flatten().flatten().map(|e| e.path()).collect()
}

impl Containerd {
    fn start() -> Self {
        for needed in [CONTAINERD, CTR, "/usr/lib/cni/bridge", "/usr/lib/cni/host-local"] {
            assert!(Path::new(needed).exists(), "{needed} is missing: run `cargo xtask setup`");
        }
        let dir = Scratch::new("cri");
        let root = &dir.0;
        let socket = root.join("containerd.sock");
        let cni = root.join("cni");
        std::fs::create_dir_all(&cni).unwrap();
        std::fs::write(
            cni.join("10-nstrail-test.conflist"),
            format!(
                r#"{{"cniVersion":"0.4.0","name":"nstrail-test","plugins":[{{"type":"bridge","bridge":"{BRIDGE}","ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.88.77.0/24"}}]],"dataDir":"{}"}}}}]}}"#,
                root.join("ipam").display()
            ),
        )
        .unwrap();
        let config = root.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}/root"
state = "{root}/state"
[grpc]
  address = "{socket}"
[ttrpc]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{root}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
    max_conf_num = 1
"#,
                root = root.display(),
                socket = socket.display(),
                cni = cni.display()
            ),
        )
        .unwrap();
        let image = sandbox_image(root);
        let ip_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
        let made_run_containerd = !Path::new("/run/containerd").exists();
        let shim_sockets_before = shim_sockets();
        let log = std::fs::File::create(root.join("containerd.log")).unwrap();
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let containerd = Self { dir, child, socket, ip_forward, made_run_containerd, shim_sockets_before };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !containerd.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not answer: {}", containerd.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        let imported =
            containerd.ctr(&["-n", "k8s.io", "images", "import", "--all-platforms", image.to_str().unwrap()]);
        assert!(imported.status.success(), "ctr images import: {}", String::from_utf8_lossy(&imported.stderr));
        containerd
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new(CTR).arg("-a").arg(&self.socket).args(args).output().expect("ctr")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("containerd.log")).unwrap_or_default()
    }

    /// RunPodSandbox as kubelet sends it; the sandbox id.
    fn run_pod(&self, namespace: &str, name: &str, uid: &str, sysctls: &[(&str, &str)]) -> String {
        // PodSandboxMetadata { name = 1, uid = 2, namespace = 3, attempt = 4 }
        let mut metadata = Writer::new();
        metadata.string(1, name).string(2, uid).string(3, namespace);
        // LinuxPodSandboxConfig { cgroup_parent = 1, sysctls = 3 }
        let mut linux = Writer::new();
        linux.string(1, CGROUP_PARENT).map(3, sysctls.iter().copied());
        // PodSandboxConfig { metadata = 1, hostname = 2, log_directory = 3, labels = 6, linux = 8 }
        let logs = self.dir.0.join("pods").join(uid);
        std::fs::create_dir_all(&logs).unwrap();
        let mut config = Writer::new();
        config
            .message(1, &metadata)
            .string(2, name)
            .string(3, logs.to_str().unwrap())
            .map(6, [("app", name)])
            .message(8, &linux);
        // RunPodSandboxRequest { config = 1 } -> { pod_sandbox_id = 1 }
        let mut request = Writer::new();
        request.message(1, &config);
        let reply = call(&self.socket, "/runtime.v1.RuntimeService/RunPodSandbox", request);
        nstrail::sys::cri::proto::Message::parse(&reply).expect("RunPodSandbox reply").string(1)
    }

    fn sandbox_call(&self, method: &'static str, id: &str) {
        let mut request = Writer::new();
        request.string(1, id);
        call(&self.socket, method, request);
    }

    fn stop_pod(&self, id: &str) {
        self.sandbox_call("/runtime.v1.RuntimeService/StopPodSandbox", id);
    }

    fn remove_pod(&self, id: &str) {
        self.sandbox_call("/runtime.v1.RuntimeService/RemovePodSandbox", id);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Sandboxes first, through CRI (CNI DEL frees the addresses and devices).
        let socket = self.socket.clone();
        let sandboxes = block_on(async {
            let mut runtime = Runtime::connect(&socket).await.ok()?;
            runtime.pod_sandboxes().await.ok()
        });
        for sandbox in sandboxes.unwrap_or_default() {
            let _ = std::panic::catch_unwind(|| {
                self.stop_pod(&sandbox.id);
                self.remove_pod(&sandbox.id);
            });
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims of this containerd (they outlive it by design).
        let address = self.socket.to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("containerd-shim") && cmdline.contains(&address) {
                if let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() {
                    // SAFETY: a shim of the containerd this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).stderr(Stdio::null()).status();
        let now = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
        if now != self.ip_forward && !self.ip_forward.is_empty() {
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.ip_forward);
        }
        // Mounts under the scratch folder (rootfs, shm), deepest first.
        let root = self.dir.0.to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> =
            mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&root)).collect();
        points.sort_unstable_by(|a, b| b.cmp(a));
        for point in points {
            let _ = Command::new("umount").args(["-l", point]).status();
        }
        for cgroups in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            remove_cgroup(&cgroups.path().join(CGROUP_PARENT.trim_start_matches('/')));
        }
        remove_cgroup(&Path::new("/sys/fs/cgroup").join(CGROUP_PARENT.trim_start_matches('/')));
        for socket in shim_sockets() {
            if !self.shim_sockets_before.contains(&socket) {
                let _ = std::fs::remove_file(socket);
            }
        }
        if self.made_run_containerd {
            let _ = std::fs::remove_dir_all("/run/containerd");
        }
    }
}

/// Removes a cgroup folder and the empty ones below it.
fn remove_cgroup(dir: &Path) {
    for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup(&child.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A busybox-static image whose entrypoint sleeps, as a docker-archive
/// tarball made here (no registry): the pod sandboxes' "pause" image.
fn sandbox_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("image-rootfs");
    let archive = dir.join("image");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(&archive).unwrap();
    for empty in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(empty)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static (cargo xtask setup)");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sleep")).unwrap();
    let layer = archive.join("layer.tar");
    let tarred = Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()
        .expect("tar");
    assert!(tarred.success());
    let diff_id = sha256(&layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":["/bin/sleep","2147483647"],"Env":["PATH=/bin"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}}}}"#
    );
    std::fs::write(archive.join("config.json"), &config).unwrap();
    std::fs::write(
        archive.join("manifest.json"),
        format!(r#"[{{"Config":"config.json","RepoTags":["{SANDBOX_IMAGE}"],"Layers":["layer.tar"]}}]"#),
    )
    .unwrap();
    let tarball = dir.join("pause.tar");
    let tarred = Command::new("tar")
        .arg("-C")
        .arg(&archive)
        .arg("-cf")
        .arg(&tarball)
        .args(["manifest.json", "config.json", "layer.tar"])
        .status()
        .expect("tar");
    assert!(tarred.success());
    tarball
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned()
}

/// A `nstrail tail` child whose JSON lines are collected as they come;
/// stopped (and reaped) however the test ends.
struct Tail {
    child: std::process::Child,
    records: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Tail {
    fn spawn(args: &[&str]) -> Self {
        let mut child =
            Command::new(nstrail_tests::nstrail_binary()).args(args).stdout(Stdio::piped()).spawn().expect("tail");
        let stdout = child.stdout.take().expect("stdout");
        let records = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = records.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(serde_json::from_str(&line).expect("JSON line"));
            }
        });
        Self { child, records }
    }

    fn records(&self) -> Vec<serde_json::Value> {
        self.records.lock().unwrap().clone()
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

#[test]
fn pods_made_through_cri_are_named_on_their_namespace() {
    nstrail_tests::require_root();
    let containerd = Containerd::start();
    let dir = Scratch::new("cri-agent");
    let config = dir.0.join("nstrail.toml");
    std::fs::write(
        &config,
        format!("[inventory]\ncri_socket = \"{}\"\n[metrics]\nnetns_info = true\n", containerd.socket.display()),
    )
    .unwrap();
    let socket = dir.0.join("api.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let agent = RunningAgent::start_with(
        &socket,
        &["--metrics-listen", &listen, "--no-audit-log", "--config", config.to_str().unwrap()],
    );

    let uid = format!("nstrail-test-{}", std::process::id());
    let sandbox = containerd.run_pod("shop", "web", &uid, &[("net.ipv4.tcp_keepalive_time", "600")]);
    let path = block_on(async {
        let mut runtime = Runtime::connect(&containerd.socket).await.unwrap();
        runtime.sandbox_netns(&sandbox).await.expect("PodSandboxStatus")
    })
    .expect("the sandbox's netns path");
    let netns = NetnsIdentity::of_path(&path);
    let pod = serde_json::json!({"namespace": "shop", "name": "web", "uid": uid});

    // The runtime made the namespace, CNI its veth, runc wrote the pod's
    // sysctl, all before the pod could be known: one record ties them.
    agent.wait_for("the create, the veth and the sysctl write", |records| {
        records.iter().any(|r| r["type"] == "netns_create" && names_netns(r, "netns", netns.id))
            && records.iter().any(|r| {
                r["type"] == "veth_create"
                    && (names_netns(&r["device"], "netns", netns.id) || names_netns(&r["peer"], "netns", netns.id))
            })
            && records.iter().any(|r| {
                r["type"] == "sysctl_write"
                    && names_netns(r, "netns", netns.id)
                    && r["sysctl"] == "net.ipv4.tcp_keepalive_time"
                    && r["new"] == "600"
            })
    });
    agent.wait_for("netns_identified with the pod", |records| {
        records
            .iter()
            .any(|r| r["type"] == "netns_identified" && names_netns(r, "netns", netns.id) && r["netns"]["pod"] == pod)
    });
    let identified: Vec<_> = agent
        .records()
        .into_iter()
        .filter(|r| r["type"] == "netns_identified" && names_netns(r, "netns", netns.id) && r["netns"]["pod"] == pod)
        .collect();
    assert_eq!(identified.len(), 1, "the pod is announced once: {identified:#?}");
    eprintln!("identified: {}", identified[0]);

    // From then on, every event about the namespace names the pod; `tail
    // --pod` follows just that pod.
    let tail = Tail::spawn(&["tail", "--json", "--pod", "shop/web", "--socket", socket.to_str().unwrap()]);
    let wrote = |records: &[serde_json::Value]| {
        records.iter().any(|r| r["type"] == "sysctl_write" && r["sysctl"] == "net.ipv4.tcp_fin_timeout")
    };
    // Written again every second until tail shows it: tail may not have
    // subscribed yet the first time.
    let deadline = Instant::now() + nstrail_tests::patience(Duration::from_secs(20));
    while !wrote(&tail.records()) {
        assert!(Instant::now() < deadline, "tail --pod never showed the pod's write: {:#?}", tail.records());
        let entered = Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["sysctl", "-w", "net.ipv4.tcp_fin_timeout=30"])
            .output()
            .expect("nsenter");
        assert!(entered.status.success(), "{}", String::from_utf8_lossy(&entered.stderr));
        std::thread::sleep(Duration::from_secs(1));
    }
    agent.wait_for("the enter and the write, with the pod", |records| {
        records
            .iter()
            .any(|r| r["type"] == "netns_enter" && names_netns(r, "netns", netns.id) && r["netns"]["pod"] == pod)
            && records.iter().any(|r| {
                r["type"] == "sysctl_write"
                    && names_netns(r, "netns", netns.id)
                    && r["sysctl"] == "net.ipv4.tcp_fin_timeout"
                    && r["netns"]["pod"] == pod
            })
    });

    let followed = tail.records();
    drop(tail);
    if let Some(write) = followed.iter().find(|r| r["type"] == "sysctl_write") {
        eprintln!("the pod's write: {write}");
    }
    assert!(followed.iter().all(|r| r["netns"]["pod"] == pod), "only the pod's events: {followed:#?}");
    let metrics = scrape(port);
    assert!(
        metrics.lines().any(|l| l.starts_with("nstrail_netns_info{")
            && l.contains(&format!("id=\"{}\"", netns.id))
            && l.contains("pod=\"shop/web\"")),
        "the info series names the pod:\n{metrics}"
    );

    // `nstrail ls`: the pod in JSON and in its own column.
    let listed = Command::new(nstrail_tests::nstrail_binary())
        .args(["ls", "--json", "--socket"])
        .arg(&socket)
        .output()
        .expect("nstrail ls");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("ls JSON");
    let row = listed["namespaces"].as_array().and_then(|n| n.iter().find(|r| r["id"] == netns.id).cloned());
    assert_eq!(row.as_ref().map(|r| r["pod"].clone()), Some(pod.clone()), "ls --json row: {row:?}");
    let table = Command::new(nstrail_tests::nstrail_binary()).arg("ls").arg("--socket").arg(&socket).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.lines().next().is_some_and(|h| h.contains("POD")), "{table}");
    assert!(table.lines().any(|l| l.contains(&netns.id.to_string()) && l.contains("shop/web")), "{table}");

    // `nstrail show namespace/name`: the pod's namespace, with its story.
    let shown = Command::new(nstrail_tests::nstrail_binary())
        .args(["show", "shop/web", "--json", "--socket"])
        .arg(&socket)
        .output()
        .expect("nstrail show");
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout)
        .unwrap_or_else(|_| panic!("show JSON: {}", String::from_utf8_lossy(&shown.stderr)));
    assert_eq!(shown["netns"]["id"], netns.id, "{shown:#}");
    assert_eq!(shown["netns"]["pod"], pod, "{shown:#}");

    // Teardown as kubelet does it: the destroy still names the pod.
    containerd.stop_pod(&sandbox);
    containerd.remove_pod(&sandbox);
    agent.wait_for("the destroy, with the pod", |records| {
        records
            .iter()
            .any(|r| r["type"] == "netns_destroy" && names_netns(r, "netns", netns.id) && r["netns"]["pod"] == pod)
    });
    let printed = agent.stop();
    assert!(printed.iter().all(|r| r["type"] != "lost"), "nothing lost");
    drop(containerd);
    assert!(!Path::new(&format!("/sys/class/net/{BRIDGE}")).exists(), "the test's bridge is gone");
}
