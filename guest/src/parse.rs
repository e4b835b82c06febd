//! SIEM events: their types and what the connector reads out of each.
//!
//! Every event keeps its raw JSON text (a `RawValue` slice of the bytes the
//! API sent), so the stored original is byte-exact. Only what the
//! connector needs is read out of it: the event time, the identity fields and
//! the threat ids. Nothing else is validated: one odd field must never cost a
//! window.

use serde_json::value::RawValue;

use crate::json::{Json, Object};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::identity;
use crate::platform::InMemoryBody;
use crate::scan::{check_event, SiemScanner};

/// The four SIEM event types, named as records name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    MessageDelivered,
    MessageBlocked,
    ClickPermitted,
    ClickBlocked,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::MessageDelivered,
        EventType::MessageBlocked,
        EventType::ClickPermitted,
        EventType::ClickBlocked,
    ];

    /// The record's `event_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::MessageDelivered => "messageDelivered",
            EventType::MessageBlocked => "messageBlocked",
            EventType::ClickPermitted => "clickPermitted",
            EventType::ClickBlocked => "clickBlocked",
        }
    }

    /// The response array holding this type.
    pub fn array(self) -> &'static str {
        match self {
            EventType::MessageDelivered => "messagesDelivered",
            EventType::MessageBlocked => "messagesBlocked",
            EventType::ClickPermitted => "clicksPermitted",
            EventType::ClickBlocked => "clicksBlocked",
        }
    }

    /// The field holding the event's own time.
    pub fn time_field(self) -> &'static str {
        match self {
            EventType::MessageDelivered | EventType::MessageBlocked => "messageTime",
            EventType::ClickPermitted | EventType::ClickBlocked => "clickTime",
        }
    }
}

/// One array item of a SIEM response, not yet looked at.
#[derive(Debug, Clone, Copy)]
pub struct RawEvent<'a> {
    pub event_type: EventType,
    pub raw: &'a RawValue,
}

/// A parsed SIEM response body.
#[derive(Debug)]
pub struct SiemResponse<'a> {
    pub query_end_time: Option<String>,
    /// In response order, grouped by type.
    pub events: Vec<RawEvent<'a>>,
}

/// Parse a whole SIEM response already in memory (collection streams
/// instead: see `scan`). An error means the body is not what the API sends
/// (not JSON, not an object, an event list that is not a list, an event that
/// is not JSON, or none of the expected keys).
pub fn parse_siem_response(body: &[u8]) -> Result<SiemResponse<'_>, String> {
    let starts_with = || String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
    let mut scanner = SiemScanner::new(InMemoryBody::new(body.to_vec(), body.len()), body.len());
    let mut events = Vec::new();
    loop {
        let event = match scanner.next_event() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => return Err(format!("{e}; it starts with {:?}", starts_with())),
        };
        let start = event.offset as usize;
        let bytes = &body[start..start + event.bytes.len()];
        let raw = check_event(bytes).map_err(|why| {
            format!(
                "an item of `{}` in the SIEM response is not JSON: {why}",
                event.event_type.array()
            )
        })?;
        events.push(RawEvent {
            event_type: event.event_type,
            raw,
        });
    }
    if scanner.query_end_time().is_none() && scanner.arrays().is_empty() {
        return Err(
            "the SIEM response has none of `queryEndTime`, `messagesDelivered`, `messagesBlocked`, \
             `clicksPermitted`, `clicksBlocked`"
                .into(),
        );
    }
    Ok(SiemResponse {
        query_end_time: scanner.query_end_time().map(str::to_string),
        events,
    })
}

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored in the Syslog index under `id`.
    Event { id: String, time_ms: i64 },
    /// Stored in the quarantine index with the reason.
    Quarantine { reason: String },
}

#[derive(Debug, Clone)]
pub struct Interpreted<'a> {
    pub event_type: EventType,
    pub raw: &'a RawValue,
    /// Threat ids the event names, for the Threat API.
    pub threat_ids: Vec<String>,
    pub outcome: Outcome,
    /// The event parsed (a JSON object), when it could be: what later steps
    /// (normalisation) read, so the event is parsed once.
    pub value: Option<Json<'a>>,
}

