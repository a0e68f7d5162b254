//! Test helper: makes namespaces with raw system calls, as runtimes and Go
//! programs do, and prints what the tests need to assert (`key=value`).
//! `netns-helper --help` lists what it does.

use std::{os::fd::AsRawFd, process::ExitCode};

use nstrail_tests::NetnsIdentity;

fn fail(what: &str) -> ! {
    eprintln!("netns-helper: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(2)
}

/// Runs in the child right after clone: wait for the parent to close the
/// pipe, then leave without touching anything the parent owns.
fn child_waits_for(pipe: [libc::c_int; 2]) -> ! {
    let mut byte = 0u8;
    // SAFETY: plain close, read and _exit, async-signal-safe.
    unsafe {
        libc::close(pipe[1]);
        libc::read(pipe[0], (&mut byte as *mut u8).cast(), 1);
        libc::_exit(0)
    }
}

fn clone_child(use_clone3: bool) {
    let (mut pipe, mut report) = ([0; 2], [0; 2]);
    // SAFETY: out arrays of two fds.
    if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 || unsafe { libc::pipe(report.as_mut_ptr()) } != 0 {
        fail("pipe");
    }
    let flags = libc::CLONE_NEWNET as u64;
    let child = if use_clone3 {
        // struct clone_args, CLONE_ARGS_SIZE_VER0: flags, pidfd, child_tid,
        // parent_tid, exit_signal, stack, stack_size, tls.
        let args: [u64; 8] = [flags, 0, 0, 0, libc::SIGCHLD as u64, 0, 0, 0];
        // SAFETY: args outlives the call; the child continues on a copy of our stack.
        unsafe { libc::syscall(libc::SYS_clone3, args.as_ptr(), std::mem::size_of_val(&args)) }
    } else {
        // SAFETY: fork-like clone: no new stack, child continues here.
        unsafe { libc::syscall(libc::SYS_clone, flags | libc::SIGCHLD as u64, 0, 0, 0, 0) }
    };
    if child < 0 {
        fail("clone");
    }
    if child == 0 {
        // The child says its namespace's id itself: a parent stepping in to
        // ask (before NS_GET_ID, Linux 6.18) would be an enter of its own.
        let id = nstrail::sys::nsfs::own_netns_cookie().unwrap_or(0);
        // SAFETY: writing 8 bytes from a local to our pipe.
        unsafe { libc::write(report[1], (&id as *const u64).cast(), 8) };
        child_waits_for(pipe);
    }
    let child = child as u32;
    let mut id = 0u64;
    // SAFETY: reading 8 bytes into a local from our pipe.
    if unsafe { libc::read(report[0], (&mut id as *mut u64).cast(), 8) } != 8 {
        fail("read the child's namespace id");
    }
    let inode = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(format!("/proc/{child}/ns/net")).unwrap_or_else(|_| fail("stat the child's namespace")),
    );
    println!("pid={} child={child} inode={inode} id={id}", std::process::id());
    // SAFETY: closing our own fds and reaping our child.
    unsafe {
        libc::close(pipe[1]);
        let mut status = 0;
        libc::waitpid(child as i32, &mut status, 0);
    }
}

fn setns_thread(path: &str) {
    let file = std::fs::File::open(path).unwrap_or_else(|_| fail("open namespace"));
    let fd = file.as_raw_fd();
    let line = std::thread::spawn(move || {
        // SAFETY: fd stays open (owned by `file`) until the thread is joined.
        if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
            fail("setns");
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let ns = NetnsIdentity::of_self();
        format!("pid={} tid={tid} inode={} id={}", std::process::id(), ns.inode, ns.id)
    })
    .join()
    .expect("thread");
    println!("{line}");
}

/// Opens /proc/sys/FILE inside the namespace at PATH, steps back to its
/// own namespace, then writes VALUE through the fd it opened there.
fn write_from_outside(path: &str, file: &str, value: &str) {
    use std::io::Write;
    let ns = std::fs::File::open(path).unwrap_or_else(|_| fail("open namespace"));
    let home = std::fs::File::open("/proc/thread-self/ns/net").unwrap_or_else(|_| fail("open own namespace"));
    // SAFETY: valid nsfs fds; only this thread switches.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        fail("setns into PATH");
    }
    let mut sysctl = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/sys/{file}"))
        .unwrap_or_else(|_| fail("open the sysctl file"));
    // SAFETY: as above.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        fail("setns back");
    }
    let errno = match sysctl.write_all(value.as_bytes()) {
        Ok(()) => 0,
        Err(err) => err.raw_os_error().unwrap_or(-1),
    };
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    println!("pid={} tid={tid} errno={errno}", std::process::id());
}

