//! Builds the kernel programs (ebpf-probes/programs) for the bpf target with
//! the nightly toolchain and bpf-linker, so `include_bytes_aligned!` in
//! src/agent/loader.rs embeds them. `cargo xtask setup` installs both; this
//! script finds the linker it cached (under ~/.cache/nstrail, or
//! $NSTRAIL_CACHE_DIR), so a plain `cargo build` works after it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=NSTRAIL_CACHE_DIR");
    println!("cargo:rerun-if-env-changed=PATH");
    if !on_path("bpf-linker") {
        match cached_linker_dir() {
            Some(dir) => {
                let path = std::env::var_os("PATH").unwrap_or_default();
                let joined = std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&path)))?;
                // SAFETY: build scripts are single-threaded here; the
                // nested cargo that aya-build starts inherits it.
                unsafe { std::env::set_var("PATH", joined) };
            }
            None => anyhow::bail!(
                "bpf-linker not found (the eBPF programs need it): run `cargo xtask setup` once, then build again"
            ),
        }
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "nstrail-probes",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf-probes/programs"),
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}

fn on_path(command: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(command).is_file()))
}

fn cache_root() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("NSTRAIL_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("nstrail"))
}

/// The bin folder of the bpf-linker xtask built for the current nightly
/// (keyed `<commit>-llvm<version>`, as xtask/src/setup.rs names it).
fn cached_linker_dir() -> Option<PathBuf> {
    let out = Command::new("rustc").args(["+nightly", "-vV"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned());
    let commit = field("commit-hash:")?;
    let llvm = field("LLVM version:")?;
    let key = format!("{}-llvm{llvm}", &commit[..commit.len().min(12)]);
    let dir = cache_root()?.join("bpf-linker").join(key).join("bin");
    Path::new(&dir).join("bpf-linker").is_file().then_some(dir)
}
