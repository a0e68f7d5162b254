//! `nstrail sysctl NETNS [--all]`: a namespace's net.* sysctls against the
//! host's, each with its origin; from the agent or, `--offline`, read here
//! by stepping into the namespace.

use clap::Parser;
use nstrail::{answers, event::text::terminal_safe};

use crate::{ls::aligned, show::sysctl_rows};

#[derive(Parser, Debug)]
pub struct SysctlArgs {
    /// The namespace: inode, id, name, container (id, prefix, runtime:id) or pod uid.
    pub netns: String,
    /// Every net.* sysctl, not only those that differ from the host's or were written.
    #[arg(long)]
    pub all: bool,
    /// One JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Answer without an agent: step into the namespace itself; origins from the audit log.
    #[arg(long)]
    pub offline: bool,
    /// The agent's socket.
    #[arg(long, default_value = nstrail::serve::api::DEFAULT_SOCKET)]
    pub socket: std::path::PathBuf,
    /// The audit log read --offline (the agent reads its own).
    #[arg(long, default_value = nstrail::audit::DEFAULT_PATH)]
    pub audit_log: std::path::PathBuf,
}

pub fn run(args: SysctlArgs) -> anyhow::Result<()> {
    let report = if args.offline {
        crate::show::offline(&args.audit_log, |sources| answers::sysctl(&args.netns, args.all, sources))
            .map_err(anyhow::Error::msg)?
    } else {
        nstrail::serve::questions::ask_sysctl(&args.socket, &args.netns, args.all)?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let n = &report.netns;
    let id = n.id.map_or("?".to_owned(), |i| i.to_string());
    let name = n.names.first().map(|s| format!(" {s}")).unwrap_or_default();
    let which =
        if report.all { "every net.* sysctl" } else { "net.* sysctls that differ from the host's, or were written" };
    println!("{}", terminal_safe(&format!("netns {} (id {id}){name}: {which}", n.inode)));
    if report.sysctls.is_empty() {
        println!("(none: every value is the host's)");
    } else {
        println!("{}", aligned(&sysctl_rows(&report.sysctls)));
    }
    let late = report.sysctls.iter().filter(|e| e.changed_too_late).count();
    if late > 0 {
        println!(
            "{late} written while TCP sockets existed in the namespace: sockets made before may keep the old value"
        );
    }
    for note in &report.notes {
        println!("{}", terminal_safe(&format!("note: {note}")));
    }
    Ok(())
}