/// Deepest nesting an event may have to be stored as JSON: record bodies
/// are read with serde_json (127 levels at most) and hold the event one
/// level down.
pub const MAX_EVENT_DEPTH: usize = 126;

/// Read the fields the connector needs out of one event.
pub fn interpret(event: RawEvent<'_>) -> Interpreted<'_> {
    let RawEvent { event_type, raw } = event;
    let quarantine = |reason: String| Interpreted {
        event_type,
        raw,
        threat_ids: Vec::new(),
        outcome: Outcome::Quarantine { reason },
        value: None,
    };
    let value = match Json::parse(raw.get()) {
        Ok(v) => v,
        Err(e) => return quarantine(format!("the event could not be read as JSON ({e})")),
    };
    let depth = value.depth();
    if depth > MAX_EVENT_DEPTH {
        return quarantine(format!(
            "the event is nested {depth} levels deep; a record holds at most {MAX_EVENT_DEPTH} (search reads {} and the record adds one), so it is kept as text",
            MAX_EVENT_DEPTH + 1
        ));
    }
    let Json::Object(map) = value else {
        return quarantine(format!(
            "the event is not a JSON object but {}",
            json_kind(&value)
        ));
    };
    let threat_ids = threat_ids(&map);
    let field = event_type.time_field();
    let outcome = match map
        .get(field)
        .and_then(Json::as_str)
        .and_then(parse_event_time)
    {
        Some(t) => Outcome::Event {
            id: identity::event_id(event_type, &map),
            time_ms: epoch_ms(t),
        },
        None => Outcome::Quarantine {
            reason: match map.get(field) {
                None | Some(Json::Null) => format!("the event has no `{field}`"),
                Some(v) => format!(
                    "the event's `{field}` ({}) is not an RFC 3339 time",
                    v.to_value()
                ),
            },
        },
    };
    Interpreted {
        event_type,
        raw,
        threat_ids,
        outcome,
        value: Some(Json::Object(map)),
    }
}

/// Threat ids named by an event: `threatsInfoMap[].threatID` for messages,
/// the top-level `threatID` for clicks; the documented `threatId` too.
pub fn threat_ids(event: &Object<'_>) -> Vec<String> {
    fn id_of<'o>(map: &'o Object<'_>) -> Option<&'o str> {
        ["threatID", "threatId"]
            .iter()
            .filter_map(|k| map.get(k).and_then(Json::as_str))
            .map(str::trim)
            .find(|s| !s.is_empty())
    }
    let mut ids: Vec<String> = Vec::new();
    let mut push = |id: &str| {
        if !ids.iter().any(|known| known == id) {
            ids.push(id.to_string());
        }
    };
    if let Some(id) = id_of(event) {
        push(id);
    }
    if let Some(Json::Array(threats)) = event.get("threatsInfoMap") {
        for threat in threats {
            if let Some(id) = threat.as_object().and_then(id_of) {
                push(id);
            }
        }
    }
    ids
}

/// `2022-03-21T07:52:11.000Z` and other RFC 3339 forms.
pub fn parse_event_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text.trim(), &Rfc3339).ok()
}

