//! Native alerts derived from collected events, deduplicated by sender.
//!
//! One alert type per event type (`Proofpoint TAP messageDelivered`, ...;
//! permitted clicks become `Proofpoint TAP clickDelivered`). Events of one
//! type from one sender (`email.sender.address`, one tenant) within a window
//! anchored at the alert's first event (`first_seen` .. `first_seen` +
//! window, end exclusive) grow one alert: its count, recipients, threat ids
//! and severity. An event after the window starts a new alert for that sender.
//!
//! The [`AlertBook`] is durable state: the connector commits it together with
//! the records, so an alert keeps growing across collection runs. It keeps an
//! alert for one more window after its own has ended, so a late event (TAP
//! files events under their threat's identification time, days after the
//! message at times) still joins the alert whose window holds it; an event
//! older than every kept window starts its own alert. [`AlertBook::prune`]
//! then drops it, which keeps the book bounded.
//!
//! Assumption: the caller passes each stored event once (re-collected events
//! are recognised upstream: the sink says they are stored, and
//! `alert_flush` knows which stored ones are not counted yet). The book
//! guards against a repeat anyway, but only against the record ids it lists
//! (see [`Alert::record_ids`]).
//!
//! Lists in an alert are bounded (`MAX_RECORD_IDS`, `MAX_RECIPIENTS`,
//! `MAX_THREAT_IDS`): an alert is rewritten whole whenever it grows, so its
//! size is what one more event of a busy sender costs. The counts stay
//! exact (`count`, `record_ids_total`), and `recipients_truncated` says when
//! the recipient list is not the whole union; every event stays searchable
//! by sender in the Syslog index.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::normalise::EventType;

/// Alert bodies' `msg_class`.
pub const ALERT_MSG_CLASS: &str = "proofpoint_tap_alert";
/// The default deduplication window: one day.
pub const DEFAULT_DEDUP_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;
/// Record ids an alert body lists; `record_ids_total` counts them all.
pub const MAX_RECORD_IDS: usize = 20;
/// Bounds on the unions an alert keeps, so one busy sender cannot grow the
/// committed state without limit. Beyond them new values are not added.
pub const MAX_RECIPIENTS: usize = 100;
pub const MAX_THREAT_IDS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertConfig {
    /// Window length; values below 1 ms are treated as 1 ms.
    pub dedup_window_ms: i64,
    /// Merge events without a sender into one alert per type (as if they
    /// shared the empty sender) instead of one alert each.
    pub merge_without_sender: bool,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            dedup_window_ms: DEFAULT_DEDUP_WINDOW_MS,
            merge_without_sender: false,
        }
    }
}

/// One newly stored event, as the alerts need it.
#[derive(Debug, Clone)]
pub struct ObservedEvent<'a> {
    /// The id of the record the event was stored under.
    pub record_id: &'a str,
    pub event_type: EventType,
    /// The event's own time (message or click time), epoch ms.
    pub time_ms: i64,
    pub facts: AlertFacts,
    pub tenant: &'a str,
}

impl<'a> ObservedEvent<'a> {
    /// From an event's normalised fields (`normalise::normalise`), with the
    /// time taken from their `timestamp`; None without one.
    pub fn from_normalised(
        record_id: &'a str,
        event_type: EventType,
        normalised: &Map<String, Value>,
        tenant: &'a str,
    ) -> Option<ObservedEvent<'a>> {
        Some(ObservedEvent {
            record_id,
            event_type,
            time_ms: normalised.get("timestamp")?.as_i64()?,
            facts: AlertFacts::from_normalised(normalised),
            tenant,
        })
    }
}

/// What observing an event did to the alerts: write `body` under `id` (an
/// upsert) in the same batch as the event's record.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertChange {
    Created {
        id: String,
        body: Value,
    },
    Updated {
        id: String,
        body: Value,
    },
    /// The record was already counted in alert `id`: nothing to write.
    Unchanged {
        id: String,
    },
}

impl AlertChange {
    pub fn id(&self) -> &str {
        match self {
            AlertChange::Created { id, .. }
            | AlertChange::Updated { id, .. }
            | AlertChange::Unchanged { id } => id,
        }
    }

    /// The body to write; None when nothing changed.
    pub fn body(&self) -> Option<&Value> {
        match self {
            AlertChange::Created { body, .. } | AlertChange::Updated { body, .. } => Some(body),
            AlertChange::Unchanged { .. } => None,
        }
    }
}

/// One alert: the events of one type from one sender within one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub event_type: EventType,
    pub tenant: String,
    /// None for an alert of sender-less events.
    pub sender: Option<String>,
    /// The window's start: the first event's time, epoch ms.
    pub first_seen: i64,
    pub last_seen: i64,
    /// The window's end (exclusive), epoch ms.
    pub window_end: i64,
    pub count: u64,
    pub severity: u8,
    pub recipients: BTreeSet<String>,
    pub threat_ids: BTreeSet<String>,
    pub classifications: BTreeSet<String>,
    /// The first `MAX_RECORD_IDS` record ids, as the body lists them.
    pub record_ids: Vec<String>,
    /// Recipients were left out of `recipients` (`MAX_RECIPIENTS`).
    #[serde(default)]
    pub recipients_truncated: bool,
    /// `approx_bytes`, kept up to date as the alert grows (not stored).
    #[serde(skip)]
    size: SizeHint,
}

/// A cached size: not part of what an alert is (equal whatever it holds).
#[derive(Debug, Clone, Copy, Default)]
struct SizeHint(usize);

impl PartialEq for SizeHint {
    fn eq(&self, _: &SizeHint) -> bool {
        true
    }
}

/// The open alerts, the connector's durable alert state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertBook {
    /// Alerts by slot (alert type, tenant, sender), oldest window first.
    /// A slot holds more than one alert while an ended window is still kept
    /// for late events.
    #[serde(default)]
    slots: BTreeMap<String, Vec<Alert>>,
}

