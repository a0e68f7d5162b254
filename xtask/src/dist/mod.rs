//! `cargo xtask dist`: the release artefacts, in target/dist/:
//!
//! - `nstrail`: the agent and CLI, one static binary (x86_64-unknown-linux-musl, stripped);
//! - `nstrail-VERSION-x86_64-linux.tar.gz`: a /usr/local tree (binary, systemd unit, man pages,
//!   shell completions, example config and docs);
//! - `nstrail_VERSION_amd64.deb`: the same for /usr, installing, enabling and starting the unit;
//! - `nstrail-VERSION-image.tar`: an OCI image (`FROM scratch` plus the binary) as an OCI
//!   layout that is also a `docker load` archive, written here without a container daemon.
//!
//! The man pages and completions come from the binary itself (`--features dist`,
//! `NSTRAIL_WRITE_ASSETS`, userspace/src/assets.rs), so they always match its arguments.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{checked, setup, setup::BuildEnv, workspace_root};
use anyhow::{bail, Context as _, Result};

mod deb;
mod oci;

pub const TARGET: &str = "x86_64-unknown-linux-musl";
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(clap::Args, Debug, Default)]
pub struct DistArgs {
    /// Only the static binary and the OCI image (what the deploy tests use)
    #[arg(long)]
    pub image_only: bool,
}

/// What `run` made, with their paths.
pub struct Artefacts {
    pub binary: PathBuf,
    pub tarball: Option<PathBuf>,
    pub deb: Option<PathBuf>,
    pub image: PathBuf,
}

pub fn dist_dir() -> PathBuf {
    workspace_root().join("target/dist")
}

pub fn image_name() -> String {
    format!("nstrail:{VERSION}")
}

pub fn run(env: &BuildEnv, args: &DistArgs) -> Result<Artefacts> {
    let out = dist_dir();
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let binary = build_static(env, &out)?;
    let epoch = source_date_epoch();
    let image = out.join(format!("nstrail-{VERSION}-image.tar"));
    oci::image(&binary, epoch, &image)?;
    let (mut tarball, mut deb) = (None, None);
    if !args.image_only {
        let staging = out.join("staging");
        let _ = fs::remove_dir_all(&staging);
        let assets = staging.join("assets");
        let status = Command::new(&binary)
            .env("NSTRAIL_WRITE_ASSETS", &assets)
            .status()
            .context("running nstrail to write man pages and completions")?;
        if !status.success() {
            bail!("nstrail could not write its man pages and completions ({status})");
        }
        tarball = Some(make_tarball(&binary, &assets, &staging, epoch, &out)?);
        deb = Some(deb::make(&binary, &assets, &staging, epoch, &out)?);
        fs::remove_dir_all(&staging).ok();
    }
    let artefacts = Artefacts { binary, tarball, deb, image };
    for path in [Some(&artefacts.binary), artefacts.tarball.as_ref(), artefacts.deb.as_ref(), Some(&artefacts.image)]
        .into_iter()
        .flatten()
    {
        let size = fs::metadata(path)?.len();
        eprintln!("dist: {} ({:.1} MiB)", path.display(), size as f64 / (1024.0 * 1024.0));
    }
    Ok(artefacts)
}

/// What the deployment tests run in Python, pinned: the Kubernetes schemas
/// (kubernetes-validate) and the Prometheus Operator's CRD models.
const PYTHON_TOOLS: &[&str] = &["kubernetes-validate==1.37.0", "cloudcoil-models-prometheus-operator==0.80.1.0"];

/// A venv with [`PYTHON_TOOLS`] under the cache (`<cache>/python`), made
/// with Debian's python3 (package python3-venv); the tests find it there.
pub fn ensure_python_tools() -> Result<()> {
    let venv = setup::cache_root().join("python");
    let marker = venv.join("nstrail-requirements.txt");
    let wanted = PYTHON_TOOLS.join("\n");
    if fs::read_to_string(&marker).is_ok_and(|m| m == wanted) && venv.join("bin/kubernetes-validate").exists() {
        eprintln!("setup: python tools ({}): present", PYTHON_TOOLS.join(", "));
        return Ok(());
    }
    eprintln!("setup: installing python tools in {}: {}", venv.display(), PYTHON_TOOLS.join(" "));
    let _ = fs::remove_dir_all(&venv);
    let mut make = Command::new("/usr/bin/python3");
    make.args(["-m", "venv"]).arg(&venv);
    checked(make, "python3 -m venv (package python3-venv)")?;
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args(["install", "--quiet", "--disable-pip-version-check"]).args(PYTHON_TOOLS);
    checked(pip, "pip install (needs PyPI)")?;
    fs::write(&marker, wanted)?;
    Ok(())
}

/// `SOURCE_DATE_EPOCH`, else the last commit's time: the same sources give
/// the same archives.
fn source_date_epoch() -> u64 {
    if let Some(epoch) = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.parse().ok()) {
        return epoch;
    }
    Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

fn ensure_musl_target() -> Result<()> {
    let installed =
        Command::new("rustup").args(["target", "list", "--installed"]).output().context("running rustup")?;
    if String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.trim() == TARGET) {
        return Ok(());
    }
    eprintln!("dist: adding the {TARGET} target (rustup target add {TARGET})");
    let status = Command::new("rustup").args(["target", "add", TARGET]).status().context("running rustup")?;
    if !status.success() {
        bail!("could not add the {TARGET} target: run `rustup target add {TARGET}` and look at its error");
    }
    Ok(())
}

