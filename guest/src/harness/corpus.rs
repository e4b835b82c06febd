//! A hand-made corpus of nasty SIEM input: whole response bodies that are
//! broken in every way we could think of, and single events that are, each
//! with what must become of it. The same corpus runs natively
//! (`harness::collect_body`, in the guest's tests) and through the built
//! component against tap-sim (`tests/e2e/tests/bad_input.rs`, the events
//! tap-sim can serve).

use crate::parse::EventType;

/// In the simulator's window of the harness (`harness::now()` − 30 min).
pub const TIME: &str = "2026-11-20T09:30:00Z";

/// What must become of a nasty event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Stored as an event: odd in places, but it has what an event needs.
    Event,
    /// Quarantined, with a reason containing this text.
    Quarantine(&'static str),
}

/// One nasty event, served between two good ones.
#[derive(Debug, Clone)]
pub struct NastyEvent {
    pub name: &'static str,
    pub event_type: EventType,
    /// Its bytes, as the API would send them inside the array.
    pub bytes: Vec<u8>,
    pub expect: Expect,
    /// Whether tap-sim `--events` can serve it (a UTF-8 JSON object whose
    /// time fields it can read to file it).
    pub via_sim: bool,
}

/// A good event of `event_type` (unique by `n`), as one line of JSON.
pub fn good_event(event_type: EventType, n: usize) -> String {
    match event_type {
        EventType::MessageDelivered | EventType::MessageBlocked => format!(
            r#"{{"GUID":"good-{n}","id":"good-id-{n}","messageTime":"{TIME}","threatTime":"{TIME}","recipient":["user{n}@example.com"],"sender":"sender{n}@example.net","subject":"good {n}","threatsInfoMap":[{{"threatID":"t{n}","threatTime":"{TIME}","classification":"phish","threatStatus":"active","threatType":"url"}}]}}"#
        ),
        EventType::ClickPermitted | EventType::ClickBlocked => format!(
            r#"{{"GUID":"good-{n}","id":"good-id-{n}","clickTime":"{TIME}","threatTime":"{TIME}","recipient":"user{n}@example.com","sender":"sender{n}@example.net","threatID":"t{n}","url":"https://bad.example.net/{n}","classification":"phish","threatStatus":"active"}}"#
        ),
    }
}

