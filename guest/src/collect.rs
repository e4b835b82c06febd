//! One collection cycle: from the stored checkpoint up to now.
//!
//! Lossless by construction: the checkpoint (state key `checkpoint`, the end
//! of the last fully committed window as decimal UNIX seconds) moves only in
//! the same `sink.commit` as the last records of its window. Windows start a
//! look-back before the checkpoint to catch events the API files late; the
//! sink keeps the first record per id, so the overlap stores nothing twice.
//!
//! Memory stays bounded whatever a window holds: its body is streamed
//! (`scan`), and its records are committed in batches sized from the host's
//! limits as they come. Only the last batch of a window, committed once the
//! whole body was read and found complete, carries the checkpoint; a window
//! cut off half way leaves the checkpoint where it was (what was committed
//! of it is simply found again next time).
//!
//! Native alerts are counted as the batches commit and written with each
//! window's last batch (`alert_flush` says how that stays crash-safe).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::alert_flush::{AlertFlow, BatchEvent};
use crate::alerts::AlertInput;
use crate::api::{self, ApiError, Rejection, TapClient};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::parse::{self, EventType, Outcome, RawEvent};
use crate::platform::{Batch, ConnectorError, Http, Index, LogLevel, Platform, Record};
use crate::record::{self, Origin};
use crate::scan::{check_event, SiemScanner};
use crate::threats::ThreatTracker;
use crate::windows::{self, api_time, Gap, PlanSettings, Window, HISTORY_MARGIN, MIN_WINDOW};

pub const CHECKPOINT_KEY: &str = "checkpoint";
/// State key set (to `START-END`, UNIX seconds) with the first batch of a
/// window committed before its end, and cleared with its last: found at the
/// start of a run, it says the previous run was stopped inside that window
/// (by the sandbox's CPU, memory or time limit), so this run asks for
/// windows half as long.
pub const IN_PROGRESS_KEY: &str = "window_in_progress";
/// Attempts per window for transient failures (5xx, resets, timeouts, bodies
/// cut off or damaged), each taking a request from the budget.
pub const MAX_ATTEMPTS: u32 = 3;
/// Pauses before the second and third attempt.
pub const RETRY_PAUSES: [std::time::Duration; 2] = [
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(3),
];
/// Quarantined events logged one by one per window; the rest are counted.
const QUARANTINE_LOG_LINES: usize = 5;
/// Distinct threat ids gathered per window for the Threat API (the backlog
/// keeps at most `threats::MAX_BACKLOG` of them anyway).
const MAX_WINDOW_THREAT_IDS: usize = 5_000;
/// Unreadable events per window held for a second look before giving up.
const MAX_SUSPECTS: usize = 10_000;

#[derive(Debug, Default)]
struct Summary {
    windows: u64,
    events: u64,
    written: u64,
    duplicates: u64,
    quarantined: u64,
    threats: u64,
    gaps: u64,
    retries: u64,
    alerts_created: u64,
    alerts_updated: u64,
    filtered: u64,
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
    let backoff = Backoff::load(&*platform);
    if let Some(wait) = backoff.wait_left(now) {
        platform.log(
            LogLevel::Info,
            &format!(
                "the TAP API answered 429 (too many requests) {} time(s) in a row; no SIEM request before {} (in {wait} s)",
                backoff.strikes,
                OffsetDateTime::from_unix_timestamp(backoff.until)
                    .map(api_time)
                    .unwrap_or_default()
            ),
        );
        return Err(ConnectorError::RateLimited(wait));
    }
    let threats = ThreatTracker::load(&*platform);
    let mut cycle = Cycle {
        config,
        origin: Origin::from(config),
        settings: PlanSettings::from(config),
        now,
        checkpoint: None,
        pending_gap: None,
        threats,
        backoff,
        marked: None,
        summary: Summary::default(),
        alerts: config
            .alerts
            .enabled
            .then(|| AlertFlow::load(config, &*platform)),
        in_flight: None,
        api: TapClient::new(config, http, now),
        platform,
    };
    cycle.checkpoint = cycle.read_checkpoint();
    cycle.read_in_progress();
    // The last batch may still be in flight: its outcome is the run's too.
    let result = cycle.run();
    let settled = cycle.settle();
    let result = result.and(settled);
    if result.is_err() && cycle.marked.is_some() {
        // The run ends by itself, not stopped by a limit: no reason for the
        // next one to shrink its windows.
        let cleared = cycle.platform.commit(Batch {
            records: Vec::new(),
            actions: Vec::new(),
            state: vec![(IN_PROGRESS_KEY.to_string(), None)],
        });
        if cleared.is_ok() {
            cycle.marked = None;
        }
    }
    let summary = cycle.summary_json();
    match result {
        Ok(()) => Ok(summary),
        Err(e) => {
            if cycle.summary.windows > 0 || cycle.summary.written > 0 {
                cycle.log(
                    LogLevel::Info,
                    &format!("progress committed before the failure: {summary}"),
                );
            }
            Err(e)
        }
    }
}

