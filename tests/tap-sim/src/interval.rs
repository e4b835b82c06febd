//! The query window: ISO 8601 durations and intervals, the three ways a
//! request names its window (`interval`, `sinceTime`, `sinceSeconds`), and
//! the API's 400 rules with their exact texts.
//!
//! Windows are half-open, `[start, end)`: an event filed exactly at `end`
//! belongs to the next window, so contiguous windows never return an event
//! twice and never skip one.

use time::{Duration, OffsetDateTime};

use crate::timestamp::{ceil_ms, parse_timestamp};

pub const TOO_SHORT: &str =
    "The requested interval is too short. Requests must be for at least 30.00s of data";
pub const TOO_LONG: &str =
    "The requested interval is too long. Requests must be for at most 1.00h of data";
pub const TOO_FAR_IN_PAST: &str = "The requested start time is too far into the past. \
     Requests for information up to 7.00d are accepted";
pub const STILL_CURRENT: &str = "The requested interval is still current.";

pub const MIN_LENGTH: Duration = Duration::seconds(30);
pub const MAX_LENGTH: Duration = Duration::hours(1);
pub const MAX_AGE: Duration = Duration::days(7);

/// A 400 answer; the body is plain text and may be empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl BadRequest {
    pub fn new(body: impl Into<String>) -> Self {
        BadRequest(body.into())
    }
}

/// A validated query window `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
}

impl Window {
    /// The window in Unix milliseconds, `[from, to)`, exact for events that
    /// carry whole milliseconds.
    pub fn filed_range_ms(&self) -> (i64, i64) {
        (ceil_ms(self.start), ceil_ms(self.end))
    }
}

/// How the request named its window (the raw parameter value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowSelector {
    Interval(String),
    SinceTime(String),
    SinceSeconds(String),
}

/// Turns the selector into a window and applies every 400 rule against the
/// server's current time `now`.
pub fn resolve_window(
    selector: &WindowSelector,
    now: OffsetDateTime,
) -> Result<Window, BadRequest> {
    let (start, end) = match selector {
        WindowSelector::Interval(text) => parse_interval(text)
            .map_err(|e| BadRequest(format!("Invalid interval {text:?}: {e}")))?,
        WindowSelector::SinceTime(text) => {
            let (start, _) = parse_timestamp(text.trim())
                .map_err(|e| BadRequest(format!("Invalid sinceTime: {e}")))?;
            (start, floor_to_minute(now))
        }
        WindowSelector::SinceSeconds(text) => {
            let seconds: i64 = text.trim().parse().map_err(|_| {
                BadRequest(format!("Invalid sinceSeconds: {text:?} is not an integer"))
            })?;
            // Checked here rather than via the window length so that huge
            // values cannot overflow the date arithmetic.
            if seconds < MIN_LENGTH.whole_seconds() {
                return Err(BadRequest::new(TOO_SHORT));
            }
            if seconds > MAX_LENGTH.whole_seconds() {
                return Err(BadRequest::new(TOO_LONG));
            }
            let end = floor_to_minute(now);
            (end - Duration::seconds(seconds), end)
        }
    };
    validate_window(start, end, now)
}

