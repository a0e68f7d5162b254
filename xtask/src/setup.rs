//! Installs what building and testing need, once: nightly's rust-src,
//! bpf-linker built against nightly's own libLLVM (cached per nightly
//! version), and the Debian packages the tests drive. Idempotent.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Commands the integration tests run, and the Debian package of each.
const TEST_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
    ("lsns", "util-linux"),
    ("sysctl", "procps"),
    ("setpriv", "util-linux"),
    ("runc", "runc"),
    ("busybox", "busybox-static"),
    ("promtool", "prometheus"),
    // tests/docker.rs, deploy_*.rs, prometheus.rs (Debian's docker CLI: another may come first in PATH).
    ("/usr/bin/docker", "docker.io"),
    ("/usr/sbin/dockerd", "docker.io"),
    ("containerd", "containerd"),
    // tests/cri.rs: the CNI bridge containerd's CRI sets pods up with.
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("prometheus", "prometheus"),
    ("systemd-analyze", "systemd"),
    ("/usr/share/doc/python3-venv/copyright", "python3-venv"),
    ("file", "file"),
    // cargo xtask dist
    ("strip", "binutils"),
    ("dpkg-deb", "dpkg"),
];

/// What later steps need from setup.
pub struct BuildEnv {
    linker_dir: PathBuf,
}

impl BuildEnv {
    /// PATH with the cached bpf-linker first.
    pub fn path_with_linker(&self) -> OsString {
        let mut path = OsString::from(&self.linker_dir);
        if let Some(old) = std::env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        path
    }
}

pub fn run() -> Result<BuildEnv> {
    let nightly = nightly_info()?;
    ensure_rust_src()?;
    ensure_lint_tools()?;
    let linker_dir = ensure_bpf_linker(&nightly)?;
    ensure_test_tools()?;
    crate::dist::ensure_python_tools()?;
    Ok(BuildEnv { linker_dir })
}

fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Nightly {
    sysroot: PathBuf,
    /// Commit hash prefix and LLVM version: what a bpf-linker build is tied to.
    cache_key: String,
    llvm_major: String,
}

fn nightly_info() -> Result<Nightly> {
    let verbose = Command::new("rustc")
        .args([&format!("+{NIGHTLY}"), "-vV"])
        .output()
        .context("running rustc (is rustup installed?)")?;
    if !verbose.status.success() {
        bail!(
            "no nightly Rust toolchain: the eBPF programs need one. Install it with `rustup toolchain install nightly --profile minimal`"
        );
    }
    let text = String::from_utf8_lossy(&verbose.stdout);
    let field =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).unwrap_or_default();
    let commit = field("commit-hash:");
    let llvm = field("LLVM version:");
    if llvm.is_empty() {
        bail!("`rustc +{NIGHTLY} -vV` printed no LLVM version");
    }
    let sysroot =
        output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]), "rustc --print sysroot")?;
    Ok(Nightly {
        sysroot: PathBuf::from(sysroot.trim()),
        cache_key: format!("{}-llvm{llvm}", &commit[..commit.len().min(12)]),
        llvm_major: llvm.split('.').next().unwrap_or_default().to_owned(),
    })
}

/// rustfmt and clippy for the default toolchain: `cargo xtask test` checks the tree with both.
fn ensure_lint_tools() -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]), "rustup component list")?;
    let missing: Vec<&str> =
        ["rustfmt", "clippy"].into_iter().filter(|c| !installed.lines().any(|l| l.starts_with(c))).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" and "));
    let status = Command::new("rustup").args(["component", "add"]).args(&missing).status()?;
    if !status.success() {
        bail!("could not install {}: run `rustup component add {}`", missing.join(", "), missing.join(" "));
    }
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let installed = output(
        Command::new("rustup").args(["component", "list", "--installed", "--toolchain", NIGHTLY]),
        "rustup component list",
    )?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: rust-src for {NIGHTLY}: present");
        return Ok(());
    }
    eprintln!("setup: installing rust-src for {NIGHTLY}");
    let status = Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]).status()?;
    if !status.success() {
        bail!("could not install rust-src: run `rustup component add rust-src --toolchain {NIGHTLY}` and look at its error");
    }
    Ok(())
}

pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("NSTRAIL_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("nstrail")
}

/// The libLLVM shared object shipped in the nightly sysroot.
fn nightly_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM") && n.contains(".so"))
        })
        .collect();
    found.sort();
    // Prefer the versioned file the linker's RUNPATH asks for (libLLVM.so.N.M-rust-...).
    found
        .iter()
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .or(found.first())
        .cloned()
        .with_context(|| format!("no libLLVM in {}: reinstall the nightly toolchain", lib.display()))
}

fn ensure_bpf_linker(nightly: &Nightly) -> Result<PathBuf> {
    let prefix = cache_root().join("bpf-linker").join(&nightly.cache_key);
    let bin_dir = prefix.join("bin");
    let linker = bin_dir.join("bpf-linker");
    if Command::new(&linker)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("setup: bpf-linker {BPF_LINKER_VERSION}: cached at {}", linker.display());
        return Ok(bin_dir);
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's libLLVM (about a minute)");
    let libllvm = nightly_libllvm(&nightly.sysroot)?;
    let lib_dir = prefix.join("lib");
    fs::create_dir_all(&lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    let own_name = libllvm.file_name().expect("file name");
    for name in [own_name, std::ffi::OsStr::new("libLLVM.so")] {
        let link = lib_dir.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--no-default-features"])
        .args(["--features", &format!("llvm-{}", nightly.llvm_major)])
        .arg("--root")
        .arg(&prefix)
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!(
            "building bpf-linker failed ({status}); it needs crates.io and the nightly's libLLVM ({})",
            libllvm.display()
        );
    }
    Ok(bin_dir)
}

fn on_path(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        return Path::new(cmd).is_file();
    }
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file())).unwrap_or(false)
        || ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().any(|d| Path::new(d).join(cmd).is_file())
}

fn ensure_test_tools() -> Result<()> {
    ensure_packages("test tools", TEST_TOOLS)
}

/// Installs the Debian package of every command (or absolute file path)
/// in `tools` that is missing.
pub fn ensure_packages(what: &str, tools: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> = tools.iter().filter(|(cmd, _)| !on_path(cmd)).map(|(_, pkg)| *pkg).collect();
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        let mut all: Vec<&str> = Vec::new();
        for (_, pkg) in tools {
            if !all.contains(pkg) {
                all.push(pkg);
            }
        }
        eprintln!("setup: {what} ({}): present", all.join(", "));
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    let apt = |args: &[&str]| Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").status();
    let ok = apt(&["update", "-q"]).is_ok_and(|s| s.success())
        && apt(&[&["install", "-y", "-q", "--no-install-recommends"][..], &missing].concat())
            .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "could not install {}: run `apt-get update && apt-get install -y {}` as root",
            missing.join(" "),
            missing.join(" ")
        );
    }
    Ok(())
}