fn nest(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn message(fields: &str) -> Vec<u8> {
    format!(r#"{{"GUID":"nasty","id":"nasty-id","threatTime":"{TIME}",{fields}}}"#).into_bytes()
}

/// The nasty events.
pub fn events() -> Vec<NastyEvent> {
    use EventType::*;
    use Expect::*;
    let t = TIME;
    let ev = |name, event_type, bytes: Vec<u8>, expect, via_sim| NastyEvent {
        name,
        event_type,
        bytes,
        expect,
        via_sim,
    };
    vec![
        ev(
            "a number",
            MessageDelivered,
            b"42".to_vec(),
            Quarantine("not a JSON object"),
            false,
        ),
        ev(
            "a string",
            MessageBlocked,
            b"\"text\"".to_vec(),
            Quarantine("not a JSON object"),
            false,
        ),
        ev(
            "null",
            ClickPermitted,
            b"null".to_vec(),
            Quarantine("not a JSON object"),
            false,
        ),
        ev(
            "a list",
            ClickBlocked,
            b"[1,{\"clickTime\":\"x\"}]".to_vec(),
            Quarantine("not a JSON object"),
            false,
        ),
        ev(
            "an empty object",
            MessageDelivered,
            b"{}".to_vec(),
            Quarantine("has no `messageTime`"),
            false,
        ),
        ev(
            "no event time",
            MessageDelivered,
            message(r#""subject":"x""#),
            Quarantine("has no `messageTime`"),
            true,
        ),
        ev(
            "event time null",
            MessageBlocked,
            message(r#""messageTime":null"#),
            Quarantine("has no `messageTime`"),
            true,
        ),
        ev(
            "event time a number",
            MessageDelivered,
            message(r#""messageTime":1728605000"#),
            Quarantine("1728605000"),
            true,
        ),
        ev(
            "event time an object",
            MessageDelivered,
            message(r#""messageTime":{"at":"now"}"#),
            Quarantine("is not an RFC 3339 time"),
            true,
        ),
        ev(
            "event time a list",
            ClickPermitted,
            message(&format!(r#""clickTime":["{t}"]"#)),
            Quarantine("is not an RFC 3339 time"),
            true,
        ),
        ev(
            "event time prose",
            MessageDelivered,
            message(r#""messageTime":"yesterday""#),
            Quarantine("\"yesterday\""),
            false,
        ),
        ev(
            "30 February",
            MessageDelivered,
            message(r#""messageTime":"2026-02-30T09:30:00Z""#),
            Quarantine("is not an RFC 3339 time"),
            false,
        ),
        ev(
            "hour 25",
            MessageDelivered,
            message(r#""messageTime":"2026-11-20T25:30:00Z""#),
            Quarantine("is not an RFC 3339 time"),
            false,
        ),
        ev(
            "no time zone",
            MessageDelivered,
            message(r#""messageTime":"2026-11-20T09:30:00""#),
            Quarantine("is not an RFC 3339 time"),
            false,
        ),
        ev(
            "wrong types everywhere",
            MessageDelivered,
            message(&format!(
                r#""messageTime":"{t}","recipient":5,"sender":{{"a":1}},"fromAddress":true,"toAddresses":"x","ccAddresses":[1,null,{{}}],"replyToAddress":9,"threatsInfoMap":[],"messageParts":7,"spamScore":"high","phishScore":[],"malwareScore":null,"impostorScore":{{}},"QID":null,"subject":99,"messageSize":"big","policyRoutes":{{}},"modulesRun":3,"headerFrom":[],"messageID":false,"senderIP":12,"xmailer":[1],"cluster":0.5,"quarantineFolder":true,"completelyRewritten":"maybe""#
            )),
            Event,
            true,
        ),
        ev(
            "threat entries of every type",
            MessageBlocked,
            message(&format!(
                r#""messageTime":"{t}","threatsInfoMap":[{{}},{{"threatID":5}},{{"threatID":"","classification":7}},{{"threatID":"ok","threatTime":"{t}","threatStatus":99,"threatType":[]}}]"#
            )),
            Event,
            true,
        ),
        ev(
            "click with wrong types",
            ClickPermitted,
            message(&format!(
                r#""clickTime":"{t}","url":5,"clickIP":[],"userAgent":{{}},"recipient":[1],"threatID":7,"campaignId":{{}},"classification":null"#
            )),
            Event,
            true,
        ),
        ev(
            "click without its time",
            ClickBlocked,
            message(r#""url":"https://x.example""#),
            Quarantine("has no `clickTime`"),
            true,
        ),
        ev(
            "duplicate keys, the last valid",
            MessageDelivered,
            message(&format!(
                r#""messageTime":"garbage","messageTime":"{t}","id":"a","id":"b""#
            )),
            Event,
            true,
        ),
        ev(
            "duplicate keys, the last invalid",
            MessageDelivered,
            message(&format!(r#""messageTime":"{t}","messageTime":"garbage""#)),
            Quarantine("\"garbage\""),
            false,
        ),
        ev(
            "a number out of range",
            MessageDelivered,
            message(&format!(r#""messageTime":"{t}","spamScore":1e400"#)),
            Quarantine("number out of range"),
            true,
        ),
        ev(
            "integers beyond 64 bits",
            MessageDelivered,
            message(&format!(
                r#""messageTime":"{t}","messageSize":-99999999999999999999999,"spamScore":184467440737095516160,"phishScore":-0,"malwareScore":1e-400"#
            )),
            Event,
            true,
        ),
        ev(
            "a 1 MiB string",
            MessageDelivered,
            message(&format!(
                r#""messageTime":"{t}","subject":"{}""#,
                "s".repeat(1 << 20)
            )),
            Event,
            true,
        ),
        ev(
            "a 5 MiB string (over the event size cap)",
            MessageDelivered,
            message(&format!(
                r#""messageTime":"{t}","subject":"{}""#,
                "s".repeat(5 << 20)
            )),
            Quarantine("more than the"),
            true,
        ),
        ev(
            "100k recipients",
            MessageDelivered,
            message(&format!(
                r#""messageTime":"{t}","recipient":[{}]"#,
                (0..100_000)
                    .map(|i| format!("\"r{i}@example.com\""))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            Event,
            true,
        ),
        ev(
            "50k keys",
            MessageDelivered,
            message(&format!(
                r#""messageTime":"{t}",{}"#,
                (0..50_000)
                    .map(|i| format!("\"k{i}\":{i}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            Event,
            true,
        ),
        ev(
            "nested as deep as a record can hold",
            MessageDelivered,
            message(&format!(r#""messageTime":"{t}","x":{}"#, nest(125))),
            Event,
            true,
        ),
        ev(
            "nested one level deeper than a record can hold",
            MessageDelivered,
            message(&format!(r#""messageTime":"{t}","x":{}"#, nest(126))),
            Quarantine("nested 127 levels deep"),
            true,
        ),
        ev(
            "nested 200 deep",
            MessageDelivered,
            message(&format!(r#""messageTime":"{t}","x":{}"#, nest(200))),
            Quarantine("recursion limit"),
            true,
        ),
        ev(
            "nested 100k deep",
            MessageDelivered,
            message(&format!(r#""messageTime":"{t}","x":{}"#, nest(100_000))),
            Quarantine("recursion limit"),
            true,
        ),
        ev(
            "nested objects 1000 deep in a threat",
            MessageDelivered,
            message(&format!(
                r#""messageTime":"{t}","threatsInfoMap":[{}1{}]"#,
                "{\"a\":".repeat(1000),
                "}".repeat(1000)
            )),
            Quarantine("recursion limit"),
            false,
        ),
        ev(
            "invalid UTF-8",
            MessageDelivered,
            [
                &message(&format!(r#""messageTime":"{t}","subject":"ab"#))[..],
                b"\xff\xfe\"}",
            ]
            .concat(),
            Quarantine("not UTF-8"),
            false,
        ),
        ev(
            "a lone surrogate escape",
            MessageDelivered,
            message(&format!(r#""messageTime":"{t}","subject":"\ud800""#)),
            Quarantine("could not be read as JSON"),
            false,
        ),
        ev(
            "a raw control character",
            MessageDelivered,
            message(&format!("\"messageTime\":\"{t}\",\"subject\":\"a\u{1}b\"")),
            Quarantine("not valid JSON"),
            false,
        ),
        ev(
            "escaped NUL and friends",
            MessageDelivered,
            message(&format!(
                r#""messageTime":"{t}","subject":"a\u0000b\u001b[31m\u202e","sender":"\u0000@example.com""#
            )),
            Event,
            true,
        ),
        ev(
            "unicode everywhere",
            ClickBlocked,
            message(&format!(
                r#""clickTime":"{t}","url":"https://ｅｘａｍｐｌｅ.com/𝔘𝔫𝔦","recipient":"ÜSER@EXAMPLE.COM","sender":"{rlo}moc.live@x","userAgent":"🦀""#,
                rlo = '\u{202e}'
            )),
            Event,
            true,
        ),
        ev(
            "a far-future time",
            MessageDelivered,
            message(r#""messageTime":"9999-12-31T23:59:59.999Z""#),
            Event,
            false,
        ),
        ev(
            "twelve fraction digits",
            MessageDelivered,
            message(r#""messageTime":"2026-11-20T09:30:00.123456789123Z""#),
            Event,
            false,
        ),
    ]
}

/// A whole response body made of `items` (raw bytes each) in `array`.
pub fn body_with(array: EventType, items: &[&[u8]]) -> Vec<u8> {
    let mut body = format!(
        "{{\"queryEndTime\":\"2026-11-20T09:59:00Z\",\"{}\":[",
        array.array()
    )
    .into_bytes();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    body
}

/// Whole response bodies broken as a whole: the window must fail (and be
/// asked again next run) or be collected, never half-collected, and
/// nothing may panic.
pub fn bodies() -> Vec<(&'static str, Vec<u8>)> {
    let good = good_event(EventType::MessageDelivered, 1);
    let deep = format!("{{\"queryEndTime\":null,\"extra\":{}}}", nest(100_000));
    vec![
        ("empty", Vec::new()),
        ("null", b"null".to_vec()),
        ("a list", b"[]".to_vec()),
        ("an empty object", b"{}".to_vec()),
        ("an open brace", b"{".to_vec()),
        ("a closing brace", b"}".to_vec()),
        (
            "HTML",
            b"<html><body>502 Bad Gateway</body></html>".to_vec(),
        ),
        ("binary", vec![0xff, 0xfe, 0x00, 0x01, 0x80]),
        (
            "an array that is a number",
            b"{\"messagesDelivered\":5}".to_vec(),
        ),
        (
            "an array that is a string",
            b"{\"messagesDelivered\":\"[]\"}".to_vec(),
        ),
        (
            "an array that is an object",
            b"{\"messagesDelivered\":{}}".to_vec(),
        ),
        (
            "queryEndTime a number",
            b"{\"queryEndTime\":5,\"messagesDelivered\":[]}".to_vec(),
        ),
        (
            "queryEndTime prose",
            b"{\"queryEndTime\":\"soon\",\"messagesDelivered\":[]}".to_vec(),
        ),
        (
            "queryEndTime 1 MiB",
            format!("{{\"queryEndTime\":\"{}\"}}", "9".repeat(1 << 20)).into_bytes(),
        ),
        (
            "an array twice",
            format!("{{\"messagesDelivered\":[{good}],\"messagesDelivered\":[{good}]}}")
                .into_bytes(),
        ),
        ("100k brackets", "[".repeat(100_000).into_bytes()),
        ("a member nested 100k deep", deep.into_bytes()),
        (
            "trailing garbage",
            format!("{{\"messagesDelivered\":[{good}]}} xyz").into_bytes(),
        ),
        ("two objects", b"{}{}".to_vec()),
        (
            "cut in an event",
            format!("{{\"messagesDelivered\":[{}", &good[..good.len() / 2]).into_bytes(),
        ),
        (
            "garbage between items",
            format!("{{\"messagesDelivered\":[{good} !! {good}]}}").into_bytes(),
        ),
        ("a number out of range", b"1e999".to_vec()),
        (
            "a byte-order mark",
            [
                &b"\xef\xbb\xbf"[..],
                &body_with(EventType::MessageDelivered, &[good.as_bytes()]),
            ]
            .concat(),
        ),
        (
            "1 MiB of whitespace",
            [
                &vec![b' '; 1 << 20][..],
                &body_with(EventType::MessageDelivered, &[good.as_bytes()]),
            ]
            .concat(),
        ),
        (
            "NUL between items",
            format!("{{\"messagesDelivered\":[{good},\u{0}{good}]}}").into_bytes(),
        ),
    ]
}

/// What a broken body must lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyExpect {
    /// The window fails as a transient error, the checkpoint stays, and the
    /// window is asked for again: the body is not trusted.
    Retried,
    /// The window is collected with this many events: the damage is one
    /// the API's JSON may carry without losing anything.
    Collected(usize),
}

/// Each body of `bodies()` with what it must lead to. Every body needs an
/// expectation: a new one without is a test failure, not a silent pass.
pub fn expected(name: &str) -> BodyExpect {
    match name {
        // Valid JSON that carries the window: the same array twice (its
        // event stored once), a string queryEndTime the connector does not
        // need, whitespace, and a byte-order mark (RFC 8259 lets a parser
        // ignore it; refusing it would fail every retry of the window).
        "an array twice" | "1 MiB of whitespace" | "a byte-order mark" => BodyExpect::Collected(1),
        "queryEndTime prose" => BodyExpect::Collected(0),
        "empty"
        | "null"
        | "a list"
        | "an empty object"
        | "an open brace"
        | "a closing brace"
        | "HTML"
        | "binary"
        | "an array that is a number"
        | "an array that is a string"
        | "an array that is an object"
        | "queryEndTime a number"
        | "queryEndTime 1 MiB"
        | "100k brackets"
        | "a member nested 100k deep"
        | "trailing garbage"
        | "two objects"
        | "cut in an event"
        | "garbage between items"
        | "a number out of range"
        | "NUL between items" => BodyExpect::Retried,
        other => panic!("broken body `{other}` has no expected outcome: add it to `expected`"),
    }
}

/// Writes the corpus as fuzzing seeds: `dir/siem_body/*` (whole bodies, the
/// nasty events inside good responses too) and `dir/siem_event/*` (a type
/// selector byte, then the event), the input shapes of `fuzz/`'s targets.
pub fn write_seeds(dir: &std::path::Path) -> std::io::Result<usize> {
    let (bodies_dir, events_dir) = (dir.join("siem_body"), dir.join("siem_event"));
    std::fs::create_dir_all(&bodies_dir)?;
    std::fs::create_dir_all(&events_dir)?;
    let mut n = 0;
    for (i, (_, body)) in bodies().into_iter().enumerate() {
        std::fs::write(bodies_dir.join(format!("body-{i:02}")), body)?;
        n += 1;
    }
    for (i, e) in events().into_iter().enumerate() {
        let selector = EventType::ALL
            .iter()
            .position(|t| *t == e.event_type)
            .expect("a known type") as u8;
        let good = good_event(e.event_type, 1);
        std::fs::write(
            bodies_dir.join(format!("event-{i:02}")),
            body_with(e.event_type, &[good.as_bytes(), &e.bytes]),
        )?;
        std::fs::write(
            events_dir.join(format!("event-{i:02}")),
            [&[selector][..], &e.bytes].concat(),
        )?;
        n += 2;
    }
    Ok(n)
}
