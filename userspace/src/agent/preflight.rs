//! Checks the host before loading anything, so a missing requirement is one
//! clear line instead of an eBPF error.

use std::path::Path;

use crate::{
    sys::{btf, proc},
    Error,
};

const TRACEFS: &str = "/sys/kernel/tracing";

pub fn check() -> Result<(), Error> {
    if !proc::is_root() {
        return Err(Error::NotRoot);
    }
    if !Path::new(btf::VMLINUX).exists() {
        return Err(Error::NoBtf { path: btf::VMLINUX, source: std::io::Error::from(std::io::ErrorKind::NotFound) });
    }
    if proc::cgroup2_root().is_none() {
        return Err(Error::NoCgroup2);
    }
    ensure_tracefs()
}

/// Classic tracepoints attach through tracefs; mount it where aya looks.
fn ensure_tracefs() -> Result<(), Error> {
    if proc::is_mounted("tracefs", TRACEFS) || Path::new(TRACEFS).join("events").exists() {
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
