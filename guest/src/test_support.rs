//! Test helpers: the shared fixtures, a fake host and a fake TAP API.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use time::{Duration, OffsetDateTime};

use crate::config::Config;
use crate::parse::{parse_event_time, EventType};
use crate::platform::{
    Batch, BodyReader, CommitOutcome, Http, HttpResponse, Index, LogLevel, Platform,
    StreamingResponse, TransportError, WriteMode,
};
use crate::windows::api_time;

/// The fixture files and the SIEM array each one's events come from.
pub const FIXTURE_FILES: [(&str, EventType); 4] = [
    ("message_delivered.ndjson", EventType::MessageDelivered),
    ("message_blocked.ndjson", EventType::MessageBlocked),
    ("clicks_permitted.ndjson", EventType::ClickPermitted),
    ("clicks_blocked.ndjson", EventType::ClickBlocked),
];

/// The lines of a fixture file, exactly as stored (without the newline).
/// The fixtures are part of the project: a missing file fails the test.
pub fn fixture_lines(file: &str) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/tap/elastic")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {} is missing: {e}", path.display()));
    text.split_terminator('\n').map(str::to_string).collect()
}

pub fn config(extra: serde_json::Value) -> Config {
    let mut v = serde_json::json!({
        "name": "tap1", "tenant": "acme", "host_url": "http://127.0.0.1:4567",
        "component": "proofpoint_tap", "interval_min": 5
    });
    for (k, val) in extra.as_object().expect("object").iter() {
        v[k] = val.clone();
    }
    Config::parse(&v.to_string()).expect("valid test config")
}

/// What one commit carried.
#[derive(Debug, Clone)]
pub struct CommitLog {
    pub records: usize,
    /// Of those, Alerts index records.
    pub alerts: usize,
    /// Bytes of records as the host counts them (bodies and ids).
    pub bytes: usize,
    pub state: Vec<(String, Option<Vec<u8>>)>,
}

/// The host's clock, state, sink and log, in memory.
pub struct FakePlatform {
    pub now: OffsetDateTime,
    pub state: BTreeMap<String, Vec<u8>>,
    /// (index, id) → body.
    pub stored: BTreeMap<(Index, String), String>,
    pub commits: Vec<CommitLog>,
    /// Commit number (0-based, counted over the platform's life) that fails.
    pub fail_commit: Option<usize>,
    pub commit_attempts: usize,
    pub logs: RefCell<Vec<(LogLevel, String)>>,
    pub progress: RefCell<Vec<(u32, u32, u64)>>,
    /// Requests taken per budget pool, and the limit the fake enforces
    /// (instead of the one asked for) when set.
    pub budget_taken: BTreeMap<String, u32>,
    pub budget_limit: Option<u32>,
    /// UNIX time the fake reports for retrying when the budget is empty.
    pub budget_retry_at: u64,
    /// Pauses asked for.
    pub sleeps: Vec<std::time::Duration>,
    /// The host's batch limits, enforced like the host does.
    pub max_batch_records: usize,
    pub max_batch_bytes: usize,
    /// Log filters, as the host applies them: bodies containing any of these
    /// strings are dropped.
    pub drop_containing: Vec<String>,
    /// The outbox: action id -> action, as the host keeps one per id.
    pub outbox: BTreeMap<String, crate::platform::Action>,
    /// Actions queued by each commit (new ids only).
    pub actions_queued: Vec<usize>,
    /// The outcome of the batch `commit_begin` took.
    pub begun: Option<Result<CommitOutcome, String>>,
}

impl FakePlatform {
    pub fn new(now: OffsetDateTime) -> Self {
        FakePlatform {
            now,
            state: BTreeMap::new(),
            stored: BTreeMap::new(),
            commits: Vec::new(),
            fail_commit: None,
            commit_attempts: 0,
            logs: RefCell::new(Vec::new()),
            progress: RefCell::new(Vec::new()),
            budget_taken: BTreeMap::new(),
            budget_limit: None,
            budget_retry_at: 0,
            sleeps: Vec::new(),
            max_batch_records: 20_000,
            max_batch_bytes: 64 << 20,
            drop_containing: Vec::new(),
            outbox: BTreeMap::new(),
            actions_queued: Vec::new(),
            begun: None,
        }
    }

