//! `dphost run`: every connector on its own cadence, runs of different
//! tenants concurrently (bounded), one run per connector at a time, a
//! configuration reload on SIGHUP, and a clean shutdown on Ctrl-C or SIGTERM.
//!
//! Shutdown never leaves a half-written batch: each commit is one
//! transaction. Runs in progress get `shutdown_grace_secs` to finish; after
//! that they are cancelled, which loses only uncommitted work that the next
//! run collects again from the last checkpoint.
//!
//! A reload applies only a configuration that is valid as a whole, and only
//! if it keeps each existing connector's tenant and component (its data is
//! keyed by them) and the `[host]` table; otherwise the running
//! configuration stays and the log says why.

use crate::admin::AdminOptions;
use crate::config::{Config, ConnectorConfig};
use crate::metrics::Metrics;
use crate::runtime::{CallReport, Operation, Runtime};
use crate::slots::RunSlots;
use crate::store::now_ms;
use anyhow::{bail, Result};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What a running host shares between its scheduler and its admin API.
pub struct Host {
    pub runtime: Arc<Runtime>,
    pub metrics: Metrics,
    /// Which connectors this host runs (all of them, unless several hosts
    /// share a PostgreSQL store).
    pub leases: Arc<crate::leases::Leases>,
    config: RwLock<Arc<Config>>,
    running: Mutex<HashSet<String>>,
    /// Connection tests from the admin API run one at a time.
    pub test_slot: tokio::sync::Mutex<()>,
}

impl Host {
    pub fn new(config: Arc<Config>, runtime: Arc<Runtime>) -> Host {
        let leases = crate::leases::Leases::new(
            runtime.store.clone(),
            config.host.lease_owner(),
            config.host.lease_secs,
            false,
        );
        Host {
            runtime,
            leases,
            metrics: Metrics::new(),
            config: RwLock::new(config),
            running: Mutex::new(HashSet::new()),
            test_slot: tokio::sync::Mutex::new(()),
        }
    }

    /// The configuration in force (the last one loaded successfully).
    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock poisoned").clone()
    }

    pub fn is_running(&self, connector: &str) -> bool {
        self.running
            .lock()
            .expect("running lock poisoned")
            .contains(connector)
    }

    pub fn running_count(&self) -> usize {
        self.running.lock().expect("running lock poisoned").len()
    }

    pub fn running_names(&self) -> Vec<String> {
        self.running
            .lock()
            .expect("running lock poisoned")
            .iter()
            .cloned()
            .collect()
    }

    /// Calls `operation` of `connector`, counting it in the metrics and the log.
    pub async fn call(&self, connector: &ConnectorConfig, operation: Operation) -> CallReport {
        self.call_fenced(connector, operation, None).await
    }

    /// `call` whose commits check the connector lease `fence`.
    pub async fn call_fenced(
        &self,
        connector: &ConnectorConfig,
        operation: Operation,
        fence: Option<crate::store::Fence>,
    ) -> CallReport {
        self.running
            .lock()
            .expect("running lock poisoned")
            .insert(connector.name.clone());
        self.metrics.run_started();
        let report = self
            .runtime
            .call_fenced(connector, operation, None, fence)
            .await;
        self.metrics.run_ended();
        self.running
            .lock()
            .expect("running lock poisoned")
            .remove(&connector.name);
        self.metrics.observe(&report);
        log_report(&report);
        report
    }
}

/// One connector's loop: fed its configuration (None stops it).
type LoopFeed = watch::Sender<Option<ConnectorConfig>>;

