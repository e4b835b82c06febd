//! `--events FILE`: serve recorded events instead of generated ones.
//!
//! Each event keeps its exact JSON text. Time fields are located by byte
//! span (via borrowed `RawValue`s, whose text points into the original
//! line), so `--retime` can splice new values in without re-serialising —
//! key order, spacing and every other byte stay as recorded.

use std::collections::{BTreeMap, HashMap};
use std::ops::{ControlFlow, Range};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::value::RawValue;

use crate::model::{EventKind, ThreatMask, ThreatStatus, ThreatType};
use crate::random::rng_for;
use crate::source::{EventRef, EventSource, Visitor};
use crate::threats::{Category, ThreatInfo};
use crate::timestamp::{
    floor_ms, format_timestamp, ms_to_datetime, parse_timestamp, truncate_ms_to_format, StampFormat,
};

/// Keys that mark a line as a whole SIEM response rather than one event.
const RESPONSE_KEYS: [&str; 5] = [
    "messagesDelivered",
    "messagesBlocked",
    "clicksPermitted",
    "clicksBlocked",
    "queryEndTime",
];

/// Retimed events end this long before the simulator's start.
const RETIME_NEWEST_BEFORE_NOW_MS: i64 = 2 * 60_000;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// `Some((now_ms, history_ms))` to move the events next to `now`.
    pub retime: Option<(i64, i64)>,
    pub seed: u64,
    pub max_lag_ms: i64,
}

/// A time value inside an event's text.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TimeField {
    /// Byte range of the JSON string token, quotes included.
    span: Range<usize>,
    at_ms: i64,
    format: StampFormat,
}

/// What the Threat API needs from one threat reference in an event.
#[derive(Clone, Debug)]
struct ThreatRef {
    id: String,
    threat_type: ThreatType,
    category: Category,
    status: ThreatStatus,
    time_ms: Option<i64>,
    value: String,
    campaign_id: Option<String>,
}

/// An event as read, before retiming.
#[derive(Clone, Debug)]
struct ParsedEvent {
    kind: EventKind,
    text: String,
    times: Vec<TimeField>,
    threats: ThreatMask,
    threat_refs: Vec<ThreatRef>,
}

impl ParsedEvent {
    /// The later of the event's own time and its threat times.
    fn filed_ms(&self) -> i64 {
        self.times.iter().map(|t| t.at_ms).max().unwrap_or(i64::MIN)
    }
}

#[derive(Clone, Debug)]
pub struct LoadedEvent {
    pub kind: EventKind,
    pub filed_ms: i64,
    pub visible_ms: i64,
    pub threats: ThreatMask,
    pub json: String,
}

impl LoadedEvent {
    fn as_ref(&self) -> EventRef<'_> {
        EventRef {
            kind: self.kind,
            threats: self.threats,
            json: &self.json,
        }
    }
}

/// All events from the `--events` files, sorted by filed time.
pub struct LoadedEvents {
    events: Vec<LoadedEvent>,
    threats: HashMap<String, ThreatInfo>,
}

impl LoadedEvents {
    /// Loads files, each with the array its single-event lines belong to
    /// (`None`: every line must be a whole SIEM response).
    pub fn load(
        files: &[(PathBuf, Option<EventKind>)],
        options: &LoadOptions,
    ) -> Result<LoadedEvents> {
        let mut parsed = Vec::new();
        for (path, kind) in files {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read events file {}", path.display()))?;
            parsed.extend(parse_events_text(&text, path, *kind)?);
        }
        Ok(Self::from_parsed(parsed, options))
    }

