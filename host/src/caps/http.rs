//! `wasi:http/outgoing-handler`, gated: a connector may send requests to its
//! own configured API origin and nowhere else, and the host adds the
//! credential there itself, so the component never holds a secret.
//!
//! The gate is a `WasiHttpHooks` implementation: wasmtime-wasi-http does the
//! protocol work, we decide what may leave the sandbox. Two checks, in order:
//! the request's name (scheme, host, port) must be the configured origin,
//! and every address that name resolves to must pass `net_policy`.
//!
//! Redirects are never followed: wasi-http hands the 3xx to the component,
//! and a request to the `Location` would be a new request, gated like any.

use super::net_policy;
use crate::config::{AllowedOrigin, Credential};
use crate::runtime::RunState;
use base64::Engine as _;
use http::header::{HeaderValue, AUTHORIZATION, PROXY_AUTHORIZATION};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{
    ForbiddenHeaderFilter, RequestOptions, WasiBody, WasiHttpHooks, DEFAULT_FORBIDDEN_HEADERS,
};

/// Upper bounds on what a component may ask for as timeouts.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(120);

pub fn link(linker: &mut Linker<RunState>) -> anyhow::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    Ok(())
}

/// The per-run HTTP gate.
pub struct HttpGate {
    connector: String,
    allowed: AllowedOrigin,
    authorization: Option<HeaderValue>,
    pub requests: u64,
    /// Requests refused by name (at once) or by address (once resolved).
    refused: Arc<Mutex<Vec<String>>>,
}

impl HttpGate {
    /// Every refused request of this run, as `scheme://authority` and why.
    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().expect("refused list poisoned").clone()
    }
}

pub fn prepare(
    connector: &str,
    allowed: &AllowedOrigin,
    credential: Option<&Credential>,
) -> HttpGate {
    let authorization = credential.map(|c| {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", c.principal, c.secret));
        let mut value = HeaderValue::from_str(&format!("Basic {token}"))
            .expect("base64 is a valid header value");
        value.set_sensitive(true);
        value
    });
    HttpGate {
        connector: connector.to_string(),
        allowed: allowed.clone(),
        authorization,
        requests: 0,
        refused: Arc::default(),
    }
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for HttpGate {
    // The component may not set credentials of its own: only the host's
    // reach the API, and a component cannot smuggle one elsewhere.
    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        Arc::new(|name| {
            name == AUTHORIZATION
                || name == PROXY_AUTHORIZATION
                || DEFAULT_FORBIDDEN_HEADERS.contains(name)
        })
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        let uri = request.uri();
        let allowed = match (uri.scheme_str(), uri.host()) {
            (Some(scheme), Some(host)) => self.allowed.matches(scheme, host, uri.port_u16()),
            _ => false,
        };
        if !allowed {
            let target = format!(
                "{}://{}",
                uri.scheme_str().unwrap_or("?"),
                uri.authority().map(|a| a.as_str()).unwrap_or("?")
            );
            tracing::warn!(
                connector = %self.connector,
                "refused an HTTP request to {target}: this connector may only reach {}",
                self.allowed
            );
            self.refused
                .lock()
                .expect("refused list poisoned")
                .push(target);
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        self.requests += 1;
        let headers = request.headers_mut();
        headers.remove(AUTHORIZATION);
        headers.remove(PROXY_AUTHORIZATION);
        if let Some(auth) = &self.authorization {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        let options = Some(clamp(options.unwrap_or_default()));
        let (connector, refused) = (self.connector.clone(), self.refused.clone());
        let origin = self.allowed.clone();
        Box::new(async move {
            use http_body_util::BodyExt;
            let loopback_origin = is_loopback_name(&origin.host);
            let addrs = match net_policy::check(&origin.host, origin.port, loopback_origin).await {
                Ok(addrs) => addrs,
                Err(why) => {
                    tracing::warn!(
                        connector = %connector,
                        "refused an HTTP request to {origin}: {why}"
                    );
                    refused
                        .lock()
                        .expect("refused list poisoned")
                        .push(format!("{origin} ({why})"));
                    return Err(wasmtime_wasi_http::Error::DestinationIpProhibited);
                }
            };
            if origin.scheme == "http" {
                pin_to(&mut request, addrs[0])?;
            }
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

fn is_loopback_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Points a plain-http request at the address that was checked, so the
/// connection cannot go where a second resolution says. The `Host` header
/// (set by wasi-http from the authority) keeps the name.
fn pin_to(
    request: &mut http::Request<WasiBody>,
    addr: std::net::SocketAddr,
) -> Result<(), wasmtime_wasi_http::Error> {
    let mut parts = request.uri().clone().into_parts();
    parts.authority = Some(
        addr.to_string()
            .parse()
            .map_err(|_| wasmtime_wasi_http::Error::HttpRequestUriInvalid)?,
    );
    *request.uri_mut() = http::Uri::from_parts(parts)
        .map_err(|_| wasmtime_wasi_http::Error::HttpRequestUriInvalid)?;
    Ok(())
}

/// A component may shorten the host's timeouts, never lengthen them.
fn clamp(o: RequestOptions) -> RequestOptions {
    let cap = |v: Option<Duration>, max: Duration| Some(v.map_or(max, |v| v.min(max)));
    RequestOptions {
        connect_timeout: cap(o.connect_timeout, MAX_CONNECT_TIMEOUT),
        first_byte_timeout: cap(o.first_byte_timeout, MAX_FIRST_BYTE_TIMEOUT),
        between_bytes_timeout: cap(o.between_bytes_timeout, MAX_BETWEEN_BYTES_TIMEOUT),
    }
}
