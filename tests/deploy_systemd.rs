//! The agent under systemd: the unit verifies clean and matches the
//! DaemonSet's capabilities, the agent logs for the journal when stderr is
//! the journal stream, and the .deb under a real systemd (booted in a
//! throw-away container) starts the hardened unit, which works in its
//! sandbox and logs to the journal.
//!
//! The artefacts come from `cargo xtask dist` (target/dist), which `cargo
//! xtask test` runs first.

mod deploy_support;

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use deploy_support::{
    artefacts::{daemonset_capabilities, dist, unit_setting, unpacked_tarball, VERSION},
    workspace,
};
use nstrail_tests::Scratch;

#[test]
fn the_systemd_unit_verifies_clean_and_matches_the_daemonset() {
    let tmp = Scratch::new("unit");
    let tree = unpacked_tarball(&tmp.0);
    let unit = std::fs::read_to_string(tree.join("lib/systemd/system/nstrail.service")).expect("packaged unit");
    assert_eq!(unit_setting(&unit, "ExecStart").as_deref(), Some("/usr/local/bin/nstrail run"));
    // Verified where the binary and its man pages are: this host has neither installed.
    let here = tmp.0.join("nstrail.service");
    let binary = tree.join("bin/nstrail");
    std::fs::write(&here, unit.replace("/usr/local/bin/nstrail", binary.to_str().unwrap())).expect("unit copy");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&here)
        .env("MANPATH", tree.join("share/man"))
        .output()
        .expect("systemd-analyze (package systemd)");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");

    let source = std::fs::read_to_string(workspace().join("deploy/systemd/nstrail.service")).expect("unit");
    for (key, value) in [
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("RuntimeDirectory", "nstrail"),
        ("LogsDirectory", "nstrail"),
        ("Restart", "on-failure"),
        ("StandardError", "journal"),
    ] {
        assert_eq!(unit_setting(&source, key).as_deref(), Some(value), "{key}");
    }
    // The same capabilities as the DaemonSet, no more.
    let mut unit_caps: Vec<String> =
        unit_setting(&source, "CapabilityBoundingSet").expect("bounding set").split(' ').map(str::to_owned).collect();
    let mut ds_caps = daemonset_capabilities();
    unit_caps.sort();
    ds_caps.sort();
    assert_eq!(unit_caps, ds_caps);
    // The only writable places are the agent's own.
    for path in ["/run/nstrail", "/var/log/nstrail"] {
        assert!(
            source.contains(&format!("{}Directory=nstrail", if path.starts_with("/run") { "Runtime" } else { "Logs" }))
        );
    }
    assert!(unit_setting(&source, "ReadWritePaths").is_none());

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&here)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&security.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("nstrail.service: ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {text}"));
    assert!(score <= 4.5, "exposure {score} (Falco's unit scores 8.6): {text}");
}

