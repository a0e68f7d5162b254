//! `cargo xtask bench`: every workload with the agent off and on,
//! alternating within one run, reported as ratios (median and spread),
//! plus the agent's CPU time per 1,000 events. Results are printed as a
//! table and written to target/bench/results.json.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

/// (case, iterations per round, what it shows)
const CASES: &[(&str, u64, &str)] = &[
    ("fork-exit", 3000, "fork+exit: tp_btf/sched_process_fork on every fork"),
    ("fork-exec", 1000, "fork+exec of /bin/true"),
    ("netns-churn", 400, "unshare(CLONE_NEWNET) in a child that exits: create+destroy"),
    ("sysctl-read", 50000, "open+read+close of a /proc/sys file (cgroup/sysctl returns at once)"),
    ("sysctl-write", 10000, "open+write+close of a sysctl in a private netns (one event each)"),
    ("udp-sendmsg", 300000, "UDP send on loopback: unrelated traffic"),
    ("veth-move", 100, "ip link add veth, move one end into a namespace, delete (3 ip runs)"),
];

/// One measurement: wall-clock and CPU nanoseconds per operation.
#[derive(Clone, Copy)]
struct PerOp {
    wall: f64,
    cpu: f64,
}

struct Sample {
    off: Vec<PerOp>,
    on: Vec<PerOp>,
    agent_cpu_ms: f64,
    events: u64,
    lost: u64,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 0 { (v[mid - 1] + v[mid]) / 2.0 } else { v[mid] }
}

fn run_workload(bench: &Path, case: &str, iterations: u64) -> Result<PerOp> {
    let out = Command::new(bench).args([case, &iterations.to_string()]).output().with_context(|| format!("running {case}"))?;
    if !out.status.success() {
        bail!("workload {case} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("workload {case} printed no {key}: {text}"))
    };
    Ok(PerOp { wall: field("ns_per_op=")?, cpu: field("cpu_ns_per_op=")? })
}

/// A running agent whose JSON output is counted, not kept.
struct RunningAgent {
    child: Child,
    socket: std::path::PathBuf,
    events: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl RunningAgent {
    fn start(nstrail: &Path) -> Result<Self> {
        Self::start_with(nstrail, &["--metrics-listen", "127.0.0.1:0"])
    }

    fn start_with(nstrail: &Path, extra: &[&str]) -> Result<Self> {
        let scratch = std::env::temp_dir().join(format!("nstrail-bench-{}", std::process::id()));
        let socket = scratch.join("api.sock");
        // The audit log is on, as by default, but in a scratch folder.
        let _ = std::fs::remove_dir_all(&scratch);
        let mut child = Command::new(nstrail)
            .args(["run", "--audit-log"])
            .arg(scratch.join("events.jsonl"))
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the agent")?;
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        match lines.next() {
            Some(Ok(first)) if first.contains("\"agent_start\"") => {}
            other => bail!("the agent did not start: {other:?}"),
        }
        let events = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let (e, l) = (events.clone(), lost.clone());
        let reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line.contains("\"type\":\"lost\"") {
                    let count = line.split("\"count\":").nth(1).and_then(|r| r.split([',', '}']).next()).and_then(|n| n.parse().ok());
                    l.fetch_add(count.unwrap_or(1), Ordering::Relaxed);
                } else {
                    e.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Self { child, socket, events, lost, reader: Some(reader) })
    }

    /// utime + stime of the agent, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after_comm = stat.rsplit(')').next().unwrap_or_default();
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        // Fields after the comm: state is index 0; utime and stime are 11 and 12.
        fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
    }

    fn stop(mut self) -> Result<(u64, u64)> {
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
    fn kill(pid: i32, sig: i32) -> i32;
    fn sysconf(name: i32) -> i64;
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()).unwrap_or_default();
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} x {model}, Linux {}", kernel.trim())
}

