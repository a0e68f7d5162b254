//! The OCI image (`FROM scratch` plus the binary), written as an OCI layout
//! that is also a `docker load` archive, without a container daemon.

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};
use sha2::{Digest as _, Sha256};

use super::{copy_file, image_name, tar, VERSION};
use crate::checked;

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn rfc3339(epoch: u64) -> String {
    let out = Command::new("date").args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"]).output();
    out.ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// The OCI image: one layer with /usr/bin/nstrail and the empty folders the
/// manifests mount over; written as an OCI image layout (index.json,
/// blobs/sha256) plus the manifest.json `docker load` reads, in one tar.
pub fn image(binary: &Path, epoch: u64, image: &Path) -> Result<()> {
    let work = image.with_extension("d");
    let _ = fs::remove_dir_all(&work);
    let rootfs = work.join("rootfs");
    copy_file(binary, &rootfs.join("usr/bin/nstrail"), 0o755)?;
    for dir in ["etc/nstrail", "run/nstrail", "var/log/nstrail"] {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    let layer_tar = work.join("layer.tar");
    let mut cmd = tar(&rootfs, epoch, &["-cf"]);
    cmd.arg(&layer_tar).args(["etc", "run", "usr", "var"]);
    checked(cmd, "tar (image layer)")?;
    let layer = fs::read(&layer_tar)?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer));
    let gz = Command::new("gzip").args(["-9", "-n", "-c"]).arg(&layer_tar).output().context("running gzip")?;
    if !gz.status.success() {
        bail!("gzip of the image layer failed");
    }
    let layer_gz = gz.stdout;
    let layer_digest = sha256_hex(&layer_gz);
    let created = rfc3339(epoch);
    let config = serde_json::json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/usr/bin/nstrail"],
            "Cmd": ["run"],
            "Env": ["PATH=/usr/bin"],
            "ExposedPorts": {"9717/tcp": {}},
            "StopSignal": "SIGTERM",
            "Labels": {
                "org.opencontainers.image.title": "nstrail",
                "org.opencontainers.image.description": "eBPF observer of Linux network namespaces",
                "org.opencontainers.image.version": VERSION,
                "org.opencontainers.image.licenses": "MIT OR Apache-2.0",
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "cargo xtask dist: FROM scratch, /usr/bin/nstrail"}],
    });
    let config = serde_json::to_vec(&config)?;
    let config_digest = sha256_hex(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_gz.len(),
        }],
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = sha256_hex(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": format!("docker.io/library/{}", image_name()),
                "org.opencontainers.image.ref.name": VERSION,
            },
        }],
    });
    let docker_manifest = serde_json::json!([{
        "Config": format!("blobs/sha256/{config_digest}"),
        "RepoTags": [image_name()],
        "Layers": [format!("blobs/sha256/{layer_digest}")],
    }]);
    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    fs::write(blobs.join(&layer_digest), &layer_gz)?;
    fs::write(blobs.join(&config_digest), &config)?;
    fs::write(blobs.join(&manifest_digest), &manifest)?;
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    fs::write(layout.join("manifest.json"), serde_json::to_vec(&docker_manifest)?)?;
    let mut cmd = tar(&layout, epoch, &["-cf"]);
    cmd.arg(image).args(["blobs", "index.json", "manifest.json", "oci-layout"]);
    checked(cmd, "tar (image)")?;
    fs::remove_dir_all(&work).ok();
    Ok(())
}
