//! The connector instance's configuration: parsing, defaults and validation.
//!
//! The host passes the operator's `[[connector]]` table (without credentials)
//! plus the keys it resolved itself. Keys the host owns are accepted without
//! judgement; keys that look like ours but are not are errors, because a typo
//! such as `lookback_minute` would otherwise silently fall back to a default.

use serde_json::{Map, Value};

use crate::api::SIEM_REQUESTS_PER_DAY;

pub const DEFAULT_HOST_URL: &str = "https://tap-api-v2.proofpoint.com";

/// Keys the host owns or passes through. Accepted as they are.
pub const HOST_KEYS: &[&str] = &[
    "name",
    "tenant",
    "host_url",
    "component",
    "interval_min",
    "principal",
    "response",
    "limits",
    "log_filters",
    // Not passed today, but plainly host business if they ever are.
    "enabled",
    "schedule",
    "description",
    "labels",
    "tags",
    "timeout_s",
    "deadline_s",
    "secret",
    "secret_env",
    "secret_file",
    "principal_env",
    "credentials",
];

/// The connector's own keys.
pub const CONNECTOR_KEYS: &[&str] = &[
    "content_types",
    "initial_lookback_hours",
    "lookback_minutes",
    "safety_margin_seconds",
    "max_window_minutes",
    "siem_requests_per_day",
    "alerts",
    "response",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Where requests go, split the way `wasi:http` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// `host[:port]`.
    pub authority: String,
    /// Path prefix without a trailing slash, usually empty.
    pub base_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Connector instance name.
    pub name: String,
    pub tenant: String,
    /// As configured, without a trailing slash; stored in records as `domain`.
    pub host_url: String,
    pub endpoint: Endpoint,
    pub collect_events: bool,
    pub collect_threats: bool,
    pub initial_lookback_hours: u32,
    pub lookback_minutes: u32,
    pub safety_margin_seconds: u32,
    pub max_window_minutes: u32,
    /// The SIEM request quota of the credential per rolling 24 hours
    /// (Proofpoint's is 1,800); the connector never sends more.
    pub siem_requests_per_day: u32,
    /// Native alerts (`[connector.alerts]`).
    pub alerts: AlertSettings,
    /// `[connector.response.disable_user]` when on.
    pub disable_user: Option<crate::response::DisableUserPolicy>,
    /// How many log filters the host applies (`log_filters`); with none,
    /// nothing needs asking about them.
    pub log_filters: u64,
    /// The host's sandbox limits that shape how the connector works.
    pub limits: HostLimits,
}

/// The host's `limits` the connector sizes its work by; defaults are the
/// host's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    pub memory_mib: u64,
    pub max_batch_records: usize,
    pub max_batch_mib: u64,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            memory_mib: 256,
            max_batch_records: 20_000,
            max_batch_mib: 64,
        }
    }
}

impl HostLimits {
    /// Read what the host passed; anything missing or odd keeps its default
    /// (the host validates its own keys).
    fn from_json(value: Option<&Value>) -> Self {
        let d = HostLimits::default();
        let get = |key: &str| value.and_then(|v| v.get(key)).and_then(Value::as_u64);
        HostLimits {
            memory_mib: get("memory_mib").filter(|n| *n > 0).unwrap_or(d.memory_mib),
            max_batch_records: get("max_batch_records")
                .filter(|n| *n > 0)
                .map_or(d.max_batch_records, |n| {
                    usize::try_from(n).unwrap_or(usize::MAX)
                }),
            max_batch_mib: get("max_batch_mib")
                .filter(|n| *n > 0)
                .unwrap_or(d.max_batch_mib),
        }
    }

    /// Records per `sink.commit`.
    pub fn batch_records(&self) -> usize {
        self.max_batch_records.max(1)
    }