fn churn(count: u32) {
    let mut failed = 0;
    for _ in 0..count {
        // SAFETY: single-threaded process; the child only unshares and exits.
        let child = unsafe { libc::fork() };
        if child < 0 {
            fail("fork");
        }
        if child == 0 {
            // SAFETY: async-signal-safe calls only.
            unsafe {
                let rc = libc::unshare(libc::CLONE_NEWNET);
                libc::_exit(if rc == 0 { 0 } else { 1 })
            }
        }
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            failed += 1;
        }
    }
    println!("pid={} created={}", std::process::id(), count - failed);
}

fn tcp_listen() {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap_or_else(|_| fail("bind"));
    println!("listening port={}", listener.local_addr().map(|a| a.port()).unwrap_or(0));
    wait_for_stdin_close();
}

fn wait_for_stdin_close() {
    let mut sink = String::new();
    let _ = std::io::stdin().read_line(&mut sink);
}

fn hold_fd(path: &str) {
    let file = std::fs::File::open(path).unwrap_or_else(|_| fail("open namespace"));
    println!("pid={} fd={}", std::process::id(), file.as_raw_fd());
    wait_for_stdin_close();
}

fn hold_many(count: usize) {
    let limit = libc::rlimit { rlim_cur: count as u64 + 256, rlim_max: count as u64 + 256 };
    // SAFETY: valid rlimit value.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        fail("raise RLIMIT_NOFILE");
    }
    let home = std::fs::File::open("/proc/thread-self/ns/net").unwrap_or_else(|_| fail("open own netns"));
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        // SAFETY: plain syscall; this thread moves into a new namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            fail("unshare");
        }
        held.push(std::fs::File::open("/proc/thread-self/ns/net").unwrap_or_else(|_| fail("open netns")));
    }
    // SAFETY: back to where we started, so only the fds hold the namespaces.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        fail("setns home");
    }
    println!("pid={} held={}", std::process::id(), held.len());
    wait_for_stdin_close();
}

/// See `reuse-inode` in the module docs.
fn reuse_inode(inode: u64, tries: usize) {
    let home = std::fs::File::open("/proc/thread-self/ns/net").unwrap_or_else(|_| fail("open own netns"));
    let (mut passed, mut found) = (Vec::new(), None);
    for _ in 0..tries {
        // SAFETY: plain syscall; this thread moves into a new namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            fail("unshare");
        }
        let file = std::fs::File::open("/proc/thread-self/ns/net").unwrap_or_else(|_| fail("open netns"));
        if std::os::unix::fs::MetadataExt::ino(&file.metadata().unwrap_or_else(|_| fail("stat netns"))) == inode {
            found = Some((NetnsIdentity::of_self(), file));
            break;
        }
        // Held until the end, so the next one takes another inode.
        passed.push(file);
    }
    // SAFETY: back to where we started, so only the fd holds the namespace.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        fail("setns home");
    }
    let made = passed.len() + found.is_some() as usize;
    drop(passed);
    let (inode, id) = found.as_ref().map_or((0, 0), |(ns, _)| (ns.inode, ns.id));
    println!("pid={} inode={inode} id={id} made={made}", std::process::id());
    wait_for_stdin_close();
    drop(found);
}

/// Sends RTM_NEWLINK { ifinfomsg, IFLA_IFNAME = DEV, IFLA_NET_NS_FD = fd }
/// with NLM_F_ACK by sendto(2) on `sock`; returns the acknowledgement's errno.
fn send_move(sock: libc::c_int, device: &str, ns_fd: u32) -> i32 {
    const RTM_NEWLINK: u16 = 16;
    const NLMSG_ERROR: u16 = 2;
    const IFLA_IFNAME: u16 = 3;
    const IFLA_NET_NS_FD: u16 = 28;
    fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize((out.len() + 3) & !3, 0);
    }
    let mut body = vec![0u8; 16]; // ifinfomsg: family AF_UNSPEC, ifindex 0 (by name)
    attr(&mut body, IFLA_IFNAME, format!("{device}\0").as_bytes());
    attr(&mut body, IFLA_NET_NS_FD, &ns_fd.to_ne_bytes());
    let mut message = Vec::new();
    message.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    message.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    message.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&body);
    // SAFETY: sendto/recv on the caller's socket with our buffers.
    unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as u16;
        let sent = libc::sendto(
            sock,
            message.as_ptr().cast(),
            message.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        );
        if sent < 0 {
            fail("sendto");
        }
        let mut answer = [0u8; 4096];
        let n = libc::recv(sock, answer.as_mut_ptr().cast(), answer.len(), 0);
        if n < 20 || u16::from_ne_bytes([answer[4], answer[5]]) != NLMSG_ERROR {
            fail("no acknowledgement");
        }
        -i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]])
    }
}

fn rtnetlink_socket() -> libc::c_int {
    // SAFETY: plain socket call.
    let sock = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if sock < 0 {
        fail("socket");
    }
    sock
}