impl AlertBook {
    pub fn new() -> AlertBook {
        AlertBook::default()
    }

    /// Count `event` into its alert, creating the alert when none holds it.
    pub fn observe(&mut self, event: &ObservedEvent<'_>, cfg: &AlertConfig) -> AlertChange {
        self.observe_with(event, cfg, true)
    }

    /// `observe` without building the body of a kept alert (it is `null` in
    /// the change): a caller counting many events builds each changed
    /// alert's body once, from `alert(id)`, at the end. Sender-less alerts,
    /// which the book does not keep, still come with their body.
    pub fn observe_deferred(
        &mut self,
        event: &ObservedEvent<'_>,
        cfg: &AlertConfig,
    ) -> AlertChange {
        self.observe_with(event, cfg, false)
    }

    fn observe_with(
        &mut self,
        event: &ObservedEvent<'_>,
        cfg: &AlertConfig,
        with_body: bool,
    ) -> AlertChange {
        let body_of = |alert: &Alert| {
            if with_body {
                alert.to_json()
            } else {
                Value::Null
            }
        };
        let facts = &event.facts;
        let sender = match &facts.sender {
            Some(sender) => sender.clone(),
            None if cfg.merge_without_sender => String::new(),
            None => {
                // Never merged, so the alert depends on this one event only: its
                // id and body come out the same however often the event is
                // observed, and there is nothing to keep.
                let alert = Alert::open(event, facts, cfg, Some(event.record_id));
                return AlertChange::Created {
                    id: alert.id.clone(),
                    body: alert.to_json(),
                };
            }
        };
        let slot = self
            .slots
            .entry(slot_key(event.event_type, event.tenant, &sender))
            .or_default();
        // The latest window holding the event: windows of one slot overlap
        // only when a late event opened one before a kept alert's.
        let holder = slot
            .iter_mut()
            .filter(|alert| alert.first_seen <= event.time_ms && event.time_ms < alert.window_end)
            .max_by_key(|alert| alert.first_seen);
        match holder {
            Some(alert) if alert.holds_record(event.record_id) => AlertChange::Unchanged {
                id: alert.id.clone(),
            },
            Some(alert) => {
                alert.absorb(event, facts);
                AlertChange::Updated {
                    id: alert.id.clone(),
                    body: body_of(alert),
                }
            }
            None => {
                let alert = Alert::open(event, facts, cfg, None);
                let change = AlertChange::Created {
                    id: alert.id.clone(),
                    body: body_of(&alert),
                };
                slot.push(alert);
                slot.sort_by_key(|alert| alert.first_seen);
                change
            }
        }
    }

    /// The slot (alert type, tenant, sender) `event` counts into, or `None`
    /// for an event without a sender that is never merged. Slots are the
    /// unit of durable state: a connector loads and stores only the slots a
    /// batch touches, so the state stays small however many senders a
    /// tenant sees.
    pub fn slot_of(event: &ObservedEvent<'_>, cfg: &AlertConfig) -> Option<String> {
        let sender = match event.facts.sender.clone() {
            Some(sender) => sender,
            None if cfg.merge_without_sender => String::new(),
            None => return None,
        };
        Some(slot_key(event.event_type, event.tenant, &sender))
    }

    /// The alerts kept for `slot` (oldest window first).
    pub fn slot(&self, slot: &str) -> &[Alert] {
        self.slots.get(slot).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Puts a slot's stored alerts back into the book.
    /// Removes a slot's alerts from the book and returns them.
    pub fn take_slot(&mut self, slot: &str) -> Vec<Alert> {
        self.slots.remove(slot).unwrap_or_default()
    }

    pub fn restore_slot(&mut self, slot: String, mut alerts: Vec<Alert>) {
        for alert in &mut alerts {
            alert.size = SizeHint(alert.measure());
        }
        if !alerts.is_empty() {
            self.slots.insert(slot, alerts);
        }
    }

    /// Drop the alerts whose window ended more than one window length before
    /// `now_ms`; returns how many were dropped.
    pub fn prune(&mut self, now_ms: i64) -> usize {
        let before = self.len();
        for alerts in self.slots.values_mut() {
            alerts.retain(|alert| {
                let window = alert.window_end - alert.first_seen;
                now_ms.saturating_sub(alert.window_end) <= window
            });
        }
        self.slots.retain(|_, alerts| !alerts.is_empty());
        before - self.len()
    }

    /// The alerts kept, in slot order.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.slots.values().flatten()
    }

    pub fn alert(&self, id: &str) -> Option<&Alert> {
        self.alerts().find(|alert| alert.id == id)
    }

