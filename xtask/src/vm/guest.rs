//! One guest: the QEMU command line, and watching it run
//! (live output, boot and per-suite times, the overall timeout).

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{initramfs, kernels::Unpacked, suites::Binary, suites::Suite};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// KVM where it can run a stock kernel, TCG elsewhere; says why.
pub fn choose_accel(requested: Option<&str>) -> Result<(Accel, String)> {
    match requested {
        Some("tcg") => return Ok((Accel::Tcg, "requested with --accel tcg".into())),
        Some("kvm") => return Ok((Accel::Kvm, "requested with --accel kvm".into())),
        Some(other) if other != "auto" => bail!("--accel takes auto, kvm or tcg, not {other}"),
        _ => {}
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Ok((
            Accel::Tcg,
            "/dev/kvm is PVM (kvm_pvm loaded), which boots only PVM guest kernels, not Debian's: using TCG (software emulation, 5-20x slower)".into(),
        ));
    }
    match fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => Ok((Accel::Kvm, "/dev/kvm is usable".into())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok((
            Accel::Tcg,
            "no /dev/kvm (no hardware virtualisation here): using TCG (software emulation, 5-20x slower)".into(),
        )),
        Err(err) => {
            Ok((Accel::Tcg, format!("/dev/kvm cannot be opened ({err}): using TCG (software emulation, 5-20x slower)")))
        }
    }
}

pub struct Spec<'a> {
    pub kernel_name: &'a str,
    pub kernel: &'a Unpacked,
    pub suites: Vec<(&'static Suite, Binary)>,
    pub test_args: &'a [String],
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u32,
    pub timeout: Duration,
    pub run_dir: PathBuf,
}

/// What the guest did, as the host saw it.
pub struct Run {
    /// Seconds from QEMU's start to the guest reaching its first suite.
    pub boot_secs: Option<f64>,
    /// Host-measured seconds per suite (between the guest's begin/end lines).
    pub suite_secs: Vec<(String, f64)>,
    pub total_secs: f64,
    pub timed_out: bool,
    /// The guest wrote its "done" file: every suite ran to its end.
    pub completed: bool,
    pub qemu_status: Option<std::process::ExitStatus>,
}

