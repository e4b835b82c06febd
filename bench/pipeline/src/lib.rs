//! The TAP connector's work on one SIEM response body, so the same code can
//! be timed natively and inside the sandbox (`make bench`, sandbox
//! overhead). `run` is the connector's own `collect` over one window, with
//! the host's side in memory (`BenchHost`: no I/O, nothing checked); only
//! the host's real work (HTTP, SQLite) is left out. `run_to` stops each
//! event at an earlier stage, for a breakdown of where the time goes.

use std::collections::{BTreeMap, HashSet};

use proofpoint_tap::config::Config;
use proofpoint_tap::parse::{self, Outcome, RawEvent};
use proofpoint_tap::platform::{
    Batch, BodyReader, CommitOutcome, Http, Index, LogLevel, Platform, StreamingResponse,
    TransportError,
};
use proofpoint_tap::record::{self, Origin};
use proofpoint_tap::scan::{check_event, SiemScanner};
use time::macros::datetime;
use time::OffsetDateTime;

#[cfg(target_arch = "wasm32")]
mod component;

/// What one run did; the same figures natively and in the sandbox.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    pub records: u64,
    pub record_bytes: u64,
    pub quarantined: u64,
    pub alert_writes: u64,
    pub alert_bytes: u64,
    pub batches: u64,
}

impl Summary {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "events": self.events,
            "records": self.records,
            "record_bytes": self.record_bytes,
            "quarantined": self.quarantined,
            "alert_writes": self.alert_writes,
            "alert_bytes": self.alert_bytes,
            "batches": self.batches,
        })
        .to_string()
    }

    pub fn from_json(text: &str) -> Option<Summary> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
        Some(Summary {
            events: n("events")?,
            records: n("records")?,
            record_bytes: n("record_bytes")?,
            quarantined: n("quarantined")?,
            alert_writes: n("alert_writes")?,
            alert_bytes: n("alert_bytes")?,
            batches: n("batches")?,
        })
    }
}

/// "Now" for the run: the window it collects is the hour before (as the
/// harness's corpus, tap-sim at this simulated time, serves it).
pub const NOW: OffsetDateTime = datetime!(2026-11-20 10:00:00 UTC);

/// The connector configuration the pipeline runs with (production defaults,
/// the 32 MiB memory cap of the end-to-end benchmark, one window of an hour).
pub fn config(tenant: &str) -> Config {
    let json = serde_json::json!({
        "name": format!("{tenant}-proofpoint_tap"),
        "tenant": tenant,
        "host_url": "http://127.0.0.1:1",
        "content_types": ["events"],
        "initial_lookback_hours": 1,
        "limits": {"memory_mib": 32},
    });
    Config::parse(&json.to_string()).expect("the bench configuration is valid")
}

/// How far `run_to` takes each event: each stage includes those before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// `scan`: the body walked, each event's bytes found.
    Scan,
    /// + `check_event`: strict UTF-8 and JSON check.
    Check,
    /// + `parse::interpret`: parsed, identity, time, threat ids.
    Interpret,
    /// + `record::for_event`: normalised fields and the record body.
    Record,
    /// The whole of `collect`: + batches, their commits and the alerts.
    Alerts,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Scan,
        Stage::Check,
        Stage::Interpret,
        Stage::Record,
        Stage::Alerts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Scan => "scan",
            Stage::Check => "strict JSON check",
            Stage::Interpret => "interpret (parse, id, time)",
            Stage::Record => "normalise + record body",
            Stage::Alerts => "batches, commits, alerts",
        }
    }
}

/// Runs the connector's `collect` over `body`, the answer to its one window.
pub fn run<R: BodyReader + 'static>(body: R, tenant: &str) -> Result<Summary, String> {
    let config = config(tenant);
    let mut http = BenchHttp {
        body: Some(Box::new(body)),
    };
    let mut host = BenchHost::default();
    let out = proofpoint_tap::collect::collect(&config, &mut http, &mut host)
        .map_err(|e| e.to_string())?;
    let out: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    let mut summary = host.summary;
    summary.events = out["events"].as_u64().unwrap_or(0);
    summary.quarantined = out["quarantined"].as_u64().unwrap_or(0);
    Ok(summary)
}

/// Runs each event of `body` up to `stage` (`Stage::Alerts`: the whole of
/// `run`), for a breakdown of where the time goes.
pub fn run_to<R: BodyReader + 'static>(
    body: R,
    tenant: &str,
    stage: Stage,
) -> Result<Summary, String> {
    if stage == Stage::Alerts {
        return run(body, tenant);
    }
    let config = config(tenant);
    let origin = Origin::from(&config);
    let mut scanner = SiemScanner::new(body, config.limits.max_event_bytes());
    let mut summary = Summary::default();
    while let Some(event) = scanner.next_event().map_err(|e| e.to_string())? {
        summary.events += 1;
        if stage == Stage::Scan {
            continue;
        }
        let Ok(raw) = check_event(event.bytes) else {
            summary.quarantined += 1;
            continue;
        };
        if stage == Stage::Check {
            continue;
        }
        let interpreted = parse::interpret(RawEvent {
            event_type: event.event_type,
            raw,
        });
        if matches!(interpreted.outcome, Outcome::Quarantine { .. }) {
            summary.quarantined += 1;
        }
        if stage == Stage::Interpret {
            continue;
        }
        let (record, _) = record::for_event(origin, &interpreted);
        summary.records += 1;
        summary.record_bytes += record.body.len() as u64;
    }
    Ok(summary)
}

