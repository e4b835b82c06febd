//! The query language of `dphost search` (and of log filters).
//!
//! ```text
//! query  := or
//! or     := and ("OR" and)*
//! and    := unary (["AND"] unary)*        adjacent terms are joined by AND
//! unary  := ("NOT" | "-") unary | "(" or ")" | term
//! term   := field ":" value | "*" | word
//! ```
//! - `field:value`: the dotted path `field` (e.g. `email.sender.address`)
//!   holds `value`. Arrays on the way are searched element by element, so
//!   `email.recipient.addresses:bob@example.com` matches a list. Strings
//!   compare case-insensitively; `*` in the value is a wildcard; `field:*`
//!   asks only that the field exists. Quote values with spaces or reserved
//!   words: `email.subject:"a b"`.
//! - `*` alone matches every record; a bare `word` matches any string in the
//!   record containing it (case-insensitively).

use anyhow::{bail, Result};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    All,
    Field { path: Vec<String>, pattern: Pattern },
    Anywhere(String),
    Not(Box<Query>),
    And(Vec<Query>),
    Or(Vec<Query>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    Exists,
    Exact(String),
    /// Lower-cased pieces between `*`s.
    Wildcard(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    And,
    Or,
    Not,
    /// A term, with whether its value part was quoted.
    Term(String, bool),
}

impl Query {
    pub fn parse(text: &str) -> Result<Query> {
        let tokens = tokenize(text)?;
        if tokens.is_empty() {
            bail!("the query is empty: use `*` to match every record");
        }
        let mut parser = Parser { tokens, pos: 0 };
        let q = parser.or()?;
        if let Some(t) = parser.tokens.get(parser.pos) {
            bail!("unexpected {} in query `{text}`", describe(t));
        }
        Ok(q)
    }

    /// Substrings every matching record's raw JSON must contain, for the
    /// store's SQL prefilter. Only literal text that JSON encodes verbatim.
    pub fn prefilter(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.required_literals(&mut out);
        out
    }

    fn required_literals(&self, out: &mut Vec<String>) {
        // SQLite's LIKE folds ASCII case only, and JSON escapes quotes,
        // backslashes and control characters: use only plain ASCII text.
        let verbatim = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| c.is_ascii_graphic() || c == ' ')
                && !s.contains(['"', '\\'])
        };
        match self {
            Query::Field {
                pattern: Pattern::Exact(v),
                ..
            }
            | Query::Anywhere(v)
                if verbatim(v) =>
            {
                out.push(v.clone())
            }
            Query::Field {
                pattern: Pattern::Wildcard(parts),
                ..
            } => {
                if let Some(longest) = parts.iter().filter(|p| verbatim(p)).max_by_key(|p| p.len())
                {
                    out.push(longest.clone());
                }
            }
            Query::And(items) => items.iter().for_each(|q| q.required_literals(out)),
            // Alternatives and negations require no particular text.
            _ => {}
        }
    }

    /// Exact values this query requires at a top-level `path` (for index
    /// lookups): `Some(value)` when every match must have `path` == value.
    pub fn required_value(&self, path: &str) -> Option<String> {
        match self {
            Query::Field {
                path: p,
                pattern: Pattern::Exact(v),
            } if p.join(".") == path => Some(v.clone()),
            Query::And(items) => items.iter().find_map(|q| q.required_value(path)),
            _ => None,
        }
    }

    /// What the store may narrow in SQL before `matches` decides: exact
    /// terms on the indexed fields, the tenant, the time bounds and the
    /// required literals.
    pub fn scan_filter(
        &self,
        tenant: Option<String>,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> crate::store::ScanFilter {
        crate::store::ScanFilter {
            tenant,
            equals: crate::store::INDEXED_FIELDS
                .iter()
                .filter_map(|(path, _)| self.required_value(path).map(|v| (path.to_string(), v)))
                .collect(),
            since_ms,
            until_ms,
            must_contain: self.prefilter(),
        }
    }

    pub fn matches(&self, record: &Value) -> bool {
        match self {
            Query::All => true,
            Query::Field { path, pattern } => field_matches(record, path, pattern),
            Query::Anywhere(word) => any_string_contains(record, &word.to_lowercase()),
            Query::Not(q) => !q.matches(record),
            Query::And(items) => items.iter().all(|q| q.matches(record)),
            Query::Or(items) => items.iter().any(|q| q.matches(record)),
        }
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn or(&mut self) -> Result<Query> {
        let mut items = vec![self.and()?];
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one")
        } else {
            Query::Or(items)
        })
    }

    fn and(&mut self) -> Result<Query> {
        let mut items = vec![self.unary()?];
        loop {
            match self.peek() {
                Some(Token::And) => {
                    self.pos += 1;
                    items.push(self.unary()?);
                }
                Some(Token::Term(..) | Token::Not | Token::Open) => items.push(self.unary()?),
                _ => break,
            }
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one")
        } else {
            Query::And(items)
        })
    }

    fn unary(&mut self) -> Result<Query> {
        let Some(token) = self.tokens.get(self.pos).cloned() else {
            bail!("the query ends where a term was expected");
        };
        self.pos += 1;
        match token {
            Token::Not => Ok(Query::Not(Box::new(self.unary()?))),
            Token::Open => {
                let q = self.or()?;
                if self.peek() != Some(&Token::Close) {
                    bail!("a `(` is not closed");
                }
                self.pos += 1;
                Ok(q)
            }
            Token::Term(text, quoted) => parse_term(&text, quoted),
            other => bail!("unexpected {} where a term was expected", describe(&other)),
        }
    }
}

