//! ISO 8601 timestamps: a lenient parser that remembers how a value was
//! written (so `--retime` can rewrite it in the same style), formatters for
//! the API's styles, and Unix-millisecond helpers.
//!
//! Internally event times are `i64` Unix milliseconds: events carry
//! millisecond precision, and integers make bucket arithmetic exact.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// The time zone designator a timestamp was written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneStyle {
    /// `Z` (or `z`).
    Utc,
    /// `+01:00` (`colon`), `+0100`, or `+01` (`with_minutes` false).
    Offset {
        seconds: i32,
        colon: bool,
        with_minutes: bool,
    },
    /// No designator; read as UTC.
    Absent,
}

/// How a timestamp was written: enough to write another instant the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StampFormat {
    pub has_seconds: bool,
    /// Digits after the decimal point (0 = none written).
    pub frac_digits: u8,
    pub zone: ZoneStyle,
    /// The separator between date and time (`T`, `t` or a space).
    pub separator: char,
}

impl StampFormat {
    /// The style of the API's own event times: `2016-06-24T21:18:38.000Z`.
    pub const MILLIS_Z: StampFormat = StampFormat {
        has_seconds: true,
        frac_digits: 3,
        zone: ZoneStyle::Utc,
        separator: 'T',
    };
}

/// Parses an ISO 8601 date-time: `YYYY-MM-DDThh:mm[:ss[.fff]]` followed by
/// `Z`, `±hh:mm`, `±hhmm`, `±hh` or nothing (UTC). A space where the offset
/// sign belongs is read as `+`, because an unencoded `+` in a query string
/// arrives as a space.
pub fn parse_timestamp(text: &str) -> Result<(OffsetDateTime, StampFormat), String> {
    let err = || format!("invalid ISO 8601 date-time: {text:?}");
    let b = text.as_bytes();
    let mut pos = 0;

    let year = take_digits(b, &mut pos, 4).ok_or_else(err)? as i32;
    expect(b, &mut pos, b'-').ok_or_else(err)?;
    let month = take_digits(b, &mut pos, 2).ok_or_else(err)?;
    expect(b, &mut pos, b'-').ok_or_else(err)?;
    let day = take_digits(b, &mut pos, 2).ok_or_else(err)?;
    let separator = match b.get(pos) {
        Some(&c @ (b'T' | b't' | b' ')) => c as char,
        _ => return Err(err()),
    };
    pos += 1;
    let hour = take_digits(b, &mut pos, 2).ok_or_else(err)?;
    expect(b, &mut pos, b':').ok_or_else(err)?;
    let minute = take_digits(b, &mut pos, 2).ok_or_else(err)?;
    let mut second = 0;
    let mut nanos: u32 = 0;
    let mut frac_digits = 0u8;
    let has_seconds = b.get(pos) == Some(&b':');
    if has_seconds {
        pos += 1;
        second = take_digits(b, &mut pos, 2).ok_or_else(err)?;
        if matches!(b.get(pos), Some(b'.' | b',')) {
            pos += 1;
            let start = pos;
            while pos < b.len() && b[pos].is_ascii_digit() {
                pos += 1;
            }
            let digits = &text[start..pos];
            if digits.is_empty() || digits.len() > 9 {
                return Err(err());
            }
            frac_digits = digits.len() as u8;
            let value: u32 = digits.parse().map_err(|_| err())?;
            nanos = value * 10u32.pow(9 - digits.len() as u32);
        }
    }

    let zone = match b.get(pos) {
        None => ZoneStyle::Absent,
        Some(b'Z' | b'z') => {
            pos += 1;
            ZoneStyle::Utc
        }
        Some(&sign @ (b'+' | b'-' | b' ')) => {
            pos += 1;
            let hours = take_digits(b, &mut pos, 2).ok_or_else(err)? as i32;
            let colon = b.get(pos) == Some(&b':');
            if colon {
                pos += 1;
            }
            let with_minutes = pos < b.len();
            let minutes = if with_minutes {
                take_digits(b, &mut pos, 2).ok_or_else(err)? as i32
            } else if colon {
                return Err(err());
            } else {
                0
            };
            if hours > 23 || minutes > 59 {
                return Err(err());
            }
            let magnitude = hours * 3600 + minutes * 60;
            ZoneStyle::Offset {
                seconds: if sign == b'-' { -magnitude } else { magnitude },
                colon,
                with_minutes,
            }
        }
        Some(_) => return Err(err()),
    };
    if pos != b.len() {
        return Err(err());
    }

    let month = Month::try_from(month as u8).map_err(|_| err())?;
    let date = Date::from_calendar_date(year, month, day as u8).map_err(|_| err())?;
    let time =
        Time::from_hms_nano(hour as u8, minute as u8, second as u8, nanos).map_err(|_| err())?;
    let offset_seconds = match zone {
        ZoneStyle::Offset { seconds, .. } => seconds,
        _ => 0,
    };
    let offset = UtcOffset::from_whole_seconds(offset_seconds).map_err(|_| err())?;
    let at = PrimitiveDateTime::new(date, time).assume_offset(offset);
    Ok((
        at,
        StampFormat {
            has_seconds,
            frac_digits,
            zone,
            separator,
        },
    ))
}

