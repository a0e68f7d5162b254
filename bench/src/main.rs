//! One benchmark workload per run: `nstrail-bench CASE ITERATIONS` runs the
//! loop and prints `ns_per_op=N cpu_ns_per_op=N ops=N` (wall and CPU time). `cargo xtask bench` runs each case
//! with the agent off and on, alternating, and compares.
//!
//! Traffic stays on loopback; sysctl writes go to a namespace of the
//! benchmark's own, never the host's.

use std::{ffi::CString, net::UdpSocket, process::ExitCode, time::Instant};

fn fail(what: &str) -> ! {
    eprintln!("nstrail-bench: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(2)
}

fn fork_and_wait(child: impl FnOnce()) {
    // SAFETY: single-threaded process; the child runs async-signal-safe code and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        fail("fork");
    }
    if pid == 0 {
        child();
        // SAFETY: leaving the child without running parent state's destructors.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

fn fork_exit(n: u64) {
    for _ in 0..n {
        fork_and_wait(|| {});
    }
}

fn fork_exec(n: u64) {
    let path = CString::new("/bin/true").expect("path");
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    for _ in 0..n {
        fork_and_wait(|| {
            // SAFETY: valid NUL-terminated argv/envp arrays.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        });
    }
}

fn netns_churn(n: u64) {
    for _ in 0..n {
        fork_and_wait(|| {
            // SAFETY: plain syscall in the child.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                unsafe { libc::_exit(1) };
            }
        });
    }
}

fn into_private_netns() {
    // SAFETY: single-threaded; the process leaves the host netns for good.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        fail("unshare(CLONE_NEWNET) for a private namespace");
    }
}

/// Open, read and close a sysctl, as sysctl(8) does.
fn sysctl_read(n: u64) {
    let path = CString::new("/proc/sys/net/ipv4/tcp_keepalive_time").expect("path");
    let mut buf = [0u8; 64];
    for _ in 0..n {
        // SAFETY: plain syscalls on our own fd and buffer.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
            if fd < 0 {
                fail("open sysctl");
            }
            libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(fd);
        }
    }
}

/// Open, write and close a sysctl in a namespace of our own.
fn sysctl_write(n: u64) {
    let path = CString::new("/proc/sys/net/ipv4/tcp_keepalive_time").expect("path");
    let values: [&[u8]; 2] = [b"600\n", b"700\n"];
    for i in 0..n {
        let value = values[(i % 2) as usize];
        // SAFETY: plain syscalls on our own fd and buffer.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                fail("open sysctl");
            }
            if libc::write(fd, value.as_ptr().cast(), value.len()) < 0 {
                fail("write sysctl");
            }
            libc::close(fd);
        }
    }
}

/// A veth pair made and one end moved into a namespace of our own, with
/// iproute2, as CNI plugins do; then deleted.
fn veth_move(n: u64) {
    // A child that sits in a new namespace: the destination of the moves.
    let mut pipe = [0; 2];
    // SAFETY: out array of two fds.
    if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
        fail("pipe");
    }
    // SAFETY: the child only unshares and blocks on the pipe, then exits.
    let holder = unsafe { libc::fork() };
    if holder == 0 {
        unsafe {
            libc::close(pipe[1]);
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                libc::_exit(1);
            }
            let mut byte = 0u8;
            libc::read(pipe[0], (&mut byte as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the read end.
    unsafe { libc::close(pipe[0]) };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let ip = |args: &[&str]| {
        let ok = std::process::Command::new("ip").args(args).status().is_ok_and(|s| s.success());
        if !ok {
            fail(&format!("ip {}", args.join(" ")));
        }
    };
    let target = holder.to_string();
    let (a, b) = (format!("nsb{}a", std::process::id() % 100000), format!("nsb{}b", std::process::id() % 100000));
    for _ in 0..n {
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &b, "netns", &target]);
        ip(&["link", "del", &a]);
    }
    // SAFETY: releasing and reaping the holder.
    unsafe {
        libc::close(pipe[1]);
        let mut status = 0;
        libc::waitpid(holder, &mut status, 0);
    }
}

