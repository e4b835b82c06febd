//! Fault injection (`--faults 500=0.05,reset=0.03,...`): the simulator
//! misbehaves on purpose, so connectors can be tested for robustness.
//!
//! Each authenticated `/v2/siem/*` or `/v2/threat/*` request draws once from
//! a random stream seeded by `--fault-seed`, so the same request sequence
//! gets the same faults. The server (`server.rs`) decides where a fault
//! applies; this module knows the kinds, parses the spec and turns a normal
//! response into a faulty one.

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::conn::Conn;
use crate::random::{derive_seed, rng_for};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// `500` with a short text body.
    InternalError,
    /// `503` with a short text body.
    Unavailable,
    /// A spurious `429`, not counted against the rate-limit pool.
    TooManyRequests,
    /// The connection is aborted (TCP reset) without a response.
    Reset,
    /// `--slow-secs` before the headers, then the normal response.
    SlowFirstByte,
    /// The body in small chunks with pauses, `--slow-secs` in all.
    SlowBody,
    /// Headers (full `Content-Length`) and part of the body, then the
    /// connection is closed.
    Truncate,
    /// A 200 whose body is not valid JSON.
    Malformed,
}

impl FaultKind {
    /// In the order rates are applied (whatever order the spec gives).
    pub const ALL: [FaultKind; 8] = [
        FaultKind::InternalError,
        FaultKind::Unavailable,
        FaultKind::TooManyRequests,
        FaultKind::Reset,
        FaultKind::SlowFirstByte,
        FaultKind::SlowBody,
        FaultKind::Truncate,
        FaultKind::Malformed,
    ];

    /// The name used in `--faults` and in `/_sim/stats`.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::InternalError => "500",
            FaultKind::Unavailable => "503",
            FaultKind::TooManyRequests => "429",
            FaultKind::Reset => "reset",
            FaultKind::SlowFirstByte => "slow-first-byte",
            FaultKind::SlowBody => "slow-body",
            FaultKind::Truncate => "truncate",
            FaultKind::Malformed => "malformed",
        }
    }

    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Kinds that rework the body need a 200 to work on; the others apply
    /// to any response.
    pub fn applies_to(self, status: StatusCode) -> bool {
        match self {
            FaultKind::SlowBody | FaultKind::Truncate | FaultKind::Malformed => {
                status == StatusCode::OK
            }
            _ => true,
        }
    }
}

/// A validated `--faults` value: a rate per kind, adding up to at most 1.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultSpec {
    rates: [f64; FaultKind::ALL.len()],
}

impl FaultSpec {
    /// Parses `kind=rate[,kind=rate...]`. Empty items are ignored.
    pub fn parse(text: &str) -> Result<FaultSpec, String> {
        let mut spec = FaultSpec::default();
        let mut given = [false; FaultKind::ALL.len()];
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, rate) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not KIND=RATE"))?;
            let (name, rate) = (name.trim(), rate.trim());
            let kind = FaultKind::parse(name).ok_or_else(|| {
                let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown fault kind {name:?} (expected one of: {})",
                    names.join(", ")
                )
            })?;
            if std::mem::replace(&mut given[kind.index()], true) {
                return Err(format!("fault kind {name} is given twice"));
            }
            let value: f64 = rate
                .parse()
                .map_err(|_| format!("rate {rate:?} for {name} is not a number"))?;
            if !(0.0..=1.0).contains(&value) {
                return Err(format!("rate {rate} for {name} is outside [0, 1]"));
            }
            spec.rates[kind.index()] = value;
        }
        let total = spec.total();
        // Some slack for decimal fractions such as 0.1 + 0.2 + 0.7.
        if total > 1.0 + 1e-9 {
            return Err(format!("the rates add up to {total}, more than 1"));
        }
        Ok(spec)
    }

    pub fn rate(&self, kind: FaultKind) -> f64 {
        self.rates[kind.index()]
    }

    pub fn total(&self) -> f64 {
        self.rates.iter().sum()
    }
}