/// Unix ns of an event timestamp (`2026-11-28T00:35:04.123456789Z`).
fn ts_unix_ns(ts: &str) -> Option<i128> {
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

fn now_unix_ns() -> i128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as i128
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Time of one GET /metrics, and the number of nstrail_netns_info series.
fn scrape(port: u16) -> Result<(f64, usize)> {
    use std::io::{Read, Write};
    let start = std::time::Instant::now();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    Ok((ms, body.lines().filter(|l| l.starts_with("nstrail_netns_info{")).count()))
}

/// Kernel-to-`nstrail tail` latency at a steady event rate, and the highest
/// rate sustained without loss.
fn latency_and_rate(nstrail: &Path, bench: &Path) -> Result<String> {
    eprintln!("bench: kernel-to-tail latency at 1,000 events/s, and sysctl writes at full speed");
    let agent = RunningAgent::start(nstrail)?;
    let socket = agent.socket.display().to_string();
    let mut tail = Command::new(nstrail)
        .args(["tail", "--json", "--type", "sysctl_write", "--socket", &socket])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nstrail tail")?;
    let lines = BufReader::new(tail.stdout.take().expect("stdout")).lines();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = latencies.clone();
    let reader = std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let now = now_unix_ns();
            if let Some(ts) = line.split("\"ts\":\"").nth(1).and_then(|r| r.get(..30)).and_then(ts_unix_ns) {
                sink.lock().expect("lock").push((now - ts) as f64 / 1000.0);
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: sysconf has no preconditions; 2 = _SC_CLK_TCK.
    let tick_ms = 1000.0 / unsafe { sysconf(2) }.max(1) as f64;
    let cpu_before = agent.cpu_ticks();
    let out = Command::new(bench).args(["paced-sysctl-writes", "5000", "1000"]).output()?;
    if !out.status.success() {
        bail!("paced writes failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::thread::sleep(Duration::from_millis(500));
    let steady_cpu_ms_per_k = (agent.cpu_ticks() - cpu_before) as f64 * tick_ms / 5.0;
    let mut samples = latencies.lock().expect("lock").clone();
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| samples.get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1))).copied().unwrap_or(f64::NAN);
    let (p50, p99, seen) = (pct(0.50), pct(0.99), samples.len());

    // Rising steady rates, 2 s each: the highest one delivered with no loss.
    let mut sustained = 0;
    for rate in [5_000u64, 10_000, 20_000, 40_000, 80_000] {
        let lost_before = agent.lost.load(Ordering::Relaxed);
        let out = Command::new(bench).args(["paced-sysctl-writes", &(rate * 2).to_string(), &rate.to_string()]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let elapsed_ns: f64 = text.split("elapsed_ns=").nth(1).and_then(|v| v.trim().parse().ok()).unwrap_or(f64::MAX);
        std::thread::sleep(Duration::from_millis(1200));
        let kept_pace = elapsed_ns < 2.2e9;
        if agent.lost.load(Ordering::Relaxed) == lost_before && kept_pace {
            sustained = rate;
        } else {
            break;
        }
    }

    // Full speed: as many writes as the machine makes, each one event.
    let events_before = agent.events.load(Ordering::Relaxed);
    let lost_before = agent.lost.load(Ordering::Relaxed);
    let start = std::time::Instant::now();
    let out = Command::new(bench).args(["sysctl-write", "100000"]).output()?;
    if !out.status.success() {
        bail!("sysctl writes failed");
    }
    let elapsed = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1500));
    let delivered = agent.events.load(Ordering::Relaxed) - events_before;
    let lost = agent.lost.load(Ordering::Relaxed) - lost_before;
    let rss = agent.rss_kib();
    // SAFETY: signalling our own child.
    unsafe { kill(tail.id() as i32, 2) };
    let _ = tail.wait();
    let _ = reader.join();
    agent.stop()?;
    Ok(format!(
        "| kernel-to-tail latency at 1,000 events/s ({seen} of 5000 seen) | p50 {p50:.0} us, p99 {p99:.0} us |\n| agent CPU per 1,000 events at 1,000 events/s (5.5 s, everything included: audit log, stream, stdout, rescans) | {steady_cpu_ms_per_k:.1} ms |\n| highest steady rate with zero loss (sysctl_write events, 2 s steps) | {sustained} events/s |\n| sysctl writes at full speed: 100,000 in {elapsed:.1} s | {:.0} events/s delivered, {lost} lost |\n| agent RSS after that | {:.1} MiB |\n",
        delivered as f64 / elapsed,
        rss as f64 / 1024.0
    ))
}

