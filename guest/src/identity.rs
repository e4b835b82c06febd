//! Event identity: the record id that makes re-collection idempotent.
//!
//! The sink keeps the first record per id (write-mode insert), so the id must
//! be the same every time the API returns the same event (look-back
//! re-queries return them again) and different for different events. Traps:
//! one message to N recipients is N events sharing `GUID` and `messageTime`,
//! and the public samples have two different events sharing an `id`. So the
//! id combines `id` with `GUID` and the recipients, and without an `id` it is
//! a hash of the whole event in a canonical form. Never `GUID` alone.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::json::{Json, Object};
use crate::parse::EventType;

/// Top-level fields left out of the content hash because the API may change
/// them between deliveries of the same event. None is known yet; a field
/// added here changes the ids of events without an `id`.
pub const VOLATILE_FIELDS: &[&str] = &[];

/// The record id of an event: 64 hex digits. (The same as
/// `event_id_of_value` gives the event parsed as a `Value`.)
pub fn event_id(event_type: EventType, event: &Object<'_>) -> String {
    match event.get("id").and_then(Json::as_str) {
        Some(id) if !id.trim().is_empty() => {
            let guid = event
                .get("GUID")
                .map(|g| canonical(&g.to_value()))
                .unwrap_or_default();
            let mut recipients = match event.get("recipient") {
                None | Some(Json::Null) => Vec::new(),
                Some(Json::String(s)) => vec![s.to_string()],
                Some(Json::Array(items)) => items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map_or_else(|| canonical(&v.to_value()), str::to_string)
                    })
                    .collect(),
                Some(other) => vec![canonical(&other.to_value())],
            };
            recipients.sort();
            id_key(event_type, id, guid, recipients)
        }
        // Without an `id`: a hash of the whole event (rare), read as a Value.
        _ => match Json::Object(event.clone()).to_value() {
            Value::Object(map) => event_id_of_value(event_type, &map),
            _ => unreachable!("an object converts to an object"),
        },
    }
}

/// `event_id` of an event parsed as a `Value`: the definition.
pub fn event_id_of_value(event_type: EventType, event: &Map<String, Value>) -> String {
    match event.get("id").and_then(Value::as_str) {
        Some(id) if !id.trim().is_empty() => {
            let guid = event.get("GUID").map(canonical).unwrap_or_default();
            let mut recipients = recipients(event);
            recipients.sort();
            id_key(event_type, id, guid, recipients)
        }
        _ => {
            let mut text = format!("content-v1\n{}\n", event_type.as_str());
            write_canonical_object(event, &mut text, true);
            sha256_hex(text.as_bytes())
        }
    }
}

/// The id of an event that has an `id`, from its parts.
fn id_key(event_type: EventType, id: &str, guid: String, recipients: Vec<String>) -> String {
    // A JSON list is an unambiguous encoding of the parts.
    let key = Value::from(vec![
        Value::from("id-v1"),
        Value::from(event_type.as_str()),
        Value::from(id),
        Value::from(guid),
        Value::from(recipients),
    ]);
    sha256_hex(key.to_string().as_bytes())
}

/// The recipient(s): an array for messages, a single string for clicks.
fn recipients(event: &Map<String, Value>) -> Vec<String> {
    match event.get("recipient") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| canonical(v), str::to_string))
            .collect(),
        Some(other) => vec![canonical(other)],
    }
}