    pub fn len(&self) -> usize {
        self.slots.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// `Proofpoint TAP messageDelivered`, ...: the alert type of an event type.
pub fn alert_type_name(event_type: EventType) -> &'static str {
    match event_type {
        EventType::MessageBlocked => "Proofpoint TAP messageBlocked",
        EventType::MessageDelivered => "Proofpoint TAP messageDelivered",
        EventType::ClickBlocked => "Proofpoint TAP clickBlocked",
        // A permitted click reached the user's browser: delivered.
        EventType::ClickPermitted => "Proofpoint TAP clickDelivered",
    }
}

/// Severity of one event, 1-100; an alert takes the highest of its events'.
///
/// The rule, kept simple so analysts can predict it:
/// - base by outcome, since a threat that reached the user is worse than one
///   stopped, and a click worse than a message: messageBlocked 5,
///   clickBlocked 10, messageDelivered 50, clickPermitted 60;
/// - plus the largest bonus of the threats' classifications: malware +25,
///   phish or impostor +20, anything else (spam) +0;
/// - plus 10 when the phish, malware or impostor score is 90 or more.
///
/// So every delivered or permitted event (50 or more) outranks every blocked
/// one (45 at most). Labels: below 30 low, below 50 medium, below 75 high,
/// else critical.
pub fn severity<'c>(
    event_type: EventType,
    classifications: impl IntoIterator<Item = &'c str>,
    max_threat_score: Option<f64>,
) -> u8 {
    let base: u8 = match event_type {
        EventType::MessageBlocked => 5,
        EventType::ClickBlocked => 10,
        EventType::MessageDelivered => 50,
        EventType::ClickPermitted => 60,
    };
    let classification_bonus = classifications
        .into_iter()
        .map(|classification| match classification {
            "malware" => 25,
            "phish" | "impostor" => 20,
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    let score_bonus = if max_threat_score.is_some_and(|score| score >= 90.0) {
        10
    } else {
        0
    };
    (base + classification_bonus + score_bonus).clamp(1, 100)
}

pub fn severity_label(severity: u8) -> &'static str {
    match severity {
        0..=29 => "low",
        30..=49 => "medium",
        50..=74 => "high",
        _ => "critical",
    }
}

/// MITRE ATT&CK placement of an alert type.
struct Mitre {
    tactic_id: &'static str,
    tactic_name: &'static str,
    technique_id: &'static str,
    technique_name: &'static str,
    kill_chain_stage: &'static str,
}

fn mitre(event_type: EventType) -> Mitre {
    if event_type.is_click() {
        Mitre {
            tactic_id: "TA0002",
            tactic_name: "Execution",
            technique_id: "T1204",
            technique_name: "User Execution",
            kill_chain_stage: "exploitation",
        }
    } else {
        Mitre {
            tactic_id: "TA0001",
            tactic_name: "Initial Access",
            technique_id: "T1566",
            technique_name: "Phishing",
            kill_chain_stage: "delivery",
        }
    }
}

/// What an alert takes from one event's normalised fields: read once, when
/// the event's record is built, and kept beside it until its batch commits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertFacts {
    pub sender: Option<String>,
    /// `email.recipient.addresses`: also what the response policy acts on.
    pub recipients: Vec<String>,
    pub threat_ids: Vec<String>,
    pub classifications: Vec<String>,
    /// The highest of the phish, malware and impostor scores.
    pub max_threat_score: Option<f64>,
}

/// An event record's contribution to the alerts, kept beside the record
/// from when it is built until its batch commits.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertInput {
    pub event_type: EventType,
    /// The event's own time, epoch ms.
    pub time_ms: i64,
    pub facts: AlertFacts,
}

impl AlertFacts {
    /// From an event's normalised fields, as the record is built.
    pub fn from_event(fields: &crate::normalise::Normalised<'_>) -> AlertFacts {
        let owned = |texts: &[std::borrow::Cow<'_, str>]| -> Vec<String> {
            texts.iter().map(|t| t.to_string()).collect()
        };
        let email = &fields.email;
        let score =
            |n: &Option<serde_json::Number>| n.as_ref().and_then(serde_json::Number::as_f64);
        let scores = fields.proofpoint.scores.as_ref();
        AlertFacts {
            sender: email.sender.as_ref().map(|s| s.address.to_string()),
            recipients: email
                .recipient
                .as_ref()
                .map_or_else(Vec::new, |r| owned(&r.addresses)),
            threat_ids: fields
                .threat
                .iter()
                .filter_map(|t| t.id.as_ref().map(|id| id.to_string()))
                .collect(),
            classifications: fields
                .threat
                .iter()
                .filter_map(|t| t.classification.as_ref().map(|c| c.to_string()))
                .collect(),
            max_threat_score: scores.and_then(|s| {
                [score(&s.phish), score(&s.malware), score(&s.impostor)]
                    .into_iter()
                    .flatten()
                    .reduce(f64::max)
            }),
        }
    }

    pub fn from_normalised(fields: &Map<String, Value>) -> AlertFacts {
        let sender = at(fields, &["email", "sender", "address"])
            .and_then(Value::as_str)
            .filter(|sender| !sender.is_empty())
            .map(str::to_string);
        let recipients = strings(at(fields, &["email", "recipient", "addresses"]));
        let threats = at(fields, &["threat"])
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let threat_field = |name: &str| -> Vec<String> {
            threats
                .iter()
                .filter_map(|threat| threat.get(name)?.as_str())
                .map(str::to_string)
                .collect()
        };
        let max_threat_score = ["phish", "malware", "impostor"]
            .iter()
            .filter_map(|name| at(fields, &["proofpoint", "scores", name])?.as_f64())
            .reduce(f64::max);
        AlertFacts {
            sender,
            recipients,
            threat_ids: threat_field("id"),
            classifications: threat_field("classification"),
            max_threat_score,
        }
    }

    fn severity(&self, event_type: EventType) -> u8 {
        severity(
            event_type,
            self.classifications.iter().map(String::as_str),
            self.max_threat_score,
        )
    }
}

impl Alert {
    /// A new alert holding `event` only. `lone_record_id` is set for an
    /// alert that will never merge (no sender): it makes the id unique.
    fn open(
        event: &ObservedEvent<'_>,
        facts: &AlertFacts,
        cfg: &AlertConfig,
        lone_record_id: Option<&str>,
    ) -> Alert {
        let sender = facts.sender.clone();
        let id = alert_id(
            event.event_type,
            event.tenant,
            sender.as_deref().unwrap_or(""),
            event.time_ms,
            lone_record_id.unwrap_or(""),
        );
        let mut alert = Alert {
            id,
            event_type: event.event_type,
            tenant: event.tenant.to_string(),
            sender,
            first_seen: event.time_ms,
            last_seen: event.time_ms,
            window_end: event.time_ms.saturating_add(cfg.dedup_window_ms.max(1)),
            count: 0,
            severity: 1,
            recipients: BTreeSet::new(),
            threat_ids: BTreeSet::new(),
            classifications: BTreeSet::new(),
            record_ids: Vec::new(),
            recipients_truncated: false,
            size: SizeHint::default(),
        };
        alert.size = SizeHint(alert.measure());
        alert.absorb(event, facts);
        alert
    }

