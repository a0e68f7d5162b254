//! A namespace's network sysctls against the host's, each with where its
//! value came from: a write the agent saw (who, when, with how many TCP
//! sockets in use), the value every new namespace gets on this kernel, or
//! unknown.
//!
//! Listed: every sysctl whose value differs from the host's same sysctl,
//! and every sysctl written in the namespace (an entry for a device the
//! host does not have is compared with nothing, so only listed when
//! written); with `all`, every one.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::inside::{default_for, Sysctls};
use crate::{event::Actor, sys::sysctl::same_value};

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A write the agent saw set it.
    Written,
    /// A new namespace gets this value on this kernel.
    NewNamespaceDefault,
    /// Neither: set before the agent started, or by a write it did not see.
    Unknown,
}

/// The write that set a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub ts: String,
    pub seq: u64,
    /// The sysctl written, when another one than this (`net.ipv4.ip_forward`
    /// sets every `net.ipv4.conf.*.forwarding`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    pub actor: Actor,
    /// TCP sockets in use in the namespace when it was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_sockets_in_use: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub sysctl: String,
    pub value: String,
    /// The host's value; absent when the host has no such sysctl (another device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// What a new namespace gets (for a device: the `default` entry's value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_namespace_default: Option<String>,
    pub origin: Origin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<Write>,
    /// Written while TCP sockets existed in the namespace: sockets made
    /// before may keep the old behaviour ("changed too late").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changed_too_late: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The sysctls another write sets too.
fn written_through(name: &str) -> &'static [&'static str] {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["net", "ipv4", "conf", _, "forwarding"] | ["net", "ipv4", "conf", "all", "accept_redirects"] => {
            &["net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding"]
        }
        ["net", "ipv4", "ip_forward"] => &["net.ipv4.conf.all.forwarding"],
        ["net", "ipv6", "conf", _, "forwarding"] => &["net.ipv6.conf.all.forwarding"],
        _ => &[],
    }
}

/// The last applied write of each sysctl in a timeline (oldest first).
fn last_writes(timeline: &[Value]) -> std::collections::HashMap<String, &Value> {
    let mut last = std::collections::HashMap::new();
    for record in timeline {
        if record["type"] == "sysctl_write" && record["result"] == "applied" {
            if let Some(name) = record["sysctl"].as_str() {
                last.insert(name.to_owned(), record);
            }
        }
    }
    last
}

fn write_of(record: &Value, via: Option<&str>) -> Option<Write> {
    Some(Write {
        ts: record["ts"].as_str()?.to_owned(),
        seq: record["seq"].as_u64()?,
        via: via.map(str::to_owned),
        old: record["old"].as_str().map(str::to_owned),
        actor: serde_json::from_value(record["actor"].clone()).ok()?,
        tcp_sockets_in_use: record["tcp_sockets_in_use"].as_u64(),
    })
}

