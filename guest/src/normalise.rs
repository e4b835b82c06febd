//! ECS-style normalised fields for one TAP SIEM event.
//!
//! They go beside the raw event in the Syslog record; the raw event itself is
//! never changed, so nothing is lost by normalising. Proofpoint's
//! documentation and its live API disagree on several field names and types
//! (`shared/design/TAP-API.md`), so every field accepts both shapes. A field
//! that is null, empty or of an unexpected type is left out rather than
//! failing the event: one odd field must not cost the record. Only an event
//! that is not an object, or has no parseable event time, is refused.
//!
//! Output is nested JSON (`{"email": {"sender": {"address": ..}}}`), not
//! dotted keys.

use std::borrow::Cow;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::json::{Json, Object};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The four SIEM event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EventType {
    MessageBlocked,
    MessageDelivered,
    ClickBlocked,
    ClickPermitted,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::MessageBlocked,
        EventType::MessageDelivered,
        EventType::ClickBlocked,
        EventType::ClickPermitted,
    ];

    /// The singular name records use: `messageBlocked`, `clickPermitted`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::MessageBlocked => "messageBlocked",
            EventType::MessageDelivered => "messageDelivered",
            EventType::ClickBlocked => "clickBlocked",
            EventType::ClickPermitted => "clickPermitted",
        }
    }

    /// The SIEM response array holding this type: `messagesBlocked`, ...
    pub fn array(self) -> &'static str {
        match self {
            EventType::MessageBlocked => "messagesBlocked",
            EventType::MessageDelivered => "messagesDelivered",
            EventType::ClickBlocked => "clicksBlocked",
            EventType::ClickPermitted => "clicksPermitted",
        }
    }

    /// The type whose response array is named `name` (`messagesBlocked`, ...).
    pub fn from_array(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.array() == name)
    }

    pub fn is_click(self) -> bool {
        matches!(self, EventType::ClickBlocked | EventType::ClickPermitted)
    }

    /// The field holding the event's own time.
    pub fn time_field(self) -> &'static str {
        if self.is_click() {
            "clickTime"
        } else {
            "messageTime"
        }
    }

    /// `event.action`.
    pub fn action(self) -> &'static str {
        match self {
            EventType::MessageBlocked | EventType::ClickBlocked => "blocked",
            EventType::MessageDelivered => "delivered",
            EventType::ClickPermitted => "permitted",
        }
    }
}

/// The normalised fields of `event`, an item of the SIEM array of
/// `event_type`, borrowing its text where it needs no change. Err only when
/// `event` is not an object or its event time (`messageTime` / `clickTime`)
/// is missing or not RFC 3339.
pub fn normalise<'j>(event_type: EventType, event: &'j Json<'_>) -> Result<Normalised<'j>, String> {
    let event = event
        .as_object()
        .ok_or_else(|| format!("the {} event is not a JSON object", event_type.as_str()))?;
    let time_field = event_type.time_field();
    let event_time_ms = match event.get(time_field) {
        None | Some(Json::Null) => return Err(format!("the event has no `{time_field}`")),
        Some(Json::String(text)) => epoch_ms_of(text)
            .ok_or_else(|| format!("`{time_field}` is not an RFC 3339 time: {text:?}"))?,
        Some(_) => return Err(format!("`{time_field}` is not a string")),
    };
    let click = event_type.is_click();
    let clicked = |key: &str| if click { text(event.get(key)) } else { None };
    let threat = if click {
        Threat::from_click(event).into_iter().collect()
    } else {
        message_threats(event.get("threatsInfoMap"))
    };
    // Proofpoint files an event under the later of its own time and its
    // threat's identification: that is when the event was created for us.
    let latest_threat_ms = threat.iter().filter_map(|t| t.time_ms).max();
    let created_ms = latest_threat_ms.map_or(event_time_ms, |t| t.max(event_time_ms));
    Ok(Normalised {
        timestamp: event_time_ms,
        client: clicked("clickIP").map(|ip| Ip { ip }),
        email: Email::of(event),
        event: EventFields {
            action: event_type.action(),
            category: ["email"],
            created: created_ms,
            kind: "alert",
        },
        proofpoint: Proofpoint::of(event),
        source: text(event.get("senderIP")).map(|ip| Ip { ip }),
        threat,
        url: clicked("url").map(|original| Original { original }),
        user_agent: clicked("userAgent").map(|original| Original { original }),
    })
}

