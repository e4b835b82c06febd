//! SIEM query-string parsing. Done by hand rather than with a serde
//! extractor because `threatType` and `threatStatus` may repeat, and because
//! "none or several window parameters" must be told apart.

use crate::interval::{BadRequest, WindowSelector};
use crate::model::{ThreatMask, ThreatStatus, ThreatType};

/// A parsed SIEM request (the window is resolved later, against server time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiemQuery {
    pub window: WindowSelector,
    /// The (threat type, status) pairs the request asks for.
    pub threat_filter: ThreatMask,
}

pub const FORMAT_NOT_SUPPORTED: &str = "format not supported by simulator";

pub fn parse_siem_query(raw_query: Option<&str>) -> Result<SiemQuery, BadRequest> {
    let pairs = parse_pairs(raw_query.unwrap_or(""));

    let mut selectors = Vec::new();
    let mut threat_types = Vec::new();
    let mut threat_statuses = Vec::new();
    for (key, value) in &pairs {
        match key.as_str() {
            "interval" => selectors.push(WindowSelector::Interval(value.clone())),
            "sinceTime" => selectors.push(WindowSelector::SinceTime(value.clone())),
            "sinceSeconds" => selectors.push(WindowSelector::SinceSeconds(value.clone())),
            "format" => match value.as_str() {
                v if v.eq_ignore_ascii_case("json") => {}
                // The real API streams syslog lines; nothing we test reads them.
                v if v.eq_ignore_ascii_case("syslog") => {
                    return Err(BadRequest::new(FORMAT_NOT_SUPPORTED))
                }
                other => return Err(BadRequest(format!("Invalid format: {other:?}"))),
            },
            "threatType" => {
                for item in value.split(',') {
                    threat_types.push(ThreatType::parse(item.trim()).ok_or_else(|| {
                        BadRequest(format!(
                            "Invalid threatType: {item:?} (expected url, attachment or messageText)"
                        ))
                    })?);
                }
            }
            "threatStatus" => {
                for item in value.split(',') {
                    threat_statuses.push(ThreatStatus::parse(item.trim()).ok_or_else(|| {
                        BadRequest(format!(
                            "Invalid threatStatus: {item:?} (expected active, cleared or falsePositive)"
                        ))
                    })?);
                }
            }
            // Like most HTTP APIs, unknown parameters are ignored.
            _ => {}
        }
    }

    if selectors.len() != 1 {
        return Err(BadRequest::new(
            "Exactly one of interval, sinceTime or sinceSeconds must be given",
        ));
    }
    if threat_types.is_empty() {
        threat_types.extend(ThreatType::ALL);
    }
    if threat_statuses.is_empty() {
        threat_statuses.extend([ThreatStatus::Active, ThreatStatus::Cleared]);
    }
    Ok(SiemQuery {
        window: selectors.remove(0),
        threat_filter: ThreatMask::product(&threat_types, &threat_statuses),
    })
}

/// `a=1&b=2` into decoded pairs, in order (form decoding: `+` is a space).
pub fn parse_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+`; malformed escapes are kept as written.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(query: &str) -> String {
        parse_siem_query(Some(query)).expect_err("expected a 400").0
    }

    #[test]
    fn exactly_one_window_parameter() {
        assert!(bad("").starts_with("Exactly one"));
        assert!(bad("threatType=url").starts_with("Exactly one"));
        assert!(
            bad("sinceSeconds=60&interval=PT1H/2020-01-01T00:00:00Z").starts_with("Exactly one")
        );
        assert!(bad("sinceSeconds=60&sinceSeconds=120").starts_with("Exactly one"));
        let q = parse_siem_query(Some("sinceSeconds=60&other=1")).unwrap();
        assert_eq!(q.window, WindowSelector::SinceSeconds("60".into()));
        assert_eq!(q.threat_filter, ThreatMask::default_filter());
    }

    #[test]
    fn filters_repeat_and_combine() {
        let q = parse_siem_query(Some(
            "sinceSeconds=60&threatType=url&threatType=attachment&threatStatus=falsePositive",
        ))
        .unwrap();
        assert_eq!(
            q.threat_filter,
            ThreatMask::product(
                &[ThreatType::Url, ThreatType::Attachment],
                &[ThreatStatus::FalsePositive]
            )
        );
        assert!(bad("sinceSeconds=60&threatType=virus").starts_with("Invalid threatType"));
        assert!(bad("sinceSeconds=60&threatStatus=").starts_with("Invalid threatStatus"));
    }

    #[test]
    fn format() {
        assert!(parse_siem_query(Some("sinceSeconds=60&format=json")).is_ok());
        assert_eq!(bad("sinceSeconds=60&format=syslog"), FORMAT_NOT_SUPPORTED);
        assert!(bad("sinceSeconds=60&format=xml").starts_with("Invalid format"));
    }

    #[test]
    fn decoding() {
        assert_eq!(
            percent_decode("2024-01-01T00%3A00%3A00%2B01%3A00%2FPT1H"),
            "2024-01-01T00:00:00+01:00/PT1H"
        );
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(
            parse_pairs("a=1&&b&c=%3D"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "".into()),
                ("c".into(), "=".into())
            ]
        );
    }
}
