//! Window planning: which SIEM intervals one run asks for.
//!
//! The API answers each interval in one body, accepts intervals of 30 s to
//! 1 h, refuses starts more than 7 days back and intervals that are still
//! current, and files events up to ~30 minutes late. So a run covers
//! `[start, horizon)` with contiguous windows, where `horizon` lies a safety
//! margin before now and `start` lies a look-back before the checkpoint.

use time::{format_description::FormatItem, macros::format_description, Duration, OffsetDateTime};

/// The API's shortest accepted interval.
pub const MIN_WINDOW: Duration = Duration::seconds(30);
/// How far back the API answers.
pub const MAX_HISTORY: Duration = Duration::days(7);
/// Distance kept from the 7-day limit, so clock differences and the time a
/// run takes never push a start over it.
pub const HISTORY_MARGIN: Duration = Duration::minutes(15);

const API_TIME: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// A half-open interval `[start, end)` in whole seconds, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
}

impl Window {
    pub fn len(&self) -> Duration {
        self.end - self.start
    }

    /// `START/END` as the API's `interval` parameter wants it.
    pub fn interval_param(&self) -> String {
        format!("{}/{}", api_time(self.start), api_time(self.end))
    }
}

/// A span the API can no longer answer for: events in it are lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
}

/// The settings planning needs, in durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanSettings {
    pub initial_lookback: Duration,
    pub lookback: Duration,
    pub safety_margin: Duration,
    pub max_window: Duration,
}

