//! nsfs files (/proc/PID/ns/net, /run/netns/NAME, a held fd): what
//! namespace they are, and its unique id.

use std::{
    os::fd::AsRawFd,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

// Both requests are passed `as _`: ioctl takes a c_ulong on glibc, a c_int on musl.
/// `NS_GET_ID` (_IOR(0xb7, 0xd, __u64), Linux 6.18+): the namespace's
/// 64-bit id, equal to its netns cookie.
const NS_GET_ID: libc::c_ulong = 0x8008_b70d;
/// `NS_GET_NSTYPE` (_IO(0xb7, 0x3), Linux 4.11+): the CLONE_NEW* type of the namespace.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
/// `SO_NETNS_COOKIE` (Linux 5.14+): the cookie of a socket's network namespace.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Cleared once the kernel answered NS_GET_ID with ENOTTY (before 6.18).
static NS_GET_ID_WORKS: AtomicBool = AtomicBool::new(true);

/// Unique id (netns cookie) of the network namespace an nsfs path refers to.
pub fn ns_id(path: &Path) -> std::io::Result<u64> {
    ns_id_of(&std::fs::File::open(path)?)
}

/// Unique id (netns cookie) of the network namespace behind an open nsfs
/// file. Before Linux 6.18 the calling thread steps into the namespace for
/// a moment to ask a socket there (`SO_NETNS_COOKIE`), which the agent's
/// own namespace-entry filter keeps out of the event stream.
pub fn ns_id_of(file: &std::fs::File) -> std::io::Result<u64> {
    if NS_GET_ID_WORKS.load(Ordering::Relaxed) {
        let mut id: u64 = 0;
        // SAFETY: valid fd and a u64 out pointer.
        if unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_ID as _, &mut id) } == 0 {
            return Ok(id);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOTTY) {
            return Err(err);
        }
        NS_GET_ID_WORKS.store(false, Ordering::Relaxed);
    }
    if !is_net_namespace(file) {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    cookie_from_inside(file)
}

/// The id of an open nsfs file's namespace where one ioctl tells it
/// (NS_GET_ID, Linux 6.18+); None elsewhere or on failure.
pub fn ns_id_by_ioctl(file: &std::fs::File) -> Option<u64> {
    if !NS_GET_ID_WORKS.load(Ordering::Relaxed) {
        return None;
    }
    let mut id: u64 = 0;
    // SAFETY: valid fd and a u64 out pointer.
    (unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_ID as _, &mut id) } == 0).then_some(id)
}

/// Whether an open nsfs file is a network namespace.
pub fn is_net_namespace(file: &std::fs::File) -> bool {
    // SAFETY: valid fd; the ioctl takes no argument.
    unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) == libc::CLONE_NEWNET }
}

/// Id of the host network namespace: that of pid 1 or, where pid 1's
/// namespace cannot be opened (some sandboxes), the caller's own.
pub fn host_netns_id() -> std::io::Result<u64> {
    match ns_id(Path::new("/proc/1/ns/net")) {
        Ok(id) => Ok(id),
        Err(err) => {
            log::info!("pid 1's network namespace is not readable ({err}); taking the agent's own as the host's");
            own_netns_cookie()
        }
    }
}

/// Cookie of the calling thread's network namespace, from a socket made in it.
pub fn own_netns_cookie() -> std::io::Result<u64> {
    // SAFETY: a plain socket call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor no one else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a u64 out buffer of the stated length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Enters the namespace behind `file`, reads its cookie, and returns to
/// the thread's own namespace.
fn cookie_from_inside(file: &std::fs::File) -> std::io::Result<u64> {
    run_inside(file, own_netns_cookie)?
}

/// Runs `f` on the calling thread inside the network namespace behind
/// `file`, then returns the thread to its own namespace.
pub fn run_inside<T>(file: &std::fs::File, f: impl FnOnce() -> T) -> std::io::Result<T> {
    let home = std::fs::File::open("/proc/thread-self/ns/net")?;
    enter(file)?;
    let result = f();
    if let Err(err) = enter(&home) {
        // The thread would stay in a foreign namespace: nothing sane goes on from here.
        panic!("cannot return to the thread's own network namespace: {err}");
    }
    Ok(result)
}

/// Runs `f` on a short-lived thread inside a new, empty network namespace
/// (unshare); the namespace goes when the thread ends, as nothing else
/// holds it.
pub fn run_in_new<T: Send>(f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare of this short-lived thread only.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("thread in a new namespace panicked")))
    })
}

/// Like [`run_inside`], for a namespace of another kind (`CLONE_NEWUTS`,
/// `CLONE_NEWIPC`): `file` is the namespace's nsfs file.
pub fn run_inside_of_kind<T>(file: &std::fs::File, kind: libc::c_int, f: impl FnOnce() -> T) -> std::io::Result<T> {
    let name = match kind {
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWIPC => "ipc",
        _ => return Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
    };
    let home = std::fs::File::open(format!("/proc/thread-self/ns/{name}"))?;
    enter_kind(file, kind)?;
    let result = f();
    if let Err(err) = enter_kind(&home, kind) {
        panic!("cannot return to the thread's own {name} namespace: {err}");
    }
    Ok(result)
}

fn enter_kind(file: &std::fs::File, kind: libc::c_int) -> std::io::Result<()> {
    // SAFETY: setns on a valid nsfs fd affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), kind) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn enter(file: &std::fs::File) -> std::io::Result<()> {
    // SAFETY: setns on a valid nsfs fd affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_of_its_own_namespace_is_the_cookie_of_its_sockets() {
        let id = ns_id(Path::new("/proc/thread-self/ns/net")).unwrap();
        assert_eq!(id, own_netns_cookie().unwrap());
        let file = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        assert_eq!(cookie_from_inside(&file).unwrap(), id, "the pre-6.18 path agrees");
        assert!(is_net_namespace(&file));
        let mnt = std::fs::File::open("/proc/thread-self/ns/mnt").unwrap();
        assert!(!is_net_namespace(&mnt));
    }

    #[test]
    fn a_new_namespace_is_another_one_and_leaves_the_caller_where_it_was() {
        let own = own_netns_cookie().unwrap();
        let fresh = run_in_new(|| own_netns_cookie().unwrap()).unwrap();
        assert_ne!(fresh, own);
        assert_eq!(own_netns_cookie().unwrap(), own);
    }
}
