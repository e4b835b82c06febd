//! "Now", for the host and the sandboxes it runs.
//!
//! Production uses the real clock. Tests and simulations can point the host
//! at a clock file (`[host] clock_file`), shared with `tap-sim --clock-file`,
//! so days of simulated time pass in seconds and both sides agree on "now".
//! The file holds one line: an RFC 3339 UTC time or UNIX epoch milliseconds.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    Real,
    /// Re-read on every use; only tests move it, forward.
    File(PathBuf),
}

impl Clock {
    /// Time since the UNIX epoch.
    pub fn now(&self) -> Result<Duration> {
        match self {
            Clock::Real => Ok(SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()),
            Clock::File(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the clock file {}", path.display()))?;
                parse_instant(text.trim()).with_context(|| {
                    format!("the clock file {} holds no valid time", path.display())
                })
            }
        }
    }

    pub fn now_ms(&self) -> Result<i64> {
        Ok(self.now()?.as_millis() as i64)
    }
}

fn parse_instant(text: &str) -> Result<Duration> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)?;
    let nanos = t.unix_timestamp_nanos();
    anyhow::ensure!(nanos >= 0, "times before 1970 are not supported");
    Ok(Duration::from_nanos(nanos as u64))
}

/// The sandbox's `wasi:clocks/wall-clock`, from the host's clock.
pub struct SandboxWallClock(pub Clock);

impl wasmtime_wasi::HostWallClock for SandboxWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        // A clock file that cannot be read is a broken test setup; the real
        // clock would silently mix two timelines, so report the epoch and let
        // the connector's own sanity checks fail loudly.
        self.0.now().unwrap_or_else(|e| {
            tracing::error!("{e:#}");
            Duration::ZERO
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_file_accepts_rfc3339_and_epoch_ms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("now");
        let clock = Clock::File(path.clone());
        assert!(clock.now().is_err(), "a missing file is an error");
        std::fs::write(&path, "2026-11-20T10:00:00Z\n").unwrap();
        assert_eq!(clock.now_ms().unwrap(), 1_795_168_800_000);
        std::fs::write(&path, "1795168800123").unwrap();
        assert_eq!(clock.now_ms().unwrap(), 1_795_168_800_123);
        std::fs::write(&path, "soon").unwrap();
        assert!(clock.now().is_err());
    }
}
