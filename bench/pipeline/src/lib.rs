//! The TAP connector's per-event work, as one function over a SIEM response
//! body, so the same code can be timed natively and inside the sandbox
//! (`make bench`, sandbox overhead). It calls the connector's own modules in
//! the order `collect` does: `scan` (streaming, each event's bytes), the
//! strict JSON check, `parse::interpret`, `record::for_event` (normalise and
//! the record body), and per batch the alert derivation of `collect`
//! (`alerts::alert_fields`, `AlertBook`, slots kept as serialized state).
//! Only the host calls (HTTP, sink, state) are left out.

use std::collections::{BTreeMap, BTreeSet};

use proofpoint_tap::alerts::{self, Alert, AlertBook, AlertChange, AlertConfig, ObservedEvent};
use proofpoint_tap::config::Config;
use proofpoint_tap::normalise;
use proofpoint_tap::parse::{self, Outcome, RawEvent};
use proofpoint_tap::platform::{BodyReader, Index, Record};
use proofpoint_tap::record::{self, Origin};
use proofpoint_tap::scan::{check_event, SiemScanner};

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

/// The connector configuration the pipeline runs with (production defaults,
/// the 32 MiB memory cap of the end-to-end benchmark).
pub fn config(tenant: &str) -> Config {
    let json = serde_json::json!({
        "name": format!("{tenant}-proofpoint_tap"),
        "tenant": tenant,
        "host_url": "http://127.0.0.1:1",
        "content_types": ["events"],
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
    /// + the alert derivation per batch.
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
            Stage::Alerts => "alerts",
        }
    }
}

/// Runs the whole pipeline over `body`.
pub fn run<R: BodyReader>(body: R, tenant: &str) -> Result<Summary, String> {
    run_to(body, tenant, Stage::Alerts)
}

/// Runs the pipeline up to `stage` (for a breakdown of where time goes).
pub fn run_to<R: BodyReader>(body: R, tenant: &str, stage: Stage) -> Result<Summary, String> {
    let config = config(tenant);
    let origin = Origin::from(&config);
    let batch_records = (config.limits.batch_records() / 2).max(1);
    let batch_bytes = config.limits.batch_bytes() / 2;
    let mut scanner = SiemScanner::new(body, config.limits.max_event_bytes());
    let mut summary = Summary::default();
    let mut alerts = Alerts::new(&config);
    let mut batch: Vec<Record> = Vec::new();
    let mut bytes = 0usize;
    while let Some(event) = scanner.next_event().map_err(|e| e.to_string())? {
        summary.events += 1;
        if stage == Stage::Scan {
            continue;
        }
        let raw = match check_event(event.bytes) {
            Ok(raw) => raw,
            Err(_) => {
                summary.quarantined += 1;
                continue;
            }
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
        let record = record::for_event(origin, &interpreted);
        if stage == Stage::Record {
            summary.records += 1;
            summary.record_bytes += record.body.len() as u64;
            continue;
        }
        let size = record.body.len() + record.id.len();
        if !batch.is_empty() && (batch.len() >= batch_records || bytes + size > batch_bytes) {
            alerts.flush(&mut batch, origin, &mut summary);
            bytes = 0;
        }
        bytes += size;
        batch.push(record);
    }
    alerts.flush(&mut batch, origin, &mut summary);
    Ok(summary)
}

/// The alert derivation `collect` runs on each batch: alert slots kept
/// between batches as `collect` keeps them within a run (its slot cache),
/// and serialized per batch for the state the commit carries.
struct Alerts {
    cfg: AlertConfig,
    state: BTreeMap<String, Vec<Alert>>,
    stored: BTreeSet<String>,
    now_ms: i64,
}

impl Alerts {
    fn new(config: &Config) -> Alerts {
        Alerts {
            cfg: AlertConfig {
                dedup_window_ms: config.alerts.dedup_window_ms,
                merge_without_sender: config.alerts.merge_without_sender,
            },
            state: BTreeMap::new(),
            stored: BTreeSet::new(),
            now_ms: i64::MIN,
        }
    }

    fn flush(&mut self, batch: &mut Vec<Record>, origin: Origin<'_>, summary: &mut Summary) {
        let mut book = AlertBook::new();
        let mut slots = BTreeSet::new();
        let mut changed: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for record in batch.iter() {
            summary.records += 1;
            summary.record_bytes += record.body.len() as u64;
            if record.index != Index::Syslog
                || !record
                    .body
                    .starts_with("{\"msg_class\":\"proofpoint_tap_event\"")
            {
                continue;
            }
            // `sink.contains`: a record id already stored adds nothing.
            if !self.stored.insert(record.id.clone()) {
                continue;
            }
            let Some(body) = alerts::alert_fields(&record.body) else {
                continue;
            };
            let Some(kind) = body
                .get("event_type")
                .and_then(|t| t.as_str())
                .and_then(|t| {
                    normalise::EventType::ALL
                        .into_iter()
                        .find(|e| e.as_str() == t)
                })
            else {
                continue;
            };
            let Some(observed) =
                ObservedEvent::from_normalised(&record.id, kind, &body, origin.tenant)
            else {
                continue;
            };
            self.now_ms = self.now_ms.max(observed.time_ms);
            if let Some(slot) = AlertBook::slot_of(&observed, &self.cfg) {
                if slots.insert(slot.clone()) {
                    let stored = self.state.remove(&slot).unwrap_or_default();
                    book.restore_slot(slot, stored);
                }
            }
            match book.observe_deferred(&observed, &self.cfg) {
                AlertChange::Created { id, body } | AlertChange::Updated { id, body } => {
                    changed.insert(id, body);
                }
                AlertChange::Unchanged { .. } => {}
            }
        }
        for (id, body) in changed.iter_mut() {
            if body.is_null() {
                if let Some(alert) = book.alert(id) {
                    *body = alert.to_json();
                }
            }
        }
        book.prune(self.now_ms);
        for (_, mut body) in changed {
            if let Some(obj) = body.as_object_mut() {
                obj.insert("connector".into(), origin.connector.into());
                obj.insert("domain".into(), origin.domain.into());
                obj.entry("tenant_name")
                    .or_insert_with(|| origin.tenant.into());
            }
            let text = body.to_string();
            summary.alert_writes += 1;
            summary.alert_bytes += text.len() as u64;
        }
        for slot in slots {
            let alerts = book.take_slot(&slot);
            if !alerts.is_empty() {
                let bytes = serde_json::to_vec(&alerts).expect("alerts serialise");
                summary.alert_bytes += bytes.len() as u64;
                self.state.insert(slot, alerts);
            }
        }
        summary.batches += 1;
        batch.clear();
    }
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
