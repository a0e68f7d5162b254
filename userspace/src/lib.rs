//! nstrail: an eBPF observer of Linux network namespaces.
//!
//! - [`sensors`]: one folder per hook family: its kernel programs, their
//!   records, the conversion to events, its tests.
//! - [`agent`]: loads what the sensors declare and runs the event loop
//!   that dispatches records to them; names no family.
//! - [`event`]: the event contract (docs/events.md), time and sequence.
//! - [`inventory`]: every live namespace, from /proc and the events.
//! - [`answers`]: one namespace's story and its sysctls against the host's.
//! - [`export`]: the outputs (JSON lines, text, API stream, audit log).
//! - [`audit`]: the audit log's hash chain and its verification.
//! - [`serve`]: the local API and /metrics; [`metrics`]: the registry.
//! - [`config`]: the configuration file.
//! - [`sys`]: every raw OS interface (BTF, kallsyms, nsfs, rtnetlink, /proc).
//!
//! The `nstrail` binary (src/main.rs, src/cli.rs, src/tail.rs) is the command line.

pub mod agent;
pub mod answers;
pub mod audit;
pub mod config;
mod error;
pub mod event;
pub mod export;
pub mod inventory;
pub mod metrics;
pub mod sensors;
pub mod serve;
pub mod sys;

pub use error::Error;