    fn from_parsed(mut parsed: Vec<ParsedEvent>, options: &LoadOptions) -> LoadedEvents {
        if let Some((now_ms, history_ms)) = options.retime {
            if let Some(mapping) = RetimeMapping::for_events(&parsed, now_ms, history_ms) {
                for event in &mut parsed {
                    retime_event(event, &mapping);
                }
            }
        }

        let mut lag_rng = rng_for(&[options.seed, 0x6576_656e_7473]);
        let mut threats: HashMap<String, ThreatInfo> = HashMap::new();
        let mut events: Vec<LoadedEvent> = parsed
            .into_iter()
            .map(|event| {
                let filed_ms = event.filed_ms();
                for r in &event.threat_refs {
                    register_threat(&mut threats, r, filed_ms);
                }
                LoadedEvent {
                    kind: event.kind,
                    filed_ms,
                    visible_ms: filed_ms.saturating_add(lag_rng.gen_range(0..=options.max_lag_ms)),
                    threats: event.threats,
                    json: event.text,
                }
            })
            .collect();
        events.sort_by_key(|e| e.filed_ms);
        LoadedEvents { events, threats }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    #[cfg(test)]
    pub fn events(&self) -> &[LoadedEvent] {
        &self.events
    }

    /// Events filed in `[from_ms, to_ms)`.
    fn filed_between(&self, from_ms: i64, to_ms: i64) -> &[LoadedEvent] {
        let lo = self.events.partition_point(|e| e.filed_ms < from_ms);
        let hi = self.events.partition_point(|e| e.filed_ms < to_ms).max(lo);
        &self.events[lo..hi]
    }
}

fn register_threat(registry: &mut HashMap<String, ThreatInfo>, r: &ThreatRef, filed_ms: i64) {
    let time_ms = r.time_ms.unwrap_or(filed_ms);
    registry
        .entry(r.id.clone())
        .and_modify(|t| t.identified_at_ms = t.identified_at_ms.min(time_ms))
        .or_insert_with(|| ThreatInfo {
            id: r.id.clone(),
            threat_type: r.threat_type,
            category: r.category,
            status: r.status,
            identified_at_ms: time_ms,
            value: r.value.clone(),
            campaign_id: r.campaign_id.clone(),
        });
}

impl EventSource for LoadedEvents {
    fn visit_window(
        &self,
        kind: EventKind,
        from_ms: i64,
        to_ms: i64,
        now_ms: i64,
        order_seed: u64,
        visit: &mut Visitor<'_>,
    ) -> ControlFlow<()> {
        let mut matching: Vec<&LoadedEvent> = self
            .filed_between(from_ms, to_ms)
            .iter()
            .filter(|e| e.kind == kind && e.visible_ms <= now_ms)
            .collect();
        matching.shuffle(&mut rng_for(&[order_seed]));
        for event in matching {
            visit(event.as_ref())?;
        }
        ControlFlow::Continue(())
    }

    fn visit_visible(
        &self,
        from_ms: i64,
        to_ms: i64,
        now_ms: i64,
        visit: &mut Visitor<'_>,
    ) -> ControlFlow<()> {
        for event in self.filed_between(from_ms, to_ms) {
            if event.visible_ms <= now_ms {
                visit(event.as_ref())?;
            }
        }
        ControlFlow::Continue(())
    }

    fn threat(&self, id: &str) -> Option<ThreatInfo> {
        self.threats.get(id).cloned()
    }
}

/// Parses NDJSON text; `path` is only used in error messages.
fn parse_events_text(
    text: &str,
    path: &Path,
    single_event_kind: Option<EventKind>,
) -> Result<Vec<ParsedEvent>> {
    let mut events = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), index + 1);
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        let fields: BTreeMap<String, &RawValue> =
            serde_json::from_str(line).with_context(|| format!("{}: not a JSON object", at()))?;

        if RESPONSE_KEYS.iter().any(|k| fields.contains_key(*k)) {
            for kind in EventKind::ALL {
                let Some(array) = fields.get(kind.array_name()) else {
                    continue;
                };
                let items: Option<Vec<&RawValue>> = serde_json::from_str(array.get())
                    .with_context(|| format!("{}: {} is not an array", at(), kind.array_name()))?;
                for item in items.unwrap_or_default() {
                    events.push(
                        parse_event(kind, item.get())
                            .with_context(|| format!("{}: in {}", at(), kind.array_name()))?,
                    );
                }
            }
        } else if let Some(kind) = single_event_kind {
            events.push(parse_event(kind, line).with_context(at)?);
        } else {
            bail!(
                "{}: line is a single event, not a SIEM response (it has none of the keys \
                 messagesDelivered, messagesBlocked, clicksPermitted, clicksBlocked, queryEndTime); \
                 pass --events-type to say which array its events belong to",
                at()
            );
        }
    }
    Ok(events)
}

