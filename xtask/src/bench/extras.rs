//! The measurements beyond the workloads: latency and sustained rate, the
//! inventory at scale, a bare link listener, a full disk.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::{
    agent::{free_port, kill, now_unix_ns, scrape, sysconf, ts_unix_ns, RunningAgent},
    median, run_workload, PerOp,
};

/// Kernel-to-`nstrail tail` latency at a steady event rate, and the highest
/// rate sustained without loss.
pub(super) fn latency_and_rate(nstrail: &Path, bench: &Path) -> Result<String> {
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
    let pct = |p: f64| {
        samples
            .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let (p50, p99, seen) = (pct(0.50), pct(0.99), samples.len());

    // Rising steady rates, 2 s each: the highest one delivered with no
    // loss. Where one is not, what each side spent says why: the writer's
    // CPU per write (probes included) and the agent's per event.
    let mut sustained = 0;
    let mut ceiling = String::from("none below 320000 events/s");
    for rate in [5_000u64, 10_000, 20_000, 40_000, 80_000, 160_000, 200_000, 250_000, 320_000] {
        let lost_before = agent.lost.load(Ordering::Relaxed);
        let cpu_before = agent.cpu_ticks();
        let ops = rate * 2;
        let out = Command::new(bench).args(["paced-sysctl-writes", &ops.to_string(), &rate.to_string()]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| -> f64 {
            text.split(&format!("{name}="))
                .nth(1)
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(f64::MAX)
        };
        let (elapsed_ns, writer_cpu_ns) = (field("elapsed_ns"), field("cpu_ns"));
        std::thread::sleep(Duration::from_millis(1200));
        let lost = agent.lost.load(Ordering::Relaxed) - lost_before;
        let agent_us_per_event = (agent.cpu_ticks() - cpu_before) as f64 * tick_ms * 1000.0 / ops as f64;
        let kept_pace = elapsed_ns < 2.2e9;
        if lost == 0 && kept_pace {
            sustained = rate;
            continue;
        }
        let writer_us = writer_cpu_ns / ops as f64 / 1000.0;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ceiling = format!(
            "{rate} events/s: {ops} writes took {:.2} s, {lost} lost; a write cost the writer {writer_us:.1} us of CPU, an event the agent {agent_us_per_event:.1} us: {:.2} of {cores} cores at that rate",
            elapsed_ns / 1e9,
            (writer_us + agent_us_per_event) * rate as f64 / 1e6,
        );
        break;
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
        "| kernel-to-tail latency at 1,000 events/s ({seen} of 5000 seen) | p50 {p50:.0} us, p99 {p99:.0} us |\n| agent CPU per 1,000 events at 1,000 events/s (5.5 s, everything included: audit log, stream, stdout, rescans) | {steady_cpu_ms_per_k:.1} ms |\n| highest steady rate with zero loss (sysctl_write events, 2 s steps) | {sustained} events/s |\n| first step not sustained | {ceiling} |\n| sysctl writes at full speed: 100,000 in {elapsed:.1} s | {:.0} events/s delivered, {lost} lost |\n| agent RSS after that | {:.1} MiB |\n",
        delivered as f64 / elapsed,
        rss as f64 / 1024.0
    ))
}

/// `nstrail ls` against an agent, and offline, with `count` extra live
/// namespaces; /metrics with the per-namespace info series on; and the
/// agent's resident memory then.
pub(super) fn inventory_at_scale(nstrail: &Path, bench: &Path, count: u64, rounds: usize) -> Result<String> {
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
    let started = std::time::Instant::now();
    let agent = RunningAgent::start_with(
        nstrail,
        &["--metrics-listen", &format!("127.0.0.1:{port}"), "--config", config.to_str().unwrap_or_default()],
    )?;
    // Probes loaded, /proc scanned, every output open: its first record is out.
    let start_ms = started.elapsed().as_secs_f64() * 1000.0;
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
    // Right after start the agent is still giving every namespace an nsid
    // and has no device list kept: the first listing dumps them all.
    let (first_ms, _) = time_ls(&["ls", "--json", "--socket", &socket])?;
    // Steady state: after its first rescan (2 s), which keeps the rest.
    std::thread::sleep(std::time::Duration::from_secs(3));
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
        "| {count} extra namespaces: agent start (spawn to its agent_start record) | {start_ms:.0} ms |\n| {count} extra namespaces: first nstrail ls right after start | {first_ms:.0} ms |\n| {count} extra namespaces: nstrail ls (agent, after its first rescan), {listed} listed | {} |\n| {count} extra namespaces: nstrail ls --offline | {} |\n| {count} extra namespaces: GET /metrics with {series} info series | {} |\n| {count} extra namespaces: agent RSS | {:.1} MiB |\n",
        range(&via_agent),
        range(&offline),
        range(&scrapes),
        rss as f64 / 1024.0
    ))
}

