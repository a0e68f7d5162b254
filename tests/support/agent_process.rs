//! The `nstrail` binary as a child process, as users run it.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// The `nstrail` binary of this build: `NSTRAIL_BIN`, else the one next to
/// the test executables (`cargo xtask test` builds it first).
pub fn nstrail_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NSTRAIL_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test> -> target/<profile>/nstrail
    let exe = std::env::current_exe().expect("test executable path");
    let binary = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>").join("nstrail");
    assert!(
        binary.exists(),
        "{} is missing: build it first (cargo build -p nstrail), or use cargo xtask test",
        binary.display()
    );
    binary
}

/// `nstrail run` as a child process, its JSON lines collected, stopped with
/// SIGTERM on drop.
pub struct RunningAgent {
    pub child: std::process::Child,
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl RunningAgent {
    pub fn start(socket: &std::path::Path) -> Self {
        // Port 0: parallel tests never fight over the default metrics port.
        Self::start_with(socket, &["--metrics-listen", "127.0.0.1:0", "--no-audit-log"])
    }

    pub fn start_with(socket: &std::path::Path, extra: &[&str]) -> Self {
        Self::start_limited(socket, extra, None)
    }

    /// Like [`start_with`](Self::start_with), with at most `max_fds` open
    /// descriptors (soft and hard limit) when given.
    pub fn start_limited(socket: &std::path::Path, extra: &[&str], max_fds: Option<u64>) -> Self {
        let mut command = Command::new(nstrail_binary());
        command.arg("run").arg("--socket").arg(socket).args(extra).stdout(Stdio::piped()).stderr(Stdio::null());
        if let Some(max) = max_fds {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; it runs in the child before exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit { rlim_cur: max, rlim_max: max };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("start nstrail run");
        let stdout = child.stdout.take().expect("stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ready_tx, ready) = mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
                if value["type"] == "agent_start" {
                    let _ = ready_tx.send(());
                }
                sink.lock().unwrap().push(value);
            }
        });
        ready.recv_timeout(crate::patience(Duration::from_secs(30))).expect("agent started");
        // The socket is bound before the first record is written.
        assert!(socket.exists(), "API socket at {}", socket.display());
        Self { child, lines }
    }

    /// Every record the agent printed so far.
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the records printed so far; fails
    /// with `what` and the last records when it does not.
    pub fn wait_for(&self, what: &str, done: impl Fn(&[serde_json::Value]) -> bool) {
        let deadline = Instant::now() + crate::patience(Duration::from_secs(30));
        while !done(&self.lines.lock().unwrap()) {
            if Instant::now() >= deadline {
                let records = self.records();
                let last: Vec<String> = records.iter().rev().take(30).rev().map(|r| r.to_string()).collect();
                panic!("timed out waiting for {what}; the last of {} records:\n{}", records.len(), last.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Namespace ids of the netns_create records printed so far.
    pub fn creates(&self) -> Vec<u64> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["type"] == "netns_create")
            .filter_map(|l| l["netns"]["id"].as_u64())
            .collect()
    }

    pub fn stop(mut self) -> Vec<serde_json::Value> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert!(self.child.wait().expect("wait").success());
        std::thread::sleep(Duration::from_millis(100));
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        // Never signal a pid that was already reaped (it may belong to another process now).
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: signalling our own, still running, child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

/// Whether a printed record's namespace object under `key` (`netns`,
/// `to_netns`, ...) is the namespace with unique id `id`.
pub fn names_netns(record: &serde_json::Value, key: &str, id: u64) -> bool {
    record[key]["id"].as_u64() == Some(id)
}