    /// Bytes of records (bodies and ids, as the host counts them) per
    /// `sink.commit`: within the host's limit, and an eighth of the memory
    /// cap, so a batch being built is never what exhausts the sandbox.
    pub fn batch_bytes(&self) -> usize {
        let mib = |n: u64| usize::try_from(n.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        let host = mib(self.max_batch_mib) - mib(self.max_batch_mib) / 16;
        host.min(mib(self.memory_mib) / 8).max(256 * 1024)
    }

    /// Most bytes of record bodies and ids one commit may carry (the host's
    /// `max_batch_mib`).
    pub fn max_commit_bytes(&self) -> usize {
        usize::try_from(self.max_batch_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }

    /// Largest event stored whole: half a batch. A larger one is
    /// quarantined with its size, hash and first bytes.
    pub fn max_event_bytes(&self) -> usize {
        self.batch_bytes() / 2
    }
}

impl Config {
    /// Parse and validate; on failure every problem is reported.
    pub fn parse(json: &str) -> Result<Config, Vec<String>> {
        let value: Value = serde_json::from_str(json).map_err(|e| {
            vec![format!(
                "The connector configuration is not valid JSON ({e}); this is a host problem, not an operator one."
            )]
        })?;
        let Value::Object(map) = value else {
            return Err(vec![
                "The connector configuration must be a JSON object.".to_string()
            ]);
        };
        let mut v = Validator {
            map: &map,
            connector: map
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("proofpoint_tap")
                .to_string(),
            problems: Vec::new(),
        };

        for key in map.keys() {
            if !HOST_KEYS.contains(&key.as_str()) && !CONNECTOR_KEYS.contains(&key.as_str()) {
                v.problem(format!(
                    "unknown key `{key}` in connector `{}`: the Proofpoint TAP connector accepts {}.",
                    v.connector,
                    CONNECTOR_KEYS
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }

        let name = v.required_string("name");
        let tenant = v.required_string("tenant");
        let host_url = v.required_string("host_url");
        let endpoint = host_url.as_deref().and_then(|u| match parse_host_url(u) {
            Ok(e) => Some(e),
            Err(why) => {
                v.problem(format!(
                    "`host_url` `{u}` in connector `{}` {why}; use the TAP Host URL, e.g. {DEFAULT_HOST_URL}.",
                    v.connector
                ));
                None
            }
        });
        let (collect_events, collect_threats) = v.content_types();
        let initial_lookback_hours = v.integer(
            "initial_lookback_hours",
            24,
            1,
            168,
            "the TAP API keeps only 7 days of events",
        );
        let lookback_minutes = v.integer(
            "lookback_minutes",
            30,
            0,
            1440,
            "it is how far behind the checkpoint each run asks again for events the API indexed late",
        );
        let safety_margin_seconds = v.integer(
            "safety_margin_seconds",
            60,
            0,
            600,
            "windows end this long before now so the API never sees an interval that is still current",
        );
        let max_window_minutes = v.integer(
            "max_window_minutes",
            60,
            1,
            60,
            "the TAP API refuses intervals longer than one hour",
        );
        let siem_requests_per_day = v.integer(
            "siem_requests_per_day",
            SIEM_REQUESTS_PER_DAY,
            1,
            SIEM_REQUESTS_PER_DAY,
            "it is the credential's SIEM request quota per rolling 24 hours; Proofpoint allows 1800",
        );
        v.check_quota(lookback_minutes, max_window_minutes, siem_requests_per_day);
        let limits = HostLimits::from_json(map.get("limits"));
        let alerts = v.alerts();
        let disable_user = crate::response::DisableUserPolicy::from_json(
            map.get("response"),
            &v.connector,
            &mut v.problems,
        );
        if disable_user.is_some() && !alerts.enabled {
            v.problem(format!(
                "`response.disable_user` in connector `{}` acts on native alerts, which `alerts.enabled = false` turns off: enable alerts or the response.",
                v.connector
            ));
        }

        if !v.problems.is_empty() {
            return Err(v.problems);
        }
        let host_url = host_url.unwrap_or_default();
        Ok(Config {
            name: name.unwrap_or_default(),
            tenant: tenant.unwrap_or_default(),
            host_url: host_url.trim_end_matches('/').to_string(),
            endpoint: endpoint.expect("endpoint validated"),
            collect_events,
            collect_threats,
            initial_lookback_hours,
            lookback_minutes,
            safety_margin_seconds,
            max_window_minutes,
            siem_requests_per_day,
            limits,
            alerts,
            disable_user,
            log_filters: map.get("log_filters").and_then(Value::as_u64).unwrap_or(0),
        })
    }
}

/// `[connector.alerts]`: whether to derive native alerts and how they are
/// deduplicated by sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSettings {
    pub enabled: bool,
    pub dedup_window_ms: i64,
    pub merge_without_sender: bool,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            enabled: true,
            dedup_window_ms: 24 * 3_600_000,
            merge_without_sender: false,
        }
    }
}

/// `30m`, `24h`, `2d` as milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: i64 = n.parse().ok()?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    (n > 0).then(|| n * unit_ms)
}

struct Validator<'a> {
    map: &'a Map<String, Value>,
    connector: String,
    problems: Vec<String>,
}

