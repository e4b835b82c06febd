//! Each connector's status, as `dphost status` and `GET /status` show it:
//! derived from the store (run history, counts, schedule), so it is the same
//! whether or not a `dphost run` is up, and survives restarts.
//!
//! State comes from the newest collection or connection test: a successful
//! `dphost test` (or `POST /connectors/{name}/test`) after failures shows
//! `ok` until the next collection says otherwise.

use crate::config::{Config, ConnectorConfig};
use crate::forward::OutputStatus;
use crate::response::outbox::ConnectorActions;
use crate::store::{Index, Store};
use crate::table::Columns;
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct ConnectorStatus {
    pub connector: String,
    pub tenant: String,
    pub component: String,
    /// ok, failing, rate-limited, disabled or never-run.
    pub state: &'static str,
    pub last_run_start: Option<String>,
    pub last_run_end: Option<String>,
    /// The newest collection's outcome word (ok, failed, rate-limited, ...).
    pub last_outcome: Option<String>,
    /// The newest failure's explanation and what to do, if the newest
    /// collection or test failed.
    pub last_error: Option<String>,
    pub last_success: Option<String>,
    pub last_test: Option<String>,
    pub last_test_outcome: Option<String>,
    pub records: u64,
    pub alerts: u64,
    pub quarantined: u64,
    /// As the connector counted them in its last successful run.
    pub filtered_last_run: Option<u64>,
    pub checkpoint: Option<String>,
    /// How far the checkpoint is behind now.
    pub lag_seconds: Option<i64>,
    /// When `dphost run` next starts it (as last scheduled).
    pub next_run: Option<String>,
    pub interval_min: u64,
    /// Response actions (e.g. disable user): counts by outcome and the
    /// latest audit record.
    pub actions: ConnectorActions,
    /// Which host runs it (a store several hosts share): its lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
    /// Only known to a running host (admin API): a run is executing now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
}

/// A connector's lease, as the store keeps it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LeaseStatus {
    /// The host that runs it (None: free, the next round gives it to one).
    pub owner: Option<String>,
    /// The fencing token: one more at every new holder.
    pub token: i64,
    /// Seconds until the lease runs out unless renewed (negative: expired).
    pub expires_in_secs: f64,
}

/// Everything `dphost status` shows: connectors, then forwarding outputs.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    pub connectors: Vec<ConnectorStatus>,
    pub outputs: Vec<OutputStatus>,
    /// Only from a running host (admin API): the leases it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leases: Option<crate::leases::LeaseState>,
}

pub fn host(config: &Config, store: &Store, now_ms: i64) -> Result<HostStatus> {
    let mut connectors = all(config, store, now_ms)?;
    // One read for every connector's lease (none on SQLite).
    let leases = store.leases()?;
    for c in &mut connectors {
        c.lease = leases
            .iter()
            .find(|l| l.connector == c.connector)
            .map(|l| LeaseStatus {
                owner: l.owner.clone(),
                token: l.token,
                expires_in_secs: (l.expires_ms - l.now_ms) as f64 / 1000.0,
            });
    }
    Ok(HostStatus {
        connectors,
        outputs: crate::forward::output_status(store, &config.outputs, now_ms)?,
        leases: None,
    })
}

/// The status of every configured connector.
pub fn all(config: &Config, store: &Store, now_ms: i64) -> Result<Vec<ConnectorStatus>> {
    config
        .connectors
        .iter()
        .map(|c| one(c, store, now_ms))
        .collect()
}

pub fn one(c: &ConnectorConfig, store: &Store, now_ms: i64) -> Result<ConnectorStatus> {
    // Each looked up on its own: any number of connection tests may follow
    // the last collection.
    let last_collect = store.newest_run(&c.name, &["collect"])?;
    let last_test = store.newest_run(&c.name, &["test-connection"])?;
    // The newest of the two decides the state.
    let decisive = store.newest_run(&c.name, &["collect", "test-connection"])?;
    let last_ok = store.last_ok_collect(&c.name)?;
    let summary: serde_json::Value = last_ok
        .as_ref()
        .and_then(|r| r.summary.as_deref())
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null);
    let state = if !c.enabled {
        "disabled"
    } else {
        match decisive.as_ref().map(|r| r.outcome.as_str()) {
            None => "never-run",
            Some("ok") => "ok",
            Some("rate-limited") => "rate-limited",
            Some(_) => "failing",
        }
    };
    let checkpoint = summary
        .get("checkpoint")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let lag_seconds = checkpoint
        .as_deref()
        .and_then(|c| {
            time::OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| (now_ms / 1000 - t.unix_timestamp()).max(0));
    Ok(ConnectorStatus {
        connector: c.name.clone(),
        tenant: c.tenant.clone(),
        component: c.component.clone(),
        state,
        last_run_start: last_collect.as_ref().map(|r| fmt_ms(r.started_ms)),
        last_run_end: last_collect.as_ref().map(|r| fmt_ms(r.ended_ms)),
        last_outcome: last_collect.map(|r| r.outcome),
        last_error: decisive.as_ref().and_then(|r| r.error.clone()),
        last_success: last_ok.as_ref().map(|r| fmt_ms(r.ended_ms)),
        last_test: last_test.as_ref().map(|r| fmt_ms(r.ended_ms)),
        last_test_outcome: last_test.map(|r| r.outcome),
        records: store.count(Index::Syslog, Some(&c.name))?,
        alerts: store.count(Index::Alerts, Some(&c.name))?,
        quarantined: store.count(Index::Quarantine, Some(&c.name))?,
        filtered_last_run: summary.get("filtered").and_then(|v| v.as_u64()),
        checkpoint,
        lag_seconds,
        next_run: if c.enabled {
            store.next_run(&c.name)?.map(fmt_ms)
        } else {
            None
        },
        interval_min: c.interval_min,
        actions: crate::response::outbox::summary(store, &c.name)?,
        lease: None,
        running: None,
    })
}