/// `nstrail ls` against an agent, and offline, with `count` extra live
/// namespaces; /metrics with the per-namespace info series on; and the
/// agent's resident memory then.
fn inventory_at_scale(nstrail: &Path, bench: &Path, count: u64, rounds: usize) -> Result<String> {
    eprintln!("bench: nstrail ls and /metrics with {count} extra live namespaces ({rounds} rounds)");
    let mut holder = Command::new(bench)
        .args(["hold-namespaces", &count.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the namespace holder")?;
    let mut first = String::new();
    BufReader::new(holder.stdout.as_mut().expect("stdout")).read_line(&mut first)?;
    if !first.starts_with("held=") {
        bail!("the namespace holder failed: {first}");
    }
    let port = free_port()?;
    let config = std::env::temp_dir().join(format!("nstrail-bench-{}.toml", std::process::id()));
    std::fs::write(&config, format!("[metrics]\nnetns_info = true\nnetns_info_limit = {}\n", count + 100))?;
    let agent = RunningAgent::start_with(
        nstrail,
        &["--metrics-listen", &format!("127.0.0.1:{port}"), "--config", config.to_str().unwrap_or_default()],
    )?;
    let time_ls = |args: &[&str]| -> Result<(f64, usize)> {
        let start = std::time::Instant::now();
        let out = Command::new(nstrail).args(args).output()?;
        let elapsed = start.elapsed().as_secs_f64() * 1000.0;
        if !out.status.success() {
            bail!("nstrail {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok((elapsed, String::from_utf8_lossy(&out.stdout).matches("\"inode\"").count()))
    };
    let socket = agent.socket.display().to_string();
    let (mut via_agent, mut offline, mut scrapes, mut listed, mut series) = (Vec::new(), Vec::new(), Vec::new(), 0, 0);
    for _ in 0..rounds {
        let (ms, n) = time_ls(&["ls", "--json", "--socket", &socket])?;
        via_agent.push(ms);
        listed = n;
        if count <= 1000 {
            offline.push(time_ls(&["ls", "--json", "--offline"])?.0);
        }
        let (ms, n) = scrape(port)?;
        scrapes.push(ms);
        series = n;
    }
    let _ = std::fs::remove_file(&config);
    let rss = agent.rss_kib();
    agent.stop()?;
    drop(holder.stdin.take());
    let _ = holder.wait();
    let range = |v: &[f64]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            format!(
                "{:.0} ms median ({:.0}-{:.0})",
                median(v),
                v.iter().cloned().fold(f64::MAX, f64::min),
                v.iter().cloned().fold(f64::MIN, f64::max)
            )
        }
    };
    Ok(format!(
        "| {count} extra namespaces: nstrail ls (agent), {listed} listed | {} |\n| {count} extra namespaces: nstrail ls --offline | {} |\n| {count} extra namespaces: GET /metrics with {series} info series | {} |\n| {count} extra namespaces: agent RSS | {:.1} MiB |\n",
        range(&via_agent),
        range(&offline),
        range(&scrapes),
        rss as f64 / 1024.0
    ))
}

/// veth-move with and without a bare RTNLGRP_LINK listener (no nstrail),
/// alternating: the kernel's own cost of anyone listening to link
/// notifications, which the agent's device listener also pays.
fn link_listener_baseline(bench: &Path, rounds: usize) -> Result<String> {
    const OPS: u64 = 50;
    eprintln!("bench: veth-move with a bare RTNLGRP_LINK listener ({OPS} ops x {rounds} rounds)");
    let (mut alone, mut listened) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        alone.push(run_workload(bench, "veth-move", OPS)?);
        let mut listener = Command::new(bench)
            .arg("rtnl-link-listener")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the bare listener")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(listener.stdout.take().context("stdout")?), &mut line)?;
        let measured = run_workload(bench, "veth-move", OPS);
        drop(listener.stdin.take());
        listener.wait()?;
        listened.push(measured?);
    }
    let ratio = |pick: fn(&PerOp) -> f64| {
        let ratios: Vec<f64> = listened.iter().zip(&alone).map(|(l, a)| pick(l) / pick(a)).collect();
        median(&ratios)
    };
    Ok(format!(
        "| veth-move with a bare RTNLGRP_LINK listener (no nstrail) / without, {rounds} rounds | wall ratio {:.3}, CPU ratio {:.3} (median) |\n",
        ratio(|p| p.wall),
        ratio(|p| p.cpu)
    ))
}