/// `cargo build --release --target x86_64-unknown-linux-musl`, then a
/// stripped copy in `out` after checking it needs no dynamic loader.
fn build_static(env: &BuildEnv, out: &Path) -> Result<PathBuf> {
    ensure_musl_target()?;
    let mut cmd = crate::cargo(env);
    cmd.args(["build", "--release", "--target", TARGET, "--package", "nstrail", "--bin", "nstrail"]);
    cmd.args(["--features", "dist"]);
    checked(cmd, "cargo build --release --target x86_64-unknown-linux-musl")?;
    let built = workspace_root().join("target").join(TARGET).join("release/nstrail");
    let binary = out.join("nstrail");
    fs::copy(&built, &binary).with_context(|| format!("copying {}", built.display()))?;
    let mut strip = Command::new("strip");
    strip.arg(&binary);
    checked(strip, "strip (binutils)")?;
    if has_interpreter(&fs::read(&binary)?)? {
        bail!("{} is not static: it asks for a dynamic loader", binary.display());
    }
    Ok(binary)
}

/// Whether an ELF64 file has a PT_INTERP program header (a dynamic loader).
fn has_interpreter(elf: &[u8]) -> Result<bool> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        bail!("not an ELF64 file");
    }
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (entry_size, count) = (u16_at(0x36), u16_at(0x38));
    Ok((0..count).any(|i| {
        let at = phoff + i * entry_size;
        elf.get(at..at + 4).is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) == 3)
    }))
}

fn copy_file(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write_file(to: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Sorted entries, root-owned, one timestamp: reproducible archives.
fn tar(dir: &Path, epoch: u64, args: &[&str]) -> Command {
    let mut cmd = Command::new("tar");
    cmd.current_dir(dir)
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--format=gnu"])
        .arg(format!("--mtime=@{epoch}"))
        .args(args);
    cmd
}

/// The unit with the binary where a package puts it.
fn unit_for(prefix: &str) -> Result<String> {
    let unit = fs::read_to_string(workspace_root().join("deploy/systemd/nstrail.service"))?;
    if !unit.contains("ExecStart=/usr/bin/nstrail ") {
        bail!("deploy/systemd/nstrail.service no longer starts /usr/bin/nstrail: update xtask/src/dist.rs");
    }
    Ok(unit.replace("ExecStart=/usr/bin/nstrail ", &format!("ExecStart={prefix}/bin/nstrail ")))
}

/// Files both packages install under `prefix` (relative to `root`).
fn install_tree(binary: &Path, assets: &Path, root: &Path, prefix: &str) -> Result<()> {
    let base = root.join(prefix.trim_start_matches('/'));
    let ws = workspace_root();
    copy_file(binary, &base.join("bin/nstrail"), 0o755)?;
    let completions = assets.join("completions");
    copy_file(&completions.join("nstrail.bash"), &base.join("share/bash-completion/completions/nstrail"), 0o644)?;
    copy_file(&completions.join("nstrail.fish"), &base.join("share/fish/vendor_completions.d/nstrail.fish"), 0o644)?;
    let zsh =
        if prefix == "/usr" { "share/zsh/vendor-completions/_nstrail" } else { "share/zsh/site-functions/_nstrail" };
    copy_file(&completions.join("_nstrail"), &base.join(zsh), 0o644)?;
    let man1 = base.join("share/man/man1");
    fs::create_dir_all(&man1)?;
    let mut pages: Vec<PathBuf> =
        fs::read_dir(assets.join("man"))?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    pages.sort();
    for page in pages {
        let name = page.file_name().expect("file name").to_string_lossy().into_owned();
        if prefix == "/usr" {
            // Debian compresses man pages.
            let out = Command::new("gzip").args(["-9", "-n", "-c"]).arg(&page).output().context("running gzip")?;
            if !out.status.success() {
                bail!("gzip {} failed", page.display());
            }
            fs::write(man1.join(format!("{name}.gz")), out.stdout)?;
        } else {
            copy_file(&page, &man1.join(&name), 0o644)?;
        }
    }
    let doc = base.join("share/doc/nstrail");
    copy_file(&ws.join("README.md"), &doc.join("README.md"), 0o644)?;
    copy_file(&ws.join("docs/events.md"), &doc.join("events.md"), 0o644)?;
    if ws.join("docs/install.md").exists() {
        copy_file(&ws.join("docs/install.md"), &doc.join("install.md"), 0o644)?;
    }
    copy_file(&ws.join("deploy/config/nstrail.toml"), &doc.join("examples/nstrail.toml"), 0o644)?;
    Ok(())
}

fn make_tarball(binary: &Path, assets: &Path, staging: &Path, epoch: u64, out: &Path) -> Result<PathBuf> {
    let name = format!("nstrail-{VERSION}-x86_64-linux");
    let root = staging.join("tarball");
    let top = root.join(&name);
    install_tree(binary, assets, &top, "/")?;
    write_file(&top.join("lib/systemd/system/nstrail.service"), &unit_for("/usr/local")?, 0o644)?;
    let tarball = out.join(format!("{name}.tar.gz"));
    let mut cmd = tar(&root, epoch, &["--use-compress-program=gzip -9 -n", "-cf"]);
    cmd.arg(&tarball).arg(&name);
    checked(cmd, "tar")?;
    Ok(tarball)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_is_rewritten_for_each_prefix() {
        let unit = unit_for("/usr/local").unwrap();
        assert!(unit.contains("ExecStart=/usr/local/bin/nstrail run"), "{unit}");
        assert!(unit_for("/usr").unwrap().contains("ExecStart=/usr/bin/nstrail run"));
    }

    #[test]
    fn finds_the_dynamic_loader_request() {
        assert!(has_interpreter(&fs::read("/bin/sh").unwrap()).unwrap());
        assert!(has_interpreter(b"not an elf file at all, not at all, not at all, not at all, not").is_err());
    }
}
