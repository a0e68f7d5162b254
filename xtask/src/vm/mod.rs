//! `cargo xtask vm-test`: boots Debian's own kernels (6.1, 6.12, 7.3) in
//! QEMU and runs the integration test binaries inside each guest as root,
//! with the host's root shared read-only. See docs/vm-matrix.md.

pub mod bench;
mod guest;
mod initramfs;
mod kernels;
mod suites;

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::setup;

/// Commands the VM runs need on the host, and the Debian package of each.
pub const VM_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("depmod", "kmod"),
    ("modprobe", "kmod"),
    ("busybox", "busybox-static"),
    ("dpkg-deb", "dpkg"),
    ("apt-get", "apt"),
    ("/usr/share/keyrings/debian-archive-keyring.gpg", "debian-archive-keyring"),
];

/// Time a guest may take to reach its first suite before the suites'
/// budgets start counting (TCG boots in about 10 s; room for a busy host).
const BOOT_ALLOWANCE_TCG: u64 = 240;
const BOOT_ALLOWANCE_KVM: u64 = 90;
/// Guests booted again for the suites a guest kernel panic cut short. The
/// 7.3 guest oopses at an int3 in live-patched kernel text now and then
/// under TCG (docs/vm-matrix.md), at times twice in a row in one suite.
const GUEST_PANIC_RETRIES: u32 = 3;

#[derive(clap::Args, Debug)]
pub struct VmTestArgs {
    /// Kernel to boot (repeatable; default: all, one after another)
    #[arg(long = "kernel", value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(kernels::KERNELS.iter().map(|k| k.name)))]
    pub kernels: Vec<String>,
    /// Test binary to run in each guest (repeatable; default: the kernel's
    /// row of DEFAULT_SELECTION in xtask/src/vm/suites.rs)
    #[arg(long = "suite", value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(suites::SUITES.iter().map(|s| s.name)))]
    pub suites: Vec<String>,
    /// Kill a guest after this many seconds (default: boot allowance plus
    /// the selected suites' budgets)
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Accelerator: auto picks KVM where it can boot a stock kernel, else TCG
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    pub accel: String,
    /// vCPUs per guest
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Guest memory in MiB
    #[arg(long, value_name = "MIB", default_value_t = 2048)]
    pub memory: u32,
    /// Print the kernels, suites and default selection, then stop
    #[arg(long)]
    pub list: bool,
    /// Passed to every test binary (e.g. a test name filter)
    #[arg(last = true, value_name = "TEST ARGS")]
    pub test_args: Vec<String>,
}

impl VmTestArgs {
    /// The defaults, for the kernels of NSTRAIL_VM_KERNELS ("all" or a
    /// comma-separated list of names).
    pub fn for_kernels(list: &str) -> Result<Self> {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            args: VmTestArgs,
        }
        let mut argv = vec!["vm-test".to_owned()];
        if list.trim() != "all" {
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                argv.extend(["--kernel".to_owned(), name.to_owned()]);
            }
        }
        use clap::Parser as _;
        Wrap::try_parse_from(argv).map(|w| w.args).map_err(|e| anyhow::anyhow!("NSTRAIL_VM_KERNELS={list}: {e}"))
    }
}

/// Test counts over every kernel, and the kernels that failed.
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub failed_kernels: Vec<String>,
}

impl Totals {
    pub fn check(&self) -> Result<()> {
        if !self.failed_kernels.is_empty() {
            bail!("vm-test failed on kernel {}", self.failed_kernels.join(", "));
        }
        if self.passed == 0 {
            bail!("vm-test ran no test");
        }
        Ok(())
    }
}

/// The names `--kernel` takes.
pub fn kernel_names() -> impl Iterator<Item = &'static str> {
    kernels::KERNELS.iter().map(|k| k.name)
}

/// A host command by name: PATH first, then the sbin folders a non-login
/// root shell may lack.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

pub fn list() {
    println!("kernels (--kernel):");
    for k in kernels::KERNELS {
        let pins: Vec<String> = k.packages.iter().map(|(p, v)| format!("{p}={v}")).collect();
        println!("  {:<5} {} from {}: {}", k.name, k.release, k.suite, pins.join(" "));
    }
    println!("suites (--suite):");
    for s in suites::SUITES {
        println!("  {:<16} {}/ test target {} (budget {} s)", s.name, s.package_dir, s.target, s.budget_secs);
    }
    println!("default selection:");
    for (k, names) in suites::DEFAULT_SELECTION {
        println!("  {k:<5} {}", names.join(" "));
    }
}

