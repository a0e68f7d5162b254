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
        let scratch = std::env::temp_dir().join(format!("nstrail-bench-{}", std::process::id()));
        let socket = scratch.join("api.sock");
        // The audit log is on, as by default, but in a scratch folder.
        let _ = std::fs::remove_dir_all(&scratch);
        let mut child = Command::new(nstrail)
            .args(["run", "--metrics-listen", "127.0.0.1:0", "--audit-log"])
            .arg(scratch.join("events.jsonl"))
            .arg("--socket")
            .arg(&socket)
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

/// `nstrail ls` against an agent, and offline, with `count` extra live
/// namespaces; and the agent's resident memory then.
fn inventory_at_scale(nstrail: &Path, bench: &Path, count: u64, rounds: usize) -> Result<String> {
    eprintln!("bench: nstrail ls with {count} extra live namespaces ({rounds} rounds)");
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
    let agent = RunningAgent::start(nstrail)?;
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
    let (mut via_agent, mut offline, mut listed) = (Vec::new(), Vec::new(), 0);
    for _ in 0..rounds {
        let (ms, n) = time_ls(&["ls", "--json", "--socket", &socket])?;
        via_agent.push(ms);
        listed = n;
        offline.push(time_ls(&["ls", "--json", "--offline"])?.0);
    }
    let rss = agent.rss_kib();
    agent.stop()?;
    drop(holder.stdin.take());
    let _ = holder.wait();
    Ok(format!(
        "| nstrail ls (agent), {listed} namespaces listed | {:.0} ms median ({:.0}-{:.0}) |\n| nstrail ls --offline | {:.0} ms median ({:.0}-{:.0}) |\n| agent RSS after the listings | {:.1} MiB |\n",
        median(&via_agent),
        via_agent.iter().cloned().fold(f64::MAX, f64::min),
        via_agent.iter().cloned().fold(f64::MIN, f64::max),
        median(&offline),
        offline.iter().cloned().fold(f64::MAX, f64::min),
        offline.iter().cloned().fold(f64::MIN, f64::max),
        rss as f64 / 1024.0
    ))
}

pub fn run(root: &Path, rounds: usize, only: Option<&str>) -> Result<()> {
    let nstrail = root.join("target/release/nstrail");
    let bench = root.join("target/release/nstrail-bench");
    // SAFETY: sysconf has no preconditions; 2 = _SC_CLK_TCK.
    let ticks_per_s = unsafe { sysconf(2) }.max(1) as f64;
    let mut results = Vec::new();
    let inventory = if only.is_none_or(|o| o == "inventory") {
        Some(inventory_at_scale(&nstrail, &bench, 1000, rounds)?)
    } else {
        None
    };
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
        let cpu_per_k = if s.events > 0 { format!("{:.1}", s.agent_cpu_ms * 1000.0 / s.events as f64) } else { "-".into() };
        table.push_str(&format!(
            "| {case} | {c_off:.0} | {c_on:.0} | {c_ratio:.3} | {c_lo:.3}-{c_hi:.3} | {w_ratio:.3} | {w_lo:.3}-{w_hi:.3} | {} | {} | {cpu_per_k} |\n",
            s.events, s.lost
        ));
        json.push(format!(
            "{{\"case\":\"{case}\",\"about\":\"{about}\",\"ops_per_round\":{iterations},\"cpu_ns_per_op_off\":{c_offs:?},\"cpu_ns_per_op_on\":{c_ons:?},\"cpu_ratio_median\":{c_ratio:.4},\"cpu_ratio_min\":{c_lo:.4},\"cpu_ratio_max\":{c_hi:.4},\"wall_ns_per_op_off\":{w_offs:?},\"wall_ns_per_op_on\":{w_ons:?},\"wall_ratio_median\":{w_ratio:.4},\"wall_ratio_min\":{w_lo:.4},\"wall_ratio_max\":{w_hi:.4},\"events\":{},\"lost\":{},\"agent_cpu_ms\":{:.1}}}",
            s.events, s.lost, s.agent_cpu_ms
        ));
    }
    if let Some(inventory) = &inventory {
        table.push_str("\n| inventory at 1,000 extra namespaces | figure |\n|---|---|\n");
        table.push_str(inventory);
    }
    println!("{table}");
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("results.json");
    std::fs::write(&path, format!("{{\"machine\":\"{}\",\"rounds\":{rounds},\"cases\":[{}]}}\n", machine().replace('"', "'"), json.join(",")))?;
    eprintln!("bench: results written to {}", path.display());
    Ok(())
}
