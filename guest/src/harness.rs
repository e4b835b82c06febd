//! Bad input, natively: a whole collection cycle (`collect::collect`) over
//! one SIEM window whose response body is given, against an in-memory host
//! that checks every commit the way dphost does. Used by the fuzz target
//! (`fuzz/`, `make fuzz`) and by the corpus of nasty bodies (`corpus`), run
//! in `make test` here and, through the built component, by the e2e tests.
//!
//! Built for tests and with the `harness` feature; never in the component.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde_json::Value;
use time::OffsetDateTime;

use crate::config::Config;
use crate::platform::{
    Batch, BodyReader, CommitOutcome, ConnectorError, Http, Index, LogLevel, Platform,
    StreamingResponse, TransportError, WriteMode,
};

pub mod corpus;

/// What a cycle over one body did.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<String, ConnectorError>,
    /// Syslog event records, parsed.
    pub events: Vec<Value>,
    /// Quarantine records, parsed.
    pub quarantined: Vec<Value>,
    /// Whether the checkpoint moved (the window counted as collected).
    pub checkpoint_moved: bool,
    pub siem_requests: usize,
}

/// "Now" of every harness run.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_168_800).expect("valid time") // 2026-11-20T10:00:00Z
}

fn config() -> Config {
    Config::parse(
        &serde_json::json!({
            "name": "fuzz", "tenant": "fuzz", "host_url": "http://127.0.0.1:9",
            "component": "proofpoint_tap", "interval_min": 5,
            "initial_lookback_hours": 1, "content_types": ["events"],
            "limits": {"memory_mib": 64},
        })
        .to_string(),
    )
    .expect("valid harness config")
}

/// Answers every SIEM request with `body` (status 200, exact
/// `Content-Length`, in chunks of `chunk` bytes) and anything else with 404.
struct OneBody<'b> {
    body: &'b [u8],
    chunk: usize,
    siem_requests: usize,
}

struct Chunks {
    bytes: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl BodyReader for Chunks {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        if self.pos >= self.bytes.len() {
            return Ok(None);
        }
        let end = (self.pos + self.chunk).min(self.bytes.len());
        let chunk = self.bytes[self.pos..end].to_vec();
        self.pos = end;
        Ok(Some(chunk))
    }
}

impl Http for OneBody<'_> {
    fn get_streaming(&mut self, path_and_query: &str) -> Result<StreamingResponse, TransportError> {
        let (status, bytes) = if path_and_query.starts_with("/v2/siem/") {
            self.siem_requests += 1;
            (200, self.body.to_vec())
        } else {
            (404, Vec::new())
        };
        Ok(StreamingResponse {
            status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("content-length".into(), bytes.len().to_string()),
            ],
            body: Box::new(Chunks {
                bytes,
                pos: 0,
                chunk: self.chunk.max(1),
            }),
        })
    }
}

/// The host's side, in memory, refusing what dphost's sink refuses. A
/// refusal panics: a connector must never build a batch the host rejects
/// (the whole window would be lost to it).
#[derive(Default)]
struct Host {
    state: BTreeMap<String, Vec<u8>>,
    stored: BTreeMap<(Index, String), String>,
    logs: RefCell<Vec<String>>,
    begun: Option<Result<CommitOutcome, String>>,
}