fn describe(t: &Token) -> String {
    match t {
        Token::Open => "`(`".into(),
        Token::Close => "`)`".into(),
        Token::And => "`AND`".into(),
        Token::Or => "`OR`".into(),
        Token::Not => "`NOT`".into(),
        Token::Term(s, _) => format!("`{s}`"),
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                tokens.push(Token::Open);
            }
            ')' => {
                chars.next();
                tokens.push(Token::Close);
            }
            '-' if tokens.last().is_none_or(|t| !matches!(t, Token::Term(..))) => {
                chars.next();
                tokens.push(Token::Not);
            }
            _ => {
                let mut word = String::new();
                let mut quoted = false;
                let mut in_quotes = false;
                while let Some(&c) = chars.peek() {
                    if !in_quotes && (c.is_whitespace() || c == '(' || c == ')') {
                        break;
                    }
                    chars.next();
                    match c {
                        '"' => {
                            in_quotes = !in_quotes;
                            quoted = true;
                        }
                        '\\' if in_quotes => {
                            if let Some(n) = chars.next() {
                                word.push(n);
                            }
                        }
                        c => word.push(c),
                    }
                }
                if in_quotes {
                    bail!("unbalanced quote in query `{text}`");
                }
                tokens.push(match word.as_str() {
                    "AND" | "and" if !quoted => Token::And,
                    "OR" | "or" if !quoted => Token::Or,
                    "NOT" | "not" if !quoted => Token::Not,
                    _ => Token::Term(word, quoted),
                });
            }
        }
    }
    Ok(tokens)
}

