//! Threat API summaries for the threats the collected events name.
//!
//! Each threat is stored once, as Syslog record `threat:<id>`. Ids already
//! stored are skipped (`sink.contains`). Lookups that fail, or that exceed the
//! per-run cap, go to a small backlog kept in state and committed with the
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
    /// Ids still to look up, oldest first.
    backlog: Vec<String>,
    /// The backlog as committed, to write state only when it changed.
    committed_backlog: Vec<String>,
    /// Ids handled this run (stored, looked up, or deferred).
    seen: BTreeSet<String>,
    lookups_left: u32,
    failures_in_a_row: u32,
}

impl ThreatTracker {
    pub fn load<P: Platform>(platform: &P) -> Self {
        let backlog = match platform.state_get(BACKLOG_KEY) {
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
            committed_backlog: backlog.clone(),
            backlog,
            seen: BTreeSet::new(),
            lookups_left: MAX_LOOKUPS_PER_RUN,
            failures_in_a_row: 0,
        }
    }

    /// Look up the backlog and the given (window's) threat ids that are not
    /// stored yet. Returns the records to commit with the window.
    pub fn lookup<H: Http, P: Platform>(
        &mut self,
        window_ids: impl IntoIterator<Item = String>,
        api: &mut TapClient<'_, H>,
        platform: &P,
        origin: Origin<'_>,
        now_ms: i64,
    ) -> Vec<Record> {
        let mut candidates = Vec::new();
        for id in std::mem::take(&mut self.backlog)
            .into_iter()
            .chain(window_ids)
        {
            if self.seen.insert(id.clone()) {
                candidates.push(id);
            }
        }
        let unstored = self.unstored(candidates, platform);

        let mut records = Vec::new();
        let mut deferred = Vec::new();
        for id in unstored {
            if self.lookups_left == 0 || self.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES {
                deferred.push(id);
                continue;
            }
            self.lookups_left -= 1;
            match api.threat_summary(&id) {
                Ok(ThreatLookup::Found(body)) => {
                    match serde_json::from_slice::<Box<RawValue>>(&body) {
                        Ok(summary) => {
                            self.failures_in_a_row = 0;
                            records.push(record::threat_record(
                                origin,
                                &id,
                                Some(&summary),
                                now_ms,
                            ));
                        }
                        Err(e) => {
                            self.failures_in_a_row += 1;
                            platform.log(
                            LogLevel::Warn,
                            &format!("the Threat API's summary of threat {id} is not JSON ({e}); retrying next run"),
                        );
                            deferred.push(id);
                        }
                    }
                }
                Ok(ThreatLookup::NotFound) => {
                    self.failures_in_a_row = 0;
                    records.push(record::threat_record(origin, &id, None, now_ms));
                }
                Err(e) => {
                    self.failures_in_a_row += 1;
                    platform.log(
                        LogLevel::Warn,
                        &format!("could not get the Threat API summary of threat {id} ({e}); retrying next run"),
                    );
                    deferred.push(id);
                }
            }
        }
        if !deferred.is_empty() {
            platform.log(
                LogLevel::Info,
                &format!(
                    "{} threat summaries deferred to the next run (failures or the cap of {MAX_LOOKUPS_PER_RUN} lookups per run)",
                    deferred.len()
                ),
            );
        }
        self.backlog = deferred;
        if self.backlog.len() > MAX_BACKLOG {
            let dropped = self.backlog.len() - MAX_BACKLOG;
            self.backlog.drain(..dropped);
            platform.log(
                LogLevel::Warn,
                &format!(
                    "the threat backlog is full: {dropped} threat ids dropped without a summary"
                ),
            );
        }
        records
    }

    /// Keep the ids whose record is not stored yet.
    fn unstored<P: Platform>(&self, ids: Vec<String>, platform: &P) -> Vec<String> {
        let mut unstored = Vec::new();
        for chunk in ids.chunks(CONTAINS_BATCH) {
            let record_ids: Vec<String> = chunk
                .iter()
                .map(|id| record::threat_record_id(id))
                .collect();
            let stored = platform.contains(Index::Syslog, &record_ids);
            for (i, id) in chunk.iter().enumerate() {
                // A short answer from the host counts as "not stored": the
                // insert-mode commit drops a duplicate anyway.
                if !stored.get(i).copied().unwrap_or(false) {
                    unstored.push(id.clone());
                }
            }
        }
        unstored
    }

    /// The state change for the backlog, if it differs from what is committed.
    pub fn state_change(&self) -> Option<(String, Option<Vec<u8>>)> {
        if self.backlog == self.committed_backlog {
            return None;
        }
        let value = (!self.backlog.is_empty())
            .then(|| serde_json::to_vec(&self.backlog).expect("a list of strings serializes"));
        Some((BACKLOG_KEY.to_string(), value))
    }

    /// Call after the state change was committed.
    pub fn committed(&mut self) {
        self.committed_backlog = self.backlog.clone();
    }
}