fn take_digits(b: &[u8], pos: &mut usize, count: usize) -> Option<u32> {
    let digits = b.get(*pos..*pos + count)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    *pos += count;
    Some(
        digits
            .iter()
            .fold(0, |acc, d| acc * 10 + u32::from(d - b'0')),
    )
}

fn expect(b: &[u8], pos: &mut usize, want: u8) -> Option<()> {
    (b.get(*pos) == Some(&want)).then(|| *pos += 1)
}

/// Writes `at` in the style `format` describes (dropping precision the style
/// has no room for).
pub fn format_timestamp(at: OffsetDateTime, format: StampFormat) -> String {
    use std::fmt::Write;
    let offset_seconds = match format.zone {
        ZoneStyle::Offset { seconds, .. } => seconds,
        _ => 0,
    };
    let local =
        at.to_offset(UtcOffset::from_whole_seconds(offset_seconds).unwrap_or(UtcOffset::UTC));
    let mut out = String::with_capacity(32);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}{}{:02}:{:02}",
        local.year(),
        local.month() as u8,
        local.day(),
        format.separator,
        local.hour(),
        local.minute()
    );
    if format.has_seconds {
        let _ = write!(out, ":{:02}", local.second());
        if format.frac_digits > 0 {
            let digits = format!("{:09}", local.nanosecond());
            out.push('.');
            out.push_str(&digits[..format.frac_digits as usize]);
        }
    }
    match format.zone {
        ZoneStyle::Utc => out.push('Z'),
        ZoneStyle::Absent => {}
        ZoneStyle::Offset {
            seconds,
            colon,
            with_minutes,
        } => {
            let sign = if seconds < 0 { '-' } else { '+' };
            let magnitude = seconds.abs();
            let _ = write!(out, "{sign}{:02}", magnitude / 3600);
            if with_minutes {
                if colon {
                    out.push(':');
                }
                let _ = write!(out, "{:02}", magnitude % 3600 / 60);
            }
        }
    }
    out
}

/// The instant `format` would actually show for `ms` (precision it cannot
/// write is dropped), as Unix milliseconds.
pub fn truncate_ms_to_format(ms: i64, format: StampFormat) -> i64 {
    let unit = if !format.has_seconds {
        60_000
    } else {
        match format.frac_digits {
            0 => 1000,
            1 => 100,
            2 => 10,
            _ => 1,
        }
    };
    ms.div_euclid(unit) * unit
}

/// `2016-06-24T21:18:38.123Z`, the API's event-time style.
pub fn format_ms(ms: i64) -> String {
    format_timestamp(ms_to_datetime(ms), StampFormat::MILLIS_Z)
}

/// `2016-06-24T21:36:00Z`: the `queryEndTime` style (no fraction).
pub fn format_seconds_z(at: OffsetDateTime) -> String {
    format_timestamp(
        at,
        StampFormat {
            frac_digits: 0,
            ..StampFormat::MILLIS_Z
        },
    )
}

