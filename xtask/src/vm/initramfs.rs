//! The guest's initramfs: busybox, the kernel modules that reach the host
//! root (virtio, 9p), the two guest scripts and this run's config.sh.

use std::{fs, path::Path, path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use super::{guest::Spec, kernels::Unpacked};

const INIT: &str = include_str!("../../guest/init.sh");
const STAGE2: &str = include_str!("../../guest/stage2.sh");
/// What stage 1 loads: the virtio transport, 9p and the console port
/// (built in on some kernels, modules on others).
const BOOT_MODULES: &[&str] = &["virtio_pci", "virtio_console", "9pnet_virtio", "9p"];

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// config.sh for stage 2: the module root and one run_suite line per suite.
fn config_script(spec: &Spec) -> String {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // NSTRAIL_VM and NSTRAIL_VM_ACCEL let tests know they run in a guest
    // (e.g. to stretch deadlines under TCG).
    let mut s = format!(
        "KERNEL_NAME={}\nMODULES_ROOT={}\nTEST_THREADS={threads}\nexport RUST_BACKTRACE={}\nexport NSTRAIL_VM={} NSTRAIL_VM_ACCEL={}\n",
        sh_quote(spec.kernel_name),
        sh_quote(&spec.kernel.root.display().to_string()),
        sh_quote(&std::env::var("RUST_BACKTRACE").unwrap_or_else(|_| "1".into())),
        sh_quote(spec.kernel_name),
        spec.accel.name(),
    );
    // RUST_LOG and the tests' own NSTRAIL_* settings (e.g. NSTRAIL_BIN) reach
    // the guest; the harness's own settings do not.
    let harness = [
        "NSTRAIL_CACHE_DIR",
        "NSTRAIL_DEBIAN_MIRROR",
        "NSTRAIL_DEBIAN_SECURITY_MIRROR",
        "NSTRAIL_VM_KERNELS",
        "NSTRAIL_VM",
        "NSTRAIL_VM_ACCEL",
    ];
    let mut passed: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k == "RUST_LOG" || (k.starts_with("NSTRAIL_") && !harness.contains(&k.as_str())))
        .filter(|(k, _)| k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    passed.sort();
    for (key, value) in passed {
        s += &format!("export {key}={}\n", sh_quote(&value));
    }
    s += "suites() {\n";
    for (suite, binary) in &spec.suites {
        let mut line = format!(
            "    run_suite {} {} {} {} {} --",
            sh_quote(suite.name),
            sh_quote(&binary.dir.display().to_string()),
            sh_quote(&binary.exe.display().to_string()),
            sh_quote(suite.package),
            suite.budget_secs
        );
        for arg in spec.test_args {
            line += " ";
            line += &sh_quote(arg);
        }
        s += &line;
        s += "\n";
    }
    s += "    :\n}\n";
    s
}

/// The kernel modules stage 1 needs, in load order, decompressed:
/// (file name in the initramfs, contents).
fn boot_modules(kernel: &Unpacked) -> Result<Vec<(String, Vec<u8>)>> {
    let out = Command::new(super::tool("modprobe"))
        .arg("-d")
        .arg(&kernel.root)
        .args(["-S", &kernel.release, "--show-depends", "-a"])
        .args(BOOT_MODULES)
        .output()
        .context("running modprobe --show-depends (package kmod)")?;
    if !out.status.success() {
        bail!(
            "modprobe --show-depends {BOOT_MODULES:?} for {} failed: {}",
            kernel.release,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut modules: Vec<(String, Vec<u8>)> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(path) = line.strip_prefix("insmod ") else { continue };
        let path = Path::new(path.trim());
        let file = path.file_name().and_then(|n| n.to_str()).context("module file name")?;
        let busybox = super::tool("busybox");
        let (base, decompress): (&str, Option<(PathBuf, &[&str])>) = if let Some(b) = file.strip_suffix(".xz") {
            (b, Some((busybox, &["xzcat"])))
        } else if let Some(b) = file.strip_suffix(".gz") {
            (b, Some((busybox, &["zcat"])))
        } else if let Some(b) = file.strip_suffix(".zst") {
            (b, Some((super::tool("zstd"), &["-dc"])))
        } else {
            (file, None)
        };
        if modules.iter().any(|(n, _)| n.ends_with(&format!("-{base}"))) {
            continue;
        }
        let name = format!("{:02}-{base}", modules.len());
        let bytes = match decompress {
            None => fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            Some((tool, args)) => {
                let out = Command::new(&tool)
                    .args(args)
                    .arg(path)
                    .output()
                    .with_context(|| format!("running {}", tool.display()))?;
                if !out.status.success() {
                    bail!("{} {args:?} {} failed", tool.display(), path.display());
                }
                out.stdout
            }
        };
        modules.push((name, bytes));
    }
    Ok(modules)
}

/// Every name `modprobe` could resolve without a wildcard: module names
/// (with - and _) and exact aliases. The guest's modprobe wrapper fails the
/// kernel's other requests at once (e.g. `netdev-NAME` and `NAME` for every
/// device name an `ip` command looks up), instead of starting kmod for each.
fn modprobe_names(kernel: &Unpacked) -> Result<String> {
    let dir = kernel.root.join("lib/modules").join(&kernel.release);
    let dep = fs::read_to_string(dir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", dir.display()))?;
    let alias = fs::read_to_string(dir.join("modules.alias")).unwrap_or_default();
    let mut names = std::collections::BTreeSet::new();
    for line in dep.lines() {
        let Some(path) = line.split(':').next() else { continue };
        let file = path.rsplit('/').next().unwrap_or(path);
        let name = file.split(".ko").next().unwrap_or(file);
        names.insert(name.replace('-', "_"));
        names.insert(name.replace('_', "-"));
    }
    for line in alias.lines() {
        if let Some(name) = line.strip_prefix("alias ").and_then(|l| l.split_whitespace().next()) {
            if !name.contains(['*', '?', '[']) {
                names.insert(name.to_owned());
            }
        }
    }
    Ok(names.into_iter().map(|n| n + "\n").collect())
}

/// A newc cpio archive, the format the kernel unpacks as initramfs.
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            body.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.data.extend_from_slice(header.as_bytes());
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, mode: u32, body: &[u8]) {
        self.entry(name, 0o100000 | mode, (0, 0), body);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.data
    }
}

fn static_busybox() -> Result<Vec<u8>> {
    let path = super::tool("busybox");
    let bytes = fs::read(&path).with_context(|| format!("reading {} (package busybox-static)", path.display()))?;
    if !bytes.starts_with(b"\x7fELF\x02") || has_interpreter(&bytes) {
        bail!(
            "{} is dynamically linked: the initramfs needs busybox-static (apt-get install busybox-static)",
            path.display()
        );
    }
    Ok(bytes)
}

/// Whether a 64-bit ELF file asks for a dynamic loader (a PT_INTERP header).
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else { return true };
    (0..phnum).any(|i| elf.get(phoff + i * phentsize..phoff + i * phentsize + 4) == Some(&3u32.to_le_bytes()[..]))
}

/// The initramfs of one guest run.
pub fn build(spec: &Spec) -> Result<Vec<u8>> {
    let modules = boot_modules(spec.kernel)?;
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "newroot", "modules"] {
        cpio.dir(dir);
    }
    cpio.entry("dev/console", 0o020600, (5, 1), &[]);
    cpio.file("bin/busybox", 0o755, &static_busybox()?);
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file("stage2.sh", 0o644, STAGE2.as_bytes());
    cpio.file("config.sh", 0o644, config_script(spec).as_bytes());
    cpio.file("modprobe.names", 0o644, modprobe_names(spec.kernel)?.as_bytes());
    let mut list = String::new();
    for (name, bytes) in &modules {
        cpio.file(&format!("modules/{name}"), 0o644, bytes);
        list += name;
        list += "\n";
    }
    cpio.file("modules.list", 0o644, list.as_bytes());
    Ok(cpio.finish())
}
