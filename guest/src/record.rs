//! Record building: what lands in the data lake.
//!
//! Every record says where it came from (`tenant_name`, `connector`,
//! `domain`) and what it is (`msg_class`). Vendor payloads are embedded as
//! raw JSON, exactly as the API sent them.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::alerts::{AlertFacts, AlertInput};
use crate::config::Config;
use crate::identity;
use crate::normalise::{self, Normalised};
use crate::parse::{EventType, Interpreted, Outcome};
use crate::platform::{Index, Record, WriteMode};
use crate::windows::Gap;

pub const EVENT_CLASS: &str = "proofpoint_tap_event";
pub const THREAT_CLASS: &str = "proofpoint_tap_threat";
pub const QUARANTINE_CLASS: &str = "proofpoint_tap_quarantine";
pub const GAP_CLASS: &str = "proofpoint_tap_gap";

/// Where records come from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub tenant: &'a str,
    pub connector: &'a str,
    /// The Host URL.
    pub domain: &'a str,
}

impl<'a> From<&'a Config> for Origin<'a> {
    fn from(c: &'a Config) -> Self {
        Origin {
            tenant: &c.tenant,
            connector: &c.name,
            domain: &c.host_url,
        }
    }
}

#[derive(Serialize)]
struct MsgOrigin {
    source: &'static str,
    vendor: &'static str,
    category: &'static str,
}

const MSG_ORIGIN: MsgOrigin = MsgOrigin {
    source: "proofpoint_tap",
    vendor: "proofpoint",
    category: "email",
};

struct EventBody<'a> {
    origin: Origin<'a>,
    event_type: &'static str,
    /// The event's own time, epoch milliseconds.
    timestamp: i64,
    event_id: &'a str,
    /// The normalised (ECS-style) fields: `email`, `source`, `threat`, ...
    normalised: Option<&'a Normalised<'a>>,
    /// The original event, byte for byte.
    proofpoint_tap: &'a RawValue,
}

impl Serialize for EventBody<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut body = s.serialize_struct("EventBody", 18)?;
        body.serialize_field("msg_class", EVENT_CLASS)?;
        body.serialize_field("msg_origin", &MSG_ORIGIN)?;
        body.serialize_field("tenant_name", self.origin.tenant)?;
        body.serialize_field("connector", self.origin.connector)?;
        body.serialize_field("domain", self.origin.domain)?;
        body.serialize_field("event_type", self.event_type)?;
        body.serialize_field("timestamp", &self.timestamp)?;
        body.serialize_field("event_id", self.event_id)?;
        if let Some(fields) = self.normalised {
            fields.serialize_fields(&mut body)?;
        }
        body.serialize_field("proofpoint_tap", self.proofpoint_tap)?;
        body.end()
    }
}

#[derive(Serialize)]
struct QuarantineBody<'a> {
    msg_class: &'static str,
    msg_origin: MsgOrigin,
    tenant_name: &'a str,
    connector: &'a str,
    domain: &'a str,
    event_type: &'static str,
    reason: &'a str,
    raw: &'a RawValue,
}

#[derive(Serialize)]
struct DamagedBody<'a> {
    msg_class: &'static str,
    msg_origin: MsgOrigin,
    tenant_name: &'a str,
    connector: &'a str,
    domain: &'a str,
    event_type: &'static str,
    reason: &'a str,
    /// The bytes as text (invalid UTF-8 replaced), at most the first
    /// `DAMAGED_TEXT_BYTES`.
    raw_text: &'a str,
    /// The same bytes in hex, when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_hex: Option<String>,
    /// Length and SHA-256 (hex) of all the event's bytes.
    raw_bytes: u64,
    raw_sha256: &'a str,
}

#[derive(Serialize)]
struct ThreatBody<'a> {
    msg_class: &'static str,
    msg_origin: MsgOrigin,
    tenant_name: &'a str,
    connector: &'a str,
    domain: &'a str,
    threat_id: &'a str,
    /// Collection time, epoch milliseconds.
    timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proofpoint_tap_threat: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct GapBody<'a> {
    msg_class: &'static str,
    msg_origin: MsgOrigin,
    tenant_name: &'a str,
    connector: &'a str,
    domain: &'a str,
    /// When the gap was noticed, epoch milliseconds.
    timestamp: i64,
    gap_start: i64,
    gap_end: i64,
    reason: &'a str,
}

fn to_json<T: Serialize>(body: &T) -> String {
    serde_json::to_string(body).expect("record bodies always serialize")
}