pub async fn run(
    config: Arc<Config>,
    runtime: Arc<Runtime>,
    admin: Option<AdminOptions>,
) -> Result<()> {
    let host = Arc::new(Host::new(config.clone(), runtime));
    let permits = Arc::new(RunSlots::new(&config.host));
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(options) = admin {
        crate::admin::start(options, host.clone(), stop_rx.clone()).await?;
    }
    let mut loops: HashMap<String, LoopFeed> = HashMap::new();
    let mut tasks = JoinSet::new();
    let spawn = |c: &ConnectorConfig, first_offset: Duration, tasks: &mut JoinSet<()>| {
        let (feed, rx) = watch::channel(Some(c.clone()));
        tasks.spawn(connector_loop(
            rx,
            host.clone(),
            permits.clone(),
            stop_rx.clone(),
            first_offset,
        ));
        feed
    };
    // Leases first: on SQLite this round hands every connector to this
    // host before any loop starts; on a shared store it takes this host's
    // share (and the loops wait for theirs).
    let wanted = {
        let host = host.clone();
        move || {
            let names = host
                .config()
                .connectors
                .iter()
                .filter(|c| c.enabled)
                .map(|c| c.name.clone())
                .collect();
            (names, host.running_names())
        }
    };
    let (names, _) = wanted();
    if let Err(e) = host.leases.join(names).await {
        if !host.leases.shared() {
            return Err(e);
        }
        tracing::warn!("cannot take connector leases yet: {e:#}; retrying");
    }
    tasks.spawn(host.leases.clone().keep(wanted, stop_rx.clone()));
    let enabled: Vec<&ConnectorConfig> = config.connectors.iter().filter(|c| c.enabled).collect();
    for (i, c) in enabled.iter().enumerate() {
        let offset = first_run_offset(c, i, enabled.len(), config.host.max_concurrent_runs);
        loops.insert(c.name.clone(), spawn(c, offset, &mut tasks));
    }
    // Each [[output]] forwards on its own, whatever the connectors do.
    for output in config.outputs.iter().cloned() {
        let store = host.runtime.store.clone();
        tasks.spawn(crate::forward::run_output(store, output, stop_rx.clone()));
    }
    tracing::info!(
        "scheduler started: {} connector(s) ({} disabled), at most {} runs at once ({} per tenant), store {}{}; Ctrl-C stops, SIGHUP reloads {}",
        loops.len(),
        config.connectors.len() - loops.len(),
        config.host.max_concurrent_runs,
        config.host.runs_per_tenant(),
        host.runtime.store.describe(),
        if host.leases.shared() {
            format!(" shared as host `{}` (leases of {} s)", host.leases.host, config.host.lease_secs)
        } else {
            String::new()
        },
        config.path.display()
    );

    let mut hangup = hangup_signal()?;
    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            _ = hangup.recv() => {
                match reload(&host).await {
                    Ok(new) => {
                        apply(&new, &mut loops, &mut tasks, &spawn);
                        *host.config.write().expect("config lock poisoned") = new;
                        host.leases.kick();
                    }
                    Err(e) => tracing::error!(
                        "configuration reload refused, still running the previous configuration: {e:#}"
                    ),
                }
            }
            Some(_) = tasks.join_next() => {}
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
    host.leases.release_all().await;
    tracing::info!("stopped");
    Ok(())
}

/// Reads the configuration file again and checks it may replace the
/// running one.
async fn reload(host: &Host) -> Result<Arc<Config>> {
    let old = host.config();
    let new = Config::load(&old.path)?;
    check_reload(&old, &new, host.runtime.max_memory_mib())?;
    let mut problems = crate::validate::problems(&new, &host.runtime).await;
    if problems.is_empty() {
        // Against the store, not only the previous file: a connector removed
        // and added again, or changed across a restart, is caught too.
        problems = crate::validate::identity_problems(&new, &host.runtime.store, true)?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
    }
    if !problems.is_empty() {
        bail!("{}", crate::validate::report(&new, &problems));
    }
    Ok(Arc::new(new))
}