fn parse_term(token: &str, quoted: bool) -> Result<Query> {
    if token == "*" && !quoted {
        return Ok(Query::All);
    }
    let Some((field, value)) = token.split_once(':') else {
        return Ok(Query::Anywhere(token.to_string()));
    };
    if field.is_empty() {
        bail!("`{token}`: a field name is missing before ':'");
    }
    let path: Vec<String> = field.split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        bail!("`{field}` is not a valid dotted field path");
    }
    // A quoted value is literal: `*` in it is a plain character.
    let pattern = if value == "*" && !quoted {
        Pattern::Exists
    } else if value.contains('*') && !quoted {
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
    Ok(Query::Field { path, pattern })
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
    rest.len() >= last.len() && rest.ends_with(last.as_str())
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

/// Parses a `--since` / `--until` bound: RFC 3339, or a span back from
/// `now_ms` such as `30m`, `24h`, `7d`. Epoch milliseconds.
pub fn parse_time_bound(text: &str, now_ms: i64) -> Result<i64> {
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = number.parse().map_err(|_| {
        anyhow::anyhow!("`{text}` is not a time: use RFC 3339 (2026-11-28T10:00:00Z) or a span like 30m, 24h, 7d")
    })?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => bail!("`{text}`: the unit must be s, m, h, d or w"),
    };
    Ok(now_ms - n * unit_ms)
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
            "threat": [{"id": "t1", "status": "active"}, {"id": "t2", "status": "falsepositive"}],
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
        assert!(q("*").matches(&r));
    }

    #[test]
    fn or_not_and_parentheses() {
        let r = rec();
        assert!(q("event_type:clickBlocked OR event_type:messageDelivered").matches(&r));
        assert!(!q("event_type:clickBlocked OR event_type:clickPermitted").matches(&r));
        assert!(q("NOT event_type:clickBlocked").matches(&r));
        assert!(!q("-event_type:messageDelivered").matches(&r));
        assert!(
            q("msg_class:proofpoint_tap_event AND (event_type:clickBlocked OR threat.id:t2)")
                .matches(&r)
        );
        assert!(!q(
            "msg_class:proofpoint_tap_event AND NOT (event_type:clickBlocked OR threat.id:t2)"
        )
        .matches(&r));
        // AND binds tighter than OR.
        assert!(q("event_type:clickBlocked AND threat.id:nope OR threat.id:t1").matches(&r));
        assert_eq!(
            q("a:1 OR b:2 c:3"),
            Query::Or(vec![
                Query::Field {
                    path: vec!["a".into()],
                    pattern: Pattern::Exact("1".into())
                },
                Query::And(vec![
                    Query::Field {
                        path: vec!["b".into()],
                        pattern: Pattern::Exact("2".into())
                    },
                    Query::Field {
                        path: vec!["c".into()],
                        pattern: Pattern::Exact("3".into())
                    },
                ]),
            ])
        );
    }

    #[test]
    fn arrays_case_wildcards_numbers_and_existence() {
        let r = rec();
        assert!(q("email.recipient.addresses:b@corp.example").matches(&r));
        assert!(q("email.recipient.addresses:B@CORP.example").matches(&r));
        assert!(q("email.sender.address:bad@evil.example").matches(&r));
        assert!(q(r#"email.sender.address:"bad@evil.example""#).matches(&r));
        assert!(q("threat.id:t2").matches(&r));
        assert!(q("threat.status:FalsePositive").matches(&r));
        assert!(q("email.sender.address:*@evil.example").matches(&r));
        assert!(q("email.subject:inv*due").matches(&r));
        assert!(!q("email.subject:due*").matches(&r));
        assert!(!q("email.subject:invoice*invoice").matches(&r));
        assert!(q("timestamp:1700000000000").matches(&r));
        assert!(q("email.subject:*").matches(&r));
        assert!(!q("email.x_mailer:*").matches(&r));
        assert!(q(r#"email.subject:"invoice due""#).matches(&r));
        assert!(
            !q(r#"email.subject:"invoice*""#).matches(&r),
            "quoted * is literal"
        );
        assert!(q("invoice").matches(&r));
        assert!(!q("nowhere").matches(&r));
    }

    #[test]
    fn bad_queries_are_explained() {
        for (bad, why) in [
            (":x", "field name is missing"),
            ("a..b:x", "not a valid dotted field path"),
            ("subject:\"open", "unbalanced quote"),
            ("(a:1 OR b:2", "not closed"),
            ("a:1 OR", "ends where a term was expected"),
            ("a:1 )", "unexpected `)`"),
            ("", "empty"),
        ] {
            let err = Query::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn prefilter_only_uses_required_verbatim_literals() {
        assert_eq!(q("msg_class:x_y a:*").prefilter(), vec!["x_y".to_string()]);
        assert_eq!(q("s:ab*cdef").prefilter(), vec!["cdef".to_string()]);
        assert!(q(r#"s:"with \"quote""#).prefilter().is_empty());
        assert!(q("a:1 OR b:2").prefilter().is_empty());
        assert!(q("NOT a:1").prefilter().is_empty());
        assert_eq!(q("m:x (a:1 OR b:2)").prefilter(), vec!["x".to_string()]);
        assert_eq!(
            q("tenant_name:acme m:x").required_value("tenant_name"),
            Some("acme".into())
        );
        assert_eq!(
            q("tenant_name:acme OR m:x").required_value("tenant_name"),
            None
        );
    }

    #[test]
    fn time_bounds() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time_bound("24h", now).unwrap(), now - 86_400_000);
        assert_eq!(parse_time_bound("2023-11-14T22:13:20Z", now).unwrap(), now);
        assert!(parse_time_bound("yesterday", now).is_err());
        assert!(parse_time_bound("3y", now).is_err());
    }
}