impl std::fmt::Display for FaultSpec {
    /// The kinds with a rate, in canonical order (`500=0.05,reset=0.03`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> = FaultKind::ALL
            .into_iter()
            .filter(|&k| self.rate(k) > 0.0)
            .map(|k| format!("{}={}", k.name(), self.rate(k)))
            .collect();
        f.write_str(&items.join(","))
    }
}

/// One drawn fault: its kind, and a seed for its details (where to cut a
/// body, which byte to insert).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub detail_seed: u64,
}

pub struct FaultInjector {
    spec: FaultSpec,
    slow: Duration,
    rng: Mutex<ChaCha8Rng>,
}

/// How long a truncated body waits for its part to be sent before the
/// connection is closed, if the client does not read it.
const TRUNCATE_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// A slow body is sent in at most this many chunks per second of
/// `--slow-secs` (and at most `MAX_SLOW_CHUNKS` in all).
const SLOW_CHUNKS_PER_SEC: f64 = 10.0;
const MAX_SLOW_CHUNKS: usize = 100;

impl FaultInjector {
    pub fn new(spec: FaultSpec, seed: u64, slow: Duration) -> FaultInjector {
        FaultInjector {
            spec,
            slow,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(derive_seed(&[
                seed,
                0x6661_756c_7473,
            ]))),
        }
    }

    pub fn spec(&self) -> &FaultSpec {
        &self.spec
    }

    /// The next request's fault, if any. Every call consumes the same
    /// amount of the random stream, so draws depend only on their order.
    pub fn draw(&self) -> Option<Fault> {
        let (roll, detail_seed) = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            (rng.gen::<f64>(), rng.gen::<u64>())
        };
        let mut upto = 0.0;
        for kind in FaultKind::ALL {
            let rate = self.spec.rate(kind);
            upto += rate;
            if rate > 0.0 && roll < upto {
                return Some(Fault { kind, detail_seed });
            }
        }
        None
    }

    /// Turns the normal `response` into the faulty one. `fault.kind` must
    /// apply to it (see [`FaultKind::applies_to`]); a spurious 429 is
    /// answered before the request is handled (see `server.rs`), but is
    /// handled here too.
    pub async fn apply(&self, fault: Fault, response: Response, conn: Option<Conn>) -> Response {
        match fault.kind {
            FaultKind::InternalError => {
                text_response(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
            }
            FaultKind::Unavailable => {
                text_response(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
            }
            FaultKind::TooManyRequests => spurious_429(),
            FaultKind::Reset => reset(conn),
            FaultKind::SlowFirstByte => {
                tokio::time::sleep(self.slow).await;
                response
            }
            FaultKind::SlowBody => slow_body(response, self.slow).await,
            FaultKind::Truncate => truncate(response, fault.detail_seed, conn).await,
            FaultKind::Malformed => malformed(response, fault.detail_seed).await,
        }
    }
}

fn text_response(status: StatusCode, body: &'static str) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Looks like the real throttling answer.
pub fn spurious_429() -> Response {
    text_response(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
}

/// A body that fails as soon as it is read: hyper then drops the
/// connection without finishing the response.
fn failing_body(reason: &'static str) -> Body {
    Body::from_stream(futures_util::stream::once(async move {
        Err::<Bytes, io::Error>(io::Error::other(reason))
    }))
}

fn reset(conn: Option<Conn>) -> Response {
    match conn {
        Some(conn) => {
            // The connection refuses to write the (empty) response and is
            // closed with RST.
            conn.reset();
            Response::new(Body::empty())
        }
        // Not reachable with the fault listener; the closest thing without it.
        None => Response::new(failing_body("reset by fault injection")),
    }
}

/// The whole body of `response`, or a 500 if it cannot be read.
async fn buffer(response: Response) -> Result<(axum::http::response::Parts, Bytes), Response> {
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    match to_bytes(body, usize::MAX).await {
        Ok(bytes) => Ok((parts, bytes)),
        Err(error) => {
            tracing::error!(%error, "cannot buffer a body for fault injection");
            Err(text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
            ))
        }
    }
}

fn set_content_length(parts: &mut axum::http::response::Parts, len: usize) {
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len as u64));
}