/// The TAP API of the run: `body` answers its first SIEM request.
struct BenchHttp {
    body: Option<Box<dyn BodyReader>>,
}

/// An empty answer (a window without events).
struct Empty;

impl BodyReader for Empty {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        Ok(None)
    }
}

impl Http for BenchHttp {
    fn get_streaming(&mut self, _path: &str) -> Result<StreamingResponse, TransportError> {
        Ok(StreamingResponse {
            status: 200,
            headers: Vec::new(),
            body: self.body.take().unwrap_or_else(|| Box::new(Empty)),
        })
    }
}

/// The host's side in memory: state, which record ids are stored, and the
/// figures of what was committed.
#[derive(Default)]
struct BenchHost {
    state: BTreeMap<String, Vec<u8>>,
    stored: HashSet<(Index, String)>,
    summary: Summary,
    begun: Option<Result<CommitOutcome, String>>,
}

impl Platform for BenchHost {
    fn commit_begin(&mut self, batch: Batch) -> Result<(), String> {
        assert!(
            self.begun.is_none(),
            "a second batch begun before commit_wait"
        );
        self.begun = Some(self.commit(batch));
        Ok(())
    }

    fn commit_wait(&mut self) -> Option<Result<CommitOutcome, String>> {
        self.begun.take()
    }

    fn now(&self) -> OffsetDateTime {
        NOW
    }

    fn state_get(&self, key: &str) -> Option<Vec<u8>> {
        self.state.get(key).cloned()
    }

    fn commit(&mut self, batch: Batch) -> Result<CommitOutcome, String> {
        let mut outcome = CommitOutcome::default();
        for r in batch.records {
            if r.index == Index::Alerts {
                self.summary.alert_writes += 1;
                self.summary.alert_bytes += r.body.len() as u64;
            } else {
                self.summary.records += 1;
                self.summary.record_bytes += r.body.len() as u64;
            }
            if self.stored.insert((r.index, r.id)) {
                outcome.written += 1;
            } else {
                outcome.duplicates += 1;
            }
        }
        for (key, value) in batch.state {
            match value {
                Some(v) => {
                    if key.starts_with(proofpoint_tap::alert_flush::ALERT_SLOT_PREFIX) {
                        self.summary.alert_bytes += v.len() as u64;
                    }
                    self.state.insert(key, v);
                }
                None => {
                    self.state.remove(&key);
                }
            }
        }
        self.summary.batches += 1;
        Ok(outcome)
    }

    fn contains(&self, index: Index, ids: &[String]) -> Vec<bool> {
        ids.iter()
            .map(|id| self.stored.contains(&(index, id.clone())))
            .collect()
    }

    fn dropped_by_filters(&self, bodies: &[String]) -> Vec<bool> {
        vec![false; bodies.len()]
    }

    fn log(&self, _level: LogLevel, _message: &str) {}

    fn progress(&self, _done: u32, _total: u32, _items: u64) {}

    fn budget_take(&mut self, _pool: &str, _limit: u32, _window_seconds: u32) -> Result<u32, u64> {
        Ok(1_000)
    }

    fn sleep(&mut self, _duration: std::time::Duration) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use proofpoint_tap::platform::InMemoryBody;

    #[test]
    fn a_small_body_gives_records_and_alerts() {
        let event = |guid: &str, sender: &str| {
            format!(
                r#"{{"GUID":"{guid}","id":"{guid}-id","QID":"q","messageTime":"2026-11-20T10:00:00.000Z","sender":"{sender}","recipient":["a@example.com"],"threatsInfoMap":[{{"threatID":"t1","threatStatus":"active","classification":"phish","threatType":"url","threat":"http://x"}}],"phishScore":100}}"#
            )
        };
        let body = format!(
            r#"{{"queryEndTime":"2026-11-20T10:05:00Z","messagesDelivered":[{},{},{}],"messagesBlocked":[],"clicksPermitted":[],"clicksBlocked":[]}}"#,
            event("g1", "x@evil.example"),
            event("g2", "x@evil.example"),
            event("g3", "y@evil.example")
        );
        let s = run(InMemoryBody::new(body.into_bytes(), 7), "acme").unwrap();
        assert_eq!(s.events, 3);
        assert_eq!(s.records, 3);
        assert_eq!(s.quarantined, 0);
        // Two senders: two alerts, one of them counting two events.
        assert_eq!(s.alert_writes, 2);
        assert_eq!(Summary::from_json(&s.to_json()), Some(s));
    }
}