/// See `move-into-new` in the module docs.
fn move_into_new(device: &str, from: &str) {
    let from = std::fs::File::open(from).unwrap_or_else(|_| fail("open source namespace"));
    let from_fd = from.as_raw_fd();
    let device = device.to_owned();
    let (line, held) = std::thread::spawn(move || {
        // SAFETY: setns/unshare of this thread only; fds stay open meanwhile.
        unsafe {
            if libc::setns(from_fd, libc::CLONE_NEWNET) != 0 {
                fail("setns");
            }
            let sock = rtnetlink_socket(); // lives in FROM: acts on FROM's devices
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                fail("unshare");
            }
            let new = std::fs::File::open("/proc/thread-self/ns/net").unwrap_or_else(|_| fail("open new namespace"));
            // Its identity from inside (asking from outside would step in, before 6.18).
            let ns = NetnsIdentity::of_self();
            // Back out at once: only the fd holds the new namespace, so no
            // task is in it for anyone to find it by.
            if libc::setns(from_fd, libc::CLONE_NEWNET) != 0 {
                fail("setns back");
            }
            let errno = send_move(sock, &device, new.as_raw_fd() as u32);
            libc::close(sock);
            let line = format!(
                "pid={} tid={} errno={errno} inode={} id={}",
                std::process::id(),
                libc::gettid(),
                ns.inode,
                ns.id
            );
            (line, new)
        }
    })
    .join()
    .expect("thread");
    println!("{line}");
    // The thread is gone: this fd alone keeps the new namespace alive.
    wait_for_stdin_close();
    drop((held, from));
}

/// See `move-link` in the module docs.
fn move_link(device: &str, path: &str, from: Option<&str>) {
    let ns = std::fs::File::open(path).unwrap_or_else(|_| fail("open namespace"));
    let from = from.map(|f| std::fs::File::open(f).unwrap_or_else(|_| fail("open source namespace")));
    let from_fd = from.as_ref().map(|f| f.as_raw_fd());
    let device = device.to_owned();
    let ns_fd = ns.as_raw_fd() as u32;
    let line = std::thread::spawn(move || {
        if let Some(fd) = from_fd {
            // SAFETY: fd stays open (owned by `from`) until the thread is joined.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                fail("setns");
            }
        }
        let sock = rtnetlink_socket();
        let errno = send_move(sock, &device, ns_fd);
        // SAFETY: closing our own socket.
        unsafe { libc::close(sock) };
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        format!("pid={} tid={tid} errno={errno}", std::process::id())
    })
    .join()
    .expect("thread");
    drop((ns, from));
    println!("{line}");
}

#[derive(clap::Parser)]
#[command(name = "netns-helper", about = "Makes namespaces with raw system calls, as runtimes and Go programs do")]
enum Helper {
    /// clone(CLONE_NEWNET) a child, print its namespace.
    Clone,
    /// The same with clone3.
    Clone3,
    /// One thread of this process enters PATH alone.
    SetnsThread { path: String },
    /// Hold a listening TCP socket until stdin closes.
    TcpListen,
    /// Keep PATH (an nsfs file) open until stdin closes.
    HoldFd { path: String },
    /// Make N namespaces, each kept only by an open fd, until stdin closes.
    HoldMany { count: usize },
    /// Make namespaces (at most TRIES) until one gets inode INODE (the
    /// kernel hands out the lowest free one); keep only that one, by an fd,
    /// until stdin closes; prints its inode and id (0 when none got it).
    ReuseInode { inode: u64, tries: usize },
    /// N times: fork a child that unshares a netns and exits.
    Churn { count: u32 },
    /// Move DEVICE into the namespace at PATH with one rtnetlink RTM_NEWLINK
    /// sent by sendto(2) from a second thread, as Go netlink libraries do
    /// (that thread first enters the namespace at FROM, as CNI plugins do);
    /// prints the errno.
    MoveLink { device: String, path: String, from: Option<String> },
    /// From a thread in the namespace at FROM: unshare a new namespace, step
    /// back into FROM and at once move DEVICE into the new one, held only by
    /// an fd, before anyone can have given it an nsid; keeps it until stdin closes.
    MoveIntoNew { device: String, from: String },
    /// Open /proc/sys/FILE inside the namespace at PATH, step back into its
    /// own namespace, then write VALUE to it; prints the errno.
    WriteFromOutside { path: String, file: String, value: String },
}

fn main() -> ExitCode {
    match <Helper as clap::Parser>::parse() {
        Helper::Clone => clone_child(false),
        Helper::Clone3 => clone_child(true),
        Helper::SetnsThread { path } => setns_thread(&path),
        Helper::TcpListen => tcp_listen(),
        Helper::HoldFd { path } => hold_fd(&path),
        Helper::HoldMany { count } => hold_many(count),
        Helper::ReuseInode { inode, tries } => reuse_inode(inode, tries),
        Helper::Churn { count } => churn(count),
        Helper::MoveLink { device, path, from } => move_link(&device, &path, from.as_deref()),
        Helper::MoveIntoNew { device, from } => move_into_new(&device, &from),
        Helper::WriteFromOutside { path, file, value } => write_from_outside(&path, &file, &value),
    }
    ExitCode::SUCCESS
}
