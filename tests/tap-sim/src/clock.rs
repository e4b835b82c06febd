//! The simulator's "now". Either the real clock, or (`--clock-file FILE`) a
//! time a test writes into a file, so hours and days of simulated time can
//! pass in seconds while the simulator and the host under test agree on
//! the time.
//!
//! Every use of "now" goes through [`Clock::now`]: event visibility, the
//! 400 rules, `sinceTime`/`sinceSeconds` windows, `queryEndTime`, the
//! rolling-24h rate-limit pools, `/_sim/truth`, and (at start) the history
//! start and `--retime`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::timestamp::{floor_ms, ms_to_datetime, now_utc};

/// Clock-file times must fall in these years, so that date arithmetic
/// around them (7 days back, history hours) cannot overflow.
const MIN_YEAR: i32 = 1000;
const MAX_YEAR: i32 = 9000;

/// A writer that truncates the file and then writes it can be caught in
/// between; an unparsable read is retried this many times before failing.
const READ_ATTEMPTS: usize = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(2);

pub enum Clock {
    /// The real (system) clock.
    System,
    /// The time written in a file, re-read on every use.
    File(FileClock),
}

impl Clock {
    pub fn system() -> Clock {
        Clock::System
    }

    pub fn file(path: impl Into<PathBuf>) -> Clock {
        Clock::File(FileClock {
            path: path.into(),
            last_ms: AtomicI64::new(i64::MIN),
        })
    }

    /// The current time, or why it cannot be known.
    pub fn now(&self) -> Result<OffsetDateTime, ClockError> {
        match self {
            Clock::System => Ok(now_utc()),
            Clock::File(file) => file.now(),
        }
    }

    /// The current time in Unix milliseconds (rounded towards the past).
    pub fn now_ms(&self) -> Result<i64, ClockError> {
        self.now().map(floor_ms)
    }

    /// How the clock is described in logs.
    pub fn describe(&self) -> String {
        match self {
            Clock::System => "system".to_string(),
            Clock::File(file) => format!("file {}", file.path.display()),
        }
    }
}

/// `--clock-file`: no caching, the file is read each time "now" is needed.
pub struct FileClock {
    path: PathBuf,
    /// The last time read (Unix ms), to report time going backwards.
    last_ms: AtomicI64,
}

impl FileClock {
    fn now(&self) -> Result<OffsetDateTime, ClockError> {
        let mut attempt = 0;
        let now = loop {
            attempt += 1;
            match read_clock_file(&self.path) {
                Ok(now) => break now,
                Err(error) if error.retryable && attempt < READ_ATTEMPTS => {
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(error) => return Err(error),
            }
        };
        let now_ms = floor_ms(now);
        let previous = self.last_ms.swap(now_ms, Ordering::Relaxed);
        if previous != i64::MIN && now_ms < previous {
            // Allowed (nothing breaks), but tests are expected to move time
            // forward only, so say so.
            tracing::warn!(
                path = %self.path.display(),
                from = %ms_to_datetime(previous),
                to = %now,
                "clock file went backwards"
            );
        }
        Ok(now)
    }
}

/// Why the clock could not be read. Requests that need "now" are answered
/// 500 with this text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockError {
    pub message: String,
    /// An unparsable file may be mid-write: worth one more read.
    retryable: bool,
}

impl fmt::Display for ClockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ClockError {}

fn read_clock_file(path: &Path) -> Result<OffsetDateTime, ClockError> {
    let text = std::fs::read_to_string(path).map_err(|e| ClockError {
        message: format!(
            "simulator clock: cannot read --clock-file {}: {e}",
            path.display()
        ),
        retryable: false,
    })?;
    parse_clock_text(&text).map_err(|why| ClockError {
        message: format!(
            "simulator clock: --clock-file {} holds {:?}: {why}",
            path.display(),
            text.trim()
        ),
        retryable: true,
    })
}

/// One RFC 3339 time (e.g. `2026-11-20T10:00:00Z`, fractional seconds
/// allowed) or an integer of Unix epoch milliseconds; surrounding
/// whitespace is ignored.
pub fn parse_clock_text(text: &str) -> Result<OffsetDateTime, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty; expected an RFC 3339 UTC time or Unix epoch milliseconds".into());
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    let at = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        let ms: i64 = text
            .parse()
            .map_err(|_| "epoch milliseconds out of range".to_string())?;
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .map_err(|_| "epoch milliseconds out of range".to_string())?
    } else {
        OffsetDateTime::parse(text, &Rfc3339)
            .map_err(|e| {
                format!(
                    "not an RFC 3339 time (e.g. 2026-11-20T10:00:00Z) or epoch milliseconds: {e}"
                )
            })?
            .to_offset(UtcOffset::UTC)
    };
    if !(MIN_YEAR..=MAX_YEAR).contains(&at.year()) {
        return Err(format!(
            "year {} is outside {MIN_YEAR}..={MAX_YEAR}",
            at.year()
        ));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn parses_rfc3339_and_epoch_milliseconds() {
        let cases = [
            ("2026-11-20T10:00:00Z", datetime!(2026-11-20 10:00 UTC)),
            (
                "  2026-11-20T10:00:00.250Z\n",
                datetime!(2026-11-20 10:00:00.25 UTC),
            ),
            ("2026-11-20T11:00:00+01:00", datetime!(2026-11-20 10:00 UTC)),
            ("1795168800000", datetime!(2026-11-20 10:00 UTC)),
            ("1795168800123\n", datetime!(2026-11-20 10:00:00.123 UTC)),
            ("0", datetime!(1970-01-01 0:00 UTC)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_clock_text(text), Ok(want), "{text:?}");
            assert_eq!(parse_clock_text(text).unwrap().offset(), UtcOffset::UTC);
        }
        for text in [
            "",
            "  \n",
            "yesterday",
            "2026-11-20",
            "2026-11-20T10:00:00",
            "12.5",
            "-",
            "99999999999999999999999",
            "253402300800000",
            "0001-01-01T00:00:00Z",
        ] {
            assert!(parse_clock_text(text).is_err(), "{text:?} should fail");
        }
    }

    #[test]
    fn file_clock_rereads_the_file_every_time() {
        let dir = std::env::temp_dir().join(format!("tap-sim-clock-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("now");
        let clock = Clock::file(&path);

        let missing = clock.now().unwrap_err();
        assert!(
            missing.message.contains("cannot read --clock-file"),
            "{missing}"
        );

        std::fs::write(&path, "2026-11-20T10:00:00Z\n").unwrap();
        assert_eq!(clock.now(), Ok(datetime!(2026-11-20 10:00 UTC)));
        std::fs::write(&path, "1795172400000").unwrap();
        assert_eq!(clock.now_ms(), Ok(1_795_172_400_000));
        // Backwards is allowed (and only logged).
        std::fs::write(&path, "2026-11-20T09:00:00Z").unwrap();
        assert_eq!(clock.now(), Ok(datetime!(2026-11-20 09:00 UTC)));

        std::fs::write(&path, "soon").unwrap();
        let bad = clock.now().unwrap_err();
        assert!(bad.message.contains("\"soon\""), "{bad}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn system_clock_is_the_real_time() {
        let before = OffsetDateTime::now_utc();
        let now = Clock::system().now().unwrap();
        assert!(now >= before && now - before < time::Duration::seconds(5));
    }
}