    pub fn checkpoint(&self) -> Option<OffsetDateTime> {
        self.state.get("checkpoint").map(|b| {
            let s: i64 = std::str::from_utf8(b).unwrap().parse().unwrap();
            OffsetDateTime::from_unix_timestamp(s).unwrap()
        })
    }

    pub fn set_checkpoint(&mut self, t: OffsetDateTime) {
        self.state.insert(
            "checkpoint".into(),
            t.unix_timestamp().to_string().into_bytes(),
        );
    }

    pub fn bodies(&self, index: Index) -> Vec<serde_json::Value> {
        self.stored
            .iter()
            .filter(|((i, _), _)| *i == index)
            .map(|(_, b)| serde_json::from_str(b).unwrap())
            .collect()
    }

    pub fn count(&self, index: Index, msg_class: &str) -> usize {
        self.bodies(index)
            .iter()
            .filter(|b| b["msg_class"] == msg_class)
            .count()
    }

    pub fn logged(&self, level: LogLevel, needle: &str) -> bool {
        self.logs
            .borrow()
            .iter()
            .any(|(l, m)| *l == level && m.contains(needle))
    }
}

impl Platform for FakePlatform {
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
        self.now
    }

    fn state_get(&self, key: &str) -> Option<Vec<u8>> {
        self.state.get(key).cloned()
    }

    fn commit(&mut self, batch: Batch) -> Result<CommitOutcome, String> {
        let attempt = self.commit_attempts;
        self.commit_attempts += 1;
        if self.fail_commit == Some(attempt) {
            return Err("disk full".into());
        }
        let bytes: usize = batch
            .records
            .iter()
            .map(|r| r.body.len() + r.id.len())
            .sum();
        if batch.records.len() + batch.actions.len() > self.max_batch_records
            || bytes > self.max_batch_bytes
        {
            return Err(format!(
                "the batch has {} records of {bytes} bytes: over the limits",
                batch.records.len()
            ));
        }
        let mut outcome = CommitOutcome::default();
        for r in &batch.records {
            let body: serde_json::Value =
                serde_json::from_str(&r.body).expect("record body is JSON");
            assert!(body.is_object(), "record body must be an object");
            if r.index == Index::Syslog
                && self
                    .drop_containing
                    .iter()
                    .any(|d| r.body.contains(d.as_str()))
            {
                continue;
            }
            let key = (r.index, r.id.clone());
            if r.mode == WriteMode::Insert && self.stored.contains_key(&key) {
                outcome.duplicates += 1;
            } else {
                self.stored.insert(key, r.body.clone());
                outcome.written += 1;
            }
        }
        let mut queued = 0;
        for a in &batch.actions {
            if !self.outbox.contains_key(&a.id) {
                self.outbox.insert(a.id.clone(), a.clone());
                queued += 1;
            }
        }
        self.actions_queued.push(queued);
        for (k, v) in &batch.state {
            match v {
                Some(v) => self.state.insert(k.clone(), v.clone()),
                None => self.state.remove(k),
            };
        }
        self.commits.push(CommitLog {
            records: batch.records.len(),
            alerts: batch
                .records
                .iter()
                .filter(|r| r.index == Index::Alerts)
                .count(),
            bytes,
            state: batch.state,
        });
        Ok(outcome)
    }

    fn contains(&self, index: Index, ids: &[String]) -> Vec<bool> {
        ids.iter()
            .map(|id| self.stored.contains_key(&(index, id.clone())))
            .collect()
    }

    fn dropped_by_filters(&self, bodies: &[String]) -> Vec<bool> {
        bodies
            .iter()
            .map(|b| self.drop_containing.iter().any(|d| b.contains(d.as_str())))
            .collect()
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }

    fn progress(&self, done: u32, total: u32, items: u64) {
        self.progress.borrow_mut().push((done, total, items));
    }

    fn budget_take(&mut self, pool: &str, limit: u32, window_seconds: u32) -> Result<u32, u64> {
        assert_eq!(window_seconds, 86_400);
        let limit = self.budget_limit.unwrap_or(limit);
        let taken = self.budget_taken.entry(pool.to_string()).or_default();
        if *taken >= limit {
            return Err(self.budget_retry_at);
        }
        *taken += 1;
        Ok(limit - *taken)
    }

    fn sleep(&mut self, duration: std::time::Duration) {
        self.sleeps.push(duration);
    }
}

