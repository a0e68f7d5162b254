//! Shared by the binary's integration tests: the agent as a child process.

#![allow(dead_code)] // each test file uses a different part

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

pub const NSTRAIL: &str = env!("CARGO_BIN_EXE_nstrail");

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
        let mut child = Command::new(NSTRAIL)
            .arg("run")
            .arg("--socket")
            .arg(socket)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nstrail run");
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
        ready.recv_timeout(Duration::from_secs(30)).expect("agent started");
        // The socket is bound before the first record is written.
        assert!(socket.exists(), "API socket at {}", socket.display());
        Self { child, lines }
    }

    /// Namespace ids of the netns_create records printed so far.
    pub fn creates(&self) -> Vec<u64> {
        self.lines.lock().unwrap().iter().filter(|l| l["type"] == "netns_create").filter_map(|l| l["netns"]["id"].as_u64()).collect()
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

