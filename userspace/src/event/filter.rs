//! Which records `nstrail tail` shows: filters over the JSON event contract.

use serde_json::Value;

use super::clock::{parse_rfc3339, rfc3339};

#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Event types to show; empty shows all.
    pub types: Vec<String>,
    /// A namespace by inode, id or name.
    pub netns: Option<String>,
    /// A container id prefix, or `runtime:id-prefix`.
    pub container: Option<String>,
    /// A pod: `namespace/name`, a name, or its uid.
    pub pod: Option<String>,
    pub comm: Option<String>,
    pub pid: Option<u32>,
}

/// Every namespace object a record names: `netns`, `parent_netns`,
/// `from_netns`, `to_netns`, `device.netns`, `peer.netns`.
pub fn namespaces(record: &Value) -> impl Iterator<Item = &Value> {
    let ends = ["device", "peer"].into_iter().filter_map(|k| record.get(k)?.get("netns"));
    ["netns", "parent_netns", "from_netns", "to_netns"]
        .into_iter()
        .filter_map(|k| record.get(k))
        .chain(ends)
        .filter(|v| v.is_object())
}

/// Whether a record names the namespace with this id.
pub fn names_netns_id(record: &Value, id: u64) -> bool {
    namespaces(record).any(|n| n["id"].as_u64() == Some(id))
}

impl Filter {
    pub fn matches(&self, record: &Value) -> bool {
        if !self.types.is_empty() && !self.types.iter().any(|t| record["type"] == t.as_str()) {
            return false;
        }
        if let Some(want) = &self.netns {
            let hit = namespaces(record).any(|n| {
                n["inode"].as_u64().is_some_and(|i| i.to_string() == *want)
                    || n["id"].as_u64().is_some_and(|i| i.to_string() == *want)
                    || n["name"].as_str() == Some(want.as_str())
            });
            if !hit {
                return false;
            }
        }
        if let Some(want) = &self.container {
            let hit = namespaces(record).flat_map(|n| n["containers"].as_array().into_iter().flatten()).any(|c| {
                let (runtime, id) = (c["runtime"].as_str().unwrap_or(""), c["id"].as_str().unwrap_or(""));
                id.starts_with(want.as_str()) || format!("{runtime}:{id}").starts_with(want.as_str())
            });
            if !hit {
                return false;
            }
        }
        if let Some(want) = &self.pod {
            let hit = namespaces(record).filter_map(|n| n.get("pod")).any(|p| {
                let (namespace, name, uid) =
                    (p["namespace"].as_str().unwrap_or(""), p["name"].as_str().unwrap_or(""), p["uid"].as_str());
                name == want || format!("{namespace}/{name}") == *want || uid == Some(want.as_str())
            });
            if !hit {
                return false;
            }
        }
        if let Some(want) = &self.comm {
            if record["actor"]["comm"].as_str() != Some(want.as_str()) {
                return false;
            }
        }
        if let Some(want) = self.pid {
            if record["actor"]["pid"].as_u64() != Some(want as u64) {
                return false;
            }
        }
        true
    }
}

