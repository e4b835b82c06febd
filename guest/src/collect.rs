//! One collection cycle: from the stored checkpoint up to now.
//!
//! Lossless by construction: the checkpoint (state key `checkpoint`, the end
//! of the last fully committed window as decimal UNIX seconds) moves only in
//! the same `sink.commit` as the records of its window. Windows start a
//! look-back before the checkpoint to catch events the API files late; the
//! sink keeps the first record per id, so the overlap stores nothing twice.

use std::collections::{BTreeMap, VecDeque};

use time::{Duration, OffsetDateTime};

use crate::api::{ApiError, Rejection, TapClient};
use crate::config::Config;
use crate::parse::{self, EventType, Interpreted, Outcome};
use crate::platform::{Batch, ConnectorError, Http, LogLevel, Platform, Record};
use crate::record::{self, Origin};
use crate::threats::ThreatTracker;
use crate::windows::{self, api_time, Gap, PlanSettings, Window, HISTORY_MARGIN, MIN_WINDOW};

pub const CHECKPOINT_KEY: &str = "checkpoint";
/// Records per `sink.commit`. A bigger window is committed in several
/// batches; only the last carries the checkpoint, so a failure in between
/// leaves the checkpoint where it was and the next run re-collects (and the
/// sink drops the records already stored).
pub const MAX_RECORDS_PER_COMMIT: usize = 5000;
/// Body bytes per `sink.commit`, for the same reason.
pub const MAX_BYTES_PER_COMMIT: usize = 16 * 1024 * 1024;
/// Quarantined events logged one by one per window; the rest are counted.
const QUARANTINE_LOG_LINES: usize = 5;

#[derive(Debug, Default)]
struct Summary {
    windows: u64,
    events: u64,
    written: u64,
    duplicates: u64,
    quarantined: u64,
    threats: u64,
    gaps: u64,
    by_type: BTreeMap<&'static str, u64>,
    stopped_early: Option<String>,
}

/// Run one cycle and return its JSON summary.
pub fn collect<H: Http, P: Platform>(
    config: &Config,
    http: &mut H,
    platform: &mut P,
) -> Result<String, ConnectorError> {
    let now = platform.now();
    let threats = ThreatTracker::load(&*platform);
    let mut cycle = Cycle {
        config,
        origin: Origin::from(config),
        settings: PlanSettings::from(config),
        now,
        checkpoint: None,
        pending_gap: None,
        threats,
        summary: Summary::default(),
        api: TapClient::new(config, http, now),
        platform,
    };
    cycle.checkpoint = cycle.read_checkpoint();
    let result = cycle.run();
    let summary = cycle.summary_json();
    match result {
        Ok(()) => Ok(summary),
        Err(e) => {
            if cycle.summary.windows > 0 {
                cycle.log(
                    LogLevel::Info,
                    &format!("progress committed before the failure: {summary}"),
                );
            }
            Err(e)
        }
    }
}

struct Cycle<'c, 'h, H: Http, P: Platform> {
    config: &'c Config,
    origin: Origin<'c>,
    settings: PlanSettings,
    now: OffsetDateTime,
    /// The committed checkpoint.
    checkpoint: Option<OffsetDateTime>,
    /// A gap not yet recorded, with its reason.
    pending_gap: Option<(Gap, String)>,
    threats: ThreatTracker,
    summary: Summary,
    api: TapClient<'h, H>,
    platform: &'c mut P,
}

impl<H: Http, P: Platform> Cycle<'_, '_, H, P> {
    fn log(&self, level: LogLevel, message: &str) {
        self.platform.log(level, message);
    }

