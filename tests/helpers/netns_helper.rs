//! Test helper: makes namespaces with raw system calls, as runtimes and Go
//! programs do, and prints what the tests need to assert (`key=value`).
//!
//!   netns-helper clone             clone(CLONE_NEWNET) a child, print its namespace
//!   netns-helper clone3            the same with clone3
//!   netns-helper setns-thread PATH one thread of this process enters PATH alone
//!   netns-helper churn N           N times: fork a child that unshares a netns and exits
//!   netns-helper tcp-listen        hold a listening TCP socket until stdin closes
//!   netns-helper hold-fd PATH      keep PATH (an nsfs file) open until stdin closes
//!   netns-helper hold-many N       make N namespaces, each kept only by an open fd, until stdin closes

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
    let mut pipe = [0; 2];
    // SAFETY: out array of two fds.
    if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
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
        child_waits_for(pipe);
    }
    let child = child as u32;
    let ns = NetnsIdentity::of_pid(child);
    println!("pid={} child={child} inode={} id={}", std::process::id(), ns.inode, ns.id);
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["clone"] => clone_child(false),
        ["clone3"] => clone_child(true),
        ["setns-thread", path] => setns_thread(path),
        ["tcp-listen"] => tcp_listen(),
        ["hold-fd", path] => hold_fd(path),
        ["hold-many", n] => hold_many(n.parse().unwrap_or_else(|_| fail("hold-many takes a count"))),
        ["churn", n] => churn(n.parse().unwrap_or_else(|_| fail("churn takes a count"))),
        _ => {
            eprintln!("usage: netns-helper clone | clone3 | setns-thread PATH | churn N | tcp-listen | hold-fd PATH | hold-many N");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
