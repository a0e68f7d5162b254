//! Command line of the `nstrail` binary.

use std::io::Write as _;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use nstrail::{
    agent::{Agent, AgentOptions},
    config::Config,
    export::{AuditLog, Exporter, JsonLinesExporter, TextExporter},
    sensors::SensorOptions,
};

use crate::{show::ShowArgs, sysctl::SysctlArgs};

#[derive(Parser, Debug)]
#[command(
    name = "nstrail",
    version,
    about = "Observe Linux network namespaces: who made, entered and destroyed them, and when"
)]
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
    /// Check audit log files (oldest first) and name the first deleted, altered or reordered record;
    /// with --key, check the seals too.
    Verify(VerifyArgs),
    /// Audit log keys.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Follow events from the running agent (with --since, from the audit log first).
    Tail(TailArgs),
    /// One namespace's whole story: identity, members, holders, devices, sysctls, timeline.
    Show(ShowArgs),
    /// A namespace's net.* sysctls that differ from the host's, each with its origin.
    Sysctl(SysctlArgs),
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
    /// Only events in this Kubernetes pod's namespace: namespace/name, name or uid.
    #[arg(long)]
    pub pod: Option<String>,
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
    #[arg(long, default_value = nstrail::serve::api::DEFAULT_SOCKET)]
    pub socket: std::path::PathBuf,
    /// The audit log `--since` reads.
    #[arg(long, default_value = nstrail::audit::DEFAULT_PATH)]
    pub audit_log: std::path::PathBuf,
}

#[derive(Parser, Debug)]
#[command(group(clap::ArgGroup::new("key_material").args(["key", "key_file"]).multiple(true)))]
pub struct VerifyArgs {
    /// Log files, oldest first: events.jsonl.2 events.jsonl.1 events.jsonl
    #[arg(required = true)]
    pub files: Vec<std::path::PathBuf>,
    /// The verification key `nstrail audit setup-keys` printed (64 hex digits): check every seal.
    /// Repeat for a log sealed with more than one key.
    #[arg(long)]
    pub key: Vec<String>,
    /// Read a verification key from this file (repeatable).
    #[arg(long)]
    pub key_file: Vec<std::path::PathBuf>,
    /// The host's sealing key file (e.g. /var/lib/nstrail/seal.key): its epoch shows seals cut off the end.
    #[arg(long, requires = "key_material")]
    pub seal_key: Option<std::path::PathBuf>,
    /// The log must reach this seal epoch (the last nstrail_audit_seal_epoch your monitoring saw).
    #[arg(long, requires = "key_material")]
    pub expect_epoch: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Make a sealing key for the agent and print the verification key, once, to store elsewhere.
    SetupKeys(SetupKeysArgs),
}

#[derive(Parser, Debug)]
pub struct SetupKeysArgs {
    /// Where the agent finds its sealing key ([audit_log] seal_key).
    #[arg(long, default_value = nstrail::audit::seal::DEFAULT_KEY_PATH)]
    pub seal_key: std::path::PathBuf,
    /// Replace an existing sealing key (seals made with it then verify only with its own verification key).
    #[arg(long)]
    pub force: bool,
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
    /// Only leaked namespaces: no member process for longer than the agent's
    /// [inventory] leak_age (or --older-than), no running container claiming them.
    #[arg(long, conflicts_with = "destroyed")]
    pub leaked: bool,
    /// With --leaked: without a member process for at least this long (90s, 10m, 2h, 1d).
    #[arg(long, requires = "leaked", value_parser = parse_duration)]
    pub older_than: Option<std::time::Duration>,
    /// The agent's socket.
    #[arg(long, default_value = nstrail::serve::api::DEFAULT_SOCKET)]
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
    #[arg(long, default_value = nstrail::serve::api::DEFAULT_SOCKET)]
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

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    nstrail::config::duration::parse(s)
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
        Command::Audit(AuditCommand::SetupKeys(args)) => setup_keys(args),
        Command::Tail(args) => crate::tail::run(crate::tail::TailOptions {
            filter: nstrail::event::filter::Filter {
                types: args.types,
                netns: args.netns,
                container: args.container,
                pod: args.pod,
                comm: args.comm,
                pid: args.pid,
            },
            since: args.since,
            json: args.json,
            socket: args.socket,
            audit_log: args.audit_log,
        }),
        Command::Show(args) => crate::show::run(args),
        Command::Sysctl(args) => crate::sysctl::run(args),
    }
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    use nstrail::audit::{seal::VerificationKey, Verdict, VerifyOptions};
    let mut texts: Vec<zeroize::Zeroizing<String>> = args.key.iter().cloned().map(zeroize::Zeroizing::new).collect();
    for path in &args.key_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read the key file {}", path.display()))?;
        texts.push(zeroize::Zeroizing::new(text));
    }
    let keys =
        texts.iter().map(|t| VerificationKey::parse(t)).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
    let options = VerifyOptions { keys, seal_key: args.seal_key, expect_epoch: args.expect_epoch };
    let report = nstrail::audit::verify_with(&args.files, &options)?;
    if let Verdict::Intact { records, segments, gaps } = &report.verdict {
        println!("OK: {records} records in {} files, {segments} segments, {gaps} gaps", args.files.len());
    }
    // Notes and problems quote the files (times, key ids, reasons, paths):
    // whoever wrote them must not reach the terminal.
    use nstrail::event::text::terminal_safe;
    for note in &report.notes {
        println!("{}", terminal_safe(note));
    }
    match report.verdict {
        Verdict::Intact { .. } => Ok(()),
        Verdict::Broken { file, line, problem } => {
            anyhow::bail!("{}", terminal_safe(&format!("{}:{line}: {problem}", file.display())))
        }
    }
}

