//! The agent under test as the bench starts, counts and stops it, and
//! small helpers (clock, ports, scrapes).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use anyhow::{bail, Context as _, Result};

/// A running agent whose JSON output is counted, not kept.
pub(super) struct RunningAgent {
    pub(super) child: Child,
    /// Its `agent_start` record.
    pub(super) start_line: String,
    pub(super) socket: std::path::PathBuf,
    pub(super) events: Arc<AtomicU64>,
    pub(super) lost: Arc<AtomicU64>,
    pub(super) reader: Option<std::thread::JoinHandle<()>>,
}

impl RunningAgent {
    pub(super) fn start(nstrail: &Path) -> Result<Self> {
        Self::start_with(nstrail, &["--metrics-listen", "127.0.0.1:0"])
    }

    pub(super) fn start_with(nstrail: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_logging(nstrail, None, extra)
    }

    /// `log`: where the audit log goes (default: the scratch folder).
    pub(super) fn start_logging(nstrail: &Path, log: Option<&Path>, extra: &[&str]) -> Result<Self> {
        let scratch = std::env::temp_dir().join(format!("nstrail-bench-{}", std::process::id()));
        let socket = scratch.join("api.sock");
        // The audit log is on, as by default, but in a scratch folder.
        let _ = std::fs::remove_dir_all(&scratch);
        let mut child = Command::new(nstrail)
            .args(["run", "--audit-log"])
            .arg(log.map_or_else(|| scratch.join("events.jsonl"), Path::to_path_buf))
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the agent")?;
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let start_line = match lines.next() {
            Some(Ok(first)) if first.contains("\"agent_start\"") => first,
            other => {
                let _ = child.kill();
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                bail!("the agent did not start ({status}): first line {other:?}")
            }
        };
        let events = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let (e, l) = (events.clone(), lost.clone());
        let reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line.contains("\"type\":\"lost\"") {
                    let count = line
                        .split("\"count\":")
                        .nth(1)
                        .and_then(|r| r.split([',', '}']).next())
                        .and_then(|n| n.parse().ok());
                    l.fetch_add(count.unwrap_or(1), Ordering::Relaxed);
                } else {
                    e.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Self { child, start_line, socket, events, lost, reader: Some(reader) })
    }

    /// utime + stime of the agent, in clock ticks.
    pub(super) fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after_comm = stat.rsplit(')').next().unwrap_or_default();
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        // Fields after the comm: state is index 0; utime and stime are 11 and 12.
        fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    }

    pub(super) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub(super) fn stop(mut self) -> Result<(u64, u64)> {
        // SAFETY: signalling our own child.
        unsafe { kill(self.child.id() as i32, 15) };
        let status = self.child.wait()?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if !status.success() {
            bail!("the agent exited with {status}");
        }
        Ok((self.events.load(Ordering::Relaxed), self.lost.load(Ordering::Relaxed)))
    }
}

unsafe extern "C" {
    pub(super) fn kill(pid: i32, sig: i32) -> i32;
    pub(super) fn sysconf(name: i32) -> i64;
}

/// Unix ns of an event timestamp (`2026-11-28T00:35:04.123456789Z`).
pub(super) fn ts_unix_ns(ts: &str) -> Option<i128> {
    let b = ts.as_bytes();
    if b.len() != 30 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, ns) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..29)?);
    // Days from the civil date (proleptic Gregorian).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(((days * 86400 + hh * 3600 + mm * 60 + ss) as i128) * 1_000_000_000 + ns as i128)
}

pub(super) fn now_unix_ns() -> i128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as i128
}

pub(super) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Time of one GET /metrics, and the number of nstrail_netns_info series.
pub(super) fn scrape(port: u16) -> Result<(f64, usize)> {
    use std::io::{Read, Write};
    let start = std::time::Instant::now();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    Ok((ms, body.lines().filter(|l| l.starts_with("nstrail_netns_info{")).count()))
}
