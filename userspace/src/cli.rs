//! Command line of the `nstrail` binary.

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use nstrail::{
    agent::Agent,
    config::Config,
    export::{Exporter, JsonLinesExporter, TextExporter},
    loader::LoadOptions,
};

#[derive(Parser, Debug)]
#[command(name = "nstrail", version, about = "Observe Linux network namespaces: who made, entered and destroyed them, and when")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load the probes and print every event on stdout until interrupted.
    Run(RunArgs),
    /// List live network namespaces: from the running agent, or --offline from /proc.
    Ls(LsArgs),
    /// Check audit log files (oldest first) and name the first deleted, altered or reordered record.
    Verify(VerifyArgs),
    /// Follow events from the running agent (with --since, from the audit log first).
    Tail(TailArgs),
}

#[derive(Parser, Debug)]
pub struct TailArgs {
    /// Only these event types (repeat or separate with commas).
    #[arg(long = "type", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only events about this namespace: inode, id or name.
    #[arg(long)]
    pub netns: Option<String>,
    /// Only events in this container's namespace: id prefix or runtime:id.
    #[arg(long)]
    pub container: Option<String>,
    /// Only events by a thread of this name.
    #[arg(long)]
    pub comm: Option<String>,
    /// Only events by this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Start this far back (10m, 2h, 1d) or at this time (RFC 3339 UTC), from the audit log.
    #[arg(long)]
    pub since: Option<String>,
    /// JSON lines instead of readable text.
    #[arg(long)]
    pub json: bool,
    /// The agent's socket.
    #[arg(long, default_value = nstrail::api::DEFAULT_SOCKET)]
    pub socket: std::path::PathBuf,
    /// The audit log `--since` reads.
    #[arg(long, default_value = nstrail::audit::DEFAULT_PATH)]
    pub audit_log: std::path::PathBuf,
}

#[derive(Parser, Debug)]
pub struct VerifyArgs {
    /// Log files, oldest first: events.jsonl.2 events.jsonl.1 events.jsonl
    #[arg(required = true)]
    pub files: Vec<std::path::PathBuf>,
}

#[derive(Parser, Debug)]
pub struct LsArgs {
    /// One JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Scan /proc directly instead of asking the agent (creation history is then unknown).
    #[arg(long)]
    pub offline: bool,
    /// Also list recently destroyed namespaces (agent only).
    #[arg(long)]
    pub destroyed: bool,
    /// The agent's socket.
    #[arg(long, default_value = nstrail::api::DEFAULT_SOCKET)]
    pub socket: std::path::PathBuf,
}

#[derive(Parser, Debug)]
pub struct RunArgs {
    /// Output format: one JSON object per line, or one readable line per event.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Size of the kernel event ring buffer in MiB (a power of two).
    #[arg(long, default_value_t = 8, value_parser = parse_ring_mib)]
    pub ring_buffer_mib: u32,
    /// Configuration file (TOML); default /etc/nstrail/nstrail.toml when it exists.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Where to serve the local API (`nstrail ls` asks there).
    #[arg(long, default_value = nstrail::api::DEFAULT_SOCKET)]
    pub socket: std::path::PathBuf,
    /// Serve Prometheus metrics here (default 127.0.0.1:9717, or [metrics] listen).
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Write the audit log here (default /var/log/nstrail/events.jsonl, or [audit_log] path).
    #[arg(long, conflicts_with = "no_audit_log")]
    pub audit_log: Option<std::path::PathBuf>,
    /// Write no audit log.
    #[arg(long)]
    pub no_audit_log: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Text,
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("`{s}` is not a whole number of MiB"))?;
    if n == 0 || !n.is_power_of_two() || n > 1024 {
        return Err(format!("{n} MiB: the ring buffer size must be a power of two from 1 to 1024"));
    }
    Ok(n)
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run_agent(args),
        Command::Ls(args) => list(args),
        Command::Verify(args) => verify(args),
        Command::Tail(args) => crate::tail::run(crate::tail::TailOptions {
            filter: nstrail::filter::Filter {
                types: args.types,
                netns: args.netns,
                container: args.container,
                comm: args.comm,
                pid: args.pid,
            },
            since: args.since,
            json: args.json,
            socket: args.socket,
            audit_log: args.audit_log,
        }),
    }
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    match nstrail::audit::verify(&args.files)? {
        nstrail::audit::Verdict::Intact { records, segments, gaps } => {
            println!("OK: {records} records in {} files, {segments} segments, {gaps} gaps", args.files.len());
            Ok(())
        }
        nstrail::audit::Verdict::Broken { file, line, problem } => {
            anyhow::bail!("{}:{line}: {problem}", file.display())
        }
    }
}

