//! `cargo xtask bench --kernel NAME`: the benchmarks inside a guest booting
//! one of Debian's kernels, with the vm-test harness. Nothing can be built
//! in the guest (the host root is shared read-only), so the host builds the
//! release binaries first and the guest runs this very xtask binary as
//! `xtask bench-inner --out DIR`, which only measures. DIR is in the run's
//! results share, the one folder the guest writes on the host; the table and
//! results.json are copied from there to target/bench/<kernel>/.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{guest, kernels, suites};
use crate::setup;

/// Where the results share is mounted in the guest (xtask/guest/init.sh).
const GUEST_RESULTS: &str = "/run/nstrail-vm/results";
/// The folder of the share bench-inner writes to.
const OUT_DIR: &str = "bench";

/// Guest budget for the bench: per case, a warm-up and per round one agent
/// start plus two runs of the workload. Measured under TCG on the busy
/// 2-core host: agent starts 3-7.5 s, rounds 7-35 s (veth-move the longest);
/// agent starts took up to 64 s beside other agents (docs/vm-matrix.md), so
/// about twice the worst.
fn budget_secs(cases: usize, rounds: u32, accel: guest::Accel) -> u64 {
    let per_case = 60 + rounds as u64 * 60;
    let tcg = 60 + cases as u64 * per_case;
    if accel == guest::Accel::Tcg {
        tcg
    } else {
        tcg / 4
    }
}

/// The arguments of `xtask bench-inner` in the guest.
fn inner_args(rounds: u32, cases: &[String]) -> Vec<String> {
    let mut args = vec![
        "bench-inner".to_owned(),
        "--out".to_owned(),
        format!("{GUEST_RESULTS}/{OUT_DIR}"),
        "--rounds".to_owned(),
        rounds.to_string(),
    ];
    args.extend(cases.iter().cloned());
    args
}

/// The case bench-inner was in when it stopped: the last "bench: CASE (" line.
fn last_case(output: &str) -> Option<String> {
    output
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("bench: "))
        .find_map(|l| l.split_once(" (").map(|(case, _)| case).filter(|c| !c.contains(' ')).map(str::to_owned))
}

pub struct BenchVmArgs<'a> {
    pub kernels: &'a [String],
    pub rounds: u32,
    pub cases: &'a [String],
    pub timeout: Option<u64>,
}

/// Runs the bench in a guest per kernel, one after another; the host's
/// release binaries must be built.
pub fn run(args: &BenchVmArgs) -> Result<()> {
    crate::bench::check_names(args.cases)?;
    super::reachable_from_guests(&crate::workspace_root())?;
    setup::ensure_packages("VM tools", super::VM_TOOLS)?;
    let (accel, why) = guest::choose_accel(None)?;
    eprintln!("vm: accelerator {}: {why}", accel.name());
    let xtask = std::env::current_exe().context("finding the xtask binary")?;
    // The guest runs this binary (and target/release/): not in a folder it mounts afresh.
    super::reachable_from_guests(&xtask)?;
    let cache = setup::cache_root().join("vm");
    let mut failed = Vec::new();
    for name in args.kernels {
        let kernel = kernels::by_name(name).with_context(|| format!("unknown kernel {name}"))?;
        if let Err(err) = run_kernel(kernel, args, accel, &xtask, &cache) {
            eprintln!("bench: kernel {name}: {err:#}");
            failed.push(name.as_str());
        }
    }
    if !failed.is_empty() {
        bail!("the bench failed in the guest of kernel {}", failed.join(", "));
    }
    Ok(())
}

