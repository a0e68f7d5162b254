//! `cargo xtask fuzz`: every cargo-fuzz target in fuzz/ for a while each,
//! with the corpus kept in fuzz/corpus/TARGET (seeds committed, finds
//! added) and crashes in fuzz/artifacts/TARGET.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::setup;

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// One target's campaign, as libFuzzer summed it up.
pub struct Campaign {
    pub target: String,
    pub runs: u64,
    pub seconds: f64,
    pub corpus: usize,
}

/// Targets: the [[bin]] names in fuzz/Cargo.toml.
pub fn targets(root: &Path) -> Result<Vec<String>> {
    let manifest = std::fs::read_to_string(root.join("fuzz/Cargo.toml")).context("reading fuzz/Cargo.toml")?;
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(name) = line.strip_prefix("name = ") {
                out.push(name.trim_matches('"').to_owned());
            }
        }
    }
    Ok(out)
}

fn cargo_fuzz() -> Result<PathBuf> {
    let root = setup::cache_root().join("cargo-fuzz");
    let bin = root.join("bin/cargo-fuzz");
    let works = |bin: &Path| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works(&bin) {
        return Ok(bin);
    }
    eprintln!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {}", root.display());
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked", "--root"])
        .arg(&root)
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() || !works(&bin) {
        bail!("installing cargo-fuzz failed ({status}); it needs crates.io");
    }
    Ok(bin)
}

/// Builds every target, then runs each for `seconds` (0: only replays the
/// corpus). Fails on the first target that crashes, naming the artefact.
pub fn run(env: &setup::BuildEnv, seconds: u32, only: Option<&str>) -> Result<Vec<Campaign>> {
    let root = crate::workspace_root();
    let all = targets(&root)?;
    let chosen: Vec<String> = match only {
        Some(name) if all.iter().any(|t| t == name) => vec![name.to_owned()],
        Some(name) => bail!("no fuzz target {name:?}; targets: {}", all.join(", ")),
        None => all,
    };
    let cargo_fuzz = cargo_fuzz()?;
    let path = env.path_with_linker();
    let fuzz_cmd = |args: &[&str]| {
        let mut cmd = Command::new(&cargo_fuzz);
        // cargo-fuzz is a cargo subcommand: its first argument is its own name.
        cmd.arg("fuzz").args(args).current_dir(&root).env("PATH", &path).env("RUSTUP_TOOLCHAIN", "nightly");
        cmd
    };
    let started = Instant::now();
    crate::checked(fuzz_cmd(&["build", "-O"]), "cargo fuzz build")?;
    eprintln!("fuzz: targets built in {:.0} s", started.elapsed().as_secs_f64());

    let mut campaigns = Vec::new();
    for target in &chosen {
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let max_time = format!("-max_total_time={seconds}");
        let mut cmd = fuzz_cmd(&["run", "-O", target]);
        // -runs=0 with no time: only the corpus is replayed.
        cmd.arg("--").arg(if seconds == 0 { "-runs=0" } else { &max_time }).args([
            "-max_len=65536",
            "-rss_limit_mb=2048",
            "-timeout=10",
        ]);
        cmd.stderr(Stdio::piped()).stdout(Stdio::null());
        eprintln!("fuzz: {target} for {seconds} s");
        let out = cmd.output().with_context(|| format!("running cargo fuzz run {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!(
                "fuzz target {target} failed ({}); the input is under fuzz/artifacts/{target}, replay with \
                 `cargo +nightly fuzz run -O {target} fuzz/artifacts/{target}/<file>`:\n{}",
                out.status,
                cause(&log)
            );
        }
        let campaign = summary(target, &log, &corpus);
        eprintln!(
            "fuzz: {}: {} runs in {:.0} s, corpus {} inputs",
            campaign.target, campaign.runs, campaign.seconds, campaign.corpus
        );
        campaigns.push(campaign);
    }
    Ok(campaigns)
}

/// What made a target fail: a panic with its message, a sanitizer's report
/// or libFuzzer's verdict (timeout, out of memory), else the log's end.
fn cause(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let mut out: Vec<&str> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("panicked at") {
            out.extend(lines[i..].iter().take(2).copied());
        } else if line.contains("ERROR: AddressSanitizer")
            || line.starts_with("SUMMARY:")
            || line.contains("==ERROR: libFuzzer")
        {
            out.push(line);
        }
    }
    if out.is_empty() {
        out = lines.iter().rev().take(15).rev().copied().collect();
    }
    out.iter().map(|l| l.chars().take(300).collect::<String>()).collect::<Vec<_>>().join("\n")
}

/// libFuzzer ends with "Done N runs in S second(s)".
fn summary(target: &str, log: &str, corpus: &Path) -> Campaign {
    let (runs, seconds) = log
        .lines()
        .rev()
        .find_map(|line| {
            let rest = line.strip_prefix("Done ")?;
            let mut words = rest.split_whitespace();
            let runs = words.next()?.parse().ok()?;
            let seconds = words.nth(2)?.parse().ok()?;
            Some((runs, seconds))
        })
        .unwrap_or((0, 0.0));
    let corpus = std::fs::read_dir(corpus).map(|d| d.count()).unwrap_or(0);
    Campaign { target: target.to_owned(), runs, seconds, corpus }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzers_summary() {
        let log = "#1024 pulse cov: 10\nDone 123456 runs in 61 second(s)\n";
        let c = summary("x", log, Path::new("/nonexistent"));
        assert_eq!((c.runs, c.seconds, c.corpus), (123456, 61.0, 0));
    }

    #[test]
    fn names_the_panic() {
        let log =
            "INFO: seed\nthread '<unnamed>' panicked at src/a.rs:1:2:\nbyte index 1 is not a char boundary\nnote: x\n";
        assert_eq!(cause(log), "thread '<unnamed>' panicked at src/a.rs:1:2:\nbyte index 1 is not a char boundary");
        assert_eq!(cause("a\nb"), "a\nb");
    }

    #[test]
    fn lists_the_targets() {
        let names = targets(&crate::workspace_root()).unwrap();
        assert!(names.contains(&"records".to_owned()) && names.contains(&"rtnetlink".to_owned()), "{names:?}");
    }
}
