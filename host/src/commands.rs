//! The CLI's subcommands. Each returns the process exit code: 0 success,
//! 1 a connector failed, (2 for a host error, from `main`).

use crate::admin::AdminOptions;
use crate::config::{Config, ConnectorConfig};
use crate::runtime::{CallReport, Operation, Progress, ProgressObserver, Runtime};
use crate::scheduler;
use crate::search::{parse_time_bound, Query};
use crate::store::{Index, Store};
use crate::validate;
use anyhow::{bail, Result};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Ndjson,
    Table,
}

pub async fn run(config_path: &Path, admin: Option<AdminOptions>) -> Result<ExitCode> {
    let config = Arc::new(Config::load(config_path)?);
    if config.connectors.is_empty() && config.outputs.is_empty() {
        bail!(
            "{} configures no [[connector]] and no [[output]]: nothing to run",
            config_path.display()
        );
    }
    let runtime = Arc::new(Runtime::new(&config)?);
    // Nothing runs until the whole configuration is valid.
    let mut problems = validate::problems(&config, &runtime).await;
    if problems.is_empty() {
        problems = validate::identity_problems(&config, &runtime.store, true)?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
    }
    if !problems.is_empty() {
        bail!(
            "{}\nnothing was started: fix these (`dphost check` lists them) and start again",
            validate::report(&config, &problems)
        );
    }
    // Response actions: performed as soon as the outbox has them (polled).
    let worker = crate::response::worker::Worker::new(config.clone(), runtime.store.clone())?;
    let worker = tokio::spawn(worker.run_forever(std::time::Duration::from_secs(5)));
    scheduler::run(config, runtime, admin).await?;
    worker.abort();
    Ok(ExitCode::SUCCESS)
}

pub async fn once(config_path: &Path, only: Option<&str>) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let selected: Vec<ConnectorConfig> = match only {
        Some(name) => vec![config.connector(name)?.clone()],
        None => config.connectors.clone(),
    };
    if selected.is_empty() {
        bail!("{} configures no [[connector]]", config_path.display());
    }
    let runtime = Arc::new(Runtime::new(&config)?);
    // Every configured connector, not only the selected ones: the names are
    // claimed together or not at all.
    let problems: Vec<String> = validate::identity_problems(&config, &runtime.store, true)?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if !problems.is_empty() {
        bail!(
            "{}\nnothing was collected: fix these and start again",
            validate::report(&config, &problems)
        );
    }
    // On a shared store, only connectors no other host holds are collected
    // here, under leases of this process (renewed while it runs).
    let leases = crate::leases::Leases::new(
        runtime.store.clone(),
        config.host.lease_owner(),
        config.host.lease_secs,
        true,
    );
    let (stop_leases, stop_rx) = tokio::sync::watch::channel(false);
    let mut selected = selected;
    let mut skipped = Vec::new();
    let mut renewing = None;
    if leases.shared() {
        let names: Vec<String> = selected.iter().map(|c| c.name.clone()).collect();
        leases.round(names.clone(), Vec::new()).await?;
        renewing = Some(tokio::spawn(
            leases
                .clone()
                .keep(move || (names.clone(), Vec::new()), stop_rx),
        ));
        let all = runtime.store.leases()?;
        selected.retain(|c| {
            if leases.fence(&c.name).is_some() {
                return true;
            }
            let holder = all
                .iter()
                .find(|l| l.connector == c.name)
                .and_then(|l| l.owner.clone())
                .unwrap_or_else(|| "another host".into());
            skipped.push(format!(
                "{} (tenant {}): skipped: dphost host {holder} holds its lease and collects it",
                c.name, c.tenant
            ));
            false
        });
    }
    let permits = Arc::new(crate::slots::RunSlots::new(&config.host));
    // Progress bars draw only on a terminal; in scripts and CI they are hidden.
    let bars = indicatif::MultiProgress::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in selected.into_iter().enumerate() {
        let (runtime, permits) = (runtime.clone(), permits.clone());
        let fence = leases.fence(&c.name).flatten();
        let bar = bars.add(progress_bar(&c.name));
        tasks.spawn(async move {
            let _slot = permits.acquire(&c.tenant).await;
            let started = std::time::Instant::now();
            let observer_bar = bar.clone();
            let observer: ProgressObserver = Arc::new(move |p: Progress| {
                observer_bar.set_length(p.total as u64);
                observer_bar.set_position(p.done as u64);
                let rate = p.items as f64 / started.elapsed().as_secs_f64().max(0.001);
                observer_bar.set_message(format!("{} events, {rate:.0}/s", p.items));
            });
            let report = runtime
                .call_fenced(&c, Operation::Collect, Some(observer), fence)
                .await;
            bar.finish_and_clear();
            (i, report)
        });
    }
    let mut reports: Vec<(usize, CallReport)> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        reports.push(r?);
    }
    reports.sort_by_key(|(i, _)| *i);
    // Renewals end before the leases go back: a round still in flight
    // would take them again after the release.
    let _ = stop_leases.send(true);
    if let Some(task) = renewing {
        let _ = task.await;
    }
    leases.release_all().await;
    let mut failed = 0;
    {
        let mut out = std::io::stdout().lock();
        for line in &skipped {
            writeln!(out, "{line}")?;
        }
        for (_, r) in &reports {
            writeln!(out, "{}", describe_collect(r))?;
            if r.result.is_err() {
                failed += 1;
            }
        }
        out.flush()?;
    }
    crate::response::fault_point("after-collect");
    // Then the response actions those runs queued (and any still due).
    let worker =
        crate::response::worker::Worker::new(Arc::new(config.clone()), runtime.store.clone())?;
    let actions = worker.pass().await?;
    let mut out = std::io::stdout().lock();
    if !actions.is_empty() {
        writeln!(out, "response actions: {}", actions.describe())?;
        for e in &actions.errors {
            writeln!(out, "  problem: {e}")?;
        }
    }
    if !actions.errors.is_empty() {
        writeln!(out, "{} response action problem(s)", actions.errors.len())?;
        return Ok(ExitCode::from(1));
    }
    if failed > 0 {
        writeln!(out, "{failed} of {} connector(s) failed", reports.len())?;
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(name: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:.bold} [{bar:30}] {pos}/{len} windows  {msg}  {elapsed}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());
    bar
}

