//! The TAP API client: builds request paths and turns HTTP outcomes into
//! operator-readable errors.
//!
//! Credentials never pass through here: the host adds `Authorization` to
//! requests for the configured Host URL.

use time::{
    format_description::FormatItem, macros::format_description, OffsetDateTime, PrimitiveDateTime,
};

use crate::config::{Config, DEFAULT_HOST_URL};
use crate::platform::{
    ConnectorError, Http, HttpFailure, HttpResponse, LogLevel, Platform, StreamingResponse,
    TransportError,
};
use crate::windows::{api_time, Window};

/// Proofpoint documents no `Retry-After`; its quota is a rolling 24 hours, so
/// waiting a quarter hour before trying again is a sensible default.
pub const DEFAULT_RETRY_AFTER_SECONDS: u32 = 900;

/// The host's shared budget pool for the SIEM endpoints this connector uses
/// (every SIEM endpoint but `clicks/permitted`, which has its own pool).
pub const SIEM_POOL: &str = "siem";
/// Proofpoint's limit for that pool: 1,800 requests per credential in a
/// rolling 24 hours (the default of `siem_requests_per_day`).
pub const SIEM_REQUESTS_PER_DAY: u32 = 1800;
pub const SIEM_BUDGET_WINDOW_SECONDS: u32 = 86_400;
/// Below this many requests left, the operator is warned.
const LOW_BUDGET: u32 = 100;

/// How much of an error body to quote to the operator.
const QUOTE_LIMIT: usize = 500;
/// How much of an error response's body is read.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// What a 400 from the SIEM API means, from its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// "The requested interval is still current.": the end is in the server's future.
    StillCurrent,
    /// "The requested interval is too short.": less than 30 s.
    TooShort,
    /// "The requested start time is too far into the past.": beyond 7 days.
    TooFarInPast,
    Other,
}

/// A failed SIEM request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// A 400 the collection cycle may be able to recover from.
    Rejected {
        kind: Rejection,
        error: ConnectorError,
    },
    /// 429: the quota is used up. `retry_after`: the API's `Retry-After`, if it sent one.
    RateLimited { retry_after: Option<u32> },
    /// Worth asking again soon (5xx, 408, no or an incomplete response): a
    /// `ConnectorError::Transient`.
    Retryable(ConnectorError),
    /// Anything else: the operator has to look.
    Failed(ConnectorError),
}

/// The Threat API's answer for one threat id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThreatLookup {
    Found(Vec<u8>),
    NotFound,
}

pub struct TapClient<'h, H: Http> {
    http: &'h mut H,
    host_url: String,
    base_path: String,
    /// For `Retry-After` given as a date.
    now: OffsetDateTime,
    /// Requests sent so far (every attempt counts).
    pub requests: u32,
}

impl<'h, H: Http> TapClient<'h, H> {
    pub fn new(config: &Config, http: &'h mut H, now: OffsetDateTime) -> Self {
        TapClient {
            http,
            host_url: config.host_url.clone(),
            base_path: config.endpoint.base_path.clone(),
            now,
            requests: 0,
        }
    }

    fn get(&mut self, path: &str) -> Result<HttpResponse, TransportError> {
        self.requests += 1;
        self.http.get(&format!("{}{}", self.base_path, path))
    }

    /// All four event types for one window: the response with its body
    /// unread (200), or `None` for no content (204).
    pub fn siem_all(&mut self, window: &Window) -> Result<Option<StreamingResponse>, ApiError> {
        let path = siem_all_path(window);
        self.requests += 1;
        let response = self
            .http
            .get_streaming(&format!("{}{}", self.base_path, path))
            .map_err(|e| ApiError::Retryable(map_transport(&e, &self.host_url)))?;
        match response.status {
            200 => return Ok(Some(response)),
            204 => return Ok(None),
            _ => {}
        }
        let retry_after = response.header("retry-after").map(str::to_string);
        let (status, headers) = (response.status, response.headers.clone());
        // The status says what happened; the text is only quoted.
        let body = response
            .read_to_end(ERROR_BODY_LIMIT)
            .map(|r| r.body)
            .unwrap_or_default();
        let response = HttpResponse {
            status,
            headers,
            body,
        };
        match response.status {
            400 => Err(ApiError::Rejected {
                kind: classify_400(&response.body),
                error: self.map_status(&response),
            }),
            429 => Err(ApiError::RateLimited {
                retry_after: parse_retry_after(retry_after.as_deref(), self.now),
            }),
            408 | 500..=599 => Err(ApiError::Retryable(self.map_status(&response))),
            _ => Err(ApiError::Failed(self.map_status(&response))),
        }
    }

    /// The cheapest authenticated request: one minute of blocked clicks. It
    /// draws on the 1,800/day SIEM pool, never on the 50/day endpoints.
    pub fn check_connection(&mut self) -> Result<(), ConnectorError> {
        let response = self
            .get("/v2/siem/clicks/blocked?format=json&sinceSeconds=60")
            .map_err(|e| map_transport(&e, &self.host_url))?;
        match response.status {
            200 | 204 => Ok(()),
            _ => Err(self.map_status(&response)),
        }
    }