fn setup_keys(args: SetupKeysArgs) -> anyhow::Result<()> {
    let key = nstrail::audit::seal::setup_keys(&args.seal_key, args.force)?;
    println!(
        "Sealing key written to {} (mode 0600, epoch 0). The agent seals its audit log with it from its next start.",
        args.seal_key.display()
    );
    println!();
    println!("Verification key (key id {}):", key.id());
    println!();
    println!("    {}", key.to_hex().as_str());
    println!();
    println!("Store it away from this host (another machine, a password manager, paper): it is not kept here,");
    println!("and it is what checks the seals: nstrail verify --key KEY FILES...");
    println!("Whoever holds it can also make seals: keep it secret.");
    Ok(())
}

fn list(args: LsArgs) -> anyhow::Result<()> {
    if args.leaked && args.offline && args.older_than.is_some() {
        anyhow::bail!(
            "--older-than needs the agent: offline, how long a namespace has had no member process is unknown"
        );
    }
    if args.offline && !nstrail::sys::proc::is_root() {
        eprintln!(
            "nstrail: warning: not root: only your own processes' namespaces and the bind mounts you can read are listed; run as root (sudo) to see the whole host"
        );
    }
    let (mut namespaces, destroyed) = if args.offline {
        let mut scan = nstrail::inventory::scan::scan();
        nstrail::inventory::scan::with_devices(&mut scan, &Default::default());
        (nstrail::inventory::Inventory::from_scan(&scan).live_records(&scan), Vec::new())
    } else {
        let reply = nstrail::serve::api::fetch_inventory(&args.socket)?;
        (reply.namespaces, reply.destroyed)
    };
    if args.leaked {
        return crate::ls::print_leaks(&namespaces, args.offline, args.older_than, args.json);
    }
    if args.destroyed {
        namespaces.extend(destroyed);
    }
    if args.json {
        // Written straight from the records: through a serde_json::Value
        // a listing of 10,000 namespaces took longer than fetching it.
        #[derive(serde::Serialize)]
        struct Listing<'a> {
            namespaces: &'a [nstrail::inventory::NetnsRecord],
        }
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        serde_json::to_writer_pretty(&mut out, &Listing { namespaces: &namespaces })?;
        writeln!(out)?;
        out.flush()?;
    } else {
        println!("{}", crate::ls::render_table(&namespaces));
    }
    Ok(())
}

fn run_agent(args: RunArgs) -> anyhow::Result<()> {
    nstrail::sys::proc::raise_fd_limit();
    nstrail::sys::heap::limit_arenas();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        let config = Config::load(args.config.as_deref())?;
        let options = AgentOptions {
            ring_buffer_bytes: args.ring_buffer_mib * 1024 * 1024,
            sensors: SensorOptions { sysctl_policy: config.sysctl_policy.clone(), ..Default::default() },
            metrics: config.metrics.clone(),
            leak_age: config.leak_age,
            cri_socket: config.cri_socket.clone(),
        };
        let agent = Agent::load(&options)?;
        let metrics_server = match args.metrics_listen.or(config.metrics_listen) {
            Some(addr) => {
                let listener = nstrail::serve::metrics::bind(addr).await?;
                log::info!("serving metrics at http://{}/metrics", listener.local_addr().unwrap_or(addr));
                Some(tokio::spawn(nstrail::serve::metrics::serve(listener, agent.metrics(), agent.inventory())))
            }
            None => None,
        };
        // Buffered: the agent flushes after every batch it drains, not every line.
        let stdout = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
        let hub = nstrail::export::stream::EventHub::new(config.api_client_buffer, Some(agent.metrics()));
        let mut exporters: Vec<Box<dyn Exporter>> = Vec::new();
        let audit = if args.no_audit_log { None } else { config.audit_log.clone() };
        let mut audit_path = None;
        if let Some(mut audit) = audit {
            if let Some(path) = &args.audit_log {
                audit.path = path.clone();
            }
            let path = audit.path.clone();
            audit_path = Some(path.clone());
            let log = AuditLog::open(audit, Some(agent.metrics())).with_context(|| {
                format!(
                    "cannot open the audit log {}; choose another with --audit-log or [audit_log] path",
                    path.display()
                )
            })?;
            log::info!("audit log: {}", path.display());
            exporters.push(Box::new(log));
        }
        // After the audit log, so a client joining from the log finds the
        // rest in the stream.
        exporters.push(Box::new(nstrail::export::stream::HubExporter(hub.clone())));
        match args.format {
            Format::Json => exporters.push(Box::new(JsonLinesExporter::new(stdout))),
            Format::Text => exporters.push(Box::new(TextExporter::new(stdout))),
        }
        let listener = nstrail::serve::api::bind(&args.socket, &config.api_access).await?;
        let context = nstrail::serve::api::ApiContext {
            inventory: agent.inventory(),
            hub: hub.clone(),
            metrics: agent.metrics(),
            audit_log: audit_path,
        };
        let api = tokio::spawn(nstrail::serve::api::serve(listener, context, config.api_access.max_clients));
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