/// RFC 3339 (`2022-03-21T07:52:11.000Z`, fraction optional) as epoch ms.
pub fn epoch_ms_of(text: &str) -> Option<i64> {
    let time = OffsetDateTime::parse(text.trim(), &Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Text taken from the event: borrowed when it needs no change.
type Text<'a> = Cow<'a, str>;

/// The normalised fields of one event, nested as they are stored:
/// `{"email": {"sender": {"address": ..}}, ...}`. Serialized field order is
/// alphabetical at every level (the order records have always had), and an
/// absent or empty field is left out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Normalised<'a> {
    /// The event's own time, epoch ms: the record's `timestamp`, which the
    /// record writes itself.
    #[serde(skip)]
    pub timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<Ip<'a>>,
    #[serde(skip_serializing_if = "Email::is_empty")]
    pub email: Email<'a>,
    pub event: EventFields,
    #[serde(skip_serializing_if = "Proofpoint::is_empty")]
    pub proofpoint: Proofpoint<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Ip<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub threat: Vec<Threat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Original<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<Original<'a>>,
}

impl Normalised<'_> {
    /// The fields as a JSON object, `timestamp` included.
    pub fn to_map(&self) -> Map<String, Value> {
        let Ok(Value::Object(mut map)) = serde_json::to_value(self) else {
            unreachable!("a struct serializes to an object");
        };
        map.insert("timestamp".into(), self.timestamp.into());
        map
    }

    /// Writes the fields into a struct being serialized (a record body).
    pub fn serialize_fields<S: SerializeStruct>(&self, out: &mut S) -> Result<(), S::Error> {
        if let Some(client) = &self.client {
            out.serialize_field("client", client)?;
        }
        if !self.email.is_empty() {
            out.serialize_field("email", &self.email)?;
        }
        out.serialize_field("event", &self.event)?;
        if !self.proofpoint.is_empty() {
            out.serialize_field("proofpoint", &self.proofpoint)?;
        }
        if let Some(source) = &self.source {
            out.serialize_field("source", source)?;
        }
        if !self.threat.is_empty() {
            out.serialize_field("threat", &self.threat)?;
        }
        if let Some(url) = &self.url {
            out.serialize_field("url", url)?;
        }
        if let Some(user_agent) = &self.user_agent {
            out.serialize_field("user_agent", user_agent)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ip<'a> {
    pub ip: Text<'a>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Original<'a> {
    pub original: Text<'a>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventFields {
    pub action: &'static str,
    pub category: [&'static str; 1],
    /// The later of the event's time and its threats' identification.
    pub created: i64,
    pub kind: &'static str,
}

/// `{"address": [..]}` (`from`, `to`, `cc`, `reply_to`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Addresses<'a> {
    pub address: Vec<Text<'a>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Recipient<'a> {
    pub addresses: Vec<Text<'a>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sender<'a> {
    pub address: Text<'a>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Email<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cc: Option<Addresses<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Addresses<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<Recipient<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Addresses<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<Sender<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Addresses<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_mailer: Option<Text<'a>>,
}

impl<'a> Email<'a> {
    fn of(event: &'a Object<'_>) -> Email<'a> {
        let list = |key: &str| {
            let address = address_list(event.get(key));
            (!address.is_empty()).then_some(Addresses { address })
        };
        // A list for messages, a single string for clicks.
        let addresses = address_list(event.get("recipient"));
        Email {
            attachments: attachments(event.get("messageParts")),
            cc: list("ccAddresses"),
            from: list("fromAddress"),
            message_id: message_id(event.get("messageID")),
            recipient: (!addresses.is_empty()).then_some(Recipient { addresses }),
            reply_to: list("replyToAddress"),
            sender: address(event.get("sender")).map(|address| Sender { address }),
            subject: text(event.get("subject")),
            to: list("toAddresses"),
            x_mailer: text(event.get("xmailer")),
        }
    }

    fn is_empty(&self) -> bool {
        *self == Email::default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Quarantine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folder: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Text<'a>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scores {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impostor: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub malware: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phish: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spam: Option<Number>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Proofpoint<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completely_rewritten: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guid: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_size: Option<Number>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub modules_run: Vec<Text<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy_routes: Vec<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qid: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Quarantine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<Scores>,
}

impl<'a> Proofpoint<'a> {
    fn of(event: &'a Object<'_>) -> Proofpoint<'a> {
        let scores = Scores {
            impostor: number(event.get("impostorScore")),
            malware: number(event.get("malwareScore")),
            phish: number(event.get("phishScore")),
            spam: number(event.get("spamScore")),
        };
        let quarantine = Quarantine {
            folder: text(event.get("quarantineFolder")),
            rule: text(event.get("quarantineRule")),
        };
        Proofpoint {
            cluster: text(first_present(event, &["cluster", "clusterId"])),
            completely_rewritten: boolean(event.get("completelyRewritten")),
            guid: text(event.get("GUID")),
            id: text(event.get("id")),
            message_size: number(event.get("messageSize")),
            modules_run: text_list(event.get("modulesRun")),
            policy_routes: text_list(event.get("policyRoutes")),
            qid: text(event.get("QID")),
            quarantine: (quarantine != Quarantine::default()).then_some(quarantine),
            scores: (scores != Scores::default()).then_some(scores),
        }
    }

    fn is_empty(&self) -> bool {
        *self == Proofpoint::default()
    }
}

/// One threat, from a `threatsInfoMap[]` item or from a click's flat fields.
/// Serialized in alphabetical key order; sorted by id (then the rest) so a
/// message's threats come out in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Threat<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classification: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Text<'a>>,
    #[serde(rename = "time", skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<i64>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Text<'a>>,
}

impl<'a> Threat<'a> {
    /// `value_field` holds what was found malicious: `threat` in a message's
    /// threat, the clicked `url` in a click.
    fn from_fields(fields: &'a Object<'_>, value_field: &str) -> Threat<'a> {
        Threat {
            id: text(first_present(fields, &["threatID", "threatId"])),
            value: text(fields.get(value_field)),
            url: text(first_present(fields, &["threatUrl", "threatURL"])),
            status: lower_text(fields.get("threatStatus")),
            classification: lower_text(fields.get("classification")),
            kind: lower_text(fields.get("threatType")),
            campaign_id: text(first_present(fields, &["campaignID", "campaignId"])),
            time_ms: fields
                .get("threatTime")
                .and_then(Json::as_str)
                .and_then(epoch_ms_of),
        }
    }

    fn from_click(click: &'a Object<'_>) -> Option<Threat<'a>> {
        let mut threat = Threat::from_fields(click, "url");
        if threat.is_empty() {
            return None;
        }
        // Clicks carry no `threatType`: what was clicked is always a URL.
        threat.kind.get_or_insert(Cow::Borrowed("url"));
        Some(threat)
    }

    fn is_empty(&self) -> bool {
        *self == Threat::default()
    }

    /// The order threats are listed in: id, value, url, status,
    /// classification, type, campaign, time.
    fn sort_key(&self) -> impl Ord + '_ {
        (
            &self.id,
            &self.value,
            &self.url,
            &self.status,
            &self.classification,
            &self.kind,
            &self.campaign_id,
            self.time_ms,
        )
    }
}

