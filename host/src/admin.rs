//! The admin API of `dphost run --admin ADDR`:
//!
//! - `GET /healthz`: 200 while the host runs (with how many connectors run now);
//! - `GET /status`: every connector's and output's status, as
//!   `dphost status --format json`;
//! - `GET /metrics`: OpenMetrics text for Prometheus;
//! - `POST /connectors/{name}/test`: the connection test, one at a time
//!   (a second request while one runs gets 409).
//!
//! It listens on loopback unless told otherwise; bound to any other address
//! it requires a bearer token (`--admin-token-file`), so that no one on the
//! network can read tenant names or spend the API quota with tests.

use crate::runtime::Operation;
use crate::scheduler::Host;
use anyhow::{bail, Context, Result};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;

/// How the operator asked for the admin API.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    pub addr: SocketAddr,
    /// Required unless `addr` is loopback.
    pub token: Option<String>,
}

impl AdminOptions {
    /// Checks the address/token pairing and reads the token file.
    pub fn new(addr: SocketAddr, token_file: Option<&std::path::Path>) -> Result<AdminOptions> {
        let token = match token_file {
            Some(path) => {
                let t = std::fs::read_to_string(path)
                    .with_context(|| {
                        format!("cannot read the admin token file {}", path.display())
                    })?
                    .trim()
                    .to_string();
                if t.len() < 16 {
                    bail!(
                        "the admin token in {} is shorter than 16 characters: use a long random token (e.g. `openssl rand -hex 32`)",
                        path.display()
                    );
                }
                Some(t)
            }
            None => None,
        };
        if !addr.ip().is_loopback() && token.is_none() {
            bail!(
                "the admin API would listen on {addr}, which is not loopback, without a token: pass --admin-token-file FILE (clients then send `Authorization: Bearer <token>`), or listen on 127.0.0.1"
            );
        }
        Ok(AdminOptions { addr, token })
    }
}

struct AdminState {
    host: Arc<Host>,
    token: Option<String>,
}

/// Binds now (so a taken port fails `dphost run` at once) and serves until
/// `stop` turns true.
pub async fn start(
    options: AdminOptions,
    host: Arc<Host>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .with_context(|| format!("the admin API cannot listen on {}", options.addr))?;
    let local = listener.local_addr()?;
    let state = Arc::new(AdminState {
        host,
        token: options.token,
    });
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/connectors/{name}/test", post(test_connection))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state);
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!("the admin API stopped: {e}");
        }
    });
    tracing::info!("admin API on http://{local} (/status, /metrics, /healthz)");
    Ok(local)
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{value:#}\n"),
    )
        .into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json(status, serde_json::json!({ "error": message.into() }))
}

/// Every route: 401 unless the request carries the token (when one is set).
async fn require_token(
    State(state): State<Arc<AdminState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(expected) = &state.token else {
        return next.run(request).await;
    };
    let headers = request.headers();
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return next.run(request).await;
    }
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "send the admin token as `Authorization: Bearer <token>`",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
    r
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz(State(state): State<Arc<AdminState>>) -> Response {
    let config = state.host.config();
    json(
        StatusCode::OK,
        serde_json::json!({
            "status": "ok",
            "connectors": config.connectors.len(),
            "running": state.host.running_count(),
        }),
    )
}

async fn status(State(state): State<Arc<AdminState>>) -> Response {
    let host = state.host.clone();
    let rows = tokio::task::spawn_blocking(move || {
        let config = host.config();
        let now_ms = config.host.clock().now_ms()?;
        let mut status = crate::status::host(&config, &host.runtime.store, now_ms)?;
        for r in &mut status.connectors {
            r.running = Some(host.is_running(&r.connector));
        }
        status.leases = Some(host.leases.state());
        anyhow::Ok(status)
    })
    .await;
    match rows {
        Ok(Ok(rows)) => json(
            StatusCode::OK,
            serde_json::to_value(rows).expect("status serialises"),
        ),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the status: {e:#}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let host = state.host.clone();
    let text = tokio::task::spawn_blocking(move || {
        let config = host.config();
        let now_ms = config.host.clock().now_ms()?;
        host.metrics
            .render_with_leases(&config, &host.runtime.store, now_ms, &host.leases.state())
    })
    .await;
    match text {
        Ok(Ok(text)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render metrics: {e:#}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn test_connection(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Response {
    let config = state.host.config();
    let Ok(connector) = config.connector(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no connector named `{name}` is configured"),
        );
    };
    // One at a time: each test spends a request from the API's quota.
    let Ok(_slot) = state.host.test_slot.try_lock() else {
        return error(
            StatusCode::CONFLICT,
            "a connection test is already running: try again when it has finished",
        );
    };
    let report = state.host.call(connector, Operation::TestConnection).await;
    match &report.result {
        Ok(message) => json(
            StatusCode::OK,
            serde_json::json!({
                "connector": name,
                "ok": true,
                "message": message,
                "elapsed_ms": report.elapsed.as_millis() as u64,
            }),
        ),
        // The test ran, the connector's API (or its configuration) failed it.
        Err(f) => json(
            StatusCode::BAD_GATEWAY,
            serde_json::json!({
                "connector": name,
                "ok": false,
                "outcome": f.status(),
                "error": f.to_string(),
                "elapsed_ms": report.elapsed.as_millis() as u64,
            }),
        ),
    }
}
