//! Proofpoint TAP connector for `dphost`.
//!
//! Collects the TAP SIEM API's four event types (messages delivered and
//! blocked, clicks permitted and blocked) and the Threat API summaries of the
//! threats they name, into the host's data lake. Built as a WASI 0.2
//! component for the world `dphost:connector/connector-world`; everything but
//! `bindings` is plain Rust, tested natively against fakes of the host
//! (`platform::Http`, `platform::Platform`).
//!
//! Modules, one per concern:
//! - `config`: the connector's JSON configuration, defaults and validation;
//! - `api`: TAP request paths and HTTP status → operator-readable errors;
//! - `windows`: which SIEM intervals a run asks for;
//! - `scan`: SIEM response bodies, streamed: each event's raw bytes in turn;
//! - `parse`: event types, and what is read out of each event;
//! - `identity`: record ids that make re-collection idempotent;
//! - `json`: events read once, their text borrowed from the body;
//! - `normalise`: ECS-style fields of each event, both API shapes;
//! - `alerts`: native alerts, deduplicated by sender;
//! - `alert_flush`: when alerts are committed, crash-safe;
//! - `record`: the records written to the data lake;
//! - `threats`: Threat API summaries and their backlog;
//! - `backoff`: waiting after a 429, kept in state;
//! - `collect`: one collection cycle;
//! - `platform`: the host, as traits and plain types;
//! - `bindings` (wasm32 only): the WIT glue.

pub mod alert_flush;
pub mod alerts;
pub mod api;
pub mod backoff;
pub mod collect;
pub mod config;
pub mod identity;
pub mod json;
pub mod normalise;
pub mod parse;
pub mod platform;
pub mod record;
pub mod response;
pub mod scan;
pub mod threats;
pub mod windows;

#[cfg(all(target_arch = "wasm32", feature = "component"))]
mod bindings;

/// Bad-input harness and corpus (tests, `fuzz/`, e2e): not in the component.
#[cfg(any(test, feature = "harness"))]
pub mod harness;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

use config::Config;
use platform::{ConnectorError, Http, Platform};

/// The connector's self-description for `describe`.
pub fn describe() -> String {
    serde_json::json!({
        "name": "proofpoint_tap",
        "version": env!("CARGO_PKG_VERSION"),
        "vendor": "Proofpoint",
        "description": "Collects Proofpoint TAP SIEM events (messages delivered and blocked, clicks permitted and blocked) and Threat API summaries, with a look-back re-query for late events, per-recipient event identity and lossless checkpoints.",
        "config": config::schema(),
    })
    .to_string()
}

/// `validate-config`: every problem, as a sentence for the operator.
pub fn validate_config(config_json: &str) -> Result<(), Vec<String>> {
    Config::parse(config_json).map(|_| ())
}

/// Parse the configuration for an export that needs it.
pub fn parse_config(config_json: &str) -> Result<Config, ConnectorError> {
    Config::parse(config_json).map_err(ConnectorError::BadConfig)
}

/// `test-connection`: one cheap SIEM request (blocked clicks of the last
/// minute), never one of the 50-a-day endpoints.
pub fn test_connection<H: Http, P: Platform>(
    config: &Config,
    http: &mut H,
    platform: &mut P,
) -> Result<String, ConnectorError> {
    let now = platform.now();
    if let Some(wait) = backoff::Backoff::load(&*platform).wait_left(now) {
        return Err(ConnectorError::RateLimited(wait));
    }
    api::take_siem_request(platform, config.siem_requests_per_day)?;
    let mut api = api::TapClient::new(config, http, now);
    api.check_connection()?;
    Ok(format!(
        "connected to {} as the configured service principal: SIEM API reachable",
        config.host_url
    ))
}

/// `collect`: one collection cycle; returns its JSON summary.
pub fn collect<H: Http, P: Platform>(
    config: &Config,
    http: &mut H,
    platform: &mut P,
) -> Result<String, ConnectorError> {
    collect::collect(config, http, platform)
}