/// The entries to list. `timeline`: the namespace's records (its writes);
/// `predates_agent`: the namespace existed before the agent started and
/// the history does not show its creation.
pub fn compare(
    values: &Sysctls,
    host: &Sysctls,
    defaults: Option<&Sysctls>,
    timeline: &[Value],
    predates_agent: bool,
    all: bool,
) -> Vec<Entry> {
    let writes = last_writes(timeline);
    let mut out = Vec::new();
    for (name, value) in values {
        let host_value = host.get(name);
        let differs = host_value.is_some_and(|h| !same_value(h, value));
        if !all && !differs && !writes.contains_key(name) {
            continue;
        }
        let default = defaults.and_then(|d| default_for(d, name));
        let mut entry = Entry {
            sysctl: name.clone(),
            value: value.clone(),
            host: host_value.cloned(),
            new_namespace_default: default.map(str::to_owned),
            origin: Origin::Unknown,
            written: None,
            changed_too_late: false,
            note: None,
        };
        let direct = writes.get(name).map(|w| (*w, None));
        let through = written_through(name).iter().find_map(|via| writes.get(*via).map(|w| (*w, Some(*via))));
        match direct.or(through) {
            Some((record, via))
                if record["new"].as_str().is_some_and(|new| via.is_some() || same_value(new, value)) =>
            {
                entry.origin = Origin::Written;
                entry.written = write_of(record, via);
                entry.changed_too_late = entry.written.as_ref().and_then(|w| w.tcp_sockets_in_use).unwrap_or(0) > 0;
            }
            found => {
                if default.is_some_and(|d| same_value(d, value)) {
                    entry.origin = Origin::NewNamespaceDefault;
                } else if let Some((record, _)) = found {
                    entry.note = Some(format!(
                        "the last write seen ({} at {}) set {}; changed since by a write not seen",
                        record["actor"]["comm"].as_str().unwrap_or("?"),
                        record["ts"].as_str().unwrap_or("?"),
                        record["new"].as_str().unwrap_or("?")
                    ));
                } else if predates_agent {
                    entry.note = Some("before the agent started".to_owned());
                } else {
                    entry.note = Some("no write seen".to_owned());
                }
            }
        }
        out.push(entry);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> Sysctls {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn write(seq: u64, name: &str, new: &str, sockets: u64) -> Value {
        serde_json::json!({
            "ts": format!("2026-11-28T00:00:0{seq}.000000000Z"), "seq": seq, "type": "sysctl_write",
            "sysctl": name, "old": "0", "new": new, "result": "applied",
            "netns": {"inode": 1, "id": 2}, "tcp_sockets_in_use": sockets,
            "actor": {"pid": 10 + seq, "tid": 10 + seq, "ppid": 1, "uid": 0, "gid": 0, "comm": "sysctl", "cgroup_id": 1}
        })
    }

    #[test]
    fn each_difference_with_its_origin() {
        let host =
            map(&[("net.core.somaxconn", "4096"), ("net.a", "1"), ("net.b", "1"), ("net.c", "1"), ("net.d", "5")]);
        let defaults =
            map(&[("net.core.somaxconn", "4096"), ("net.a", "-1"), ("net.b", "1"), ("net.c", "1"), ("net.d", "5")]);
        let values = map(&[
            ("net.core.somaxconn", "100"),
            ("net.a", "-1"),
            ("net.b", "2"),
            ("net.c", "1"),
            ("net.d", "7"),
            ("net.ipv4.conf.v0.rp_filter", "1"),
        ]);
        let timeline = vec![
            write(1, "net.core.somaxconn", "100", 3),
            write(2, "net.ipv4.conf.v0.rp_filter", "1", 0),
            write(3, "net.d", "6", 0),
            write(4, "net.c", "0", 0),
            serde_json::json!({"type": "sysctl_write", "sysctl": "net.b", "new": "2", "result": "rejected"}),
        ];
        let entries = compare(&values, &host, Some(&defaults), &timeline, true, false);
        let got: Vec<_> = entries.iter().map(|e| (e.sysctl.as_str(), e.value.as_str(), e.origin)).collect();
        assert_eq!(
            got,
            [
                ("net.a", "-1", Origin::NewNamespaceDefault),
                ("net.b", "2", Origin::Unknown),
                ("net.c", "1", Origin::NewNamespaceDefault),
                ("net.core.somaxconn", "100", Origin::Written),
                ("net.d", "7", Origin::Unknown),
                ("net.ipv4.conf.v0.rp_filter", "1", Origin::Written),
            ]
        );
        let somaxconn = &entries[3];
        assert!(somaxconn.changed_too_late);
        let w = somaxconn.written.as_ref().unwrap();
        assert_eq!((w.seq, w.actor.pid, w.tcp_sockets_in_use), (1, 11, Some(3)));
        assert_eq!(entries[1].note.as_deref(), Some("before the agent started"), "a rejected write set nothing");
        assert!(entries[4].note.as_deref().unwrap().starts_with("the last write seen (sysctl at"));
        assert_eq!(entries[5].host, None);
        assert!(!entries[5].changed_too_late);
        assert_eq!(compare(&values, &host, None, &[], false, true).len(), 6);
        assert_eq!(compare(&values, &host, None, &[], false, false)[0].note.as_deref(), Some("no write seen"));
    }

    #[test]
    fn ip_forward_sets_the_forwarding_of_every_device() {
        let host = map(&[("net.ipv4.conf.all.forwarding", "0"), ("net.ipv4.ip_forward", "0")]);
        let values = map(&[("net.ipv4.conf.all.forwarding", "1"), ("net.ipv4.ip_forward", "1")]);
        let entries = compare(&values, &host, None, &[write(1, "net.ipv4.ip_forward", "1", 0)], false, false);
        assert_eq!(entries[0].origin, Origin::Written);
        assert_eq!(entries[0].written.as_ref().unwrap().via.as_deref(), Some("net.ipv4.ip_forward"));
        assert_eq!(entries[1].written.as_ref().unwrap().via, None);
    }
}
