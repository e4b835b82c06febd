//! Backing off after the TAP API answered 429.
//!
//! Proofpoint's quota is a rolling 24 hours and it documents no
//! `Retry-After`, so a 429 is answered with an exponential backoff (5 min,
//! doubling up to 4 h, with jitter so connectors sharing a credential do not
//! come back at the same moment). The backoff is kept in state (`rate_limit`,
//! committed at once), so later runs before its end return `rate-limited`
//! without sending anything; the first window committed after it clears it.
//! The checkpoint is never touched by a 429.

use serde_json::Value;
use time::OffsetDateTime;

use crate::identity::sha256_hex;
use crate::platform::{LogLevel, Platform};

/// State key: `{"until": UNIX seconds, "strikes": 429s in a row}`.
pub const RATE_LIMIT_KEY: &str = "rate_limit";
/// The first wait after a 429, in seconds.
pub const FIRST_BACKOFF_SECONDS: u32 = 5 * 60;
/// The longest wait, in seconds.
pub const MAX_BACKOFF_SECONDS: u32 = 4 * 3600;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    /// No SIEM request before this UNIX time.
    pub until: i64,
    /// 429s in a row so far.
    pub strikes: u32,
}

impl Backoff {
    pub fn load<P: Platform>(platform: &P) -> Backoff {
        let Some(bytes) = platform.state_get(RATE_LIMIT_KEY) else {
            return Backoff::default();
        };
        let parsed = serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| {
            Some(Backoff {
                until: v.get("until")?.as_i64()?,
                strikes: u32::try_from(v.get("strikes")?.as_u64()?).ok()?,
            })
        });
        parsed.unwrap_or_else(|| {
            platform.log(
                LogLevel::Warn,
                &format!(
                    "the stored rate-limit backoff {:?} is unreadable; ignoring it",
                    String::from_utf8_lossy(&bytes)
                ),
            );
            Backoff::default()
        })
    }

    /// Seconds left to wait at `now`, if any.
    pub fn wait_left(&self, now: OffsetDateTime) -> Option<u32> {
        let left = self.until - now.unix_timestamp();
        (left > 0).then(|| u32::try_from(left).unwrap_or(u32::MAX))
    }

    /// The backoff after one more 429 at `now`, and its wait in seconds: the
    /// API's `Retry-After` if it sent one, else the exponential backoff.
    /// `seed` varies the jitter between connector instances.
    pub fn strike(
        &self,
        now: OffsetDateTime,
        retry_after: Option<u32>,
        seed: &str,
    ) -> (Backoff, u32) {
        let strikes = self.strikes.saturating_add(1);
        let wait = retry_after
            .unwrap_or_else(|| backoff_seconds(strikes, jitter_unit(seed, now)))
            .max(1);
        (
            Backoff {
                until: now.unix_timestamp() + i64::from(wait),
                strikes,
            },
            wait,
        )
    }

    /// The state change that stores this backoff (or deletes it when clear).
    pub fn state_change(&self) -> (String, Option<Vec<u8>>) {
        let value = (*self != Backoff::default()).then(|| {
            serde_json::json!({"until": self.until, "strikes": self.strikes})
                .to_string()
                .into_bytes()
        });
        (RATE_LIMIT_KEY.to_string(), value)
    }
}

/// 5 min × 2^(strikes−1), at most 4 h, less up to a fifth for jitter
/// (`unit` in [0, 1)).
pub fn backoff_seconds(strikes: u32, unit: f64) -> u32 {
    let doublings = strikes.saturating_sub(1).min(16);
    let base = (u64::from(FIRST_BACKOFF_SECONDS) << doublings).min(u64::from(MAX_BACKOFF_SECONDS));
    let jitter = (base as f64 * 0.2 * unit.clamp(0.0, 1.0)) as u64;
    (base - jitter).max(1) as u32
}

/// A number in [0, 1) from the seed and the time: jitter without a random
/// source (the sandbox's randomness is not part of the contract).
fn jitter_unit(seed: &str, now: OffsetDateTime) -> f64 {
    let hex = sha256_hex(format!("{seed}/{}", now.unix_timestamp_nanos()).as_bytes());
    let n = u64::from_str_radix(&hex[..13], 16).unwrap_or(0);
    n as f64 / (1u64 << 52) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn doubles_from_five_minutes_to_four_hours_with_jitter_below() {
        assert_eq!(backoff_seconds(1, 0.0), 300);
        assert_eq!(backoff_seconds(2, 0.0), 600);
        assert_eq!(backoff_seconds(3, 0.0), 1200);
        assert_eq!(backoff_seconds(6, 0.0), 9600);
        assert_eq!(backoff_seconds(7, 0.0), 14_400);
        assert_eq!(backoff_seconds(40, 0.0), 14_400);
        assert_eq!(backoff_seconds(1, 0.999_999), 241);
        assert_eq!(backoff_seconds(40, 0.5), 12_960);
        let now = datetime!(2024-10-11 14:00:00 UTC);
        let units: Vec<f64> = (0..20)
            .map(|n| jitter_unit(&format!("tap{n}"), now))
            .collect();
        assert!(units.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(units.windows(2).any(|w| w[0] != w[1]), "jitter varies");
    }

    #[test]
    fn strikes_accumulate_and_retry_after_wins() {
        let now = datetime!(2024-10-11 14:00:00 UTC);
        let (first, wait) = Backoff::default().strike(now, None, "tap1");
        assert_eq!(first.strikes, 1);
        assert!((240..=300).contains(&wait), "{wait}");
        assert_eq!(first.until, now.unix_timestamp() + i64::from(wait));
        assert_eq!(first.wait_left(now), Some(wait));
        assert_eq!(
            first.wait_left(now + time::Duration::seconds(i64::from(wait))),
            None
        );
        let (second, wait) = first.strike(now, None, "tap1");
        assert_eq!(second.strikes, 2);
        assert!((480..=600).contains(&wait), "{wait}");
        let (third, wait) = second.strike(now, Some(42), "tap1");
        assert_eq!((third.strikes, wait), (3, 42));

        let (key, value) = third.state_change();
        assert_eq!(key, RATE_LIMIT_KEY);
        let v: Value = serde_json::from_slice(&value.unwrap()).unwrap();
        assert_eq!(v["strikes"], 3);
        assert_eq!(Backoff::default().state_change().1, None);
    }
}