/// One event the fake API knows, visible once the API's clock reaches
/// `visible_from` (late indexing).
#[derive(Debug, Clone)]
pub struct FakeEvent {
    pub event_type: EventType,
    pub time: OffsetDateTime,
    pub visible_from: OffsetDateTime,
    pub raw: String,
}

/// A TAP API that answers like TAP-API.md says, plus scripted answers.
pub struct FakeTap {
    /// The API's clock.
    pub now: OffsetDateTime,
    pub events: Vec<FakeEvent>,
    /// Threat id → summary JSON; ids not here answer 404.
    pub threats: BTreeMap<String, String>,
    /// Threat id → forced status.
    pub threat_status: BTreeMap<String, u16>,
    /// Answers used, in order, for requests whose path starts with the prefix.
    pub scripted: VecDeque<(String, Result<HttpResponse, TransportError>)>,
    /// Every path requested.
    pub requests: Vec<String>,
    /// How SIEM bodies go wrong, used in order for requests whose path
    /// starts with the prefix (after `scripted`).
    pub mangle: VecDeque<(String, Mangle)>,
    /// Bytes per body chunk.
    pub chunk_size: usize,
    /// Whether responses announce their `Content-Length`.
    pub content_length: bool,
}

/// A body that goes wrong on the way.
#[derive(Debug, Clone)]
pub enum Mangle {
    /// Only the first `at` bytes arrive; then the body ends (`None`) or
    /// reading fails.
    Cut {
        at: usize,
        error: Option<TransportError>,
    },
    /// A byte is inserted at `at`.
    Insert { at: usize, byte: u8 },
    /// The body is replaced by a function of it.
    With(fn(&[u8]) -> Vec<u8>),
}

/// A body handed out in chunks, failing at its end if `error` is set.
pub struct FakeBody {
    bytes: Vec<u8>,
    pos: usize,
    chunk: usize,
    error: Option<TransportError>,
}

impl BodyReader for FakeBody {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        if self.pos >= self.bytes.len() {
            return match self.error.take() {
                Some(e) => Err(e),
                None => Ok(None),
            };
        }
        let end = (self.pos + self.chunk).min(self.bytes.len());
        let chunk = self.bytes[self.pos..end].to_vec();
        self.pos = end;
        Ok(Some(chunk))
    }
}

pub fn response(status: u16, body: &str) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.as_bytes().to_vec(),
    }
}

impl FakeTap {
    pub fn new(now: OffsetDateTime) -> Self {
        FakeTap {
            now,
            events: Vec::new(),
            threats: BTreeMap::new(),
            threat_status: BTreeMap::new(),
            scripted: VecDeque::new(),
            requests: Vec::new(),
            mangle: VecDeque::new(),
            chunk_size: 1000,
            content_length: true,
        }
    }

    /// An event of the given type at `time` naming `threat`, with a unique
    /// `id`, in the live API's shape for its type.
    pub fn add_event(
        &mut self,
        event_type: EventType,
        time: OffsetDateTime,
        n: usize,
        threat: &str,
    ) {
        let at = time
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let raw = match event_type {
            EventType::MessageDelivered | EventType::MessageBlocked => format!(
                r#"{{"GUID":"guid-{n}","id":"id-{n}","messageTime":"{at}","recipient":["user{n}@example.com"],"sender":"bad@example.net","threatsInfoMap":[{{"threatID":"{threat}","classification":"phish"}}]}}"#
            ),
            EventType::ClickPermitted | EventType::ClickBlocked => format!(
                r#"{{"GUID":"guid-{n}","id":"id-{n}","clickTime":"{at}","recipient":"user{n}@example.com","sender":"bad@example.net","threatID":"{threat}","url":"https://bad.example.net/{n}"}}"#
            ),
        };
        self.events.push(FakeEvent {
            event_type,
            time,
            visible_from: time,
            raw,
        });
    }