/// Records waiting for a commit, within the host's batch limits.
struct Batcher {
    records: Vec<Record>,
    /// Beside each record, what the alerts take from it (event records).
    inputs: Vec<Option<AlertInput>>,
    bytes: usize,
    max_records: usize,
    max_bytes: usize,
}

impl Batcher {
    fn new(config: &Config) -> Self {
        Batcher {
            records: Vec::new(),
            inputs: Vec::new(),
            bytes: 0,
            // Each event may add an alert to its commit, and response
            // actions for its recipients: leave them room.
            max_records: if config.disable_user.is_some() {
                (config.limits.batch_records() / 4).max(1)
            } else if config.alerts.enabled {
                (config.limits.batch_records() / 2).max(1)
            } else {
                config.limits.batch_records()
            },
            max_bytes: if config.alerts.enabled {
                config.limits.batch_bytes() / 2
            } else {
                config.limits.batch_bytes()
            },
        }
    }

    /// What the host counts of a record.
    fn size(record: &Record) -> usize {
        record.body.len() + record.id.len()
    }

    /// Whether `record` must wait for the records held to be committed first.
    fn is_full_for(&self, record: &Record) -> bool {
        !self.records.is_empty()
            && (self.records.len() >= self.max_records
                || self.bytes + Self::size(record) > self.max_bytes)
    }

    fn push(&mut self, record: Record, input: Option<AlertInput>) {
        self.bytes += Self::size(&record);
        self.records.push(record);
        self.inputs.push(input);
    }

    fn take(&mut self) -> (Vec<Record>, Vec<Option<AlertInput>>) {
        self.bytes = 0;
        (
            std::mem::take(&mut self.records),
            std::mem::take(&mut self.inputs),
        )
    }
}

/// A window's body, read completely.
struct WindowData {
    /// Records not committed yet: they ride with the checkpoint.
    pending: Batcher,
    events: u64,
    quarantined: u64,
    by_type: BTreeMap<&'static str, u64>,
    /// Threat ids the events name, in the order first met.
    threat_ids: Vec<String>,
    /// Where the API says its answer ends.
    query_end: OffsetDateTime,
}

/// A batch handed to the host whose outcome is not yet taken in.
struct InFlight {
    records: usize,
    /// Of them, alerts (upserts, which are always "written").
    alert_records: u32,
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
    /// The committed 429 backoff (cleared with the next window after it).
    backoff: Backoff,
    /// The window committed as in progress (`IN_PROGRESS_KEY`), if any.
    marked: Option<Window>,
    summary: Summary,
    /// The run's native alerts (None when they are off).
    alerts: Option<AlertFlow>,
    /// The batch being written while the cycle goes on (`commit_begin`).
    in_flight: Option<InFlight>,
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

