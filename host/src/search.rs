//! `dphost search`: a small query language over the stored JSON records.
//!
//! A query is terms joined by AND (the word `AND` between terms is optional):
//! - `field:value` — the dotted path `field` (e.g. `email.sender.address`)
//!   holds `value`. Arrays on the way are searched element by element, so
//!   `email.recipient.addresses:bob@example.com` matches a list. Strings
//!   compare case-insensitively; `*` in the value is a wildcard; `field:*`
//!   only asks that the field exists. Quote values with spaces: `subject:"a b"`.
//! - `word` — any string in the record contains `word` (case-insensitively).

use anyhow::{bail, Result};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Field { path: Vec<String>, pattern: Pattern },
    Anywhere(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    Exists,
    Exact(String),
    /// Lower-cased pieces between `*`s.
    Wildcard(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    pub terms: Vec<Term>,
}

impl Query {
    pub fn parse(text: &str) -> Result<Query> {
        let mut terms = Vec::new();
        for token in tokenize(text)? {
            if token.eq_ignore_ascii_case("AND") {
                continue;
            }
            if token.eq_ignore_ascii_case("OR") || token.eq_ignore_ascii_case("NOT") {
                bail!("`{token}` is not supported: terms are joined by AND only");
            }
            terms.push(parse_term(&token)?);
        }
        Ok(Query { terms })
    }

    /// Substrings every matching record's raw JSON must contain, for the
    /// store's SQL prefilter. Only literal text that JSON encodes verbatim.
    pub fn prefilter(&self) -> Vec<String> {
        // SQLite's LIKE folds ASCII case only, and JSON escapes quotes,
        // backslashes and control characters: use only plain ASCII text.
        let verbatim = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| c.is_ascii_graphic() || c == ' ')
                && !s.contains(['"', '\\'])
        };
        let mut out = Vec::new();
        for t in &self.terms {
            match t {
                Term::Field {
                    pattern: Pattern::Exact(v),
                    ..
                }
                | Term::Anywhere(v)
                    if verbatim(v) =>
                {
                    out.push(v.clone())
                }
                Term::Field {
                    pattern: Pattern::Wildcard(parts),
                    ..
                } => {
                    if let Some(longest) =
                        parts.iter().filter(|p| verbatim(p)).max_by_key(|p| p.len())
                    {
                        out.push(longest.clone());
                    }
                }
                _ => {}
            }
        }
        out
    }

    pub fn matches(&self, record: &Value) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Field { path, pattern } => field_matches(record, path, pattern),
            Term::Anywhere(word) => any_string_contains(record, &word.to_lowercase()),
        })
    }
}

fn tokenize(text: &str) -> Result<Vec<String>> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => in_quotes = !in_quotes,
            '\\' if in_quotes => {
                if let Some(n) = chars.next() {
                    current.push(n);
                }
            }
            c if c.is_whitespace() && !in_quotes => {
                if !current.is_empty() {
                    tokens.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if in_quotes {
        bail!("unbalanced quote in query `{text}`");
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    Ok(tokens)
}

fn parse_term(token: &str) -> Result<Term> {
    let Some((field, value)) = token.split_once(':') else {
        return Ok(Term::Anywhere(token.to_string()));
    };
    if field.is_empty() {
        bail!("`{token}`: a field name is missing before ':'");
    }
    let path: Vec<String> = field.split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        bail!("`{field}` is not a valid dotted field path");
    }
    let pattern = if value == "*" {
        Pattern::Exists
    } else if value.contains('*') {
        Pattern::Wildcard(
            value
                .to_lowercase()
                .split('*')
                .map(str::to_string)
                .collect(),
        )
    } else {
        Pattern::Exact(value.to_string())
    };
    Ok(Term::Field { path, pattern })
}

fn field_matches(v: &Value, path: &[String], pattern: &Pattern) -> bool {
    match (v, path.split_first()) {
        (Value::Array(items), _) => items.iter().any(|i| field_matches(i, path, pattern)),
        (Value::Object(map), Some((head, rest))) => map
            .get(head)
            .is_some_and(|child| field_matches(child, rest, pattern)),
        (_, Some(_)) => false,
        (leaf, None) => leaf_matches(leaf, pattern),
    }
}

fn leaf_matches(leaf: &Value, pattern: &Pattern) -> bool {
    let text = match leaf {
        Value::String(s) => s.to_lowercase(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_string(),
        Value::Object(_) | Value::Array(_) => return matches!(pattern, Pattern::Exists),
    };
    match pattern {
        Pattern::Exists => !leaf.is_null(),
        Pattern::Exact(want) => text == want.to_lowercase(),
        Pattern::Wildcard(parts) => wildcard_match(&text, parts),
    }
}

/// `parts` are the pieces between `*`s: the first anchors at the start, the
/// last at the end, the middle ones in order.
fn wildcard_match(text: &str, parts: &[String]) -> bool {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return true;
    };
    if parts.len() == 1 {
        return text == first;
    }
    if !text.starts_with(first.as_str()) {
        return false;
    }
    let mut rest = &text[first.len()..];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid.as_str()) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    rest.ends_with(last.as_str())
}

