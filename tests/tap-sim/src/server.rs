//! HTTP routes: the SIEM and Threat APIs (Basic auth), plus the
//! simulator's own unauthenticated `/_sim/truth` and `/_sim/stats`.
//! "Now" always comes from `AppState::clock`; with `--faults`, a layer on
//! the API routes injects faults.

use std::ops::ControlFlow;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;

use crate::clock::{Clock, ClockError};
use crate::conn::Conn;
use crate::faults::{spurious_429, FaultInjector, FaultKind};
use crate::interval::{resolve_window, BadRequest};
use crate::json_writer::write_json_string;
use crate::model::{SiemEndpoint, ThreatMask};
use crate::query::{parse_pairs, parse_siem_query};
use crate::random::derive_seed;
use crate::ratelimit::RateLimiter;
use crate::source::EventSource;
use crate::stats::Stats;
use crate::stream_body::streamed_body;
use crate::threats::summarize;
use crate::timestamp::{ceil_ms, floor_ms, format_seconds_z, parse_timestamp};

pub const INVALID_CREDENTIALS: &str = "The provided credentials are invalid";

pub struct Credentials {
    pub principal: String,
    pub secret: String,
}

pub struct AppState {
    pub credentials: Credentials,
    pub source: Arc<dyn EventSource>,
    pub limiter: RateLimiter,
    pub stats: Stats,
    /// Seeds the (deterministic) order of events in responses.
    pub seed: u64,
    /// The simulator's "now" (system clock or `--clock-file`).
    pub clock: Clock,
    /// `--faults`, if given.
    pub faults: Option<FaultInjector>,
}

pub fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new();
    for endpoint in SiemEndpoint::ALL {
        router = router.route(
            endpoint.path(),
            get(
                move |State(state): State<Arc<AppState>>,
                      headers: HeaderMap,
                      RawQuery(query): RawQuery| {
                    siem(state, endpoint, headers, query)
                },
            ),
        );
    }
    router = router.route("/v2/threat/summary/{id}", get(threat_summary));
    if state.faults.is_some() {
        // Only the API routes above; never /_sim/* or unknown paths.
        router = router.route_layer(middleware::from_fn_with_state(state.clone(), inject_faults));
    }
    router
        .route("/_sim/truth", get(truth))
        .route("/_sim/stats", get(stats))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// Counts every API request and its error statuses for `/_sim/stats`.
async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let counted = !request.uri().path().starts_with("/_sim/");
    let method = request.method().clone();
    let uri = request.uri().clone();
    if counted {
        state.stats.request();
    }
    let response = next.run(request).await;
    if counted {
        state.stats.status(response.status().as_u16());
    }
    tracing::debug!(%method, %uri, status = response.status().as_u16(), "request");
    response
}