    /// A window the previous run was stopped inside: ask for shorter ones.
    fn read_in_progress(&mut self) {
        let Some(bytes) = self.platform.state_get(IN_PROGRESS_KEY) else {
            return;
        };
        let window = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.split_once('-'))
            .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?)))
            .and_then(|(a, b)| {
                Some(Window {
                    start: OffsetDateTime::from_unix_timestamp(a).ok()?,
                    end: OffsetDateTime::from_unix_timestamp(b).ok()?,
                })
            });
        self.marked = window;
        let Some(window) = window else { return };
        let shorter = Duration::seconds(window.len().whole_seconds() / 2).max(MIN_WINDOW * 2);
        if shorter < self.settings.max_window {
            self.settings.max_window = shorter;
            self.log(
                LogLevel::Warn,
                &format!(
                    "the previous run was stopped inside the window {} after committing part of it (a sandbox limit: CPU, memory or run time?); this run asks for windows of at most {} s",
                    window.interval_param(),
                    self.settings.max_window.whole_seconds()
                ),
            );
        }
    }

    fn run(&mut self) -> Result<(), ConnectorError> {
        let plan = windows::plan(self.now, self.checkpoint, &self.settings);
        if let Some(gap) = plan.gap {
            let checkpoint = self.checkpoint.map(api_time).unwrap_or_default();
            self.note_gap(
                gap,
                format!(
                    "the last checkpoint ({checkpoint}) is too old: the TAP API keeps 7 days, and this run should have read again from {} (a look-back of {} min before the checkpoint, for events the API indexes late)",
                    api_time(gap.start),
                    self.settings.lookback.whole_minutes()
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
            let mut failures = 0u32;
            // SHA-256 of every unreadable event met in this window's attempts.
            let mut damaged_seen: BTreeSet<[u8; 32]> = BTreeSet::new();
            let data = loop {
                api::take_siem_request(&mut *self.platform, self.config.siem_requests_per_day)?;
                let error = match self.fetch_window(&window, &mut damaged_seen) {
                    Ok(data) => break data,
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
                    ApiError::RateLimited { retry_after } => {
                        return Err(self.back_off(retry_after));
                    }
                    ApiError::Retryable(error) => {
                        failures += 1;
                        let why = match error {
                            ConnectorError::Transient(m) => m,
                            other => other.to_string(),
                        };
                        if failures >= MAX_ATTEMPTS {
                            return Err(ConnectorError::Transient(format!(
                                "{why} (window {}, {MAX_ATTEMPTS} attempts); the checkpoint stays and the next run asks again",
                                window.interval_param()
                            )));
                        }
                        let pause =
                            RETRY_PAUSES[(failures as usize - 1).min(RETRY_PAUSES.len() - 1)];
                        self.log(
                            LogLevel::Warn,
                            &format!(
                                "{why} (window {}); asking again in {} s",
                                window.interval_param(),
                                pause.as_secs()
                            ),
                        );
                        self.summary.retries += 1;
                        self.platform.sleep(pause);
                    }
                    ApiError::Rejected { error, .. } | ApiError::Failed(error) => {
                        return Err(error)
                    }
                }
            };
            let query_end = data.query_end;
            self.finish_window(window, data)?;
            if query_end < window.end {
                // The API answered for less than was asked: the next run
                // continues from where its answer ended.
                self.log(
                    LogLevel::Warn,
                    &format!(
                        "the TAP API answered the interval {} only up to {} (queryEndTime); the next run continues from there",
                        window.interval_param(),
                        api_time(query_end)
                    ),
                );
                self.summary.stopped_early = Some("answer ended early".into());
                queue.clear();
            }
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

    /// After a 429: store the next backoff at once and say how long to wait.
    fn back_off(&mut self, retry_after: Option<u32>) -> ConnectorError {
        let now = self.platform.now();
        let (next, wait) = self.backoff.strike(now, retry_after, &self.config.name);
        let committed = self.platform.commit(Batch {
            records: Vec::new(),
            actions: Vec::new(),
            state: vec![next.state_change()],
        });
        if let Err(e) = committed {
            self.log(
                LogLevel::Warn,
                &format!("could not store the rate-limit backoff: {e}"),
            );
        } else {
            self.backoff = next;
        }
        self.log(
            LogLevel::Warn,
            &format!(
                "the TAP API answered 429 (too many requests; {} in a row): no SIEM request before {} (in {wait} s, {}); the checkpoint stays",
                next.strikes,
                OffsetDateTime::from_unix_timestamp(next.until)
                    .map(api_time)
                    .unwrap_or_default(),
                if retry_after.is_some() {
                    "as its Retry-After says"
                } else {
                    "exponential backoff"
                }
            ),
        );
        ConnectorError::RateLimited(wait)
    }

    /// Remember a gap for the next commit and tell the operator.
    fn note_gap(&mut self, gap: Gap, why: String) {
        let reason = format!(
            "{why}; events filed from {} to {} that were not collected before can no longer be",
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

    /// Add a record to `batch`, committing what it holds first when full.
    /// That commit carries no checkpoint (it waits for the window's end),
    /// only, the first time, the window as in progress.
    fn push(
        &mut self,
        window: &Window,
        batch: &mut Batcher,
        record: Record,
        input: Option<AlertInput>,
    ) -> Result<(), ConnectorError> {
        if batch.is_full_for(&record) {
            let (records, inputs) = batch.take();
            let mut state = Vec::new();
            if self.marked != Some(*window) {
                state.push((
                    IN_PROGRESS_KEY.to_string(),
                    Some(
                        format!(
                            "{}-{}",
                            window.start.unix_timestamp(),
                            window.end.unix_timestamp()
                        )
                        .into_bytes(),
                    ),
                ));
            }
            self.commit(records, inputs, state, window, None)?;
            self.marked = Some(*window);
        }
        batch.push(record, input);
        Ok(())
    }

    /// Ask for one window and read its body as it arrives, committing full
    /// batches on the way. Returns what the last commit needs.
    fn fetch_window(
        &mut self,
        window: &Window,
        damaged_seen: &mut BTreeSet<[u8; 32]>,
    ) -> Result<WindowData, ApiError> {
        let what = window.interval_param();
        let transient = |m: String| ApiError::Retryable(ConnectorError::Transient(m));
        let mut data = WindowData {
            pending: Batcher::new(self.config),
            events: 0,
            quarantined: 0,
            by_type: BTreeMap::new(),
            threat_ids: Vec::new(),
            query_end: window.end,
        };
        let Some(response) = self.api.siem_all(window)? else {
            return Ok(data);
        };
        let origin = self.origin;
        let collect_events = self.config.collect_events;
        let collect_threats = self.config.collect_threats;
        let mut scanner =
            SiemScanner::new(response.into_body(), self.config.limits.max_event_bytes());
        let mut suspects = 0usize;
        let mut threat_ids_seen: BTreeSet<String> = BTreeSet::new();
        let mut threat_ids_capped = false;
        loop {
            let event = match scanner.next_event() {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(e) => return Err(transient(format!("{e} (window {what})"))),
            };
            let event_type = event.event_type;
            data.events += 1;
            *data.by_type.entry(event_type.as_str()).or_default() += 1;

            // What to do with it: a record, or (for an unreadable event) a
            // quarantine record once it is known not to be damage in transit.
            let mut quarantine_reason = None;
            let record = if let Some(oversized) = event.oversized {
                let reason = format!(
                    "the event is {} bytes, more than the {} bytes one record may hold (limits.memory_mib and limits.max_batch_mib); its first bytes, size and SHA-256 are kept",
                    oversized.len,
                    self.config.limits.max_event_bytes()
                );
                let sha = hex::encode(oversized.sha256);
                let r = record::damaged_record(
                    origin,
                    event_type,
                    event.bytes,
                    oversized.len,
                    &sha,
                    &reason,
                );
                quarantine_reason = Some(reason);
                Some((r, None))
            } else {
                match check_event(event.bytes) {
                    Ok(raw) => {
                        let interpreted = parse::interpret(RawEvent { event_type, raw });
                        for id in interpreted.threat_ids.iter().filter(|_| collect_threats) {
                            if threat_ids_seen.contains(id) {
                                continue;
                            }
                            if threat_ids_seen.len() < MAX_WINDOW_THREAT_IDS {
                                threat_ids_seen.insert(id.clone());
                                data.threat_ids.push(id.clone());
                            } else {
                                threat_ids_capped = true;
                            }
                        }
                        if let Outcome::Quarantine { reason } = &interpreted.outcome {
                            quarantine_reason = Some(reason.clone());
                        }
                        collect_events.then(|| record::for_event(origin, &interpreted))
                    }
                    Err(reason) => {
                        let sha: [u8; 32] = Sha256::digest(event.bytes).into();
                        let id = hex::encode(sha);
                        // Believed when the API sent the same bytes before
                        // (in this run or one that quarantined them).
                        let confirmed = damaged_seen.contains(&sha)
                            || self
                                .platform
                                .contains(Index::Quarantine, std::slice::from_ref(&id))
                                .first()
                                .copied()
                                .unwrap_or(false);
                        damaged_seen.insert(sha);
                        if confirmed {
                            let r = record::damaged_record(
                                origin,
                                event_type,
                                event.bytes,
                                event.bytes.len() as u64,
                                &id,
                                &reason,
                            );
                            quarantine_reason = Some(reason);
                            Some((r, None))
                        } else {
                            suspects += 1;
                            if suspects > MAX_SUSPECTS {
                                return Err(transient(format!(
                                    "more than {MAX_SUSPECTS} events of window {what} are not JSON"
                                )));
                            }
                            None
                        }
                    }
                }
            };
            if let Some(reason) = quarantine_reason {
                data.quarantined += 1;
                if data.quarantined as usize <= QUARANTINE_LOG_LINES {
                    self.log(
                        LogLevel::Warn,
                        &format!(
                            "quarantined a {} event from {what}: {reason}",
                            event_type.as_str()
                        ),
                    );
                }
            }
            if let Some((record, input)) = record.filter(|_| collect_events) {
                self.push(window, &mut data.pending, record, input)
                    .map_err(ApiError::Failed)?;
            }
        }
        if suspects > 0 {
            return Err(transient(format!(
                "{suspects} event(s) in window {what} are not JSON; asking again to tell damage on the way from events the API sends that way (those are quarantined when they come back the same)"
            )));
        }
        if scanner.query_end_time().is_none() && scanner.arrays().is_empty() {
            return Err(transient(format!(
                "the SIEM response for {what} has none of `queryEndTime`, `messagesDelivered`, `messagesBlocked`, `clicksPermitted`, `clicksBlocked`"
            )));
        }
        match scanner.query_end_time().map(|t| (t, parse::parse_event_time(t))) {
            Some((_, Some(end))) => data.query_end = end.min(window.end),
            Some((text, None)) => self.log(
                LogLevel::Warn,
                &format!("the SIEM response for {what} has an unreadable queryEndTime {text:?}; taking the window's end"),
            ),
            None => self.log(
                LogLevel::Warn,
                &format!("the SIEM response for {what} has no queryEndTime; taking the window's end"),
            ),
        }
        if threat_ids_capped {
            self.log(
                LogLevel::Warn,
                &format!("window {what} names more than {MAX_WINDOW_THREAT_IDS} threats; only the first are looked up"),
            );
        }
        Ok(data)
    }

    /// Commit the rest of a window with its checkpoint, after its threat
    /// summaries were looked up.
    fn finish_window(&mut self, window: Window, data: WindowData) -> Result<(), ConnectorError> {
        let WindowData {
            mut pending,
            events,
            quarantined,
            by_type,
            threat_ids,
            query_end,
        } = data;
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
            self.threats.lookup(
                threat_ids,
                &mut self.api,
                &*self.platform,
                self.origin,
                now_ms,
            )
        } else {
            Vec::new()
        };
        let threat_count = threat_records.len() as u64;
        let gap_record = self
            .pending_gap
            .as_ref()
            .map(|(gap, reason)| record::gap_record(self.origin, gap, reason, now_ms));
        for rec in gap_record.into_iter().chain(threat_records) {
            self.push(&window, &mut pending, rec, None)?;
        }

        // Never move the checkpoint backwards: look-back windows end behind it.
        let end = query_end.min(window.end);
        let checkpoint = self.checkpoint.map_or(end, |cp| cp.max(end));
        let mut state = vec![(
            CHECKPOINT_KEY.to_string(),
            Some(checkpoint.unix_timestamp().to_string().into_bytes()),
        )];
        state.extend(self.threats.state_change());
        let clears_backoff = self.backoff != Backoff::default();
        if clears_backoff {
            state.push(Backoff::default().state_change());
        }
        // Cleared once the checkpoint is past the window marked in progress
        // (until then, a run stopped again halves again).
        let clears_mark = self.marked.is_some_and(|w| checkpoint >= w.end);
        if clears_mark {
            state.push((IN_PROGRESS_KEY.to_string(), None));
        }
        let (records, inputs) = pending.take();
        self.commit(records, inputs, state, &window, Some(end.unix_timestamp()))?;
        if clears_mark {
            self.marked = None;
        }

        self.checkpoint = Some(checkpoint);
        self.threats.committed();
        if clears_backoff {
            self.backoff = Backoff::default();
        }
        if self.pending_gap.take().is_some() {
            self.summary.gaps += 1;
        }
        let s = &mut self.summary;
        s.windows += 1;
        s.events += events;
        s.quarantined += quarantined;
        s.threats += threat_count;
        for (t, n) in &by_type {
            *s.by_type.entry(t).or_default() += n;
        }
        self.log(
            LogLevel::Debug,
            &format!(
                "window {}: {events} events ({quarantined} quarantined), {threat_count} threat summaries; {} written, {} duplicates so far this run",
                window.interval_param(),
                self.summary.written,
                self.summary.duplicates
            ),
        );
        Ok(())
    }

    /// Commits a batch of `window`: its records and state, and its events
    /// counted into the alerts. With `done_to` (the window's last batch: the
    /// time up to which the window's answer is complete, UNIX seconds) or
    /// when the alerts outgrow their share, the changed
    /// alerts and their response actions are flushed with it, in the same
    /// commit if both fit the host's limits, else in a second one that also
    /// carries the batch's state; a batch that does not flush lists its
    /// counted events as pending (`alert_flush`). A failed commit ends the
    /// run.
    fn commit(
        &mut self,
        mut records: Vec<Record>,
        inputs: Vec<Option<AlertInput>>,
        mut state: Vec<(String, Option<Vec<u8>>)>,
        window: &Window,
        done_to: Option<i64>,
    ) -> Result<(), ConnectorError> {
        let Some(flow) = &mut self.alerts else {
            return self.commit_batch(Batch {
                records,
                actions: Vec::new(),
                state,
            });
        };
        let events: Vec<BatchEvent<'_>> = records
            .iter()
            .zip(&inputs)
            .filter_map(|(record, input)| {
                Some(BatchEvent {
                    record,
                    input: input.as_ref()?,
                })
            })
            .collect();
        let (counted, pending) = flow.count(&*self.platform, &events, self.origin);
        self.summary.filtered += counted.filtered;
        let bounds = (window.start.unix_timestamp(), window.end.unix_timestamp());
        if done_to.is_none() && !flow.must_flush() {
            state.extend(flow.pend(&pending, bounds));
            return self.commit_batch(Batch {
                records,
                actions: Vec::new(),
                state,
            });
        }
        // Listed first, so the flush deletes this list with the others.
        let list = flow.pend(&pending, bounds);
        let out = flow.flush(self.origin, parse::epoch_ms(self.now), done_to);
        self.summary.alerts_created += out.created;
        self.summary.alerts_updated += out.updated;
        let limits = &self.config.limits;
        let size = |r: &[Record]| r.iter().map(|r| r.body.len() + r.id.len()).sum::<usize>();
        let fits = records.len() + out.records.len() + out.actions.len()
            <= limits.max_batch_records
            && size(&records) + size(&out.records) <= limits.max_commit_bytes();
        let mut flush = Batch {
            records: out.records,
            actions: out.actions,
            state: out.state,
        };
        if fits {
            records.append(&mut flush.records);
            state.append(&mut flush.state);
            return self.commit_batch(Batch {
                records,
                actions: flush.actions,
                state,
            });
        }
        self.commit_batch(Batch {
            records,
            actions: Vec::new(),
            state: list.into_iter().collect(),
        })?;
        flush.state.append(&mut state);
        self.commit_batch(flush)
    }

    /// Hands a batch to the host and goes on while it is written (the
    /// parsing of the next batch overlaps the write of this one). Its outcome
    /// is taken in before the next batch is handed over, so batches commit in
    /// order and a failed one stops the cycle before anything later is
    /// committed; reads (`contains`, `state_get`) always include it.
    fn commit_batch(&mut self, batch: Batch) -> Result<(), ConnectorError> {
        self.settle()?;
        let records = batch.records.len();
        let alert_records = batch
            .records
            .iter()
            .filter(|r| r.index == Index::Alerts)
            .count() as u32;
        if let Err(e) = self.platform.commit_begin(batch) {
            return Err(self.refused(records, e));
        }
        self.in_flight = Some(InFlight {
            records,
            alert_records,
        });
        Ok(())
    }

    /// Takes in the outcome of the batch in flight, if any.
    fn settle(&mut self) -> Result<(), ConnectorError> {
        let Some(batch) = self.in_flight.take() else {
            return Ok(());
        };
        match self.platform.commit_wait() {
            Some(Ok(outcome)) => {
                let written = outcome.written.saturating_sub(batch.alert_records);
                self.summary.written += u64::from(written);
                self.summary.duplicates += u64::from(outcome.duplicates);
                Ok(())
            }
            Some(Err(e)) => Err(self.refused(batch.records, e)),
            None => Err(ConnectorError::Internal(
                "the host has no outcome for the batch in flight".into(),
            )),
        }
    }

    /// A batch the host did not store: nothing of this run's alerts beyond
    /// what is committed can be trusted, and the cycle ends.
    fn refused(&mut self, records: usize, e: String) -> ConnectorError {
        if let Some(flow) = &mut self.alerts {
            flow.forget();
        }
        ConnectorError::Internal(format!(
            "the data lake refused a batch of {records} records: {e}"
        ))
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
            "retries": s.retries,
            "alerts_created": s.alerts_created,
            "alerts_updated": s.alerts_updated,
            "filtered": s.filtered,
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
