//! The guest kernels: Debian's own packages at pinned versions, fetched with
//! a private apt configuration (own sources list, state and cache under the
//! nstrail cache, never the host's), unpacked with `dpkg -x` and indexed with
//! `depmod -b`. Nothing is installed into the host.
//!
//! Cache layout (under `~/.cache/nstrail/vm/`):
//!   apt/<distro>/      sources.list, lists/, state/, cache/ of the private apt
//!   kernels/<release>/ PIN (what was unpacked) and root/ (the packages' files:
//!                      the kernel image and lib/modules/<release>, depmod'ed)

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// A private apt configuration: which archive suites it reads.
pub struct Distro {
    pub name: &'static str,
    /// (archive: "debian" or "debian-security", suite)
    pub suites: &'static [(&'static str, &'static str)],
}

pub const BOOKWORM: Distro = Distro {
    name: "bookworm",
    suites: &[
        ("debian", "bookworm"),
        ("debian", "bookworm-updates"),
        ("debian-security", "bookworm-security"),
        ("debian", "bookworm-backports"),
    ],
};

/// Only for the kernels: the host's apt never sees these sources.
pub const TRIXIE: Distro = Distro {
    name: "trixie",
    suites: &[("debian", "trixie"), ("debian-security", "trixie-security"), ("debian", "trixie-backports")],
};

pub struct Kernel {
    /// What `--kernel` takes.
    pub name: &'static str,
    /// `uname -r` of the guest: the folder under lib/modules.
    pub release: &'static str,
    pub distro: &'static Distro,
    /// Where the pinned version comes from (for messages).
    pub suite: &'static str,
    /// (package, exact version): everything `dpkg -x` unpacks.
    pub packages: &'static [(&'static str, &'static str)],
    /// apt-cache search pattern of the same kernel line, to name newer
    /// packages when a pin has left the archive.
    pub family: &'static str,
}

/// The pinned kernels. When Debian drops a version from the archive, the
/// download fails with the versions the archive has now: bump the pin here.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "6.1",
        release: "6.1.0-57-amd64",
        distro: &BOOKWORM,
        suite: "bookworm-security",
        packages: &[("linux-image-6.1.0-57-amd64", "6.1.192-3")],
        family: r"^linux-image-6\.1\.0-[0-9]+-amd64$",
    },
    Kernel {
        name: "6.12",
        release: "6.12.117+deb12-amd64",
        distro: &BOOKWORM,
        suite: "bookworm-security",
        packages: &[("linux-image-6.12.117+deb12-amd64", "6.12.117-1~deb12u1")],
        family: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$",
    },
    Kernel {
        name: "7.3",
        release: "7.3.4+deb13-amd64",
        distro: &TRIXIE,
        suite: "trixie-backports",
        // On trixie the image package is split: the kernel (linux-binary),
        // its modules, and modules.order/modules.builtin/config (linux-base-*).
        packages: &[
            ("linux-binary-7.3.4+deb13-amd64", "7.3.4-1~bpo13+1"),
            ("linux-modules-7.3.4+deb13-amd64", "7.3.4-1~bpo13+1"),
            ("linux-base-7.3.4+deb13-amd64", "7.3.4-1~bpo13+1"),
        ],
        family: r"^linux-binary-[0-9.]+\+deb13-amd64$",
    },
];

pub fn by_name(name: &str) -> Option<&'static Kernel> {
    KERNELS.iter().find(|k| k.name == name)
}

/// An unpacked kernel, ready to boot.
pub struct Unpacked {
    pub vmlinuz: PathBuf,
    /// Filesystem root whose lib/modules/<release> holds the modules:
    /// what `modprobe -d` and `depmod -b` take.
    pub root: PathBuf,
    pub release: String,
}

fn pin_text(kernel: &Kernel) -> String {
    kernel.packages.iter().map(|(p, v)| format!("{p}={v}\n")).collect()
}

/// The kernel from the cache, fetched and unpacked first if it is not there.
pub fn ensure(kernel: &Kernel, cache: &Path) -> Result<Unpacked> {
    let dir = cache.join("kernels").join(kernel.release);
    let root = dir.join("root");
    if fs::read_to_string(dir.join("PIN")).is_ok_and(|pin| pin == pin_text(kernel)) {
        let unpacked = locate(kernel, &root, true)?;
        eprintln!("vm: kernel {} ({}): cached at {}", kernel.name, kernel.release, dir.display());
        return Ok(unpacked);
    }
    let started = std::time::Instant::now();
    eprintln!(
        "vm: kernel {}: fetching {} from {}",
        kernel.name,
        pin_text(kernel).trim().replace('\n', " "),
        kernel.suite
    );
    let apt = PrivateApt::prepare(kernel.distro, cache)?;
    apt.update()?;
    let staging = cache.join("kernels").join(format!(".{}.partial", kernel.release));
    let _ = fs::remove_dir_all(&staging);
    let debs = staging.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    apt.download(kernel, &debs)?;
    let staged_root = staging.join("root");
    for entry in fs::read_dir(&debs)? {
        let deb = entry?.path();
        let status =
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staged_root).status().context("running dpkg-deb")?;
        if !status.success() {
            bail!("dpkg-deb -x {} failed ({status})", deb.display());
        }
    }
    fs::remove_dir_all(&debs)?;
    // Trixie ships the modules under usr/lib only (merged /usr): give
    // depmod and modprobe the lib/modules they look for.
    if !staged_root.join("lib").exists() && staged_root.join("usr/lib").is_dir() {
        std::os::unix::fs::symlink("usr/lib", staged_root.join("lib"))?;
    }
    locate(kernel, &staged_root, false)?;
    let status = Command::new(super::tool("depmod"))
        .arg("-b")
        .arg(&staged_root)
        .arg(kernel.release)
        .status()
        .context("running depmod (package kmod)")?;
    if !status.success() {
        bail!("depmod -b {} {} failed ({status})", staged_root.display(), kernel.release);
    }
    fs::write(staging.join("PIN"), pin_text(kernel))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&staging, &dir).with_context(|| format!("moving {} to {}", staging.display(), dir.display()))?;
    eprintln!(
        "vm: kernel {}: unpacked into {} in {:.1} s",
        kernel.name,
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    locate(kernel, &root, true)
}

