//! ioctls on nsfs files (/proc/PID/ns/net, /run/netns/NAME, a held fd).

use std::{os::fd::AsRawFd, path::Path};

/// `NS_GET_ID` (_IOR(0xb7, 0xd, __u64), Linux 6.18+): the namespace's
/// 64-bit id, equal to its netns cookie.
const NS_GET_ID: libc::c_ulong = 0x8008_b70d;
/// `NS_GET_NSTYPE` (_IO(0xb7, 0x3)): the CLONE_NEW* type of the namespace.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Unique id of the namespace an nsfs path refers to.
pub fn ns_id(path: &Path) -> std::io::Result<u64> {
    ns_id_of(&std::fs::File::open(path)?)
}

/// Unique id of the namespace behind an open nsfs file.
pub fn ns_id_of(file: &std::fs::File) -> std::io::Result<u64> {
    let mut id: u64 = 0;
    // SAFETY: valid fd and a u64 out pointer.
    if unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_ID, &mut id) } == 0 {
        Ok(id)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether an open nsfs file is a network namespace.
pub fn is_net_namespace(file: &std::fs::File) -> bool {
    // SAFETY: valid fd; the ioctl takes no argument.
    unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) == libc::CLONE_NEWNET }
}
