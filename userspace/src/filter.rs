//! Which records `nstrail tail` shows: filters over the JSON event contract.

use serde_json::Value;

#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Event types to show; empty shows all.
    pub types: Vec<String>,
    /// A namespace by inode, id or name.
    pub netns: Option<String>,
    /// A container id prefix, or `runtime:id-prefix`.
    pub container: Option<String>,
    pub comm: Option<String>,
    pub pid: Option<u32>,
}

fn namespaces(record: &Value) -> impl Iterator<Item = &Value> {
    let ends = ["device", "peer"].into_iter().filter_map(|k| record.get(k)?.get("netns"));
    ["netns", "parent_netns", "from_netns", "to_netns"]
        .into_iter()
        .filter_map(|k| record.get(k))
        .chain(ends)
        .filter(|v| v.is_object())
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
/// UTC time (`2026-11-28T01:00:00Z`), as the sortable timestamp events carry.
pub fn since_timestamp(text: &str, now_unix_ns: i128) -> Result<String, String> {
    let unit = text.chars().last().unwrap_or(' ');
    if let (Some(seconds), Ok(n)) = (
        match unit {
            's' => Some(1),
            'm' => Some(60),
            'h' => Some(3600),
            'd' => Some(86400),
            _ => None,
        },
        text[..text.len().saturating_sub(1)].parse::<i128>(),
    ) {
        return Ok(crate::correlate::rfc3339(now_unix_ns - n * seconds * 1_000_000_000));
    }
    let bad = || format!("--since {text:?}: use a duration such as 10m, 2h, 1d, or an RFC 3339 UTC time such as 2026-11-28T01:00:00Z");
    let body = text.strip_suffix('Z').ok_or_else(bad)?;
    let (whole, fraction) = body.split_once('.').unwrap_or((body, ""));
    let shape_ok = whole.len() == 19
        && whole.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            _ => b.is_ascii_digit(),
        })
        && fraction.len() <= 9
        && fraction.bytes().all(|b| b.is_ascii_digit());
    if !shape_ok {
        return Err(bad());
    }
    Ok(format!("{whole}.{fraction:0<9}Z"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> Value {
        json!({
            "type": "netns_enter",
            "netns": {"inode": 4026532177u64, "id": 42, "name": "blue",
                      "containers": [{"runtime": "runc", "id": "web-1"}]},
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
    }
}