/// A tmpfs for the audit log, unmounted on drop.
pub(super) struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub(super) fn mount(size: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("nstrail-bench-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let status =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&dir).status()?;
        if !status.success() {
            bail!("cannot mount a tmpfs at {}", dir.display());
        }
        Ok(Self(dir))
    }

    /// Fills it with a file of zeros until the kernel says ENOSPC.
    pub(super) fn fill(&self) -> Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(self.0.join("filler"))?;
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The same burst of sysctl writes with the audit log on a healthy disk and
/// on a full one, alternating: what the kernel loses must not depend on the
/// disk (the agent retries a full disk at a bounded rate, not per event).
pub(super) fn full_disk_burst(nstrail: &Path, bench: &Path, rounds: usize) -> Result<String> {
    const WRITES: u64 = 150_000;
    // SAFETY: sysconf has no preconditions; 2 = _SC_CLK_TCK.
    let ticks_per_s = unsafe { sysconf(2) }.max(1) as f64;
    eprintln!(
        "bench: {WRITES} sysctl writes at full speed, audit log on a healthy and on a full disk ({rounds} rounds)"
    );
    let (mut healthy, mut full) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let full_first = round % 2 == 1;
        for is_full in [full_first, !full_first] {
            let disk = Tmpfs::mount(if is_full { "256k" } else { "1g" })?;
            let agent = RunningAgent::start_logging(
                nstrail,
                Some(&disk.0.join("events.jsonl")),
                &["--metrics-listen", "127.0.0.1:0"],
            )?;
            if is_full {
                disk.fill()?;
            }
            std::thread::sleep(Duration::from_millis(300));
            let cpu_before = agent.cpu_ticks();
            let out = Command::new(bench).args(["sysctl-write", &WRITES.to_string()]).output()?;
            if !out.status.success() {
                bail!("sysctl writes failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            // Until the agent has taken everything the kernel delivered.
            let mut seen = agent.events.load(Ordering::Relaxed);
            loop {
                std::thread::sleep(Duration::from_millis(700));
                let now = agent.events.load(Ordering::Relaxed);
                if now == seen {
                    break;
                }
                seen = now;
            }
            let cpu_ms = (agent.cpu_ticks() - cpu_before) as f64 * 1000.0 / ticks_per_s;
            let (_, lost) = agent.stop()?;
            if is_full {
                full.push((lost, cpu_ms))
            } else {
                healthy.push((lost, cpu_ms))
            }
        }
    }
    let show = |runs: &[(u64, f64)]| {
        let lost: Vec<f64> = runs.iter().map(|r| r.0 as f64).collect();
        let cpu: Vec<f64> = runs.iter().map(|r| r.1).collect();
        let each: Vec<String> = runs.iter().map(|r| r.0.to_string()).collect();
        format!(
            "lost {} (median {:.0}); agent CPU {:.0} ms per burst (median)",
            each.join(", "),
            median(&lost),
            median(&cpu)
        )
    };
    Ok(format!(
        "| {WRITES} sysctl writes at full speed, {rounds} rounds: audit log on a healthy disk | {} |\n| the same with the audit log's disk full | {} |\n",
        show(&healthy),
        show(&full)
    ))
}

/// veth-move with and without a bare RTNLGRP_LINK listener (no nstrail),
/// alternating: the kernel's own cost of anyone listening to link
/// notifications, which the agent's device listener also pays.
pub(super) fn link_listener_baseline(bench: &Path, rounds: usize) -> Result<String> {
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
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(listener.stdout.take().context("stdout")?),
            &mut line,
        )?;
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
