//! The WIT glue (wasm32 only): implements `platform::Http` over
//! `wasi:http/outgoing-handler` and `platform::Platform` over the wall clock
//! and the `dphost:connector` imports (state, sink, log, budget), and exports
//! `connector` by calling the plain-Rust entry points in `lib.rs`.

wit_bindgen::generate!({
    path: "../wit",
    world: "connector-world",
    generate_all,
});

use time::OffsetDateTime;

use dphost::connector::types as wit;
use dphost::connector::{budget, log, sink, state};
use exports::dphost::connector::connector::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingResponse, Method, OutgoingRequest, RequestOptions,
    Scheme,
};
use wasi::io::streams::{InputStream, StreamError};

use crate::config::{self, Config};
use crate::platform::{
    Batch, BodyReader, CommitOutcome, ConnectorError, Http, Index, LogLevel, Platform,
    StreamingResponse, TransportError, WriteMode,
};

const SECOND_NS: u64 = 1_000_000_000;
const CONNECT_TIMEOUT_NS: u64 = 30 * SECOND_NS;
const FIRST_BYTE_TIMEOUT_NS: u64 = 120 * SECOND_NS;
const BETWEEN_BYTES_TIMEOUT_NS: u64 = 60 * SECOND_NS;
const READ_CHUNK: u64 = 64 * 1024;

struct Component;

impl Guest for Component {
    fn describe() -> String {
        crate::describe()
    }

    fn validate_config(config: String) -> Result<(), Vec<String>> {
        crate::validate_config(&config)
    }

    fn test_connection(config: String) -> Result<String, wit::ConnectorError> {
        let config = crate::parse_config(&config).map_err(to_wit_error)?;
        let mut http = WasiHttp::new(&config);
        crate::test_connection(&config, &mut http, &mut HostPlatform).map_err(to_wit_error)
    }

    fn collect(config: String) -> Result<String, wit::ConnectorError> {
        let config = crate::parse_config(&config).map_err(to_wit_error)?;
        let mut http = WasiHttp::new(&config);
        crate::collect(&config, &mut http, &mut HostPlatform).map_err(to_wit_error)
    }
}

export!(Component);

fn to_wit_error(e: ConnectorError) -> wit::ConnectorError {
    match e {
        ConnectorError::BadConfig(problems) => wit::ConnectorError::BadConfig(problems),
        ConnectorError::Http(f) => wit::ConnectorError::Http(wit::HttpFailure {
            status: f.status,
            explanation: f.explanation,
            recommendation: f.recommendation,
        }),
        ConnectorError::RateLimited(s) => wit::ConnectorError::RateLimited(s),
        ConnectorError::Transient(m) => wit::ConnectorError::Transient(m),
        ConnectorError::Internal(m) => wit::ConnectorError::Internal(m),
    }
}

fn to_wit_index(i: Index) -> wit::Index {
    match i {
        Index::Syslog => wit::Index::Syslog,
        Index::Alerts => wit::Index::Alerts,
        Index::Quarantine => wit::Index::Quarantine,
    }
}

/// The host's clock, state, sink and log.
struct HostPlatform;

impl Platform for HostPlatform {
    fn now(&self) -> OffsetDateTime {
        let t = wasi::clocks::wall_clock::now();
        let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanoseconds);
        OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    fn state_get(&self, key: &str) -> Option<Vec<u8>> {
        state::get(key)
    }

    fn commit(&mut self, batch: Batch) -> Result<CommitOutcome, String> {
        sink::commit(&to_wit_batch(batch)).map(from_wit_outcome)
    }

    fn commit_begin(&mut self, batch: Batch) -> Result<(), String> {
        sink::commit_begin(&to_wit_batch(batch))
    }

    fn commit_wait(&mut self) -> Option<Result<CommitOutcome, String>> {
        sink::commit_wait().map(|r| r.map(from_wit_outcome))
    }

    fn contains(&self, index: Index, ids: &[String]) -> Vec<bool> {
        sink::contains(to_wit_index(index), ids)
    }

    fn dropped_by_filters(&self, bodies: &[String]) -> Vec<bool> {
        sink::dropped_by_filters(bodies)
    }

    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Trace => log::Level::Trace,
            LogLevel::Debug => log::Level::Debug,
            LogLevel::Info => log::Level::Info,
            LogLevel::Warn => log::Level::Warn,
            LogLevel::Error => log::Level::Error,
        };
        log::log(level, message);
    }

    fn progress(&self, done: u32, total: u32, items: u64) {
        log::progress(done, total, items);
    }

    fn budget_take(&mut self, pool: &str, limit: u32, window_seconds: u32) -> Result<u32, u64> {
        budget::take(pool, limit, window_seconds)
    }

    fn sleep(&mut self, duration: std::time::Duration) {
        // The monotonic clock, not the wall clock (which may be simulated).
        std::thread::sleep(duration);
    }
}

