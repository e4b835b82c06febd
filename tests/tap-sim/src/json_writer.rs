//! A tiny JSON object writer. Generated events are written straight into a
//! `String` so that keys keep the live API's order (serde_json's `Value`
//! would sort them) and so that a million events stay cheap to produce.

use std::fmt::Write;

/// Writes one JSON object; `finish` closes it.
pub struct ObjectWriter<'a> {
    out: &'a mut String,
    empty: bool,
}

impl<'a> ObjectWriter<'a> {
    pub fn new(out: &'a mut String) -> Self {
        out.push('{');
        ObjectWriter { out, empty: true }
    }

    fn key(&mut self, key: &str) {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        write_json_string(self.out, key);
        self.out.push(':');
    }

    pub fn string(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        write_json_string(self.out, value);
        self
    }

    /// A string, or `null` for `None`.
    pub fn opt_string(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.string(key, v),
            None => self.null(key),
        }
    }

    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.out.push_str("null");
        self
    }

    pub fn int(&mut self, key: &str, value: i64) -> &mut Self {
        self.key(key);
        let _ = write!(self.out, "{value}");
        self
    }

    /// A float that always shows a decimal point (`0.0`, like the live API).
    pub fn float(&mut self, key: &str, value: f64) -> &mut Self {
        self.key(key);
        let _ = write!(self.out, "{value:?}");
        self
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.out.push_str(if value { "true" } else { "false" });
        self
    }

    pub fn strings<S: AsRef<str>>(&mut self, key: &str, values: &[S]) -> &mut Self {
        self.key(key);
        self.out.push('[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            write_json_string(self.out, v.as_ref());
        }
        self.out.push(']');
        self
    }

    /// An array of strings, or `null`.
    pub fn opt_strings<S: AsRef<str>>(&mut self, key: &str, values: Option<&[S]>) -> &mut Self {
        match values {
            Some(v) => self.strings(key, v),
            None => self.null(key),
        }
    }

    /// An array of objects, each written by `write_item`.
    pub fn objects<T>(
        &mut self,
        key: &str,
        items: &[T],
        mut write_item: impl FnMut(&mut ObjectWriter<'_>, &T),
    ) -> &mut Self {
        self.key(key);
        self.out.push('[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let mut object = ObjectWriter::new(self.out);
            write_item(&mut object, item);
            object.finish();
        }
        self.out.push(']');
        self
    }

    pub fn finish(self) {
        self.out.push('}');
    }
}

/// Appends `value` as a quoted, escaped JSON string.
pub fn write_json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_valid_ordered_json() {
        let mut out = String::new();
        let mut o = ObjectWriter::new(&mut out);
        o.string("z", "quote \" back \\ nl \n ctl \u{1}")
            .null("a")
            .int("n", -3)
            .float("f", 0.0)
            .bool("b", true)
            .strings("s", &["x", "y"])
            .opt_strings::<&str>("none", None)
            .objects("o", &[1, 2], |w, i| {
                w.int("i", *i);
            });
        o.finish();
        assert!(out.starts_with(r#"{"z":"#));
        assert!(out.contains(r#""f":0.0"#));
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["z"], "quote \" back \\ nl \n ctl \u{1}");
        assert_eq!(parsed["o"][1]["i"], 2);
        assert!(parsed["none"].is_null());
    }
}