fn locate(kernel: &Kernel, root: &Path, indexed: bool) -> Result<Unpacked> {
    let candidates = [
        root.join(format!("boot/vmlinuz-{}", kernel.release)),
        root.join(format!("usr/lib/modules/{}/vmlinuz", kernel.release)),
    ];
    let vmlinuz = candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| format!("no kernel image in {} (looked for {candidates:?})", root.display()))?;
    let modules = root.join("lib/modules").join(kernel.release);
    if !modules.is_dir() {
        bail!("the packages of kernel {} have no {}", kernel.name, modules.display());
    }
    if indexed && !modules.join("modules.dep").is_file() {
        bail!("{} has no modules.dep: remove {} and run again", modules.display(), root.display());
    }
    Ok(Unpacked { vmlinuz, root: root.to_path_buf(), release: kernel.release.to_owned() })
}

/// apt-get and apt-cache with their own sources, lists, state and cache.
struct PrivateApt {
    distro: &'static Distro,
    options: Vec<String>,
}

impl PrivateApt {
    fn prepare(distro: &'static Distro, cache: &Path) -> Result<Self> {
        let dir = cache.join("apt").join(distro.name);
        for sub in ["lists/partial", "cache/archives/partial", "state", "sources.list.d", "preferences.d"] {
            fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        if !Path::new(keyring).is_file() {
            bail!("{keyring} is missing: apt-get install debian-archive-keyring");
        }
        let mirror = |archive: &str| {
            let (var, default) = match archive {
                "debian-security" => ("NSTRAIL_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security"),
                _ => ("NSTRAIL_DEBIAN_MIRROR", "http://deb.debian.org/debian"),
            };
            std::env::var(var).unwrap_or_else(|_| default.to_owned())
        };
        let sources: String = distro
            .suites
            .iter()
            .map(|(archive, suite)| format!("deb [signed-by={keyring}] {} {suite} main\n", mirror(archive)))
            .collect();
        fs::write(dir.join("sources.list"), sources)?;
        fs::write(dir.join("state/status"), "")?;
        let d = |sub: &str| dir.join(sub).display().to_string();
        let options = [
            format!("Dir::Etc::SourceList={}", d("sources.list")),
            format!("Dir::Etc::SourceParts={}", d("sources.list.d")),
            format!("Dir::Etc::Preferences={}", d("preferences")),
            format!("Dir::Etc::PreferencesParts={}", d("preferences.d")),
            format!("Dir::State={}", d("state")),
            format!("Dir::State::Lists={}", d("lists")),
            format!("Dir::State::status={}", d("state/status")),
            format!("Dir::Cache={}", d("cache")),
            "Dir::Cache::pkgcache=".to_owned(),
            "Dir::Cache::srcpkgcache=".to_owned(),
            "APT::Architecture=amd64".to_owned(),
            "Acquire::Languages=none".to_owned(),
            "APT::Sandbox::User=root".to_owned(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect();
        Ok(Self { distro, options })
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        cmd.args(&self.options).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    fn update(&self) -> Result<()> {
        let out = self
            .command("apt-get")
            .args(["update", "-q"])
            .output()
            .context("running apt-get update (private config)")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || text.lines().any(|l| l.starts_with("E:") || l.starts_with("W: Failed")) {
            bail!(
                "apt-get update for the {} kernel sources failed ({}):\n{}",
                self.distro.name,
                out.status,
                text.trim()
            );
        }
        Ok(())
    }

    fn download(&self, kernel: &Kernel, into: &Path) -> Result<()> {
        let wanted: Vec<String> = kernel.packages.iter().map(|(p, v)| format!("{p}={v}")).collect();
        let out = self
            .command("apt-get")
            .args(["download", "-q"])
            .args(&wanted)
            .current_dir(into)
            .stdout(Stdio::null())
            .output()
            .context("running apt-get download")?;
        if out.status.success() {
            return Ok(());
        }
        // Say what the archive has now, so bumping the pin is one edit.
        let mut now = String::new();
        for (package, _) in kernel.packages {
            let madison =
                self.command("apt-cache").args(["madison", package]).output().map(|o| o.stdout).unwrap_or_default();
            let madison = String::from_utf8_lossy(&madison);
            now += &format!(
                "  {package}: {}\n",
                if madison.trim().is_empty() {
                    "not in the archive any more".to_owned()
                } else {
                    madison.trim().replace('\n', "; ")
                }
            );
        }
        let family = self
            .command("apt-cache")
            .args(["search", "--names-only", kernel.family])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        let mut family: Vec<String> = String::from_utf8_lossy(&family)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        family.sort_by_key(|name| version_key(name));
        let newest: Vec<&String> = family.iter().rev().take(3).collect();
        bail!(
            "could not download the pinned kernel {} ({}) from {}:\n{}\nthe archive has now:\n{now}newest packages of this kernel line: {newest:?}\nupdate the pin of {} in xtask/src/vm/kernels.rs (KERNELS)",
            kernel.name,
            wanted.join(" "),
            kernel.suite,
            String::from_utf8_lossy(&out.stderr).trim(),
            kernel.name,
        )
    }
}

/// Numeric parts of a package name, for ordering "6.12.9" before "6.12.100".
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}
