//! `dphost`: a sandboxed, multi-tenant runtime for security-data connectors.

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

use dphost::commands;

/// Runs connector components (WebAssembly, WASI 0.2) for many tenants, each
/// in its own sandbox, and keeps what they collect in an embedded store.
///
/// Start with `dphost once` to collect once and see what lands, then
/// `dphost search 'msg_class:proofpoint_tap_event'` to look at it, and
/// `dphost run` to keep collecting on schedule.
#[derive(Parser, Debug)]
#[command(name = "dphost", version, propagate_version = true)]
struct Cli {
    /// The configuration file ([host] and [[connector]] tables).
    #[arg(
        long,
        short,
        global = true,
        default_value = "dphost.toml",
        env = "DPHOST_CONFIG"
    )]
    config: PathBuf,

    /// Log filter, e.g. `info`, `debug`, `dphost=debug` (also RUST_LOG).
    #[arg(long, global = true, env = "DPHOST_LOG", default_value = "info")]
    log: String,

    /// Log line format on stderr: human-readable text, or one JSON object
    /// per line for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "DPHOST_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the scheduler: every connector every `interval_min` minutes, runs
    /// of different tenants concurrently, until Ctrl-C or SIGTERM. SIGHUP
    /// reloads the configuration (an invalid one is refused and the running
    /// one kept).
    Run {
        /// Serve the admin API here: GET /status, /metrics, /healthz and
        /// POST /connectors/{name}/test. E.g. 127.0.0.1:9180.
        #[arg(long, value_name = "ADDR:PORT")]
        admin: Option<std::net::SocketAddr>,
        /// A file holding the bearer token the admin API requires; needed
        /// when --admin is not a loopback address.
        #[arg(long, value_name = "FILE", requires = "admin")]
        admin_token_file: Option<PathBuf>,
    },
    /// One collection cycle per connector (catching up to now), then exit.
    /// Exits non-zero if any connector failed.
    Once {
        /// Only this connector.
        #[arg(long)]
        connector: Option<String>,
    },
    /// Test a connector's connectivity and credentials with the cheapest
    /// request its API offers, and explain any failure.
    Test {
        /// The connector's `name` in the configuration.
        name: String,
    },
    /// Search stored records.
    ///
    /// QUERY: `field:value` terms on dotted paths (a list matches if any
    /// element does; strings compare case-insensitively; `*` in a value is a
    /// wildcard; `field:*` means the field exists; quote values with spaces),
    /// joined with AND (or just spaces), OR, NOT (or a leading `-`) and
    /// parentheses. `*` alone matches everything; a bare word matches any
    /// text in the record.
    ///
    /// Examples: 'msg_class:proofpoint_tap_event',
    /// 'event_type:clickPermitted AND tenant_name:acme',
    /// 'msg_class:proofpoint_tap_event AND (event_type:clickPermitted OR event_type:messageDelivered)',
    /// 'email.sender.address:"x@example.com"'.
    Search {
        /// The index to search.
        #[arg(long, default_value = "syslog", value_parser = ["syslog", "alerts", "quarantine", "actions"])]
        index: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Ndjson)]
        format: Format,
        /// Print only the number of matching records.
        #[arg(long)]
        count: bool,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<usize>,
        /// Only this tenant's records.
        #[arg(long)]
        tenant: Option<String>,
        /// Only records whose `timestamp` is at or after this time: RFC 3339
        /// or a span back from now (30m, 24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only records whose `timestamp` is before this time (same forms).
        #[arg(long)]
        until: Option<String>,
        /// The query (several arguments are joined with AND).
        #[arg(required = true)]
        query: Vec<String>,
    },
    /// Check the configuration and every connector's component-specific keys.
    Check,
    /// Each connector's state: last collection, its outcome and counts,
    /// checkpoint, records stored, last error.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t = StatusFormat::Table)]
        format: StatusFormat,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum StatusFormat {
    Table,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// One JSON record per line.
    Ndjson,
    /// An aligned table of the main fields.
    Table,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(advice) = dphost::store::storage_fault_advice(&e) {
                eprintln!("what to do: {advice}");
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Run {
                admin,
                admin_token_file,
            } => {
                let admin = admin
                    .map(|addr| dphost::admin::AdminOptions::new(addr, admin_token_file.as_deref()))
                    .transpose()?;
                commands::run(&cli.config, admin).await
            }
            Command::Once { connector } => commands::once(&cli.config, connector.as_deref()).await,
            Command::Test { name } => commands::test(&cli.config, &name).await,
            Command::Check => commands::check(&cli.config).await,
            Command::Status { format } => {
                commands::status(&cli.config, format == StatusFormat::Json)
            }
            Command::Search {
                index,
                format,
                count,
                limit,
                tenant,
                since,
                until,
                query,
            } => commands::search(
                &cli.config,
                &commands::SearchRequest {
                    index,
                    format: match format {
                        Format::Ndjson => commands::OutputFormat::Ndjson,
                        Format::Table => commands::OutputFormat::Table,
                    },
                    count_only: count,
                    limit,
                    tenant,
                    since,
                    until,
                    query: query.join(" "),
                },
            ),
        }
    })
}

fn init_logging(filter: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(filter).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}
