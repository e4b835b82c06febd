//! The host as the connector's logic sees it.
//!
//! Plain Rust mirrors of the WIT types and two traits over the WIT imports
//! (`Http` for `wasi:http/outgoing-handler`, `Platform` for the clock, state,
//! sink and log). Only `bindings` implements them against the real host, so
//! everything else builds and is unit-tested natively with fakes.

use time::OffsetDateTime;

/// Largest body `Http::get` reads into memory (threat summaries, error
/// texts). SIEM windows are never read whole: they are streamed
/// (`Http::get_streaming`) and parsed as they arrive.
pub const MAX_BUFFERED_BODY_BYTES: usize = 4 * 1024 * 1024;

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

/// WIT `types.action`: an outbox entry the host performs after the commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub id: String,
    pub kind: String,
    pub target: String,
    pub reason: String,
    /// A JSON object.
    pub params: String,
}

/// WIT `types.batch`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub records: Vec<Record>,
    /// Response actions queued with the records (see `response`).
    pub actions: Vec<Action>,
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
        header(&self.headers, name)
    }
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A response body as it arrives.
pub trait BodyReader {
    /// The next chunk of the body (possibly empty); `Ok(None)` at its end.
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, TransportError>;
}

/// A body already in memory, handed out in chunks of `chunk` bytes.
pub struct InMemoryBody {
    bytes: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl InMemoryBody {
    pub fn new(bytes: Vec<u8>, chunk: usize) -> Self {
        InMemoryBody {
            bytes,
            pos: 0,
            chunk: chunk.max(1),
        }
    }
}

impl BodyReader for InMemoryBody {
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

/// A response whose body has not been read yet.
pub struct StreamingResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Box<dyn BodyReader>,
}

impl std::fmt::Debug for StreamingResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl StreamingResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body, checked against its `Content-Length` (when given): a body
    /// that ends early is an error, not a shorter body.
    pub fn into_body(self) -> LengthChecked {
        let expected = self
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        LengthChecked {
            inner: self.body,
            expected,
            received: 0,
        }
    }

    /// Read the whole body, up to `limit` bytes.
    pub fn read_to_end(self, limit: usize) -> Result<HttpResponse, TransportError> {
        let status = self.status;
        let headers = self.headers.clone();
        let mut body = self.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next_chunk()? {
            if bytes.len() + chunk.len() > limit {
                return Err(TransportError::BodyTooLarge { limit });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            headers,
            body: bytes,
        })
    }
}

impl From<HttpResponse> for StreamingResponse {
    fn from(r: HttpResponse) -> Self {
        StreamingResponse {
            status: r.status,
            headers: r.headers,
            body: Box::new(InMemoryBody::new(r.body, 64 * 1024)),
        }
    }
}

/// A body reader that fails when fewer bytes arrive than `Content-Length`
/// announced (or more).
pub struct LengthChecked {
    inner: Box<dyn BodyReader>,
    expected: Option<u64>,
    received: u64,
}

impl LengthChecked {
    /// Body bytes read so far.
    pub fn received(&self) -> u64 {
        self.received
    }
}

impl BodyReader for LengthChecked {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        match self.inner.next_chunk()? {
            Some(chunk) => {
                self.received += chunk.len() as u64;
                match self.expected {
                    Some(expected) if self.received > expected => Err(TransportError::Truncated {
                        received: self.received,
                        expected,
                    }),
                    _ => Ok(Some(chunk)),
                }
            }
            None => match self.expected {
                Some(expected) if self.received != expected => Err(TransportError::Truncated {
                    received: self.received,
                    expected,
                }),
                _ => Ok(None),
            },
        }
    }
}

/// Why no complete response arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// Connect, first-byte or between-bytes timeout.
    Timeout(String),
    /// A buffered body exceeded `limit` bytes; reading stopped.
    BodyTooLarge { limit: usize },
    /// The body ended before (or went on after) the `Content-Length` announced.
    Truncated { received: u64, expected: u64 },
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
            TransportError::Truncated { received, expected } => write!(
                f,
                "the response body was cut off ({received} of the {expected} bytes announced)"
            ),
            TransportError::Failed(d) => write!(f, "{d}"),
        }
    }
}

/// Outgoing HTTP to the connector's own API host. The implementation knows the
/// scheme and authority; the host adds the credentials.
pub trait Http {
    /// `GET` the given path-with-query (starting with `/`); the body is read
    /// by the caller as it arrives.
    fn get_streaming(&mut self, path_and_query: &str) -> Result<StreamingResponse, TransportError>;

    /// `GET`, reading the whole body (at most `MAX_BUFFERED_BODY_BYTES`).
    fn get(&mut self, path_and_query: &str) -> Result<HttpResponse, TransportError> {
        self.get_streaming(path_and_query)?
            .read_to_end(MAX_BUFFERED_BODY_BYTES)
    }
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
    /// `commit` in two steps, so the caller can go on while the host writes:
    /// `commit_begin` hands the batch over (an error: it was refused whole),
    /// `commit_wait` returns its outcome once written (None: no batch begun).
    /// One batch at a time; every read waits for a batch in flight.
    fn commit_begin(&mut self, batch: Batch) -> Result<(), String>;
    fn commit_wait(&mut self) -> Option<Result<CommitOutcome, String>>;
    /// For each id, whether a record with it is already stored in `index`.
    fn contains(&self, index: Index, ids: &[String]) -> Vec<bool>;
    /// For each Syslog record body, whether the operator's log filters drop it.
    fn dropped_by_filters(&self, bodies: &[String]) -> Vec<bool>;
    fn log(&self, level: LogLevel, message: &str);
    /// `done` of `total` windows finished, `items` events collected this run.
    fn progress(&self, done: u32, total: u32, items: u64);
    /// Take one request from a rate-limit pool shared by every connector
    /// using the same credential. Ok: requests left. Err: UNIX time to retry.
    fn budget_take(&mut self, pool: &str, limit: u32, window_seconds: u32) -> Result<u32, u64>;
    /// Wait (real time, not the wall clock: a simulated clock may stand still).
    fn sleep(&mut self, duration: std::time::Duration);
}