struct KernelReport {
    name: String,
    release: String,
    fetch_secs: f64,
    /// One guest, or more when a guest kernel panicked.
    runs: Vec<guest::Run>,
    panics: Vec<String>,
    error: Option<String>,
    outcomes: Vec<(&'static suites::Suite, suites::Outcome)>,
    run_dir: Option<PathBuf>,
}

impl KernelReport {
    fn ok(&self) -> bool {
        self.error.is_none()
            && self.runs.last().is_some_and(|r| r.completed && !r.timed_out)
            && self.outcomes.iter().all(|(_, o)| o.ok())
    }
}

/// Folders a guest mounts afresh (writable, empty) over the host's root
/// (xtask/guest/init.sh).
pub const GUEST_OWN_DIRS: [&str; 4] = ["/tmp", "/run", "/var/log", "/var/tmp"];

/// The guests see the host's root but their own [`GUEST_OWN_DIRS`]: a
/// checkout under those would not be there.
pub fn reachable_from_guests(workspace: &std::path::Path) -> Result<()> {
    if let Some(dir) = GUEST_OWN_DIRS.iter().find(|d| workspace.starts_with(d)) {
        bail!(
            "the workspace {} is under {dir}, which each VM guest mounts afresh, so the guests cannot see the test \
             binaries: clone it elsewhere (e.g. under /root or /srv), or run with NSTRAIL_VM_KERNELS=none",
            workspace.display()
        );
    }
    Ok(())
}

pub fn run(env: &setup::BuildEnv, args: &VmTestArgs) -> Result<Totals> {
    let started = Instant::now();
    let names: Vec<&str> = if args.kernels.is_empty() {
        kernels::KERNELS.iter().map(|k| k.name).collect()
    } else {
        let mut seen = BTreeSet::new();
        args.kernels.iter().map(String::as_str).filter(|k| seen.insert(*k)).collect()
    };
    let mut chosen = Vec::new();
    for name in &args.suites {
        let suite = suites::by_name(name).with_context(|| {
            let known: Vec<&str> = suites::SUITES.iter().map(|s| s.name).collect();
            format!("unknown suite `{name}`; suites: {}", known.join(", "))
        })?;
        chosen.push(suite);
    }
    let per_kernel: Vec<(&'static kernels::Kernel, Vec<&'static suites::Suite>)> = names
        .iter()
        .map(|n| {
            let kernel = kernels::by_name(n).expect("clap checked the name");
            (kernel, if chosen.is_empty() { suites::default_for(n) } else { chosen.clone() })
        })
        .collect();

    reachable_from_guests(&crate::workspace_root())?;
    setup::ensure_packages("VM tools", VM_TOOLS)?;
    let (accel, why) = guest::choose_accel(Some(&args.accel))?;
    eprintln!("vm: accelerator {}: {why}", accel.name());

    let mut all: Vec<&'static suites::Suite> = per_kernel.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    all.sort_by_key(|s| s.name);
    all.dedup_by_key(|s| s.name);
    let binaries = suites::build(env, &all)?;

    let cache = setup::cache_root().join("vm");
    let mut reports = Vec::new();
    for (kernel, wanted) in &per_kernel {
        let mut report = KernelReport {
            name: kernel.name.to_owned(),
            release: kernel.release.to_owned(),
            fetch_secs: 0.0,
            runs: Vec::new(),
            panics: Vec::new(),
            error: None,
            outcomes: Vec::new(),
            run_dir: None,
        };
        if let Err(err) = run_kernel(kernel, wanted, &binaries, args, accel, &cache, &mut report) {
            eprintln!("vm: kernel {}: {err:#}", kernel.name);
            report.error = Some(format!("{err:#}"));
        }
        reports.push(report);
    }
    summary(&reports, accel, args, started.elapsed())
}

fn run_kernel(
    kernel: &'static kernels::Kernel,
    wanted: &[&'static suites::Suite],
    binaries: &std::collections::BTreeMap<&'static str, suites::Binary>,
    args: &VmTestArgs,
    accel: guest::Accel,
    cache: &Path,
    report: &mut KernelReport,
) -> Result<()> {
    let fetch = Instant::now();
    let unpacked = kernels::ensure(kernel, cache);
    report.fetch_secs = fetch.elapsed().as_secs_f64();
    let unpacked = unpacked?;
    if wanted.is_empty() {
        bail!("no suite selected for kernel {}", kernel.name);
    }
    let mut outcomes: std::collections::BTreeMap<&str, suites::Outcome> = std::collections::BTreeMap::new();
    let mut remaining: Vec<&'static suites::Suite> = wanted.to_vec();
    for attempt in 1..=1 + GUEST_PANIC_RETRIES {
        let run_dir = new_run_dir(cache, kernel.name)?;
        report.run_dir = Some(run_dir.clone());
        let budget: u64 = remaining.iter().map(|s| s.budget_secs + 5).sum();
        let allowance = if accel == guest::Accel::Tcg { BOOT_ALLOWANCE_TCG } else { BOOT_ALLOWANCE_KVM };
        let timeout = Duration::from_secs(args.timeout.unwrap_or(allowance + budget));
        let names: Vec<&str> = remaining.iter().map(|s| s.name).collect();
        eprintln!(
            "vm: kernel {} ({}): booting under {} with {} vCPUs, {} MiB; suites {}; timeout {} s; logs in {}",
            kernel.name,
            kernel.release,
            accel.name(),
            args.cpus,
            args.memory,
            names.join(" "),
            timeout.as_secs(),
            run_dir.display()
        );
        let spec = guest::Spec {
            kernel_name: kernel.name,
            kernel: &unpacked,
            suites: remaining.iter().map(|s| (*s, binaries[s.name].clone())).collect(),
            test_args: &args.test_args,
            accel,
            cpus: args.cpus,
            memory_mib: args.memory,
            timeout,
            run_dir: run_dir.clone(),
        };
        let run = guest::run(&spec)?;
        let results = run_dir.join("results");
        for suite in &remaining {
            let text =
                fs::read(results.join(format!("{}.out", suite.name))).map(|b| String::from_utf8_lossy(&b).into_owned());
            let mut outcome = suites::parse_output(text.as_deref().unwrap_or(""));
            outcome.rc =
                fs::read_to_string(results.join(format!("{}.rc", suite.name))).ok().and_then(|t| t.trim().parse().ok());
            outcome.secs = run.suite_secs.iter().find(|(n, _)| n == suite.name).map(|(_, s)| *s);
            outcome.killed_by_budget =
                outcome.rc == Some(137) && outcome.secs.is_some_and(|s| s + 2.0 >= suite.budget_secs as f64);
            outcomes.insert(suite.name, outcome);
        }
        report.error = None;
        let panic = guest::kernel_panic(&run_dir.join("console.log"));
        if run.timed_out {
            report.error = Some(format!(
                "timed out after {} s (guest killed); last guest output:\n{}",
                timeout.as_secs(),
                indent(&guest::tail(&run_dir.join("guest.log"), 30))
            ));
        } else if let Some(panic) = &panic {
            let during =
                run.suite_secs.last().filter(|(n, _)| outcomes.get(n.as_str()).is_some_and(|o| o.rc.is_none()));
            let during = during.map(|(n, _)| format!(" during {n}")).unwrap_or_default();
            report
                .panics
                .push(format!("guest kernel panicked{during} (attempt {attempt}, {}): {panic}", run_dir.display()));
            report.error = Some(format!("the guest kernel panicked{during}: {panic}"));
        } else if run.boot_secs.is_none() {
            report.error = Some(format!(
                "the guest never reached its suites ({}); qemu said:\n{}",
                run.qemu_status.map(|s| s.to_string()).unwrap_or_default(),
                indent(&guest::tail(&run_dir.join("qemu.log"), 10))
            ));
        } else if !run.completed {
            report.error = Some(format!(
                "the guest stopped before finishing its suites ({})",
                run.qemu_status.map(|s| s.to_string()).unwrap_or_default()
            ));
        }
        report.runs.push(run);
        // A panic (seen under TCG while the kernel patches a tracepoint's
        // code, see docs/vm-matrix.md) costs the unfinished suites one more
        // guest; everything else is final.
        remaining.retain(|s| outcomes.get(s.name).is_none_or(|o| o.rc.is_none()));
        if panic.is_none() || remaining.is_empty() || attempt > GUEST_PANIC_RETRIES {
            break;
        }
        eprintln!("vm: kernel {}: the guest kernel panicked; booting again for {}", kernel.name, remaining.len());
    }
    for suite in wanted {
        report.outcomes.push((suite, outcomes.remove(suite.name).unwrap_or_default()));
    }
    Ok(())
}

/// runs/<kernel>-<unix time>, keeping the newest few per kernel.
fn new_run_dir(cache: &Path, kernel: &str) -> Result<PathBuf> {
    let runs = cache.join("runs");
    fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
    let prefix = format!("{kernel}-");
    let mut old: Vec<(u64, PathBuf)> = fs::read_dir(&runs)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let stamp = name.strip_prefix(&prefix)?.split('.').next()?.parse().ok()?;
            Some((stamp, e.path()))
        })
        .collect();
    old.sort();
    while old.len() >= 3 {
        let (_, dir) = old.remove(0);
        let _ = fs::remove_dir_all(dir);
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let dir = runs.join(format!("{prefix}{now}.{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    | {l}")).collect::<Vec<_>>().join("\n")
}

fn summary(reports: &[KernelReport], accel: guest::Accel, args: &VmTestArgs, wall: Duration) -> Result<Totals> {
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    println!();
    println!(
        "vm-test summary ({}, {} vCPUs, {} MiB; wall {:.0} s)",
        accel.name(),
        args.cpus,
        args.memory,
        wall.as_secs_f64()
    );
    for r in reports {
        let status = if r.ok() { "ok" } else { "FAILED" };
        let times = match r.runs.first() {
            Some(run) => format!(
                "kernel fetch {:.1} s, boot {}, guest {:.1} s{}",
                r.fetch_secs,
                run.boot_secs.map(|b| format!("{b:.1} s")).unwrap_or_else(|| "-".into()),
                r.runs.iter().map(|r| r.total_secs).sum::<f64>(),
                if r.runs.len() > 1 { format!(" ({} guests)", r.runs.len()) } else { String::new() }
            ),
            None => format!("kernel fetch {:.1} s", r.fetch_secs),
        };
        println!("kernel {} ({}): {status}; {times}", r.name, r.release);
        for (suite, o) in &r.outcomes {
            passed += o.passed;
            failed += o.failed;
            ignored += o.ignored;
            let secs = o.secs.map(|s| format!("{s:.1} s")).unwrap_or_else(|| "-".into());
            let what = if o.killed_by_budget {
                format!("killed after its budget of {} s", suite.budget_secs)
            } else if o.result_line.is_none() {
                match o.rc {
                    Some(rc) => format!("no test result line (exit {rc})"),
                    None => "did not finish".to_owned(),
                }
            } else {
                format!("{} passed, {} failed, {} ignored", o.passed, o.failed, o.ignored)
            };
            println!("  {:<16} {:<6} {:>8}  {what}", suite.name, if o.ok() { "ok" } else { "FAILED" }, secs);
            // Failures with the same first line are listed once.
            let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
            for (test, first) in &o.failures {
                match groups.iter_mut().find(|(m, _)| m == first) {
                    Some((_, tests)) => tests.push(test),
                    None => groups.push((first, vec![test])),
                }
            }
            for (first, tests) in groups {
                if tests.len() == 1 {
                    println!("      {}: {first}", tests[0]);
                } else {
                    println!("      {} tests: {first}", tests.len());
                    println!("        ({})", tests.join(", "));
                }
            }
            if !o.ok() && o.result_line.is_none() {
                failed += 1;
            }
        }
        for panic in &r.panics {
            println!("  WARNING: {panic}");
        }
        if let Some(err) = &r.error {
            println!("  error: {err}");
        }
        if !r.ok() {
            if let Some(dir) = &r.run_dir {
                println!("  kernel console (tail of {}):", dir.join("console.log").display());
                println!("{}", indent(&guest::tail(&dir.join("console.log"), 15)));
            }
        }
    }
    println!("vm-test: {passed} passed, {failed} failed, {ignored} skipped");
    let failed_kernels = reports.iter().filter(|r| !r.ok()).map(|r| r.name.clone()).collect();
    Ok(Totals { passed, failed, ignored, failed_kernels })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkout_under_a_guests_own_folder_is_refused() {
        let err = reachable_from_guests(std::path::Path::new("/tmp/ci-clone")).unwrap_err().to_string();
        assert!(err.contains("under /tmp") && err.contains("clone it elsewhere"), "{err}");
        assert!(reachable_from_guests(std::path::Path::new("/var/log/x")).is_err());
        assert!(reachable_from_guests(std::path::Path::new("/root/nstrail")).is_ok());
        assert!(
            reachable_from_guests(std::path::Path::new("/tmpfoo/nstrail")).is_ok(),
            "a prefix of a name is not the folder"
        );
    }
}
