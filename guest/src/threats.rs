//! Threat API summaries for the threats the collected events name.
//!
//! Each threat is stored once, as Syslog record `threat:<id>`. Ids already
//! stored are skipped (`sink.contains`). Lookups that fail, or that exceed the
//! per-run cap, stay in a small backlog kept in state and committed with each
//! window, so they are retried next run even if no later event names them.

use std::collections::BTreeSet;

use serde_json::value::RawValue;

use crate::api::{TapClient, ThreatLookup};
use crate::platform::{Http, Index, LogLevel, Platform, Record};
use crate::record::{self, Origin};

/// State key of the backlog: a JSON list of threat ids.
pub const BACKLOG_KEY: &str = "threat_backlog";
/// Threat API calls per run. The API is not rate limited, but a run must end.
pub const MAX_LOOKUPS_PER_RUN: u32 = 200;
/// Backlog entries kept; the oldest beyond this are dropped with a warning.
pub const MAX_BACKLOG: usize = 1000;
/// After this many failures in a row the API is taken to be down for this run.
const MAX_CONSECUTIVE_FAILURES: u32 = 3;
/// Ids per `sink.contains` call.
const CONTAINS_BATCH: usize = 500;

pub struct ThreatTracker {
    /// Ids without a stored summary yet, oldest first: the backlog.
    pending: Vec<String>,
    /// The backlog as committed, to write state only when it changed.
    committed: Vec<String>,
    /// Ids met this run (from the backlog or an event).
    seen: BTreeSet<String>,
    /// Ids looked up this run; one failed attempt per run is enough.
    attempted: BTreeSet<String>,
    lookups_left: u32,
    failures_in_a_row: u32,
    cap_logged: bool,
}

impl ThreatTracker {
    pub fn load<P: Platform>(platform: &P) -> Self {
        let pending = match platform.state_get(BACKLOG_KEY) {
            None => Vec::new(),
            Some(bytes) => serde_json::from_slice::<Vec<String>>(&bytes).unwrap_or_else(|e| {
                platform.log(
                    LogLevel::Warn,
                    &format!("the stored threat backlog is unreadable ({e}); starting a new one"),
                );
                Vec::new()
            }),
        };
        ThreatTracker {
            seen: pending.iter().cloned().collect(),
            committed: pending.clone(),
            pending,
            attempted: BTreeSet::new(),
            lookups_left: MAX_LOOKUPS_PER_RUN,
            failures_in_a_row: 0,
            cap_logged: false,
        }
    }

