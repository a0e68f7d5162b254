//! Shared pieces of the integration tests: an agent running the real probes,
//! a way to wait for exact events, and guards that remove every namespace a
//! test makes, even when it fails.

pub mod agent;
pub mod netns;
pub mod process;

pub use agent::{EventLog, TestAgent};
pub use netns::{ifindex, HostVeth, NamedNetns, NetnsIdentity};
pub use process::{field, run, run_ok, Background, Ran};

/// Panics with a clear message when not root: these tests load eBPF
/// programs and make namespaces.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "integration tests must run as root: use `cargo xtask test` as root");
}
