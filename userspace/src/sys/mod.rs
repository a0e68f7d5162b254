//! All OS access beyond plain file reads, one module per kernel concept:
//! BTF, kallsyms, clocks, the container runtime (CRI), the heap, nsfs files,
//! /proc, rtnetlink, sysctl files.

pub mod btf;
pub mod clock;
pub mod cri;
pub mod heap;
pub mod kallsyms;
pub mod mountinfo;
pub mod nsfs;
pub mod proc;
pub mod rtnetlink;
pub mod sysctl;

use std::os::fd::AsRawFd;

/// Registers an fd-owning value (a ring buffer, a file, a socket) with the
/// tokio reactor, for `interest`.
pub fn async_fd<T: AsRawFd>(inner: T, interest: tokio::io::Interest) -> std::io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: the values passed here own their fd and keep it open,
    // unchanged, for as long as they live; the AsyncFd owns them.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(inner, interest) }
        .map_err(|e| std::io::Error::other(e.to_string()))
}