    fn absorb(&mut self, event: &ObservedEvent<'_>, facts: &AlertFacts) {
        self.count += 1;
        self.last_seen = self.last_seen.max(event.time_ms);
        self.severity = self.severity.max(facts.severity(event.event_type));
        let mut grown = 0;
        if !add_bounded(
            &mut self.recipients,
            &facts.recipients,
            MAX_RECIPIENTS,
            &mut grown,
        ) {
            self.recipients_truncated = true;
        }
        add_bounded(
            &mut self.threat_ids,
            &facts.threat_ids,
            MAX_THREAT_IDS,
            &mut grown,
        );
        // A handful of distinct values at most (malware, phish, spam, ...).
        add_bounded(
            &mut self.classifications,
            &facts.classifications,
            usize::MAX,
            &mut grown,
        );
        if self.record_ids.len() < MAX_RECORD_IDS {
            grown += event.record_id.len() + 3;
            self.record_ids.push(event.record_id.to_string());
        }
        self.size.0 += grown;
    }

    fn holds_record(&self, record_id: &str) -> bool {
        self.record_ids.iter().any(|id| id == record_id)
    }

    /// About the bytes this alert takes serialized (its body or its slot
    /// state): what `alert_flush` budgets by. Kept as the alert grows.
    pub fn approx_bytes(&self) -> usize {
        self.size.0
    }

    fn measure(&self) -> usize {
        let strings = |set: &BTreeSet<String>| set.iter().map(|s| s.len() + 3).sum::<usize>();
        900 + self.tenant.len()
            + self.sender.as_ref().map_or(0, String::len)
            + strings(&self.recipients)
            + strings(&self.threat_ids)
            + strings(&self.classifications)
            + self.record_ids.iter().map(|s| s.len() + 3).sum::<usize>()
    }

    /// The body for the Alerts index. Callers add their own fields
    /// (connector, domain, ...) beside these.
    pub fn to_json(&self) -> Value {
        let name = alert_type_name(self.event_type);
        let mitre = mitre(self.event_type);
        let mut email = json!({ "recipient": {
            "addresses": self.recipients,
            "truncated": self.recipients_truncated,
        } });
        if let Some(sender) = &self.sender {
            email["sender"] = json!({ "address": sender });
        }
        json!({
            "msg_class": ALERT_MSG_CLASS,
            "xdr_event": { "name": name },
            "alert": { "id": self.id, "type": name },
            "severity": self.severity,
            "severity_label": severity_label(self.severity),
            "threat": {
                "tactic": { "id": mitre.tactic_id, "name": mitre.tactic_name },
                "technique": { "id": mitre.technique_id, "name": mitre.technique_name },
                "ids": self.threat_ids,
                "classifications": self.classifications,
            },
            "kill_chain_stage": mitre.kill_chain_stage,
            "tenant_name": self.tenant,
            "email": email,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            // The alert's time is its start, so time filters find it there.
            "timestamp": self.first_seen,
            "count": self.count,
            "record_ids": self.record_ids,
            "record_ids_total": self.count,
        })
    }
}

/// Hex SHA-256 of the alert's identity: the same alert always gets the same
/// id, different alerts never share one. The JSON array keeps the parts apart
/// whatever characters they hold.
fn alert_id(
    event_type: EventType,
    tenant: &str,
    sender: &str,
    first_seen: i64,
    lone_record_id: &str,
) -> String {
    let identity = json!([
        alert_type_name(event_type),
        tenant,
        sender,
        first_seen,
        lone_record_id
    ]);
    hex::encode(Sha256::digest(identity.to_string().as_bytes()))
}

fn slot_key(event_type: EventType, tenant: &str, sender: &str) -> String {
    json!([event_type.as_str(), tenant, sender]).to_string()
}

/// Adds `values` while `set` has room, counting the bytes added into
/// `grown`; false if a new value was left out.
fn add_bounded(
    set: &mut BTreeSet<String>,
    values: &[String],
    bound: usize,
    grown: &mut usize,
) -> bool {
    for value in values {
        if set.len() >= bound {
            if !set.contains(value) {
                return false;
            }
            continue;
        }
        if set.insert(value.clone()) {
            *grown += value.len() + 3;
        }
    }
    true
}