fn list(args: LsArgs) -> anyhow::Result<()> {
    let (mut namespaces, destroyed) = if args.offline {
        let mut scan = nstrail::inventory::scan::scan();
        nstrail::inventory::scan::with_devices(&mut scan);
        (nstrail::inventory::Inventory::from_scan(&scan).live_records(&scan), Vec::new())
    } else {
        let reply = nstrail::api::fetch_inventory(&args.socket)?;
        (reply.namespaces, reply.destroyed)
    };
    if args.destroyed {
        namespaces.extend(destroyed);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "namespaces": namespaces }))?);
    } else {
        println!("{}", nstrail::inventory::render_table(&namespaces));
    }
    Ok(())
}

fn run_agent(args: RunArgs) -> anyhow::Result<()> {
    nstrail::preflight::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let config = Config::load(args.config.as_deref())?;
        let options = LoadOptions {
            ring_buffer_bytes: args.ring_buffer_mib * 1024 * 1024,
            sysctl_policy: config.sysctl_policy,
            ..LoadOptions::default()
        };
        let agent = Agent::load_with_metrics(&options, config.metrics.clone())?;
        let metrics_server = match args.metrics_listen.or(config.metrics_listen) {
            Some(addr) => {
                let listener = nstrail::metrics::bind(addr).await?;
                log::info!("serving metrics at http://{}/metrics", listener.local_addr().unwrap_or(addr));
                Some(tokio::spawn(nstrail::metrics::serve(listener, agent.metrics(), agent.inventory())))
            }
            None => None,
        };
        // Buffered: the agent flushes after every batch it drains, not every line.
        let stdout = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
        let hub = nstrail::stream::EventHub::new(config.api_client_buffer, Some(agent.metrics()));
        let mut exporters: Vec<Box<dyn Exporter>> = Vec::new();
        let audit = if args.no_audit_log { None } else { config.audit_log.clone() };
        if let Some(mut audit) = audit {
            if let Some(path) = &args.audit_log {
                audit.path = path.clone();
            }
            let path = audit.path.clone();
            let log = nstrail::audit::AuditLog::open(audit, Some(agent.metrics()))
                .with_context(|| format!("cannot open the audit log {}; choose another with --audit-log or [audit_log] path", path.display()))?;
            log::info!("audit log: {}", path.display());
            exporters.push(Box::new(log));
        }
        // After the audit log, so a client joining from the log finds the
        // rest in the stream.
        exporters.push(Box::new(nstrail::stream::HubExporter(hub.clone())));
        match args.format {
            Format::Json => exporters.push(Box::new(JsonLinesExporter::new(stdout))),
            Format::Text => exporters.push(Box::new(TextExporter::new(stdout))),
        }
        let listener = nstrail::api::bind(&args.socket).await?;
        let context = nstrail::api::ApiContext { inventory: agent.inventory(), hub: hub.clone(), metrics: agent.metrics() };
        let api = tokio::spawn(nstrail::api::serve(listener, context));
        let attached = agent.probes().iter().filter(|p| p.attached).count();
        log::info!("{attached} of {} probes attached; streaming events (Ctrl-C to stop)", agent.probes().len());
        let summary = agent.run(&mut exporters, shutdown_signal()).await?;
        api.abort();
        if let Some(server) = metrics_server {
            server.abort();
        }
        let _ = std::fs::remove_file(&args.socket);
        log::info!(
            "stopped: {} events, {} lost in the kernel, {} undecodable",
            summary.events,
            summary.lost,
            summary.decode_errors
        );
        Ok(())
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
