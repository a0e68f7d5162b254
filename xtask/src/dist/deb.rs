//! The .deb: the /usr tree with maintainer scripts that enable and start the unit.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use super::{copy_file, install_tree, unit_for, write_file, VERSION};
use crate::{checked, workspace_root};

const DEB_POSTINST: &str = r#"#!/bin/sh
# Enable the unit on first install (an admin's later `systemctl disable` is
# kept across upgrades), then start it, or restart it on upgrade. Starting
# goes through deb-systemd-invoke, so policy-rc.d (containers, chroots) is
# obeyed.
set -e
case "$1" in
configure|abort-upgrade|abort-deconfigure|abort-remove)
    deb-systemd-helper unmask nstrail.service >/dev/null || true
    if deb-systemd-helper --quiet was-enabled nstrail.service; then
        deb-systemd-helper enable nstrail.service >/dev/null || true
    else
        deb-systemd-helper update-state nstrail.service >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if [ -n "$2" ]; then action=restart; else action=start; fi
        deb-systemd-invoke "$action" nstrail.service || true
    fi
    ;;
esac
exit 0
"#;

const DEB_PRERM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    deb-systemd-invoke stop nstrail.service >/dev/null || true
fi
exit 0
"#;

const DEB_POSTRM: &str = r#"#!/bin/sh
# The audit log (/var/log/nstrail) is evidence: it stays, even on purge.
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
case "$1" in
remove)
    if [ -x /usr/bin/deb-systemd-helper ]; then
        deb-systemd-helper mask nstrail.service >/dev/null || true
    fi
    ;;
purge)
    if [ -x /usr/bin/deb-systemd-helper ]; then
        deb-systemd-helper purge nstrail.service >/dev/null || true
        deb-systemd-helper unmask nstrail.service >/dev/null || true
    fi
    ;;
esac
exit 0
"#;

const DEB_COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: nstrail

Files: *
License: MIT OR Apache-2.0
 The userspace agent and CLI: MIT OR Apache-2.0, at your option.
 The eBPF programs built into it: MIT OR GPL-2.0.
 On Debian systems the Apache License 2.0 is in /usr/share/common-licenses/Apache-2.0
 and the GPL version 2 in /usr/share/common-licenses/GPL-2.
";

fn dir_size_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_size_kib(&entry.path())? * 1024 } else { meta.len() };
    }
    Ok(total.div_ceil(1024))
}

pub fn make(binary: &Path, assets: &Path, staging: &Path, epoch: u64, out: &Path) -> Result<PathBuf> {
    let root = staging.join("deb");
    install_tree(binary, assets, &root, "/usr")?;
    write_file(&root.join("usr/lib/systemd/system/nstrail.service"), &unit_for("/usr")?, 0o644)?;
    copy_file(&workspace_root().join("deploy/config/nstrail.toml"), &root.join("etc/nstrail/nstrail.toml"), 0o644)?;
    write_file(&root.join("usr/share/doc/nstrail/copyright"), DEB_COPYRIGHT, 0o644)?;
    let installed_kib = dir_size_kib(&root)?;
    let control = format!(
        "Package: nstrail\n\
         Version: {VERSION}\n\
         Architecture: amd64\n\
         Maintainer: nstrail developers <nstrail@example.invalid>\n\
         Installed-Size: {installed_kib}\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: https://example.invalid/nstrail\n\
         Description: eBPF observer of Linux network namespaces\n \
         nstrail reports which network namespaces were created, entered and\n \
         destroyed, which network devices moved between them and which sysctls\n \
         were written in them, by which process, as JSON lines, a tamper-evident\n \
         audit log and Prometheus metrics. Needs Linux 5.17 or later with BTF.\n"
    );
    let debian = root.join("DEBIAN");
    write_file(&debian.join("control"), &control, 0o644)?;
    write_file(&debian.join("conffiles"), "/etc/nstrail/nstrail.toml\n", 0o644)?;
    write_file(&debian.join("postinst"), DEB_POSTINST, 0o755)?;
    write_file(&debian.join("prerm"), DEB_PRERM, 0o755)?;
    write_file(&debian.join("postrm"), DEB_POSTRM, 0o755)?;
    let deb = out.join(format!("nstrail_{VERSION}_amd64.deb"));
    let mut cmd = Command::new("dpkg-deb");
    cmd.args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&deb)
        .env("SOURCE_DATE_EPOCH", epoch.to_string());
    checked(cmd, "dpkg-deb --build")?;
    Ok(deb)
}
