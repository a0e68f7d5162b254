//! A namespace's timeline: every record naming its id (as `netns`,
//! `parent_netns`, `from_netns`, `to_netns`, `device.netns` or
//! `peer.netns`), from the audit log (rotated files included, oldest
//! first) and the agent's memory (the hub's last 10,000 records). The
//! log's last `audit_segment` written by the running agent starts the
//! current run: a record of that run in both is taken once, by seq; what
//! the log has not been given yet comes from memory. The timeline is in
//! the order the kernel saw things (`ts`), not the order the agent numbered
//! them: sensors hand over at their own pace (a veth's link notification
//! can be numbered after the `ip` that stepped in next), so `seq` only
//! breaks ties.

use std::{collections::HashSet, io::BufRead, path::PathBuf, sync::Arc};

use serde_json::Value;

use crate::{audit, event::filter::namespaces};

/// Longest timeline returned (the most recent records).
pub const MAX_RECORDS: usize = 10_000;

/// Where records come from.
#[derive(Debug, Clone, Default)]
pub struct Records {
    /// The audit log (its rotated files are found next to it).
    pub log: Option<PathBuf>,
    /// The running agent's pid: its `audit_segment` starts the current run.
    pub agent_pid: Option<u32>,
    /// The agent's recent records of the current run, (seq, JSON).
    pub memory: Option<Vec<(u64, Arc<str>)>>,
}

/// A namespace as one record named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub inode: u32,
    pub id: u64,
    pub name: Option<String>,
    /// The `ts` of its `netns_destroy`, when this record is one.
    pub destroyed: Option<String>,
}

/// Every record of the log (oldest first) for which `keep` holds, with
/// whether it belongs to the current run; problems reading go to `notes`.
fn scan_log(records: &Records, keep: &dyn Fn(&str) -> bool, notes: &mut Vec<String>) -> Vec<(Value, bool)> {
    let Some(path) = &records.log else { return Vec::new() };
    let files = audit::log_files(path);
    if files.is_empty() {
        let rest = if records.memory.is_some() {
            "the history is what the agent holds in memory (its last 10,000 records)"
        } else {
            "no history (pass --audit-log PATH)"
        };
        notes.push(format!("no audit log at {}: {rest}", path.display()));
        return Vec::new();
    }
    let mut out = Vec::new();
    // Index in `out` where the current run starts, once its segment is found.
    let mut current_from = None;
    for file in files {
        let reader = match std::fs::File::open(&file) {
            Ok(f) => std::io::BufReader::new(f),
            Err(e) => {
                notes.push(format!("cannot read {}: {e}", file.display()));
                continue;
            }
        };
        for line in reader.split(b'\n') {
            let Ok(line) = line else {
                notes.push(format!("cannot read all of {}", file.display()));
                break;
            };
            let line = String::from_utf8_lossy(&line);
            let segment = line.contains("\"type\":\"audit_segment\"");
            if !segment && !keep(&line) {
                continue;
            }
            let Some((json, _, _)) = audit::split_line(&line) else { continue };
            let Ok(record) = serde_json::from_str::<Value>(&json) else { continue };
            if segment {
                let ours = records.agent_pid.is_some_and(|pid| record["pid"].as_u64() == Some(pid as u64));
                current_from = ours.then_some(out.len());
                continue;
            }
            out.push(record);
        }
    }
    let from = current_from.unwrap_or(out.len());
    out.into_iter().enumerate().map(|(i, record)| (record, i >= from)).collect()
}

/// Whether a log line may name this id (a cheap test before parsing).
fn may_name_id(line: &str, id: u64) -> bool {
    let key = format!("\"id\":{id}");
    line.match_indices(&key).any(|(at, _)| matches!(line.as_bytes().get(at + key.len()), Some(b',' | b'}')))
}

/// The records naming namespace `id`, oldest first by `ts` (at most [`MAX_RECORDS`]).
pub fn of(id: u64, records: &Records, notes: &mut Vec<String>) -> Vec<Value> {
    let logged = scan_log(records, &|line| may_name_id(line, id), notes);
    let names_it = |record: &Value| crate::event::filter::names_netns_id(record, id);
    let current: HashSet<u64> = logged.iter().filter(|(_, c)| *c).filter_map(|(r, _)| r["seq"].as_u64()).collect();
    // Without the current run's segment, (seq, ts) tells a logged record apart.
    let all: HashSet<(u64, String)> =
        logged.iter().filter_map(|(r, _)| Some((r["seq"].as_u64()?, r["ts"].as_str()?.to_owned()))).collect();
    let mut out: Vec<Value> = logged.into_iter().map(|(r, _)| r).filter(names_it).collect();
    let mut fresh: Vec<(u64, Value)> = Vec::new();
    for (seq, line) in records.memory.iter().flatten() {
        if current.contains(seq) || !may_name_id(line, id) {
            continue;
        }
        let Ok(record) = serde_json::from_str::<Value>(line) else { continue };
        let ts = record["ts"].as_str().unwrap_or_default().to_owned();
        if names_it(&record) && !all.contains(&(*seq, ts)) {
            fresh.push((*seq, record));
        }
    }
    fresh.sort_by_key(|(seq, _)| *seq);
    out.extend(fresh.into_iter().map(|(_, r)| r));
    // RFC 3339 in UTC with nine fractional digits: text order is time order.
    // Stable, so records with one ts keep the log's and the run's order.
    out.sort_by(|a, b| a["ts"].as_str().unwrap_or_default().cmp(b["ts"].as_str().unwrap_or_default()));
    if out.len() > MAX_RECORDS {
        notes.push(format!("the timeline holds its last {MAX_RECORDS} records of {}", out.len()));
        out.drain(..out.len() - MAX_RECORDS);
    }
    out
}

