//! Answers about one namespace that no other tool gives: its whole story
//! (`nstrail show`) and its sysctls against the host's (`nstrail sysctl`).
//! The agent answers them over its API (`serve::questions`) on a worker
//! thread that steps into the namespace and back, so nothing shows in the
//! event stream; `--offline`, the CLI answers them itself from /proc and
//! the audit log.

pub mod inside;
pub mod resolve;
pub mod sysctls;
pub mod timeline;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use inside::{DeviceState, ListenCounts, RouteCounts, Want};
use resolve::Found;
use timeline::Records;

use crate::{
    event::{FdHolder, Holders},
    inventory::{devices::Device, scan::Scan, NetnsRecord},
};

/// What the answers are made from.
pub struct Sources<'a> {
    /// A fresh /proc scan: members, holders, paths to step in by.
    pub scan: &'a Scan,
    /// Live namespaces as the inventory knows them (from `scan`).
    pub live: Vec<NetnsRecord>,
    /// Recently destroyed ones (agent only).
    pub destroyed: Vec<NetnsRecord>,
    pub records: Records,
    /// The CLI answers itself (no agent): it says so where it stepped in.
    pub offline: bool,
}

/// A member process of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
}

/// `nstrail show`: one namespace's whole story.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Story {
    /// `live`, `destroyed`, or `gone` (named in the records, no destroy among them).
    pub state: String,
    /// Identity, names, containers, creation, enters, as `nstrail ls --json`.
    pub netns: NetnsRecord,
    pub members: Vec<Member>,
    pub holders: Holders,
    pub devices: Vec<DeviceState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<RouteCounts>,
    #[serde(default)]
    pub listening: ListenCounts,
    /// Sysctls that differ from the host's, or were written (as `nstrail sysctl`).
    pub sysctls: Vec<sysctls::Entry>,
    /// Every record naming it, oldest first: create, enters, devices, sysctl writes, destroy.
    pub timeline: Vec<Value>,
    pub notes: Vec<String>,
}

/// `nstrail sysctl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SysctlReport {
    pub netns: NetnsRecord,
    pub all: bool,
    pub sysctls: Vec<sysctls::Entry>,
    pub notes: Vec<String>,
}

const STEPPED_IN: &str =
    "offline: nstrail stepped into the namespace itself to read it (a running agent reports that as a netns_enter)";

fn resolve(arg: &str, sources: &Sources<'_>) -> Result<(Found, Vec<String>), String> {
    let mut notes = Vec::new();
    let mut sightings = || timeline::sightings(arg, &sources.records, &mut notes);
    let resolved = resolve::resolve(arg, &sources.live, &sources.destroyed, &mut sightings)?;
    notes.extend(resolved.notes);
    Ok((resolved.found, notes))
}

/// The record of a namespace only the history names.
fn recorded(sighting: &timeline::Sighting) -> NetnsRecord {
    NetnsRecord {
        inode: sighting.inode,
        id: Some(sighting.id),
        names: sighting.name.iter().cloned().collect(),
        destroyed: sighting.destroyed.clone(),
        ..Default::default()
    }
}

/// Reads inside a live namespace found in the scan.
/// Every way in the scan saw is tried (the process or mount its first
/// path went through may be gone by now), each checked to still be it.
fn look(sources: &Sources<'_>, record: &NetnsRecord, want: Want, notes: &mut Vec<String>) -> inside::Inside {
    let paths = sources
        .scan
        .namespaces
        .get(&record.inode)
        .filter(|o| o.id == record.id)
        .map(|o| o.ways_in())
        .unwrap_or_default();
    let (false, Some(id)) = (paths.is_empty(), record.id) else {
        notes.push(
            "no process, fd or bind mount leads into it (a socket holds it?): its contents are not readable".into(),
        );
        return inside::Inside::default();
    };
    let mut last_error = String::new();
    for path in &paths {
        match inside::look(path, id, want) {
            Ok(found) => {
                notes.extend(found.problems.iter().map(|p| format!("could not read {p}")));
                if sources.offline {
                    notes.push(STEPPED_IN.to_owned());
                }
                return found;
            }
            Err(e) => last_error = e,
        }
    }
    notes.push(format!("could not look inside: {last_error}"));
    inside::Inside::default()
}

fn sysctl_entries(
    values: &inside::Sysctls,
    record: &NetnsRecord,
    timeline: &[Value],
    all: bool,
    notes: &mut Vec<String>,
) -> Vec<sysctls::Entry> {
    let host = inside::host_sysctls();
    let defaults = inside::new_namespace_defaults().map_err(|e| notes.push(e)).ok();
    let created_seen = record.created.is_some() || timeline.iter().any(|r| r["type"] == "netns_create");
    sysctls::compare(values, &host, defaults.as_deref(), timeline, !created_seen, all)
}