    pub fn siem_paths(&self) -> Vec<&String> {
        self.requests
            .iter()
            .filter(|p| p.starts_with("/v2/siem/all"))
            .collect()
    }

    fn siem_all(&self, query: &str) -> HttpResponse {
        let Some(interval) = query.strip_prefix("format=json&interval=") else {
            return response(400, "");
        };
        let (start, end) = interval.split_once('/').expect("START/END");
        let (Some(start), Some(end)) = (parse_event_time(start), parse_event_time(end)) else {
            return response(400, "");
        };
        if end <= start {
            return response(400, "");
        }
        if end - start < Duration::seconds(30) {
            return response(
                400,
                "The requested interval is too short. Requests must be for at least 30.00s of data",
            );
        }
        if end - start > Duration::hours(1) {
            return response(
                400,
                "The requested interval is too long. Requests must be for at most 1.00h of data",
            );
        }
        if end > self.now {
            return response(400, "The requested interval is still current.");
        }
        if start < self.now - Duration::days(7) {
            return response(400, "The requested start time is too far into the past. Requests for information up to 7.00d are accepted");
        }
        let mut arrays: BTreeMap<&str, Vec<&str>> = EventType::ALL
            .iter()
            .map(|t| (t.array(), Vec::new()))
            .collect();
        for e in &self.events {
            if e.time >= start && e.time < end && e.visible_from <= self.now {
                arrays.get_mut(e.event_type.array()).unwrap().push(&e.raw);
            }
        }
        let mut body = format!("{{\"queryEndTime\":\"{}\"", api_time(end));
        for (name, items) in arrays {
            body.push_str(&format!(",\"{name}\":[{}]", items.join(",")));
        }
        body.push('}');
        response(200, &body)
    }
}

impl FakeTap {
    fn answer(&mut self, path_and_query: &str) -> Result<HttpResponse, TransportError> {
        if let Some(i) = self
            .scripted
            .iter()
            .position(|(prefix, _)| path_and_query.starts_with(prefix.as_str()))
        {
            return self.scripted.remove(i).unwrap().1;
        }
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        match path {
            "/v2/siem/all" => Ok(self.siem_all(query)),
            "/v2/siem/clicks/blocked" => Ok(response(
                200,
                &format!(
                    "{{\"queryEndTime\":\"{}\",\"clicksBlocked\":[]}}",
                    api_time(self.now)
                ),
            )),
            _ => match path.strip_prefix("/v2/threat/summary/") {
                Some(id) => {
                    if let Some(status) = self.threat_status.get(id) {
                        return Ok(response(*status, "failure"));
                    }
                    Ok(match self.threats.get(id) {
                        Some(summary) => response(200, summary),
                        None => response(404, ""),
                    })
                }
                None => Ok(response(404, "")),
            },
        }
    }
}

impl Http for FakeTap {
    fn get_streaming(&mut self, path_and_query: &str) -> Result<StreamingResponse, TransportError> {
        self.requests.push(path_and_query.to_string());
        let mut answer = self.answer(path_and_query)?;
        if self.content_length {
            answer
                .headers
                .push(("content-length".into(), answer.body.len().to_string()));
        }
        let mut error = None;
        if let Some(i) = self
            .mangle
            .iter()
            .position(|(prefix, _)| path_and_query.starts_with(prefix.as_str()))
        {
            match self.mangle.remove(i).unwrap().1 {
                Mangle::Cut { at, error: e } => {
                    answer.body.truncate(at);
                    error = e;
                }
                Mangle::Insert { at, byte } => answer.body.insert(at, byte),
                Mangle::With(f) => answer.body = f(&answer.body),
            }
        }
        Ok(StreamingResponse {
            status: answer.status,
            headers: answer.headers,
            body: Box::new(FakeBody {
                bytes: answer.body,
                pos: 0,
                chunk: self.chunk_size,
                error,
            }),
        })
    }
}
