//! nstrail: an eBPF observer of Linux network namespaces.
//!
//! Pipeline stages, one module each: [`loader`] (load and attach the
//! [`sensors`]), [`reader`] (ring buffer and counters), [`decode`] (bytes to
//! kernel events), [`correlate`] (sequence and time), [`export`] (outputs).
//! [`agent`] wires them together; The `nstrail` binary (src/main.rs, src/cli.rs) is the command line.

pub mod agent;
pub mod api;
pub mod audit;
pub mod btf;
pub mod config;
pub mod correlate;
pub mod decode;
pub mod device_moves;
mod error;
pub mod event;
pub mod export;
pub mod filter;
pub mod inventory;
pub mod kernel_layout;
pub mod loader;
pub mod metrics;
pub mod netns_state;
pub mod nsid;
pub mod nsfs;
pub mod policy;
pub mod preflight;
pub mod reader;
pub mod rtnetlink;
pub mod sensors;
pub mod stream;
pub mod sysctl_text;

pub use error::Error;
