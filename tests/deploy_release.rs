//! The release artefacts themselves: the tarball holds a static binary, the
//! unit, man pages, completions and the example config; the .deb installs
//! them (maintainer scripts included) into a scratch root, enables the unit,
//! and removes and purges cleanly. The unit under systemd: deploy_systemd.rs.
//!
//! The artefacts come from `cargo xtask dist` (target/dist), which `cargo
//! xtask test` runs first.

mod deploy_support;

use std::{path::PathBuf, process::Command};

use deploy_support::{
    artefacts::{dist, unit_setting, unpacked_tarball, VERSION},
    checked,
};
use nstrail_tests::Scratch;

/// Every file a package installs, relative to its prefix.
const INSTALLED: &[&str] = &[
    "bin/nstrail",
    "share/bash-completion/completions/nstrail",
    "share/fish/vendor_completions.d/nstrail.fish",
    "share/doc/nstrail/README.md",
    "share/doc/nstrail/events.md",
    "share/doc/nstrail/examples/nstrail.toml",
];
const MAN_PAGES: &[&str] = &[
    "nstrail",
    "nstrail-run",
    "nstrail-ls",
    "nstrail-show",
    "nstrail-sysctl",
    "nstrail-tail",
    "nstrail-verify",
    "nstrail-audit",
    "nstrail-audit-setup-keys",
];

#[test]
fn the_tarball_holds_a_static_binary_unit_man_pages_completions_and_config() {
    let tmp = Scratch::new("tarball");
    let tree = unpacked_tarball(&tmp.0);
    for file in
        INSTALLED.iter().chain(["lib/systemd/system/nstrail.service", "share/zsh/site-functions/_nstrail"].iter())
    {
        let meta = std::fs::metadata(tree.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(meta.len() > 0, "{file} is empty");
    }
    let mut pages: Vec<String> = std::fs::read_dir(tree.join("share/man/man1"))
        .expect("man1")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let mut expected: Vec<String> = MAN_PAGES.iter().map(|p| format!("{p}.1")).collect();
    expected.sort();
    assert_eq!(pages, expected, "one page per command, none for `help`");
    let run_page = std::fs::read_to_string(tree.join("share/man/man1/nstrail-run.1")).unwrap();
    assert!(run_page.contains("ring\\-buffer\\-mib") || run_page.contains("ring-buffer-mib"), "{run_page}");
    let bash = std::fs::read_to_string(tree.join("share/bash-completion/completions/nstrail")).unwrap();
    assert!(bash.contains("--ring-buffer-mib") && bash.contains("complete"), "bash completion");

    let binary = tree.join("bin/nstrail");
    let file = checked({
        let mut c = Command::new("file");
        c.arg(&binary);
        c
    });
    assert!(file.contains("static") && !file.contains("interpreter"), "not static: {file}");
    let mut version = Command::new(&binary);
    version.arg("--version");
    assert_eq!(checked(version), format!("nstrail {VERSION}"));
}

#[test]
fn the_deb_installs_enables_and_removes_the_unit() {
    nstrail_tests::require_root();
    let deb = dist(&format!("nstrail_{VERSION}_amd64.deb"));
    let mut info = Command::new("dpkg-deb");
    info.arg("--field").arg(&deb).args(["Package", "Version", "Architecture"]);
    assert_eq!(checked(info), format!("Package: nstrail\nVersion: {VERSION}\nArchitecture: amd64"));
    let mut conffiles = Command::new("dpkg-deb");
    conffiles.arg("--info").arg(&deb).arg("conffiles");
    assert_eq!(checked(conffiles), "/etc/nstrail/nstrail.toml");
    // Installed into a scratch root, maintainer scripts included (dpkg
    // passes DPKG_ROOT; deb-systemd-helper acts on that root). No systemd
    // runs there, so postinst enables the unit but starts nothing.
    let tmp = Scratch::new("deb");
    let root = tmp.0.join("root");
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        let mut cmd = Command::new("dpkg");
        cmd.arg(format!("--root={}", root.display()))
            .args(["--force-script-chrootless", "--log=/dev/null", "--no-triggers"])
            .args(args);
        checked(cmd)
    };
    dpkg(&["-i", deb.to_str().unwrap()]);
    let usr = root.join("usr");
    for file in
        INSTALLED.iter().chain(["lib/systemd/system/nstrail.service", "share/zsh/vendor-completions/_nstrail"].iter())
    {
        assert!(usr.join(file).exists(), "/usr/{file}");
    }
    for page in MAN_PAGES {
        assert!(usr.join(format!("share/man/man1/{page}.1.gz")).exists(), "{page}.1.gz");
    }
    let unit = std::fs::read_to_string(usr.join("lib/systemd/system/nstrail.service")).unwrap();
    assert_eq!(unit_setting(&unit, "ExecStart").as_deref(), Some("/usr/bin/nstrail run"));
    assert!(root.join("etc/nstrail/nstrail.toml").exists());
    let wants = root.join("etc/systemd/system/multi-user.target.wants/nstrail.service");
    assert_eq!(
        std::fs::read_link(&wants).ok(),
        Some(PathBuf::from("/usr/lib/systemd/system/nstrail.service")),
        "enabled"
    );
    // Removed: masked, config kept (reinstalling restores the state); purged: all gone.
    dpkg(&["-r", "nstrail"]);
    let mask = root.join("etc/systemd/system/nstrail.service");
    assert!(!usr.join("bin/nstrail").exists(), "removed");
    assert_eq!(std::fs::read_link(&mask).ok(), Some(PathBuf::from("/dev/null")), "masked");
    assert!(root.join("etc/nstrail/nstrail.toml").exists(), "remove keeps the conffile");
    dpkg(&["-P", "nstrail"]);
    assert!(!root.join("etc/nstrail/nstrail.toml").exists(), "purge removes it");
    assert!(
        std::fs::symlink_metadata(&mask).is_err() && std::fs::symlink_metadata(&wants).is_err(),
        "purge disables and unmasks"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let mut extract = Command::new("dpkg-deb");
        extract.arg("--info").arg(&deb).arg(script);
        let text = checked(extract);
        let mut sh = Command::new("sh");
        sh.args(["-n", "-c", &text]);
        checked(sh);
    }
}
