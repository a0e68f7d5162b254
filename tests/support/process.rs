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

/// A long-running helper: started, its first output line read, and on drop
/// its stdin closed (its cue to exit) and the process reaped, even when a
/// test fails.
pub struct Background {
    child: std::process::Child,
    pub first_line: String,
}

impl Background {
    pub fn start(program: &str, args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let mut first_line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut first_line).expect("first line");
        assert!(!first_line.is_empty(), "`{program} {}` printed nothing", args.join(" "));
        Self { child, first_line }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
