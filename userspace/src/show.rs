//! `nstrail show NETNS`: one namespace's whole story, asked from the agent
//! or, `--offline`, put together here from /proc and the audit log.

use clap::Parser;
use nstrail::{
    answers::{self, inside::DeviceState, sysctls, timeline::Records, Sources, Story},
    event::{text::terminal_safe, Event},
    export::text::{format_line, holders_text},
    inventory::{scan, Inventory},
};

use crate::ls::aligned;

#[derive(Parser, Debug)]
pub struct ShowArgs {
    /// The namespace: inode, id, name, container (id, prefix, runtime:id), pod (namespace/name) or pod uid.
    pub netns: String,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Answer without an agent, from /proc and the audit log (stepping into the namespace itself).
    #[arg(long)]
    pub offline: bool,
    /// The agent's socket.
    #[arg(long, default_value = nstrail::serve::api::DEFAULT_SOCKET)]
    pub socket: std::path::PathBuf,
    /// The audit log read --offline (the agent reads its own).
    #[arg(long, default_value = nstrail::audit::DEFAULT_PATH)]
    pub audit_log: std::path::PathBuf,
}

/// Runs `f` with what an answer is made of when no agent runs: a fresh
/// scan (with what the events would have said unknown) and the audit log.
pub fn offline<T>(audit_log: &std::path::Path, f: impl FnOnce(&Sources<'_>) -> T) -> T {
    let scan = scan::scan();
    let live = Inventory::from_scan(&scan).live_records(&scan);
    let records = Records { log: Some(audit_log.to_path_buf()), agent_pid: None, memory: None };
    f(&Sources { scan: &scan, live, destroyed: Vec::new(), records, offline: true })
}

pub fn run(args: ShowArgs) -> anyhow::Result<()> {
    let story = if args.offline {
        offline(&args.audit_log, |sources| answers::show(&args.netns, sources)).map_err(anyhow::Error::msg)?
    } else {
        nstrail::serve::questions::ask_show(&args.socket, &args.netns)?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&story)?);
    } else {
        print!("{}", render(&story));
    }
    Ok(())
}

fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text
    }
}

/// One entry's origin in words: `written by sysctl[12] at T`, ...
pub fn origin_text(entry: &sysctls::Entry) -> String {
    match (&entry.origin, &entry.written) {
        (sysctls::Origin::Written, Some(w)) => {
            let via = w.via.as_ref().map(|v| format!(" (through {v})")).unwrap_or_default();
            let late = match w.tcp_sockets_in_use {
                Some(n) if n > 0 => {
                    format!("; CHANGED TOO LATE? {n} TCP socket{} in use then", if n == 1 { " was" } else { "s were" })
                }
                _ => String::new(),
            };
            format!("written by {}[{}] at {}{via}{late}", w.actor.comm, w.actor.pid, w.ts)
        }
        (sysctls::Origin::NewNamespaceDefault, _) => "default of a new namespace".to_owned(),
        (_, _) => format!("unknown ({})", entry.note.as_deref().unwrap_or("no write seen")),
    }
}

/// The sysctl table: name, value, host's value, origin.
pub fn sysctl_rows(entries: &[sysctls::Entry]) -> Vec<Vec<String>> {
    let mut rows = vec![vec!["SYSCTL".into(), "VALUE".into(), "HOST".into(), "ORIGIN".into()]];
    for entry in entries {
        let host = entry.host.clone().unwrap_or_else(|| "-".to_owned());
        rows.push(vec![entry.sysctl.clone(), entry.value.clone(), host, origin_text(entry)]);
    }
    rows
}

fn device_rows(devices: &[DeviceState]) -> Vec<Vec<String>> {
    devices
        .iter()
        .map(|d| {
            vec![
                d.ifindex.to_string(),
                d.name.clone(),
                d.kind.clone().unwrap_or_else(|| "-".to_owned()),
                d.state.clone(),
                d.flags.join(","),
                d.mtu.map_or("-".to_owned(), |m| format!("mtu {m}")),
                or_dash(d.addresses.join(" ")),
            ]
        })
        .collect()
}

fn indent(block: &str, by: &str) -> String {
    block.lines().map(|l| format!("{by}{l}\n")).collect()
}