impl Validator<'_> {
    fn alerts(&mut self) -> AlertSettings {
        let mut out = AlertSettings::default();
        let Some(value) = self.map.get("alerts") else {
            return out;
        };
        let Some(table) = value.as_object() else {
            self.problem(format!(
                "`alerts` in connector `{}` must be a table: [connector.alerts] with enabled, dedup_window, merge_without_sender.",
                self.connector
            ));
            return out;
        };
        for (key, v) in table {
            match (key.as_str(), v) {
                ("enabled", Value::Bool(b)) => out.enabled = *b,
                ("merge_without_sender", Value::Bool(b)) => out.merge_without_sender = *b,
                ("dedup_window", Value::String(s)) => match parse_duration_ms(s) {
                    Some(ms) if ms <= 7 * 86_400_000 => out.dedup_window_ms = ms,
                    _ => self.problem(format!(
                        "`alerts.dedup_window` `{s}` in connector `{}` is not a duration from 1s to 7d (e.g. \"24h\").",
                        self.connector
                    )),
                },
                (other, _) => self.problem(format!(
                    "`alerts.{other}` in connector `{}` is unknown or of the wrong type: use enabled (bool), dedup_window (e.g. \"24h\"), merge_without_sender (bool).",
                    self.connector
                )),
            }
        }
        out
    }

    fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    fn required_string(&mut self, key: &str) -> Option<String> {
        match self.map.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(Value::String(_)) | None => {
                self.problem(format!(
                    "`{key}` is missing from the configuration of connector `{}`; the host should always pass it.",
                    self.connector
                ));
                None
            }
            Some(other) => {
                self.problem(format!(
                    "`{key}` in connector `{}` must be a string; got {other}.",
                    self.connector
                ));
                None
            }
        }
    }

    fn content_types(&mut self) -> (bool, bool) {
        let Some(value) = self.map.get("content_types") else {
            return (true, true);
        };
        let explain = "must be a non-empty list of `events` and/or `threats`";
        let Value::Array(items) = value else {
            self.problem(format!(
                "`content_types` in connector `{}` {explain}; got {value}.",
                self.connector
            ));
            return (true, true);
        };
        if items.is_empty() {
            self.problem(format!(
                "`content_types` in connector `{}` {explain}; it is empty, so nothing would be collected.",
                self.connector
            ));
        }
        let (mut events, mut threats) = (false, false);
        for item in items {
            match item.as_str() {
                Some("events") => events = true,
                Some("threats") => threats = true,
                _ => self.problem(format!(
                    "`content_types` in connector `{}` {explain}; `{item}` is not one of them.",
                    self.connector
                )),
            }
        }
        (events, threats)
    }

    fn integer(&mut self, key: &str, default: u32, min: u32, max: u32, why: &str) -> u32 {
        let Some(value) = self.map.get(key) else {
            return default;
        };
        match value.as_u64() {
            Some(n) if (u64::from(min)..=u64::from(max)).contains(&n) => n as u32,
            _ => {
                self.problem(format!(
                    "`{key}` in connector `{}` must be a whole number from {min} to {max} ({why}); got {value}.",
                    self.connector
                ));
                default
            }
        }
    }

    /// Each run asks again for the look-back period plus the time since the
    /// last run, in windows of at most `max_window_minutes`. If that adds up
    /// to more than the daily quota, the connector would be throttled for good.
    fn check_quota(&mut self, lookback_minutes: u32, max_window_minutes: u32, quota: u32) {
        let Some(interval) = self.map.get("interval_min").and_then(Value::as_f64) else {
            return;
        };
        if !(interval.is_finite() && interval > 0.0) {
            return;
        }
        let span = interval + f64::from(lookback_minutes);
        let per_run = (span / f64::from(max_window_minutes)).ceil().max(1.0);
        let per_day = (1440.0 / interval).ceil() * per_run;
        if per_day > f64::from(quota) {
            self.problem(format!(
                "connector `{}` would send about {per_day:.0} SIEM requests a day (every {interval} min, \
                 {per_run:.0} window(s) per run for `lookback_minutes` = {lookback_minutes} and \
                 `max_window_minutes` = {max_window_minutes}), more than the {quota} a day \
                 of `siem_requests_per_day`; raise `interval_min`, lower `lookback_minutes` or raise \
                 `max_window_minutes`.",
                self.connector
            ));
        }
    }
}

