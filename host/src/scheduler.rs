//! `dphost run`: every connector on its own cadence, runs of different
//! tenants concurrently (bounded), one run per connector at a time, and a
//! clean shutdown on Ctrl-C or SIGTERM.
//!
//! Shutdown never leaves a half-written batch: each commit is one
//! transaction. Runs in progress get `shutdown_grace_secs` to finish; after
//! that they are cancelled, which loses only uncommitted work that the next
//! run collects again from the last checkpoint.

use crate::config::{Config, ConnectorConfig};
use crate::runtime::{CallReport, Operation, Runtime};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

pub async fn run(config: Arc<Config>, runtime: Arc<Runtime>) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(config.host.max_concurrent_runs));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for connector in config.connectors.iter().cloned() {
        tasks.spawn(connector_loop(
            connector,
            runtime.clone(),
            permits.clone(),
            stop_rx.clone(),
        ));
    }
    tracing::info!(
        "scheduler started: {} connector(s), at most {} runs at once; Ctrl-C stops",
        config.connectors.len(),
        config.host.max_concurrent_runs
    );

    tokio::select! {
        _ = shutdown_signal() => {}
        _ = async { while tasks.join_next().await.is_some() {} } => {
            tracing::warn!("every connector loop ended");
            return Ok(());
        }
    }
    tracing::info!(
        "stopping: waiting up to {} s for runs in progress to finish",
        config.host.shutdown_grace_secs
    );
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(config.host.shutdown_grace_secs);
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            "{} run(s) still in progress after the grace period were cancelled; their uncommitted work is collected again on the next start",
            tasks.len()
        );
        tasks.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn connector_loop(
    connector: ConnectorConfig,
    runtime: Arc<Runtime>,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let interval = interval_of(&connector);
    loop {
        let started = tokio::time::Instant::now();
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = stop.wait_for(|s| *s) => return,
        };
        // A run in progress is not interrupted by the stop signal: the
        // scheduler's grace period bounds it instead.
        let report = runtime.call(&connector, Operation::Collect).await;
        drop(permit);
        log_report(&report);
        // Keep the cadence from the run's start; a rate-limited connector
        // waits as long as the API asked.
        let mut next = started + interval;
        if let Some(wait) = report.result.as_ref().err().and_then(|f| f.retry_after()) {
            next = next.max(tokio::time::Instant::now() + wait);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Environment variable that replaces every connector's interval with this
/// many seconds: for tests and demos only (runs every few seconds).
pub const INTERVAL_SECS_ENV: &str = "DPHOST_INTERVAL_SECS";

fn interval_of(connector: &ConnectorConfig) -> Duration {
    match std::env::var(INTERVAL_SECS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(secs) if secs > 0 => Duration::from_secs(secs),
        _ => Duration::from_secs(connector.interval_min * 60),
    }
}

pub fn log_report(r: &CallReport) {
    match &r.result {
        Ok(summary) => tracing::info!(
            connector = %r.connector,
            tenant = %r.tenant,
            "{} ok in {:.1?}: {} written, {} duplicates, {} requests; {summary}",
            r.operation.as_str(),
            r.elapsed,
            r.sink.written,
            r.sink.duplicates,
            r.requests,
        ),
        Err(f) => tracing::warn!(
            connector = %r.connector,
            tenant = %r.tenant,
            "{} {} after {:.1?}: {f}",
            r.operation.as_str(),
            f.status(),
            r.elapsed,
        ),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("cannot listen for SIGTERM");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
