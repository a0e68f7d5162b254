//! What the agent serves: the local API on a Unix socket (`nstrail ls`,
//! `nstrail tail`) and Prometheus metrics over HTTP.

pub mod api;
pub mod metrics;
pub mod questions;