pub fn epoch_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn json_kind(v: &Json<'_>) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{fixture_lines, FIXTURE_FILES};
    use serde_json::Value;

    #[test]
    fn every_fixture_line_parses() {
        let mut events = 0;
        let mut responses = 0;
        for (file, event_type) in FIXTURE_FILES {
            let lines = fixture_lines(file);
            assert!(!lines.is_empty(), "{file} is empty");
            for (n, line) in lines.iter().enumerate() {
                let value: Value = serde_json::from_str(line).unwrap();
                if value.get("queryEndTime").is_some() {
                    // A whole (empty) API response, kept as it is.
                    let parsed = parse_siem_response(line.as_bytes()).unwrap();
                    assert_eq!(
                        parsed.query_end_time.as_deref(),
                        Some("2024-10-11T14:34:53Z")
                    );
                    assert!(parsed.events.is_empty());
                    responses += 1;
                    continue;
                }
                let body = format!(
                    "{{\"queryEndTime\":\"2024-10-11T14:34:53Z\",\"{}\":[{line}]}}",
                    event_type.array()
                );
                let parsed = parse_siem_response(body.as_bytes()).unwrap();
                assert_eq!(parsed.events.len(), 1, "{file}:{}", n + 1);
                let ev = parsed.events[0];
                assert_eq!(ev.event_type, event_type);
                assert_eq!(ev.raw.get(), line, "raw text changed in {file}:{}", n + 1);
                let i = interpret(ev);
                match &i.outcome {
                    Outcome::Event { id, time_ms } => {
                        assert_eq!(id.len(), 64);
                        assert!(*time_ms > 1_400_000_000_000, "{file}:{}", n + 1);
                    }
                    Outcome::Quarantine { reason } => {
                        panic!("{file}:{} quarantined: {reason}", n + 1)
                    }
                }
                assert!(!i.threat_ids.is_empty(), "{file}:{} names no threat", n + 1);
                events += 1;
            }
        }
        assert_eq!((events, responses), (23, 2));
    }

    #[test]
    fn all_four_arrays_and_their_types() {
        let body = br#"{"queryEndTime":"2024-10-11T14:34:53Z",
            "messagesDelivered":[{"messageTime":"2024-10-11T14:00:00Z"}],
            "messagesBlocked":[],
            "clicksPermitted":[{"clickTime":"2024-10-11T14:00:00Z"}, {"clickTime":"2024-10-11T14:00:01Z"}],
            "clicksBlocked":null}"#;
        let parsed = parse_siem_response(body).unwrap();
        let types: Vec<_> = parsed.events.iter().map(|e| e.event_type).collect();
        assert_eq!(
            types,
            vec![
                EventType::MessageDelivered,
                EventType::ClickPermitted,
                EventType::ClickPermitted
            ]
        );
    }

    #[test]
    fn broken_bodies_are_errors() {
        for body in [
            &b"<html>gateway timeout</html>"[..],
            b"",
            b"[]",
            b"{}",
            b"{\"messagesBlocked\": {}}",
            b"{\"queryEndTime\":\"x\",\"messagesBlocked\":[1,2",
            b"\xff\xfe",
        ] {
            assert!(
                parse_siem_response(body).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn uninterpretable_events_are_quarantined_with_a_reason() {
        let body = br#"{"messagesBlocked":[42, {"messageTime":null,"id":"x"}, {"messageTime":"yesterday"}, {"messageTime":"2024-10-11T14:00:00Z"}]}"#;
        let parsed = parse_siem_response(body).unwrap();
        let outcomes: Vec<_> = parsed
            .events
            .into_iter()
            .map(|e| interpret(e).outcome)
            .collect();
        assert!(
            matches!(&outcomes[0], Outcome::Quarantine { reason } if reason.contains("not a JSON object"))
        );
        assert!(
            matches!(&outcomes[1], Outcome::Quarantine { reason } if reason.contains("no `messageTime`"))
        );
        assert!(
            matches!(&outcomes[2], Outcome::Quarantine { reason } if reason.contains("\"yesterday\""))
        );
        assert!(
            matches!(&outcomes[3], Outcome::Event { time_ms, .. } if *time_ms == 1_728_655_200_000)
        );
    }

    #[test]
    fn threat_ids_from_both_spellings() {
        let v = Json::parse(
            r#"{"threatsInfoMap":[{"threatID":"a"},{"threatId":"b"},{"threatID":"a"},{"threatID":""},{"threatID":null}],"threatId":"c"}"#,
        )
        .unwrap();
        assert_eq!(threat_ids(v.as_object().unwrap()), vec!["c", "a", "b"]);
    }
}
