//! The SIEM API's rolling-24h request limit: per credential, two pools
//! (`clicks/permitted` alone, every other SIEM endpoint together).
//!
//! Every admitted request is recorded, whatever its outcome (a 400 spends
//! budget too). A request refused with 429 is not recorded, so the pool
//! reopens exactly 24 h after its oldest admitted request.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::Pool;

pub const WINDOW: Duration = Duration::from_secs(24 * 3600);

pub struct RateLimiter {
    limit: usize,
    window: Duration,
    /// Admission times per (principal, pool), oldest first.
    admitted: Mutex<HashMap<(String, Pool), VecDeque<Instant>>>,
}

/// Refused: the pool is full until `reopens_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub reopens_at: Instant,
}

impl RateLimiter {
    pub fn new(limit: usize) -> RateLimiter {
        RateLimiter {
            limit,
            window: WINDOW,
            admitted: Mutex::new(HashMap::new()),
        }
    }

    /// Admits and records a request at `now`, or refuses it.
    pub fn try_admit(&self, principal: &str, pool: Pool, now: Instant) -> Result<(), Throttled> {
        let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        let times = admitted.entry((principal.to_string(), pool)).or_default();
        while times
            .front()
            .is_some_and(|&oldest| now.duration_since(oldest) >= self.window)
        {
            times.pop_front();
        }
        if times.len() >= self.limit {
            let reopens_at = times.front().map_or(now, |&oldest| oldest + self.window);
            return Err(Throttled { reopens_at });
        }
        times.push_back(now);
        Ok(())
    }

    /// Requests of the last window that count against this pool.
    pub fn in_window(&self, principal: &str, pool: Pool, now: Instant) -> usize {
        let admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        admitted
            .get(&(principal.to_string(), pool))
            .map_or(0, |times| {
                times
                    .iter()
                    .filter(|&&t| now.duration_since(t) < self.window)
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

    #[test]
    fn pools_are_separate_and_reopen_24h_after_the_oldest_request() {
        let limiter = RateLimiter::new(3);
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        for i in 0..3 {
            assert!(limiter
                .try_admit("p", Pool::SiemOther, t0 + hour * i)
                .is_ok());
        }
        let refused = limiter.try_admit("p", Pool::SiemOther, t0 + hour * 5);
        assert_eq!(
            refused,
            Err(Throttled {
                reopens_at: t0 + WINDOW
            })
        );
        // The other pool and other credentials are unaffected.
        assert!(limiter
            .try_admit("p", Pool::ClicksPermitted, t0 + hour * 5)
            .is_ok());
        assert!(limiter
            .try_admit("q", Pool::SiemOther, t0 + hour * 5)
            .is_ok());

        // Refusals are not recorded: just before 24 h still refused, at 24 h
        // after the oldest request one slot is free again.
        assert!(limiter
            .try_admit("p", Pool::SiemOther, t0 + WINDOW - Duration::from_millis(1))
            .is_err());
        assert!(limiter.try_admit("p", Pool::SiemOther, t0 + WINDOW).is_ok());
        assert!(limiter
            .try_admit("p", Pool::SiemOther, t0 + WINDOW)
            .is_err());
        assert_eq!(
            limiter.try_admit("p", Pool::SiemOther, t0 + WINDOW),
            Err(Throttled {
                reopens_at: t0 + WINDOW + hour
            })
        );
        assert_eq!(limiter.in_window("p", Pool::SiemOther, t0 + WINDOW), 3);
        assert_eq!(
            limiter.in_window("p", Pool::ClicksPermitted, t0 + WINDOW),
            1
        );
    }

    #[test]
    fn zero_limit_refuses_everything() {
        let limiter = RateLimiter::new(0);
        assert!(limiter
            .try_admit("p", Pool::SiemOther, Instant::now())
            .is_err());
    }
}