/// Reads one event: its time fields (with their byte spans) and threats.
fn parse_event(kind: EventKind, text: &str) -> Result<ParsedEvent> {
    let fields: BTreeMap<String, &RawValue> =
        serde_json::from_str(text).context("event is not a JSON object")?;
    let get_string = |map: &BTreeMap<String, &RawValue>, key: &str| -> Option<String> {
        map.get(key).and_then(|raw| {
            serde_json::from_str::<Option<String>>(raw.get())
                .ok()
                .flatten()
        })
    };
    let time_field = |raw: &RawValue, key: &str| -> Result<Option<TimeField>> {
        let Ok(Some(value)) = serde_json::from_str::<Option<String>>(raw.get()) else {
            return Ok(None);
        };
        let (at, format) = parse_timestamp(&value).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        // `raw` borrows from `text`, so the pointer difference is its offset.
        let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
        Ok(Some(TimeField {
            span: start..start + raw.get().len(),
            at_ms: floor_ms(at),
            format,
        }))
    };

    let mut times = Vec::new();
    for key in ["messageTime", "clickTime", "threatTime"] {
        if let Some(raw) = fields.get(key) {
            times.extend(time_field(raw, key)?);
        }
    }

    let mut threats = ThreatMask::default();
    let mut threat_refs = Vec::new();
    let mut add_threat = |entry: &BTreeMap<String, &RawValue>,
                          threat_type: Option<ThreatType>,
                          value_key: &str,
                          time_ms: Option<i64>| {
        let status = get_string(entry, "threatStatus")
            .and_then(|s| ThreatStatus::parse(&s))
            .unwrap_or(ThreatStatus::Active);
        match threat_type {
            Some(t) => threats.add(t, status),
            // An unknown type matches any threatType filter.
            None => ThreatType::ALL
                .into_iter()
                .for_each(|t| threats.add(t, status)),
        }
        if let Some(id) = get_string(entry, "threatID").or_else(|| get_string(entry, "threatId")) {
            threat_refs.push(ThreatRef {
                id,
                threat_type: threat_type.unwrap_or(ThreatType::Url),
                category: get_string(entry, "classification")
                    .and_then(|c| Category::parse(&c))
                    .unwrap_or(Category::Phish),
                status,
                time_ms,
                value: get_string(entry, value_key).unwrap_or_default(),
                campaign_id: get_string(entry, "campaignID")
                    .or_else(|| get_string(entry, "campaignId")),
            });
        }
    };

    if kind.is_message() {
        let entries: Vec<BTreeMap<String, &RawValue>> = match fields.get("threatsInfoMap") {
            Some(raw) => serde_json::from_str::<Option<Vec<_>>>(raw.get())
                .context("threatsInfoMap is not an array of objects")?
                .unwrap_or_default(),
            None => Vec::new(),
        };
        for entry in &entries {
            let time = match entry.get("threatTime") {
                Some(raw) => time_field(raw, "threatsInfoMap[].threatTime")?,
                None => None,
            };
            let time_ms = time.as_ref().map(|t| t.at_ms);
            times.extend(time);
            let threat_type = get_string(entry, "threatType").and_then(|t| ThreatType::parse(&t));
            add_threat(entry, threat_type, "threat", time_ms);
        }
    } else {
        let time_ms = fields
            .get("threatTime")
            .and_then(|raw| time_field(raw, "threatTime").ok().flatten())
            .map(|t| t.at_ms);
        add_threat(&fields, Some(ThreatType::Url), "url", time_ms);
    }
    if threats.is_empty() {
        // No threat information at all: served under the default filters.
        threats = ThreatMask::product(&ThreatType::ALL, &[ThreatStatus::Active]);
    }
    if times.is_empty() {
        bail!("event has no messageTime, clickTime or threatTime");
    }
    Ok(ParsedEvent {
        kind,
        text: text.to_string(),
        times,
        threats,
        threat_refs,
    })
}