/// Under systemd (StandardError=journal) lines carry `<N>` priorities and no timestamps.
#[test]
fn the_agent_logs_for_the_journal_when_stderr_is_the_journal_stream() {
    use std::os::{fd::FromRawFd as _, unix::fs::MetadataExt as _};
    nstrail_tests::require_root();
    // Its agent gives new namespaces nsids, host-wide state: not at once with
    // this binary's booted systemd. The capability test, which watches an
    // agent without CAP_NET_ADMIN fail to, is another binary
    // (deploy_image.rs): cargo runs test binaries one after another.
    let _host = deploy_support::host_lock();
    let mut fds = [0; 2];
    // SAFETY: a fresh pipe; both ends are owned below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the two fds pipe2 just made, owned once each.
    let (read_end, write_end) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) };
    let meta = write_end.metadata().unwrap();
    let socket = std::env::temp_dir().join(format!("nstrail-journal-{}.sock", std::process::id()));
    let mut child = Command::new(nstrail_tests::nstrail_binary())
        .args(["run", "--no-audit-log", "--metrics-listen", "127.0.0.1:0", "--socket"])
        .arg(&socket)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(write_end))
        .spawn()
        .expect("nstrail run");
    // The first record on stdout: the agent runs and handles SIGTERM.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).expect("agent_start");
    assert!(first.contains("\"agent_start\""), "{first}");
    // One event through, so the agent is in its loop (and handles SIGTERM;
    // a SIGTERM right after agent_start can still come before its handler).
    assert!(Command::new("unshare").args(["-n", "true"]).status().unwrap().success());
    let mut line = String::new();
    while !line.contains("\"netns_create\"") {
        line.clear();
        assert!(stdout.read_line(&mut line).expect("event") > 0, "stdout closed");
    }
    // Keep reading: a closed stdout would stop the agent.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let lines = BufReader::new(read_end).lines();
    let mut seen = Vec::new();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    seen.extend(lines.map_while(Result::ok));
    assert!(status.success(), "{status}: {seen:?}");
    assert!(seen.iter().any(|l| l.starts_with("<6>") && l.contains("probes attached; streaming events")), "{seen:?}");
    assert!(
        seen.iter().all(|l| l.starts_with('<') && !l.contains("Z INFO")),
        "no timestamps, a priority on every line: {seen:?}"
    );
    assert!(seen.last().is_some_and(|l| l.starts_with("<6>stopped: ")), "{seen:?}");

    // An error is priority 3; without the journal, the usual format.
    let mut fds = [0; 2];
    // SAFETY: as above.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: as above.
    let (mut read_end, write_end) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) };
    let meta = write_end.metadata().unwrap();
    let status = Command::new(nstrail_tests::nstrail_binary())
        .args(["run", "--config", "/nonexistent/nstrail.toml"])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(Stdio::from(write_end))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut read_end, &mut text).unwrap();
    assert!(text.starts_with("<3>nstrail: error: cannot read config /nonexistent/nstrail.toml"), "{text}");
    let out = Command::new(nstrail_tests::nstrail_binary())
        .args(["run", "--config", "/nonexistent/nstrail.toml"])
        .env("JOURNAL_STREAM", "0:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("nstrail: error: cannot read config"), "JOURNAL_STREAM not naming stderr: {stderr}");
}

/// systemd as PID 1 of a throw-away container: the host's own file system
/// under an overlay (writes go to a temporary upper layer), its own PID,
/// mount, network, UTS, IPC and cgroup namespaces, booted to basic.target
/// (journald and nothing else). Killed and removed on drop.
struct SystemdContainer {
    unshare: std::process::Child,
    dir: PathBuf,
    /// Host pid of the container's systemd.
    pid: u32,
    /// The cgroups it was started in (name=systemd and/or cgroup2): its
    /// cgroup namespace's root, so the cgroups its systemd makes are under
    /// them, not at the host's roots; removed on drop.
    cgroups: Vec<PathBuf>,
    /// Docker daemons and this share the host's cgroups and mounts: not at once.
    _host: std::sync::MutexGuard<'static, ()>,
}

/// A new cgroup below this process's own, in each hierarchy a systemd
/// manages (the named systemd one on cgroup v1, the cgroup2 one).
fn systemd_cgroups(tag: &str) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    // Lines are ID:CONTROLLERS:PATH; cgroup2's is 0::PATH.
    let path_in = |controllers: &str| {
        own.lines().find_map(|l| {
            let mut fields = l.splitn(3, ':');
            let (_, listed, path) = (fields.next()?, fields.next()?, fields.next()?);
            (listed == controllers).then(|| path.trim_start_matches('/').to_owned())
        })
    };
    deploy_support::cgroup_hierarchies()
        .into_iter()
        .filter_map(|h| {
            let path = if h.v2 {
                path_in("")?
            } else if h.options.split(',').any(|o| o == "name=systemd") {
                path_in("name=systemd")?
            } else {
                return None;
            };
            let dir = h.point.join(path).join(tag);
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cgroup {}: {e}", dir.display()));
            Some(dir)
        })
        .collect()
}

/// Makes `cmd` move itself into `cgroups` before it execs.
fn in_cgroups(cmd: &mut Command, cgroups: &[PathBuf]) {
    let procs: Vec<std::ffi::CString> = cgroups
        .iter()
        .map(|c| std::ffi::CString::new(c.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap())
        .collect();
    // SAFETY: only open, write and close between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            for path in &procs {
                // "0": the writing process itself moves.
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            Ok(())
        })
    };
}