/// `GET` requests to the configured Host URL. No `Authorization` header: the
/// host adds the credentials and refuses every other authority.
struct WasiHttp {
    scheme: config::Scheme,
    authority: String,
}

impl WasiHttp {
    fn new(config: &Config) -> Self {
        WasiHttp {
            scheme: config.endpoint.scheme,
            authority: config.endpoint.authority.clone(),
        }
    }
}

impl Http for WasiHttp {
    fn get_streaming(&mut self, path_and_query: &str) -> Result<StreamingResponse, TransportError> {
        let failed = |what: &str| TransportError::Failed(what.to_string());

        let headers = Fields::from_list(&[("accept".to_string(), b"application/json".to_vec())])
            .map_err(|e| failed(&format!("invalid request header: {e:?}")))?;
        let request = OutgoingRequest::new(headers);
        request
            .set_method(&Method::Get)
            .map_err(|()| failed("the host refused the method GET"))?;
        let scheme = match self.scheme {
            config::Scheme::Http => Scheme::Http,
            config::Scheme::Https => Scheme::Https,
        };
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| failed("the host refused the scheme"))?;
        request.set_authority(Some(&self.authority)).map_err(|()| {
            failed(&format!(
                "the host refused the authority {}",
                self.authority
            ))
        })?;
        request
            .set_path_with_query(Some(path_and_query))
            .map_err(|()| failed(&format!("the host refused the path {path_and_query}")))?;

        // A host that does not support a timeout keeps its own default.
        let options = RequestOptions::new();
        let _ = options.set_connect_timeout(Some(CONNECT_TIMEOUT_NS));
        let _ = options.set_first_byte_timeout(Some(FIRST_BYTE_TIMEOUT_NS));
        let _ = options.set_between_bytes_timeout(Some(BETWEEN_BYTES_TIMEOUT_NS));

        let future = outgoing_handler::handle(request, Some(options)).map_err(transport_error)?;
        future.subscribe().block();
        let response = match future.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(transport_error(code)),
            Some(Err(())) => return Err(failed("the response was already taken")),
            None => return Err(failed("the response is not ready after waiting for it")),
        };
        drop(future);

        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(name, value)| {
                (
                    name.to_ascii_lowercase(),
                    String::from_utf8_lossy(&value).into_owned(),
                )
            })
            .collect();
        let body = response
            .consume()
            .map_err(|()| failed("the response body was already taken"))?;
        let stream = body.stream().map_err(|()| {
            TransportError::Failed("the response body stream was already taken".into())
        })?;
        Ok(StreamingResponse {
            status,
            headers,
            body: Box::new(WasiBody {
                stream: Some(stream),
                _body: body,
                _response: response,
            }),
        })
    }
}

/// A response body read in chunks of up to 64 KiB as the guest asks for
/// them: only one chunk is in memory at a time.
struct WasiBody {
    // Fields drop in this order: the stream is a child of the body, which
    // came from the response. The trailers are not needed; dropping the
    // body ends the exchange.
    stream: Option<InputStream>,
    _body: IncomingBody,
    _response: IncomingResponse,
}

impl BodyReader for WasiBody {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        let Some(stream) = &self.stream else {
            return Ok(None);
        };
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => Ok(Some(chunk)),
            Err(StreamError::Closed) => {
                self.stream = None;
                Ok(None)
            }
            Err(StreamError::LastOperationFailed(e)) => {
                self.stream = None;
                let detail = match wasi::http::types::http_error_code(&e) {
                    Some(code) => return Err(transport_error(code)),
                    None => e.to_debug_string(),
                };
                Err(TransportError::Failed(format!(
                    "reading the response body failed: {detail}"
                )))
            }
        }
    }
}

fn transport_error(code: ErrorCode) -> TransportError {
    match code {
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout => TransportError::Timeout(format!("{code:?}")),
        other => TransportError::Failed(format!("{other:?}")),
    }
}

fn to_wit_batch(batch: Batch) -> wit::Batch {
    wit::Batch {
        records: batch
            .records
            .into_iter()
            .map(|r| wit::Record {
                index: to_wit_index(r.index),
                id: r.id,
                body: r.body,
                mode: match r.mode {
                    WriteMode::Insert => wit::WriteMode::Insert,
                    WriteMode::Upsert => wit::WriteMode::Upsert,
                },
            })
            .collect(),
        actions: batch
            .actions
            .into_iter()
            .map(|a| wit::Action {
                id: a.id,
                kind: a.kind,
                target: a.target,
                reason: a.reason,
                params: a.params,
            })
            .collect(),
        state: batch.state,
    }
}

fn from_wit_outcome(o: wit::CommitOutcome) -> CommitOutcome {
    CommitOutcome {
        written: o.written,
        duplicates: o.duplicates,
    }
}
