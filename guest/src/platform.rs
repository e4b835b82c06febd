//! The host as the connector's logic sees it.
//!
//! Plain Rust mirrors of the WIT types and two traits over the WIT imports
//! (`Http` for `wasi:http/outgoing-handler`, `Platform` for the clock, state,
//! sink and log). Only `bindings` implements them against the real host, so
//! everything else builds and is unit-tested natively with fakes.

use time::OffsetDateTime;

/// Largest response body the connector reads into memory. A larger SIEM
/// window is split in two and asked for again, so one busy hour cannot exhaust
/// the sandbox's memory.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The data-lake indexes (WIT `types.index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Index {
    Syslog,
    Alerts,
    Quarantine,
}

/// WIT `types.write-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    Insert,
    Upsert,
}

/// WIT `types.record`: one record for the data lake.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub index: Index,
    pub id: String,
    /// A JSON object, UTF-8.
    pub body: String,
    pub mode: WriteMode,
}

/// WIT `types.batch` (this connector queues no actions).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub records: Vec<Record>,
    /// Set a key, or delete it with `None`.
    pub state: Vec<(String, Option<Vec<u8>>)>,
}

/// WIT `types.commit-outcome`, minus the action count this connector never uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    pub written: u32,
    pub duplicates: u32,
}

/// WIT `log.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// WIT `types.http-failure`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpFailure {
    /// The HTTP status, or 0 when no response arrived.
    pub status: u16,
    pub explanation: String,
    pub recommendation: String,
}

/// WIT `types.connector-error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectorError {
    BadConfig(Vec<String>),
    Http(HttpFailure),
    /// Seconds to wait before the next call.
    RateLimited(u32),
    Transient(String),
    Internal(String),
}

impl std::fmt::Display for ConnectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectorError::BadConfig(problems) => write!(f, "bad config: {}", problems.join(" ")),
            ConnectorError::Http(h) => write!(
                f,
                "HTTP {}: {} {}",
                h.status, h.explanation, h.recommendation
            ),
            ConnectorError::RateLimited(s) => write!(f, "rate limited for {s} s"),
            ConnectorError::Transient(m) => write!(f, "transient: {m}"),
            ConnectorError::Internal(m) => write!(f, "internal: {m}"),
        }
    }
}

/// A complete HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why no complete response arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// Connect, first-byte or between-bytes timeout.
    Timeout(String),
    /// The body exceeded `limit` bytes; reading stopped.
    BodyTooLarge { limit: usize },
    /// Anything else: DNS, refused connection, reset, refused by the host.
    Failed(String),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Timeout(d) => write!(f, "timed out ({d})"),
            TransportError::BodyTooLarge { limit } => {
                write!(f, "response body larger than {limit} bytes")
            }
            TransportError::Failed(d) => write!(f, "{d}"),
        }
    }
}

/// Outgoing HTTP to the connector's own API host. The implementation knows the
/// scheme and authority; the host adds the credentials.
pub trait Http {
    /// `GET` the given path-with-query (starting with `/`), reading the whole body.
    fn get(&mut self, path_and_query: &str) -> Result<HttpResponse, TransportError>;
}

/// Clock, durable state, the data-lake sink, request budgets, the operator
/// log and progress.
pub trait Platform {
    /// The wall clock, UTC.
    fn now(&self) -> OffsetDateTime;
    /// The committed value of a state key.
    fn state_get(&self, key: &str) -> Option<Vec<u8>>;
    /// Commit records and state changes as one transaction.
    fn commit(&mut self, batch: Batch) -> Result<CommitOutcome, String>;
    /// For each id, whether a record with it is already stored in `index`.
    fn contains(&self, index: Index, ids: &[String]) -> Vec<bool>;
    fn log(&self, level: LogLevel, message: &str);
    /// `done` of `total` windows finished, `items` events collected this run.
    fn progress(&self, done: u32, total: u32, items: u64);
    /// Take one request from a rate-limit pool shared by every connector
    /// using the same credential. Ok: requests left. Err: UNIX time to retry.
    fn budget_take(&mut self, pool: &str, limit: u32, window_seconds: u32) -> Result<u32, u64>;
}