/// `--since`: a duration back from now (`30s`, `10m`, `2h`, `1d`) or an RFC 3339
/// time (`2026-11-28T01:00:00Z`), as the sortable timestamp events carry.
pub fn since_timestamp(text: &str, now_unix_ns: i128) -> Result<String, String> {
    let usage = || {
        format!(
            "--since {text:?}: use a duration such as 10m, 2h, 1d, or an RFC 3339 time such as 2026-11-28T01:00:00Z"
        )
    };
    let unit = text.chars().last().unwrap_or(' ');
    let seconds = match unit {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86400),
        _ => None,
    };
    if let (Some(seconds), Ok(n)) = (seconds, text[..text.len() - unit.len_utf8().min(text.len())].parse::<i128>()) {
        if n < 0 {
            return Err(usage());
        }
        return n
            .checked_mul(seconds * 1_000_000_000)
            .and_then(|ago| now_unix_ns.checked_sub(ago))
            .filter(|since| *since >= 0)
            .map(rfc3339)
            .ok_or_else(|| format!("--since {text:?}: that is before 1970"));
    }
    parse_rfc3339(text).map(rfc3339).ok_or_else(usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> Value {
        json!({
            "type": "netns_enter",
            "netns": {"inode": 4026532177u64, "id": 42, "name": "blue",
                      "containers": [{"runtime": "runc", "id": "web-1"}],
                      "pod": {"namespace": "shop", "name": "web", "uid": "9f1c"}},
            "from_netns": {"inode": 4026531833u64, "id": 3},
            "actor": {"pid": 77, "comm": "nsenter"}
        })
    }

    #[test]
    fn each_filter_selects() {
        let r = record();
        assert!(Filter::default().matches(&r));
        let f = |f: Filter| f.matches(&r);
        assert!(f(Filter { types: vec!["netns_create".into(), "netns_enter".into()], ..Default::default() }));
        assert!(!f(Filter { types: vec!["sysctl_write".into()], ..Default::default() }));
        for netns in ["blue", "42", "4026532177", "3"] {
            assert!(f(Filter { netns: Some(netns.into()), ..Default::default() }), "{netns}");
        }
        assert!(!f(Filter { netns: Some("red".into()), ..Default::default() }));
        assert!(f(Filter { container: Some("web".into()), ..Default::default() }));
        assert!(f(Filter { container: Some("runc:web-1".into()), ..Default::default() }));
        assert!(!f(Filter { container: Some("docker:web".into()), ..Default::default() }));
        for pod in ["shop/web", "web", "9f1c"] {
            assert!(f(Filter { pod: Some(pod.into()), ..Default::default() }), "{pod}");
        }
        assert!(!f(Filter { pod: Some("shop/db".into()), ..Default::default() }));
        assert!(f(Filter { comm: Some("nsenter".into()), pid: Some(77), ..Default::default() }));
        assert!(!f(Filter { pid: Some(78), ..Default::default() }));
    }

    #[test]
    fn device_events_match_every_namespace_they_name() {
        let moved = json!({
            "type": "device_move",
            "device": {"name": "veth1", "ifindex_before": 7, "ifindex_after": 7, "name_after": "veth1"},
            "from_netns": {"inode": 4026531833u64, "id": 3},
            "to_netns": {"inode": 4026532177u64, "id": 42, "name": "blue"},
        });
        let created = json!({
            "type": "veth_create",
            "device": {"name": "a", "ifindex": 9, "netns": {"inode": 4026531833u64, "id": 3}},
            "peer": {"name": "b", "ifindex": 2, "netns": {"inode": 4026532178u64, "id": 43, "name": "red"}},
        });
        let by_netns = |netns: &str| Filter { netns: Some(netns.into()), ..Default::default() };
        for netns in ["3", "42", "blue"] {
            assert!(by_netns(netns).matches(&moved), "{netns}");
        }
        for netns in ["3", "43", "red", "4026532178"] {
            assert!(by_netns(netns).matches(&created), "{netns}");
        }
        assert!(!by_netns("red").matches(&moved));
        assert!(names_netns_id(&moved, 3) && names_netns_id(&moved, 42) && !names_netns_id(&moved, 4026532177));
        assert!(names_netns_id(&created, 43));
        assert!(!by_netns("blue").matches(&created));
    }

    #[test]
    fn since_takes_durations_and_times() {
        let now = 1_795_826_104_000_000_000; // 2026-11-28T00:35:04Z
        assert_eq!(since_timestamp("10m", now).unwrap(), "2026-11-28T00:25:04.000000000Z");
        assert_eq!(since_timestamp("1d", now).unwrap(), "2026-11-27T00:35:04.000000000Z");
        assert_eq!(since_timestamp("2026-11-28T01:00:00Z", now).unwrap(), "2026-11-28T01:00:00.000000000Z");
        assert_eq!(since_timestamp("2026-11-28T01:00:00.5Z", now).unwrap(), "2026-11-28T01:00:00.500000000Z");
        assert!(since_timestamp("yesterday", now).unwrap_err().contains("use a duration"));
        assert!(since_timestamp("2026-11-28 01:00:00Z", now).is_err());
        assert!(since_timestamp("2026-13-45T99:99:99Z", now).is_err(), "not a date");
        assert_eq!(since_timestamp("2026-11-28T02:00:00+01:00", now).unwrap(), "2026-11-28T01:00:00.000000000Z");
        // Found by the tail_input fuzz target: a last character of two bytes.
        assert!(since_timestamp("\u{4c0}", now).unwrap_err().contains("use a duration"));
        assert!(since_timestamp("", now).unwrap_err().contains("use a duration"));
        assert!(since_timestamp("-5m", now).unwrap_err().contains("use a duration"));
        assert!(since_timestamp("99999999999999999999999999999d", now).unwrap_err().contains("before 1970"));
        assert!(since_timestamp("100000d", now).unwrap_err().contains("before 1970"));
    }
}