fn qemu_command(spec: &Spec, initrd: &Path, results: &Path) -> Command {
    let d = &spec.run_dir;
    let mut cmd = Command::new(super::tool("qemu-system-x86_64"));
    match spec.accel {
        Accel::Kvm => cmd.args(["-machine", "pc,accel=kvm", "-cpu", "host"]),
        Accel::Tcg => cmd.args(["-machine", "pc,accel=tcg", "-cpu", "max"]),
    };
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-nic", "none"])
        .args(["-smp", &spec.cpus.to_string(), "-m", &spec.memory_mib.to_string()])
        .arg("-kernel")
        .arg(&spec.kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // No KFENCE and no TSC watchdog: each flips static keys (the slab
        // fast path every 100 ms, sched_clock when the watchdog gives up on
        // a slow TCG CPU), and a live patch racing another vCPU oopses at
        // an int3 under TCG. Fewer flips, not none: 7.3 still oopses now
        // and then (docs/vm-matrix.md), hence the panic retries.
        .args(["-append", "console=ttyS0 rdinit=/init panic=-1 mitigations=off kfence.sample_interval=0 tsc=reliable"])
        // Kernel console: console.log.
        .arg("-chardev")
        .arg(format!("file,id=console,path={}", d.join("console.log").display()))
        .args(["-serial", "chardev:console"])
        // Guest command output: guest.log, over a virtio-serial port.
        .args(["-device", "virtio-serial-pci"])
        .arg("-chardev")
        .arg(format!("file,id=out,path={}", d.join("guest.log").display()))
        .args(["-device", "virtserialport,chardev=out,name=nstrail.out"])
        // The host root, read-only: nothing the guest does reaches the host.
        .args(["-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap"])
        .args(["-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot"])
        // The one writable share: this run's results folder.
        .arg("-fsdev")
        .arg(format!("local,id=results,path={},security_model=none,multidevs=remap", results.display()))
        .args(["-device", "virtio-9p-pci,fsdev=results,mount_tag=results"]);
    cmd
}

const PR_SET_PDEATHSIG: i32 = 1;
const SIGKILL: u64 = 9;

unsafe extern "C" {
    fn prctl(option: i32, arg2: u64, ...) -> i32;
}

/// The first lines of a guest kernel panic in its console log, if any:
/// what went wrong, where, and in which task.
pub fn kernel_panic(console: &Path) -> Option<String> {
    let text = fs::read(console).map(|b| String::from_utf8_lossy(&b).into_owned()).ok()?;
    let panic = text.lines().find(|l| l.contains("Kernel panic - not syncing"))?;
    let strip = |l: &str| l.split_once("] ").map(|(_, r)| r).unwrap_or(l).trim().to_owned();
    let mut parts: Vec<String> = Vec::new();
    for key in ["BUG:", "Oops:", "general protection", "RIP:", "Workqueue:", "Comm:"] {
        if let Some(line) = text.lines().find(|l| l.contains(key)) {
            let line = strip(line);
            if !parts.contains(&line) {
                parts.push(line);
            }
        }
    }
    parts.push(strip(panic));
    Some(parts.join(" | "))
}

/// The last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The guest's output as shown live: whole for a while, then only the
/// test runner's own lines (a failing test may dump thousands of events;
/// the whole output stays in results/SUITE.out).
#[derive(Default)]
struct Echo {
    lines: usize,
    quiet: bool,
}

impl Echo {
    const LINES: usize = 400;
    const WIDTH: usize = 600;

    fn line(&mut self, tag: &str, line: &str) {
        self.lines += 1;
        let runner = line.starts_with("test ") || line.starts_with("running ") || line.starts_with("failures:");
        if self.lines > Self::LINES && !runner {
            if !self.quiet {
                self.quiet = true;
                println!(
                    "{tag} [more than {} lines: only the test runner's lines from here on; all of it is in results/]",
                    Self::LINES
                );
            }
            return;
        }
        match line.char_indices().nth(Self::WIDTH) {
            Some((at, _)) => println!("{tag} {} [... {} more bytes]", &line[..at], line.len() - at),
            None => println!("{tag} {line}"),
        }
    }
}

/// Boots the guest, streams its output (prefixed with the kernel name) and
/// waits for it to power off, or kills it after `spec.timeout`.
pub fn run(spec: &Spec) -> Result<Run> {
    let results = spec.run_dir.join("results");
    fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
    let initrd = spec.run_dir.join("initramfs.cpio");
    fs::write(&initrd, initramfs::build(spec)?)?;
    let guest_log = spec.run_dir.join("guest.log");
    fs::write(&guest_log, "")?;
    let qemu_log = fs::File::create(spec.run_dir.join("qemu.log"))?;
    let mut cmd = qemu_command(spec, &initrd, &results);
    fs::write(spec.run_dir.join("qemu.cmdline"), format!("{cmd:?}\n"))?;
    let started = Instant::now();
    // QEMU dies with xtask (Ctrl-C, a CI timeout): no guest outlives its run.
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches only the child.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        cmd.pre_exec(|| {
            if prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(qemu_log.try_clone()?)
        .stderr(qemu_log)
        .spawn()
        .context("starting qemu-system-x86_64 (package qemu-system-x86)")?;
    let mut run = Run {
        boot_secs: None,
        suite_secs: Vec::new(),
        total_secs: 0.0,
        timed_out: false,
        completed: false,
        qemu_status: None,
    };
    let mut log = fs::File::open(&guest_log)?;
    let mut offset = 0u64;
    let mut partial = String::new();
    let mut current: Option<(String, Instant)> = None;
    let tag = format!("[{}]", spec.kernel_name);
    let mut echo = Echo::default();
    loop {
        let exited = child.try_wait()?;
        // Read what the guest wrote since the last look.
        log.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::new();
        log.read_to_end(&mut buf)?;
        offset += buf.len() as u64;
        partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(nl) = partial.find('\n') {
            let line: String = partial.drain(..=nl).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            let at = started.elapsed().as_secs_f64();
            if let Some(marker) = line.strip_prefix("@@nstrail-vm ") {
                if let Some(info) = marker.strip_prefix("ready ") {
                    run.boot_secs = Some(at);
                    println!("{tag} guest up after {at:.1} s: {info}");
                } else if let Some(name) = marker.strip_prefix("begin ") {
                    println!("{tag} ---- {name}: started at {at:.1} s");
                    echo = Echo::default();
                    current = Some((name.to_owned(), Instant::now()));
                } else if let Some(rest) = marker.strip_prefix("end ") {
                    if let Some((name, t)) = current.take() {
                        let secs = t.elapsed().as_secs_f64();
                        println!(
                            "{tag} ---- {name}: finished in {secs:.1} s ({})",
                            rest.split_whitespace().last().unwrap_or("")
                        );
                        run.suite_secs.push((name, secs));
                    }
                } else if marker == "done" {
                    run.completed = true;
                }
            } else {
                echo.line(&tag, line);
            }
        }
        if let Some(status) = exited {
            run.qemu_status = Some(status);
            break;
        }
        if started.elapsed() > spec.timeout {
            run.timed_out = true;
            let _ = child.kill();
            run.qemu_status = child.wait().ok();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    run.total_secs = started.elapsed().as_secs_f64();
    if let Some((name, t)) = current {
        run.suite_secs.push((name, t.elapsed().as_secs_f64()));
    }
    run.completed |= results.join("done").exists();
    Ok(run)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_panic_from_the_console() {
        let dir = std::env::temp_dir().join(format!("xtask-panic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let console = dir.join("console.log");
        std::fs::write(&console, "[    5.8] 9p: Installing v9fs\n[  113.963402] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n[  113.964023] CPU: 0 UID: 0 PID: 12 Comm: kworker/u8:0 Not tainted\n[  113.964470] Workqueue: events_unbound bpf_map_free_deferred\n[  113.969330] RIP: 0010:process_one_work+0x195/0x3a0\n[  113.982009] RIP: 0010:process_one_work+0x195/0x3a0\n[  113.982483] Kernel panic - not syncing: Fatal exception in interrupt\n").unwrap();
        assert_eq!(
            super::kernel_panic(&console).unwrap(),
            "Oops: int3: 0000 [#1] PREEMPT SMP NOPTI | RIP: 0010:process_one_work+0x195/0x3a0 | Workqueue: events_unbound bpf_map_free_deferred | CPU: 0 UID: 0 PID: 12 Comm: kworker/u8:0 Not tainted | Kernel panic - not syncing: Fatal exception in interrupt"
        );
        std::fs::write(&console, "[    5.8] 9p: Installing v9fs\n").unwrap();
        assert!(super::kernel_panic(&console).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
