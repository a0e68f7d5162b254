//! Which namespace a NETNS argument means: an inode, an id, a name (or
//! bind-mount path), a container (id, id prefix, `runtime:id`) or a pod
//! uid, or `host`. Live namespaces first, then recently destroyed ones,
//! then those only the audit log remembers. Inodes are reused by the
//! kernel: an inode means the live namespace that has it now, and the
//! answer says which older ones had it and how to ask for them by id.

use super::timeline::Sighting;
use crate::inventory::NetnsRecord;

/// The namespace meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Index into the live records.
    Live(usize),
    /// Index into the recently destroyed records.
    Destroyed(usize),
    /// Known only from records (log or memory).
    Recorded(Sighting),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub found: Found,
    pub notes: Vec<String>,
}

fn container_matches(record: &NetnsRecord, arg: &str) -> bool {
    record.containers.iter().any(|c| {
        let full = format!("{}:{}", c.runtime, c.id);
        c.id == arg
            || (arg.len() >= 4 && c.id.starts_with(arg))
            || (arg.contains(':') && full.starts_with(arg))
            || c.pod_uid.as_deref() == Some(arg)
    }) || record.pod.as_ref().is_some_and(|p| format!("{}/{}", p.namespace, p.name) == arg || p.uid == arg)
}

fn label(id: Option<u64>, inode: u32, name: Option<&str>) -> String {
    let id = id.map_or("?".to_owned(), |i| i.to_string());
    match name {
        Some(name) => format!("inode {inode} (id {id}, {name})"),
        None => format!("inode {inode} (id {id})"),
    }
}

fn describe(record: &NetnsRecord) -> String {
    label(record.id, record.inode, record.names.first().map(String::as_str))
}

