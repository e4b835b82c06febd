//! A streaming scanner for SIEM response bodies.
//!
//! A busy tenant's one-hour window can be hundreds of megabytes in one body
//! (the API has no paging), so the body is never held whole: it is read in
//! chunks and walked once. The top level is checked strictly (an object whose
//! members are the four event arrays, `queryEndTime` and anything else,
//! nothing after it); each array item is handed out as its raw bytes, one at
//! a time, so only the event being looked at is in memory.
//!
//! An item's extent is found structurally (brackets and strings), without
//! judging its content: an event with a stray byte inside still ends where
//! its brackets close, so one damaged event does not cost the others. The
//! caller checks each item's bytes strictly (`check_event`). Damage the
//! structure cannot step over (bytes between items, a cut-off body, trailing
//! text) is a `ScanError`: the window is then incomplete.

use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::parse::EventType;
use crate::platform::{BodyReader, TransportError};

/// Longest object key or `queryEndTime` value read at the top level.
const MAX_TOP_LEVEL_STRING: usize = 4096;

/// Why the body is not a complete SIEM response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanError {
    /// The body ended before its JSON text did.
    Truncated { at: u64 },
    /// Not the structure of a SIEM response, at byte offset `at`.
    Malformed { at: u64, what: String },
    /// Reading the body failed.
    Transport(TransportError),
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanError::Truncated { at } => {
                write!(f, "the SIEM response ends after {at} bytes, in the middle of its JSON text (cut off)")
            }
            ScanError::Malformed { at, what } => {
                write!(
                    f,
                    "the SIEM response is not the expected JSON at byte {at}: {what}"
                )
            }
            ScanError::Transport(e) => write!(f, "reading the SIEM response failed: {e}"),
        }
    }
}

impl From<TransportError> for ScanError {
    fn from(e: TransportError) -> Self {
        ScanError::Transport(e)
    }
}

/// An event larger than the scanner keeps: its length and SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized {
    pub len: u64,
    pub sha256: [u8; 32],
}

/// One array item as it appeared in the body.
#[derive(Debug)]
pub struct ScannedEvent<'s> {
    pub event_type: EventType,
    /// Its bytes; for an oversized item, the first `max_event_bytes` of them.
    pub bytes: &'s [u8],
    /// Byte offset of the item in the body.
    pub offset: u64,
    pub oversized: Option<Oversized>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    /// After `{` or `,`: a member key comes next.
    Key,
    /// After a member's value: `,` or `}`.
    AfterMember,
    /// After an array's `[`: an item or `]`.
    ArrayStart(EventType),
    /// After an item: `,` or `]`.
    ArrayAfterItem(EventType),
    /// After the top-level `}`.
    End,
}

/// Walks a SIEM response body read from `R`.
pub struct SiemScanner<R: BodyReader> {
    reader: R,
    chunk: Vec<u8>,
    pos: usize,
    /// Body offset of `chunk[0]`.
    chunk_offset: u64,
    eof: bool,
    state: State,
    event: Vec<u8>,
    max_event_bytes: usize,
    query_end_time: Option<String>,
    arrays: Vec<EventType>,
}

impl<R: BodyReader> SiemScanner<R> {
    /// `max_event_bytes`: items larger than this are not kept whole (see
    /// `ScannedEvent::oversized`), so memory stays bounded whatever arrives.
    pub fn new(reader: R, max_event_bytes: usize) -> Self {
        SiemScanner {
            reader,
            chunk: Vec::new(),
            pos: 0,
            chunk_offset: 0,
            eof: false,
            state: State::Start,
            event: Vec::new(),
            max_event_bytes: max_event_bytes.max(1),
            query_end_time: None,
            arrays: Vec::new(),
        }
    }

    /// `queryEndTime` as sent (`None` if absent or `null`). Complete once
    /// `next_event` returned `Ok(None)`.
    pub fn query_end_time(&self) -> Option<&str> {
        self.query_end_time.as_deref()
    }

    /// The event arrays met so far, in body order.
    pub fn arrays(&self) -> &[EventType] {
        &self.arrays
    }

    /// Bytes the scanner holds right now (its chunk and the current event).
    pub fn buffered_capacity(&self) -> usize {
        self.chunk.capacity() + self.event.capacity()
    }

    /// Bytes of the body read so far.
    pub fn offset(&self) -> u64 {
        self.chunk_offset + self.pos as u64
    }

    fn malformed<T>(&self, what: impl Into<String>) -> Result<T, ScanError> {
        Err(ScanError::Malformed {
            at: self.offset(),
            what: what.into(),
        })
    }