/// The record id of a quarantined event: the hash of its raw text.
pub fn quarantine_id(raw: &str) -> String {
    sha256_hex(raw.as_bytes())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A value as compact JSON with object keys sorted recursively and the items
/// of every `messageParts` list sorted (the API returns them in random order).
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => write_canonical_object(map, out, false),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn write_canonical_object(map: &Map<String, Value>, out: &mut String, top_level: bool) {
    let mut keys: Vec<&String> = map
        .keys()
        .filter(|k| !(top_level && VOLATILE_FIELDS.contains(&k.as_str())))
        .collect();
    keys.sort();
    out.push('{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::from(key.as_str()).to_string());
        out.push(':');
        match (key.as_str(), &map[key]) {
            ("messageParts", Value::Array(parts)) => {
                let mut parts: Vec<String> = parts.iter().map(canonical).collect();
                parts.sort();
                out.push('[');
                out.push_str(&parts.join(","));
                out.push(']');
            }
            (_, value) => write_canonical(value, out),
        }
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::fixture_lines;

    fn id_of(event_type: EventType, json: &str) -> String {
        let v: Value = serde_json::from_str(json).unwrap();
        let by_value = event_id_of_value(event_type, v.as_object().unwrap());
        let parsed = Json::parse(json).unwrap();
        assert_eq!(event_id(event_type, parsed.as_object().unwrap()), by_value);
        by_value
    }

    #[test]
    fn fixture_events_sharing_an_id_get_different_ids() {
        let lines = fixture_lines("message_blocked.ndjson");
        let (five, six) = (&lines[4], &lines[5]);
        assert!(five.contains("\"id\":\"ee212323-1234-1234-1234-0f0abcd123456\""));
        assert!(six.contains("\"id\":\"ee212323-1234-1234-1234-0f0abcd123456\""));
        assert_ne!(
            id_of(EventType::MessageBlocked, five),
            id_of(EventType::MessageBlocked, six)
        );
    }

    #[test]
    fn every_fixture_event_has_its_own_id_and_it_is_stable() {
        let mut seen = std::collections::HashSet::new();
        for (file, event_type) in crate::test_support::FIXTURE_FILES {
            for line in fixture_lines(file) {
                if line.contains("queryEndTime") {
                    continue;
                }
                let id = id_of(event_type, &line);
                assert_eq!(id, id_of(event_type, &line), "same event, same id");
                assert!(seen.insert(id), "duplicate id in {file}: {line}");
            }
        }
        assert_eq!(seen.len(), 23);
    }

    #[test]
    fn one_message_to_many_recipients_is_many_events() {
        // The worst case: every per-recipient copy shares GUID, time and id.
        let mut ids = std::collections::HashSet::new();
        for r in [
            "a@example.com",
            "b@example.com",
            "c@example.com",
            "d@example.com",
        ] {
            let with_id = format!(
                r#"{{"GUID":"g1","id":"same","messageTime":"2024-10-11T14:00:00.000Z","recipient":["{r}"]}}"#
            );
            let without_id = format!(
                r#"{{"GUID":"g1","messageTime":"2024-10-11T14:00:00.000Z","recipient":["{r}"]}}"#
            );
            assert!(ids.insert(id_of(EventType::MessageDelivered, &with_id)));
            assert!(ids.insert(id_of(EventType::MessageDelivered, &without_id)));
        }
        assert_eq!(ids.len(), 8);
    }

    #[test]
    fn recipient_order_does_not_matter_but_event_type_does() {
        let a = r#"{"id":"x","GUID":"g","recipient":["a@x","b@x"]}"#;
        let b = r#"{"GUID":"g","recipient":["b@x","a@x"],"id":"x"}"#;
        assert_eq!(
            id_of(EventType::MessageBlocked, a),
            id_of(EventType::MessageBlocked, b)
        );
        assert_ne!(
            id_of(EventType::MessageBlocked, a),
            id_of(EventType::MessageDelivered, a)
        );
        // A click's single-string recipient counts the same way.
        let c = r#"{"id":"x","GUID":"g","recipient":"a@x"}"#;
        let d = r#"{"id":"x","GUID":"g","recipient":"b@x"}"#;
        assert_ne!(
            id_of(EventType::ClickBlocked, c),
            id_of(EventType::ClickBlocked, d)
        );
    }

    /// Proofpoint's documented message shape: no `id`, `threatId`,
    /// `clusterId`, string `fromAddress`, string `completelyRewritten`.
    const DOCUMENTED: &str = r#"{"GUID":"c26dbea0-80d5-463b-b93c-4e8b708219ce","QID":"r2FNwRHF004109","ccAddresses":["bruce.wayne@university-of-education.zz"],"clusterId":"pharmtech_hosted","completelyRewritten":"true","fromAddress":"badguy@evil.zz","headerCC":"\"Bruce Wayne\" <bruce.wayne@university-of-education.zz>","headerFrom":"\"A. Badguy\" <badguy@evil.zz>","headerReplyTo":null,"headerTo":"\"Clark Kent\" <clark.kent@pharmtech.zz>; \"Diana Prince\" <diana.prince@pharmtech.zz>","impostorScore":0,"malwareScore":100,"messageID":"20160624211145.62086.mail@evil.zz","messageParts":[{"contentType":"text/plain","disposition":"inline","filename":"text.txt","md5":"008c5926ca861023c1d2a36653fd88e2","oContentType":"text/plain","sandboxStatus":"unsupported","sha256":"85738f8f9a7f1b04b5329c590ebcb9e425925c6d0984089c43a022de4f19c281"},{"contentType":"application/pdf","disposition":"attached","filename":"Invoice for Pharmtech.pdf","md5":"5873c7d37608e0d49bcaa6f32b6c731f","oContentType":"application/pdf","sandboxStatus":"threat","sha256":"2fab740f143fc1aa4c1cd0146d334c5593b1428f6d062b2c406e5efe8abe95ca"}],"messageSize":75682,"messageTime":"2016-06-24T21:18:38.000Z","modulesRun":["pdr","sandbox","spam","urldefense"],"phishScore":46,"policyRoutes":["default_inbound","executives"],"quarantineFolder":"Attachment Defense","quarantineRule":"module.sandbox.threat","recipient":["clark.kent@pharmtech.zz","diana.prince@pharmtech.zz"],"replyToAddress":null,"sender":"e99d7ed5580193f36a51f597bc2c0210@evil.zz","senderIP":"192.0.2.255","spamScore":4,"subject":"Please find a totally safe invoice attached.","threatsInfoMap":[{"campaignId":"46e01b8a-c899-404d-bcd9-189bb393d1a7","classification":"MALWARE","threat":"2fab740f143fc1aa4c1cd0146d334c5593b1428f6d062b2c406e5efe8abe95ca","threatId":"2fab740f143fc1aa4c1cd0146d334c5593b1428f6d062b2c406e5efe8abe95ca","threatStatus":"active","threatTime":"2016-06-24T21:18:38.000Z","threatType":"ATTACHMENT","threatUrl":"https://threatinsight.proofpoint.com/#/73aa0499-dfc8-75eb-1de8-a471b24a2e75/threat/u/2fab740f143fc1aa4c1cd0146d334c5593b1428f6d062b2c406e5efe8abe95ca"}],"toAddresses":["clark.kent@pharmtech.zz","diana.prince@pharmtech.zz"],"xmailer":"Spambot v2.5"}"#;

    #[test]
    fn documented_event_without_id_hashes_its_canonical_form() {
        let original: Value = serde_json::from_str(DOCUMENTED).unwrap();
        let base = id_of(EventType::MessageBlocked, DOCUMENTED);

        // Same event, keys in reverse order everywhere, messageParts swapped.
        fn reversed(v: &Value) -> String {
            match v {
                Value::Object(m) => {
                    let mut keys: Vec<_> = m.keys().collect();
                    keys.sort();
                    keys.reverse();
                    let items: Vec<String> = keys
                        .into_iter()
                        .map(|k| format!("{}:{}", Value::from(k.as_str()), reversed(&m[k])))
                        .collect();
                    format!("{{{}}}", items.join(","))
                }
                Value::Array(a) => {
                    format!("[{}]", a.iter().map(reversed).collect::<Vec<_>>().join(","))
                }
                s => s.to_string(),
            }
        }
        let mut swapped = original.clone();
        swapped["messageParts"].as_array_mut().unwrap().reverse();
        let reordered = reversed(&swapped);
        assert_ne!(reordered, DOCUMENTED);
        assert!(reordered.find("\"xmailer\"").unwrap() < reordered.find("\"GUID\"").unwrap());
        assert_eq!(id_of(EventType::MessageBlocked, &reordered), base);

        // Whitespace does not matter either.
        let pretty = serde_json::to_string_pretty(&original).unwrap();
        assert_eq!(id_of(EventType::MessageBlocked, &pretty), base);

        // But the content does.
        let mut changed = original.clone();
        changed["recipient"] = serde_json::json!(["clark.kent@pharmtech.zz"]);
        assert_ne!(id_of(EventType::MessageBlocked, &changed.to_string()), base);
        // An empty `id` is no id: events differing beyond GUID and
        // recipients still get different ids.
        let mut a = original;
        a["id"] = "".into();
        let mut b = a.clone();
        b["subject"] = "another subject".into();
        assert_ne!(
            id_of(EventType::MessageBlocked, &a.to_string()),
            id_of(EventType::MessageBlocked, &b.to_string())
        );
    }

    #[test]
    fn canonical_form_sorts_keys_and_message_parts_only() {
        let v: Value = serde_json::from_str(
            r#"{"b":[3,1,2],"a":{"z":1,"y":[{"q":1,"p":2}]},"messageParts":[{"n":"b"},{"n":"a"}]}"#,
        )
        .unwrap();
        let mut out = String::new();
        write_canonical_object(v.as_object().unwrap(), &mut out, true);
        assert_eq!(
            out,
            r#"{"a":{"y":[{"p":2,"q":1}],"z":1},"b":[3,1,2],"messageParts":[{"n":"a"},{"n":"b"}]}"#
        );
    }
}

#[cfg(test)]
mod stability {
    use super::*;
    use crate::parse::{interpret, Outcome, RawEvent};
    use crate::test_support::{fixture_lines, FIXTURE_FILES};

    /// Record ids must never change from one version to the next: a store
    /// upgraded in place would store every re-collected event again. This
    /// digest of the fixture events' ids pins them.
    #[test]
    fn fixture_event_ids_never_change() {
        let mut all = String::new();
        for (file, event_type) in FIXTURE_FILES {
            for line in fixture_lines(file) {
                if line.contains("\"queryEndTime\"") {
                    continue;
                }
                let raw = serde_json::value::RawValue::from_string(line).unwrap();
                let Outcome::Event { id, .. } = interpret(RawEvent {
                    event_type,
                    raw: &raw,
                })
                .outcome
                else {
                    panic!("a fixture event is quarantined");
                };
                all.push_str(&id);
                all.push('\n');
            }
        }
        assert_eq!(
            sha256_hex(all.as_bytes()),
            "8b30d0e3f54b5331615359047cf7bc9adecc7ff7338aeaccdf42f7467b863ce0",
            "{all}"
        );
    }
}