/// An aligned table with the main columns, and each last error below its row.
/// On a shared store the host holding each connector's lease takes the
/// checkpoint's column (`--format json` has both).
pub fn table(rows: &[ConnectorStatus]) -> String {
    let shared = rows.iter().any(|r| r.lease.is_some());
    let header = [
        "CONNECTOR",
        "TENANT",
        "STATE",
        "LAST RUN",
        "NEXT RUN",
        "RECORDS",
        "ALERTS",
        "QUARANTINED",
        if shared { "OWNER" } else { "CHECKPOINT" },
        "LAG",
    ];
    let dash = |v: Option<&String>| v.cloned().unwrap_or_else(|| "-".into());
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.connector.clone(),
                r.tenant.clone(),
                r.state.to_string(),
                dash(r.last_run_end.as_ref()),
                dash(r.next_run.as_ref()),
                r.records.to_string(),
                r.alerts.to_string(),
                r.quarantined.to_string(),
                if shared {
                    dash(r.lease.as_ref().and_then(|l| l.owner.as_ref()))
                } else {
                    dash(r.checkpoint.as_ref())
                },
                r.lag_seconds
                    .map(|l| format!("{}m", l / 60))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let columns = Columns::fit(header, &cells);
    let mut out = columns.line(header);
    out.push('\n');
    for (row, r) in cells.iter().zip(rows) {
        out.push_str(&columns.row(row));
        out.push('\n');
        if let Some(e) = &r.last_error {
            out.push_str(&format!("  last error: {e}\n"));
        }
        out.push_str(&actions_lines(&r.actions));
    }
    out
}

/// "response actions: 2 done, 1 skipped-protected" and the latest audit line.
fn actions_lines(a: &ConnectorActions) -> String {
    if a.by_outcome.is_empty() {
        return String::new();
    }
    let counts: Vec<String> = a
        .by_outcome
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    let mut out = format!("  response actions: {}\n", counts.join(", "));
    if let Some(last) = &a.last {
        out.push_str(&format!(
            "  last action: {} {} at {}: {}\n",
            last["event_type"].as_str().unwrap_or("-"),
            last["email"]["recipient"]["address"]
                .as_str()
                .unwrap_or("-"),
            last["timestamp"].as_i64().map(fmt_ms).unwrap_or_default(),
            last["message"].as_str().unwrap_or(""),
        ));
    }
    out
}

/// The outputs below the connectors: where each stands and its last error.
pub fn outputs_table(outputs: &[OutputStatus]) -> String {
    let mut out = String::new();
    if outputs.is_empty() {
        return out;
    }
    let rows: Vec<[String; 6]> = outputs
        .iter()
        .map(|o| {
            [
                o.name.clone(),
                o.kind.to_string(),
                o.destination.clone(),
                o.delivered.to_string(),
                o.pending.to_string(),
                o.lag_ms
                    .map(|l| format!("{}s", l / 1000))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = [
        "OUTPUT",
        "KIND",
        "DESTINATION",
        "DELIVERED",
        "PENDING",
        "LAG",
    ];
    let columns = Columns::fit(header, &rows);
    out.push('\n');
    out.push_str(&columns.line(header));
    out.push('\n');
    for (row, o) in rows.iter().zip(outputs) {
        out.push_str(&columns.row(row));
        out.push('\n');
        if let Some(e) = &o.last_error {
            out.push_str(&format!("  last error: {e}\n"));
        }
    }
    out
}

pub fn fmt_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunRecord;

    fn run(operation: &str, at_ms: i64, outcome: &str, error: Option<&str>) -> RunRecord {
        RunRecord {
            connector: "a".into(),
            tenant: "acme".into(),
            operation: operation.into(),
            started_ms: at_ms,
            ended_ms: at_ms + 1_000,
            outcome: outcome.into(),
            summary: None,
            error: error.map(str::to_string),
        }
    }

    /// 60 connection tests after a failed collection: the collection is
    /// still the last run, the newest test decides the state.
    #[test]
    fn the_last_collection_survives_many_connection_tests() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let config = Config::parse(
            "[[connector]]\nname = \"a\"\ntenant = \"acme\"\ncomponent = \"proofpoint_tap\"\nhost_url = \"http://127.0.0.1:9\"\n",
            std::path::Path::new("/etc/dphost/dphost.toml"),
        )
        .unwrap();
        let collect_at = 1_764_324_000_000;
        store
            .record_run(&run("collect", collect_at, "failed", Some("HTTP 401")))
            .unwrap();
        for i in 0..60 {
            store
                .record_run(&run(
                    "test-connection",
                    collect_at + 60_000 * (i + 1),
                    "ok",
                    None,
                ))
                .unwrap();
        }
        let s = one(&config.connectors[0], &store, collect_at + 3_600_000 * 2).unwrap();
        assert_eq!(s.last_outcome.as_deref(), Some("failed"));
        assert_eq!(s.last_run_start, Some(fmt_ms(collect_at)));
        assert_eq!(s.last_run_end, Some(fmt_ms(collect_at + 1_000)));
        assert_eq!(s.state, "ok");
        assert_eq!(s.last_error, None);
        assert_eq!(s.last_test_outcome.as_deref(), Some("ok"));
        assert_eq!(s.last_test, Some(fmt_ms(collect_at + 60_000 * 60 + 1_000)));
    }
}