/// The one mapping applied to every time field of every event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RetimeMapping {
    /// Add this many milliseconds (a whole number of seconds, so values
    /// written without fractions stay exact).
    Shift(i64),
    /// Map `[old_start, old_start + old_span]` linearly onto
    /// `[new_start, new_start + new_span]`.
    Compress {
        old_start: i64,
        old_span: i64,
        new_start: i64,
        new_span: i64,
    },
}

impl RetimeMapping {
    /// The newest filed time lands at `now - 2 min`; if the events span more
    /// than fits between `now - history` and that, they are compressed
    /// linearly onto it (order is preserved either way).
    fn for_events(events: &[ParsedEvent], now_ms: i64, history_ms: i64) -> Option<RetimeMapping> {
        let oldest = events.iter().map(ParsedEvent::filed_ms).min()?;
        let newest = events.iter().map(ParsedEvent::filed_ms).max()?;
        Some(Self::between(oldest, newest, now_ms, history_ms))
    }

    fn between(oldest: i64, newest: i64, now_ms: i64, history_ms: i64) -> RetimeMapping {
        let target_end = now_ms - RETIME_NEWEST_BEFORE_NOW_MS;
        let target_start = now_ms - history_ms;
        let room = target_end - target_start;
        if newest - oldest > room && room > 0 {
            RetimeMapping::Compress {
                old_start: oldest,
                old_span: newest - oldest,
                new_start: target_start,
                new_span: room,
            }
        } else {
            RetimeMapping::Shift((target_end - newest).div_euclid(1000) * 1000)
        }
    }

    fn apply(self, ms: i64) -> i64 {
        match self {
            RetimeMapping::Shift(delta) => ms + delta,
            RetimeMapping::Compress {
                old_start,
                old_span,
                new_start,
                new_span,
            } => {
                let scaled =
                    i128::from(ms - old_start) * i128::from(new_span) / i128::from(old_span);
                new_start + scaled as i64
            }
        }
    }
}

