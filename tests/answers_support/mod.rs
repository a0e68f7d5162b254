//! Shared by the answers tests (answers_story.rs, answers_leaked.rs): the
//! netns-helper binary, and a real agent (2 s leak age, audit log, metrics)
//! with the ways the tests ask it (`nstrail ... --socket`, JSON or text).
// Each test binary uses part of it.
#![allow(dead_code)]

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use nstrail_tests::{nstrail_binary, RunningAgent};
use serde_json::Value;

pub fn helper() -> &'static str {
    env!("CARGO_BIN_EXE_netns-helper")
}

/// An agent with a 2 s leak age, an audit log and metrics on `port`.
pub struct Agent {
    pub _agent: RunningAgent,
    socket: PathBuf,
    pub log: PathBuf,
    port: u16,
}

impl Agent {
    pub fn start(dir: &Path) -> Self {
        let config = dir.join("nstrail.toml");
        std::fs::write(&config, "[inventory]\nleak_age = \"2s\"\n").expect("config");
        let (socket, log) = (dir.join("api.sock"), dir.join("events.jsonl"));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = format!("127.0.0.1:{port}");
        let args =
            ["--metrics-listen", &listen, "--audit-log", log.to_str().unwrap(), "--config", config.to_str().unwrap()];
        Self { _agent: RunningAgent::start_with(&socket, &args), socket, log, port }
    }

    /// `nstrail ARGS --socket S` (and `--audit-log` for the commands that read it).
    pub fn command(&self, args: &[&OsStr]) -> Command {
        let mut command = Command::new(nstrail_binary());
        command.args(args).arg("--socket").arg(&self.socket);
        if matches!(args.first().and_then(|a| a.to_str()), Some("show" | "sysctl")) {
            command.arg("--audit-log").arg(&self.log);
        }
        command
    }

    pub fn text(&self, args: &[&OsStr]) -> String {
        let out = self.command(args).output().expect("nstrail");
        assert!(out.status.success(), "nstrail {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).expect("UTF-8 output");
        let raw: Vec<char> = text.chars().filter(|c| c.is_control() && *c != '\n').collect();
        assert!(raw.is_empty(), "raw control characters reach the terminal: {raw:?} in\n{text}");
        text
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        args.push(OsStr::new("--json"));
        serde_json::from_str(&self.text(&args)).expect("JSON")
    }

    /// stderr of a command that must fail.
    pub fn refused(&self, args: &[&OsStr]) -> String {
        let out = self.command(args).output().expect("nstrail");
        assert_eq!(out.status.code(), Some(1), "nstrail {args:?} must fail");
        String::from_utf8(out.stderr).expect("UTF-8")
    }

    /// Waits for a record of the agent's stream for which `done` holds.
    pub fn wait_record(&self, what: &str, done: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + nstrail_tests::patience(Duration::from_secs(20));
        while !self._agent.lines.lock().unwrap().iter().any(&done) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to /metrics");
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        response.split_once("\r\n\r\n").expect("HTTP").1.to_owned()
    }
}

pub fn os(text: &str) -> &OsStr {
    OsStr::new(text)
}

/// Waits for `done` on the JSON `nstrail` prints for `args`.
pub fn wait_json(agent: &Agent, args: &[&str], what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + nstrail_tests::patience(Duration::from_secs(20));
    loop {
        let value = agent.json(args);
        if done(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last answer:\n{value:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