/// The API's rules, in this order: end before start (empty body), too short,
/// too long, start more than 7 days back, end after `now`.
pub fn validate_window(
    start: OffsetDateTime,
    end: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<Window, BadRequest> {
    if end < start {
        return Err(BadRequest::new(""));
    }
    let length = end - start;
    if length < MIN_LENGTH {
        return Err(BadRequest::new(TOO_SHORT));
    }
    if length > MAX_LENGTH {
        return Err(BadRequest::new(TOO_LONG));
    }
    if start < now - MAX_AGE {
        return Err(BadRequest::new(TOO_FAR_IN_PAST));
    }
    if end > now {
        return Err(BadRequest::new(STILL_CURRENT));
    }
    Ok(Window { start, end })
}

/// Server time rounded down to the minute: the end of `sinceTime` and
/// `sinceSeconds` windows.
pub fn floor_to_minute(now: OffsetDateTime) -> OffsetDateTime {
    now.replace_second(0)
        .and_then(|t| t.replace_nanosecond(0))
        .unwrap_or(now)
}

/// Parses `START/END`, `DURATION/END` or `START/DURATION`.
pub fn parse_interval(text: &str) -> Result<(OffsetDateTime, OffsetDateTime), String> {
    let text = text.trim();
    let (first, second) = text
        .split_once('/')
        .ok_or("expected START/END, PTnM/END or START/PTnM")?;
    let is_duration = |s: &str| s.starts_with(['P', 'p']);
    let overflow = || "out of range".to_string();
    match (is_duration(first), is_duration(second)) {
        (true, true) => Err("at most one side may be a duration".to_string()),
        (true, false) => {
            let length = parse_duration(first)?;
            let (end, _) = parse_timestamp(second)?;
            Ok((end.checked_sub(length).ok_or_else(overflow)?, end))
        }
        (false, true) => {
            let (start, _) = parse_timestamp(first)?;
            let length = parse_duration(second)?;
            Ok((start, start.checked_add(length).ok_or_else(overflow)?))
        }
        (false, false) => Ok((parse_timestamp(first)?.0, parse_timestamp(second)?.0)),
    }
}

/// Parses an ISO 8601 duration such as `PT30M`, `PT1H30M`, `PT45S`,
/// `PT0.5S`, `P1D` or `P1W`. Years and months have no fixed length and are
/// refused. A fraction is allowed on the last component only.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let err = |why: &str| format!("Invalid duration {text:?}: {why}");
    let upper = text.to_ascii_uppercase();
    let body = upper
        .strip_prefix('P')
        .ok_or_else(|| err("must start with P"))?;
    let (date_part, time_part) = match body.split_once('T') {
        Some((_, "")) => return Err(err("nothing after T")),
        Some((d, t)) => (d, Some(t)),
        None => (body, None),
    };
    if date_part.is_empty() && time_part.is_none() {
        return Err(err("no components"));
    }

    const SECOND: i128 = 1_000_000_000;
    let mut total_nanos: i128 = 0;
    let mut saw_fraction = false;
    let mut parse_part = |part: &str, units: &[(char, i128)]| -> Result<(), String> {
        let mut rest = part;
        let mut next_unit = 0;
        while !rest.is_empty() {
            if saw_fraction {
                return Err(err("a fraction is only allowed on the last component"));
            }
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
                .ok_or_else(|| err("number without a designator"))?;
            let (number, tail) = rest.split_at(number_len);
            let designator = tail.chars().next().unwrap_or(' ');
            if designator == 'Y' || (designator == 'M' && units[0].0 == 'W') {
                return Err(err("years and months are not supported"));
            }
            let position = units[next_unit..]
                .iter()
                .position(|(c, _)| *c == designator)
                .ok_or_else(|| err("unexpected or out-of-order designator"))?;
            let unit_nanos = units[next_unit + position].1;
            next_unit += position + 1;
            let (whole, fraction) = match number.split_once(['.', ',']) {
                Some((w, f)) => (w, Some(f)),
                None => (number, None),
            };
            if whole.is_empty() || fraction.is_some_and(|f| f.is_empty() || f.len() > 9) {
                return Err(err("malformed number"));
            }
            let whole: i128 = whole.parse().map_err(|_| err("malformed number"))?;
            total_nanos = whole
                .checked_mul(unit_nanos)
                .and_then(|n| n.checked_add(total_nanos))
                .ok_or_else(|| err("too large"))?;
            if let Some(fraction) = fraction {
                saw_fraction = true;
                let digits: i128 = fraction.parse().map_err(|_| err("malformed number"))?;
                total_nanos += digits * unit_nanos / 10i128.pow(fraction.len() as u32);
            }
            rest = &tail[designator.len_utf8()..];
        }
        Ok(())
    };
    // `W` first so that an `M` in the date part is recognised as months.
    parse_part(
        date_part,
        &[('W', 7 * 86_400 * SECOND), ('D', 86_400 * SECOND)],
    )?;
    if let Some(time_part) = time_part {
        parse_part(
            time_part,
            &[('H', 3600 * SECOND), ('M', 60 * SECOND), ('S', SECOND)],
        )?;
    }
    i64::try_from(total_nanos)
        .map(Duration::nanoseconds)
        .map_err(|_| err("too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2024-05-10 12:34:56.789 UTC);

    fn interval(text: &str) -> Result<Window, BadRequest> {
        resolve_window(&WindowSelector::Interval(text.into()), NOW)
    }

    fn body(result: Result<Window, BadRequest>) -> String {
        result.expect_err("expected a 400").0
    }

    #[test]
    fn durations() {
        let cases = [
            ("PT30M", Duration::minutes(30)),
            ("PT1H", Duration::hours(1)),
            ("PT45S", Duration::seconds(45)),
            ("PT1H30M", Duration::minutes(90)),
            ("PT0.5S", Duration::milliseconds(500)),
            ("PT1,5M", Duration::seconds(90)),
            ("P1D", Duration::days(1)),
            ("P1DT1H", Duration::hours(25)),
            ("P2W", Duration::weeks(2)),
            ("pt30m", Duration::minutes(30)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for text in [
            "",
            "P",
            "PT",
            "30M",
            "PT30",
            "PT30X",
            "P1M",
            "P1Y",
            "PT1M1H",
            "PT1.5H30M",
            "PT.5S",
            "PT1H1H",
            "P1DT",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} should fail");
        }
    }

    #[test]
    fn the_three_interval_forms() {
        let w = interval("2024-05-10T11:00:00Z/2024-05-10T12:00:00Z").unwrap();
        assert_eq!(w.start, datetime!(2024-05-10 11:00 UTC));
        assert_eq!(w.end, datetime!(2024-05-10 12:00 UTC));

        let w = interval("PT30M/2024-05-10T12:00:00Z").unwrap();
        assert_eq!(w.start, datetime!(2024-05-10 11:30 UTC));
        assert_eq!(w.end, datetime!(2024-05-10 12:00 UTC));

        let w = interval("2024-05-10T11:00:00.500+02:00/PT45S").unwrap();
        assert_eq!(w.start, datetime!(2024-05-10 09:00:00.5 UTC));
        assert_eq!(w.end, datetime!(2024-05-10 09:00:45.5 UTC));
    }

    #[test]
    fn length_rules_are_inclusive_at_30s_and_1h() {
        assert!(interval("2024-05-10T11:00:00Z/PT30S").is_ok());
        assert!(interval("2024-05-10T11:00:00Z/PT1H").is_ok());
        assert_eq!(body(interval("2024-05-10T11:00:00Z/PT29.999S")), TOO_SHORT);
        assert_eq!(body(interval("2024-05-10T11:00:00Z/PT1H0.001S")), TOO_LONG);
        // Zero length is "too short", not "end before start".
        assert_eq!(
            body(interval("2024-05-10T11:00:00Z/2024-05-10T11:00:00Z")),
            TOO_SHORT
        );
    }

    #[test]
    fn end_before_start_has_an_empty_body() {
        assert_eq!(
            body(interval("2024-05-10T12:00:00Z/2024-05-10T11:00:00Z")),
            ""
        );
    }

    #[test]
    fn seven_day_limit() {
        // NOW - 7 days = 2024-05-03T12:34:56.789Z.
        assert!(interval("2024-05-03T12:34:56.789Z/PT1H").is_ok());
        assert_eq!(
            body(interval("2024-05-03T12:34:56.788Z/PT1H")),
            TOO_FAR_IN_PAST
        );
    }

    #[test]
    fn still_current() {
        assert!(interval("PT1H/2024-05-10T12:34:56.789Z").is_ok());
        assert_eq!(
            body(interval("PT1H/2024-05-10T12:34:56.790Z")),
            STILL_CURRENT
        );
        assert_eq!(body(interval("2024-05-10T12:30:00Z/PT30M")), STILL_CURRENT);
    }

    #[test]
    fn unparseable_intervals_get_a_short_message() {
        for text in [
            "",
            "PT30M",
            "PT30M/PT30M",
            "yesterday/today",
            "2024-05-10T11:00:00Z/P1M",
            "2024-05-10T11:00:00Z/",
        ] {
            let message = body(interval(text));
            assert!(message.starts_with("Invalid"), "{text:?}: {message}");
        }
    }

    #[test]
    fn since_seconds() {
        let since = |n: &str| resolve_window(&WindowSelector::SinceSeconds(n.into()), NOW);
        let w = since("300").unwrap();
        assert_eq!(w.end, datetime!(2024-05-10 12:34 UTC));
        assert_eq!(w.start, datetime!(2024-05-10 12:29 UTC));
        assert!(since("30").is_ok());
        assert!(since("3600").is_ok());
        assert_eq!(body(since("29")), TOO_SHORT);
        assert_eq!(body(since("-5")), TOO_SHORT);
        assert_eq!(body(since("3601")), TOO_LONG);
        assert_eq!(body(since("99999999999999999")), TOO_LONG);
        assert!(body(since("1.5")).starts_with("Invalid sinceSeconds"));
        assert!(body(since("")).starts_with("Invalid sinceSeconds"));
    }

    #[test]
    fn since_time() {
        let since = |t: &str| resolve_window(&WindowSelector::SinceTime(t.into()), NOW);
        let w = since("2024-05-10T12:00:00Z").unwrap();
        assert_eq!(w.start, datetime!(2024-05-10 12:00 UTC));
        assert_eq!(w.end, datetime!(2024-05-10 12:34 UTC));
        assert_eq!(body(since("2024-05-10T11:00:00Z")), TOO_LONG);
        assert_eq!(body(since("2024-05-10T12:33:45Z")), TOO_SHORT);
        assert_eq!(body(since("2024-05-10T12:40:00Z")), "");
        assert!(body(since("soon")).starts_with("Invalid sinceTime"));
    }

    #[test]
    fn filed_range_is_exact_at_sub_millisecond_bounds() {
        let w = Window {
            start: datetime!(2024-05-10 11:00:00.0001 UTC),
            end: datetime!(2024-05-10 11:01:00 UTC),
        };
        let (from, to) = w.filed_range_ms();
        assert_eq!(from, ceil_ms(w.start));
        assert_eq!(to - from, 59_999);
    }
}