/// Every namespace whose inode, id or name is `arg`, as the log and the
/// agent's memory name them (for namespaces the inventory no longer holds).
pub fn sightings(arg: &str, records: &Records, notes: &mut Vec<String>) -> Vec<Sighting> {
    let number: Option<u64> = arg.parse().ok();
    let name_key = serde_json::to_string(arg).unwrap_or_default();
    let may = |line: &str| line.contains(&name_key) || number.is_some_and(|n| line.contains(&n.to_string()));
    let mut found: Vec<Sighting> = Vec::new();
    let mut look = |record: &Value| {
        let destroy = record["type"] == "netns_destroy";
        for n in namespaces(record) {
            let (Some(inode), Some(id)) = (n["inode"].as_u64(), n["id"].as_u64()) else { continue };
            let name = n["name"].as_str().map(str::to_owned);
            let hit = number.is_some_and(|x| x == inode || x == id) || name.as_deref() == Some(arg);
            if !hit {
                continue;
            }
            let destroyed = (destroy && record["netns"]["id"].as_u64() == Some(id))
                .then(|| record["ts"].as_str().unwrap_or_default().to_owned());
            match found.iter_mut().find(|s| s.id == id) {
                Some(s) => {
                    s.name = name.or(s.name.take());
                    s.destroyed = destroyed.or(s.destroyed.take());
                }
                None => found.push(Sighting { inode: inode as u32, id, name, destroyed }),
            }
        }
    };
    for (record, _) in scan_log(records, &|line| may(line), notes) {
        look(&record);
    }
    for (_, line) in records.memory.iter().flatten() {
        if may(line) {
            if let Ok(record) = serde_json::from_str::<Value>(line) {
                look(&record);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn write_log(path: &Path, lines: &[String]) {
        let mut prev = audit::GENESIS.to_owned();
        let mut text = String::new();
        for json in lines {
            let (line, hash) = audit::chained_line(&prev, json);
            text.push_str(&line);
            prev = hash;
        }
        std::fs::write(path, text).unwrap();
    }

    /// A record `at` seconds into the day.
    fn event_at(at: u64, seq: u64, kind: &str, id: u64) -> String {
        format!(
            r#"{{"ts":"2026-11-28T00:00:{at:02}.000000000Z","seq":{seq},"type":"{kind}","netns":{{"inode":4026532200,"id":{id}}}}}"#
        )
    }

    /// A record of the current run, numbered in time order (`at` 10 + seq).
    fn event(seq: u64, kind: &str, id: u64) -> String {
        event_at(10 + seq, seq, kind, id)
    }

    #[test]
    fn merges_the_log_and_memory_once_by_seq() {
        let dir = std::env::temp_dir().join(format!("nstrail-timeline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("events.jsonl");
        let segment = |pid: u32| format!(r#"{{"ts":"t","type":"audit_segment","reason":"agent_start","pid":{pid}}}"#);
        // An earlier run (seq 2 there is another record), then ours.
        let older = [segment(1), event_at(2, 2, "netns_create", 7), event_at(3, 3, "netns_enter", 70)];
        write_log(&audit::rotated(&log, 1), &older);
        write_log(&log, &[segment(99), event(1, "netns_enter", 7), event(2, "sysctl_write", 7)]);
        let memory: Vec<(u64, Arc<str>)> = [event(1, "netns_enter", 7), event(2, "sysctl_write", 7)]
            .into_iter()
            .chain([event(3, "netns_destroy", 7), event(4, "netns_create", 8)])
            .enumerate()
            .map(|(i, l)| (i as u64 + 1, Arc::from(l)))
            .collect();
        let records = Records { log: Some(log.clone()), agent_pid: Some(99), memory: Some(memory) };
        let mut notes = Vec::new();
        let timeline = of(7, &records, &mut notes);
        let got: Vec<_> = timeline.iter().map(|r| (r["seq"].as_u64().unwrap(), r["type"].as_str().unwrap())).collect();
        assert_eq!(got, [(2, "netns_create"), (1, "netns_enter"), (2, "sysctl_write"), (3, "netns_destroy")]);
        assert!(notes.is_empty(), "{notes:?}");
        let seen = sightings("4026532200", &records, &mut notes);
        assert_eq!(
            seen.iter().map(|s| (s.id, s.destroyed.is_some())).collect::<Vec<_>>(),
            [(7, true), (70, false), (8, false)]
        );

        // A missing log: memory alone, and a note.
        let records = Records { log: Some(dir.join("none.jsonl")), ..records };
        assert_eq!(of(7, &records, &mut notes).len(), 3);
        assert!(notes[0].starts_with("no audit log at"), "{notes:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_kernel_s_order_not_the_agent_s_numbering() {
        // seq 3 (a veth's link notification, handed over late) happened before seq 2.
        let memory: Vec<(u64, Arc<str>)> =
            [event_at(1, 1, "netns_create", 7), event_at(5, 2, "netns_enter", 7), event_at(3, 3, "veth_create", 7)]
                .into_iter()
                .enumerate()
                .map(|(i, l)| (i as u64 + 1, Arc::from(l)))
                .collect();
        let records = Records { log: None, agent_pid: Some(99), memory: Some(memory) };
        let timeline = of(7, &records, &mut Vec::new());
        let got: Vec<_> = timeline.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(got, [1, 3, 2]);
    }

    #[test]
    fn ids_are_matched_whole() {
        assert!(may_name_id(r#"{"netns":{"inode":1,"id":7}}"#, 7));
        assert!(may_name_id(r#"{"netns":{"inode":1,"id":7,"name":"x"}}"#, 7));
        assert!(!may_name_id(r#"{"netns":{"inode":1,"id":70}}"#, 7));
    }
}