    /// Make sure a byte is available at `pos`; false at the end of the body.
    fn fill(&mut self) -> Result<bool, ScanError> {
        while self.pos >= self.chunk.len() {
            if self.eof {
                return Ok(false);
            }
            match self.reader.next_chunk()? {
                Some(chunk) => {
                    self.chunk_offset += self.chunk.len() as u64;
                    self.chunk = chunk;
                    self.pos = 0;
                }
                None => self.eof = true,
            }
        }
        Ok(true)
    }

    /// The next byte that is not JSON whitespace, not consumed.
    fn peek_token(&mut self) -> Result<Option<u8>, ScanError> {
        loop {
            if !self.fill()? {
                return Ok(None);
            }
            let rest = &self.chunk[self.pos..];
            match rest
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            {
                Some(i) => {
                    self.pos += i;
                    return Ok(Some(self.chunk[self.pos]));
                }
                None => self.pos = self.chunk.len(),
            }
        }
    }

    /// The next token byte, which must be there.
    fn next_token(&mut self) -> Result<u8, ScanError> {
        match self.peek_token()? {
            Some(b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(ScanError::Truncated { at: self.offset() }),
        }
    }

    fn next_byte(&mut self) -> Result<u8, ScanError> {
        if !self.fill()? {
            return Err(ScanError::Truncated { at: self.offset() });
        }
        let b = self.chunk[self.pos];
        self.pos += 1;
        Ok(b)
    }

    fn expect_literal(&mut self, literal: &[u8]) -> Result<(), ScanError> {
        for &want in literal {
            let got = self.next_byte()?;
            if got != want {
                return self.malformed(format!("expected `{}`", String::from_utf8_lossy(literal)));
            }
        }
        Ok(())
    }

    /// A strict JSON string after its opening quote, decoded.
    fn read_string(&mut self) -> Result<String, ScanError> {
        let mut out: Vec<u8> = Vec::new();
        loop {
            let b = self.next_byte()?;
            match b {
                b'"' => break,
                b'\\' => match self.next_byte()? {
                    b'"' => out.push(b'"'),
                    b'\\' => out.push(b'\\'),
                    b'/' => out.push(b'/'),
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'u' => {
                        let mut code = 0u32;
                        for _ in 0..4 {
                            let h = self.next_byte()?;
                            let digit = match (h as char).to_digit(16) {
                                Some(d) => d,
                                None => return self.malformed("a bad \\u escape"),
                            };
                            code = code * 16 + digit;
                        }
                        // Surrogates are not worth pairing in a key.
                        let c = char::from_u32(code).unwrap_or('\u{fffd}');
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    _ => return self.malformed("a bad escape in a string"),
                },
                0..=0x1f => return self.malformed("a control character in a string"),
                _ => out.push(b),
            }
            if out.len() > MAX_TOP_LEVEL_STRING {
                return self.malformed(format!(
                    "a top-level string longer than {MAX_TOP_LEVEL_STRING} bytes"
                ));
            }
        }
        String::from_utf8(out).or_else(|_| self.malformed("a string that is not UTF-8"))
    }

    /// The next array item, or `None` after the whole body was read and found
    /// complete.
    pub fn next_event(&mut self) -> Result<Option<ScannedEvent<'_>>, ScanError> {
        loop {
            match self.state {
                State::Start => {
                    // A UTF-8 byte-order mark before the body: RFC 8259 lets
                    // a parser ignore it, and refusing it would fail every
                    // retry of the window.
                    if self.offset() == 0 && self.fill()? && self.chunk[self.pos] == 0xEF {
                        self.pos += 1;
                        self.expect_literal(&[0xBB, 0xBF])?;
                    }
                    match self.next_token()? {
                        b'{' => {}
                        _ => {
                            self.pos -= 1;
                            return self.malformed("the body is not a JSON object");
                        }
                    }
                    if self.peek_token()? == Some(b'}') {
                        self.pos += 1;
                        self.state = State::End;
                    } else {
                        self.state = State::Key;
                    }
                }
                State::Key => {
                    if self.next_token()? != b'"' {
                        return self.malformed("expected a member name");
                    }
                    let key = self.read_string()?;
                    if self.next_token()? != b':' {
                        return self.malformed("expected `:` after a member name");
                    }
                    if key == "queryEndTime" {
                        match self.peek_token()? {
                            Some(b'"') => {
                                self.pos += 1;
                                self.query_end_time = Some(self.read_string()?);
                            }
                            Some(b'n') => self.expect_literal(b"null")?,
                            Some(_) => return self.malformed("`queryEndTime` is not a string"),
                            None => return Err(ScanError::Truncated { at: self.offset() }),
                        }
                        self.state = State::AfterMember;
                    } else if let Some(t) = EventType::ALL.into_iter().find(|t| t.array() == key) {
                        match self.peek_token()? {
                            Some(b'[') => {
                                self.pos += 1;
                                self.arrays.push(t);
                                self.state = State::ArrayStart(t);
                            }
                            Some(b'n') => {
                                self.expect_literal(b"null")?;
                                self.state = State::AfterMember;
                            }
                            Some(_) => {
                                return self.malformed(format!("`{key}` is not a list"));
                            }
                            None => return Err(ScanError::Truncated { at: self.offset() }),
                        }
                    } else {
                        // Something the connector does not use: step over it.
                        self.skip_value()?;
                        self.state = State::AfterMember;
                    }
                }
                State::AfterMember => match self.next_token()? {
                    b',' => self.state = State::Key,
                    b'}' => self.state = State::End,
                    _ => {
                        self.pos -= 1;
                        return self.malformed("expected `,` or `}` after a member");
                    }
                },
                State::ArrayStart(t) => {
                    if self.peek_token()? == Some(b']') {
                        self.pos += 1;
                        self.state = State::AfterMember;
                    } else {
                        self.state = State::ArrayAfterItem(t);
                        return self.capture(t).map(Some);
                    }
                }
                State::ArrayAfterItem(t) => match self.next_token()? {
                    b',' => {
                        if self.peek_token()? == Some(b']') {
                            return self.malformed("a `,` before `]`");
                        }
                        return self.capture(t).map(Some);
                    }
                    b']' => self.state = State::AfterMember,
                    _ => {
                        self.pos -= 1;
                        return self.malformed("expected `,` or `]` after an event");
                    }
                },
                State::End => {
                    return match self.peek_token()? {
                        None => Ok(None),
                        Some(_) => self.malformed("text after the end of the JSON object"),
                    };
                }
            }
        }
    }

    /// Find where the value starting at the next token ends, keeping (up to
    /// `max_event_bytes` of) its bytes in `event`.
    fn capture(&mut self, event_type: EventType) -> Result<ScannedEvent<'_>, ScanError> {
        let offset = self.offset();
        self.event.clear();
        let mut hasher: Option<Sha256> = None;
        let mut len: u64 = 0;
        self.walk_value(
            |segment, event, max, hasher| {
                len += segment.len() as u64;
                if hasher.is_none() && event.len() + segment.len() > max {
                    let mut h = Sha256::new();
                    h.update(&*event);
                    *hasher = Some(h);
                }
                match hasher {
                    None => event.extend_from_slice(segment),
                    Some(h) => {
                        h.update(segment);
                        let room = max.saturating_sub(event.len());
                        event.extend_from_slice(&segment[..room.min(segment.len())]);
                    }
                }
            },
            &mut hasher,
        )?;
        let oversized = hasher.map(|h| Oversized {
            len,
            sha256: h.finalize().into(),
        });
        Ok(ScannedEvent {
            event_type,
            bytes: &self.event,
            offset,
            oversized,
        })
    }

