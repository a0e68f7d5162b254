//! `cargo xtask <task>`: setup, build, run, test, bench, vm-test.
//!
//! Every task but `setup` runs setup first, so a fresh clone needs nothing
//! but `cargo xtask test` (as root) or `cargo xtask run`.

mod bench;
mod dist;
mod fuzz;
mod setup;
mod vm;

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "nstrail's project tasks",
    disable_version_flag = true
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (rust-src, bpf-linker, Debian packages)
    Setup,
    /// Build the agent
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build (release) and start the agent; default arguments: run --format text
    /// (every argument, --help too, goes to nstrail)
    #[command(disable_help_flag = true)]
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "NSTRAIL ARGS")]
        args: Vec<String>,
    },
    /// Run the whole test suite on this kernel (as root); every argument goes to cargo test
    #[command(disable_help_flag = true)]
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "CARGO TEST ARGS")]
        args: Vec<String>,
    },
    /// Benchmarks: every workload with the agent off and on
    Bench {
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
        /// Run in a QEMU guest booting this Debian kernel (repeatable, one
        /// guest after another; see `vm-test --list`); results in
        /// target/bench/<kernel>/
        #[arg(long = "kernel", value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(vm::kernel_names()))]
        kernels: Vec<String>,
        /// Kill a guest after this many seconds (default: boot allowance plus
        /// an estimate from cases and rounds)
        #[arg(long, value_name = "SECS", requires = "kernels")]
        timeout: Option<u64>,
        /// Run only these cases (default: all; in a guest: getppid,
        /// write-devnull, write-pipe, fork-exit, netns-churn, sysctl-write,
        /// veth-move)
        #[arg(value_name = "CASE")]
        cases: Vec<String>,
    },
    /// What a guest of `bench --kernel` runs: the bench without building,
    /// on the release binaries already built, results into --out
    #[command(hide = true)]
    BenchInner {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
        #[arg(value_name = "CASE")]
        cases: Vec<String>,
    },
    /// Boot Debian's kernels in QEMU and run the integration tests inside each
    VmTest(vm::VmTestArgs),
    /// Fuzz every parser of untrusted bytes (cargo-fuzz, nightly, ASan): each target for --seconds
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Only this target
        target: Option<String>,
    },
    /// Release artefacts in target/dist: static binary, tarball, .deb, OCI image
    Dist(dist::DistArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(args_keeping_separator(std::env::args().collect()));
    match run(cli.task) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// clap drops the first `--` of a trailing argument list, but `cargo xtask
/// test -- --nocapture` must hand `-- --nocapture` to cargo test (and `run --
/// X` the `--` to nstrail): hide that `--` from clap as a placeholder.
const SEPARATOR: &str = "\u{0}--";

fn args_keeping_separator(mut args: Vec<String>) -> Vec<String> {
    if let Some(task) = args.iter().skip(1).position(|a| !a.starts_with('-')).map(|i| i + 1) {
        if matches!(args[task].as_str(), "test" | "run") {
            for arg in &mut args[task + 1..] {
                if arg == "--" {
                    *arg = SEPARATOR.to_owned();
                }
            }
        }
    }
    args
}

fn restore_separator(args: Vec<String>) -> Vec<String> {
    args.into_iter().map(|a| if a == SEPARATOR { "--".to_owned() } else { a }).collect()
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::run().map(|_| ()),
        Task::Build { release } => {
            let env = setup::run()?;
            build(&env, release)
        }
        Task::Run { args } => {
            let env = setup::run()?;
            build(&env, true)?;
            let args = restore_separator(args);
            let args: Vec<String> =
                if args.is_empty() { vec!["run".into(), "--format".into(), "text".into()] } else { args };
            let binary = workspace_root().join("target/release/nstrail");
            eprintln!("xtask: starting {} {}", binary.display(), args.join(" "));
            let status = Command::new(&binary).args(&args).status().context("starting nstrail")?;
            if !status.success() {
                bail!("nstrail exited with {status}");
            }
            Ok(())
        }
        Task::Test { args } => {
            let env = setup::run()?;
            test(&env, &restore_separator(args))
        }
        Task::Bench { rounds, kernels, timeout, cases } => {
            bench::check_names(&cases)?;
            let env = setup::run()?;
            if kernels.is_empty() {
                require_root("the benchmarks load the agent and make namespaces")?;
            }
            let mut cmd = cargo(&env);
            cmd.args(["build", "--release", "--package", "nstrail", "--package", "nstrail-bench"]);
            checked(cmd, "cargo build --release")?;
            if kernels.is_empty() {
                let opts = bench::Options {
                    rounds: rounds as usize,
                    only: &cases,
                    emulated: false,
                    out: workspace_root().join("target/bench"),
                    veth_baseline: true,
                };
                return bench::run(&workspace_root(), &opts);
            }
            let cases = if cases.is_empty() { bench::VM_CASES.iter().map(|c| c.to_string()).collect() } else { cases };
            vm::bench::run(&vm::bench::BenchVmArgs { kernels: &kernels, rounds, cases: &cases, timeout })
        }
        Task::BenchInner { out, rounds, cases } => {
            require_root("the benchmarks load the agent and make namespaces")?;
            let cases = if cases.is_empty() { bench::VM_CASES.iter().map(|c| c.to_string()).collect() } else { cases };
            // Under emulation: fewer iterations, and no bare-listener baseline.
            let emulated = bench::emulated();
            let opts =
                bench::Options { rounds: rounds as usize, only: &cases, emulated, out, veth_baseline: !emulated };
            bench::run(&workspace_root(), &opts)
        }
        Task::Fuzz { seconds, target } => {
            let env = setup::run()?;
            let campaigns = fuzz::run(&env, seconds, target.as_deref())?;
            eprintln!("fuzz: no crash\n| target | runs | seconds | corpus |\n|---|---|---|---|");
            for c in &campaigns {
                eprintln!("| {} | {} | {:.0} | {} |", c.target, c.runs, c.seconds, c.corpus);
            }
            Ok(())
        }
        Task::VmTest(args) if args.list => {
            vm::list();
            Ok(())
        }
        Task::VmTest(args) => {
            let env = setup::run()?;
            vm::run(&env, &args)?.check()
        }
        Task::Dist(args) => {
            let env = setup::run()?;
            dist::run(&env, &args).map(|_| ())
        }
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// `cargo` with bpf-linker on PATH, run from the workspace root.
pub fn cargo(env: &setup::BuildEnv) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root()).env("PATH", env.path_with_linker());
    cmd
}

