//! What /proc and /sys say about the running system, and process limits.

use std::path::PathBuf;

/// `uname -r` of the running kernel.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Mount point of the cgroup2 hierarchy (`/sys/fs/cgroup` or, on hybrid
/// systems, `/sys/fs/cgroup/unified`), if one is mounted.
pub fn cgroup2_root() -> Option<PathBuf> {
    procfs::mounts().ok()?.into_iter().find(|m| m.fs_vfstype == "cgroup2").map(|m| PathBuf::from(m.fs_file))
}

/// Whether a file system of this type is mounted at `path`.
pub fn is_mounted(fs_type: &str, path: &str) -> bool {
    procfs::mounts().is_ok_and(|mounts| mounts.iter().any(|m| m.fs_vfstype == fs_type && m.fs_file == path))
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

/// Whether the process runs with root's effective uid.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// What a thread is doing, from /proc/PID/task/TID/syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syscall {
    /// In this system call.
    Number(u64),
    /// Not in a system call.
    NotInSyscall,
    /// On a CPU right now: the kernel cannot tell.
    Running,
    /// The thread is gone.
    Gone,
    Unknown,
}

pub fn current_syscall(pid: u32, tid: u32) -> Syscall {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")) else {
        return if std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
            Syscall::Unknown
        } else {
            Syscall::Gone
        };
    };
    match text.split_whitespace().next() {
        Some("running") => Syscall::Running,
        Some("-1") => Syscall::NotInSyscall,
        Some(nr) => nr.parse().map(Syscall::Number).unwrap_or(Syscall::Unknown),
        None => Syscall::Unknown,
    }
}

/// Whether `nr` writes to a file descriptor (write, pwrite64, writev,
/// pwritev, pwritev2, sendfile, splice) on this architecture.
pub fn is_write_syscall(nr: u64) -> bool {
    #[cfg(target_arch = "x86_64")]
    const WRITES: &[u64] = &[1, 18, 20, 40, 275, 296, 328];
    #[cfg(target_arch = "aarch64")]
    const WRITES: &[u64] = &[64, 66, 68, 70, 71, 76, 287];
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    const WRITES: &[u64] = &[];
    WRITES.contains(&nr)
}

/// TCP sockets in use in the network namespace of task `tid` of process
/// `pid`, from /proc/PID/task/TID/net/sockstat, if that task is still in
/// the namespace with inode `inode`.
pub fn tcp_sockets_in_use(pid: u32, tid: u32, inode: u32) -> Option<u64> {
    for dir in [format!("/proc/{pid}/task/{tid}"), format!("/proc/{pid}")] {
        let still_there =
            std::fs::read_link(format!("{dir}/ns/net")).is_ok_and(|l| l.to_string_lossy() == format!("net:[{inode}]"));
        if !still_there {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(format!("{dir}/net/sockstat")) {
            return parse_tcp_inuse(&text);
        }
    }
    None
}

/// `inuse` of the `TCP:` line of /proc/net/sockstat.
pub fn parse_tcp_inuse(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(word) = words.next() {
        if word == "inuse" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// TCP sockets in LISTEN in the calling thread's network namespace, from
/// /proc/thread-self/net/tcp and tcp6 (IPv4, IPv6); None for a table that
/// cannot be read (IPv6 disabled).
pub fn tcp_listening_here() -> (Option<u32>, Option<u32>) {
    let count = |file: &str| {
        std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).ok().map(|t| count_tcp_listening(&t))
    };
    (count("tcp"), count("tcp6"))
}

/// Rows of a /proc/net/tcp{,6} table whose state (`st`) is LISTEN (0A).
pub fn count_tcp_listening(table: &str) -> u32 {
    table.lines().skip(1).filter(|row| row.split_whitespace().nth(3) == Some("0A")).count() as u32
}

/// A process's name (/proc/PID/comm), if it still runs.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read(format!("/proc/{pid}/comm")).ok().map(|bytes| {
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        String::from_utf8_lossy(bytes).into_owned()
    })
}

/// A process's open file table (/proc/PID/fd), open as a directory: its
/// entries are read and opened relative to it, without walking /proc to
/// the process again for each (at thousands of fds, most of the cost).
pub struct FdDir(std::os::fd::OwnedFd);

impl FdDir {
    pub fn open(pid: u32) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(format!("/proc/{pid}/fd"))?;
        Ok(Self(dir.into()))
    }

    fn name(fd: u32) -> std::ffi::CString {
        std::ffi::CString::new(fd.to_string()).expect("digits")
    }

    /// Where fd `fd` leads (`net:[4026531840]`, `socket:[...]`, a path).
    pub fn target(&self, fd: u32) -> std::io::Result<PathBuf> {
        use std::os::{fd::AsRawFd, unix::ffi::OsStringExt};
        let mut buf = vec![0u8; 4096];
        // SAFETY: a NUL-terminated name and a buffer of buf.len() bytes.
        let n = unsafe {
            libc::readlinkat(self.0.as_raw_fd(), Self::name(fd).as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(PathBuf::from(std::ffi::OsString::from_vec(buf)))
    }

    /// Opens what fd `fd` leads to, read-only. Only for nsfs targets: a
    /// FIFO or a device would be opened for real.
    pub fn open_target(&self, fd: u32) -> std::io::Result<std::fs::File> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: a NUL-terminated name; the fd returned is ours.
        let opened =
            unsafe { libc::openat(self.0.as_raw_fd(), Self::name(fd).as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if opened < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: just opened, owned by nobody else.
        Ok(unsafe { std::fs::File::from_raw_fd(opened) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_listening_sockets() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n   1: 0100007F:9C40 0100007F:0016 01 00000000:00000000 00:00000000 00000000     0        0 2\n";
        assert_eq!(count_tcp_listening(table), 1);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (v4, _) = tcp_listening_here();
        assert!(v4.unwrap() >= 1);
        drop(listener);
        assert!(comm(std::process::id()).is_some());
    }

    #[test]
    fn parses_sockstat() {
        let text = "sockets: used 142\nTCP: inuse 7 orphan 0 tw 2 alloc 9 mem 1\nUDP: inuse 3 mem 2\n";
        assert_eq!(parse_tcp_inuse(text), Some(7));
        assert_eq!(parse_tcp_inuse("UDP: inuse 3\n"), None);
    }

    #[test]
    fn reads_own_namespace_socket_count() {
        let me = std::process::id();
        let link = std::fs::read_link("/proc/self/ns/net").unwrap();
        let inode: u32 = link.to_string_lossy().trim_start_matches("net:[").trim_end_matches(']').parse().unwrap();
        assert!(tcp_sockets_in_use(me, me, inode).is_some());
        assert_eq!(tcp_sockets_in_use(me, me, inode.wrapping_add(1)), None, "another namespace is not read");
    }

    #[test]
    fn tells_a_thread_in_a_syscall() {
        // A thread blocked in read(2) on a pipe.
        let (reader, writer) = std::io::pipe().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let mut byte = [0u8; 1];
            std::io::Read::read(&mut &reader, &mut byte).unwrap();
        });
        let tid = rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(current_syscall(std::process::id(), tid), Syscall::Number(0), "read(2) is 0 on x86_64");
        std::io::Write::write_all(&mut &writer, b"x").unwrap();
        thread.join().unwrap();
        assert_eq!(current_syscall(std::process::id(), tid), Syscall::Gone);
        assert!(is_write_syscall(1) || cfg!(not(target_arch = "x86_64")));
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let text = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let expected = text.lines().find_map(|l| {
            let f: Vec<_> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        });
        assert_eq!(cgroup2_root(), expected);
    }
}
