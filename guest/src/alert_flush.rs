//! When native alerts are committed, and why a crash can neither lose an
//! event from them nor count one twice.
//!
//! An alert is rewritten whole whenever it changes. Written with every batch
//! of the events it counts, a busy sender's alert would be rewritten once per
//! batch, hundreds of times in one large window. So the alerts a run changes
//! stay in memory ([`AlertFlow`]) and are committed in a *flush*: with the
//! last batch of each window (the one that moves the checkpoint), or earlier
//! when what they hold outgrows their share of the batch and memory limits.
//!
//! Between flushes, each batch of event records also commits the ids of its
//! events that were counted in memory only, as a *pending* list (state keys
//! `alert_pending:0`, `:1`, ...: the window's bounds, then one record id per
//! line; the window is the one being collected, never yet complete). A
//! flush commits the changed alerts, their slots, the response
//! actions they trigger, and deletes the pending lists, in one transaction.
//! So at every commit the stored alerts count exactly the stored events not
//! listed as pending.
//!
//! After a crash (or a run stopped by a limit) the next run reads the
//! pending lists. The window they belong to is fetched again, since the
//! checkpoint never passed it (a run starts at the checkpoint less the
//! look-back, which covers a look-back window the stopped run was in); its
//! events are already stored, but those listed as pending are counted now.
//! An id is dropped from the lists once counted and flushed, or once this
//! run has completed a window reaching past the end of its own: the whole
//! span was fetched again by then, and an event the API no longer returns
//! cannot be counted.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::alerts::{Alert, AlertBook, AlertChange, AlertConfig, AlertInput, ObservedEvent};
use crate::config::Config;
use crate::platform::{Action, Index, Platform, Record, WriteMode};
use crate::record::Origin;
use crate::response::DisableUserPolicy;

/// Prefix of the state keys holding the open native alerts, one key per
/// slot (alert type, tenant, sender; hashed). Only the slots a run touches
/// are read and written, so the state stays small however many senders a
/// tenant sees.
pub const ALERT_SLOT_PREFIX: &str = "alert_slot:";
/// Prefix of the pending lists (see the module docs), numbered from 0.
pub const PENDING_PREFIX: &str = "alert_pending:";
/// Record ids per pending list written by a flush (each well under the
/// host's 1 MiB state value limit).
const PENDING_IDS_PER_KEY: usize = 8_000;

/// The state key of an alert slot (alert type, tenant, sender).
pub fn alert_slot_key(slot: &str) -> String {
    format!(
        "{ALERT_SLOT_PREFIX}{}",
        hex::encode(&Sha256::digest(slot.as_bytes())[..16])
    )
}

fn pending_key(n: usize) -> String {
    format!("{PENDING_PREFIX}{n}")
}

/// One event record of a batch, with what its alert needs.
pub struct BatchEvent<'a> {
    pub record: &'a Record,
    pub input: &'a AlertInput,
}

/// What counting a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// Events counted into alerts.
    pub events: u64,
    /// Events the operator's log filters drop (never counted).
    pub filtered: u64,
}

/// What a flush adds to its commit.
#[derive(Debug, Default)]
pub struct FlushOutput {
    pub records: Vec<Record>,
    pub state: Vec<(String, Option<Vec<u8>>)>,
    pub actions: Vec<Action>,
    /// Alerts first written by this flush, and alerts written again.
    pub created: u64,
    pub updated: u64,
}

/// The run's native alerts between flushes.
pub struct AlertFlow {
    cfg: AlertConfig,
    policy: Option<DisableUserPolicy>,
    /// The operator's log filters (how many): only with some are bodies
    /// sent to the host to ask.
    log_filters: u64,
    /// Every slot touched since the book was last emptied.
    book: AlertBook,
    loaded: BTreeSet<String>,
    /// Changed since the last flush: slots, kept alerts (by id, with
    /// whether they are new), and sender-less alerts (never kept: only their
    /// body).
    dirty_slots: BTreeSet<String>,
    dirty_alerts: BTreeMap<String, bool>,
    lone: Vec<(String, Value)>,
    actions: Vec<Action>,
    action_ids: BTreeSet<String>,
    /// Estimated bytes of what the next flush writes, and of the book.
    dirty_bytes: usize,
    book_bytes: usize,
    max_bytes: usize,
    max_records: usize,
    /// Pending lists in state: how many keys (0..keys).
    pending_keys: usize,
    /// Events an earlier run stored without counting: id -> end of their
    /// window (UNIX seconds).
    recovered: HashMap<String, i64>,
}