    /// Add a window's threat ids to the backlog and look up what is not
    /// stored yet, within this run's cap. Returns the records to commit with
    /// the window (together with `state_change`).
    pub fn lookup<H: Http, P: Platform>(
        &mut self,
        window_ids: impl IntoIterator<Item = String>,
        api: &mut TapClient<'_, H>,
        platform: &P,
        origin: Origin<'_>,
        now_ms: i64,
    ) -> Vec<Record> {
        for id in window_ids {
            if self.seen.insert(id.clone()) {
                self.pending.push(id);
            }
        }
        let fresh: Vec<String> = self
            .pending
            .iter()
            .filter(|id| !self.attempted.contains(*id))
            .cloned()
            .collect();
        let (stored, unstored) = partition_stored(fresh, platform);
        let mut done: BTreeSet<String> = stored.into_iter().collect();

        let mut records = Vec::new();
        for id in unstored {
            if self.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES {
                break;
            }
            if self.lookups_left == 0 {
                if !self.cap_logged {
                    self.cap_logged = true;
                    platform.log(
                        LogLevel::Info,
                        &format!("looked up {MAX_LOOKUPS_PER_RUN} threat summaries, the most per run; the rest wait in the backlog for the next run"),
                    );
                }
                break;
            }
            self.lookups_left -= 1;
            self.attempted.insert(id.clone());
            let summary = match api.threat_summary(&id) {
                Ok(ThreatLookup::Found(body)) => {
                    match serde_json::from_slice::<Box<RawValue>>(&body) {
                        Ok(summary) => Ok(Some(summary)),
                        Err(e) => Err(format!("the summary is not JSON ({e})")),
                    }
                }
                Ok(ThreatLookup::NotFound) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
            match summary {
                Ok(summary) => {
                    self.failures_in_a_row = 0;
                    records.push(record::threat_record(
                        origin,
                        &id,
                        summary.as_deref(),
                        now_ms,
                    ));
                    done.insert(id);
                }
                Err(why) => {
                    self.failures_in_a_row += 1;
                    platform.log(
                        LogLevel::Warn,
                        &format!("could not get the Threat API summary of threat {id}: {why}; retrying next run"),
                    );
                    if self.failures_in_a_row == MAX_CONSECUTIVE_FAILURES {
                        platform.log(
                            LogLevel::Warn,
                            &format!("{MAX_CONSECUTIVE_FAILURES} Threat API failures in a row: no more lookups this run"),
                        );
                    }
                }
            }
        }

        self.pending.retain(|id| !done.contains(id));
        if self.pending.len() > MAX_BACKLOG {
            let dropped = self.pending.len() - MAX_BACKLOG;
            self.pending.drain(..dropped);
            platform.log(
                LogLevel::Warn,
                &format!("the threat backlog is full: the {dropped} oldest threat ids are dropped without a summary"),
            );
        }
        records
    }

    /// The state change for the backlog, if it differs from what is committed.
    pub fn state_change(&self) -> Option<(String, Option<Vec<u8>>)> {
        if self.pending == self.committed {
            return None;
        }
        let value = (!self.pending.is_empty())
            .then(|| serde_json::to_vec(&self.pending).expect("a list of strings serializes"));
        Some((BACKLOG_KEY.to_string(), value))
    }

    /// Call after the state change was committed.
    pub fn committed(&mut self) {
        self.committed = self.pending.clone();
    }
}

/// Split ids into (already stored, not stored yet).
fn partition_stored<P: Platform>(ids: Vec<String>, platform: &P) -> (Vec<String>, Vec<String>) {
    let (mut stored, mut unstored) = (Vec::new(), Vec::new());
    for chunk in ids.chunks(CONTAINS_BATCH) {
        let record_ids: Vec<String> = chunk
            .iter()
            .map(|id| record::threat_record_id(id))
            .collect();
        let known = platform.contains(Index::Syslog, &record_ids);
        for (i, id) in chunk.iter().enumerate() {
            // A short answer from the host counts as "not stored": the
            // insert-mode commit drops a duplicate anyway.
            if known.get(i).copied().unwrap_or(false) {
                stored.push(id.clone());
            } else {
                unstored.push(id.clone());
            }
        }
    }
    (stored, unstored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{config, FakePlatform, FakeTap};
    use time::macros::datetime;

    fn ids(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|n| format!("t{n}")).collect()
    }

    fn backlog(tracker: &ThreatTracker) -> Vec<String> {
        match tracker.state_change() {
            Some((_, Some(v))) => serde_json::from_slice(&v).unwrap(),
            Some((_, None)) => Vec::new(),
            None => tracker.committed.clone(),
        }
    }

    #[test]
    fn ids_over_the_cap_stay_in_the_backlog_across_windows() {
        let now = datetime!(2024-10-11 14:00:00 UTC);
        let cfg = config(serde_json::json!({}));
        let mut tap = FakeTap::new(now);
        for n in 0..10 {
            tap.threats.insert(format!("t{n}"), "{}".into());
        }
        let platform = FakePlatform::new(now);
        let mut api = TapClient::new(&cfg, &mut tap, now);
        let mut tracker = ThreatTracker::load(&platform);
        tracker.lookups_left = 3;
        let origin = crate::record::Origin::from(&cfg);

        let first = tracker.lookup(ids(0..5), &mut api, &platform, origin, 0);
        assert_eq!(first.len(), 3);
        assert_eq!(backlog(&tracker), ids(3..5));
        tracker.committed();

        // A later window of the same run: the earlier deferrals are kept.
        let second = tracker.lookup(ids(4..8), &mut api, &platform, origin, 0);
        assert!(second.is_empty());
        assert_eq!(backlog(&tracker), ids(3..8));
        assert_eq!(api.requests, 3);
        assert!(platform.logged(LogLevel::Info, "the most per run"));
    }

    #[test]
    fn backlog_from_state_is_looked_up_first_and_cleared() {
        let now = datetime!(2024-10-11 14:00:00 UTC);
        let cfg = config(serde_json::json!({}));
        let mut tap = FakeTap::new(now);
        tap.threats.insert("old".into(), "{\"id\":\"old\"}".into());
        tap.threats.insert("new".into(), "{\"id\":\"new\"}".into());
        let mut platform = FakePlatform::new(now);
        platform
            .state
            .insert(BACKLOG_KEY.into(), b"[\"old\"]".to_vec());
        let mut api = TapClient::new(&cfg, &mut tap, now);
        let mut tracker = ThreatTracker::load(&platform);
        let origin = crate::record::Origin::from(&cfg);
        let records = tracker.lookup(vec!["new".to_string()], &mut api, &platform, origin, 0);
        let record_ids: Vec<_> = records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(record_ids, vec!["threat:old", "threat:new"]);
        assert_eq!(
            tracker.state_change(),
            Some((BACKLOG_KEY.to_string(), None))
        );
    }

    #[test]
    fn a_failed_id_is_tried_once_per_run() {
        let now = datetime!(2024-10-11 14:00:00 UTC);
        let cfg = config(serde_json::json!({}));
        let mut tap = FakeTap::new(now);
        tap.threat_status.insert("bad".into(), 500);
        tap.threats.insert("good".into(), "{}".into());
        let platform = FakePlatform::new(now);
        let mut api = TapClient::new(&cfg, &mut tap, now);
        let mut tracker = ThreatTracker::load(&platform);
        let origin = crate::record::Origin::from(&cfg);
        assert!(tracker
            .lookup(vec!["bad".to_string()], &mut api, &platform, origin, 0)
            .is_empty());
        let again = tracker.lookup(
            vec!["bad".to_string(), "good".to_string()],
            &mut api,
            &platform,
            origin,
            0,
        );
        assert_eq!(again.len(), 1);
        assert_eq!(api.requests, 2);
        assert_eq!(backlog(&tracker), vec!["bad".to_string()]);
    }
}