/// Resolves `arg`; `sightings` is asked (it reads the log) only when the
/// inventory alone cannot tell.
pub fn resolve(
    arg: &str,
    live: &[NetnsRecord],
    destroyed: &[NetnsRecord],
    sightings: &mut dyn FnMut() -> Vec<Sighting>,
) -> Result<Resolved, String> {
    let number: Option<u64> = arg.parse().ok();
    let by_number = |r: &NetnsRecord| number.is_some_and(|n| n == r.inode as u64 || Some(n) == r.id);
    let by_name = |r: &NetnsRecord| {
        r.names.iter().any(|n| n == arg) || r.mounts.iter().any(|m| m == arg) || (arg == "host" && r.host)
    };
    let by_container = |r: &NetnsRecord| container_matches(r, arg);
    let tiers: [&dyn Fn(&NetnsRecord) -> bool; 3] = [&by_number, &by_name, &by_container];
    for matches in tiers {
        let hits: Vec<usize> = (0..live.len()).filter(|&i| matches(&live[i])).collect();
        let gone: Vec<usize> = (0..destroyed.len()).filter(|&i| matches(&destroyed[i])).collect();
        if hits.len() > 1 {
            let all: Vec<String> = hits.iter().map(|&i| describe(&live[i])).collect();
            return Err(format!("{arg} matches {} namespaces: {}; ask by id", hits.len(), all.join(", ")));
        }
        if let [one] = hits[..] {
            let mut notes = Vec::new();
            let record = &live[one];
            // The most recently destroyed first: the inode's previous owner is the likely question.
            let older: Vec<String> = gone
                .iter()
                .rev()
                .map(|&i| &destroyed[i])
                .filter(|d| d.id != record.id)
                .map(|d| d.id.map_or("?".to_owned(), |i| i.to_string()))
                .collect();
            if !older.is_empty() {
                notes.push(format!(
                    "{arg} also meant destroyed namespace{} id {}: ask by id (`nstrail show {}`) for {}",
                    if older.len() > 1 { "s" } else { "" },
                    older.join(", id "),
                    older[0],
                    if older.len() > 1 { "their stories" } else { "its story" }
                ));
            } else if number == Some(record.inode as u64) {
                let older: Vec<String> = sightings()
                    .into_iter()
                    .rev()
                    .filter(|s| s.inode == record.inode && Some(s.id) != record.id)
                    .map(|s| s.id.to_string())
                    .collect();
                if !older.is_empty() {
                    notes.push(format!(
                        "inode {arg} belonged to older namespaces too (id {}): ask by id (`nstrail show {}`) for their stories",
                        older.join(", id "),
                        older[0]
                    ));
                }
            }
            return Ok(Resolved { found: Found::Live(one), notes });
        }
        let mut ids: Vec<Option<u64>> = gone.iter().map(|&i| destroyed[i].id).collect();
        ids.dedup();
        match gone[..] {
            [] => {}
            [one] => return Ok(Resolved { found: Found::Destroyed(one), notes: Vec::new() }),
            _ if number.is_some_and(|n| ids.contains(&Some(n))) => {
                let one = *gone.iter().find(|&&i| destroyed[i].id == number).expect("listed");
                return Ok(Resolved { found: Found::Destroyed(one), notes: Vec::new() });
            }
            _ => {
                let all: Vec<String> = gone.iter().map(|&i| describe(&destroyed[i])).collect();
                return Err(format!(
                    "{arg} matches {} destroyed namespaces: {}; ask by id",
                    gone.len(),
                    all.join(", ")
                ));
            }
        }
    }
    // Only the records remember it.
    let seen = sightings();
    let by_id: Vec<&Sighting> = seen.iter().filter(|s| number == Some(s.id)).collect();
    let others: Vec<&Sighting> = seen.iter().filter(|s| number != Some(s.id)).collect();
    match (by_id.first(), others.as_slice()) {
        (Some(one), _) => Ok(Resolved { found: Found::Recorded((*one).clone()), notes: Vec::new() }),
        (None, [one]) => Ok(Resolved { found: Found::Recorded((*one).clone()), notes: Vec::new() }),
        (None, []) => Err(format!(
            "no namespace matches {arg}: it is not the inode, id, name, container or pod of a live namespace, nor of one destroyed recently or named in the audit log"
        )),
        (None, many) => {
            let all: Vec<String> = many.iter().map(|s| label(Some(s.id), s.inode, s.name.as_deref())).collect();
            Err(format!("{arg} matches {} namespaces in the audit log: {}; ask by id", many.len(), all.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Container;

    fn record(inode: u32, id: u64, name: &str) -> NetnsRecord {
        NetnsRecord {
            inode,
            id: Some(id),
            names: if name.is_empty() { vec![] } else { vec![name.to_owned()] },
            ..Default::default()
        }
    }

    fn none() -> Vec<Sighting> {
        Vec::new()
    }

    #[test]
    fn inodes_mean_the_live_namespace_and_name_the_older_ones() {
        let mut live = vec![record(4026532300, 50, "blue"), record(4026532301, 51, "")];
        live[1].containers = vec![Container { runtime: "runc".into(), id: "web-1".into(), pod_uid: None }];
        let destroyed = vec![record(4026532300, 40, "red"), record(4026532305, 41, "blue")];
        let found = |arg: &str| resolve(arg, &live, &destroyed, &mut none);
        let inode = found("4026532300").unwrap();
        assert_eq!(inode.found, Found::Live(0));
        assert_eq!(
            inode.notes,
            ["4026532300 also meant destroyed namespace id 40: ask by id (`nstrail show 40`) for its story"]
        );
        // Oldest first in the inventory; the most recent is the one to ask about.
        let twice = [destroyed.clone(), vec![record(4026532300, 45, "")]].concat();
        assert_eq!(
            resolve("4026532300", &live, &twice, &mut none).unwrap().notes,
            ["4026532300 also meant destroyed namespaces id 45, id 40: ask by id (`nstrail show 45`) for their stories"]
        );
        assert_eq!(found("40").unwrap().found, Found::Destroyed(0));
        assert_eq!(found("51").unwrap().found, Found::Live(1));
        assert_eq!(found("blue").unwrap().found, Found::Live(0));
        assert_eq!(found("red").unwrap().found, Found::Destroyed(0));
        assert_eq!(found("web-").unwrap().found, Found::Live(1));
        assert_eq!(found("runc:web").unwrap().found, Found::Live(1));
        assert!(found("we").is_err(), "short prefixes are no match");
        assert_eq!(
            found("green").unwrap_err(),
            "no namespace matches green: it is not the inode, id, name, container or pod of a live namespace, nor of one destroyed recently or named in the audit log"
        );
    }

    #[test]
    fn ambiguity_is_refused_with_the_candidates() {
        let live = vec![record(4026532300, 50, "x"), record(4026532301, 51, "x")];
        let err = resolve("x", &live, &[], &mut none).unwrap_err();
        assert_eq!(err, "x matches 2 namespaces: inode 4026532300 (id 50, x), inode 4026532301 (id 51, x); ask by id");
        let destroyed = vec![record(4026532300, 40, ""), record(4026532300, 41, "")];
        let err = resolve("4026532300", &[], &destroyed, &mut none).unwrap_err();
        assert!(err.starts_with("4026532300 matches 2 destroyed namespaces"), "{err}");
        assert_eq!(resolve("41", &[], &destroyed, &mut none).unwrap().found, Found::Destroyed(1));
    }

    #[test]
    fn the_log_remembers_what_the_inventory_forgot() {
        let sighting = |id| Sighting { inode: 4026532300, id, name: None, destroyed: Some("t".into()) };
        let mut two = || vec![sighting(7), sighting(8)];
        assert_eq!(resolve("8", &[], &[], &mut two).unwrap().found, Found::Recorded(sighting(8)));
        assert!(resolve("4026532300", &[], &[], &mut two)
            .unwrap_err()
            .contains("matches 2 namespaces in the audit log"));
        let live = vec![record(4026532300, 9, "")];
        let resolved = resolve("4026532300", &live, &[], &mut two).unwrap();
        assert_eq!(resolved.found, Found::Live(0));
        assert_eq!(
            resolved.notes,
            ["inode 4026532300 belonged to older namespaces too (id 8, id 7): ask by id (`nstrail show 8`) for their stories"]
        );
    }
}
