//! What `GET /metrics` exposes, in the OpenMetrics text format that
//! Prometheus scrapes.
//!
//! Counters are fed by each finished run (`observe`); gauges that describe
//! the store (request budget used) are read when scraped. Label sets stay
//! per connector, except the histograms, which are per operation so that
//! thousands of tenants do not multiply the buckets.

use crate::config::Config;
use crate::runtime::CallReport;
use crate::store::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorLabels {
    connector: String,
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    connector: String,
    tenant: String,
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    connector: String,
    tenant: String,
    event_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputLabels {
    output: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    connector: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    failures: Family<RunLabels, Counter>,
    events: Family<EventLabels, Counter>,
    records_written: Family<ConnectorLabels, Counter>,
    duplicates: Family<ConnectorLabels, Counter>,
    alerts: Family<ConnectorLabels, Counter>,
    quarantined: Family<ConnectorLabels, Counter>,
    filtered: Family<ConnectorLabels, Counter>,
    requests: Family<ConnectorLabels, Counter>,
    peak_memory: Family<ConnectorLabels, Gauge<f64, AtomicU64>>,
    run_duration: HistogramFamily<OperationLabels>,
    instance_memory: HistogramFamily<OperationLabels>,
    schedule_lag: Histogram,
    running: Gauge,
    budget_used: Family<PoolLabels, Gauge>,
    forward_pending: Family<OutputLabels, Gauge>,
    forward_delivered: Family<OutputLabels, Gauge>,
    forward_lag: Family<OutputLabels, Gauge<f64, AtomicU64>>,
    leases_held: Gauge,
    lease_hosts: Gauge,
    lease_share: Gauge,
    lease_acquired: Gauge,
    lease_released: Gauge,
    lease_refused: Gauge,
    connector_lease: Family<LeaseLabels, Gauge>,
    /// Serialises encoding with the scrape-time gauge refresh.
    scrape: Mutex<()>,
}

fn duration_histogram() -> Histogram {
    // 10 ms .. ~3 h
    Histogram::new(exponential_buckets(0.01, 4.0, 10))
}

fn memory_histogram() -> Histogram {
    // 1 MiB .. 4 GiB
    Histogram::new(exponential_buckets(1048576.0, 4.0, 7))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("dphost");
        let m = Metrics {
            runs: Family::default(),
            failures: Family::default(),
            events: Family::default(),
            records_written: Family::default(),
            duplicates: Family::default(),
            alerts: Family::default(),
            quarantined: Family::default(),
            filtered: Family::default(),
            requests: Family::default(),
            peak_memory: Family::default(),
            run_duration: Family::new_with_constructor(duration_histogram),
            instance_memory: Family::new_with_constructor(memory_histogram),
            schedule_lag: Histogram::new(exponential_buckets(0.001, 4.0, 10)),
            running: Gauge::default(),
            budget_used: Family::default(),
            forward_pending: Family::default(),
            forward_delivered: Family::default(),
            forward_lag: Family::default(),
            leases_held: Gauge::default(),
            lease_hosts: Gauge::default(),
            lease_share: Gauge::default(),
            lease_acquired: Gauge::default(),
            lease_released: Gauge::default(),
            lease_refused: Gauge::default(),
            connector_lease: Family::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "runs",
            "Connector calls by operation and outcome",
            m.runs.clone(),
        );
        registry.register(
            "run_failures",
            "Connector calls that did not succeed, by outcome",
            m.failures.clone(),
        );
        registry.register(
            "events_collected",
            "Events collected, by event type, as the connector counted them",
            m.events.clone(),
        );
        registry.register(
            "records_written",
            "Records newly stored (all indexes)",
            m.records_written.clone(),
        );
        registry.register(
            "records_duplicate",
            "Records offered again and already stored (look-back, retries)",
            m.duplicates.clone(),
        );
        registry.register(
            "alerts_created",
            "Alerts created, as the connector counted them",
            m.alerts.clone(),
        );
        registry.register(
            "records_quarantined",
            "Records the connector could not parse, kept in the quarantine index",
            m.quarantined.clone(),
        );
        registry.register(
            "records_filtered",
            "Syslog records dropped by the connector's log filters",
            m.filtered.clone(),
        );
        registry.register(
            "api_requests",
            "HTTP requests the connector sent to its API",
            m.requests.clone(),
        );
        registry.register(
            "instance_peak_memory_bytes",
            "Peak linear memory of the connector's sandbox in its last run",
            m.peak_memory.clone(),
        );
        registry.register(
            "run_duration_seconds",
            "Wall-clock duration of connector calls",
            m.run_duration.clone(),
        );
        registry.register(
            "instance_memory_bytes",
            "Peak linear memory of sandboxes, per call",
            m.instance_memory.clone(),
        );
        registry.register(
            "schedule_lag_seconds",
            "How late scheduled runs started (waiting for a free run slot)",
            m.schedule_lag.clone(),
        );
        registry.register(
            "runs_in_progress",
            "Connector runs executing now",
            m.running.clone(),
        );
        registry.register(
            "request_budget_used",
            "Requests taken from each vendor rate-limit pool in the last 24 hours",
            m.budget_used.clone(),
        );
        registry.register(
            "forward_pending_records",
            "Records each output has not delivered yet",
            m.forward_pending.clone(),
        );
        registry.register(
            "forward_delivered_records",
            "Records each output's destination accepted (re-sends included)",
            m.forward_delivered.clone(),
        );
        registry.register(
            "forward_lag_seconds",
            "How long the oldest undelivered record of each output has waited",
            m.forward_lag.clone(),
        );
        for (name, help, g) in [
            (
                "leases_held",
                "Connector leases this host holds (all connectors on an unshared store)",
                &m.leases_held,
            ),
            (
                "lease_hosts",
                "Hosts alive on the store, this one included",
                &m.lease_hosts,
            ),
            (
                "lease_share",
                "The most connectors this host takes while the other hosts have room",
                &m.lease_share,
            ),
            (
                "lease_acquired",
                "Connector leases this host took since it started",
                &m.lease_acquired,
            ),
            (
                "lease_released",
                "Connector leases this host gave up or lost since it started",
                &m.lease_released,
            ),
            (
                "lease_commits_refused",
                "Runs of this host whose commit was refused: another host held the lease (fencing)",
                &m.lease_refused,
            ),
        ] {
            registry.register(name, help, g.clone());
        }
        registry.register(
            "connector_lease",
            "1 for each connector whose lease this host holds",
            m.connector_lease.clone(),
        );
        Metrics { registry, ..m }
    }

    /// `render`, with this host's lease state.
    pub fn render_with_leases(
        &self,
        config: &Config,
        store: &Store,
        now_ms: i64,
        leases: &crate::leases::LeaseState,
    ) -> anyhow::Result<String> {
        {
            let _one_at_a_time = self.scrape.lock().expect("metrics lock poisoned");
            self.leases_held.set(leases.held.len() as i64);
            self.lease_hosts.set(leases.hosts as i64);
            self.lease_share.set(leases.share as i64);
            self.lease_acquired.set(leases.acquired_total as i64);
            self.lease_released.set(leases.released_total as i64);
            self.lease_refused.set(leases.lost_total as i64);
            self.connector_lease.clear();
            if leases.shared {
                for c in leases.held.keys() {
                    self.connector_lease
                        .get_or_create(&LeaseLabels {
                            connector: c.clone(),
                        })
                        .set(1);
                }
            }
        }
        self.render(config, store, now_ms)
    }

    /// Counts one finished call.
    pub fn observe(&self, r: &CallReport) {
        let who = ConnectorLabels {
            connector: r.connector.clone(),
            tenant: r.tenant.clone(),
        };
        let run = RunLabels {
            connector: r.connector.clone(),
            tenant: r.tenant.clone(),
            operation: r.operation.as_str().to_string(),
            outcome: r.status().to_string(),
        };
        self.runs.get_or_create(&run).inc();
        if r.result.is_err() {
            self.failures.get_or_create(&run).inc();
        }
        let op = OperationLabels {
            operation: r.operation.as_str().to_string(),
        };
        self.run_duration
            .get_or_create(&op)
            .observe(r.elapsed.as_secs_f64());
        if r.peak_memory > 0 {
            self.instance_memory
                .get_or_create(&op)
                .observe(r.peak_memory as f64);
            self.peak_memory
                .get_or_create(&who)
                .set(r.peak_memory as f64);
        }
        self.records_written
            .get_or_create(&who)
            .inc_by(r.sink.written);
        self.duplicates
            .get_or_create(&who)
            .inc_by(r.sink.duplicates);
        self.filtered.get_or_create(&who).inc_by(r.sink.filtered);
        self.requests.get_or_create(&who).inc_by(r.requests);
        // What the connector reports about its own work (a JSON summary).
        let Some(summary) = r
            .result
            .as_ref()
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        else {
            return;
        };
        let count = |key: &str| summary.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
        self.alerts
            .get_or_create(&who)
            .inc_by(count("alerts_created"));
        self.quarantined
            .get_or_create(&who)
            .inc_by(count("quarantined"));
        if let Some(by_type) = summary.get("by_type").and_then(|v| v.as_object()) {
            for (event_type, n) in by_type {
                let labels = EventLabels {
                    connector: r.connector.clone(),
                    tenant: r.tenant.clone(),
                    event_type: event_type.clone(),
                };
                self.events
                    .get_or_create(&labels)
                    .inc_by(n.as_u64().unwrap_or(0));
            }
        }
    }

    /// A scheduled run started `lag` after it was due.
    pub fn schedule_lag(&self, lag: std::time::Duration) {
        self.schedule_lag.observe(lag.as_secs_f64());
    }

    pub fn run_started(&self) {
        self.running.inc();
    }

    pub fn run_ended(&self) {
        self.running.dec();
    }

    /// The exposition text, with store-backed gauges refreshed.
    pub fn render(&self, config: &Config, store: &Store, now_ms: i64) -> anyhow::Result<String> {
        let _one_at_a_time = self.scrape.lock().expect("metrics lock poisoned");
        for o in crate::forward::output_status(store, &config.outputs, now_ms)? {
            let labels = OutputLabels { output: o.name };
            self.forward_pending
                .get_or_create(&labels)
                .set(o.pending as i64);
            self.forward_delivered
                .get_or_create(&labels)
                .set(o.delivered as i64);
            self.forward_lag
                .get_or_create(&labels)
                .set(o.lag_ms.unwrap_or(0) as f64 / 1000.0);
        }
        // A pool without requests in the window has no row: cleared first,
        // it drops out instead of keeping its last value.
        self.budget_used.clear();
        for (pool, used) in store.budget_used(now_ms - 86_400_000)? {
            self.budget_used
                .get_or_create(&PoolLabels { pool })
                .set(used);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The content type of `render`'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_idle_for_a_day_leaves_the_budget_gauge() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let config = Config::parse("", std::path::Path::new("/etc/dphost/dphost.toml")).unwrap();
        let day = 86_400_000;
        let t = 1_764_324_000_000;
        for at in [t, t + 1_000] {
            store.budget_take("busy", 100, day, at).unwrap().unwrap();
        }
        store.budget_take("idle", 100, day, t).unwrap().unwrap();
        let m = Metrics::new();
        let text = m.render(&config, &store, t + 2_000).unwrap();
        assert!(
            text.contains("dphost_request_budget_used{pool=\"busy\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("dphost_request_budget_used{pool=\"idle\"} 1\n"),
            "{text}"
        );
        // A day later only the second "busy" request is in the window.
        let text = m.render(&config, &store, t + day + 500).unwrap();
        assert!(
            text.contains("dphost_request_budget_used{pool=\"busy\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("pool=\"idle\""), "{text}");
    }
}