impl From<&crate::config::Config> for PlanSettings {
    fn from(c: &crate::config::Config) -> Self {
        PlanSettings {
            initial_lookback: Duration::hours(c.initial_lookback_hours.into()),
            lookback: Duration::minutes(c.lookback_minutes.into()),
            safety_margin: Duration::seconds(c.safety_margin_seconds.into()),
            max_window: Duration::minutes(c.max_window_minutes.into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Where this run starts (before window adjustment).
    pub start: OffsetDateTime,
    /// Where this run ends: now minus the safety margin, whole seconds.
    pub horizon: OffsetDateTime,
    /// The earliest start the API still accepts, with margin.
    pub earliest: OffsetDateTime,
    pub windows: Vec<Window>,
    /// Set when the span this run should re-read (from a look-back before
    /// the checkpoint) reaches past the API's history: events filed there
    /// and not collected before (late-indexed ones, or all of them behind
    /// an old checkpoint) are lost.
    pub gap: Option<Gap>,
}

/// Whole seconds, rounding down.
pub fn truncate_to_second(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).expect("0 is a valid nanosecond")
}

/// The earliest start the API accepts, with margin: now − 7 d + 15 min.
pub fn earliest_start(now: OffsetDateTime) -> OffsetDateTime {
    truncate_to_second(now) - MAX_HISTORY + HISTORY_MARGIN
}

/// Plan one run from the stored checkpoint (the end of the last committed window).
pub fn plan(now: OffsetDateTime, checkpoint: Option<OffsetDateTime>, s: &PlanSettings) -> Plan {
    let now = truncate_to_second(now);
    let horizon = now - s.safety_margin;
    let earliest = earliest_start(now);
    let (start, gap) = match checkpoint {
        // First run: an initial look-back of 7 d would be just over the limit.
        None => ((now - s.initial_lookback).max(earliest), None),
        Some(cp) => {
            // The look-back before the checkpoint is part of what is due:
            // events there may have been indexed after it was last read.
            let wanted = truncate_to_second(cp) - s.lookback;
            let gap = (wanted < earliest).then_some(Gap {
                start: wanted,
                end: earliest,
            });
            (wanted.max(earliest), gap)
        }
    };
    Plan {
        start,
        horizon,
        earliest,
        windows: split_range(start, horizon, s.max_window),
        gap,
    }
}

/// Contiguous windows of at most `max_window` covering `[start, end)`. A last
/// remainder shorter than 30 s is stretched backwards to 30 s (the overlap is
/// harmless: re-collected events are stored once). A span shorter than 30 s
/// yields nothing: it is collected next run, when it has grown.
pub fn split_range(
    start: OffsetDateTime,
    end: OffsetDateTime,
    max_window: Duration,
) -> Vec<Window> {
    let max_window = max_window.max(MIN_WINDOW);
    if end - start < MIN_WINDOW {
        return Vec::new();
    }
    let mut windows = Vec::new();
    let mut cursor = start;
    while cursor < end {
        let w_end = (cursor + max_window).min(end);
        let w_start = if w_end - cursor < MIN_WINDOW {
            w_end - MIN_WINDOW
        } else {
            cursor
        };
        windows.push(Window {
            start: w_start,
            end: w_end,
        });
        cursor = w_end;
    }
    windows
}

/// `YYYY-MM-DDTHH:MM:SSZ`, the form the API uses.
pub fn api_time(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(API_TIME)
        .expect("UTC timestamps always format")
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn settings() -> PlanSettings {
        PlanSettings {
            initial_lookback: Duration::hours(24),
            lookback: Duration::minutes(30),
            safety_margin: Duration::seconds(60),
            max_window: Duration::minutes(60),
        }
    }

    fn assert_contiguous(p: &Plan) {
        for pair in p.windows.windows(2) {
            assert!(pair[1].start <= pair[0].end, "gap between {pair:?}");
        }
        for w in &p.windows {
            assert!(
                w.len() >= MIN_WINDOW && w.len() <= Duration::minutes(60),
                "{w:?}"
            );
        }
    }

    #[test]
    fn first_run_covers_initial_lookback_up_to_horizon() {
        let now = datetime!(2024-10-11 14:34:53.789 UTC);
        let p = plan(now, None, &settings());
        assert_eq!(p.horizon, datetime!(2024-10-11 14:33:53 UTC));
        assert_eq!(p.start, datetime!(2024-10-10 14:34:53 UTC));
        assert_eq!(p.gap, None);
        assert_eq!(p.windows.first().unwrap().start, p.start);
        assert_eq!(p.windows.last().unwrap().end, p.horizon);
        // 23 h 59 min: 23 full hours and one of 59 minutes.
        assert_eq!(p.windows.len(), 24);
        assert_eq!(p.windows[23].len(), Duration::minutes(59));
        assert_contiguous(&p);
        assert_eq!(
            p.windows[0].interval_param(),
            "2024-10-10T14:34:53Z/2024-10-10T15:34:53Z"
        );
    }

    #[test]
    fn first_run_of_seven_days_is_clamped_without_gap() {
        let now = datetime!(2024-10-11 14:00:00 UTC);
        let s = PlanSettings {
            initial_lookback: Duration::hours(168),
            ..settings()
        };
        let p = plan(now, None, &s);
        assert_eq!(p.start, datetime!(2024-10-04 14:15:00 UTC));
        assert_eq!(p.gap, None);
    }

    #[test]
    fn checkpoint_is_requeried_with_lookback() {
        let now = datetime!(2024-10-11 14:10:00 UTC);
        let cp = datetime!(2024-10-11 14:04:00 UTC);
        let p = plan(now, Some(cp), &settings());
        assert_eq!(p.start, datetime!(2024-10-11 13:34:00 UTC));
        assert_eq!(
            p.windows,
            vec![Window {
                start: datetime!(2024-10-11 13:34:00 UTC),
                end: datetime!(2024-10-11 14:09:00 UTC)
            }]
        );
    }

    #[test]
    fn short_remainder_is_stretched_back_to_30s() {
        let now = datetime!(2024-10-11 14:10:00 UTC);
        // Span 13:08:50 .. 14:09:00 = 60 min 10 s.
        let cp = datetime!(2024-10-11 13:08:50 UTC);
        let s = PlanSettings {
            lookback: Duration::ZERO,
            ..settings()
        };
        let p = plan(now, Some(cp), &s);
        assert_eq!(p.windows.len(), 2);
        assert_eq!(p.windows[0].end, datetime!(2024-10-11 14:08:50 UTC));
        assert_eq!(
            p.windows[1],
            Window {
                start: datetime!(2024-10-11 14:08:30 UTC),
                end: datetime!(2024-10-11 14:09:00 UTC)
            }
        );
        assert_contiguous(&p);
    }

    #[test]
    fn span_under_30s_plans_nothing() {
        let now = datetime!(2024-10-11 14:10:00 UTC);
        let cp = datetime!(2024-10-11 14:08:31 UTC);
        let s = PlanSettings {
            lookback: Duration::ZERO,
            ..settings()
        };
        assert!(plan(now, Some(cp), &s).windows.is_empty());
        // Exactly 30 s is enough.
        let cp = datetime!(2024-10-11 14:08:30 UTC);
        assert_eq!(plan(now, Some(cp), &s).windows.len(), 1);
    }

    #[test]
    fn old_checkpoint_is_clamped_with_gap() {
        let now = datetime!(2024-10-11 14:00:00 UTC);
        let cp = datetime!(2024-10-01 00:00:00 UTC);
        let p = plan(now, Some(cp), &settings());
        let earliest = datetime!(2024-10-04 14:15:00 UTC);
        assert_eq!(p.earliest, earliest);
        assert_eq!(p.start, earliest);
        // From a look-back before the checkpoint: late events there were due.
        assert_eq!(
            p.gap,
            Some(Gap {
                start: cp - Duration::minutes(30),
                end: earliest
            })
        );
        assert_eq!(p.windows[0].start, earliest);
        assert_eq!(p.windows.last().unwrap().end, p.horizon);
        assert_contiguous(&p);
    }

    #[test]
    fn checkpoint_just_inside_history_clamps_lookback_with_a_gap() {
        let now = datetime!(2024-10-11 14:00:00 UTC);
        let cp = datetime!(2024-10-04 14:20:00 UTC);
        let p = plan(now, Some(cp), &settings());
        assert_eq!(p.start, p.earliest);
        // Only the part of the look-back the API no longer answers for.
        assert_eq!(
            p.gap,
            Some(Gap {
                start: datetime!(2024-10-04 13:50:00 UTC),
                end: p.earliest
            })
        );
        // A look-back that fits: no gap.
        let cp = datetime!(2024-10-04 14:45:00 UTC);
        let p = plan(now, Some(cp), &settings());
        assert_eq!(p.start, datetime!(2024-10-04 14:15:00 UTC));
        assert_eq!(p.gap, None);
    }
}