pub fn run(root: &Path, rounds: usize, only: Option<&str>) -> Result<()> {
    let nstrail = root.join("target/release/nstrail");
    let bench = root.join("target/release/nstrail-bench");
    // SAFETY: sysconf has no preconditions; 2 = _SC_CLK_TCK.
    let ticks_per_s = unsafe { sysconf(2) }.max(1) as f64;
    let mut results = Vec::new();
    let mut extra = String::new();
    // Latency first: tearing down the inventory cases' 11,000 namespaces
    // keeps the kernel and the agent busy for seconds afterwards.
    if only.is_none_or(|o| o == "latency") {
        extra.push_str(&latency_and_rate(&nstrail, &bench)?);
    }
    if only.is_none_or(|o| o == "inventory") {
        extra.push_str(&inventory_at_scale(&nstrail, &bench, 1000, rounds)?);
        extra.push_str(&inventory_at_scale(&nstrail, &bench, 10000, 3)?);
    }
    if only.is_none_or(|o| o == "veth-move") {
        extra.push_str(&link_listener_baseline(&bench, rounds)?);
    }
    for &(case, iterations, about) in CASES.iter().filter(|(c, _, _)| only.is_none_or(|o| o == *c)) {
        eprintln!("bench: {case} ({iterations} ops x {rounds} rounds, agent off and on alternating)");
        // Warm-up, not measured.
        run_workload(&bench, case, iterations / 10 + 1)?;
        let mut sample = Sample { off: vec![], on: vec![], agent_cpu_ms: 0.0, events: 0, lost: 0 };
        for round in 0..rounds {
            let on_first = round % 2 == 1;
            for agent_on in [on_first, !on_first] {
                if agent_on {
                    let agent = RunningAgent::start(&nstrail)?;
                    let before = agent.cpu_ticks();
                    sample.on.push(run_workload(&bench, case, iterations)?);
                    // Let the agent drain what the round produced, then count its CPU.
                    std::thread::sleep(Duration::from_millis(300));
                    sample.agent_cpu_ms += (agent.cpu_ticks() - before) as f64 * 1000.0 / ticks_per_s;
                    let (events, lost) = agent.stop()?;
                    sample.events += events;
                    sample.lost += lost;
                } else {
                    sample.off.push(run_workload(&bench, case, iterations)?);
                }
            }
        }
        results.push((case, about, iterations, sample));
    }

    let mut table = String::new();
    table.push_str(&format!("machine: {}\n", machine()));
    table.push_str("CPU = user+sys time of the workload (probes run in its context); wall = elapsed time, noisy on shared machines.\n");
    table.push_str("| case | CPU ns/op off | CPU ns/op on | CPU ratio on/off (median) | CPU ratio spread | wall ratio (median) | wall ratio spread | events | lost | agent CPU ms per 1,000 events |\n");
    table.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    let mut json = Vec::new();
    for (case, about, iterations, s) in &results {
        let stats = |pick: fn(&PerOp) -> f64| {
            let ratios: Vec<f64> = s.on.iter().zip(&s.off).map(|(on, off)| pick(on) / pick(off)).collect();
            let (lo, hi) = ratios.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
            let off: Vec<f64> = s.off.iter().map(pick).collect();
            let on: Vec<f64> = s.on.iter().map(pick).collect();
            (median(&off), median(&on), median(&ratios), lo, hi, off, on)
        };
        let (c_off, c_on, c_ratio, c_lo, c_hi, c_offs, c_ons) = stats(|p| p.cpu);
        let (_, _, w_ratio, w_lo, w_hi, w_offs, w_ons) = stats(|p| p.wall);
        // Too few events make the per-event figure meaningless.
        let cpu_per_k = if s.events >= 1000 { format!("{:.1}", s.agent_cpu_ms * 1000.0 / s.events as f64) } else { "-".into() };
        table.push_str(&format!(
            "| {case} | {c_off:.0} | {c_on:.0} | {c_ratio:.3} | {c_lo:.3}-{c_hi:.3} | {w_ratio:.3} | {w_lo:.3}-{w_hi:.3} | {} | {} | {cpu_per_k} |\n",
            s.events, s.lost
        ));
        json.push(format!(
            "{{\"case\":\"{case}\",\"about\":\"{about}\",\"ops_per_round\":{iterations},\"cpu_ns_per_op_off\":{c_offs:?},\"cpu_ns_per_op_on\":{c_ons:?},\"cpu_ratio_median\":{c_ratio:.4},\"cpu_ratio_min\":{c_lo:.4},\"cpu_ratio_max\":{c_hi:.4},\"wall_ns_per_op_off\":{w_offs:?},\"wall_ns_per_op_on\":{w_ons:?},\"wall_ratio_median\":{w_ratio:.4},\"wall_ratio_min\":{w_lo:.4},\"wall_ratio_max\":{w_hi:.4},\"events\":{},\"lost\":{},\"agent_cpu_ms\":{:.1}}}",
            s.events, s.lost, s.agent_cpu_ms
        ));
    }
    if !extra.is_empty() {
        table.push_str("\n| measurement | figure |\n|---|---|\n");
        table.push_str(&extra);
    }
    println!("{table}");
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("results.json");
    std::fs::write(&path, format!("{{\"machine\":\"{}\",\"rounds\":{rounds},\"cases\":[{}]}}\n", machine().replace('"', "'"), json.join(",")))?;
    eprintln!("bench: results written to {}", path.display());
    Ok(())
}