/// Mounts the container's world, then hands over to systemd. `/` is made
/// shared first, as systemd itself does when the kernel starts it: the
/// agent's service then sees `ip netns add` mounts made after it started.
const BOOT: &str = r#"set -e
D="$1"; R="$D/root"
mount --make-rprivate /
mkdir -p "$D/upper" "$D/work" "$R"
mount -t overlay overlay -o "lowerdir=/,upperdir=$D/upper,workdir=$D/work" "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then
    mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
else
    mount -t tmpfs -o mode=755 tmpfs "$R/sys/fs/cgroup"
    mkdir -p "$R/sys/fs/cgroup/systemd" "$R/sys/fs/cgroup/unified"
    mount -t cgroup -o none,name=systemd cgroup "$R/sys/fs/cgroup/systemd"
    mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup/unified"
fi
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
# A real host starts services; the build image's policy-rc.d forbids it.
rm -f "$R/usr/sbin/policy-rc.d"
mkdir -p "$R/oldroot"
cd "$R"
pivot_root . oldroot
umount -l /oldroot
mount --make-rshared /
exec env container=nstrail-test /lib/systemd/systemd --system --unit=basic.target --show-status=false
"#;

impl SystemdContainer {
    fn boot() -> Self {
        let dir = std::env::temp_dir().join(format!("nstrail-systemd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let host = deploy_support::host_lock();
        let cgroups = systemd_cgroups(&format!("nstrail-systemd-{}", std::process::id()));
        let mut unshare = Command::new("unshare");
        unshare
            .args(["--mount", "--pid", "--fork", "--uts", "--ipc", "--net", "--cgroup", "sh", "-c", BOOT, "boot"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        in_cgroups(&mut unshare, &cgroups);
        let unshare = unshare.spawn().expect("unshare in its own cgroups");
        let mut container = Self { pid: 0, unshare, dir, cgroups, _host: host };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", container.unshare.id()));
            let systemd = children.ok().and_then(|c| c.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()));
            if let Some(pid) = systemd
                .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "systemd"))
            {
                container.pid = pid;
                let state = container.sh("systemctl is-system-running || true");
                if state == "running" || state == "degraded" {
                    return container;
                }
            }
            assert!(matches!(container.unshare.try_wait(), Ok(None)), "the container's systemd did not start");
            assert!(Instant::now() < deadline, "systemd did not finish booting");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `nsenter` into all its namespaces, and into a cgroup below its root:
    /// what the agent attaches to that root (cgroup/sysctl) sees it.
    fn enter(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid.to_string(), "-a"]);
        let exec: Vec<PathBuf> = self.cgroups.iter().map(|c| c.join("nstrail-exec")).collect();
        for cgroup in &exec {
            std::fs::create_dir_all(cgroup).unwrap_or_else(|e| panic!("cgroup {}: {e}", cgroup.display()));
        }
        in_cgroups(&mut cmd, &exec);
        cmd
    }