/// One paragraph per connector: what it collected, or why it failed.
fn describe_collect(r: &CallReport) -> String {
    let head = format!("{} (tenant {})", r.connector, r.tenant);
    match &r.result {
        Ok(summary) => {
            let mut line = format!(
                "{head}: ok in {:.1?} — {} new record(s), {} already stored, {} request(s), peak memory {:.1} MiB",
                r.elapsed,
                r.sink.written,
                r.sink.duplicates,
                r.requests,
                r.peak_memory as f64 / (1 << 20) as f64
            );
            if let Ok(s) = serde_json::from_str::<serde_json::Value>(summary) {
                if let Some(by_type) = s.get("by_type").and_then(|v| v.as_object()) {
                    let parts: Vec<String> =
                        by_type.iter().map(|(k, v)| format!("{k} {v}")).collect();
                    if !parts.is_empty() {
                        line.push_str(&format!("\n  events by type: {}", parts.join(", ")));
                    }
                }
                for key in ["quarantined", "threats", "checkpoint"] {
                    if let Some(v) = s.get(key).filter(|v| !v.is_null()) {
                        line.push_str(&format!(
                            "\n  {key}: {}",
                            v.as_str().map(str::to_string).unwrap_or(v.to_string())
                        ));
                    }
                }
            }
            if r.sink.filtered > 0 {
                line.push_str(&format!("\n  dropped by log filters: {}", r.sink.filtered));
            }
            if let Some(w) = &r.last_warning {
                line.push_str(&format!("\n  last warning: {w}"));
            }
            line
        }
        Err(f) => format!(
            "{head}: FAILED ({}) after {:.1?}: {f}",
            f.status(),
            r.elapsed
        ),
    }
}

pub async fn test(config_path: &Path, name: &str) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let connector = config.connector(name)?.clone();
    let runtime = Runtime::new(&config)?;
    let report = runtime.call(&connector, Operation::TestConnection).await;
    match &report.result {
        Ok(message) => {
            println!("{name}: connection test succeeded: {message}");
            Ok(ExitCode::SUCCESS)
        }
        Err(f) => {
            println!("{name}: connection test failed ({}): {f}", f.status());
            Ok(ExitCode::from(1))
        }
    }
}

