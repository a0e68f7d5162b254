//! `nstrail tail`: follow events from the running agent, optionally from the
//! audit log first (`--since`), joined on the agent's sequence numbers so
//! nothing is missed or shown twice.

use std::{
    io::{BufRead, Write},
    path::PathBuf,
};

use anyhow::Context as _;
use nstrail::{
    audit::{log_files, split_line},
    event::filter::{since_timestamp, Filter},
    event::Event,
    export::text::format_line,
};
use serde_json::Value;

pub struct TailOptions {
    pub filter: Filter,
    pub since: Option<String>,
    pub json: bool,
    pub socket: PathBuf,
    pub audit_log: PathBuf,
}

struct Printer {
    filter: Filter,
    json: bool,
    colour: bool,
    out: std::io::Stdout,
}

impl Printer {
    fn show(&mut self, line: &str, record: &Value) -> std::io::Result<()> {
        match record["type"].as_str() {
            Some("client_dropped") => {
                eprintln!("nstrail tail: {} events dropped: tail read too slowly", record["count"]);
                return Ok(());
            }
            Some("audit_gap") => {
                match record["cause"].as_str() {
                    Some(cause) if cause != "backlog" => {
                        eprintln!(
                            "nstrail tail: the audit log marks its file {} here ({} records lost)",
                            nstrail::event::text::terminal_safe(cause),
                            record["records_lost"]
                        )
                    }
                    _ => eprintln!("nstrail tail: the audit log marks {} lost records here", record["records_lost"]),
                }
                return Ok(());
            }
            Some("audit_segment" | "audit_seal" | "audit_stop") => return Ok(()),
            _ => {}
        }
        if !self.filter.matches(record) {
            return Ok(());
        }
        let mut out = self.out.lock();
        if self.json {
            writeln!(out, "{line}")?;
        } else if let Ok(event) = serde_json::from_value::<Event>(record.clone()) {
            let text = format_line(&event);
            if self.colour {
                let kind = event.body.type_name();
                writeln!(
                    out,
                    "{}",
                    text.replacen(&format!("#{} ", event.seq), &format!("#{} \x1b[1;36m{kind}\x1b[0m ", event.seq), 1)
                )?;
            } else {
                writeln!(out, "{text}")?;
            }
        }
        out.flush()
    }
}

extern "C" fn leave_quietly(_: libc::c_int) {
    // SAFETY: async-signal-safe exit; every line was flushed when printed.
    unsafe { libc::_exit(0) };
}

pub fn run(options: TailOptions) -> anyhow::Result<()> {
    // SAFETY: installing a handler that only calls _exit.
    unsafe {
        libc::signal(libc::SIGINT, leave_quietly as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, leave_quietly as *const () as libc::sighandler_t);
    }
    let colour = !options.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut printer = Printer { filter: options.filter, json: options.json, colour, out: std::io::stdout() };

    let mut after_seq = None;
    if let Some(since) = &options.since {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
        let since = since_timestamp(since, now).map_err(anyhow::Error::msg)?;
        let files = log_files(&options.audit_log);
        if files.is_empty() {
            anyhow::bail!(
                "--since reads the audit log, and there is none at {}; pass --audit-log PATH",
                options.audit_log.display()
            );
        }
        for file in files {
            let reader = std::io::BufReader::new(
                std::fs::File::open(&file).with_context(|| format!("reading {}", file.display()))?,
            );
            for line in reader.lines() {
                let line = line.with_context(|| format!("reading {}", file.display()))?;
                let Some((json, _, _)) = split_line(&line) else { continue };
                let Ok(record) = serde_json::from_str::<Value>(&json) else { continue };
                // Sequence numbers start again with each run of the agent.
                if record["type"] == "audit_segment" {
                    after_seq = None;
                    continue;
                }
                if let Some(seq) = record["seq"].as_u64() {
                    after_seq = Some(seq);
                }
                if record["ts"].as_str().is_some_and(|ts| ts >= since.as_str()) {
                    printer.show(&json, &record)?;
                }
            }
        }
        // The log's last segment is the running agent's: continue right after it.
        after_seq = after_seq.or(Some(0));
    }

    let reader = nstrail::serve::api::subscribe(&options.socket, after_seq)?;
    for line in reader.lines() {
        let line = line.context("reading from the agent")?;
        let Ok(record) = serde_json::from_str::<Value>(&line) else { continue };
        printer.show(&line, &record)?;
    }
    anyhow::bail!("the agent closed the stream (it stopped)")
}