fn message_threats<'a>(threats_info_map: Option<&'a Json<'_>>) -> Vec<Threat<'a>> {
    let Some(Json::Array(items)) = threats_info_map else {
        return Vec::new();
    };
    let mut threats: Vec<Threat> = items
        .iter()
        .filter_map(Json::as_object)
        .map(|item| Threat::from_fields(item, "threat"))
        .filter(|threat| !threat.is_empty())
        .collect();
    threats.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    threats.dedup();
    threats
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Hash<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Text<'a>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct File<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<Hash<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Text<'a>>,
}

/// One `messageParts[]` item. Sorted by sha256, then name, since Proofpoint
/// lists parts in random order.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Attachment<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<File<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_status: Option<Text<'a>>,
}

impl<'a> Attachment<'a> {
    fn from_part(part: &'a Object<'_>) -> Attachment<'a> {
        let hash = Hash {
            md5: lower_text(part.get("md5")),
            sha256: lower_text(part.get("sha256")),
        };
        let file = File {
            hash: (hash != Hash::default()).then_some(hash),
            mime_type: text(first_present(part, &["contentType", "oContentType"])),
            name: text(part.get("filename")),
        };
        Attachment {
            file: (file != File::default()).then_some(file),
            sandbox_status: text(part.get("sandboxStatus")),
        }
    }

    /// sha256, name, md5, mime type, sandbox status.
    fn sort_key(&self) -> impl Ord + '_ {
        let file = self.file.as_ref();
        let hash = file.and_then(|f| f.hash.as_ref());
        (
            hash.and_then(|h| h.sha256.as_ref()),
            file.and_then(|f| f.name.as_ref()),
            hash.and_then(|h| h.md5.as_ref()),
            file.and_then(|f| f.mime_type.as_ref()),
            self.sandbox_status.as_ref(),
        )
    }
}

fn attachments<'a>(message_parts: Option<&'a Json<'_>>) -> Vec<Attachment<'a>> {
    let Some(Json::Array(parts)) = message_parts else {
        return Vec::new();
    };
    let mut attachments: Vec<Attachment> = parts
        .iter()
        .filter_map(Json::as_object)
        .map(Attachment::from_part)
        .filter(|attachment| *attachment != Attachment::default())
        .collect();
    attachments.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    attachments
}

/// The first of `keys` whose value is not null: the live and documented
/// spellings of one field.
fn first_present<'v, 'a>(fields: &'v Object<'a>, keys: &[&str]) -> Option<&'v Json<'a>> {
    keys.iter()
        .filter_map(|key| fields.get(key))
        .find(|value| !value.is_null())
}

/// A string field, trimmed; None when absent, not a string or blank.
fn text<'v>(value: Option<&'v Json<'_>>) -> Option<Text<'v>> {
    let trimmed = value?.as_str()?.trim();
    (!trimmed.is_empty()).then_some(Cow::Borrowed(trimmed))
}