fn any_string_contains(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => s.to_lowercase().contains(needle),
        Value::Number(n) => n.to_string().contains(needle),
        Value::Array(items) => items.iter().any(|i| any_string_contains(i, needle)),
        Value::Object(map) => map.values().any(|i| any_string_contains(i, needle)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(s: &str) -> Query {
        Query::parse(s).unwrap()
    }

    fn rec() -> Value {
        json!({
            "msg_class": "proofpoint_tap_event",
            "event_type": "messageDelivered",
            "timestamp": 1700000000000i64,
            "email": {"sender": {"address": "Bad@Evil.example"},
                      "recipient": {"addresses": ["a@corp.example", "b@corp.example"]},
                      "subject": "Invoice due"},
            "threat": [{"id": "t1"}, {"id": "t2"}],
        })
    }

    #[test]
    fn field_terms_join_with_and() {
        let r = rec();
        assert!(q("msg_class:proofpoint_tap_event").matches(&r));
        assert!(q("msg_class:proofpoint_tap_event AND event_type:messageDelivered").matches(&r));
        assert!(q("msg_class:proofpoint_tap_event event_type:messageDelivered").matches(&r));
        assert!(!q("msg_class:proofpoint_tap_event event_type:clickBlocked").matches(&r));
        assert!(
            !q("msg_class:proofpoint_tap").matches(&r),
            "exact, not prefix"
        );
    }

    #[test]
    fn arrays_case_wildcards_numbers_and_existence() {
        let r = rec();
        assert!(q("email.recipient.addresses:b@corp.example").matches(&r));
        assert!(q("email.sender.address:bad@evil.example").matches(&r));
        assert!(q("threat.id:t2").matches(&r));
        assert!(q("email.sender.address:*@evil.example").matches(&r));
        assert!(q("email.subject:inv*due").matches(&r));
        assert!(!q("email.subject:due*").matches(&r));
        assert!(q("timestamp:1700000000000").matches(&r));
        assert!(q("email.subject:*").matches(&r));
        assert!(!q("email.x_mailer:*").matches(&r));
        assert!(q(r#"email.subject:"invoice due""#).matches(&r));
        assert!(q("invoice").matches(&r));
        assert!(!q("nowhere").matches(&r));
    }

    #[test]
    fn bad_queries_are_explained() {
        assert!(Query::parse("a OR b").is_err());
        assert!(Query::parse(":x").is_err());
        assert!(Query::parse("a..b:x").is_err());
        assert!(Query::parse("subject:\"open").is_err());
    }

    #[test]
    fn prefilter_only_uses_verbatim_literals() {
        assert_eq!(q("msg_class:x_y a:*").prefilter(), vec!["x_y".to_string()]);
        assert_eq!(q("s:ab*cdef").prefilter(), vec!["cdef".to_string()]);
        assert!(q(r#"s:"with \"quote""#).prefilter().is_empty());
    }
}