    fn read_checkpoint(&self) -> Option<OffsetDateTime> {
        let bytes = self.platform.state_get(CHECKPOINT_KEY)?;
        let parsed = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok());
        if parsed.is_none() {
            // Collect everything still available rather than guess; the sink
            // drops what is already stored.
            self.log(
                LogLevel::Warn,
                &format!(
                    "the stored checkpoint {:?} is not a UNIX time; collecting the last 7 days again",
                    String::from_utf8_lossy(&bytes)
                ),
            );
            return Some(windows::earliest_start(self.now));
        }
        parsed
    }

    fn run(&mut self) -> Result<(), ConnectorError> {
        let plan = windows::plan(self.now, self.checkpoint, &self.settings);
        if let Some(gap) = plan.gap {
            self.note_gap(
                gap,
                format!(
                    "the last checkpoint ({}) is older than the 7 days the TAP API keeps (the host did not run this connector for that long)",
                    api_time(gap.start)
                ),
            );
        }
        if plan.windows.is_empty() {
            self.log(
                LogLevel::Debug,
                &format!(
                    "less than {} s to collect since {}; waiting for the next run",
                    MIN_WINDOW.whole_seconds(),
                    api_time(plan.start)
                ),
            );
        }
        let mut queue: VecDeque<Window> = plan.windows.into();
        let mut shrunk = false;
        let mut reclamped = false;

        while let Some(mut window) = queue.pop_front() {
            let body = loop {
                crate::api::take_siem_request(&mut *self.platform, self.now)?;
                let error = match self.api.siem_all(&window) {
                    Ok(body) => break body,
                    Err(e) => e,
                };
                match error {
                    ApiError::Rejected {
                        kind: Rejection::StillCurrent,
                        ..
                    } if !shrunk => {
                        // The API's clock is ahead of ours. Later windows would
                        // be refused too: end the cycle with this one.
                        shrunk = true;
                        let step = self.settings.safety_margin.max(Duration::minutes(1));
                        let old_end = window.end;
                        window.end -= step;
                        if window.len() < MIN_WINDOW {
                            window.start = window.end - MIN_WINDOW;
                        }
                        queue.clear();
                        self.log(
                            LogLevel::Warn,
                            &format!(
                                "the TAP API says the interval ending {} is still current (its clock is ahead of this host's); retrying with end {}",
                                api_time(old_end),
                                api_time(window.end)
                            ),
                        );
                    }
                    ApiError::Rejected {
                        kind: Rejection::StillCurrent,
                        ..
                    } => {
                        self.log(
                            LogLevel::Warn,
                            &format!(
                                "the TAP API still says the interval {} is current; check this host's clock. Stopping until the next run",
                                window.interval_param()
                            ),
                        );
                        self.summary.stopped_early = Some("interval still current".into());
                        return Ok(());
                    }
                    ApiError::Rejected {
                        kind: Rejection::TooShort,
                        ..
                    } => {
                        // Not an error: the span grows until the next run.
                        self.log(
                            LogLevel::Info,
                            &format!(
                                "the TAP API says the interval {} is too short; the next run asks again",
                                window.interval_param()
                            ),
                        );
                        self.summary.stopped_early = Some("interval too short".into());
                        return Ok(());
                    }
                    ApiError::Rejected {
                        kind: Rejection::TooFarInPast,
                        error,
                    } if !reclamped => {
                        // The planner already keeps starts 15 min inside the
                        // 7 days, so the API's clock runs ahead of ours: back
                        // off once more by the same margin.
                        reclamped = true;
                        let new_start =
                            window.start.max(windows::earliest_start(self.now)) + HISTORY_MARGIN;
                        let end = queue.back().map_or(window.end, |w| w.end).max(window.end);
                        if end - new_start < MIN_WINDOW {
                            return Err(error);
                        }
                        let why = format!(
                            "the TAP API refused the start {} as too far into the past (its clock is ahead of this host's)",
                            api_time(window.start)
                        );
                        // Only what lies after the checkpoint was never
                        // collected; a first run has nothing to miss.
                        match self.checkpoint.map(|cp| cp.max(window.start)) {
                            Some(lost_from) if lost_from < new_start => self.note_gap(
                                Gap {
                                    start: lost_from,
                                    end: new_start,
                                },
                                why,
                            ),
                            _ => self.log(
                                LogLevel::Info,
                                &format!("{why}; starting at {} instead", api_time(new_start)),
                            ),
                        }
                        queue =
                            windows::split_range(new_start, end, self.settings.max_window).into();
                        match queue.pop_front() {
                            Some(w) => window = w,
                            None => return Ok(()),
                        }
                    }
                    ApiError::TooLarge if window.len() >= MIN_WINDOW * 2 => {
                        let middle = windows::truncate_to_second(window.start + window.len() / 2);
                        self.log(
                            LogLevel::Info,
                            &format!(
                                "the response for {} is larger than the connector reads at once; asking for it in two halves",
                                window.interval_param()
                            ),
                        );
                        queue.push_front(Window {
                            start: middle,
                            end: window.end,
                        });
                        window.end = middle;
                    }
                    other => {
                        return Err(other.into_connector_error(&format!(
                            "the window {}",
                            window.interval_param()
                        )))
                    }
                }
            };
            self.process_window(window, body.as_deref())?;
            let done = self.summary.windows;
            let total = done + queue.len() as u64;
            self.platform.progress(
                u32::try_from(done).unwrap_or(u32::MAX),
                u32::try_from(total).unwrap_or(u32::MAX),
                self.summary.events,
            );
        }
        Ok(())
    }

    /// Remember a gap for the next commit and tell the operator.
    fn note_gap(&mut self, gap: Gap, why: String) {
        let reason = format!(
            "{why}; events from {} to {} can no longer be collected",
            api_time(gap.start),
            api_time(gap.end)
        );
        self.log(LogLevel::Warn, &format!("collection gap: {reason}"));
        self.pending_gap = Some(match self.pending_gap.take() {
            None => (gap, reason),
            Some((old, old_reason)) => (
                Gap {
                    start: old.start.min(gap.start),
                    end: old.end.max(gap.end),
                },
                format!("{old_reason}; {reason}"),
            ),
        });
    }

    /// Parse one window's body and commit its records with the checkpoint.
    fn process_window(
        &mut self,
        window: Window,
        body: Option<&[u8]>,
    ) -> Result<(), ConnectorError> {
        let events: Vec<Interpreted<'_>> = match body {
            None => Vec::new(),
            Some(body) => parse::parse_siem_response(body)
                .map_err(|e| {
                    ConnectorError::Transient(format!(
                        "{e} (window {}); the checkpoint stays and the next run asks again",
                        window.interval_param()
                    ))
                })?
                .events
                .into_iter()
                .map(parse::interpret)
                .collect(),
        };

        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut quarantined = 0u64;
        for event in &events {
            *counts.entry(event.event_type.as_str()).or_default() += 1;
            if let Outcome::Quarantine { reason } = &event.outcome {
                quarantined += 1;
                if quarantined as usize <= QUARANTINE_LOG_LINES {
                    self.log(
                        LogLevel::Warn,
                        &format!(
                            "quarantined a {} event from {}: {reason}",
                            event.event_type.as_str(),
                            window.interval_param()
                        ),
                    );
                }
            }
        }
        if quarantined as usize > QUARANTINE_LOG_LINES {
            self.log(
                LogLevel::Warn,
                &format!(
                    "quarantined {quarantined} events from {} in all",
                    window.interval_param()
                ),
            );
        }

        let now_ms = parse::epoch_ms(self.now);
        let threat_records = if self.config.collect_threats {
            let ids: Vec<String> = events
                .iter()
                .flat_map(|e| e.threat_ids.iter().cloned())
                .collect();
            self.threats
                .lookup(ids, &mut self.api, &*self.platform, self.origin, now_ms)
        } else {
            Vec::new()
        };
        let threat_count = threat_records.len() as u64;

        // Event records first, in chunks; gap and threat records ride with
        // the checkpoint in the last batch.
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        let (mut written, mut duplicates) = (0u64, 0u64);
        let origin = self.origin;
        let collect_events = self.config.collect_events;
        let event_records = events
            .iter()
            .filter(|_| collect_events)
            .map(|e| record::for_event(origin, e));
        let gap_record = self
            .pending_gap
            .as_ref()
            .map(|(gap, reason)| record::gap_record(origin, gap, reason, now_ms));
        for rec in event_records.chain(gap_record).chain(threat_records) {
            if !batch.is_empty()
                && (batch.len() >= MAX_RECORDS_PER_COMMIT
                    || batch_bytes + rec.body.len() > MAX_BYTES_PER_COMMIT)
            {
                let (w, d) = self.commit(std::mem::take(&mut batch), Vec::new())?;
                written += w;
                duplicates += d;
                batch_bytes = 0;
            }
            batch_bytes += rec.body.len();
            batch.push(rec);
        }

        // Never move the checkpoint backwards: look-back windows end behind it.
        let checkpoint = self.checkpoint.map_or(window.end, |cp| cp.max(window.end));
        let mut state = vec![(
            CHECKPOINT_KEY.to_string(),
            Some(checkpoint.unix_timestamp().to_string().into_bytes()),
        )];
        state.extend(self.threats.state_change());
        let (w, d) = self.commit(batch, state)?;
        written += w;
        duplicates += d;

        self.checkpoint = Some(checkpoint);
        self.threats.committed();
        if self.pending_gap.take().is_some() {
            self.summary.gaps += 1;
        }
        let s = &mut self.summary;
        s.windows += 1;
        s.events += events.len() as u64;
        s.quarantined += quarantined;
        s.threats += threat_count;
        s.written += written;
        s.duplicates += duplicates;
        for (t, n) in &counts {
            *s.by_type.entry(t).or_default() += n;
        }
        self.log(
            LogLevel::Debug,
            &format!(
                "window {}: {} events ({quarantined} quarantined), {written} written, {duplicates} duplicates, {threat_count} threat summaries",
                window.interval_param(),
                events.len()
            ),
        );
        Ok(())
    }

    fn commit(
        &mut self,
        records: Vec<Record>,
        state: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<(u64, u64), ConnectorError> {
        let count = records.len();
        let outcome = self
            .platform
            .commit(Batch { records, state })
            .map_err(|e| {
                ConnectorError::Internal(format!(
                    "the data lake refused a batch of {count} records: {e}"
                ))
            })?;
        Ok((outcome.written.into(), outcome.duplicates.into()))
    }

    fn summary_json(&self) -> String {
        let s = &self.summary;
        let by_type: serde_json::Map<String, serde_json::Value> = EventType::ALL
            .iter()
            .map(|t| {
                let n = s.by_type.get(t.as_str()).copied().unwrap_or(0);
                (t.as_str().to_string(), n.into())
            })
            .collect();
        let mut summary = serde_json::json!({
            "windows": s.windows,
            "events": s.events,
            "written": s.written,
            "duplicates": s.duplicates,
            "quarantined": s.quarantined,
            "threats": s.threats,
            "gaps": s.gaps,
            "by_type": by_type,
            "checkpoint": self.checkpoint.map(api_time),
            "requests": self.api.requests,
        });
        if let Some(why) = &s.stopped_early {
            summary["stopped_early"] = why.as_str().into();
        }
        summary.to_string()
    }
}