/// Split `scheme://authority[/path]` for `wasi:http`. Returns why it is not
/// usable otherwise.
pub fn parse_host_url(url: &str) -> Result<Endpoint, String> {
    let (scheme, rest) = if let Some(rest) = strip_prefix_ignore_case(url, "https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = strip_prefix_ignore_case(url, "http://") {
        (Scheme::Http, rest)
    } else {
        return Err("must start with https:// (or http:// for a local test server)".into());
    };
    if rest.contains(['?', '#']) {
        return Err("must not contain a query or fragment".into());
    }
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces".into());
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err("has no host name".into());
    }
    if authority.contains('@') {
        return Err(
            "must not contain a user name or password (the host adds the credentials)".into(),
        );
    }
    // The port, if any, follows the last `:` outside an IPv6 literal.
    let host_end = authority.rfind(']').map_or(0, |i| i + 1);
    if let Some(colon) = authority[host_end..].find(':') {
        let port = &authority[host_end + colon + 1..];
        if port.parse::<u16>().is_err() {
            return Err(format!("has an invalid port `{port}`"));
        }
        if colon == 0 && host_end == 0 {
            return Err("has no host name".into());
        }
    }
    Ok(Endpoint {
        scheme,
        authority: authority.to_string(),
        base_path: path.trim_end_matches('/').to_string(),
    })
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// The JSON Schema of the connector's own keys, for `describe`.
pub fn schema() -> Value {
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "content_types": {
                "description": "What to collect: `events` (the SIEM API's four event types) and/or `threats` (Threat API summaries of the threats those events name).",
                "type": "array",
                "items": { "enum": ["events", "threats"] },
                "minItems": 1,
                "uniqueItems": true,
                "default": ["events", "threats"]
            },
            "initial_lookback_hours": {
                "description": "How far back the first run starts. The TAP API keeps 7 days.",
                "type": "integer", "minimum": 1, "maximum": 168, "default": 24
            },
            "lookback_minutes": {
                "description": "How far behind the checkpoint each run asks again, to catch events the API indexes late (up to about 30 minutes). Re-collected events are stored once.",
                "type": "integer", "minimum": 0, "maximum": 1440, "default": 30
            },
            "safety_margin_seconds": {
                "description": "Windows end this long before now, so the API never sees an interval that is still current.",
                "type": "integer", "minimum": 0, "maximum": 600, "default": 60
            },
            "max_window_minutes": {
                "description": "Longest interval per SIEM request (the API accepts at most 60 minutes).",
                "type": "integer", "minimum": 1, "maximum": 60, "default": 60
            },
            "siem_requests_per_day": {
                "description": "The credential's SIEM request quota per rolling 24 hours, shared by every connector using the credential. The connector stops before spending past it and says when it resumes.",
                "type": "integer", "minimum": 1, "maximum": SIEM_REQUESTS_PER_DAY, "default": SIEM_REQUESTS_PER_DAY
            },
            "alerts": {
                "description": "Native alerts: one per event type, deduplicated by email.sender.address within dedup_window of the alert's first event.",
                "type": "object",
                "properties": {
                    "enabled": {"type": "boolean", "default": true},
                    "dedup_window": {"type": "string", "default": "24h", "description": "e.g. 30m, 24h, 2d (at most 7d)"},
                    "merge_without_sender": {"type": "boolean", "default": false, "description": "merge events without a sender into one alert per type (default: each gets its own alert)"}
                },
                "additionalProperties": false
            },
            "response": {
                "description": "Response actions, as the host validated [connector.response.disable_user]: when enabled, each alert of a type in `on` queues one disable-user action per recipient address, performed by the host against the [[ad]] target `ad`.",
                "type": "object",
                "properties": {
                    "disable_user": {
                        "type": "object",
                        "properties": {
                            "enabled": {"type": "boolean", "default": false},
                            "ad": {"type": "string"},
                            "on": {"type": "array", "items": {"enum": ["clickDelivered", "messageDelivered", "clickBlocked", "messageBlocked"]}, "default": ["clickDelivered", "messageDelivered"]},
                            "duration_ms": {"type": ["integer", "null"], "description": "null: until re-enabled by hand"},
                            "dry_run": {"type": "boolean", "default": false}
                        }
                    }
                }
            }
        },
        "x-host-keys": HOST_KEYS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "name": "tap1", "tenant": "acme", "host_url": "https://tap-api-v2.proofpoint.com",
            "component": "proofpoint_tap", "interval_min": 5
        })
    }

    #[test]
    fn defaults_apply() {
        let c = Config::parse(&base().to_string()).unwrap();
        assert!(c.collect_events && c.collect_threats);
        assert_eq!(
            (
                c.initial_lookback_hours,
                c.lookback_minutes,
                c.safety_margin_seconds,
                c.max_window_minutes
            ),
            (24, 30, 60, 60)
        );
        assert_eq!(c.endpoint.scheme, Scheme::Https);
        assert_eq!(c.endpoint.authority, "tap-api-v2.proofpoint.com");
        assert_eq!(c.endpoint.base_path, "");
    }

    #[test]
    fn local_http_url_and_path_prefix() {
        let e = parse_host_url("http://127.0.0.1:4567/tap/").unwrap();
        assert_eq!(e.scheme, Scheme::Http);
        assert_eq!(e.authority, "127.0.0.1:4567");
        assert_eq!(e.base_path, "/tap");
        assert!(parse_host_url("https://[::1]:8443").is_ok());
        assert!(parse_host_url("ftp://x").is_err());
        assert!(parse_host_url("https://user:pw@x").is_err());
        assert!(parse_host_url("https://x:99999").is_err());
        assert!(parse_host_url("https://").is_err());
        assert!(parse_host_url("https://x/?a=b").is_err());
    }

    #[test]
    fn unknown_key_is_an_error_host_keys_are_not() {
        let mut v = base();
        v["foo"] = 1.into();
        v["principal"] = "svc".into();
        v["limits"] = serde_json::json!({"memory_mb": 64});
        v["response"] = serde_json::json!({"disable_user": {"enabled": false}});
        let errs = Config::parse(&v.to_string()).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("unknown key `foo` in connector `tap1`"),
            "{errs:?}"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let mut v = base();
        v["content_types"] = serde_json::json!(["events", "alerts"]);
        v["initial_lookback_hours"] = 200.into();
        v["lookback_minutes"] = (-1).into();
        v["safety_margin_seconds"] = 1.5.into();
        v["max_window_minutes"] = 61.into();
        v["siem_requests_per_day"] = 0.into();
        v["host_url"] = "tap-api-v2.proofpoint.com".into();
        let errs = Config::parse(&v.to_string()).unwrap_err();
        assert_eq!(errs.len(), 7, "{errs:#?}");
        assert!(errs
            .iter()
            .any(|e| e.contains("`siem_requests_per_day`") && e.contains("from 1 to 1800")));
        assert!(errs.iter().any(|e| e.contains("`initial_lookback_hours`")
            && e.contains("from 1 to 168")
            && e.contains("got 200")));
        assert!(errs.iter().any(|e| e.contains("\"alerts\"")));
    }

    #[test]
    fn missing_host_keys_are_reported() {
        let errs = Config::parse("{}").unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(Config::parse("[]").is_err());
        assert!(Config::parse("not json").is_err());
    }

    #[test]
    fn content_types_subset() {
        let mut v = base();
        v["content_types"] = serde_json::json!(["threats"]);
        let c = Config::parse(&v.to_string()).unwrap();
        assert!(!c.collect_events && c.collect_threats);
        v["content_types"] = serde_json::json!([]);
        assert!(Config::parse(&v.to_string()).is_err());
    }

    #[test]
    fn quota_overrun_is_reported() {
        let mut v = base();
        v["interval_min"] = 1.into();
        v["lookback_minutes"] = 120.into();
        let errs = Config::parse(&v.to_string()).unwrap_err();
        assert!(errs[0].contains("SIEM requests a day"), "{errs:?}");
        v["lookback_minutes"] = 30.into();
        assert!(Config::parse(&v.to_string()).is_ok());

        // A smaller quota of the credential is checked the same way.
        v["interval_min"] = 5.into();
        v["siem_requests_per_day"] = 100.into();
        let errs = Config::parse(&v.to_string()).unwrap_err();
        assert!(errs[0].contains("more than the 100 a day"), "{errs:?}");
        v["interval_min"] = 720.into();
        let c = Config::parse(&v.to_string()).unwrap();
        assert_eq!(c.siem_requests_per_day, 100);
    }

    #[test]
    fn host_limits_size_the_batches() {
        let c = Config::parse(&base().to_string()).unwrap();
        assert_eq!(c.limits, HostLimits::default());
        assert_eq!(c.siem_requests_per_day, 1800);
        // 256 MiB of memory: batches of 32 MiB, within the host's 64 MiB.
        assert_eq!(c.limits.batch_bytes(), 32 << 20);
        assert_eq!(c.limits.batch_records(), 20_000);

        let mut v = base();
        v["limits"] = serde_json::json!({
            "memory_mib": 32, "max_batch_records": 500, "max_batch_mib": 2,
            "cpu_seconds": 10.5, "run_timeout_secs": 60
        });
        let c = Config::parse(&v.to_string()).unwrap();
        assert_eq!(c.limits.batch_records(), 500);
        // The host's 2 MiB (less a 1/16 margin for what it counts besides
        // bodies) is below 32 MiB / 8.
        assert_eq!(c.limits.batch_bytes(), (2 << 20) - (2 << 20) / 16);
        assert_eq!(c.limits.max_event_bytes(), c.limits.batch_bytes() / 2);

        v["limits"] = serde_json::json!({"memory_mib": 16});
        let c = Config::parse(&v.to_string()).unwrap();
        assert_eq!(c.limits.batch_bytes(), 2 << 20);

        // Odd values are the host's business: the defaults stay.
        v["limits"] = serde_json::json!({"memory_mib": "lots", "max_batch_records": 0});
        let c = Config::parse(&v.to_string()).unwrap();
        assert_eq!(c.limits, HostLimits::default());
    }
}