impl Platform for Host {
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
        now()
    }

    fn state_get(&self, key: &str) -> Option<Vec<u8>> {
        self.state.get(key).cloned()
    }

    fn commit(&mut self, batch: Batch) -> Result<CommitOutcome, String> {
        let limits = config().limits;
        let bytes: usize = batch
            .records
            .iter()
            .map(|r| r.body.len() + r.id.len())
            .sum();
        assert!(
            batch.records.len() <= limits.max_batch_records
                && bytes <= (limits.max_batch_mib as usize) << 20,
            "a batch over the host's limits: {} records, {bytes} bytes",
            batch.records.len()
        );
        let mut outcome = CommitOutcome::default();
        for r in &batch.records {
            assert!(
                !r.id.is_empty() && r.id.len() <= 512,
                "record id of {} bytes",
                r.id.len()
            );
            // The host refuses what is not a JSON object; search skips what
            // serde_json cannot read whole (too deep, numbers out of range).
            assert!(
                serde_json::from_str::<Value>(&r.body).is_ok_and(|v| v.is_object()),
                "a record body the host refuses or search cannot read: {:.200}",
                r.body
            );
            let key = (r.index, r.id.clone());
            if r.mode == WriteMode::Insert && self.stored.contains_key(&key) {
                outcome.duplicates += 1;
            } else {
                self.stored.insert(key, r.body.clone());
                outcome.written += 1;
            }
        }
        for (k, v) in batch.state {
            assert!(
                !k.is_empty() && k.len() <= 512,
                "state key of {} bytes",
                k.len()
            );
            match v {
                Some(v) => {
                    assert!(v.len() <= 1 << 20, "state value of {} bytes", v.len());
                    self.state.insert(k, v)
                }
                None => self.state.remove(&k),
            };
        }
        Ok(outcome)
    }

    fn contains(&self, index: Index, ids: &[String]) -> Vec<bool> {
        ids.iter()
            .map(|id| self.stored.contains_key(&(index, id.clone())))
            .collect()
    }

    fn dropped_by_filters(&self, bodies: &[String]) -> Vec<bool> {
        vec![false; bodies.len()]
    }

    fn log(&self, level: LogLevel, message: &str) {
        if level >= LogLevel::Warn {
            self.logs.borrow_mut().push(message.to_string());
        }
    }

    fn progress(&self, _done: u32, _total: u32, _items: u64) {}

    fn budget_take(&mut self, _pool: &str, limit: u32, _window_seconds: u32) -> Result<u32, u64> {
        Ok(limit.saturating_sub(1))
    }

    fn sleep(&mut self, _duration: std::time::Duration) {}
}

/// One collection cycle whose SIEM window answers with `body`, read in
/// chunks of `chunk` bytes.
pub fn collect_body(body: &[u8], chunk: usize) -> Outcome {
    let config = config();
    let mut http = OneBody {
        body,
        chunk,
        siem_requests: 0,
    };
    let mut host = Host::default();
    let result = crate::collect::collect(&config, &mut http, &mut host);
    let parsed = |index: Index| -> Vec<Value> {
        host.stored
            .iter()
            .filter(|((i, _), _)| *i == index)
            .map(|(_, b)| serde_json::from_str(b).expect("checked at commit"))
            .collect()
    };
    Outcome {
        events: parsed(Index::Syslog)
            .into_iter()
            .filter(|r| r["msg_class"] == "proofpoint_tap_event")
            .collect(),
        quarantined: parsed(Index::Quarantine),
        checkpoint_moved: host.state.contains_key(crate::collect::CHECKPOINT_KEY),
        siem_requests: http.siem_requests,
        result,
    }
}

