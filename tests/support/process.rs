use std::process::{Command, Stdio};

/// A finished command: its pid (the actor the probes must name) and output.
#[derive(Debug)]
pub struct Ran {
    pub pid: u32,
    pub stdout: String,
    pub success: bool,
}

/// Runs a command to completion, remembering its pid.
pub fn run(program: &str, args: &[&str]) -> Ran {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for command");
    Ran { pid, stdout: String::from_utf8_lossy(&out.stdout).into_owned(), success: out.status.success() }
}

/// Like [`run`], failing the test when the command fails.
pub fn run_ok(program: &str, args: &[&str]) -> Ran {
    let ran = run(program, args);
    assert!(ran.success, "`{program} {}` failed", args.join(" "));
    ran
}

/// Parses `key=value` words of a helper's output line.
pub fn field(stdout: &str, key: &str) -> u64 {
    stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("helper output has no {key}=: {stdout:?}"))
        .parse()
        .expect("number")
}