/// `--faults`: each authenticated API request draws a fault (in arrival
/// order, so the same request sequence gets the same faults). A spurious
/// 429 answers before the request is handled, so it spends no budget. Any
/// other fault lets the request be handled first (it is admitted to its
/// pool as usual), then replaces or reworks the response; a request the
/// pool refuses keeps its real 429, and body faults need a 200. Only
/// faults actually injected are counted in `/_sim/stats`.
async fn inject_faults(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(faults) = state.faults.as_ref() else {
        return next.run(request).await;
    };
    if authenticate(request.headers(), &state.credentials).is_none() {
        return next.run(request).await;
    }
    let Some(fault) = faults.draw() else {
        return next.run(request).await;
    };
    let uri = request.uri().clone();
    let conn = request
        .extensions()
        .get::<ConnectInfo<Conn>>()
        .map(|info| info.0.clone());
    let injected = |kind: FaultKind| {
        state.stats.fault(kind);
        tracing::info!(fault = kind.name(), %uri, "injecting fault");
    };
    if fault.kind == FaultKind::TooManyRequests {
        injected(fault.kind);
        return spurious_429();
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::TOO_MANY_REQUESTS
        || !fault.kind.applies_to(response.status())
    {
        return response;
    }
    injected(fault.kind);
    faults.apply(fault, response, conn).await
}

fn text_response(status: StatusCode, body: impl Into<String>) -> Response {
    let mut response = (status, body.into()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The clock file is missing or unreadable: 500, never the real clock.
fn clock_error(error: ClockError) -> Response {
    tracing::error!(%error, "no current time");
    text_response(StatusCode::INTERNAL_SERVER_ERROR, error.message)
}

fn bad_request(error: BadRequest) -> Response {
    text_response(StatusCode::BAD_REQUEST, error.0)
}

fn with_content_type(body: Body, content_type: &'static str) -> Response {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn not_found() -> Response {
    text_response(StatusCode::NOT_FOUND, "Not Found")
}

/// The principal, if the request carries the configured Basic credentials.
fn authenticate(headers: &HeaderMap, credentials: &Credentials) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (principal, secret) = decoded.split_once(':')?;
    (principal == credentials.principal && secret == credentials.secret)
        .then(|| principal.to_string())
}

/// Order: auth (401), rate limit (429; admitted requests count even when
/// answered 400), parameters (400), then the streamed 200.
async fn siem(
    state: Arc<AppState>,
    endpoint: SiemEndpoint,
    headers: HeaderMap,
    raw_query: Option<String>,
) -> Response {
    let Some(principal) = authenticate(&headers, &state.credentials) else {
        return text_response(StatusCode::UNAUTHORIZED, INVALID_CREDENTIALS);
    };
    // One reading of the clock serves the whole request.
    let now = match state.clock.now() {
        Ok(now) => now,
        Err(error) => return clock_error(error),
    };
    let now_ms = floor_ms(now);
    let pool = endpoint.pool();
    if state.limiter.try_admit(&principal, pool, now_ms).is_err() {
        state.stats.siem_throttled(pool);
        // The real API documents no Retry-After, so none is sent.
        return text_response(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
    }
    state.stats.siem_admitted(pool);

    let query = match parse_siem_query(raw_query.as_deref()) {
        Ok(query) => query,
        Err(error) => return bad_request(error),
    };
    let window = match resolve_window(&query.window, now) {
        Ok(window) => window,
        Err(error) => return bad_request(error),
    };
    let (from_ms, to_ms) = window.filed_range_ms();
    let query_end_time = format_seconds_z(window.end);
    let filter = query.threat_filter;
    let order_seed = derive_seed(&[state.seed, from_ms as u64, to_ms as u64, endpoint as u64]);
    let source = Arc::clone(&state.source);

    let body = streamed_body(move |sink| {
        let mut head = String::from("{\"queryEndTime\":");
        write_json_string(&mut head, &query_end_time);
        sink.push(&head)?;
        for &kind in endpoint.kinds() {
            sink.push(",\"")?;
            sink.push(kind.array_name())?;
            sink.push("\":[")?;
            let mut first = true;
            source.visit_window(
                kind,
                from_ms,
                to_ms,
                now_ms,
                derive_seed(&[order_seed, kind.index() as u64]),
                &mut |event| {
                    if !event.threats.intersects(filter) {
                        return ControlFlow::Continue(());
                    }
                    if !std::mem::take(&mut first) {
                        sink.push(",")?;
                    }
                    sink.push(event.json)
                },
            )?;
            sink.push("]")?;
        }
        sink.push("}")
    });
    with_content_type(body, "application/json")
}

/// `GET /v2/threat/summary/{id}`: authenticated, not rate limited.
async fn threat_summary(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if authenticate(&headers, &state.credentials).is_none() {
        return text_response(StatusCode::UNAUTHORIZED, INVALID_CREDENTIALS);
    }
    state.stats.threat_request();
    match state.source.threat(&id) {
        Some(info) => match serde_json::to_string(&summarize(&info)) {
            Ok(json) => with_content_type(Body::from(json), "application/json"),
            Err(e) => text_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        None => text_response(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// `GET /_sim/truth[?all=1][&from=T][&to=T]`: every event visible so far
/// that the default filters return (with `all=1`: falsePositive-only ones
/// too), oldest first, as NDJSON `{"type": ARRAY, "event": EVENT}`.
/// `from`/`to` optionally bound the filed time, `[from, to)`.
async fn truth(State(state): State<Arc<AppState>>, RawQuery(raw_query): RawQuery) -> Response {
    let mut filter = ThreatMask::default_filter();
    let mut from_ms = i64::MIN;
    let mut to_ms = i64::MAX;
    for (key, value) in parse_pairs(raw_query.as_deref().unwrap_or("")) {
        match key.as_str() {
            "all" => {
                if matches!(value.as_str(), "" | "1" | "true" | "yes") {
                    filter = ThreatMask::everything();
                }
            }
            "from" | "to" => match parse_timestamp(&value) {
                Ok((at, _)) if key == "from" => from_ms = ceil_ms(at),
                Ok((at, _)) => to_ms = ceil_ms(at),
                Err(e) => return bad_request(BadRequest(format!("Invalid {key}: {e}"))),
            },
            _ => {}
        }
    }
    let now_ms = match state.clock.now_ms() {
        Ok(now_ms) => now_ms,
        Err(error) => return clock_error(error),
    };
    let source = Arc::clone(&state.source);
    let body = streamed_body(move |sink| {
        source.visit_visible(from_ms, to_ms, now_ms, &mut |event| {
            if !event.threats.intersects(filter) {
                return ControlFlow::Continue(());
            }
            sink.push("{\"type\":\"")?;
            sink.push(event.kind.array_name())?;
            sink.push("\",\"event\":")?;
            sink.push(event.json)?;
            sink.push("}\n")
        })
    });
    with_content_type(body, "application/x-ndjson")
}

async fn stats(State(state): State<Arc<AppState>>) -> Response {
    let now_ms = match state.clock.now_ms() {
        Ok(now_ms) => now_ms,
        Err(error) => return clock_error(error),
    };
    let principal = &state.credentials.principal;
    let snapshot = state.stats.snapshot(
        |pool| state.limiter.in_window(principal, pool, now_ms),
        state.limiter.limit(),
    );
    match serde_json::to_string(&snapshot) {
        Ok(json) => with_content_type(Body::from(json), "application/json"),
        Err(e) => text_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
