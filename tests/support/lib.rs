//! Shared pieces of the integration tests: an agent running the real probes,
//! a way to wait for exact events, and guards that remove every namespace a
//! test makes, even when it fails.

pub mod agent;
pub mod agent_process;
pub mod audit;
pub mod netns;
pub mod process;
pub mod scratch;

pub use agent::{EventLog, TestAgent};
pub use agent_process::{names_netns, nstrail_binary, RunningAgent};
pub use netns::{ifindex, HostVeth, NamedNetns, NetnsIdentity};
pub use process::{field, run, run_ok, Background, Ran};
pub use scratch::Scratch;

/// Whether the tests run in a guest under software emulation (the VM
/// matrix, TCG): about ten times slower, so the long loops run shorter.
pub fn emulated() -> bool {
    std::env::var("NSTRAIL_VM_ACCEL").is_ok_and(|accel| accel == "tcg")
}

/// `full` iterations, or `emulated` under software emulation.
pub fn scaled(full: usize, emulated: usize) -> usize {
    if self::emulated() {
        emulated
    } else {
        full
    }
}

/// How long to wait for something: `wait`, five times that under
/// software emulation (agents start slower there: every fentry attach
/// waits for an RCU tasks grace period).
pub fn patience(wait: std::time::Duration) -> std::time::Duration {
    if emulated() {
        wait * 5
    } else {
        wait
    }
}

/// Panics with a clear message when not root: these tests load eBPF
/// programs and make namespaces.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "integration tests must run as root: use `cargo xtask test` as root");
}