/// What a reload may not change while the host runs.
pub fn check_reload(old: &Config, new: &Config, max_memory_mib: u64) -> Result<()> {
    let mut problems = Vec::new();
    if old.host != new.host {
        problems.push(
            "[host] settings cannot change while dphost runs: restart it to apply them".to_string(),
        );
    }
    if old.ad != new.ad {
        problems.push(
            "[[ad]] targets cannot change while dphost runs (the response worker holds them): restart it to apply them".to_string(),
        );
    }
    if old.outputs != new.outputs {
        problems.push(
            "[[output]] tables cannot change while dphost runs: restart it to apply them"
                .to_string(),
        );
    }
    for c in &new.connectors {
        if let Some(o) = old.connectors.iter().find(|o| o.name == c.name) {
            for (key, was, now) in [
                ("tenant", &o.tenant, &c.tenant),
                ("component", &o.component, &c.component),
            ] {
                if was != now {
                    problems.push(format!(
                        "{}connector `{}`: `{key}` cannot change from `{was}` to `{now}`: its data is kept under it; add a connector with a new name instead",
                        new.at(&c.name, key),
                        c.name
                    ));
                }
            }
        }
        if c.limits.memory_mib > max_memory_mib {
            problems.push(format!(
                "{}connector `{}`: limits.memory_mib = {} is above the {max_memory_mib} MiB this host reserved at start: restart dphost to raise it",
                new.at(&c.name, "limits.memory_mib"),
                c.name,
                c.limits.memory_mib
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} cannot be applied:\n  - {}",
            new.path.display(),
            problems.join("\n  - ")
        );
    }
    Ok(())
}

/// Starts, updates and stops connector loops to match `new`.
fn apply(
    new: &Config,
    loops: &mut HashMap<String, LoopFeed>,
    tasks: &mut JoinSet<()>,
    spawn: &impl Fn(&ConnectorConfig, Duration, &mut JoinSet<()>) -> LoopFeed,
) {
    let wanted: HashMap<&str, &ConnectorConfig> = new
        .connectors
        .iter()
        .filter(|c| c.enabled)
        .map(|c| (c.name.as_str(), c))
        .collect();
    let (mut added, mut removed) = (0, 0);
    loops.retain(|name, feed| {
        if wanted.contains_key(name.as_str()) {
            return true;
        }
        // A run in progress finishes; the loop then ends.
        let _ = feed.send(None);
        removed += 1;
        false
    });
    for (name, c) in wanted {
        match loops.get(name) {
            Some(feed) => {
                let _ = feed.send(Some(c.clone()));
            }
            None => {
                loops.insert(name.to_string(), spawn(c, Duration::ZERO, tasks));
                added += 1;
            }
        }
    }
    tracing::info!(
        "configuration reloaded: {} connector(s) scheduled, {added} added, {removed} stopped",
        loops.len()
    );
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
    interval_of(connector).mul_f64(index as f64 / count as f64)
}

async fn connector_loop(
    mut feed: watch::Receiver<Option<ConnectorConfig>>,
    host: Arc<Host>,
    permits: Arc<RunSlots>,
    mut stop: watch::Receiver<bool>,
    first_offset: Duration,
) {
    let mut first_due = Instant::now() + first_offset;
    let mut last_start: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    let mut leases = host.leases.subscribe();
    let mut holding = false;
    let mut recorded_due: Option<i64> = None;
    loop {
        let Some(connector) = feed.borrow_and_update().clone() else {
            return;
        };
        leases.borrow_and_update();
        // Only the lease holder schedules and runs a connector.
        if host.leases.fence(&connector.name).is_none() {
            holding = false;
            tokio::select! {
                changed = leases.changed() => if changed.is_err() { return },
                changed = feed.changed() => if changed.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        }
        if !holding {
            holding = true;
            if host.leases.shared() {
                // Taken over (or first held): go on with the schedule the
                // store keeps, whichever host wrote it; a run the previous
                // holder did not finish is due now.
                let (store, name) = (host.runtime.store.clone(), connector.name.clone());
                let next = tokio::task::spawn_blocking(move || store.next_run(&name))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .flatten();
                let wait = next.map_or(first_offset, |ms| {
                    Duration::from_millis((ms - now_ms()).max(0) as u64)
                });
                first_due = Instant::now() + wait;
                last_start = None;
                retry_at = None;
                recorded_due = None;
            }
        }
        // Keep the cadence from the last run's start; a rate-limited
        // connector waits as long as the API asked.
        let interval = interval_of(&connector);
        let due = match last_start {
            None => first_due,
            Some(s) => (s + interval).max(retry_at.unwrap_or(s)),
        };
        let due_ms = now_ms() + due.saturating_duration_since(Instant::now()).as_millis() as i64;
        // Written when it changes (lease changes wake every loop).
        if recorded_due.is_none_or(|r| (r - due_ms).abs() > 1_000) {
            if let Err(e) = host.runtime.store.set_next_run(&connector.name, due_ms) {
                tracing::warn!(connector = %connector.name, "cannot record the next run: {e:#}");
            }
            recorded_due = Some(due_ms);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            changed = feed.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            changed = leases.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        let permit = tokio::select! {
            p = permits.acquire(&connector.tenant) => p,
            _ = stop.wait_for(|s| *s) => return,
        };
        // The lease may have gone while this run waited for a slot.
        let Some(fence) = host.leases.fence(&connector.name) else {
            continue;
        };
        let lag = Instant::now().saturating_duration_since(due);
        host.metrics.schedule_lag(lag);
        // `make bench` reads the schedule lag from these lines.
        tracing::debug!(
            target: "dphost::schedule",
            connector = %connector.name,
            lag_ms = lag.as_millis() as u64,
            "run starts"
        );
        last_start = Some(Instant::now());
        // A run in progress is not interrupted by the stop signal: the
        // scheduler's grace period bounds it instead.
        let report = host
            .call_fenced(&connector, Operation::Collect, fence)
            .await;
        drop(permit);
        if matches!(report.result, Err(crate::runtime::Failure::LeaseLost(_))) {
            host.leases.note_lost();
        }
        retry_at = report
            .result
            .as_ref()
            .err()
            .and_then(|f| f.retry_after())
            .map(|wait| Instant::now() + wait);
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

#[cfg(unix)]
fn hangup_signal() -> Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    Ok(signal(SignalKind::hangup())?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("/etc/dphost/dphost.toml")).unwrap()
    }

    const ONE: &str = r#"
        [[connector]]
        name = "a"
        tenant = "acme"
        component = "proofpoint_tap"
        host_url = "http://127.0.0.1:9"
    "#;

    #[test]
    fn reload_keeps_tenant_component_and_host() {
        let old = config(ONE);
        assert!(check_reload(
            &old,
            &config(&ONE.replace("http://127.0.0.1:9", "http://127.0.0.1:10")),
            256
        )
        .is_ok());
        let err = format!(
            "{:#}",
            check_reload(&old, &config(&ONE.replace("acme", "globex")), 256).unwrap_err()
        );
        assert!(
            err.contains("`tenant` cannot change from `acme` to `globex`"),
            "{err}"
        );
        assert!(err.contains("line 4: "), "{err}");
        let err = format!(
            "{:#}",
            check_reload(
                &old,
                &config(&format!("[host]\ndata_dir = \"x\"\n{ONE}")),
                256
            )
            .unwrap_err()
        );
        assert!(err.contains("[host] settings cannot change"), "{err}");
        let bigger = format!("{ONE}\n[connector.limits]\nmemory_mib = 512\n");
        let err = format!(
            "{:#}",
            check_reload(&old, &config(&bigger), 256).unwrap_err()
        );
        assert!(err.contains("restart dphost to raise it"), "{err}");
    }
}