/// `nstrail show NETNS`.
pub fn show(arg: &str, sources: &Sources<'_>) -> Result<Story, String> {
    let (found, mut notes) = resolve(arg, sources)?;
    let (state, mut record) = match &found {
        Found::Live(i) => ("live", sources.live[*i].clone()),
        Found::Destroyed(i) => ("destroyed", sources.destroyed[*i].clone()),
        Found::Recorded(s) => (if s.destroyed.is_some() { "destroyed" } else { "gone" }, recorded(s)),
    };
    let id = record.id.ok_or_else(|| format!("{arg}: the kernel does not tell this namespace's id"))?;
    let timeline = timeline::of(id, &sources.records, &mut notes);
    if record.sysctl_overrides.is_empty() {
        // Known only from the records: what they say was written.
        for r in timeline.iter().filter(|r| r["type"] == "sysctl_write" && r["result"] == "applied") {
            if let (Some(name), Some(new)) = (r["sysctl"].as_str(), r["new"].as_str()) {
                record.sysctl_overrides.insert(name.to_owned(), new.to_owned());
            }
        }
    }
    if record.destroyed.is_none() {
        record.destroyed =
            timeline.iter().rev().find(|r| r["type"] == "netns_destroy").and_then(|r| r["ts"].as_str()).map(Into::into);
    }
    let mut story = Story {
        state: state.to_owned(),
        netns: record,
        members: Vec::new(),
        holders: Holders::default(),
        devices: Vec::new(),
        routes: None,
        listening: ListenCounts::default(),
        sysctls: Vec::new(),
        timeline,
        notes: Vec::new(),
    };
    if let Found::Live(_) = found {
        if let Some(observed) = sources.scan.namespaces.get(&story.netns.inode).filter(|o| o.id == Some(id)) {
            let comm = crate::sys::proc::comm;
            story.members = observed.pids.iter().map(|&pid| Member { pid, comm: comm(pid) }).collect();
            story.holders = Holders {
                mounts: story.netns.mounts.clone(),
                fds: observed.fds.iter().map(|&(pid, fd)| FdHolder { pid, fd, comm: comm(pid) }).collect(),
            };
        }
        let inside = look(sources, &story.netns, Want { details: true, sysctls: true }, &mut notes);
        // Every namespace has lo: none means it could not be looked into,
        // and the inventory's list (or its reason for having none) stands.
        if !inside.devices.is_empty() {
            story.netns.devices = inside
                .devices
                .iter()
                .map(|d| Device { name: d.name.clone(), ifindex: d.ifindex, kind: d.kind.clone() })
                .collect();
            story.netns.devices_unlisted = None;
        }
        story.devices = inside.devices;
        story.routes = inside.routes;
        story.listening = inside.listening;
        if !inside.sysctls.is_empty() {
            story.sysctls = sysctl_entries(&inside.sysctls, &story.netns, &story.timeline, false, &mut notes);
        }
    }
    story.notes = notes;
    Ok(story)
}

/// `nstrail sysctl NETNS [--all]`.
pub fn sysctl(arg: &str, all: bool, sources: &Sources<'_>) -> Result<SysctlReport, String> {
    let (found, mut notes) = resolve(arg, sources)?;
    let record = match found {
        Found::Live(i) => sources.live[i].clone(),
        Found::Destroyed(i) => return Err(gone(&sources.destroyed[i])),
        Found::Recorded(s) => return Err(gone(&recorded(&s))),
    };
    let id = record.id.ok_or_else(|| format!("{arg}: the kernel does not tell this namespace's id"))?;
    let inside = look(sources, &record, Want { details: false, sysctls: true }, &mut notes);
    if inside.sysctls.is_empty() {
        return Err(format!("cannot read the sysctls of namespace id {id}: {}", notes.join("; ")));
    }
    let timeline = timeline::of(id, &sources.records, &mut notes);
    let entries = sysctl_entries(&inside.sysctls, &record, &timeline, all, &mut notes);
    Ok(SysctlReport { netns: record, all, sysctls: entries, notes })
}

fn gone(record: &NetnsRecord) -> String {
    let id = record.id.map_or("?".to_owned(), |i| i.to_string());
    let when = record.destroyed.as_deref().map(|t| format!(" (destroyed at {t})")).unwrap_or_default();
    format!(
        "namespace id {id} (inode {}) is gone{when}, its sysctls with it; `nstrail show {id}` tells what was written in it",
        record.inode
    )
}