/// Rewrites every time field of `event` in place, each in its own style.
fn retime_event(event: &mut ParsedEvent, mapping: &RetimeMapping) {
    let mut fields = std::mem::take(&mut event.times);
    fields.sort_by_key(|f| f.span.start);
    let mut text = String::with_capacity(event.text.len());
    let mut copied_to = 0;
    for field in &mut fields {
        let new_ms = truncate_ms_to_format(mapping.apply(field.at_ms), field.format);
        text.push_str(&event.text[copied_to..field.span.start]);
        let new_start = text.len();
        text.push('"');
        text.push_str(&format_timestamp(ms_to_datetime(new_ms), field.format));
        text.push('"');
        copied_to = field.span.end;
        field.span = new_start..text.len();
        field.at_ms = new_ms;
    }
    text.push_str(&event.text[copied_to..]);
    for r in &mut event.threat_refs {
        r.time_ms = r
            .time_ms
            .map(|t| truncate_ms_to_format(mapping.apply(t), StampFormat::MILLIS_Z));
    }
    event.text = text;
    event.times = fields;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const DELIVERED: &str = r#"{"spamScore":0,"threatsInfoMap":[{"threatID":"aaa","threatStatus":"active","classification":"spam","threatTime":"2022-01-01T20:52:50.789Z","threat":"http://x.example.com","campaignID":null,"threatType":"url"},{"threatID":"bbb","threatStatus":"falsePositive","classification":"phish","threatTime":"2022-01-05T10:05:57Z","threatType":"attachment"}],"messageTime":"2022-01-05T10:05:56.020Z","id":"m1","GUID":"g1","recipient":["a@example.com"]}"#;
    const CLICK: &str = r#"{"url":"https://www.example.com/?q=1","classification":"phish","clickTime":"2022-03-21T20:39:37.000Z","threatTime":"2022-03-30T10:05:57.000Z","id":"c1","recipient":"abc@example.com","threatID":"ccc","threatStatus":"cleared"}"#;

    fn options() -> LoadOptions {
        LoadOptions {
            retime: None,
            seed: 1,
            max_lag_ms: 0,
        }
    }

    fn parse(text: &str, kind: Option<EventKind>) -> Result<Vec<ParsedEvent>> {
        parse_events_text(text, Path::new("events.ndjson"), kind)
    }

    #[test]
    fn response_lines_and_single_event_lines() {
        let response = format!(
            "{{\"queryEndTime\":\"2022-01-05T11:00:00Z\",\"messagesDelivered\":[{DELIVERED}],\"clicksBlocked\":[{CLICK}],\"messagesBlocked\":[]}}"
        );
        let text = format!("{response}\n\n  \r\n{CLICK}\n");
        let events = parse(&text, Some(EventKind::ClicksPermitted)).unwrap();
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::MessagesDelivered,
                EventKind::ClicksBlocked,
                EventKind::ClicksPermitted
            ]
        );
        // Byte-identical text.
        assert_eq!(events[0].text, DELIVERED);
        assert_eq!(events[2].text, CLICK);

        let empty = parse(
            "{\"queryEndTime\":\"2024-10-11T14:34:53Z\",\"messagesBlocked\":[]}",
            None,
        )
        .unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn single_event_without_type_names_file_and_line() {
        let err = parse(&format!("\n{CLICK}\n"), None).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("events.ndjson:2"), "{message}");
        assert!(message.contains("--events-type"), "{message}");

        let err = parse("{\"messagesDelivered\":[]}\nnot json\n", None).unwrap_err();
        assert!(format!("{err:#}").contains("events.ndjson:2"));
        let err = parse("{\"clickTime\":\"soon\"}", Some(EventKind::ClicksBlocked)).unwrap_err();
        assert!(format!("{err:#}").contains("clickTime"));
        let err = parse("{\"id\":1}", Some(EventKind::ClicksBlocked)).unwrap_err();
        assert!(format!("{err:#}").contains("no messageTime"));
    }

    #[test]
    fn filed_time_is_the_latest_time_field_and_threats_are_read() {
        let events = parse(DELIVERED, Some(EventKind::MessagesDelivered)).unwrap();
        let e = &events[0];
        assert_eq!(
            crate::timestamp::format_ms(e.filed_ms()),
            "2022-01-05T10:05:57.000Z"
        );
        assert!(e
            .threats
            .intersects(ThreatMask::of(ThreatType::Url, ThreatStatus::Active)));
        assert!(e.threats.intersects(ThreatMask::of(
            ThreatType::Attachment,
            ThreatStatus::FalsePositive
        )));
        assert!(!e
            .threats
            .intersects(ThreatMask::of(ThreatType::Attachment, ThreatStatus::Active)));

        let click = &parse(CLICK, Some(EventKind::ClicksPermitted)).unwrap()[0];
        assert_eq!(
            crate::timestamp::format_ms(click.filed_ms()),
            "2022-03-30T10:05:57.000Z"
        );
        assert_eq!(
            click.threats,
            ThreatMask::of(ThreatType::Url, ThreatStatus::Cleared)
        );
    }

    #[test]
    fn retime_shifts_every_time_field_keeping_formats() {
        let now = floor_ms(parse_timestamp("2024-06-01T12:00:00Z").unwrap().0);
        let parsed = parse(
            &format!("{DELIVERED}\n{CLICK}"),
            Some(EventKind::MessagesDelivered),
        )
        .unwrap();
        let loaded = LoadedEvents::from_parsed(
            parsed,
            &LoadOptions {
                retime: Some((now, 365 * 86_400_000)),
                ..options()
            },
        );
        let newest = loaded.events().iter().map(|e| e.filed_ms).max().unwrap();
        assert_eq!(newest, now - RETIME_NEWEST_BEFORE_NOW_MS);

        let click = loaded
            .events()
            .iter()
            .find(|e| e.json.contains("\"c1\""))
            .unwrap();
        let v: Value = serde_json::from_str(&click.json).unwrap();
        assert_eq!(v["threatTime"], "2024-06-01T11:58:00.000Z");
        // Shift preserved: the click was 8d 13h 26m 20s before its threat.
        assert_eq!(v["clickTime"], "2024-05-23T22:31:40.000Z");

        let message = loaded
            .events()
            .iter()
            .find(|e| e.json.contains("\"m1\""))
            .unwrap();
        let v: Value = serde_json::from_str(&message.json).unwrap();
        // Same shift, each value in its own format (millis or not).
        assert_eq!(v["threatsInfoMap"][1]["threatTime"], "2024-03-09T11:58:00Z");
        assert_eq!(v["messageTime"], "2024-03-09T11:57:59.020Z");
        assert_eq!(
            v["threatsInfoMap"][0]["threatTime"],
            "2024-03-05T22:44:53.789Z"
        );
        // Nothing else changed, key order included.
        let untouched = DELIVERED
            .replace("2022-01-01T20:52:50.789Z", "2024-03-05T22:44:53.789Z")
            .replace("2022-01-05T10:05:57Z", "2024-03-09T11:58:00Z")
            .replace("2022-01-05T10:05:56.020Z", "2024-03-09T11:57:59.020Z");
        assert_eq!(message.json, untouched);
        assert_eq!(
            message.filed_ms,
            floor_ms(parse_timestamp("2024-03-09T11:58:00Z").unwrap().0)
        );
    }

    #[test]
    fn retime_compresses_a_long_span_preserving_order() {
        let (oldest, newest) = (0, 100 * 3_600_000);
        let now = 1_000 * 3_600_000;
        let mapping = RetimeMapping::between(oldest, newest, now, 24 * 3_600_000);
        assert_eq!(mapping.apply(oldest), now - 24 * 3_600_000);
        assert_eq!(mapping.apply(newest), now - RETIME_NEWEST_BEFORE_NOW_MS);
        let mid = mapping.apply(newest / 2);
        assert!(mapping.apply(oldest) < mid && mid < mapping.apply(newest));

        let short = RetimeMapping::between(oldest, 3_600_000, now, 24 * 3_600_000);
        assert_eq!(
            short,
            RetimeMapping::Shift(now - RETIME_NEWEST_BEFORE_NOW_MS - 3_600_000)
        );
    }

    #[test]
    fn window_and_lag_in_file_mode() {
        let text = format!("{{\"messagesDelivered\":[{DELIVERED}]}}\n{CLICK}");
        let parsed = parse(&text, Some(EventKind::ClicksPermitted)).unwrap();
        let loaded = LoadedEvents::from_parsed(
            parsed,
            &LoadOptions {
                max_lag_ms: 30 * 60_000,
                ..options()
            },
        );
        let e = loaded
            .events()
            .iter()
            .find(|e| e.kind == EventKind::ClicksPermitted)
            .unwrap();
        assert!((0..=30 * 60_000).contains(&(e.visible_ms - e.filed_ms)));
        let count = |from: i64, to: i64, now: i64| {
            let mut n = 0;
            let _ = loaded.visit_window(EventKind::ClicksPermitted, from, to, now, 1, &mut |_| {
                n += 1;
                ControlFlow::Continue(())
            });
            n
        };
        assert_eq!(count(e.filed_ms, e.filed_ms + 60_000, e.visible_ms), 1);
        // Start inclusive, end exclusive.
        assert_eq!(count(e.filed_ms + 1, e.filed_ms + 60_000, e.visible_ms), 0);
        assert_eq!(count(e.filed_ms - 60_000, e.filed_ms, e.visible_ms), 0);
        if e.visible_ms > e.filed_ms {
            assert_eq!(count(e.filed_ms, e.filed_ms + 60_000, e.visible_ms - 1), 0);
        }
        assert!(loaded.threat("ccc").is_some());
        assert!(loaded.threat("bbb").is_some());
        assert!(loaded.threat("zzz").is_none());
    }
}