/// getppid(2), one of the cheapest system calls: no probe targets it, so
/// any difference with the agent on is what every syscall pays.
fn getppid(n: u64) {
    for _ in 0..n {
        // SAFETY: no arguments, no side effects.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
}

/// A 1-byte write(2) to /dev/null.
fn write_devnull(n: u64) {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null").unwrap_or_else(|_| fail("open /dev/null"));
    write_loop(std::os::fd::AsRawFd::as_raw_fd(&null), n);
}

/// A 1-byte write(2) into a pipe, drained by a reader thread.
fn write_pipe(n: u64) {
    let (reader, writer) = std::io::pipe().unwrap_or_else(|_| fail("pipe"));
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while std::io::Read::read(&mut &reader, &mut buf).is_ok_and(|k| k > 0) {}
    });
    write_loop(std::os::fd::AsRawFd::as_raw_fd(&writer), n);
    drop(writer);
    let _ = drain.join();
}

fn write_loop(fd: libc::c_int, n: u64) {
    let byte = [0u8; 1];
    for _ in 0..n {
        // SAFETY: writing one byte from our buffer to our own fd.
        if unsafe { libc::write(fd, byte.as_ptr().cast(), 1) } != 1 {
            fail("write");
        }
    }
}

/// UDP datagrams to a socket on loopback: traffic no probe should tax.
fn udp_sendmsg(n: u64) {
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|_| fail("bind receiver"));
    let target = receiver.local_addr().expect("addr");
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|_| fail("bind sender"));
    sender.connect(target).unwrap_or_else(|_| fail("connect"));
    let payload = [0u8; 64];
    for _ in 0..n {
        // A full receive buffer drops datagrams at the receiver; send still succeeds.
        let _ = sender.send(&payload);
    }
}

/// User + system CPU time of this process and its reaped children, in ns.
/// Probe work runs in the context of the task that triggers it, so it is
/// counted here; time lost to other tenants of the machine is not.
fn cpu_ns() -> u64 {
    let mut total = 0u64;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: zeroed rusage is a valid out value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid out pointer.
        unsafe { libc::getrusage(who, &mut usage) };
        for tv in [usage.ru_utime, usage.ru_stime] {
            total += tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
        }
    }
    total
}

/// A bare rtnetlink socket joined to RTNLGRP_LINK, read until stdin
/// closes: what any network daemon (or `ip monitor link`) costs the kernel,
/// to compare the agent's device listener with.
fn rtnl_link_listener() -> ExitCode {
    const SOL_NETLINK: libc::c_int = 270;
    const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
    const RTNLGRP_LINK: u32 = 1;
    // SAFETY: plain socket calls on our own fd.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        fail("socket");
    }
    let group = RTNLGRP_LINK;
    // SAFETY: a u32 option by pointer and size.
    if unsafe { libc::setsockopt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, (&group as *const u32).cast(), 4) } != 0 {
        fail("join RTNLGRP_LINK");
    }
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        // SAFETY: receiving into our buffer until the process exits.
        while unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) } >= 0 {}
    });
    println!("listening");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    ExitCode::SUCCESS
}

/// Makes `n` namespaces, each kept alive only by an open fd, prints
/// `held=N`, and keeps them until stdin closes.
fn hold_namespaces(n: u64) -> ExitCode {
    use std::os::fd::AsRawFd;
    let limit = libc::rlimit { rlim_cur: n + 256, rlim_max: n + 256 };
    // SAFETY: valid rlimit value.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        fail("raise RLIMIT_NOFILE");
    }
    let home = std::fs::File::open("/proc/thread-self/ns/net").unwrap_or_else(|_| fail("open own netns"));
    let mut held = Vec::new();
    for _ in 0..n {
        // SAFETY: plain syscall; this thread moves into a new namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            fail("unshare");
        }
        held.push(std::fs::File::open("/proc/thread-self/ns/net").unwrap_or_else(|_| fail("open netns")));
    }
    // SAFETY: back home, so only the fds hold the namespaces.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        fail("setns home");
    }
    println!("held={}", held.len());
    let mut sink = String::new();
    let _ = std::io::stdin().read_line(&mut sink);
    ExitCode::SUCCESS
}