    /// A shell command inside, its trimmed stdout (whatever its exit status).
    fn sh(&self, script: &str) -> String {
        let out = self.enter().args(["sh", "-c", script]).output().expect("nsenter");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn wait_for(&self, what: &str, script: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.sh(script);
            if done(&out) {
                return out;
            }
            assert!(Instant::now() < deadline, "{what}: {out}\n{}", self.sh("journalctl --no-pager -n 30"));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for SystemdContainer {
    fn drop(&mut self) {
        // Killing its PID 1 ends the PID namespace, and with its last
        // process the mount namespace with the overlay goes too.
        if self.pid != 0 {
            // SAFETY: the container's init, a descendant of our child.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        for cgroup in &self.cgroups {
            deploy_support::remove_cgroup_tree(cgroup);
        }
    }
}

#[test]
fn the_deb_under_real_systemd_starts_the_hardened_unit_which_logs_to_the_journal() {
    nstrail_tests::require_root();
    let started = Instant::now();
    let deb = dist(&format!("nstrail_{VERSION}_amd64.deb"));
    let container = SystemdContainer::boot();
    eprintln!("deploy: systemd booted in {:?}", started.elapsed());
    let copy = container
        .enter()
        .args(["sh", "-c", "cat > /tmp/nstrail.deb"])
        .stdin(std::fs::File::open(&deb).unwrap())
        .status()
        .unwrap();
    assert!(copy.success());
    // postinst enables and starts it (deb-systemd-invoke: systemd runs here).
    container.sh("dpkg -i /tmp/nstrail.deb >/tmp/dpkg.log 2>&1");
    assert_eq!(container.sh("systemctl is-enabled nstrail"), "enabled", "{}", container.sh("cat /tmp/dpkg.log"));
    let unit = "nstrail.service";
    container.wait_for("the agent streaming", &format!("journalctl -u {unit} -o cat --no-pager"), |log| {
        log.contains("probes attached; streaming events")
    });
    assert_eq!(container.sh("systemctl is-active nstrail"), "active");

    // The journal has each line at its priority, without the agent's timestamp.
    let journal = container.sh(&format!("journalctl -u {unit} -o json --no-pager _COMM=nstrail"));
    let records: Vec<serde_json::Value> = journal.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let ready = records
        .iter()
        .find(|r| r["MESSAGE"].as_str().is_some_and(|m| m.contains("probes attached; streaming events")))
        .expect("the ready line in the journal");
    assert_eq!(ready["PRIORITY"], "6", "{ready}");
    assert!(
        ready["MESSAGE"].as_str().unwrap().starts_with(|c: char| c.is_ascii_digit()),
        "no timestamp, no <6>: {ready}"
    );
    assert!(records.iter().all(|r| !r["MESSAGE"].as_str().unwrap_or("").starts_with('[')), "{journal}");

    // Exactly the unit's capabilities; only its own folders, root-only.
    let main_pid = container.sh("systemctl show -p MainPID --value nstrail");
    let bounding = container.sh(&format!("grep CapBnd /proc/{main_pid}/status"));
    let expected: u64 = [21, 12, 11, 19, 2, 34].iter().map(|bit| 1u64 << bit).sum();
    assert_eq!(
        bounding,
        format!("CapBnd:\t{expected:016x}"),
        "SYS_ADMIN NET_ADMIN NET_BROADCAST SYS_PTRACE DAC_READ_SEARCH SYSLOG"
    );
    assert_eq!(container.sh("stat -c %a /run/nstrail /var/log/nstrail"), "700\n700");

    // It works inside its sandbox: a namespace, a move and a sysctl read back in it.
    let events = container.sh(
        "ip netns add sdtest && ip link add sdva type veth peer name sdvb && ip link set sdvb netns sdtest \
         && ip netns exec sdtest sysctl -q -w net.ipv4.tcp_keepalive_time=621 && sleep 1 \
         && nstrail ls && ip netns del sdtest",
    );
    assert!(events.lines().any(|l| l.contains("sdtest") && l.contains("sdvb")), "nstrail ls: {events}");
    let write = container.wait_for(
        "the sysctl write in the audit log",
        "grep '\"new\":\"621\"' /var/log/nstrail/events.jsonl",
        |l| !l.is_empty(),
    );
    let write: serde_json::Value = serde_json::from_str(write.lines().next().unwrap()).expect("JSON");
    assert_eq!(write["result"], "applied", "{write}");
    assert!(write["tcp_sockets_in_use"].is_u64(), "{write}");

    // A clean stop, and remove: stopped and masked.
    container.sh("systemctl stop nstrail");
    assert_eq!(container.sh("systemctl show -p Result --value nstrail"), "success");
    assert!(container.sh(&format!("journalctl -u {unit} -o cat --no-pager")).contains("stopped: "));
    container.sh("dpkg -r nstrail >/dev/null 2>&1");
    assert_eq!(container.sh("systemctl is-enabled nstrail || true"), "masked");
    drop(container);
    eprintln!("deploy: .deb under systemd took {:?}", started.elapsed());
}
