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
    let count = config.connectors.len();
    for (i, connector) in config.connectors.iter().cloned().enumerate() {
        let offset = first_run_offset(&connector, i, count, config.host.max_concurrent_runs);
        tasks.spawn(connector_loop(
            connector,
            runtime.clone(),
            permits.clone(),
            stop_rx.clone(),
            offset,
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

/// When a connector's first run starts, after the scheduler's start. With
/// more connectors than run slots, the first runs are spread evenly over
/// the connectors' interval (in configuration order), so each interval's
/// runs do not all fall due at the same instant and queue behind each
/// other; with few connectors every first run starts at once.
fn first_run_offset(
    connector: &ConnectorConfig,
    index: usize,
    count: usize,
    run_slots: usize,
) -> Duration {
    if count <= run_slots.max(1) {
        return Duration::ZERO;
    }
    let interval = Duration::from_secs(connector.interval_min * 60);
    interval.mul_f64(index as f64 / count as f64)
}

async fn connector_loop(
    connector: ConnectorConfig,
    runtime: Arc<Runtime>,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    first_offset: Duration,
) {
    let interval = Duration::from_secs(connector.interval_min * 60);
    let mut due = tokio::time::Instant::now() + first_offset;
    if !first_offset.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    loop {
        let started = tokio::time::Instant::now();
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = stop.wait_for(|s| *s) => return,
        };
        // Schedule lag: how late the run starts (waiting for a run slot
        // included); `make bench` reads it from these lines.
        tracing::debug!(
            target: "dphost::schedule",
            connector = %connector.name,
            lag_ms = tokio::time::Instant::now().saturating_duration_since(due).as_millis() as u64,
            "run starts"
        );
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
        due = next;
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
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