/// `n` sysctl writes in a private namespace at `rate` per second, evenly paced.
fn paced_sysctl_writes(n: u64, rate: u64) -> ExitCode {
    into_private_netns();
    let start = Instant::now();
    let interval = std::time::Duration::from_nanos(1_000_000_000 / rate.max(1));
    for i in 0..n {
        let due = start + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sysctl_write(1);
    }
    println!("ops={n} elapsed_ns={} cpu_ns={}", start.elapsed().as_nanos(), cpu_ns());
    ExitCode::SUCCESS
}

#[derive(clap::Parser)]
#[command(name = "nstrail-bench", about = "One benchmark workload per run (cargo xtask bench runs them)")]
enum Workload {
    /// fork+exit
    ForkExit { iterations: u64 },
    /// fork+exec of /bin/true
    ForkExec { iterations: u64 },
    /// unshare(CLONE_NEWNET) in a child that exits
    NetnsChurn { iterations: u64 },
    /// open+read+close of a /proc/sys file
    SysctlRead { iterations: u64 },
    /// open+write+close of a sysctl in a private namespace
    SysctlWrite { iterations: u64 },
    /// UDP send on loopback
    UdpSendmsg { iterations: u64 },
    /// ip link add veth, move one end into a namespace, delete
    VethMove { iterations: u64 },
    /// getppid(2)
    Getppid { iterations: u64 },
    /// 1-byte write(2) to /dev/null
    WriteDevnull { iterations: u64 },
    /// 1-byte write(2) into a pipe
    WritePipe { iterations: u64 },
    /// Make N namespaces kept only by fds; hold them until stdin closes
    HoldNamespaces { count: u64 },
    /// A bare RTNLGRP_LINK listener, until stdin closes
    RtnlLinkListener,
    /// N sysctl writes in a private namespace at RATE per second
    PacedSysctlWrites { count: u64, rate: u64 },
}

fn main() -> ExitCode {
    let (run, n): (fn(u64), u64) = match <Workload as clap::Parser>::parse() {
        Workload::HoldNamespaces { count } => return hold_namespaces(count),
        Workload::RtnlLinkListener => return rtnl_link_listener(),
        Workload::PacedSysctlWrites { count, rate } => return paced_sysctl_writes(count, rate),
        Workload::ForkExit { iterations } => (fork_exit, iterations),
        Workload::ForkExec { iterations } => (fork_exec, iterations),
        Workload::NetnsChurn { iterations } => (netns_churn, iterations),
        Workload::SysctlRead { iterations } => (sysctl_read, iterations),
        Workload::SysctlWrite { iterations } => {
            into_private_netns();
            (sysctl_write, iterations)
        }
        Workload::UdpSendmsg { iterations } => (udp_sendmsg, iterations),
        Workload::VethMove { iterations } => (veth_move, iterations),
        Workload::Getppid { iterations } => (getppid, iterations),
        Workload::WriteDevnull { iterations } => (write_devnull, iterations),
        Workload::WritePipe { iterations } => (write_pipe, iterations),
    };
    let cpu_before = cpu_ns();
    let start = Instant::now();
    run(n);
    let elapsed = start.elapsed().as_nanos() as u64;
    let cpu = cpu_ns() - cpu_before;
    println!("ns_per_op={} cpu_ns_per_op={} ops={n}", elapsed / n.max(1), cpu / n.max(1));
    ExitCode::SUCCESS
}
