//! The SIEM API's rolling-24h request limit: per credential, two pools
//! (`clicks/permitted` alone, every other SIEM endpoint together).
//!
//! Every admitted request is recorded, whatever its outcome (a 400 spends
//! budget too). A request refused with 429 is not recorded, so the pool
//! reopens exactly 24 h after its oldest admitted request.
//!
//! Times are the simulator clock's Unix milliseconds (see `clock.rs`), so
//! with `--clock-file` the pools expire by simulated time. Should that time
//! go backwards, requests are still kept in time order and requests "in the
//! future" still count: nothing panics, and no budget is handed back early.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::model::Pool;

/// The rolling window, in milliseconds.
pub const WINDOW_MS: i64 = 24 * 3_600_000;

pub struct RateLimiter {
    limit: usize,
    window_ms: i64,
    /// Admission times (Unix ms) per (principal, pool), oldest first.
    admitted: Mutex<HashMap<(String, Pool), VecDeque<i64>>>,
}

/// Refused: the pool is full until `reopens_at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub reopens_at_ms: i64,
}

impl RateLimiter {
    pub fn new(limit: usize) -> RateLimiter {
        RateLimiter {
            limit,
            window_ms: WINDOW_MS,
            admitted: Mutex::new(HashMap::new()),
        }
    }

    /// Admits and records a request at `now_ms`, or refuses it.
    pub fn try_admit(&self, principal: &str, pool: Pool, now_ms: i64) -> Result<(), Throttled> {
        let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        let times = admitted.entry((principal.to_string(), pool)).or_default();
        while times
            .front()
            .is_some_and(|&oldest| now_ms.saturating_sub(oldest) >= self.window_ms)
        {
            times.pop_front();
        }
        if times.len() >= self.limit {
            let reopens_at_ms = times
                .front()
                .map_or(now_ms, |&oldest| oldest.saturating_add(self.window_ms));
            return Err(Throttled { reopens_at_ms });
        }
        // Usually appends; a clock that went backwards inserts in order.
        let at = times.partition_point(|&t| t <= now_ms);
        times.insert(at, now_ms);
        Ok(())
    }

    /// Requests of the last window (ending at `now_ms`) that count against
    /// this pool.
    pub fn in_window(&self, principal: &str, pool: Pool, now_ms: i64) -> usize {
        let admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        admitted
            .get(&(principal.to_string(), pool))
            .map_or(0, |times| {
                times
                    .iter()
                    .filter(|&&t| now_ms.saturating_sub(t) < self.window_ms)
                    .count()
            })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn pools_are_separate_and_reopen_24h_after_the_oldest_request() {
        let limiter = RateLimiter::new(3);
        let t0 = 1_700_000_000_000;
        for i in 0..3 {
            assert!(limiter
                .try_admit("p", Pool::SiemOther, t0 + HOUR * i)
                .is_ok());
        }
        let refused = limiter.try_admit("p", Pool::SiemOther, t0 + HOUR * 5);
        assert_eq!(
            refused,
            Err(Throttled {
                reopens_at_ms: t0 + WINDOW_MS
            })
        );
        // The other pool and other credentials are unaffected.
        assert!(limiter
            .try_admit("p", Pool::ClicksPermitted, t0 + HOUR * 5)
            .is_ok());
        assert!(limiter
            .try_admit("q", Pool::SiemOther, t0 + HOUR * 5)
            .is_ok());

        // Refusals are not recorded: just before 24 h still refused, at 24 h
        // after the oldest request one slot is free again.
        assert!(limiter
            .try_admit("p", Pool::SiemOther, t0 + WINDOW_MS - 1)
            .is_err());
        assert!(limiter
            .try_admit("p", Pool::SiemOther, t0 + WINDOW_MS)
            .is_ok());
        assert!(limiter
            .try_admit("p", Pool::SiemOther, t0 + WINDOW_MS)
            .is_err());
        assert_eq!(
            limiter.try_admit("p", Pool::SiemOther, t0 + WINDOW_MS),
            Err(Throttled {
                reopens_at_ms: t0 + WINDOW_MS + HOUR
            })
        );
        assert_eq!(limiter.in_window("p", Pool::SiemOther, t0 + WINDOW_MS), 3);
        assert_eq!(
            limiter.in_window("p", Pool::ClicksPermitted, t0 + WINDOW_MS),
            1
        );
        // A whole simulated day later everything has expired.
        let later = t0 + 3 * WINDOW_MS;
        assert_eq!(limiter.in_window("p", Pool::SiemOther, later), 0);
        for _ in 0..3 {
            assert!(limiter.try_admit("p", Pool::SiemOther, later).is_ok());
        }
        assert!(limiter.try_admit("p", Pool::SiemOther, later).is_err());
    }

    #[test]
    fn a_clock_going_backwards_keeps_order_and_counts() {
        let limiter = RateLimiter::new(3);
        let t0 = 1_700_000_000_000;
        assert!(limiter
            .try_admit("p", Pool::SiemOther, t0 + 10 * HOUR)
            .is_ok());
        assert!(limiter.try_admit("p", Pool::SiemOther, t0).is_ok());
        assert!(limiter.try_admit("p", Pool::SiemOther, t0 + HOUR).is_ok());
        // Full; the oldest request (t0) decides when a slot frees up.
        assert_eq!(
            limiter.try_admit("p", Pool::SiemOther, t0 + 2 * HOUR),
            Err(Throttled {
                reopens_at_ms: t0 + WINDOW_MS
            })
        );
        // Requests "in the future" still count.
        assert_eq!(limiter.in_window("p", Pool::SiemOther, t0), 3);
        assert!(limiter
            .try_admit("p", Pool::SiemOther, t0 + WINDOW_MS)
            .is_ok());
        assert_eq!(
            limiter.in_window("p", Pool::SiemOther, t0 + WINDOW_MS + HOUR),
            2
        );
        // Extreme times do not overflow.
        assert!(limiter.try_admit("x", Pool::SiemOther, i64::MAX).is_ok());
        assert!(limiter.try_admit("x", Pool::SiemOther, i64::MIN).is_ok());
        assert_eq!(limiter.in_window("x", Pool::SiemOther, 0), 1);
    }

    #[test]
    fn zero_limit_refuses_everything() {
        let limiter = RateLimiter::new(0);
        assert!(limiter.try_admit("p", Pool::SiemOther, 0).is_err());
    }
}
