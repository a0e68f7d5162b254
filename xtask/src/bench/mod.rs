//! `cargo xtask bench`: every workload with the agent off and on,
//! alternating within one run, reported as ratios (median and spread),
//! plus the agent's CPU time per 1,000 events. Results are printed as a
//! table and written to target/bench/results.json (or, in a VM guest, to
//! the folder `--out` names: see `cargo xtask bench --kernel` in vm/).

use std::{path::Path, process::Command, time::Duration};

use anyhow::{bail, Context as _, Result};

/// (case, iterations per round, iterations per round under software
/// emulation (TCG: 5-20 times slower per syscall, far more per fork or
/// exec; each run at least about a second there, where it can), what it
/// shows)
const CASES: &[(&str, u64, u64, &str)] = &[
    ("getppid", 2_000_000, 1_000_000, "getppid(2): no probe targets it; what every syscall pays"),
    ("write-devnull", 1_000_000, 500_000, "1-byte write(2) to /dev/null"),
    ("write-pipe", 500_000, 100_000, "1-byte write(2) into a pipe"),
    ("fork-exit", 3000, 300, "fork+exit: tp_btf/sched_process_fork on every fork"),
    ("fork-exec", 1000, 100, "fork+exec of /bin/true"),
    ("netns-churn", 400, 60, "unshare(CLONE_NEWNET) in a child that exits: create+destroy"),
    ("sysctl-read", 50000, 20000, "open+read+close of a /proc/sys file (cgroup/sysctl returns at once)"),
    ("sysctl-write", 10000, 10000, "open+write+close of a sysctl in a private netns (one event each)"),
    ("udp-sendmsg", 300000, 30000, "UDP send on loopback: unrelated traffic"),
    ("veth-move", 100, 15, "ip link add veth, move one end into a namespace, delete (3 ip runs)"),
];

/// The measurements besides the cases (each also a name `bench` takes).
const EXTRAS: &[&str] = &["latency", "inventory", "full-disk"];

/// What `cargo xtask bench --kernel` runs in a guest by default: the cheap
/// unrelated syscalls and the cases each sensor sees (issue 11).
pub const VM_CASES: &[&str] =
    &["getppid", "write-devnull", "write-pipe", "fork-exit", "netns-churn", "sysctl-write", "veth-move"];

/// Checks the names `bench` was given: cases or extras, each once.
pub fn check_names(names: &[String]) -> Result<()> {
    for (i, name) in names.iter().enumerate() {
        if !CASES.iter().any(|c| c.0 == name) && !EXTRAS.contains(&name.as_str()) {
            let known: Vec<&str> = CASES.iter().map(|c| c.0).chain(EXTRAS.iter().copied()).collect();
            bail!("unknown bench case `{name}`; cases: {}", known.join(", "));
        }
        if names[..i].contains(name) {
            bail!("bench case `{name}` named twice");
        }
    }
    Ok(())
}

/// Whether this runs in a guest under software emulation (TCG), as the VM
/// harness says with NSTRAIL_VM_ACCEL (tests/support's `emulated`).
pub fn emulated() -> bool {
    std::env::var("NSTRAIL_VM_ACCEL").is_ok_and(|accel| accel == "tcg")
}

/// How one bench run goes.
pub struct Options<'a> {
    pub rounds: usize,
    /// Cases and extras to run (empty: all of them).
    pub only: &'a [String],
    /// Fewer iterations per round (software emulation).
    pub emulated: bool,
    /// Where results.json and table.md go.
    pub out: std::path::PathBuf,
    /// veth-move's bare-listener baseline (an extra measurement).
    pub veth_baseline: bool,
}

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
    /// Highest resident memory of the agent at the end of a round.
    agent_rss_kib: u64,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

fn run_workload(bench: &Path, case: &str, iterations: u64) -> Result<PerOp> {
    let out = Command::new(bench)
        .args([case, &iterations.to_string()])
        .output()
        .with_context(|| format!("running {case}"))?;
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

mod agent;
mod extras;

use agent::*;
use extras::*;

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} x {model}, Linux {}", kernel.trim())
}