    /// `GET /v2/threat/summary/{id}` (not rate limited).
    pub fn threat_summary(&mut self, threat_id: &str) -> Result<ThreatLookup, ConnectorError> {
        let path = format!("/v2/threat/summary/{}", encode_path_segment(threat_id));
        let response = self
            .get(&path)
            .map_err(|e| map_transport(&e, &self.host_url))?;
        match response.status {
            200 => Ok(ThreatLookup::Found(response.body)),
            404 => Ok(ThreatLookup::NotFound),
            _ => Err(self.map_status(&response)),
        }
    }

    fn map_status(&self, response: &HttpResponse) -> ConnectorError {
        map_status(
            response.status,
            &response.body,
            response.header("retry-after"),
            self.now,
            &self.host_url,
        )
    }
}

/// Take one SIEM request from the budget shared with every connector that
/// uses the same credential; call before each SIEM request. When the pool is
/// empty the run stops as rate limited, before the API has to say so.
pub fn take_siem_request<P: Platform>(platform: &mut P, limit: u32) -> Result<(), ConnectorError> {
    match platform.budget_take(SIEM_POOL, limit, SIEM_BUDGET_WINDOW_SECONDS) {
        Ok(remaining) => {
            if remaining < LOW_BUDGET.min(limit / 10 + 1) && remaining % 25 == 0 {
                platform.log(
                    LogLevel::Warn,
                    &format!(
                        "only {remaining} of the {limit} SIEM requests a day allowed for this credential are left"
                    ),
                );
            }
            Ok(())
        }
        Err(retry_at) => {
            let now = platform.now();
            let wait = (i64::try_from(retry_at).unwrap_or(i64::MAX) - now.unix_timestamp())
                .clamp(1, i64::from(u32::MAX));
            let resume = OffsetDateTime::from_unix_timestamp(now.unix_timestamp() + wait)
                .map(api_time)
                .unwrap_or_default();
            platform.log(
                LogLevel::Warn,
                &format!(
                    "the {limit} SIEM requests a day allowed for this credential (`siem_requests_per_day`, shared by every connector using it) are used up; stopping before the API refuses, collection resumes at {resume} (in {wait} s)"
                ),
            );
            Err(ConnectorError::RateLimited(wait as u32))
        }
    }
}

pub fn siem_all_path(window: &Window) -> String {
    format!(
        "/v2/siem/all?format=json&interval={}",
        window.interval_param()
    )
}

/// Recognise the SIEM API's 400 messages (see TAP-API.md).
pub fn classify_400(body: &[u8]) -> Rejection {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    if text.contains("still current") {
        Rejection::StillCurrent
    } else if text.contains("too short") {
        Rejection::TooShort
    } else if text.contains("too far into the past") || text.contains("too far in the past") {
        Rejection::TooFarInPast
    } else {
        Rejection::Other
    }
}

/// Map a non-success status to what the operator should know and do.
pub fn map_status(
    status: u16,
    body: &[u8],
    retry_after: Option<&str>,
    now: OffsetDateTime,
    host_url: &str,
) -> ConnectorError {
    let failure = |explanation: String, recommendation: String| {
        ConnectorError::Http(HttpFailure {
            status,
            explanation,
            recommendation,
        })
    };
    match status {
        400 => failure(
            format!("The TAP API answered 400: the request was rejected as invalid: {}", quote(body)),
            "Check the connector's configuration (look-back, window and safety-margin settings) and the host's clock; if both look right, report this message.".into(),
        ),
        401 => failure(
            "The TAP API did not accept the credentials: the service principal or secret is wrong or expired, or the principal's organisation has no TAP license.".into(),
            "Re-create the service principal and secret in the TAP dashboard under Settings > Connected Applications and update the connector's credentials.".into(),
        ),
        403 => failure(
            "The credentials are valid, but the service principal is not entitled to the TAP SIEM API.".into(),
            "Ask your TAP administrator to grant the service principal's role access to the SIEM API.".into(),
        ),
        404 => failure(
            format!("{host_url} has no TAP SIEM API at the requested path: the Host URL (or its path) is wrong."),
            format!("Check `host_url` in the connector's configuration; the default is {DEFAULT_HOST_URL}."),
        ),
        429 => ConnectorError::RateLimited(retry_after_seconds(retry_after, now)),
        408 | 500..=599 => ConnectorError::Transient(format!(
            "the TAP API at {host_url} answered HTTP {status}{}; the next run retries",
            if body.is_empty() {
                String::new()
            } else {
                format!(" ({})", quote(body))
            }
        )),
        _ => failure(
            format!("The TAP API answered with the unexpected HTTP status {status}: {}", quote(body)),
            format!("Check that `host_url` ({host_url}) points at the TAP API and not at a proxy or login page."),
        ),
    }
}

/// No response at all: always worth retrying next run.
pub fn map_transport(error: &TransportError, host_url: &str) -> ConnectorError {
    ConnectorError::Transient(format!("no complete response from {host_url}: {error}"))
}