/// The readable story. Every string from the system goes through
/// `terminal_safe` (the tables and event lines do it themselves).
pub fn render(story: &Story) -> String {
    let n = &story.netns;
    let safe = |text: &str| terminal_safe(text).into_owned();
    let id = n.id.map_or("?".to_owned(), |i| i.to_string());
    let name = if n.host { " (host)".to_owned() } else { n.names.first().map(|s| format!(" {s}")).unwrap_or_default() };
    let mut out = safe(&format!("netns {} (id {id}){name}: {}", n.inode, story.state));
    out.push('\n');
    let mut facts: Vec<Vec<String>> = Vec::new();
    let mut fact = |label: &str, value: String| facts.push(vec![label.to_owned(), value]);
    let mounts = n.mounts.iter().map(|m| format!(" ({m})")).collect::<String>();
    fact("names", or_dash(format!("{}{mounts}", n.names.join(", "))));
    let containers: Vec<String> = n
        .containers
        .iter()
        .map(|c| match &c.pod_uid {
            Some(pod) => format!("{}:{} (pod {pod})", c.runtime, c.id),
            None => format!("{}:{}", c.runtime, c.id),
        })
        .collect();
    fact("containers", or_dash(containers.join(", ")));
    if let Some(pod) = &n.pod {
        fact("pod", format!("{}/{} (uid {})", pod.namespace, pod.name, pod.uid));
    }
    let created = match (&n.created, n.seen_at_start) {
        (Some(o), _) => format!("{} via {} by {}[{}]", o.ts, o.via.as_str(), o.actor.comm, o.actor.pid),
        (None, true) => "before the agent started".to_owned(),
        (None, false) => "not seen".to_owned(),
    };
    fact("created", created);
    if let Some(destroyed) = &n.destroyed {
        fact("destroyed", destroyed.clone());
    }
    if story.state != "live" && !n.sysctl_overrides.is_empty() {
        let written: Vec<String> = n.sysctl_overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
        fact("sysctls", format!("written: {}", written.join(", ")));
    }
    if story.state == "live" {
        fact("enters", n.enters.to_string());
        let members: Vec<String> =
            story.members.iter().map(|m| format!("{}[{}]", m.comm.as_deref().unwrap_or("?"), m.pid)).collect();
        fact(
            "members",
            format!(
                "{}{}",
                members.len(),
                if members.is_empty() { String::new() } else { format!(": {}", members.join(", ")) }
            ),
        );
        fact("held by", holders_text(&story.holders));
        if let Some(w) = &n.without_processes {
            let verdict = if w.leaked { ", LEAKED" } else { "" };
            let from = if w.since_agent_start { " (since the agent started)" } else { "" };
            fact("no process", format!("since {}{from}{verdict}", w.since));
        }
        if let Some(routes) = &story.routes {
            fact("routes", format!("ipv4 {}, ipv6 {} (main table)", routes.ipv4, routes.ipv6));
        }
        let count = |c: Option<u32>| c.map_or("?".to_owned(), |c| c.to_string());
        fact("listening", format!("tcp {}, tcp6 {}", count(story.listening.tcp), count(story.listening.tcp6)));
    }
    out.push_str(&indent(&aligned(&facts), "  "));
    if !story.devices.is_empty() {
        out.push_str("  devices\n");
        out.push_str(&indent(&aligned(&device_rows(&story.devices)), "    "));
    }
    if story.state == "live" {
        if story.sysctls.is_empty() {
            out.push_str("  sysctls     the same as the host's\n");
        } else {
            out.push_str("  sysctls (those that differ from the host's, or were written)\n");
            out.push_str(&indent(&aligned(&sysctl_rows(&story.sysctls)), "    "));
        }
    }
    out.push_str(&format!("  timeline ({} records)\n", story.timeline.len()));
    for record in &story.timeline {
        let line = match serde_json::from_value::<Event>(record.clone()) {
            Ok(event) => format_line(&event),
            Err(_) => safe(&format!(
                "{} #{} {}",
                record["ts"].as_str().unwrap_or("?"),
                record["seq"],
                record["type"].as_str().unwrap_or("?")
            )),
        };
        out.push_str(&format!("    {line}\n"));
    }
    for note in &story.notes {
        out.push_str(&safe(&format!("  note: {note}")));
        out.push('\n');
    }
    out
}