/// How a slow body of `len` bytes is cut: chunk size, number of chunks and
/// the pause before each chunk.
pub fn slow_plan(len: usize, slow: Duration) -> (usize, usize, Duration) {
    let wanted = (slow.as_secs_f64() * SLOW_CHUNKS_PER_SEC).ceil() as usize;
    let chunks = wanted.clamp(1, MAX_SLOW_CHUNKS).min(len.max(1));
    let chunk_size = len.div_ceil(chunks).max(1);
    let chunks = len.div_ceil(chunk_size).max(1);
    (chunk_size, chunks, slow / chunks as u32)
}

async fn slow_body(response: Response, slow: Duration) -> Response {
    let (mut parts, bytes) = match buffer(response).await {
        Ok(buffered) => buffered,
        Err(response) => return response,
    };
    set_content_length(&mut parts, bytes.len());
    let (chunk_size, chunks, pause) = slow_plan(bytes.len(), slow);
    let pieces: Vec<Bytes> = (0..chunks)
        .map(|i| {
            bytes.slice((i * chunk_size).min(bytes.len())..((i + 1) * chunk_size).min(bytes.len()))
        })
        .collect();
    let stream = futures_util::stream::iter(pieces).then(move |piece| async move {
        tokio::time::sleep(pause).await;
        Ok::<Bytes, io::Error>(piece)
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// Where a truncated body of `len` bytes is cut: at least one byte is sent
/// and at least one is missing (for `len >= 2`).
pub fn truncate_point(len: usize, detail_seed: u64) -> usize {
    if len < 2 {
        return 0;
    }
    rng_for(&[detail_seed, 0x74_72_75_6e_63]).gen_range(1..len)
}

async fn truncate(response: Response, detail_seed: u64, conn: Option<Conn>) -> Response {
    let (mut parts, bytes) = match buffer(response).await {
        Ok(buffered) => buffered,
        Err(response) => return response,
    };
    // Announce the full length, send part of it.
    set_content_length(&mut parts, bytes.len());
    let part = bytes.slice(..truncate_point(bytes.len(), detail_seed));
    let stream = futures_util::stream::unfold(0u8, move |step| {
        let part = part.clone();
        let conn = conn.clone();
        async move {
            match step {
                0 => Some((Ok::<Bytes, io::Error>(part), 1)),
                1 => {
                    // Let the part reach the client, then break off: the
                    // body error makes hyper close the connection.
                    match conn {
                        Some(conn) => conn.wait_for_flush(TRUNCATE_FLUSH_LIMIT).await,
                        None => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                    Some((
                        Err(io::Error::other("body truncated by fault injection")),
                        2,
                    ))
                }
                _ => None,
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// Bytes that make any JSON text invalid wherever they are inserted: raw
/// control characters are not allowed in strings nor between tokens, and
/// 0xFF is never valid UTF-8.
const STRAY_BYTES: [u8; 4] = [0x00, 0x01, 0x1b, 0xff];

/// Corrupts a JSON text so that it is no longer valid JSON: either cut in
/// the middle (likely inside an event) and closed with garbage, or with a
/// stray byte inserted.
pub fn corrupt_json(json: &[u8], detail_seed: u64) -> Vec<u8> {
    let mut rng = rng_for(&[detail_seed, 0x6d_61_6c_66]);
    let len = json.len();
    let stray = STRAY_BYTES[rng.gen_range(0..STRAY_BYTES.len())];
    if rng.gen_bool(0.5) && len >= 4 {
        let cut = rng.gen_range(len / 4..=len * 3 / 4).max(1);
        let mut out = json[..cut].to_vec();
        out.push(stray);
        out.extend_from_slice(b"garbage\"}]}");
        out
    } else {
        let at = rng.gen_range(0..=len);
        let mut out = Vec::with_capacity(len + 1);
        out.extend_from_slice(&json[..at]);
        out.push(stray);
        out.extend_from_slice(&json[at..]);
        out
    }
}

async fn malformed(response: Response, detail_seed: u64) -> Response {
    let (parts, bytes) = match buffer(response).await {
        Ok(buffered) => buffered,
        Err(response) => return response,
    };
    Response::from_parts(parts, Body::from(corrupt_json(&bytes, detail_seed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parsing_and_validation() {
        let spec = FaultSpec::parse(
            "500=0.05,503=0.05, reset=0.03,slow-first-byte=0.02,slow-body=0.02,truncate=0.03,malformed=0.02,429=0.03",
        )
        .unwrap();
        assert_eq!(spec.rate(FaultKind::InternalError), 0.05);
        assert_eq!(spec.rate(FaultKind::TooManyRequests), 0.03);
        assert_eq!(spec.rate(FaultKind::Malformed), 0.02);
        assert!((spec.total() - 0.25).abs() < 1e-12);
        assert_eq!(FaultSpec::parse("").unwrap().total(), 0.0);
        assert!(FaultSpec::parse("500=1").is_ok());
        assert!(FaultSpec::parse("500=0.1,503=0.2,reset=0.7").is_ok());
        assert!(FaultSpec::parse("500=0,").is_ok());
        assert_eq!(
            FaultSpec::parse("truncate=0.5, 500=0.25,503=0")
                .unwrap()
                .to_string(),
            "500=0.25,truncate=0.5"
        );

        for (text, message) in [
            ("404=0.1", "unknown fault kind \"404\""),
            ("500", "is not KIND=RATE"),
            ("500=x", "is not a number"),
            ("500=1.5", "outside [0, 1]"),
            ("500=-0.1", "outside [0, 1]"),
            ("500=NaN", "outside [0, 1]"),
            ("500=0.6,503=0.5", "add up to"),
            ("500=0.1,500=0.2", "given twice"),
        ] {
            let error = FaultSpec::parse(text).unwrap_err();
            assert!(error.contains(message), "{text}: {error}");
        }
    }

    #[test]
    fn draws_are_deterministic_and_follow_the_rates() {
        let spec = FaultSpec::parse("500=0.2,reset=0.1,malformed=0.3").unwrap();
        let draw_all = |seed| {
            let injector = FaultInjector::new(spec.clone(), seed, Duration::ZERO);
            (0..20_000).map(|_| injector.draw()).collect::<Vec<_>>()
        };
        let a = draw_all(1);
        assert_eq!(a, draw_all(1));
        assert_ne!(a, draw_all(2));
        let share = |kind| {
            a.iter().filter(|d| d.map(|f| f.kind) == Some(kind)).count() as f64 / a.len() as f64
        };
        assert!((share(FaultKind::InternalError) - 0.2).abs() < 0.02);
        assert!((share(FaultKind::Reset) - 0.1).abs() < 0.02);
        assert!((share(FaultKind::Malformed) - 0.3).abs() < 0.02);
        assert_eq!(share(FaultKind::Unavailable), 0.0);
        let none = a.iter().filter(|d| d.is_none()).count() as f64 / a.len() as f64;
        assert!((none - 0.4).abs() < 0.02);

        // Rate 1: every request.
        let always = FaultInjector::new(FaultSpec::parse("truncate=1").unwrap(), 3, Duration::ZERO);
        assert!((0..1000).all(|_| always.draw().map(|f| f.kind) == Some(FaultKind::Truncate)));
        let never = FaultInjector::new(FaultSpec::default(), 3, Duration::ZERO);
        assert!((0..1000).all(|_| never.draw().is_none()));
    }

    #[test]
    fn corrupted_json_is_never_valid() {
        let bodies = [
            r#"{"queryEndTime":"2026-11-20T10:00:00Z","messagesDelivered":[{"id":"a","recipient":["x@example.com"],"spamScore":0,"fromAddress":null,"completelyRewritten":true}],"clicksPermitted":[]}"#,
            r#"{"queryEndTime":"2026-11-20T10:00:00Z","clicksBlocked":[]}"#,
            r#"{"id":"x","actors":[{"id":"1","name":"\\"}]}"#,
            "[]",
            "0",
        ];
        for body in bodies {
            assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
            for seed in 0..500 {
                let bad = corrupt_json(body.as_bytes(), seed);
                assert!(
                    serde_json::from_slice::<serde_json::Value>(&bad).is_err(),
                    "seed {seed}: {:?}",
                    String::from_utf8_lossy(&bad)
                );
            }
        }
        // Deterministic per seed.
        assert_eq!(
            corrupt_json(bodies[0].as_bytes(), 9),
            corrupt_json(bodies[0].as_bytes(), 9)
        );
    }

    #[test]
    fn truncation_keeps_something_and_drops_something() {
        for seed in 0..200 {
            for len in [2usize, 3, 10, 5000] {
                let cut = truncate_point(len, seed);
                assert!(cut >= 1 && cut < len, "{len} {cut}");
            }
        }
        assert_eq!(truncate_point(1, 1), 0);
        assert_eq!(truncate_point(0, 1), 0);
    }

    #[test]
    fn slow_bodies_take_about_the_slow_time() {
        let slow = Duration::from_secs(5);
        for len in [0usize, 1, 7, 49, 50, 51, 1000, 10_000_000] {
            let (chunk_size, chunks, pause) = slow_plan(len, slow);
            assert!(chunk_size >= 1);
            assert!(chunks * chunk_size >= len, "{len}");
            assert!((chunks - 1) * chunk_size < len.max(1), "{len}");
            let total = pause * chunks as u32;
            assert!(
                total <= slow && total + Duration::from_millis(100) >= slow,
                "{len}: {total:?}"
            );
        }
        assert_eq!(slow_plan(1000, slow).1, 50);
        assert_eq!(slow_plan(0, Duration::ZERO).2, Duration::ZERO);
    }

    #[tokio::test]
    async fn responses_are_reworked() {
        let json = r#"{"queryEndTime":"2026-11-20T10:00:00Z","clicksBlocked":[]}"#;
        let ok = || {
            let mut response = Response::new(Body::from(json));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        };
        let injector = FaultInjector::new(FaultSpec::default(), 1, Duration::from_millis(50));
        let fault = |kind| Fault {
            kind,
            detail_seed: 4,
        };

        for (kind, status) in [
            (FaultKind::InternalError, 500),
            (FaultKind::Unavailable, 503),
            (FaultKind::TooManyRequests, 429),
        ] {
            let response = injector.apply(fault(kind), ok(), None).await;
            assert_eq!(response.status().as_u16(), status);
            let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
            assert!(!body.is_empty());
        }

        let malformed = injector
            .apply(fault(FaultKind::Malformed), ok(), None)
            .await;
        assert_eq!(malformed.status(), StatusCode::OK);
        assert_eq!(
            malformed.headers()[header::CONTENT_TYPE],
            "application/json"
        );
        let body = to_bytes(malformed.into_body(), usize::MAX).await.unwrap();
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_err());

        let started = std::time::Instant::now();
        let slow = injector.apply(fault(FaultKind::SlowBody), ok(), None).await;
        assert_eq!(
            slow.headers()[header::CONTENT_LENGTH],
            json.len().to_string()
        );
        let body = to_bytes(slow.into_body(), usize::MAX).await.unwrap();
        assert_eq!(body, json.as_bytes());
        assert!(started.elapsed() >= Duration::from_millis(45));

        let truncated = injector.apply(fault(FaultKind::Truncate), ok(), None).await;
        assert_eq!(
            truncated.headers()[header::CONTENT_LENGTH],
            json.len().to_string()
        );
        assert!(to_bytes(truncated.into_body(), usize::MAX).await.is_err());

        let conn = Conn::default();
        let reset = injector
            .apply(fault(FaultKind::Reset), ok(), Some(conn.clone()))
            .await;
        assert!(conn.is_reset());
        drop(reset);
        let reset = injector.apply(fault(FaultKind::Reset), ok(), None).await;
        assert!(to_bytes(reset.into_body(), usize::MAX).await.is_err());
    }
}
