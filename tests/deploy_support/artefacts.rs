//! Where the deploy tests find what they check: the release artefacts
//! `cargo xtask dist` writes to target/dist (and the unit in them), and the
//! Kubernetes base (deploy/kubernetes/base).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::{checked, workspace, yaml};

pub const VERSION: &str = "0.1.0";

pub fn dist(name: &str) -> PathBuf {
    let path = workspace().join("target/dist").join(name);
    assert!(path.exists(), "{} is missing: run `cargo xtask dist` (cargo xtask test does)", path.display());
    path
}

pub fn base(file: &str) -> PathBuf {
    workspace().join("deploy/kubernetes/base").join(file)
}

/// The tarball unpacked.
pub fn unpacked_tarball(into: &Path) -> PathBuf {
    let mut tar = Command::new("tar");
    tar.arg("-xzf").arg(dist(&format!("nstrail-{VERSION}-x86_64-linux.tar.gz"))).arg("-C").arg(into);
    checked(tar);
    into.join(format!("nstrail-{VERSION}-x86_64-linux"))
}

/// `KEY=VALUE` settings of a unit file (last one wins).
pub fn unit_setting(unit: &str, key: &str) -> Option<String> {
    unit.lines().rev().find_map(|l| l.strip_prefix(&format!("{key}="))).map(str::to_owned)
}

pub fn daemonset() -> serde_json::Value {
    yaml(&base("daemonset.yaml"))
}

/// The DaemonSet's added capabilities, as CAP_ names.
pub fn daemonset_capabilities() -> Vec<String> {
    let ds = daemonset();
    let sc = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    sc["capabilities"]["add"].as_array().expect("add").iter().map(|c| format!("CAP_{}", c.as_str().unwrap())).collect()
}