/// `sensor=backend` for each sensor of an `agent_start` record, with its
/// state when not attached: what the probes ran on.
pub fn sensor_backends(agent_start: &str) -> String {
    let Ok(record) = serde_json::from_str::<serde_json::Value>(agent_start) else { return "?".into() };
    let sensors = record["sensors"].as_array().cloned().unwrap_or_default();
    let each: Vec<String> = sensors
        .iter()
        .map(|s| {
            let (name, backend, state) =
                (s["sensor"].as_str().unwrap_or("?"), s["backend"].as_str().unwrap_or("?"), s["state"].as_str());
            match state {
                Some("attached") | None => format!("{name}={backend}"),
                Some(state) => format!("{name}={backend} ({state})"),
            }
        })
        .collect();
    if each.is_empty() {
        "?".into()
    } else {
        each.join(" ")
    }
}

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    check_names(opts.only)?;
    let rounds = opts.rounds;
    let wanted = |name: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == name);
    let nstrail = root.join("target/release/nstrail");
    let bench = root.join("target/release/nstrail-bench");
    for binary in [&nstrail, &bench] {
        if !binary.is_file() {
            bail!("{} is missing (cargo build --release -p nstrail -p nstrail-bench)", binary.display());
        }
    }
    // SAFETY: sysconf has no preconditions; 2 = _SC_CLK_TCK.
    let ticks_per_s = unsafe { sysconf(2) }.max(1) as f64;
    let mut results = Vec::new();
    let mut extra = String::new();
    // What each sensor ran on, from the first agent_start of the run.
    let mut backends: Option<String> = None;
    // Latency first: tearing down the inventory cases' 11,000 namespaces
    // keeps the kernel and the agent busy for seconds afterwards.
    if wanted("latency") {
        extra.push_str(&latency_and_rate(&nstrail, &bench)?);
    }
    if wanted("inventory") {
        extra.push_str(&inventory_at_scale(&nstrail, &bench, 1000, rounds)?);
        extra.push_str(&inventory_at_scale(&nstrail, &bench, 10000, 3)?);
    }
    if wanted("veth-move") && opts.veth_baseline {
        extra.push_str(&link_listener_baseline(&bench, rounds)?);
    }
    if wanted("full-disk") {
        extra.push_str(&full_disk_burst(&nstrail, &bench, rounds)?);
    }
    for &(case, full, emulated, about) in CASES.iter().filter(|c| wanted(c.0)) {
        let iterations = if opts.emulated { emulated } else { full };
        eprintln!("bench: {case} ({iterations} ops x {rounds} rounds, agent off and on alternating)");
        let case_started = std::time::Instant::now();
        let in_case = |what: String| format!("case {case}: {what}");
        // Warm-up, not measured.
        run_workload(&bench, case, iterations / 10 + 1).with_context(|| in_case("warm-up".into()))?;
        let mut sample = Sample { off: vec![], on: vec![], agent_cpu_ms: 0.0, events: 0, lost: 0, agent_rss_kib: 0 };
        let mut agent_start_secs = Vec::new();
        for round in 0..rounds {
            let on_first = round % 2 == 1;
            for agent_on in [on_first, !on_first] {
                if agent_on {
                    let started = std::time::Instant::now();
                    let agent =
                        RunningAgent::start(&nstrail).with_context(|| in_case(format!("round {}", round + 1)))?;
                    agent_start_secs.push(started.elapsed().as_secs_f64());
                    if backends.is_none() {
                        let each = sensor_backends(&agent.start_line);
                        eprintln!("bench: sensors: {each}");
                        backends = Some(each);
                    }
                    let before = agent.cpu_ticks();
                    sample.on.push(
                        run_workload(&bench, case, iterations)
                            .with_context(|| in_case(format!("round {}, agent on", round + 1)))?,
                    );
                    // Let the agent drain what the round produced, then count its CPU.
                    std::thread::sleep(Duration::from_millis(300));
                    sample.agent_cpu_ms += (agent.cpu_ticks() - before) as f64 * 1000.0 / ticks_per_s;
                    sample.agent_rss_kib = sample.agent_rss_kib.max(agent.rss_kib());
                    let (events, lost) = agent.stop().with_context(|| in_case(format!("round {}", round + 1)))?;
                    sample.events += events;
                    sample.lost += lost;
                } else {
                    sample.off.push(
                        run_workload(&bench, case, iterations)
                            .with_context(|| in_case(format!("round {}, agent off", round + 1)))?,
                    );
                }
            }
        }
        eprintln!(
            "bench: {case} took {:.1} s (agent start {:.1}-{:.1} s)",
            case_started.elapsed().as_secs_f64(),
            agent_start_secs.iter().cloned().fold(f64::MAX, f64::min),
            agent_start_secs.iter().cloned().fold(0.0, f64::max)
        );
        results.push((case, about, iterations, sample));
    }
    let backends = backends.unwrap_or_else(|| "-".into());

    let mut table = String::new();
    table.push_str(&format!("machine: {}\n", machine()));
    table.push_str(&format!("sensors: {backends}\n"));
    table.push_str("CPU = user+sys time of the workload (probes run in its context); wall = elapsed time, noisy on shared machines.\n");
    table.push_str("| case | CPU ns/op off | CPU ns/op on | CPU ratio on/off (median) | CPU ratio spread | wall ratio (median) | wall ratio spread | events | lost | agent CPU ms per 1,000 events | agent RSS MiB |\n");
    table.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
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
        let cpu_per_k =
            if s.events >= 1000 { format!("{:.1}", s.agent_cpu_ms * 1000.0 / s.events as f64) } else { "-".into() };
        table.push_str(&format!(
            "| {case} | {c_off:.0} | {c_on:.0} | {c_ratio:.3} | {c_lo:.3}-{c_hi:.3} | {w_ratio:.3} | {w_lo:.3}-{w_hi:.3} | {} | {} | {cpu_per_k} | {:.1} |\n",
            s.events, s.lost, s.agent_rss_kib as f64 / 1024.0
        ));
        json.push(format!(
            "{{\"case\":\"{case}\",\"about\":\"{about}\",\"ops_per_round\":{iterations},\"cpu_ns_per_op_off\":{c_offs:?},\"cpu_ns_per_op_on\":{c_ons:?},\"cpu_ratio_median\":{c_ratio:.4},\"cpu_ratio_min\":{c_lo:.4},\"cpu_ratio_max\":{c_hi:.4},\"wall_ns_per_op_off\":{w_offs:?},\"wall_ns_per_op_on\":{w_ons:?},\"wall_ratio_median\":{w_ratio:.4},\"wall_ratio_min\":{w_lo:.4},\"wall_ratio_max\":{w_hi:.4},\"events\":{},\"lost\":{},\"agent_cpu_ms\":{:.1},\"agent_rss_kib\":{}}}",
            s.events, s.lost, s.agent_cpu_ms, s.agent_rss_kib
        ));
    }
    if !extra.is_empty() {
        table.push_str("\n| measurement | figure |\n|---|---|\n");
        table.push_str(&extra);
    }
    println!("{table}");
    let dir = &opts.out;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("results.json");
    std::fs::write(
        &path,
        format!(
            "{{\"machine\":\"{}\",\"emulated\":{},\"sensors\":\"{}\",\"rounds\":{rounds},\"cases\":[{}]}}\n",
            machine().replace('"', "'"),
            opts.emulated,
            backends.replace('"', "'"),
            json.join(",")
        ),
    )?;
    std::fs::write(dir.join("table.md"), &table)?;
    eprintln!("bench: results written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_backends_of_agent_start() {
        let line = r#"{"ts":"t","seq":1,"type":"agent_start","version":"0.1.0","kernel":"7.3.4+deb13-amd64","probes":[],"sensors":[{"sensor":"netns_lifecycle","backend":"fentry","state":"attached"},{"sensor":"sysctl_write","backend":"fentry","state":"attached"},{"sensor":"device_move","backend":"rtnetlink","state":"degraded","reason":"x"}]}"#;
        assert_eq!(
            sensor_backends(line),
            "netns_lifecycle=fentry sysctl_write=fentry device_move=rtnetlink (degraded)"
        );
        assert_eq!(sensor_backends(r#"{"type":"agent_start"}"#), "?");
        assert_eq!(sensor_backends("not json"), "?");
    }

    #[test]
    fn no_case_has_more_iterations_under_emulation() {
        for (case, full, emulated, _) in CASES {
            assert!(*emulated > 0 && emulated <= full, "{case}");
        }
    }
}