pub fn checked(mut cmd: Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn build(env: &setup::BuildEnv, release: bool) -> Result<()> {
    let mut cmd = cargo(env);
    cmd.args(["build", "--package", "nstrail"]);
    if release {
        cmd.arg("--release");
    }
    checked(cmd, "cargo build")
}

fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        bail!("{why}: run as root (sudo -E cargo xtask ...)");
    }
    Ok(())
}

fn test(env: &setup::BuildEnv, extra: &[String]) -> Result<()> {
    use std::io::{BufRead, BufReader};
    require_root("the tests load eBPF programs and make network namespaces")?;
    // The tree stays formatted and lint-free: checked first, it fails fast.
    let mut fmt = cargo(env);
    fmt.args(["fmt", "--all", "--check"]);
    checked(fmt, "cargo fmt --check (run `cargo fmt --all`)")?;
    let mut clippy = cargo(env);
    clippy.args(["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"]);
    checked(clippy, "cargo clippy (fix its warnings)")?;
    // The binary's end-to-end tests run target/debug/nstrail.
    let mut build = cargo(env);
    build.args(["build", "--package", "nstrail", "--bins"]);
    checked(build, "cargo build --package nstrail")?;
    // The deployment tests check the release artefacts (tests/deploy_release.rs,
    // deploy_systemd.rs, deploy_image.rs).
    dist::run(env, &dist::DistArgs::default())?;
    let mut cmd = cargo(env);
    cmd.args(["test", "--workspace", "--exclude", "nstrail-probes", "--all-targets", "--no-fail-fast"]).args(extra);
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("starting cargo test")?;
    // Pass the output through, adding up every runner's closing line.
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                result
                    .split(';')
                    .find_map(|part| {
                        part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word)
                    })
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
            ignored += count(" ignored");
        }
    }
    let status = child.wait()?;
    // Then the VM kernels, each with its default suites (all of them unless
    // NSTRAIL_VM_KERNELS names some, e.g. 6.1,7.3, or is `none`); one
    // closing line for both.
    let kernels =
        std::env::var("NSTRAIL_VM_KERNELS").ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| "all".into());
    let vm = match Some(kernels).filter(|k| k.trim() != "none") {
        Some(kernels) => {
            println!("nstrail: on this kernel: {passed} passed, {failed} failed, {ignored} skipped");
            let totals = vm::run(env, &vm::VmTestArgs::for_kernels(&kernels)?)?;
            passed += totals.passed;
            failed += totals.failed;
            ignored += totals.ignored;
            Some(totals)
        }
        None => None,
    };
    // Then a short fuzzing round per parser of untrusted bytes (seconds per
    // target from NSTRAIL_FUZZ_SECONDS, default 15; `none` skips it); each
    // target counts as one test.
    let fuzz_seconds = std::env::var("NSTRAIL_FUZZ_SECONDS").unwrap_or_else(|_| "15".into());
    let fuzzed = if fuzz_seconds.trim() == "none" {
        None
    } else {
        let seconds: u32 = fuzz_seconds.trim().parse().context("NSTRAIL_FUZZ_SECONDS: seconds or `none`")?;
        let result = fuzz::run(env, seconds, None);
        match &result {
            Ok(campaigns) => passed += campaigns.len() as u64,
            Err(err) => {
                failed += 1;
                eprintln!("xtask: fuzzing: {err:#}");
            }
        }
        Some(result)
    };
    println!("nstrail: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    if let Some(totals) = vm {
        totals.check()?;
    }
    if let Some(result) = fuzzed {
        result?;
    }
    if passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Task {
        let args = std::iter::once("xtask").chain(args.iter().copied()).map(str::to_owned).collect();
        Cli::try_parse_from(args_keeping_separator(args)).expect("parses").task
    }

    fn trailing(task: Task) -> Vec<String> {
        match task {
            Task::Test { args } | Task::Run { args } => restore_separator(args),
            _ => panic!("not test or run"),
        }
    }

    #[test]
    fn test_and_run_pass_everything_on() {
        assert_eq!(trailing(parse(&["test", "--", "--nocapture"])), ["--", "--nocapture"]);
        assert_eq!(
            trailing(parse(&["test", "--release", "-p", "nstrail", "--", "x"])),
            ["--release", "-p", "nstrail", "--", "x"]
        );
        assert_eq!(trailing(parse(&["test"])), Vec::<String>::new());
        assert_eq!(trailing(parse(&["run", "run", "--format", "json"])), ["run", "--format", "json"]);
        assert_eq!(trailing(parse(&["run", "--help"])), ["--help"]);
    }

    #[test]
    fn bench_and_build_flags() {
        assert!(
            matches!(parse(&["bench", "--rounds", "3", "fork-exit"]), Task::Bench { rounds: 3, cases, .. } if cases == ["fork-exit"])
        );
        assert!(
            matches!(parse(&["bench"]), Task::Bench { rounds: 5, kernels, timeout: None, cases } if kernels.is_empty() && cases.is_empty())
        );
        assert!(matches!(
            parse(&["bench", "--kernel", "7.3", "--timeout", "900", "getppid", "write-pipe"]),
            Task::Bench { kernels, timeout: Some(900), cases, .. } if kernels == ["7.3"] && cases == ["getppid", "write-pipe"]
        ));
        assert!(matches!(
            parse(&["bench-inner", "--out", "/tmp/b", "getppid"]),
            Task::BenchInner { out, rounds: 5, cases } if out == std::path::Path::new("/tmp/b") && cases == ["getppid"]
        ));
        for bad in [&["bench", "--kernel", "5.4"][..], &["bench", "--timeout", "9"], &["bench-inner", "getppid"]] {
            let args = std::iter::once("xtask").chain(bad.iter().copied()).map(str::to_owned).collect::<Vec<_>>();
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
        assert!(bench::check_names(&["getppid".into(), "full-disk".into()]).is_ok());
        assert!(bench::check_names(&["getpid".into()])
            .unwrap_err()
            .to_string()
            .contains("unknown bench case `getpid`"));
        assert!(bench::check_names(&["getppid".into(), "getppid".into()]).is_err());
        for case in bench::VM_CASES {
            assert!(bench::check_names(&[case.to_string()]).is_ok(), "{case}");
        }
        assert!(matches!(parse(&["build", "--release"]), Task::Build { release: true }));
        let args = std::iter::once("xtask").chain(["bench", "--rounds", "0"]).map(str::to_owned).collect::<Vec<_>>();
        assert!(Cli::try_parse_from(args).is_err());
    }

    #[test]
    fn vm_test_flags_and_test_args() {
        let Task::VmTest(a) =
            parse(&["vm-test", "--kernel", "6.1", "--kernel", "7.3", "--suite", "cli", "--", "--exact", "x"])
        else {
            panic!("vm-test")
        };
        assert_eq!(a.kernels, ["6.1", "7.3"]);
        assert_eq!(a.suites, ["cli"]);
        assert_eq!(a.test_args, ["--exact", "x"]);
        let args =
            std::iter::once("xtask").chain(["vm-test", "--kernel", "5.10"]).map(str::to_owned).collect::<Vec<_>>();
        assert!(Cli::try_parse_from(args).is_err());
        assert_eq!(vm::VmTestArgs::for_kernels("6.12, 7.3").unwrap().kernels, ["6.12", "7.3"]);
        assert!(vm::VmTestArgs::for_kernels("all").unwrap().kernels.is_empty());
        assert!(vm::VmTestArgs::for_kernels("5.4").is_err());
    }
}