pub async fn check(config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let runtime = Runtime::new(&config)?;
    let mut bad = 0;
    // Read only: `check` records no identity.
    let identity = validate::identity_problems(&config, &runtime.store, false)?;
    for c in &config.connectors {
        let mut problems = validate::connector_problems(&config, &runtime, c).await;
        problems.extend(
            identity
                .iter()
                .filter(|(name, _)| *name == c.name)
                .map(|(_, p)| p.clone()),
        );
        if problems.is_empty() {
            println!("{}: ok", c.name);
        } else {
            bad += 1;
            for p in problems {
                println!("{}: {p}", config.path.display());
            }
        }
    }
    for o in &config.outputs {
        println!("output {}: ok ({})", o.name, o.destination());
    }
    println!(
        "{}: {} connector(s), {} with problems",
        config_path.display(),
        config.connectors.len(),
        bad
    );
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What `dphost search` was asked.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub index: String,
    pub format: OutputFormat,
    pub count_only: bool,
    pub limit: Option<usize>,
    pub tenant: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub query: String,
}

pub fn search(config_path: &Path, req: &SearchRequest) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let index = Index::parse(&req.index)?;
    let query = Query::parse(&req.query)?;
    let now_ms = config.host.clock().now_ms()?;
    let bound = |t: &Option<String>| {
        t.as_deref()
            .map(|t| parse_time_bound(t, now_ms))
            .transpose()
    };
    let filter = query.scan_filter(req.tenant.clone(), bound(&req.since)?, bound(&req.until)?);
    let (format, count_only, limit) = (req.format, req.count_only, req.limit);
    let store = Store::for_host(&config.host)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut matched = 0usize;
    let mut rows = Vec::new();
    store.scan(index, &filter, |rec| {
        let Ok(body) = serde_json::from_str::<serde_json::Value>(&rec.body) else {
            return Ok(true);
        };
        if !query.matches(&body) {
            return Ok(true);
        }
        matched += 1;
        if !count_only {
            match format {
                OutputFormat::Ndjson => writeln!(out, "{}", rec.body)?,
                OutputFormat::Table => rows.push(table_row(&rec.connector, &rec.id, &body)),
            }
        }
        Ok(limit.is_none_or(|l| matched < l))
    })?;
    if count_only {
        writeln!(out, "{matched}")?;
    } else if format == OutputFormat::Table {
        write_table(&mut out, &rows)?;
        writeln!(out, "{matched} record(s)")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

const TABLE_HEADER: [&str; 6] = [
    "TIME",
    "TENANT",
    "CONNECTOR",
    "MSG_CLASS",
    "EVENT_TYPE",
    "ID",
];

fn table_row(connector: &str, id: &str, body: &serde_json::Value) -> [String; 6] {
    let text = |k: &str| {
        body.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("-")
            .to_string()
    };
    let time = body
        .get("timestamp")
        .and_then(|v| v.as_i64())
        .and_then(|ms| time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into());
    [
        time,
        text("tenant_name"),
        connector.to_string(),
        text("msg_class"),
        text("event_type"),
        id.to_string(),
    ]
}

fn write_table(out: &mut impl Write, rows: &[[String; 6]]) -> std::io::Result<()> {
    let columns = crate::table::Columns::fit(TABLE_HEADER, rows);
    writeln!(out, "{}", columns.line(TABLE_HEADER))?;
    for row in rows {
        writeln!(out, "{}", columns.row(row))?;
    }
    Ok(())
}

/// `dphost status`: one row per configured connector, from the store.
pub fn status(config_path: &Path, json: bool) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let store = Store::for_host(&config.host)?;
    let now_ms = config.host.clock().now_ms()?;
    let status = crate::status::host(&config, &store, now_ms)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
    } else {
        write!(out, "{}", crate::status::table(&status.connectors))?;
        write!(out, "{}", crate::status::outputs_table(&status.outputs))?;
    }
    Ok(ExitCode::SUCCESS)
}