    /// Step over a value without keeping it.
    fn skip_value(&mut self) -> Result<(), ScanError> {
        self.walk_value(|_, _, _, _| {}, &mut None)
    }

    /// Walk one JSON value structurally, handing each piece of it to `sink`
    /// (with the event buffer, `max_event_bytes` and the hasher).
    fn walk_value(
        &mut self,
        mut sink: impl FnMut(&[u8], &mut Vec<u8>, usize, &mut Option<Sha256>),
        hasher: &mut Option<Sha256>,
    ) -> Result<(), ScanError> {
        let first = match self.peek_token()? {
            Some(b) => b,
            None => return Err(ScanError::Truncated { at: self.offset() }),
        };
        #[derive(Clone, Copy)]
        enum Kind {
            Nested,
            Str,
            Scalar,
        }
        let kind = match first {
            b'{' | b'[' => Kind::Nested,
            b'"' => Kind::Str,
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => Kind::Scalar,
            _ => return self.malformed(format!("a value cannot start with byte 0x{first:02x}")),
        };
        let mut depth: u64 = 0;
        let mut in_string = false;
        let mut escaped = false;
        // The string kind starts on its opening quote like a nested value's
        // strings do; it ends when that string closes at depth 0.
        loop {
            if !self.fill()? {
                return Err(ScanError::Truncated { at: self.offset() });
            }
            let start = self.pos;
            let rest = &self.chunk[start..];
            let mut end = None;
            match kind {
                Kind::Scalar => {
                    end = rest.iter().position(|b| {
                        matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
                    });
                    // A scalar ends before its terminator; `end` is exclusive.
                    if let Some(i) = end {
                        sink(&rest[..i], &mut self.event, self.max_event_bytes, hasher);
                        self.pos = start + i;
                        return Ok(());
                    }
                }
                Kind::Nested | Kind::Str => {
                    for (i, &b) in rest.iter().enumerate() {
                        if in_string {
                            if escaped {
                                escaped = false;
                            } else if b == b'\\' {
                                escaped = true;
                            } else if b == b'"' {
                                in_string = false;
                                if depth == 0 {
                                    end = Some(i + 1);
                                    break;
                                }
                            }
                        } else {
                            match b {
                                b'"' => in_string = true,
                                b'{' | b'[' => depth += 1,
                                b'}' | b']' => {
                                    depth = depth.saturating_sub(1);
                                    if depth == 0 {
                                        end = Some(i + 1);
                                        break;
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    if let Some(i) = end {
                        sink(&rest[..i], &mut self.event, self.max_event_bytes, hasher);
                        self.pos = start + i;
                        return Ok(());
                    }
                }
            }
            sink(rest, &mut self.event, self.max_event_bytes, hasher);
            self.pos = self.chunk.len();
        }
    }

    /// Read to the end, keeping every item (for tests).
    #[cfg(test)]
    pub fn collect_all(&mut self) -> Result<Vec<(EventType, Vec<u8>)>, ScanError> {
        let mut events = Vec::new();
        while let Some(e) = self.next_event()? {
            events.push((e.event_type, e.bytes.to_vec()));
        }
        Ok(events)
    }
}

/// Check one item's bytes strictly: UTF-8 and exactly one JSON value.
/// Returns it as raw JSON, or why it is not JSON.
pub fn check_event(bytes: &[u8]) -> Result<&RawValue, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "the event is not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        )
    })?;
    serde_json::from_str::<&RawValue>(text)
        .map_err(|e| format!("the event is not valid JSON ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::InMemoryBody;

    type Scanned = (Option<String>, Vec<(EventType, String)>);

    fn scan(body: &[u8], chunk: usize) -> Result<Scanned, ScanError> {
        let mut scanner = SiemScanner::new(InMemoryBody::new(body.to_vec(), chunk), 1 << 20);
        let events = scanner.collect_all()?;
        Ok((
            scanner.query_end_time().map(str::to_string),
            events
                .into_iter()
                .map(|(t, b)| (t, String::from_utf8_lossy(&b).into_owned()))
                .collect(),
        ))
    }

    const BODY: &str = r#" {"queryEndTime" : "2024-10-11T14:34:53Z",
        "messagesDelivered":[ {"a":"x}]\"{[","b":[1,{"c":null}]} , {"GUID":"g"}],
        "messagesBlocked": [],
        "extra": {"deep": [1, 2, {"x": "]"}]},
        "clicksPermitted" :[ "s,]", 42 , -1.5e3,true,null,[ ]],
        "clicksBlocked":null }
    "#;

    #[test]
    fn every_chunk_size_gives_the_same_items_byte_for_byte() {
        let expected = vec![
            (
                EventType::MessageDelivered,
                r#"{"a":"x}]\"{[","b":[1,{"c":null}]}"#.to_string(),
            ),
            (EventType::MessageDelivered, r#"{"GUID":"g"}"#.to_string()),
            (EventType::ClickPermitted, r#""s,]""#.to_string()),
            (EventType::ClickPermitted, "42".to_string()),
            (EventType::ClickPermitted, "-1.5e3".to_string()),
            (EventType::ClickPermitted, "true".to_string()),
            (EventType::ClickPermitted, "null".to_string()),
            (EventType::ClickPermitted, "[ ]".to_string()),
        ];
        for chunk in [1, 2, 3, 5, 7, 64, 4096] {
            let (q, events) = scan(BODY.as_bytes(), chunk).unwrap();
            assert_eq!(q.as_deref(), Some("2024-10-11T14:34:53Z"), "chunk {chunk}");
            assert_eq!(events, expected, "chunk {chunk}");
        }
    }

    #[test]
    fn offsets_point_at_the_items() {
        let mut s = SiemScanner::new(InMemoryBody::new(BODY.as_bytes().to_vec(), 3), 1 << 20);
        while let Some(e) = s.next_event().unwrap() {
            let at = e.offset as usize;
            assert_eq!(&BODY.as_bytes()[at..at + e.bytes.len()], e.bytes);
        }
        assert_eq!(
            s.arrays(),
            &[
                EventType::MessageDelivered,
                EventType::MessageBlocked,
                EventType::ClickPermitted
            ]
        );
    }

    #[test]
    fn every_cut_of_a_body_is_truncated_or_malformed_never_complete() {
        let body = BODY.trim_end().as_bytes();
        for cut in 0..body.len() {
            for chunk in [1, 4, 1000] {
                let r = scan(&body[..cut], chunk);
                assert!(
                    matches!(r, Err(ScanError::Truncated { .. })),
                    "cut at {cut} (chunk {chunk}): {r:?}"
                );
            }
        }
        assert!(scan(body, 4).is_ok());
    }

    #[test]
    fn top_level_damage_is_an_error() {
        for body in [
            &b"<html>gateway timeout</html>"[..],
            b"[]",
            b"{\"messagesBlocked\": {}}",
            b"{\"messagesBlocked\": 3}",
            b"{\"queryEndTime\":\"x\",\"messagesBlocked\":[1,2]]}",
            b"{\"queryEndTime\":\"x\"} {}",
            b"{\"queryEndTime\":\"x\",}",
            b"{\"queryEndTime\":\"x\",\"messagesBlocked\":[1,]}",
            b"{\"queryEndTime\":\"x\",\"messagesBlocked\":[1 2]}",
            b"{\"queryEndTime\":\"x\",\"messagesBlocked\":[{},\x01{}]}",
            b"{\"queryEndTime\":\"x\",\"messagesBlocked\":[{}\xff,{}]}",
            b"{\"queryEndTime\":\"2024\x01\"}",
            b"{\"queryEndTime\":17}",
            b"{queryEndTime:1}",
            b"\xff\xfe",
        ] {
            let r = scan(body, 3);
            assert!(
                matches!(r, Err(ScanError::Malformed { .. })),
                "{:?}: {r:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(matches!(scan(b"", 3), Err(ScanError::Truncated { .. })));
    }

    #[test]
    fn a_damaged_event_keeps_its_extent_and_the_rest_is_read() {
        // Stray bytes inside an event (in a string and between its tokens):
        // the event still ends where its brackets close.
        let body = b"{\"queryEndTime\":\"x\",\"messagesBlocked\":[{\"a\":\"b\x01c\"},{\"a\":\xff1},{\"ok\":1}]}";
        let (_, events) = scan(body, 2).unwrap();
        assert_eq!(events.len(), 3);
        let raw: Vec<Vec<u8>> = SiemScanner::new(InMemoryBody::new(body.to_vec(), 5), 1 << 20)
            .collect_all()
            .unwrap()
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        assert!(check_event(&raw[0]).unwrap_err().contains("not valid JSON"));
        assert!(check_event(&raw[1]).unwrap_err().contains("not UTF-8"));
        assert_eq!(check_event(&raw[2]).unwrap().get(), "{\"ok\":1}");
        assert!(check_event(b"{\"a\":1} x").is_err());
        assert!(check_event(b"{\"a\":[}").is_err());
    }

    #[test]
    fn oversized_events_keep_a_prefix_their_length_and_hash() {
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(10_000));
        let body = format!("{{\"queryEndTime\":\"x\",\"clicksBlocked\":[{big},{{\"small\":1}}]}}");
        let mut s = SiemScanner::new(InMemoryBody::new(body.into_bytes(), 333), 1000);
        let e = s.next_event().unwrap().unwrap();
        assert_eq!(e.bytes.len(), 1000);
        assert_eq!(e.bytes, &big.as_bytes()[..1000]);
        let o = e.oversized.unwrap();
        assert_eq!(o.len, big.len() as u64);
        assert_eq!(o.sha256, <[u8; 32]>::from(Sha256::digest(big.as_bytes())));
        let e = s.next_event().unwrap().unwrap();
        assert_eq!(e.bytes, b"{\"small\":1}");
        assert!(e.oversized.is_none());
        assert!(s.next_event().unwrap().is_none());
        assert!(s.buffered_capacity() < 4000, "{}", s.buffered_capacity());
    }

    #[test]
    fn a_transport_error_mid_body_is_reported() {
        struct Broken(u8);
        impl BodyReader for Broken {
            fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
                self.0 += 1;
                match self.0 {
                    1 => Ok(Some(
                        b"{\"queryEndTime\":\"x\",\"clicksBlocked\":[{}".to_vec(),
                    )),
                    _ => Err(TransportError::Failed("connection reset".into())),
                }
            }
        }
        let mut s = SiemScanner::new(Broken(0), 100);
        assert!(s.next_event().unwrap().is_some());
        assert_eq!(
            s.next_event().unwrap_err(),
            ScanError::Transport(TransportError::Failed("connection reset".into()))
        );
    }
}