/// `Retry-After` as delta-seconds or an HTTP date; 900 s when absent or unreadable.
pub fn retry_after_seconds(header: Option<&str>, now: OffsetDateTime) -> u32 {
    parse_retry_after(header, now).unwrap_or(DEFAULT_RETRY_AFTER_SECONDS)
}

/// `Retry-After` as delta-seconds or an HTTP date, if present and readable.
pub fn parse_retry_after(header: Option<&str>, now: OffsetDateTime) -> Option<u32> {
    const HTTP_DATE: &[FormatItem<'static>] = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let value = header.map(str::trim)?;
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds.clamp(1, u64::from(u32::MAX)) as u32);
    }
    let at = PrimitiveDateTime::parse(value, HTTP_DATE).ok()?;
    let wait = (at.assume_utc() - now).whole_seconds();
    Some(wait.clamp(1, i64::from(u32::MAX)) as u32)
}

/// A response body as a short, single-line quote.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(no message)".into();
    }
    let mut quoted: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(QUOTE_LIMIT)
        .collect();
    if text.chars().count() > QUOTE_LIMIT {
        quoted.push('…');
    }
    quoted
}

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const HOST: &str = "https://tap-api-v2.proofpoint.com";
    const NOW: OffsetDateTime = datetime!(2024-10-11 14:00:00 UTC);

    fn http_failure(e: ConnectorError) -> HttpFailure {
        match e {
            ConnectorError::Http(h) => h,
            other => panic!("expected http, got {other:?}"),
        }
    }

    #[test]
    fn status_mapping_table() {
        let bad = http_failure(map_status(
            400,
            b"The requested interval is too long.",
            None,
            NOW,
            HOST,
        ));
        assert_eq!(bad.status, 400);
        assert!(bad
            .explanation
            .contains("the request was rejected as invalid: The requested interval is too long."));
        assert!(bad.recommendation.contains("configuration"));

        let unauth = http_failure(map_status(401, b"", None, NOW, HOST));
        assert!(unauth.explanation.contains("license"));
        assert!(unauth
            .recommendation
            .contains("Settings > Connected Applications"));

        let forbidden = http_failure(map_status(403, b"", None, NOW, HOST));
        assert!(forbidden.explanation.contains("not entitled"));
        assert!(forbidden.recommendation.contains("administrator"));

        let not_found = http_failure(map_status(404, b"", None, NOW, HOST));
        assert!(not_found.explanation.contains("Host URL"));
        assert!(not_found.recommendation.contains("`host_url`"));
        assert!(not_found.recommendation.contains(DEFAULT_HOST_URL));

        assert_eq!(
            map_status(429, b"", None, NOW, HOST),
            ConnectorError::RateLimited(900)
        );
        assert_eq!(
            map_status(429, b"", Some("120"), NOW, HOST),
            ConnectorError::RateLimited(120)
        );
        for status in [500, 502, 503, 504, 408] {
            assert!(
                matches!(map_status(status, b"oops", None, NOW, HOST), ConnectorError::Transient(m) if m.contains(&status.to_string())),
                "{status}"
            );
        }
        assert!(matches!(
            map_status(302, b"", None, NOW, HOST),
            ConnectorError::Http(HttpFailure { status: 302, .. })
        ));
        assert!(matches!(
            map_transport(&TransportError::Timeout("first byte".into()), HOST),
            ConnectorError::Transient(_)
        ));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(retry_after_seconds(None, NOW), 900);
        assert_eq!(retry_after_seconds(Some(" 60 "), NOW), 60);
        assert_eq!(retry_after_seconds(Some("0"), NOW), 1);
        assert_eq!(
            retry_after_seconds(Some("Fri, 11 Oct 2024 14:05:00 GMT"), NOW),
            300
        );
        assert_eq!(retry_after_seconds(Some("soon"), NOW), 900);
        assert_eq!(parse_retry_after(None, NOW), None);
        assert_eq!(parse_retry_after(Some("soon"), NOW), None);
        assert_eq!(parse_retry_after(Some("7"), NOW), Some(7));
    }

    #[test]
    fn classifies_the_documented_400_messages() {
        assert_eq!(
            classify_400(b"The requested interval is still current."),
            Rejection::StillCurrent
        );
        assert_eq!(
            classify_400(b"The requested interval is too short. Requests must be for at least 30.00s of data"),
            Rejection::TooShort
        );
        assert_eq!(
            classify_400(b"The requested start time is too far into the past. Requests for information up to 7.00d are accepted"),
            Rejection::TooFarInPast
        );
        assert_eq!(classify_400(b""), Rejection::Other);
    }

    #[test]
    fn long_error_bodies_are_shortened() {
        let body = "x".repeat(2000);
        let f = http_failure(map_status(400, body.as_bytes(), None, NOW, HOST));
        assert!(f.explanation.chars().count() < 600);
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_path_segment("abc-123_x.y~"), "abc-123_x.y~");
        assert_eq!(encode_path_segment("a/b?c d"), "a%2Fb%3Fc%20d");
    }
}