impl AlertFlow {
    /// The flow of a run, with the pending lists an earlier run left.
    pub fn load<P: Platform>(config: &Config, platform: &P) -> AlertFlow {
        let mut recovered = HashMap::new();
        let mut pending_keys = 0;
        while let Some(bytes) = platform.state_get(&pending_key(pending_keys)) {
            pending_keys += 1;
            let text = String::from_utf8_lossy(&bytes);
            let mut lines = text.lines();
            let end = lines
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok())
                .unwrap_or(i64::MAX);
            for id in lines.filter(|l| !l.is_empty()) {
                recovered.insert(id.to_string(), end);
            }
        }
        let limits = &config.limits;
        AlertFlow {
            cfg: AlertConfig {
                dedup_window_ms: config.alerts.dedup_window_ms,
                merge_without_sender: config.alerts.merge_without_sender,
            },
            policy: config.disable_user.clone(),
            log_filters: config.log_filters,
            book: AlertBook::new(),
            loaded: BTreeSet::new(),
            dirty_slots: BTreeSet::new(),
            dirty_alerts: BTreeMap::new(),
            lone: Vec::new(),
            actions: Vec::new(),
            action_ids: BTreeSet::new(),
            dirty_bytes: 0,
            book_bytes: 0,
            // A flush rides with a batch of records when both fit in one
            // commit, or follows it in its own.
            max_bytes: limits.batch_bytes(),
            max_records: (limits.batch_records() / 2).max(1),
            pending_keys,
            recovered,
        }
    }

    /// Events stored by an earlier run and not yet counted.
    pub fn recovered(&self) -> usize {
        self.recovered.len()
    }

    /// Counts a batch's event records into the alerts, in memory: the ones
    /// not stored yet, and the stored ones an earlier run left pending.
    /// Returns what was counted and the ids the batch's commit lists as
    /// pending if it does not flush.
    pub fn count<P: Platform>(
        &mut self,
        platform: &P,
        events: &[BatchEvent<'_>],
        origin: Origin<'_>,
    ) -> (Counted, Vec<String>) {
        let mut counted = Counted::default();
        let mut pending = Vec::new();
        if events.is_empty() {
            return (counted, pending);
        }
        let ids: Vec<String> = events.iter().map(|e| e.record.id.clone()).collect();
        let known = platform.contains(Index::Syslog, &ids);
        let dropped = if self.log_filters > 0 {
            let bodies: Vec<String> = events.iter().map(|e| e.record.body.clone()).collect();
            platform.dropped_by_filters(&bodies)
        } else {
            vec![false; events.len()]
        };
        let mut seen = BTreeSet::new();
        for (k, event) in events.iter().enumerate() {
            if dropped.get(k).copied().unwrap_or(false) {
                counted.filtered += 1;
                continue;
            }
            let id = &ids[k];
            let stored = known.get(k).copied().unwrap_or(false);
            if (stored && self.recovered.remove(id).is_none()) || !seen.insert(id.as_str()) {
                continue;
            }
            self.observe(platform, id, event.input, origin.tenant);
            counted.events += 1;
            pending.push(id.clone());
        }
        (counted, pending)
    }

    fn observe<P: Platform>(
        &mut self,
        platform: &P,
        record_id: &str,
        input: &AlertInput,
        tenant: &str,
    ) {
        let observed = ObservedEvent {
            record_id,
            event_type: input.event_type,
            time_ms: input.time_ms,
            facts: input.facts.clone(),
            tenant,
        };
        let slot = AlertBook::slot_of(&observed, &self.cfg);
        if let Some(slot) = &slot {
            if self.loaded.insert(slot.clone()) {
                let stored: Vec<Alert> = platform
                    .state_get(&alert_slot_key(slot))
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                    .unwrap_or_default();
                self.book_bytes += stored.iter().map(Alert::approx_bytes).sum::<usize>();
                self.book.restore_slot(slot.clone(), stored);
            }
        }
        let before = self
            .book
            .slot(slot.as_deref().unwrap_or_default())
            .iter()
            .map(Alert::approx_bytes)
            .sum::<usize>();
        let change = self.book.observe_deferred(&observed, &self.cfg);
        if let (Some(policy), false) = (
            &self.policy,
            matches!(change, AlertChange::Unchanged { .. }),
        ) {
            for action in policy.actions(change.id(), input.event_type, &input.facts.recipients) {
                if self.action_ids.insert(action.id.clone()) {
                    self.dirty_bytes += action.params.len() + action.reason.len() + 200;
                    self.actions.push(action);
                }
            }
        }
        match change {
            AlertChange::Unchanged { .. } => return,
            AlertChange::Created { id, body } if slot.is_none() => {
                // A sender-less alert: its own event only, never kept.
                self.dirty_bytes += body.to_string().len();
                self.lone.push((id, body));
                return;
            }
            AlertChange::Created { id, .. } => {
                self.dirty_alerts.insert(id, true);
            }
            AlertChange::Updated { id, .. } => {
                self.dirty_alerts.entry(id).or_insert(false);
            }
        }
        let slot = slot.expect("kept alerts have a slot");
        let after = self
            .book
            .slot(&slot)
            .iter()
            .map(Alert::approx_bytes)
            .sum::<usize>();
        // A slot is written as its state and each changed alert as a body.
        let grown = after.saturating_sub(before);
        self.book_bytes += grown;
        self.dirty_bytes += if self.dirty_slots.insert(slot) {
            2 * after
        } else {
            2 * grown
        };
    }

    /// Whether what the alerts hold must be committed now, before it
    /// outgrows its share of a commit or of memory.
    pub fn must_flush(&self) -> bool {
        self.dirty_bytes > self.max_bytes
            || self.dirty_alerts.len() + self.lone.len() + self.actions.len() > self.max_records
            || self.book_bytes > 2 * self.max_bytes
    }

    /// Whether a flush would write anything.
    pub fn is_dirty(&self) -> bool {
        !(self.dirty_slots.is_empty() && self.lone.is_empty() && self.actions.is_empty())
            || self.pending_keys > 0
    }

    /// The state change listing `ids` (counted in memory, not flushed) as
    /// pending, for a commit of `window` (UNIX seconds) that does not flush.
    pub fn pend(
        &mut self,
        ids: &[String],
        window: (i64, i64),
    ) -> Option<(String, Option<Vec<u8>>)> {
        if ids.is_empty() {
            return None;
        }
        let mut text = format!("{} {}\n", window.0, window.1);
        for id in ids {
            text.push_str(id);
            text.push('\n');
        }
        let key = pending_key(self.pending_keys);
        self.pending_keys += 1;
        Some((key, Some(text.into_bytes())))
    }

    /// Everything a flush commits: the changed alerts' bodies, their slots'
    /// state, the response actions, and the pending lists rewritten to
    /// what is still uncounted. `done_to` (UNIX seconds): the flush ends a
    /// window of this run whose answer is complete up to then; recovered ids
    /// of windows ending no later were fetched again and are dropped. (Not
    /// the checkpoint: a look-back window ends before it.)
    pub fn flush(&mut self, origin: Origin<'_>, now_ms: i64, done_to: Option<i64>) -> FlushOutput {
        let mut out = FlushOutput::default();
        for (id, is_new) in std::mem::take(&mut self.dirty_alerts) {
            if let Some(alert) = self.book.alert(&id) {
                out.records.push(alert_record(origin, id, alert.to_json()));
                if is_new {
                    out.created += 1;
                } else {
                    out.updated += 1;
                }
            }
        }
        for (id, body) in std::mem::take(&mut self.lone) {
            out.records.push(alert_record(origin, id, body));
            out.created += 1;
        }
        let dropped = self.book.prune(now_ms);
        if dropped > 0 {
            // Pruned slots must be written as they are now; untouched ones
            // may keep their old alerts in state until they are next written.
            self.book_bytes = self.book.alerts().map(Alert::approx_bytes).sum();
        }
        for slot in std::mem::take(&mut self.dirty_slots) {
            let alerts = self.book.slot(&slot);
            let value =
                (!alerts.is_empty()).then(|| serde_json::to_vec(alerts).expect("alerts serialise"));
            out.state.push((alert_slot_key(&slot), value));
        }
        out.actions = std::mem::take(&mut self.actions);
        self.action_ids.clear();
        if let Some(done) = done_to {
            self.recovered.retain(|_, end| *end > done);
        }
        // The pending lists: only what earlier runs left uncounted remains,
        // grouped by the end of its window.
        let mut by_end: BTreeMap<i64, Vec<&String>> = BTreeMap::new();
        for (id, end) in &self.recovered {
            by_end.entry(*end).or_default().push(id);
        }
        let mut lists: Vec<Vec<u8>> = Vec::new();
        for (end, mut ids) in by_end {
            ids.sort();
            for chunk in ids.chunks(PENDING_IDS_PER_KEY) {
                let mut text = format!("0 {end}\n");
                for id in chunk {
                    text.push_str(id);
                    text.push('\n');
                }
                lists.push(text.into_bytes());
            }
        }
        let old_keys = self.pending_keys;
        self.pending_keys = lists.len();
        for (n, list) in lists.into_iter().enumerate() {
            out.state.push((pending_key(n), Some(list)));
        }
        for n in self.pending_keys..old_keys {
            out.state.push((pending_key(n), None));
        }
        self.dirty_bytes = 0;
        if self.book_bytes > self.max_bytes {
            // Committed now: read back from state when next needed.
            self.book = AlertBook::new();
            self.loaded.clear();
            self.book_bytes = 0;
        }
        out
    }

    /// After a commit that failed: nothing of this run's alerts is known to
    /// be stored beyond the last flush, and the run ends; forget it all so a
    /// caller that goes on starts again from what is committed.
    pub fn forget(&mut self) {
        self.book = AlertBook::new();
        self.loaded.clear();
        self.dirty_slots.clear();
        self.dirty_alerts.clear();
        self.lone.clear();
        self.actions.clear();
        self.action_ids.clear();
        self.dirty_bytes = 0;
        self.book_bytes = 0;
    }
}

fn alert_record(origin: Origin<'_>, id: String, mut body: Value) -> Record {
    if let Some(obj) = body.as_object_mut() {
        obj.insert("connector".into(), origin.connector.into());
        obj.insert("domain".into(), origin.domain.into());
        obj.entry("tenant_name")
            .or_insert_with(|| origin.tenant.into());
    }
    Record {
        index: Index::Alerts,
        id,
        body: serde_json::to_string(&body).expect("alert bodies serialise"),
        mode: WriteMode::Upsert,
    }
}