pub fn ms_to_datetime(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Unix milliseconds, rounded towards the past.
pub fn floor_ms(at: OffsetDateTime) -> i64 {
    at.unix_timestamp_nanos().div_euclid(1_000_000) as i64
}

/// Unix milliseconds, rounded towards the future. For a bound `b` with
/// sub-millisecond precision, an event at whole millisecond `t` satisfies
/// `t >= b` exactly when `t >= ceil_ms(b)`, so half-open windows stay exact.
pub fn ceil_ms(at: OffsetDateTime) -> i64 {
    let nanos = at.unix_timestamp_nanos();
    (nanos.div_euclid(1_000_000) + i128::from(nanos.rem_euclid(1_000_000) != 0)) as i64
}

pub fn now_utc() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn parses_the_common_forms() {
        let cases = [
            ("2016-06-24T21:36:00Z", datetime!(2016-06-24 21:36:00 UTC)),
            (
                "2016-06-24T21:36:00.250Z",
                datetime!(2016-06-24 21:36:00.25 UTC),
            ),
            ("2016-06-24T21:36Z", datetime!(2016-06-24 21:36:00 UTC)),
            (
                "2016-06-24T23:36:00+02:00",
                datetime!(2016-06-24 21:36:00 UTC),
            ),
            (
                "2016-06-24T23:36:00+0200",
                datetime!(2016-06-24 21:36:00 UTC),
            ),
            ("2016-06-24T19:36:00-02", datetime!(2016-06-24 21:36:00 UTC)),
            // `+` decoded to a space by form decoding.
            (
                "2016-06-24T23:36:00 02:00",
                datetime!(2016-06-24 21:36:00 UTC),
            ),
            ("2016-06-24T21:36:00", datetime!(2016-06-24 21:36:00 UTC)),
            (
                "2016-06-24T21:36:00.123456789Z",
                datetime!(2016-06-24 21:36:00.123456789 UTC),
            ),
        ];
        for (text, want) in cases {
            let (got, _) = parse_timestamp(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in [
            "",
            "yesterday",
            "2016-06-24",
            "2016-13-01T00:00:00Z",
            "2016-02-30T00:00:00Z",
            "2016-06-24T25:00:00Z",
            "2016-06-24T21:36:00.Z",
            "2016-06-24T21:36:00ZZ",
            "2016-06-24T21:36:00+2",
            "2016-06-24T21:36:00+02:",
            "PT30M",
        ] {
            assert!(parse_timestamp(text).is_err(), "{text:?} should not parse");
        }
    }

    #[test]
    fn formatting_keeps_the_written_style() {
        for text in [
            "2022-01-01T00:45:55.050Z",
            "2016-06-24T21:36:00Z",
            "2016-06-24T23:36:00+02:00",
            "2016-06-24T23:36:00.5-0130",
            "2016-06-24T21:36",
            "2016-06-24 21:36:07.123456Z",
        ] {
            let (at, format) = parse_timestamp(text).unwrap();
            assert_eq!(format_timestamp(at, format), text);
        }
        let (_, format) = parse_timestamp("2016-06-24T23:36:00+02:00").unwrap();
        assert_eq!(
            format_timestamp(datetime!(2020-01-01 00:00:00 UTC), format),
            "2020-01-01T02:00:00+02:00"
        );
    }

    #[test]
    fn millisecond_rounding() {
        let at = datetime!(2020-01-01 00:00:00.0005 UTC);
        assert_eq!(ceil_ms(at) - floor_ms(at), 1);
        let whole = datetime!(2020-01-01 00:00:01 UTC);
        assert_eq!(ceil_ms(whole), floor_ms(whole));
        assert_eq!(format_ms(floor_ms(whole)), "2020-01-01T00:00:01.000Z");
        assert_eq!(format_seconds_z(at), "2020-01-01T00:00:00Z");
        let (_, no_frac) = parse_timestamp("2016-06-24T21:36:00Z").unwrap();
        assert_eq!(truncate_ms_to_format(1_999, no_frac), 1_000);
        assert_eq!(truncate_ms_to_format(-1, no_frac), -1_000);
    }
}
