//! `nstrail ls` as a table, and `nstrail ls --leaked`.

use nstrail::{
    event::{clock::parse_rfc3339, text::terminal_safe, FdHolder, Holders},
    export::text::holders_text,
    inventory::NetnsRecord,
};

/// The `nstrail ls` table.
pub fn render_table(records: &[NetnsRecord]) -> String {
    let mut rows = vec![vec![
        "INODE".to_owned(),
        "ID".to_owned(),
        "NAME".to_owned(),
        "PROCS".to_owned(),
        "DEVICES".to_owned(),
        "CONTAINER".to_owned(),
        "POD".to_owned(),
        "CREATED".to_owned(),
        "BY".to_owned(),
    ]];
    for r in records {
        let name = if r.host && r.names.is_empty() { "(host)".to_owned() } else { r.names.join(",") };
        let container = r
            .containers
            .iter()
            .map(|c| format!("{}:{}", c.runtime, &c.id[..c.id.len().min(12)]))
            .collect::<Vec<_>>()
            .join(",");
        let (created, by) = match &r.created {
            Some(o) => {
                (o.ts.get(..19).unwrap_or(&o.ts).replace('T', " "), format!("{}[{}]", o.actor.comm, o.actor.pid))
            }
            None => ("before agent".to_owned(), "-".to_owned()),
        };
        let devices =
            r.devices.iter().filter(|d| d.name != "lo").map(|d| d.name.as_str()).collect::<Vec<_>>().join(",");
        let procs = if r.processes == 0 && !r.fds.is_empty() {
            format!("0 ({} fd)", r.fds.len())
        } else {
            r.processes.to_string()
        };
        let cells = [
            r.inode.to_string(),
            r.id.map_or("-".to_owned(), |i| i.to_string()),
            if name.is_empty() { "-".into() } else { name },
            procs,
            match (&r.devices_unlisted, devices.is_empty()) {
                (Some(_), _) => "?".into(),
                (None, true) => "-".into(),
                (None, false) => devices,
            },
            if container.is_empty() { "-".into() } else { container },
            r.pod.as_ref().map_or("-".into(), |p| format!("{}/{}", p.namespace, p.name)),
            created,
            by,
        ];
        rows.push(cells.to_vec());
    }
    // Names, comms and device names come from the system: aligned makes them safe.
    aligned(&rows)
}

/// Aligned columns, every cell made safe for a terminal.
pub fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let rows: Vec<Vec<String>> =
        rows.iter().map(|r| r.iter().map(|cell| terminal_safe(cell).into_owned()).collect()).collect();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(c, cell)| format!("{cell:<w$}", w = widths[c]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `12s`, `4m`, `3h`, `2d`.
pub fn age_text(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// One leaked namespace, as `ls --leaked --json` prints it.
#[derive(serde::Serialize)]
struct Leak<'a> {
    inode: u32,
    id: Option<u64>,
    names: &'a [String],
    holders: Holders,
    /// Absent offline (unknown).
    without_processes_since: Option<&'a str>,
    since_agent_start: bool,
    age_seconds: Option<u64>,
    claimed_by: &'a [nstrail::event::Container],
}

/// `nstrail ls --leaked`: namespaces without a member process for longer
/// than the agent's leak age (or `older_than`), claimed by no running
/// container; offline, every namespace without a member process now.
pub fn print_leaks(
    records: &[NetnsRecord],
    offline: bool,
    older_than: Option<std::time::Duration>,
    json: bool,
) -> anyhow::Result<()> {
    let now = nstrail::sys::clock::realtime_ns();
    let mut leaks = Vec::new();
    for r in records.iter().filter(|r| !r.host && r.processes == 0) {
        let status = r.without_processes.as_ref();
        let age =
            status.and_then(|s| parse_rfc3339(&s.since)).map(|since| ((now - since).max(0) / 1_000_000_000) as u64);
        let keep = match (offline, status, older_than) {
            (true, _, _) => true,
            (false, None, _) => false,
            (false, Some(s), None) => s.leaked,
            (false, Some(s), Some(min)) => s.claimed_by.is_empty() && age.is_some_and(|a| a >= min.as_secs()),
        };
        if !keep {
            continue;
        }
        let fds = r.fds.iter().map(|&(pid, fd)| FdHolder { pid, fd, comm: nstrail::sys::proc::comm(pid) }).collect();
        leaks.push(Leak {
            inode: r.inode,
            id: r.id,
            names: &r.names,
            holders: Holders { mounts: r.mounts.clone(), fds },
            without_processes_since: status.map(|s| s.since.as_str()),
            since_agent_start: status.is_some_and(|s| s.since_agent_start),
            age_seconds: age,
            claimed_by: status.map_or(&[], |s| &s.claimed_by),
        });
    }
    if json {
        let document = serde_json::json!({ "leaked": leaks, "age_known": !offline });
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    let mut rows = vec![if offline {
        vec!["INODE".into(), "ID".into(), "NAME".into(), "HELD BY".into()]
    } else {
        vec!["INODE".into(), "ID".into(), "NAME".into(), "NO PROCESS SINCE".into(), "FOR".into(), "HELD BY".into()]
    }];
    for leak in &leaks {
        let mut row = vec![
            leak.inode.to_string(),
            leak.id.map_or("-".to_owned(), |i| i.to_string()),
            if leak.names.is_empty() { "-".to_owned() } else { leak.names.join(",") },
        ];
        if !offline {
            let since = leak.without_processes_since.unwrap_or("-");
            row.push(since.get(..19).unwrap_or(since).replace('T', " "));
            let at_least = if leak.since_agent_start { ">=" } else { "" };
            row.push(leak.age_seconds.map_or("-".to_owned(), |a| format!("{at_least}{}", age_text(a))));
        }
        row.push(holders_text(&leak.holders));
        rows.push(row);
    }
    println!("{}", aligned(&rows));
    if offline {
        println!(
            "(offline: every namespace without a member process now; how long it has had none, and whether a container still claims it, is unknown without the agent)"
        );
    }
    Ok(())
}
