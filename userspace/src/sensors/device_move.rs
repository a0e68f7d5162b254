//! Network devices crossing namespaces, and veth pairs created across them.
//!
//! No tracepoint reaches a moved device with its destination, and kprobes
//! or fentry may be unavailable, so the kernel itself is the witness: the
//! agent holds one rtnetlink socket in its own namespace with
//! NETLINK_LISTEN_ALL_NSID, joined to RTNLGRP_LINK and RTNLGRP_NSID, which
//! receives link notifications of every namespace that has an nsid there
//! (`crate::nsid` gives every namespace one). A socket filter attached to
//! that one socket runs synchronously in the task that caused each
//! notification and records it; nothing else on the system pays anything.
//! `crate::device_moves` pairs the messages into events.

use super::{Hook, Probe, Sensor};

pub const SENSOR: Sensor =
    Sensor { name: "device_move", probes: &[Probe { program: "device_link_notify", hook: Hook::RtnetlinkListener }] };