/// What must hold whatever the body: the cycle either collected the window
/// (checkpoint moved, every record well formed, every quarantined record
/// with its reason) or failed as a transient error that keeps the
/// checkpoint, so the next run asks again. Panics otherwise.
pub fn check_invariants(outcome: &Outcome) {
    match &outcome.result {
        Ok(_) => assert!(outcome.checkpoint_moved, "collected without a checkpoint"),
        Err(ConnectorError::Transient(why)) => {
            assert!(!why.is_empty());
            assert!(
                !outcome.checkpoint_moved,
                "the checkpoint moved past a window that failed"
            );
        }
        Err(other) => panic!("a bad body must be a transient failure, not {other:?}"),
    }
    for e in &outcome.events {
        assert!(e["event_id"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
        assert!(e["timestamp"].is_i64(), "{e}");
        assert!(!e["proofpoint_tap"].is_null(), "{e}");
    }
    for q in &outcome.quarantined {
        assert_eq!(q["msg_class"], "proofpoint_tap_quarantine");
        assert!(
            q["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "quarantined without a reason: {q}"
        );
        assert!(
            q.get("raw").is_some() || q["raw_text"].is_string(),
            "quarantined without its bytes: {q}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::corpus::{self, Expect};
    use super::*;

    fn ids(events: &[Value]) -> Vec<String> {
        let mut ids: Vec<String> = events
            .iter()
            .filter_map(|e| e["proofpoint_tap"]["id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn every_nasty_event_is_stored_or_quarantined_with_its_reason_beside_good_ones() {
        let cases = corpus::events();
        let mut tried = 0;
        for case in &cases {
            let good1 = corpus::good_event(case.event_type, 1);
            let good2 = corpus::good_event(case.event_type, 2);
            let body = corpus::body_with(
                case.event_type,
                &[good1.as_bytes(), &case.bytes, good2.as_bytes()],
            );
            for chunk in [5, 4096, 1 << 16] {
                tried += 1;
                let out = collect_body(&body, chunk);
                check_invariants(&out);
                let what = format!("{} (chunks of {chunk})", case.name);
                assert!(out.result.is_ok(), "{what}: {:?}", out.result);
                let good: Vec<String> = ids(&out.events)
                    .into_iter()
                    .filter(|id| id.starts_with("good-id-"))
                    .collect();
                assert_eq!(
                    good,
                    ["good-id-1", "good-id-2"],
                    "{what}: the good events land"
                );
                match &case.expect {
                    Expect::Event => {
                        assert_eq!(out.events.len(), 3, "{what}: stored as an event");
                        assert!(out.quarantined.is_empty(), "{what}: {:?}", out.quarantined);
                    }
                    Expect::Quarantine(reason) => {
                        assert_eq!(out.events.len(), 2, "{what}: not stored as an event");
                        assert_eq!(out.quarantined.len(), 1, "{what}");
                        let q = &out.quarantined[0];
                        assert!(
                            q["reason"].as_str().unwrap().contains(reason),
                            "{what}: reason {} lacks {reason:?}",
                            q["reason"]
                        );
                        assert_eq!(q["event_type"], case.event_type.as_str(), "{what}");
                    }
                }
            }
        }
        assert!(cases.len() >= 30);
        eprintln!(
            "bad input: {} nasty events, {tried} runs natively",
            cases.len()
        );
    }

    /// `make fuzz` seeds its corpus from here (`FUZZ_SEED_DIR`).
    #[test]
    fn seeds() {
        let Some(dir) = std::env::var_os("FUZZ_SEED_DIR") else {
            return;
        };
        let n = corpus::write_seeds(std::path::Path::new(&dir)).unwrap();
        eprintln!("wrote {n} fuzzing seeds to {}", dir.to_string_lossy());
    }

    #[test]
    fn broken_bodies_fail_the_window_whole_or_are_collected_never_panic() {
        let bodies = corpus::bodies();
        for (name, body) in &bodies {
            for chunk in [3, 4096] {
                let out = collect_body(body, chunk);
                check_invariants(&out);
                match corpus::expected(name) {
                    corpus::BodyExpect::Retried => {
                        assert!(out.result.is_err(), "{name}: the body is not trusted");
                        assert!(!out.checkpoint_moved, "{name}: the checkpoint stays");
                        assert!(out.events.is_empty(), "{name}: nothing of it is stored");
                        assert!(
                            out.siem_requests >= 2,
                            "{name}: a damaged window is asked for again"
                        );
                    }
                    corpus::BodyExpect::Collected(n) => {
                        assert!(out.result.is_ok(), "{name}: {:?}", out.result);
                        assert!(out.checkpoint_moved, "{name}: the window is done");
                        assert_eq!(out.events.len(), n, "{name}: events stored");
                    }
                }
                assert!(
                    out.quarantined.is_empty(),
                    "{name}: a broken body is not an event"
                );
            }
        }
        eprintln!("bad input: {} broken bodies natively", bodies.len());
    }
}
