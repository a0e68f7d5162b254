//! `cargo xtask <task>`: setup, build, run, test, bench.
//!
//! Every task but `setup` runs setup first, so a fresh clone needs nothing
//! but `cargo xtask test` (as root) or `cargo xtask run`.

mod bench;
mod setup;

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

const USAGE: &str = "usage: cargo xtask <setup | build [--release] | run [NSTRAIL ARGS...] | test [CARGO TEST ARGS...] | bench [--rounds N] [CASE]>";

fn main() -> std::process::ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let Some((task, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    match task.as_str() {
        "setup" => setup::run().map(|_| ()),
        "build" => {
            let env = setup::run()?;
            let release = rest.iter().any(|a| a == "--release");
            build(&env, release)
        }
        "run" => {
            let env = setup::run()?;
            build(&env, true)?;
            let args: Vec<String> =
                if rest.is_empty() { vec!["run".into(), "--format".into(), "text".into()] } else { rest.to_vec() };
            let binary = workspace_root().join("target/release/nstrail");
            eprintln!("xtask: starting {} {}", binary.display(), args.join(" "));
            let status = Command::new(&binary).args(&args).status().context("starting nstrail")?;
            if !status.success() {
                bail!("nstrail exited with {status}");
            }
            Ok(())
        }
        "test" => {
            let env = setup::run()?;
            test(&env, rest)
        }
        "bench" => {
            let env = setup::run()?;
            require_root("the benchmarks load the agent and make namespaces")?;
            let mut rounds = 5;
            let mut only = None;
            let mut args = rest.iter();
            while let Some(arg) = args.next() {
                match arg.as_str() {
                    "--rounds" => {
                        rounds = args.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0).context("--rounds takes a number above 0")?
                    }
                    case => only = Some(case.to_owned()),
                }
            }
            let mut cmd = cargo(&env);
            cmd.args(["build", "--release", "--package", "nstrail", "--package", "nstrail-bench"]);
            checked(cmd, "cargo build --release")?;
            bench::run(&workspace_root(), rounds, only.as_deref())
        }
        other => bail!("unknown task `{other}`\n{USAGE}"),
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// `cargo` with bpf-linker on PATH, run from the workspace root.
fn cargo(env: &setup::BuildEnv) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root()).env("PATH", env.path_with_linker());
    cmd
}

fn checked(mut cmd: Command, what: &str) -> Result<()> {
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
                    .find_map(|part| part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word))
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
            ignored += count(" ignored");
        }
    }
    let status = child.wait()?;
    println!("nstrail: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    if passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}

unsafe extern "C" {
    fn geteuid() -> u32;
}
