//! Request counters for `/_sim/stats`, so tests can check a connector's
//! request budget. Requests to `/_sim/*` themselves are not counted.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::faults::FaultKind;
use crate::model::Pool;

#[derive(Default)]
pub struct Stats {
    total: AtomicU64,
    siem_admitted: [AtomicU64; 2],
    siem_throttled: [AtomicU64; 2],
    threat: AtomicU64,
    status_400: AtomicU64,
    status_401: AtomicU64,
    status_404: AtomicU64,
    status_429: AtomicU64,
    faults: [AtomicU64; FaultKind::ALL.len()],
}

#[derive(Serialize)]
pub struct PoolSnapshot {
    /// Requests counted against the pool since start (each spent budget).
    pub admitted: u64,
    /// Requests counted in the current rolling 24 h.
    pub in_window: usize,
    pub limit: usize,
    /// Requests refused with 429.
    pub throttled: u64,
}

#[derive(Serialize)]
pub struct StatsSnapshot {
    pub total_requests: u64,
    pub siem_requests: u64,
    pub threat_requests: u64,
    pub pools: std::collections::BTreeMap<&'static str, PoolSnapshot>,
    pub responses_400: u64,
    pub responses_401: u64,
    pub responses_404: u64,
    pub responses_429: u64,
    /// Injected faults (`--faults`) per kind, every kind listed.
    pub faults: std::collections::BTreeMap<&'static str, u64>,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Stats {
    pub fn request(&self) {
        bump(&self.total);
    }

    pub fn siem_admitted(&self, pool: Pool) {
        bump(&self.siem_admitted[pool.index()]);
    }

    pub fn siem_throttled(&self, pool: Pool) {
        bump(&self.siem_throttled[pool.index()]);
    }

    pub fn threat_request(&self) {
        bump(&self.threat);
    }

    /// Counts a fault injected into a response.
    pub fn fault(&self, kind: FaultKind) {
        bump(&self.faults[kind.index()]);
    }

    /// Counts a response status (only the error statuses are tracked).
    pub fn status(&self, status: u16) {
        match status {
            400 => bump(&self.status_400),
            401 => bump(&self.status_401),
            404 => bump(&self.status_404),
            429 => bump(&self.status_429),
            _ => {}
        }
    }

    /// `in_window(pool)` and `limit` come from the rate limiter.
    pub fn snapshot(&self, in_window: impl Fn(Pool) -> usize, limit: usize) -> StatsSnapshot {
        let pools = Pool::ALL
            .into_iter()
            .map(|pool| {
                (
                    pool.name(),
                    PoolSnapshot {
                        admitted: read(&self.siem_admitted[pool.index()]),
                        in_window: in_window(pool),
                        limit,
                        throttled: read(&self.siem_throttled[pool.index()]),
                    },
                )
            })
            .collect();
        StatsSnapshot {
            total_requests: read(&self.total),
            siem_requests: Pool::ALL
                .into_iter()
                .map(|p| {
                    read(&self.siem_admitted[p.index()]) + read(&self.siem_throttled[p.index()])
                })
                .sum(),
            threat_requests: read(&self.threat),
            pools,
            responses_400: read(&self.status_400),
            responses_401: read(&self.status_401),
            responses_404: read(&self.status_404),
            responses_429: read(&self.status_429),
            faults: FaultKind::ALL
                .into_iter()
                .map(|kind| (kind.name(), read(&self.faults[kind.index()])))
                .collect(),
        }
    }
}