/// Room for a record's own fields around an embedded raw event.
const WRAPPER_BYTES: usize = 512;

/// `to_json` into a buffer sized for `raw_len` bytes of embedded event, so
/// a batch of records holds about the memory its bytes count (a growing
/// buffer would hold up to twice that).
fn to_json_around<T: Serialize>(body: &T, raw_len: usize, origin: Origin<'_>) -> String {
    let hint = raw_len
        + origin.tenant.len()
        + origin.connector.len()
        + origin.domain.len()
        + WRAPPER_BYTES;
    let mut out = Vec::with_capacity(hint);
    serde_json::to_writer(&mut out, body).expect("record bodies always serialize");
    out.shrink_to_fit();
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// The record for one interpreted event (Syslog, or quarantine with its
/// reason) and, for an event record, what the alerts take from it: read
/// from the normalised fields while they are at hand, so the record body is
/// never parsed again.
pub fn for_event(origin: Origin<'_>, event: &Interpreted<'_>) -> (Record, Option<AlertInput>) {
    let (id, time_ms) = match &event.outcome {
        Outcome::Event { id, time_ms } => (id, *time_ms),
        Outcome::Quarantine { reason } => {
            return (
                quarantine_record(origin, event.event_type, event.raw, reason),
                None,
            )
        }
    };
    let kind = normalise::EventType::from_array(event.event_type.array());
    let reparsed;
    let value = match &event.value {
        Some(v) => Some(v),
        None => {
            reparsed = crate::json::Json::parse(event.raw.get()).ok();
            reparsed.as_ref()
        }
    };
    // An event normalise cannot read keeps only its raw form (it was already
    // judged readable enough to store).
    let fields = kind
        .zip(value)
        .and_then(|(kind, value)| normalise::normalise(kind, value).ok());
    let input = kind.map(|kind| AlertInput {
        event_type: kind,
        time_ms,
        facts: fields
            .as_ref()
            .map(AlertFacts::from_event)
            .unwrap_or_default(),
    });
    let record = Record {
        index: Index::Syslog,
        id: id.to_string(),
        body: to_json_around(
            &EventBody {
                origin,
                event_type: event.event_type.as_str(),
                timestamp: time_ms,
                event_id: id,
                normalised: fields.as_ref(),
                proofpoint_tap: event.raw,
            },
            event.raw.get().len(),
            origin,
        ),
        mode: WriteMode::Insert,
    };
    (record, input)
}

pub fn quarantine_record(
    origin: Origin<'_>,
    event_type: EventType,
    raw: &RawValue,
    reason: &str,
) -> Record {
    // Valid JSON that search cannot read whole inside a record (nested
    // deeper than `MAX_EVENT_DEPTH`, a number out of range) would make the
    // record unreadable: keep it as text instead, like a damaged event. Same id.
    let readable = crate::json::Json::parse(raw.get())
        .is_ok_and(|v| v.depth() <= crate::parse::MAX_EVENT_DEPTH);
    if !readable {
        let bytes = raw.get().as_bytes();
        let sha = identity::quarantine_id(raw.get());
        return damaged_record(origin, event_type, bytes, bytes.len() as u64, &sha, reason);
    }
    Record {
        index: Index::Quarantine,
        id: identity::quarantine_id(raw.get()),
        body: to_json_around(
            &QuarantineBody {
                msg_class: QUARANTINE_CLASS,
                msg_origin: MSG_ORIGIN,
                tenant_name: origin.tenant,
                connector: origin.connector,
                domain: origin.domain,
                event_type: event_type.as_str(),
                reason,
                raw,
            },
            raw.get().len() + reason.len(),
            origin,
        ),
        mode: WriteMode::Insert,
    }
}

/// Bytes of an unreadable or oversized event kept in its quarantine record.
pub const DAMAGED_TEXT_BYTES: usize = 64 * 1024;

/// The quarantine record of an array item that is not JSON, or too large to
/// store: its reason, its bytes (the first `DAMAGED_TEXT_BYTES`) and the
/// length and SHA-256 of all of them. `sha256_hex` is the record id, so the
/// same damaged event is quarantined once.
pub fn damaged_record(
    origin: Origin<'_>,
    event_type: EventType,
    bytes: &[u8],
    total_len: u64,
    sha256_hex: &str,
    reason: &str,
) -> Record {
    let kept = &bytes[..bytes.len().min(DAMAGED_TEXT_BYTES)];
    let text = String::from_utf8_lossy(kept);
    let raw_hex = std::str::from_utf8(kept)
        .is_err()
        .then(|| hex::encode(kept));
    Record {
        index: Index::Quarantine,
        id: sha256_hex.to_string(),
        body: to_json(&DamagedBody {
            msg_class: QUARANTINE_CLASS,
            msg_origin: MSG_ORIGIN,
            tenant_name: origin.tenant,
            connector: origin.connector,
            domain: origin.domain,
            event_type: event_type.as_str(),
            reason,
            raw_text: &text,
            raw_hex,
            raw_bytes: total_len,
            raw_sha256: sha256_hex,
        }),
        mode: WriteMode::Insert,
    }
}

/// The id of a threat's record, also used to ask the sink whether it is stored.
pub fn threat_record_id(threat_id: &str) -> String {
    format!("threat:{threat_id}")
}

/// A Threat API summary, or `None` for a threat the API does not know (404),
/// stored as `status: "not_found"` so it is not asked for again and again.
pub fn threat_record(
    origin: Origin<'_>,
    threat_id: &str,
    summary: Option<&RawValue>,
    now_ms: i64,
) -> Record {
    Record {
        index: Index::Syslog,
        id: threat_record_id(threat_id),
        body: to_json(&ThreatBody {
            msg_class: THREAT_CLASS,
            msg_origin: MSG_ORIGIN,
            tenant_name: origin.tenant,
            connector: origin.connector,
            domain: origin.domain,
            threat_id,
            timestamp: now_ms,
            status: summary.is_none().then_some("not_found"),
            proofpoint_tap_threat: summary,
        }),
        mode: WriteMode::Insert,
    }
}

/// A span whose events the API no longer returns: the operator must know.
pub fn gap_record(origin: Origin<'_>, gap: &Gap, reason: &str, now_ms: i64) -> Record {
    let (start, end) = (
        crate::parse::epoch_ms(gap.start),
        crate::parse::epoch_ms(gap.end),
    );
    Record {
        index: Index::Syslog,
        id: format!("gap:{start}-{end}"),
        body: to_json(&GapBody {
            msg_class: GAP_CLASS,
            msg_origin: MSG_ORIGIN,
            tenant_name: origin.tenant,
            connector: origin.connector,
            domain: origin.domain,
            timestamp: now_ms,
            gap_start: start,
            gap_end: end,
            reason,
        }),
        mode: WriteMode::Insert,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{interpret, parse_siem_response};
    use crate::test_support::fixture_lines;
    use serde_json::Value;

    const ORIGIN: Origin<'static> = Origin {
        tenant: "acme",
        connector: "tap1",
        domain: "https://tap-api-v2.proofpoint.com",
    };

    /// The raw text of `field` inside a record body, as stored.
    fn raw_field(body: &str, field: &str) -> String {
        let map: std::collections::BTreeMap<String, Box<RawValue>> =
            serde_json::from_str(body).unwrap();
        map[field].get().to_string()
    }

    #[test]
    fn event_records_embed_the_raw_event_byte_for_byte() {
        // Fixture events, including a non-ASCII subject, plus an event with
        // escapes, odd spacing and number forms a re-serialisation would change.
        let mut lines = fixture_lines("message_delivered.ndjson");
        lines.push(
            r#"{ "messageTime" : "2024-10-11T14:00:00.000Z", "subject":"caf\u00e9 \"x\"\/y", "impostorScore": 0.0, "big": 1e3, "id": "z" }"#
                .to_string(),
        );
        let body = format!(
            "{{\"queryEndTime\":\"2024-10-11T14:34:53Z\",\"messagesDelivered\":[\n  {}\n]}}",
            lines.join(" ,\r\n\t")
        );
        let parsed = parse_siem_response(body.as_bytes()).unwrap();
        assert_eq!(parsed.events.len(), lines.len());
        for (event, line) in parsed.events.into_iter().zip(&lines) {
            let i = interpret(event);
            let record = for_event(ORIGIN, &i).0;
            assert_eq!(record.index, Index::Syslog);
            assert_eq!(record.mode, WriteMode::Insert);
            assert_eq!(&raw_field(&record.body, "proofpoint_tap"), line);
            let v: Value = serde_json::from_str(&record.body).unwrap();
            assert_eq!(v["msg_class"], EVENT_CLASS);
            assert_eq!(v["msg_origin"]["source"], "proofpoint_tap");
            assert_eq!(v["msg_origin"]["vendor"], "proofpoint");
            assert_eq!(v["msg_origin"]["category"], "email");
            assert_eq!(v["tenant_name"], "acme");
            assert_eq!(v["connector"], "tap1");
            assert_eq!(v["domain"], "https://tap-api-v2.proofpoint.com");
            assert_eq!(v["event_type"], "messageDelivered");
            assert_eq!(v["event_id"], record.id.as_str());
            assert!(v["timestamp"].as_i64().unwrap() > 0);
        }
    }

    #[test]
    fn click_record_timestamp_is_click_time() {
        let line = &fixture_lines("clicks_blocked.ndjson")[0];
        let body = format!("{{\"clicksBlocked\":[{line}]}}");
        let parsed = parse_siem_response(body.as_bytes()).unwrap();
        let record = for_event(ORIGIN, &interpret(parsed.events[0])).0;
        let v: Value = serde_json::from_str(&record.body).unwrap();
        assert_eq!(v["event_type"], "clickBlocked");
        // 2022-03-21T07:52:11.000Z
        assert_eq!(v["timestamp"], 1_647_849_131_000_i64);
    }

    #[test]
    fn quarantine_record_keeps_raw_and_reason() {
        let body = br#"{"clicksPermitted":[ [1, 2] ]}"#;
        let parsed = parse_siem_response(body).unwrap();
        let record = for_event(ORIGIN, &interpret(parsed.events[0])).0;
        assert_eq!(record.index, Index::Quarantine);
        assert_eq!(record.id, identity::quarantine_id("[1, 2]"));
        assert_eq!(raw_field(&record.body, "raw"), "[1, 2]");
        let v: Value = serde_json::from_str(&record.body).unwrap();
        assert_eq!(v["msg_class"], QUARANTINE_CLASS);
        assert_eq!(v["event_type"], "clickPermitted");
        assert!(v["reason"].as_str().unwrap().contains("not a JSON object"));
        assert_eq!(v["tenant_name"], "acme");
    }

    #[test]
    fn damaged_records_keep_the_bytes_their_size_and_hash() {
        let bytes = b"{\"a\":\"b\x01c\xff\"}";
        let sha = identity::sha256_hex(bytes);
        let record = damaged_record(
            ORIGIN,
            EventType::MessageBlocked,
            bytes,
            bytes.len() as u64,
            &sha,
            "the event is not UTF-8 text",
        );
        assert_eq!(record.index, Index::Quarantine);
        assert_eq!(record.id, sha);
        let v: Value = serde_json::from_str(&record.body).unwrap();
        assert_eq!(v["msg_class"], QUARANTINE_CLASS);
        assert_eq!(v["event_type"], "messageBlocked");
        assert_eq!(v["reason"], "the event is not UTF-8 text");
        assert_eq!(v["raw_text"], "{\"a\":\"b\u{1}c\u{fffd}\"}");
        assert_eq!(hex::decode(v["raw_hex"].as_str().unwrap()).unwrap(), bytes);
        assert_eq!(v["raw_bytes"], bytes.len());
        assert_eq!(v["raw_sha256"], sha.as_str());

        // Only a prefix of a huge event is kept; valid text has no hex copy.
        let big = "x".repeat(DAMAGED_TEXT_BYTES * 2);
        let record = damaged_record(
            ORIGIN,
            EventType::ClickBlocked,
            big.as_bytes(),
            1 << 30,
            "ab",
            "too large",
        );
        let v: Value = serde_json::from_str(&record.body).unwrap();
        assert_eq!(v["raw_text"].as_str().unwrap().len(), DAMAGED_TEXT_BYTES);
        assert!(v.get("raw_hex").is_none());
        assert_eq!(v["raw_bytes"], 1u64 << 30);
    }

    #[test]
    fn threat_records_found_and_not_found() {
        let summary: Box<RawValue> =
            serde_json::from_str(r#"{"id":"t1","name":"x", "severityScore": 900}"#).unwrap();
        let found = threat_record(ORIGIN, "t1", Some(&summary), 5);
        assert_eq!(found.id, "threat:t1");
        assert_eq!(
            raw_field(&found.body, "proofpoint_tap_threat"),
            summary.get()
        );
        let v: Value = serde_json::from_str(&found.body).unwrap();
        assert_eq!(v["msg_class"], THREAT_CLASS);
        assert_eq!(v["threat_id"], "t1");
        assert_eq!(v["timestamp"], 5);
        assert!(v.get("status").is_none());

        let missing = threat_record(ORIGIN, "t2", None, 5);
        let v: Value = serde_json::from_str(&missing.body).unwrap();
        assert_eq!(v["status"], "not_found");
        assert!(v.get("proofpoint_tap_threat").is_none());
    }
}
