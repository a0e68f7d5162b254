//! Checks the host before loading anything, so a missing requirement is one
//! clear line instead of an eBPF error.

use std::path::Path;

use crate::Error;

const TRACEFS: &str = "/sys/kernel/tracing";

pub fn check() -> Result<(), Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(Error::NoBtf {
            path: "/sys/kernel/btf/vmlinux",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    if !mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("cgroup2")) {
        return Err(Error::NoCgroup2);
    }
    ensure_tracefs(&mounts)
}

/// Classic tracepoints attach through tracefs; mount it where aya looks.
fn ensure_tracefs(mounts: &str) -> Result<(), Error> {
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (mount_point, fstype) = (f.nth(1), f.next());
        fstype == Some("tracefs") && mount_point == Some(TRACEFS)
    });
    if mounted || Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, target, fstype) = (c("tracefs"), c(TRACEFS), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        log::info!("mounted tracefs at {TRACEFS}");
        Ok(())
    } else {
        Err(Error::TraceFs(std::io::Error::last_os_error()))
    }
}

/// Raises the open-file soft limit to the hard limit: every API client and
/// every namespace looked at costs a descriptor.
pub fn raise_fd_limit() {
    // SAFETY: plain get/setrlimit on a local struct.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// `uname -r` of the running kernel.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}