/// `text` in lower case (copied only when it has capitals).
fn lower(text: Text<'_>) -> Text<'_> {
    if text.is_ascii() && !text.bytes().any(|b| b.is_ascii_uppercase()) {
        text
    } else {
        Cow::Owned(text.to_lowercase())
    }
}

/// Enumerations (`classification`, `threatType`, `threatStatus`) and hashes:
/// the documented shape is upper case, the live one lower case.
fn lower_text<'v>(value: Option<&'v Json<'_>>) -> Option<Text<'v>> {
    text(value).map(lower)
}

/// An email address, lower-cased and trimmed (the raw event keeps the original).
fn address<'v>(value: Option<&'v Json<'_>>) -> Option<Text<'v>> {
    lower_text(value)
}

/// An address list: an array of strings, or a single string (a click's
/// `recipient`, the documented `fromAddress`). Blank and repeated entries are
/// dropped; order is kept.
fn address_list<'v>(value: Option<&'v Json<'_>>) -> Vec<Text<'v>> {
    let mut addresses: Vec<Text> = text_list(value).into_iter().map(lower).collect();
    // Lists are short: a quadratic check beats a set here.
    let mut kept = 0;
    for i in 0..addresses.len() {
        if !addresses[..kept].contains(&addresses[i]) {
            addresses.swap(kept, i);
            kept += 1;
        }
    }
    addresses.truncate(kept);
    addresses
}

/// An array of strings or a single string, trimmed, blanks and non-strings dropped.
fn text_list<'v>(value: Option<&'v Json<'_>>) -> Vec<Text<'v>> {
    match value {
        Some(Json::Array(items)) => items.iter().filter_map(|item| text(Some(item))).collect(),
        Some(single @ Json::String(_)) => text(Some(single)).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// `messageID` without the angle brackets mail headers wrap it in.
fn message_id<'v>(value: Option<&'v Json<'_>>) -> Option<Text<'v>> {
    let id = value?.as_str()?.trim();
    let unwrapped = id
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
        .unwrap_or(id)
        .trim();
    (!unwrapped.is_empty()).then_some(Cow::Borrowed(unwrapped))
}

/// A JSON number; a whole float (`0.0`, as the live API sends
/// `impostorScore`) becomes an integer so both shapes normalise alike.
fn number(value: Option<&Json<'_>>) -> Option<Number> {
    let Json::Number(number) = value? else {
        return None;
    };
    if number.is_i64() || number.is_u64() {
        return Some(number.clone());
    }
    let float = number.as_f64()?;
    // Beyond 2^53 a float no longer holds every integer exactly.
    if float.fract() == 0.0 && float.abs() < 9_007_199_254_740_992.0 {
        Some((float as i64).into())
    } else {
        Number::from_f64(float)
    }
}

/// `completelyRewritten`: a boolean live, `"true"`/`"false"`/`"na"` documented.
fn boolean(value: Option<&Json<'_>>) -> Option<bool> {
    match value? {
        Json::Bool(flag) => Some(*flag),
        Json::String(text) => match text.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The normalised fields as a JSON object (what the tests look into).
    fn normalise(event_type: EventType, event: &Value) -> Result<Map<String, Value>, String> {
        let text = event.to_string();
        let json = Json::parse(&text).expect("a Value is JSON");
        super::normalise(event_type, &json).map(|n| n.to_map())
    }
    use serde_json::json;

    const FIXTURES: [(&str, EventType, &str); 4] = [
        (
            "message_delivered",
            EventType::MessageDelivered,
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/fixtures/tap/elastic/message_delivered.ndjson"
            )),
        ),
        (
            "message_blocked",
            EventType::MessageBlocked,
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/fixtures/tap/elastic/message_blocked.ndjson"
            )),
        ),
        (
            "clicks_blocked",
            EventType::ClickBlocked,
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/fixtures/tap/elastic/clicks_blocked.ndjson"
            )),
        ),
        (
            "clicks_permitted",
            EventType::ClickPermitted,
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/fixtures/tap/elastic/clicks_permitted.ndjson"
            )),
        ),
    ];

    /// Line `line` (1-based) of fixture `file`, parsed.
    fn fixture_event(file: &str, line: usize) -> (EventType, Value) {
        let (_, event_type, text) = FIXTURES
            .iter()
            .find(|(name, _, _)| *name == file)
            .expect("known fixture");
        let line = text.lines().nth(line - 1).expect("line exists");
        (
            *event_type,
            serde_json::from_str(line).expect("fixture line is JSON"),
        )
    }

    fn normalised_line(file: &str, line: usize) -> Map<String, Value> {
        let (event_type, event) = fixture_event(file, line);
        normalise(event_type, &event).expect("fixture event normalises")
    }

    /// The value at dotted `path`, or Null when any step is missing.
    fn at<'v>(fields: &'v Map<String, Value>, path: &str) -> &'v Value {
        let mut keys = path.split('.');
        let first = keys.next().expect("non-empty path");
        let mut node = fields.get(first).unwrap_or(&Value::Null);
        for key in keys {
            node = node.get(key).unwrap_or(&Value::Null);
        }
        node
    }

    fn ms(text: &str) -> i64 {
        epoch_ms_of(text).expect("test time parses")
    }

    #[test]
    fn event_type_names() {
        assert_eq!(EventType::MessageBlocked.as_str(), "messageBlocked");
        assert_eq!(EventType::MessageDelivered.as_str(), "messageDelivered");
        assert_eq!(EventType::ClickBlocked.as_str(), "clickBlocked");
        assert_eq!(EventType::ClickPermitted.as_str(), "clickPermitted");
        assert_eq!(
            EventType::from_array("messagesBlocked"),
            Some(EventType::MessageBlocked)
        );
        assert_eq!(
            EventType::from_array("messagesDelivered"),
            Some(EventType::MessageDelivered)
        );
        assert_eq!(
            EventType::from_array("clicksBlocked"),
            Some(EventType::ClickBlocked)
        );
        assert_eq!(
            EventType::from_array("clicksPermitted"),
            Some(EventType::ClickPermitted)
        );
        assert_eq!(EventType::from_array("messageBlocked"), None);
        assert_eq!(EventType::from_array("queryEndTime"), None);
    }

    #[test]
    fn every_fixture_event_normalises() {
        let mut events = 0;
        for (file, event_type, text) in FIXTURES {
            for (index, line) in text.lines().enumerate() {
                let value: Value = serde_json::from_str(line).expect("fixture line is JSON");
                // Whole (empty) API responses are not events.
                if value.get("queryEndTime").is_some() {
                    continue;
                }
                let fields = normalise(event_type, &value)
                    .unwrap_or_else(|e| panic!("{file} line {}: {e}", index + 1));
                let time_field = event_type.time_field();
                let event_time = value[time_field].as_str().expect("fixture time");
                assert_eq!(at(&fields, "timestamp"), &json!(ms(event_time)));
                assert_eq!(at(&fields, "event.action"), event_type.action());
                assert!(
                    at(&fields, "threat")
                        .as_array()
                        .is_some_and(|t| !t.is_empty()),
                    "{file} line {}: no threat",
                    index + 1
                );
                events += 1;
            }
        }
        assert_eq!(events, 8 + 6 + 5 + 4);
    }

    #[test]
    fn message_delivered_full_event() {
        let fields = normalised_line("message_delivered", 5);
        assert_eq!(
            at(&fields, "email.sender.address"),
            "xyz-abc.us1_152023242.13741304-5fabcd4567@example.com"
        );
        assert_eq!(
            at(&fields, "email.from.address"),
            &json!(["client.services@example.com"])
        );
        assert_eq!(
            at(&fields, "email.recipient.addresses"),
            &json!(["abc.xyz@example.com"])
        );
        assert_eq!(
            at(&fields, "email.to.address"),
            &json!(["abc.xyz@example.com"])
        );
        assert_eq!(
            at(&fields, "email.cc.address"),
            &Value::Null,
            "empty list omitted"
        );
        assert_eq!(
            at(&fields, "email.reply_to.address"),
            &json!(["client.services@example.com"])
        );
        assert_eq!(
            at(&fields, "email.subject"),
            "Speakers Announced | Ecosystem Days Summit"
        );
        assert_eq!(
            at(&fields, "email.message_id"),
            "200c524xyz1234xyz12343.5fc4b29057.20210428135110.a1234993344.dxyz1234@example.com"
        );
        assert_eq!(
            at(&fields, "email.x_mailer"),
            "Mailchimp Mailer - **CIxxxxxxxxx1234**"
        );

        // Source order is text.html, text.txt; same sha256, so sorted by name.
        let attachments = at(&fields, "email.attachments")
            .as_array()
            .expect("attachments");
        assert_eq!(attachments.len(), 2);
        let names: Vec<&Value> = attachments.iter().map(|a| &a["file"]["name"]).collect();
        assert_eq!(names, [&json!("text.html"), &json!("text.txt")]);
        assert_eq!(attachments[0]["file"]["mime_type"], "text/html");
        assert_eq!(
            attachments[0]["file"]["hash"]["sha256"],
            "a591a6d40bf420404a011733cfb7b190d62c65bf0bcda32b57b277d9ad9f146e"
        );
        assert_eq!(
            attachments[0]["file"]["hash"]["md5"],
            "b10a8db164e0754105b7a99be72e3fe5"
        );
        assert_eq!(
            attachments[0].get("sandbox_status"),
            None,
            "null sandboxStatus omitted"
        );

        assert_eq!(at(&fields, "source.ip"), "175.16.199.1");
        assert_eq!(
            at(&fields, "url.original"),
            &Value::Null,
            "messages have no url"
        );

        let threats = at(&fields, "threat").as_array().expect("threats");
        assert_eq!(threats.len(), 1);
        let threat = &threats[0];
        assert_eq!(
            threat["id"],
            "xxxxxx425eaxxxxxxee41d9e81xxxxxxf24a96e48f6e6xxxxxxxxxxxx123456f"
        );
        assert_eq!(threat["status"], "active");
        assert_eq!(threat["classification"], "phish");
        assert_eq!(threat["type"], "url");
        assert_eq!(threat["value"], "https://example.com/view/xpxxxx6uxxxxx9y");
        assert_eq!(
            threat["url"],
            "https://threatinsight.proofpoint.com/3183a23b-d9c3-1234-1234-2babcd123478/threat/email/9fxxxxxxxxxee41d94deabcd1234e9ff24axxxxxxxxxxc5b843f"
        );
        assert_eq!(threat.get("campaign_id"), None, "null campaignID omitted");
        assert_eq!(threat["time"], json!(ms("2022-04-01T18:44:01.050Z")));

        assert_eq!(
            at(&fields, "proofpoint.scores"),
            &json!({"spam": 0, "phish": 0, "malware": 0, "impostor": 0})
        );
        assert_eq!(
            at(&fields, "proofpoint.guid"),
            "RxkxxxxxlxzxkxnxxxxDxrxwxxxxx6"
        );
        assert_eq!(at(&fields, "proofpoint.qid"), "2XX29XX029XXXX38XXX6");
        assert_eq!(
            at(&fields, "proofpoint.id"),
            "5xxxxxx6x7-xxxxx123-xxxxx-xxxxx1234"
        );
        assert_eq!(at(&fields, "proofpoint.cluster"), "example_hosted");
        assert_eq!(at(&fields, "proofpoint.completely_rewritten"), true);
        assert_eq!(at(&fields, "proofpoint.quarantine"), &Value::Null);
        assert_eq!(
            at(&fields, "proofpoint.policy_routes"),
            &json!(["default_inbound"])
        );
        assert_eq!(
            at(&fields, "proofpoint.modules_run"),
            &json!([
                "av",
                "zerohour",
                "spf",
                "dkimv",
                "spam",
                "pdr",
                "urldefense"
            ])
        );
        assert_eq!(at(&fields, "proofpoint.message_size"), 68402);

        assert_eq!(
            at(&fields, "timestamp"),
            &json!(ms("2022-03-15T15:00:20.000Z"))
        );
        // The threat was identified after the message arrived.
        assert_eq!(
            at(&fields, "event.created"),
            &json!(ms("2022-04-01T18:44:01.050Z"))
        );
        assert_eq!(at(&fields, "event.kind"), "alert");
        assert_eq!(at(&fields, "event.category"), &json!(["email"]));
        assert_eq!(at(&fields, "event.action"), "delivered");
    }

    #[test]
    fn message_delivered_sparse_event() {
        let fields = normalised_line("message_delivered", 1);
        assert_eq!(
            at(&fields, "email.sender.address"),
            &Value::Null,
            "\"\" sender omitted"
        );
        assert_eq!(
            at(&fields, "email.message_id"),
            &Value::Null,
            "\"\" messageID omitted"
        );
        assert_eq!(at(&fields, "email.subject"), &Value::Null);
        assert_eq!(at(&fields, "email.from"), &Value::Null);
        assert_eq!(at(&fields, "email.attachments"), &Value::Null);
        assert_eq!(at(&fields, "proofpoint.qid"), &Value::Null);
        assert_eq!(at(&fields, "proofpoint.policy_routes"), &Value::Null);
        // Lower-cased.
        assert_eq!(
            at(&fields, "email.recipient.addresses"),
            &json!(["fhsvbui8axxxxxxui8abc256326@example.com"])
        );
        // The float 0.0 normalises to the integer 0.
        assert_eq!(at(&fields, "proofpoint.scores.impostor"), &json!(0));
        assert_eq!(at(&fields, "proofpoint.message_size"), 0);

        // Two threats, sorted by id.
        let threats = at(&fields, "threat").as_array().expect("threats");
        let ids: Vec<&Value> = threats.iter().map(|t| &t["id"]).collect();
        assert_eq!(
            ids,
            [
                &json!("aaabcdefg123456f009971a9c193abcdefg123456bf5abcdefg1234566"),
                &json!("b7exxxxxxxx0d10xxxxxxe2xxxxxxxxxxxx81cxxxxxx034ac9cxxxxxxxxxxxxb"),
            ]
        );
        assert_eq!(threats[0]["classification"], "phish");
        assert_eq!(threats[1]["classification"], "spam");
        // event.created is the latest of the two threat times.
        assert_eq!(
            at(&fields, "timestamp"),
            &json!(ms("2022-01-05T10:05:56.020Z"))
        );
        assert_eq!(
            at(&fields, "event.created"),
            &json!(ms("2022-03-29T18:48:33.000Z"))
        );
    }

    #[test]
    fn message_blocked_events() {
        let fields = normalised_line("message_blocked", 1);
        assert_eq!(at(&fields, "email.sender.address"), "info@example.com");
        assert_eq!(
            at(&fields, "email.message_id"),
            "3f208x0sga-1@m0116781.example.com"
        );
        assert_eq!(at(&fields, "email.x_mailer"), "Microsoft Outlook 16.0");
        assert_eq!(at(&fields, "threat")[0]["classification"], "malware");
        assert_eq!(
            at(&fields, "threat")[0]["id"],
            "dhgonvjabcdefghijkabcdefghijkabcdefghijkabcdefghijkhlonvjdsabcdefgh"
        );
        assert_eq!(at(&fields, "proofpoint.scores.malware"), 100);
        assert_eq!(at(&fields, "proofpoint.completely_rewritten"), false);
        assert_eq!(at(&fields, "event.action"), "blocked");

        let fields = normalised_line("message_blocked", 4);
        assert_eq!(
            at(&fields, "email.to.address"),
            &json!(["mail@example.com", "abc@example.com"])
        );
        assert_eq!(
            at(&fields, "email.recipient.addresses"),
            &json!(["mailer-daemon@example.com"])
        );
        assert_eq!(
            at(&fields, "proofpoint.policy_routes"),
            &json!(["default_inbound", "allow_relay"])
        );
        assert_eq!(at(&fields, "proofpoint.scores.spam"), 100);
        assert_eq!(at(&fields, "proofpoint.scores.phish"), 100);
        let threats = at(&fields, "threat").as_array().expect("threats");
        let ids: Vec<&Value> = threats.iter().map(|t| &t["id"]).collect();
        assert_eq!(
            ids,
            [
                &json!("124563bcdefghijkabcdefghi201256abcdefghijk201256aswe20abc"),
                &json!("cfdhgondhgonvjdsdefghjikhlonvjdsvsbnvjd56546ghjikhlonvjdsvsbnvjd"),
            ]
        );
        // Five parts, one sha256: sorted by name, repeats kept.
        let names: Vec<&str> = at(&fields, "email.attachments")
            .as_array()
            .expect("attachments")
            .iter()
            .map(|a| a["file"]["name"].as_str().expect("name"))
            .collect();
        assert_eq!(
            names,
            [
                "image001.png",
                "text.html",
                "text.html",
                "text.txt",
                "text.txt"
            ]
        );
        assert_eq!(
            at(&fields, "event.created"),
            &json!(ms("2022-01-01T05:02:48.832Z"))
        );
    }

    #[test]
    fn click_blocked_event() {
        let fields = normalised_line("clicks_blocked", 1);
        assert_eq!(at(&fields, "email.sender.address"), "abc123@example.com");
        // A click's recipient is a single string; normalised to a list.
        assert_eq!(
            at(&fields, "email.recipient.addresses"),
            &json!(["123abc@example.com"])
        );
        assert_eq!(
            at(&fields, "email.message_id"),
            "12345678912345.12345.mail@example.com"
        );
        assert_eq!(
            at(&fields, "url.original"),
            "https://www.example.com/?name=john"
        );
        assert_eq!(at(&fields, "client.ip"), "89.160.20.112");
        assert_eq!(at(&fields, "source.ip"), "81.2.69.143");
        assert!(at(&fields, "user_agent.original")
            .as_str()
            .is_some_and(|agent| agent.starts_with("Mozilla/5.0 (Windows NT 10.0")));
        assert_eq!(
            at(&fields, "proofpoint.guid"),
            "x11xxxx1-12f9-111x-x12x-1x1x123456xx"
        );
        assert_eq!(
            at(&fields, "proofpoint.id"),
            "8760d0fc-78a4-4ab0-9355-2e3cdd155f1d"
        );
        assert_eq!(at(&fields, "proofpoint.scores"), &Value::Null);

        let threats = at(&fields, "threat").as_array().expect("threats");
        assert_eq!(threats.len(), 1);
        let threat = &threats[0];
        assert_eq!(
            threat["id"],
            "3xx97xx852c66a7xx761450xxxxxx9f4ffab74715b591294f78b5e37a76481xx"
        );
        assert_eq!(threat["status"], "active");
        assert_eq!(threat["classification"], "phish");
        assert_eq!(threat["type"], "url");
        assert_eq!(threat["value"], "https://www.example.com/?name=john");
        assert_eq!(threat["url"], "https://www.abc.com/?name=john");
        assert_eq!(
            threat["campaign_id"],
            "46x01x8x-x899-404x-xxx9-111xx393d1x7"
        );
        assert_eq!(threat["time"], json!(ms("2022-03-18T14:54:20.000Z")));

        // The threat was known before the click: created = click time.
        assert_eq!(
            at(&fields, "timestamp"),
            &json!(ms("2022-03-21T07:52:11.000Z"))
        );
        assert_eq!(
            at(&fields, "event.created"),
            &json!(ms("2022-03-21T07:52:11.000Z"))
        );
        assert_eq!(at(&fields, "event.action"), "blocked");
    }

    #[test]
    fn click_permitted_events() {
        let fields = normalised_line("clicks_permitted", 1);
        // Upper-case MALWARE in the documentation example.
        assert_eq!(at(&fields, "threat")[0]["classification"], "malware");
        assert_eq!(
            at(&fields, "threat")[0]["id"],
            "61f7622xx1x6x7x1x4xxxxxxxxxxx4xdbaxxxxxxxxxxx5xex3xbxxxxxdxfx5xxxxx0"
        );
        assert_eq!(
            at(&fields, "email.recipient.addresses"),
            &json!(["example.abc@example.com"])
        );
        assert_eq!(at(&fields, "event.action"), "permitted");

        let fields = normalised_line("clicks_permitted", 2);
        assert_eq!(
            at(&fields, "timestamp"),
            &json!(ms("2022-03-21T20:39:37.000Z"))
        );
        // Here the threat was identified after the click.
        assert_eq!(
            at(&fields, "event.created"),
            &json!(ms("2022-03-30T10:05:57.000Z"))
        );

        let fields = normalised_line("clicks_permitted", 3);
        assert_eq!(at(&fields, "threat")[0]["status"], "cleared");
        assert_eq!(at(&fields, "threat")[0]["classification"], "spam");
    }

    /// Rewrite a live-shape event in the documented shape, field by field.
    fn documented_shape(live: &Value) -> Value {
        fn rename(object: &mut Map<String, Value>, from: &str, to: &str) {
            if let Some(value) = object.remove(from) {
                object.insert(to.to_string(), value);
            }
        }
        fn upper(object: &mut Map<String, Value>, key: &str) {
            if let Some(Value::String(text)) = object.get_mut(key) {
                *text = text.to_uppercase();
            }
        }
        let mut event = live.as_object().expect("object").clone();
        rename(&mut event, "cluster", "clusterId");
        rename(&mut event, "threatID", "threatId");
        upper(&mut event, "classification");
        if let Some(Value::Array(from)) = event.get("fromAddress") {
            assert_eq!(from.len(), 1, "the documented shape holds one address");
            event.insert("fromAddress".to_string(), from[0].clone());
        }
        if let Some(Value::Bool(flag)) = event.get("completelyRewritten") {
            event.insert("completelyRewritten".to_string(), flag.to_string().into());
        }
        if let Some(score) = event.get("impostorScore").and_then(Value::as_f64) {
            event.insert("impostorScore".to_string(), (score as i64).into());
        }
        if let Some(Value::Array(threats)) = event.get_mut("threatsInfoMap") {
            for threat in threats.iter_mut().filter_map(Value::as_object_mut) {
                rename(threat, "threatID", "threatId");
                rename(threat, "campaignID", "campaignId");
                upper(threat, "classification");
                upper(threat, "threatType");
                upper(threat, "threatStatus");
            }
        }
        Value::Object(event)
    }

    #[test]
    fn documented_and_live_shapes_normalise_alike() {
        for (file, line) in [
            ("message_blocked", 4),
            ("message_delivered", 1),
            ("message_delivered", 6),
            ("clicks_permitted", 1),
            ("clicks_blocked", 4),
        ] {
            let (event_type, mut live) = fixture_event(file, line);
            // Give the live campaign id a value, so its renaming is exercised.
            if let Some(Value::Array(threats)) = live.get_mut("threatsInfoMap") {
                threats[0]["campaignID"] = json!("campaign-1");
            }
            let documented = documented_shape(&live);
            assert_ne!(documented, live, "{file} line {line}: the shapes differ");
            let from_live = normalise(event_type, &live).expect("live shape");
            let from_documented = normalise(event_type, &documented).expect("documented shape");
            assert_eq!(from_documented, from_live, "{file} line {line}");
        }
        // And the fields the rewrite touched are there.
        let (event_type, live) = fixture_event("message_blocked", 4);
        let fields = normalise(event_type, &documented_shape(&live)).expect("documented");
        assert_eq!(at(&fields, "proofpoint.cluster"), "pharmtech_hosted");
        assert_eq!(
            at(&fields, "email.from.address"),
            &json!(["abc@example.com"])
        );
        assert_eq!(at(&fields, "proofpoint.completely_rewritten"), false);
        assert_eq!(at(&fields, "threat")[0]["classification"], "phish");
        assert_eq!(at(&fields, "threat")[0]["type"], "url");
    }

    #[test]
    fn documented_spellings_by_hand() {
        let event = json!({
            "messageTime": "2016-06-24T21:18:38Z",
            "sender": "  Bad.Actor@Example.COM ",
            "fromAddress": "Bad.Actor@Example.COM",
            "recipient": ["User@Example.com", "", "user@example.com", null, 7],
            "clusterId": "pharmtech_hosted",
            "completelyRewritten": "na",
            "impostorScore": 0.5,
            "messageID": "<ABC@example.com>",
            "threatsInfoMap": [{
                "threatId": "t-1",
                "campaignId": "c-1",
                "classification": "MALWARE",
                "threatType": "ATTACHMENT",
                "threatStatus": "active",
                "threatTime": "2016-06-24T21:18:07.123+01:00",
                "threatUrl": "https://threatinsight.proofpoint.com/t-1",
                "threat": "evil.exe"
            }],
        });
        let fields = normalise(EventType::MessageDelivered, &event).expect("normalises");
        assert_eq!(at(&fields, "email.sender.address"), "bad.actor@example.com");
        assert_eq!(
            at(&fields, "email.from.address"),
            &json!(["bad.actor@example.com"])
        );
        // Blank, repeated and non-string entries dropped.
        assert_eq!(
            at(&fields, "email.recipient.addresses"),
            &json!(["user@example.com"])
        );
        assert_eq!(at(&fields, "proofpoint.cluster"), "pharmtech_hosted");
        assert_eq!(
            at(&fields, "proofpoint.completely_rewritten"),
            &Value::Null,
            "\"na\" is no answer"
        );
        assert_eq!(at(&fields, "proofpoint.scores.impostor"), 0.5);
        assert_eq!(at(&fields, "email.message_id"), "ABC@example.com");
        let threat = &at(&fields, "threat")[0];
        assert_eq!(threat["id"], "t-1");
        assert_eq!(threat["campaign_id"], "c-1");
        assert_eq!(threat["classification"], "malware");
        assert_eq!(threat["type"], "attachment");
        assert_eq!(threat["value"], "evil.exe");
        // 21:18:07.123+01:00 is 20:18:07.123Z, before the message.
        assert_eq!(threat["time"], json!(ms("2016-06-24T20:18:07.123Z")));
        assert_eq!(
            at(&fields, "timestamp"),
            &json!(ms("2016-06-24T21:18:38.000Z"))
        );
        assert_eq!(at(&fields, "event.created"), at(&fields, "timestamp"));
    }

    #[test]
    fn wrong_types_are_skipped_not_fatal() {
        let event = json!({
            "messageTime": "2024-10-11T14:00:00.5Z",
            "sender": 42,
            "recipient": {"to": "x@example.com"},
            "toAddresses": "",
            "subject": ["not", "text"],
            "messageID": "<>",
            "spamScore": "high",
            "messageSize": null,
            "completelyRewritten": 1,
            "policyRoutes": [null, "", 3],
            "threatsInfoMap": ["not an object", {}, {"threatID": null}],
            "messageParts": [1, null, {}, {"filename": "  "}],
            "GUID": {"nested": true},
            "cluster": null,
            "clusterId": "fallback_cluster",
        });
        let fields = normalise(EventType::MessageBlocked, &event).expect("tolerated");
        let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
        assert_eq!(keys, ["event", "proofpoint", "timestamp"]);
        assert_eq!(
            fields["proofpoint"],
            json!({"cluster": "fallback_cluster"}),
            "a null live field falls back to the documented one"
        );
        assert_eq!(fields["timestamp"], json!(ms("2024-10-11T14:00:00.500Z")));
        assert_eq!(fields["event"]["created"], fields["timestamp"]);
    }

    #[test]
    fn refuses_non_objects_and_missing_times() {
        let cases = [
            (json!([1, 2]), "not a JSON object"),
            (json!({"sender": "a@example.com"}), "no `messageTime`"),
            (json!({"messageTime": null}), "no `messageTime`"),
            (json!({"messageTime": 1_700_000_000}), "not a string"),
            (json!({"messageTime": "yesterday"}), "not an RFC 3339 time"),
            (
                json!({"messageTime": "2024-10-11 14:00:00"}),
                "not an RFC 3339 time",
            ),
            // A click's time is clickTime, not messageTime.
            (
                json!({"messageTime": "2024-10-11T14:00:00Z"}),
                "no `clickTime`",
            ),
        ];
        for (index, (event, expected)) in cases.iter().enumerate() {
            let event_type = if index == cases.len() - 1 {
                EventType::ClickPermitted
            } else {
                EventType::MessageDelivered
            };
            let error = normalise(event_type, event).expect_err("refused");
            assert!(error.contains(expected), "{event}: {error}");
        }
    }
}