fn at<'v>(fields: &'v Map<String, Value>, path: &[&str]) -> Option<&'v Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(fields.get(*first)?, |node, key| node.get(key))
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalise(event_type: EventType, event: &Value) -> Result<Map<String, Value>, String> {
        let text = event.to_string();
        let json = crate::json::Json::parse(&text).expect("a Value is JSON");
        crate::normalise::normalise(event_type, &json).map(|n| n.to_map())
    }

    /// What the alerts take from an event when its record is built is what
    /// its stored body says.
    #[test]
    fn alert_input_matches_the_stored_body() {
        use crate::parse::{interpret, RawEvent};
        use crate::record::{for_event, Origin};
        use crate::test_support::{fixture_lines, FIXTURE_FILES};
        let origin = Origin {
            tenant: "acme",
            connector: "tap1",
            domain: "https://tap-api-v2.proofpoint.com",
        };
        let mut checked = 0;
        for (file, event_type) in FIXTURE_FILES {
            for line in fixture_lines(file) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v.get("queryEndTime").is_some() {
                    continue;
                }
                let raw = serde_json::value::RawValue::from_string(line.clone()).unwrap();
                let (record, input) = for_event(
                    origin,
                    &interpret(RawEvent {
                        event_type,
                        raw: &raw,
                    }),
                );
                let input = input.expect("an event record has alert input");
                let Value::Object(body) = serde_json::from_str(&record.body).unwrap() else {
                    panic!("record bodies are objects");
                };
                assert_eq!(input.facts, AlertFacts::from_normalised(&body), "{file}");
                assert_eq!(Some(input.time_ms), body["timestamp"].as_i64());
                assert_eq!(input.event_type.as_str(), body["event_type"]);
                checked += 1;
            }
        }
        assert!(checked >= 20, "{checked}");
    }

    const HOUR_MS: i64 = 60 * 60 * 1000;
    const DAY_MS: i64 = 24 * HOUR_MS;
    /// 2024-10-11T00:00:00Z.
    const T0: i64 = 1_728_604_800_000;
    const TENANT: &str = "acme";

    fn rfc3339(ms: i64) -> String {
        let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .expect("in range");
        time.format(&time::format_description::well_known::Rfc3339)
            .expect("formats")
    }

    /// Normalised fields of a synthetic event of `event_type`.
    fn normalised(
        event_type: EventType,
        sender: &str,
        recipient: &str,
        time_ms: i64,
        classification: &str,
        threat_id: &str,
    ) -> Map<String, Value> {
        let event = if event_type.is_click() {
            json!({
                "clickTime": rfc3339(time_ms),
                "sender": sender,
                "recipient": recipient,
                "classification": classification,
                "threatID": threat_id,
                "url": "https://bad.example.com/",
            })
        } else {
            json!({
                "messageTime": rfc3339(time_ms),
                "sender": sender,
                "recipient": [recipient],
                "phishScore": 0,
                "malwareScore": 0,
                "threatsInfoMap": [{"threatID": threat_id, "classification": classification}],
            })
        };
        normalise(event_type, &event).expect("normalises")
    }

    /// Builds events and observes them into one book.
    struct Harness {
        book: AlertBook,
        cfg: AlertConfig,
    }

    impl Harness {
        fn new() -> Harness {
            Harness {
                book: AlertBook::new(),
                cfg: AlertConfig::default(),
            }
        }

        fn observe(
            &mut self,
            record_id: &str,
            event_type: EventType,
            sender: &str,
            recipient: &str,
            time_ms: i64,
        ) -> AlertChange {
            self.observe_threat(record_id, event_type, sender, recipient, time_ms, "phish")
        }

        fn observe_threat(
            &mut self,
            record_id: &str,
            event_type: EventType,
            sender: &str,
            recipient: &str,
            time_ms: i64,
            classification: &str,
        ) -> AlertChange {
            let threat_id = format!("threat-{classification}");
            let fields = normalised(
                event_type,
                sender,
                recipient,
                time_ms,
                classification,
                &threat_id,
            );
            let event = ObservedEvent::from_normalised(record_id, event_type, &fields, TENANT)
                .expect("has a timestamp");
            assert_eq!(event.time_ms, time_ms);
            self.book.observe(&event, &self.cfg)
        }
    }

    fn body(change: &AlertChange) -> &Value {
        change.body().expect("a body to write")
    }

    #[test]
    fn fifty_messages_in_a_day_make_one_alert() {
        let mut harness = Harness::new();
        let mut changes = Vec::new();
        for n in 0..50 {
            changes.push(harness.observe(
                &format!("record-{n}"),
                EventType::MessageDelivered,
                "Bad.Actor@Example.com",
                &format!("user{n:02}@example.com"),
                // Spread over 23.5 hours.
                T0 + n * (47 * HOUR_MS / 100),
            ));
        }
        assert!(matches!(changes[0], AlertChange::Created { .. }));
        assert!(changes[1..]
            .iter()
            .all(|change| matches!(change, AlertChange::Updated { .. })));
        let id = changes[0].id();
        assert!(changes.iter().all(|change| change.id() == id));
        assert_eq!(harness.book.len(), 1);

        let last = body(&changes[49]);
        assert_eq!(last["count"], 50);
        assert_eq!(last["record_ids_total"], 50);
        assert_eq!(
            last["record_ids"].as_array().expect("list").len(),
            MAX_RECORD_IDS
        );
        assert_eq!(last["record_ids"][0], "record-0");
        assert_eq!(last["record_ids"][MAX_RECORD_IDS - 1], "record-19");
        let expected: Vec<String> = (0..50).map(|n| format!("user{n:02}@example.com")).collect();
        assert_eq!(last["email"]["recipient"]["addresses"], json!(expected));
        assert_eq!(last["email"]["recipient"]["truncated"], false);
        assert_eq!(last["email"]["sender"]["address"], "bad.actor@example.com");
        assert_eq!(last["first_seen"], T0);
        assert_eq!(last["timestamp"], T0);
        assert_eq!(last["last_seen"], T0 + 49 * (47 * HOUR_MS / 100));
        assert_eq!(last["threat"]["ids"], json!(["threat-phish"]));
        assert_eq!(last["alert"]["type"], "Proofpoint TAP messageDelivered");
        assert_eq!(last["alert"]["id"], id);
    }

    #[test]
    fn the_next_day_starts_a_new_alert() {
        let mut harness = Harness::new();
        let sender = "bad@example.com";
        let first = harness.observe("r1", EventType::MessageDelivered, sender, "a@x.com", T0);
        let last_in_window = harness.observe(
            "r2",
            EventType::MessageDelivered,
            sender,
            "b@x.com",
            T0 + DAY_MS - 1,
        );
        // The window ends (exclusive) one day after its first event.
        let next_day = harness.observe(
            "r3",
            EventType::MessageDelivered,
            sender,
            "c@x.com",
            T0 + DAY_MS,
        );
        assert_eq!(last_in_window.id(), first.id());
        assert!(matches!(next_day, AlertChange::Created { .. }));
        assert_ne!(next_day.id(), first.id());
        assert_eq!(body(&next_day)["count"], 1);
        assert_eq!(
            body(&next_day)["email"]["recipient"]["addresses"],
            json!(["c@x.com"])
        );
        assert_eq!(body(&next_day)["first_seen"], T0 + DAY_MS);
        // The ended alert is kept (for late events) until pruned.
        assert_eq!(harness.book.len(), 2);
        let old = harness.book.alert(first.id()).expect("kept");
        assert_eq!(old.count, 2);
    }

    #[test]
    fn a_late_event_joins_the_alert_whose_window_holds_it() {
        let mut harness = Harness::new();
        let sender = "bad@example.com";
        let first = harness.observe("r1", EventType::MessageBlocked, sender, "a@x.com", T0);
        let second = harness.observe(
            "r2",
            EventType::MessageBlocked,
            sender,
            "b@x.com",
            T0 + 25 * HOUR_MS,
        );
        let late = harness.observe(
            "r3",
            EventType::MessageBlocked,
            sender,
            "c@x.com",
            T0 + 23 * HOUR_MS,
        );
        assert_ne!(second.id(), first.id());
        assert!(matches!(late, AlertChange::Updated { .. }));
        assert_eq!(late.id(), first.id());
        assert_eq!(body(&late)["count"], 2);
        // Older than every kept window: an alert of its own.
        let older = harness.observe(
            "r4",
            EventType::MessageBlocked,
            sender,
            "d@x.com",
            T0 - HOUR_MS,
        );
        assert!(matches!(older, AlertChange::Created { .. }));
        assert_ne!(older.id(), first.id());
        assert_eq!(harness.book.len(), 3);
        // Its window overlaps the first alert's; an event in both joins the
        // later-anchored one, the sender's ongoing alert.
        let in_both = harness.observe(
            "r5",
            EventType::MessageBlocked,
            sender,
            "e@x.com",
            T0 + HOUR_MS,
        );
        assert_eq!(in_both.id(), first.id());
        assert_eq!(body(&in_both)["count"], 3);
    }

    #[test]
    fn different_senders_and_types_make_different_alerts() {
        let mut harness = Harness::new();
        let a = harness.observe("r1", EventType::MessageDelivered, "a@x.com", "u@y.com", T0);
        let b = harness.observe("r2", EventType::MessageDelivered, "b@x.com", "u@y.com", T0);
        let a_blocked = harness.observe("r3", EventType::MessageBlocked, "a@x.com", "u@y.com", T0);
        assert!(matches!(b, AlertChange::Created { .. }));
        assert!(matches!(a_blocked, AlertChange::Created { .. }));
        assert_ne!(a.id(), b.id());
        assert_ne!(a.id(), a_blocked.id());
        assert_eq!(body(&b)["email"]["sender"]["address"], "b@x.com");
        assert_eq!(
            body(&a_blocked)["alert"]["type"],
            "Proofpoint TAP messageBlocked"
        );
        assert_eq!(harness.book.len(), 3);
    }

    #[test]
    fn a_record_observed_twice_counts_once() {
        let mut harness = Harness::new();
        let sender = "bad@example.com";
        let first = harness.observe("r1", EventType::MessageDelivered, sender, "a@x.com", T0);
        harness.observe("r2", EventType::MessageDelivered, sender, "b@x.com", T0 + 1);
        let again = harness.observe("r1", EventType::MessageDelivered, sender, "a@x.com", T0);
        assert_eq!(
            again,
            AlertChange::Unchanged {
                id: first.id().to_string()
            }
        );
        assert_eq!(again.body(), None);
        let alert = harness.book.alert(first.id()).expect("kept");
        assert_eq!(alert.count, 2);
        assert_eq!(alert.record_ids, ["r1", "r2"]);
    }

    #[test]
    fn lists_are_capped_counts_are_not_and_listed_repeats_are_recognised() {
        let mut harness = Harness::new();
        let sender = "bad@example.com";
        let mut last = None;
        for n in 0..150 {
            last = Some(harness.observe(
                &format!("r{n}"),
                EventType::MessageBlocked,
                sender,
                &format!("user{n:03}@x.com"),
                T0 + n,
            ));
        }
        let last = last.expect("observed");
        let listed = body(&last)["record_ids"].as_array().expect("list").clone();
        assert_eq!(listed.len(), MAX_RECORD_IDS);
        assert_eq!(listed[0], "r0");
        assert_eq!(
            listed[MAX_RECORD_IDS - 1],
            format!("r{}", MAX_RECORD_IDS - 1)
        );
        assert_eq!(body(&last)["record_ids_total"], 150);
        assert_eq!(body(&last)["count"], 150);
        let recipients = body(&last)["email"]["recipient"].clone();
        assert_eq!(
            recipients["addresses"].as_array().unwrap().len(),
            MAX_RECIPIENTS
        );
        assert_eq!(recipients["truncated"], true, "{recipients}");
        // A listed record is recognised if it comes again; the others are the
        // caller's to recognise (the sink knows what it stored).
        let again = harness.observe(
            "r5",
            EventType::MessageBlocked,
            sender,
            "user005@x.com",
            T0 + 5,
        );
        assert!(matches!(again, AlertChange::Unchanged { .. }));
        let alert = harness.book.alert(last.id()).expect("kept");
        assert_eq!(alert.count, 150);
        // The size kept as it grew is the size measured afresh.
        assert_eq!(alert.approx_bytes(), alert.measure());
    }

    #[test]
    fn a_known_recipient_past_the_cap_does_not_truncate() {
        let mut harness = Harness::new();
        for n in 0..MAX_RECIPIENTS {
            harness.observe(
                &format!("r{n}"),
                EventType::MessageBlocked,
                "s@x.com",
                &format!("user{n:03}@x.com"),
                T0 + n as i64,
            );
        }
        let again = harness.observe(
            "r-last",
            EventType::MessageBlocked,
            "s@x.com",
            "user000@x.com",
            T0 + 999,
        );
        assert_eq!(body(&again)["email"]["recipient"]["truncated"], false);
    }

    #[test]
    fn events_without_sender_are_separate_alerts() {
        let mut harness = Harness::new();
        let first = harness.observe("r1", EventType::MessageDelivered, "", "a@x.com", T0);
        let second = harness.observe("r2", EventType::MessageDelivered, "", "b@x.com", T0);
        assert!(matches!(first, AlertChange::Created { .. }));
        assert!(matches!(second, AlertChange::Created { .. }));
        assert_ne!(first.id(), second.id());
        assert_eq!(body(&first)["count"], 1);
        assert_eq!(body(&second)["count"], 1);
        assert_eq!(body(&first)["email"].get("sender"), None);
        assert_eq!(
            body(&first)["email"]["recipient"]["addresses"],
            json!(["a@x.com"])
        );
        // Nothing to keep for them; a repeat yields the very same alert.
        assert!(harness.book.is_empty());
        let repeat = harness.observe("r1", EventType::MessageDelivered, "", "a@x.com", T0);
        assert_eq!(repeat, first);
    }

    #[test]
    fn events_without_sender_merge_when_configured() {
        let mut harness = Harness::new();
        harness.cfg.merge_without_sender = true;
        let first = harness.observe("r1", EventType::MessageDelivered, "", "a@x.com", T0);
        let second = harness.observe("r2", EventType::MessageDelivered, "", "b@x.com", T0 + 1);
        assert!(matches!(second, AlertChange::Updated { .. }));
        assert_eq!(second.id(), first.id());
        assert_eq!(body(&second)["count"], 2);
        assert_eq!(body(&second)["email"].get("sender"), None);
    }

    #[test]
    fn permitted_clicks_are_click_delivered_alerts() {
        let mut harness = Harness::new();
        let change = harness.observe("r1", EventType::ClickPermitted, "bad@x.com", "u@y.com", T0);
        let clicked = body(&change);
        assert_eq!(clicked["alert"]["type"], "Proofpoint TAP clickDelivered");
        assert_eq!(
            clicked["xdr_event"]["name"],
            "Proofpoint TAP clickDelivered"
        );
        assert_eq!(clicked["msg_class"], "proofpoint_tap_alert");
        assert_eq!(
            clicked["threat"]["tactic"],
            json!({"id": "TA0002", "name": "Execution"})
        );
        assert_eq!(
            clicked["threat"]["technique"],
            json!({"id": "T1204", "name": "User Execution"})
        );
        assert_eq!(clicked["kill_chain_stage"], "exploitation");
        assert_eq!(clicked["tenant_name"], TENANT);
        assert_eq!(
            clicked["email"]["recipient"]["addresses"],
            json!(["u@y.com"])
        );
        assert_eq!(clicked["threat"]["ids"], json!(["threat-phish"]));
        assert_eq!(clicked["threat"]["classifications"], json!(["phish"]));
        // clickPermitted 60 + phish 20.
        assert_eq!(clicked["severity"], 80);
        assert_eq!(clicked["severity_label"], "critical");

        let blocked = harness.observe("r2", EventType::ClickBlocked, "bad@x.com", "u@y.com", T0);
        assert_eq!(
            body(&blocked)["alert"]["type"],
            "Proofpoint TAP clickBlocked"
        );
        let message = harness.observe("r3", EventType::MessageBlocked, "bad@x.com", "u@y.com", T0);
        let message = body(&message);
        assert_eq!(
            message["threat"]["tactic"],
            json!({"id": "TA0001", "name": "Initial Access"})
        );
        assert_eq!(
            message["threat"]["technique"],
            json!({"id": "T1566", "name": "Phishing"})
        );
        assert_eq!(message["kill_chain_stage"], "delivery");
    }

    #[test]
    fn severity_ranks_delivered_above_blocked() {
        let worst_blocked = [EventType::MessageBlocked, EventType::ClickBlocked]
            .into_iter()
            .map(|t| severity(t, ["malware", "phish"], Some(100.0)))
            .max()
            .expect("two");
        let mildest_delivered = [EventType::MessageDelivered, EventType::ClickPermitted]
            .into_iter()
            .map(|t| severity(t, ["spam"], Some(0.0)))
            .min()
            .expect("two");
        assert!(
            mildest_delivered > worst_blocked,
            "{mildest_delivered} > {worst_blocked}"
        );
        assert_eq!(severity(EventType::MessageBlocked, ["spam"], None), 5);
        assert_eq!(
            severity(EventType::MessageBlocked, ["malware"], Some(100.0)),
            40
        );
        assert_eq!(
            severity(EventType::MessageDelivered, ["phish"], Some(89.0)),
            70
        );
        assert_eq!(
            severity(EventType::MessageDelivered, ["phish"], Some(90.0)),
            80
        );
        assert_eq!(severity(EventType::ClickPermitted, ["malware"], None), 85);
        assert_eq!(
            severity(EventType::ClickBlocked, std::iter::empty(), None),
            10
        );
        assert_eq!(severity_label(10), "low");
        assert_eq!(severity_label(45), "medium");
        assert_eq!(severity_label(70), "high");
        assert_eq!(severity_label(85), "critical");

        // Through the book, with real event shapes.
        let mut harness = Harness::new();
        let delivered = harness.observe_threat(
            "r1",
            EventType::MessageDelivered,
            "bad@x.com",
            "u@y.com",
            T0,
            "spam",
        );
        let blocked = harness.observe_threat(
            "r2",
            EventType::MessageBlocked,
            "bad@x.com",
            "u@y.com",
            T0,
            "malware",
        );
        let delivered_severity = body(&delivered)["severity"].as_u64().expect("number");
        let blocked_severity = body(&blocked)["severity"].as_u64().expect("number");
        assert!(delivered_severity > blocked_severity);
        assert_eq!(body(&delivered)["severity_label"], "high");
        assert_eq!(body(&blocked)["severity_label"], "medium");
    }

    #[test]
    fn alert_severity_is_the_highest_seen() {
        let mut harness = Harness::new();
        let sender = "bad@x.com";
        let spam = harness.observe_threat(
            "r1",
            EventType::MessageDelivered,
            sender,
            "a@x.com",
            T0,
            "spam",
        );
        let malware = harness.observe_threat(
            "r2",
            EventType::MessageDelivered,
            sender,
            "a@x.com",
            T0 + 1,
            "malware",
        );
        let spam_again = harness.observe_threat(
            "r3",
            EventType::MessageDelivered,
            sender,
            "a@x.com",
            T0 + 2,
            "spam",
        );
        assert_eq!(body(&spam)["severity"], 50);
        assert_eq!(body(&malware)["severity"], 75);
        assert_eq!(body(&spam_again)["severity"], 75);
        assert_eq!(
            body(&spam_again)["threat"]["ids"],
            json!(["threat-malware", "threat-spam"])
        );
        assert_eq!(
            body(&spam_again)["threat"]["classifications"],
            json!(["malware", "spam"])
        );
    }

    #[test]
    fn the_book_survives_serialisation() {
        let mut harness = Harness::new();
        let first = harness.observe("r1", EventType::MessageDelivered, "a@x.com", "u@y.com", T0);
        harness.observe("r2", EventType::ClickPermitted, "b@x.com", "u@y.com", T0);
        harness.observe(
            "r3",
            EventType::MessageDelivered,
            "a@x.com",
            "v@y.com",
            T0 + DAY_MS,
        );
        let state = serde_json::to_string(&harness.book).expect("serialises");
        let restored: AlertBook = serde_json::from_str(&state).expect("deserialises");
        assert_eq!(restored, harness.book);
        assert_eq!(restored.len(), 3);

        // The restored book goes on growing the same alert.
        harness.book = restored;
        let next = harness.observe(
            "r4",
            EventType::MessageDelivered,
            "a@x.com",
            "w@y.com",
            T0 + 5,
        );
        assert!(matches!(next, AlertChange::Updated { .. }));
        assert_eq!(next.id(), first.id());
        assert_eq!(body(&next)["count"], 2);
        let repeat = harness.observe("r1", EventType::MessageDelivered, "a@x.com", "u@y.com", T0);
        assert!(matches!(repeat, AlertChange::Unchanged { .. }));
    }

    #[test]
    fn prune_drops_alerts_one_window_after_they_end() {
        let mut harness = Harness::new();
        let old = harness.observe("r1", EventType::MessageBlocked, "a@x.com", "u@y.com", T0);
        let newer = harness.observe(
            "r2",
            EventType::MessageBlocked,
            "b@x.com",
            "u@y.com",
            T0 + 12 * HOUR_MS,
        );
        // The first window ends at T0 + 1 day; kept for one more day.
        assert_eq!(harness.book.prune(T0 + 2 * DAY_MS), 0);
        assert_eq!(harness.book.len(), 2);
        assert_eq!(harness.book.prune(T0 + 2 * DAY_MS + 1), 1);
        assert!(harness.book.alert(old.id()).is_none());
        assert!(harness.book.alert(newer.id()).is_some());
        assert_eq!(harness.book.prune(T0 + 3 * DAY_MS), 1);
        assert!(harness.book.is_empty());
        // The pruned slot is gone from the state too.
        assert_eq!(
            serde_json::to_value(&harness.book).expect("serialises"),
            json!({"slots": {}})
        );
    }

    #[test]
    fn alert_ids_are_stable_and_distinct() {
        let id = alert_id(EventType::MessageDelivered, TENANT, "a@x.com", T0, "");
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            id,
            alert_id(EventType::MessageDelivered, TENANT, "a@x.com", T0, "")
        );
        let others = [
            alert_id(EventType::MessageBlocked, TENANT, "a@x.com", T0, ""),
            alert_id(EventType::MessageDelivered, "other", "a@x.com", T0, ""),
            alert_id(EventType::MessageDelivered, TENANT, "b@x.com", T0, ""),
            alert_id(EventType::MessageDelivered, TENANT, "a@x.com", T0 + 1, ""),
            alert_id(EventType::MessageDelivered, TENANT, "a@x.com", T0, "r1"),
        ];
        for other in others {
            assert_ne!(other, id);
        }
    }

    #[test]
    fn fixture_events_feed_alerts() {
        // The normalised fields of real event shapes carry what alerts need.
        let line = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/tap/elastic/message_blocked.ndjson"
        ))
        .lines()
        .nth(4)
        .expect("line 5");
        let event: Value = serde_json::from_str(line).expect("JSON");
        let fields = normalise(EventType::MessageBlocked, &event).expect("normalises");
        let observed =
            ObservedEvent::from_normalised("rec-5", EventType::MessageBlocked, &fields, TENANT)
                .expect("timestamp");
        let mut book = AlertBook::new();
        let change = book.observe(&observed, &AlertConfig::default());
        let alert = body(&change);
        assert_eq!(alert["email"]["sender"]["address"], "man.web@example.com");
        assert_eq!(
            alert["email"]["recipient"]["addresses"],
            json!(["mailer-daemon@example.com"])
        );
        assert_eq!(
            alert["threat"]["ids"],
            json!(["9dhgabcdefghijkhgonvjdsdefghjikhlonvjdsvsbnvjdvjdsdefghjikhlonv"])
        );
        // messageBlocked 5, + 20 for phish, + 10 for phishScore 100.
        assert_eq!(alert["severity"], 35);
        assert_eq!(alert["severity_label"], "medium");
        assert_eq!(alert["first_seen"], observed.time_ms);
    }
}