fn run_kernel(
    kernel: &'static kernels::Kernel,
    args: &BenchVmArgs,
    accel: guest::Accel,
    xtask: &Path,
    cache: &Path,
) -> Result<()> {
    let unpacked = kernels::ensure(kernel, cache)?;
    // Its own prefix: vm-test's pruning of old runs never takes a bench run.
    let run_dir = super::new_run_dir(cache, &format!("bench-{}", kernel.name))?;
    let budget = budget_secs(args.cases.len(), args.rounds, accel);
    let allowance = if accel == guest::Accel::Tcg { super::BOOT_ALLOWANCE_TCG } else { super::BOOT_ALLOWANCE_KVM };
    let timeout = Duration::from_secs(args.timeout.unwrap_or(allowance + budget + 5));
    // The guest's bench is a suite to the harness: a command, its folder, a budget.
    let suite: &'static suites::Suite = Box::leak(Box::new(suites::Suite {
        name: "bench",
        package_dir: ".",
        package: "xtask",
        target: "bench-inner",
        budget_secs: args.timeout.map_or(budget, |t| t.saturating_sub(allowance).max(60)),
    }));
    let binary = suites::Binary { exe: xtask.to_path_buf(), dir: crate::workspace_root() };
    let test_args = inner_args(args.rounds, args.cases);
    let (cpus, memory_mib) = (2, 2048);
    eprintln!(
        "bench: kernel {} ({}): booting under {} with {cpus} vCPUs, {memory_mib} MiB; {} x {} rounds; timeout {} s; logs in {}",
        kernel.name,
        kernel.release,
        accel.name(),
        args.cases.join(" "),
        args.rounds,
        timeout.as_secs(),
        run_dir.display()
    );
    let spec = guest::Spec {
        kernel_name: kernel.name,
        kernel: &unpacked,
        suites: vec![(suite, binary)],
        test_args: &test_args,
        accel,
        cpus,
        memory_mib,
        timeout,
        run_dir: run_dir.clone(),
    };
    let started = Instant::now();
    let run = guest::run(&spec)?;
    let results = run_dir.join("results");
    let output =
        fs::read(results.join("bench.out")).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let rc: Option<i32> = fs::read_to_string(results.join("bench.rc")).ok().and_then(|t| t.trim().parse().ok());
    let during = last_case(&output).map(|c| format!(" during case {c}")).unwrap_or_default();
    let last_lines = || super::indent(&guest::tail(&results.join("bench.out"), 30));
    if let Some(panic) = guest::kernel_panic(&run_dir.join("console.log")) {
        bail!("the guest kernel panicked{during}: {panic}\n(console: {})", run_dir.join("console.log").display());
    }
    if run.timed_out {
        bail!("timed out after {} s{during} (guest killed); last guest output:\n{}", timeout.as_secs(), last_lines());
    }
    if run.boot_secs.is_none() {
        bail!(
            "the guest never reached the bench ({}); qemu said:\n{}\nkernel console:\n{}",
            run.qemu_status.map(|s| s.to_string()).unwrap_or_default(),
            super::indent(&guest::tail(&run_dir.join("qemu.log"), 10)),
            super::indent(&guest::tail(&run_dir.join("console.log"), 15))
        );
    }
    match rc {
        Some(0) => {}
        Some(137) => {
            bail!("bench-inner was killed after its budget of {} s{during}:\n{}", suite.budget_secs, last_lines())
        }
        Some(rc) => bail!("bench-inner exited with {rc}{during}; its last lines:\n{}", last_lines()),
        None => bail!("bench-inner never finished{during}; its last lines:\n{}", last_lines()),
    }
    let guest_out = results.join(OUT_DIR);
    let table = fs::read_to_string(guest_out.join("table.md"))
        .with_context(|| format!("the guest wrote no table ({})", guest_out.display()))?;
    let json = fs::read_to_string(guest_out.join("results.json"))
        .with_context(|| format!("the guest wrote no results.json ({})", guest_out.display()))?;
    let dir = crate::workspace_root().join("target/bench").join(kernel.name);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(dir.join("results.json"), &json)?;
    fs::write(dir.join("table.md"), &table)?;
    let bench_secs = run.suite_secs.iter().find(|(n, _)| n == "bench").map(|(_, s)| *s).unwrap_or(0.0);
    println!();
    println!(
        "bench in the VM: kernel {} ({}), {}, {cpus} vCPUs, {memory_mib} MiB; boot {}, bench {bench_secs:.0} s, guest {:.0} s",
        kernel.name,
        kernel.release,
        accel.name().to_uppercase(),
        run.boot_secs.map(|b| format!("{b:.0} s")).unwrap_or_else(|| "-".into()),
        started.elapsed().as_secs_f64()
    );
    println!("{table}");
    eprintln!("bench: kernel {}: results written to {}", kernel.name, dir.join("results.json").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_command_and_budget() {
        let cases: Vec<String> = ["getppid", "veth-move"].map(String::from).to_vec();
        assert_eq!(
            inner_args(3, &cases),
            ["bench-inner", "--out", "/run/nstrail-vm/results/bench", "--rounds", "3", "getppid", "veth-move"]
        );
        assert_eq!(budget_secs(2, 3, guest::Accel::Tcg), 60 + 2 * (60 + 3 * 60));
        assert!(budget_secs(7, 3, guest::Accel::Kvm) < budget_secs(7, 3, guest::Accel::Tcg));
    }

    #[test]
    fn names_the_case_a_guest_stopped_in() {
        let out = "bench: sensors: netns_lifecycle=fentry\nbench: getppid (200000 ops x 3 rounds, agent off and on alternating)\nbench: getppid took 40.1 s (agent start 10.0-12.0 s)\nbench: write-pipe (50000 ops x 3 rounds, agent off and on alternating)\nxtask: error: case write-pipe: round 1: the agent did not start\n";
        assert_eq!(last_case(out).as_deref(), Some("write-pipe"));
        assert_eq!(last_case("vm: nothing\n"), None);
        assert_eq!(last_case("bench: results written to /x (y)\n"), None);
    }
}
