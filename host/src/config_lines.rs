//! Where each key of the configuration file is, so that every problem found
//! in it can name its line.
//!
//! `toml::Table` forgets positions; the spanned parse (`toml::de::DeTable`)
//! keeps them. Paths are dotted, with array elements as numbers:
//! `host.data_dir`, `connector.0.interval_min`, `connector.1.limits.memory_mib`,
//! `connector.0.filter.2.drop`. A path names the line of its key; an array
//! element names the line where its table starts.

use std::collections::HashMap;
use toml::de::{DeTable, DeValue};

#[derive(Debug, Default, Clone)]
pub struct KeyLines {
    lines: HashMap<String, usize>,
}

impl KeyLines {
    /// Maps every key of `text`. Text that does not parse maps nothing (its
    /// parse error already carries a line).
    pub fn of(text: &str) -> KeyLines {
        let mut map = KeyLines::default();
        if let Ok(root) = DeTable::parse(text) {
            let starts = LineStarts::of(text);
            map.walk_table("", root.get_ref(), &starts);
        }
        map
    }

    /// The 1-based line of `path`, if the file has it.
    pub fn line(&self, path: &str) -> Option<usize> {
        self.lines.get(path).copied()
    }

    /// The line of the most specific existing prefix of `path`: a missing key
    /// is reported at the table that lacks it.
    pub fn nearest(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.line(p) {
                return Some(l);
            }
            p = &p[..p.rfind('.')?];
        }
    }

    /// `"line N: "` for `path` (or its nearest table), or nothing.
    pub fn at(&self, path: &str) -> String {
        self.nearest(path)
            .map(|l| format!("line {l}: "))
            .unwrap_or_default()
    }

    /// The deepest key path written on `line` (e.g. `host.foo`), if any.
    pub fn path_on(&self, line: usize) -> Option<&str> {
        self.lines
            .iter()
            .filter(|(_, l)| **l == line)
            .map(|(p, _)| p.as_str())
            .max_by_key(|p| (p.matches('.').count(), p.len()))
    }

    fn walk_table(&mut self, prefix: &str, table: &DeTable<'_>, starts: &LineStarts) {
        for (key, value) in table {
            let path = join(prefix, key.get_ref());
            self.lines
                .entry(path.clone())
                .or_insert_with(|| starts.line(key.span().start));
            self.walk_value(&path, value.get_ref(), value.span().start, starts);
        }
    }

    fn walk_value(&mut self, path: &str, value: &DeValue<'_>, at: usize, starts: &LineStarts) {
        match value {
            DeValue::Table(t) => self.walk_table(path, t, starts),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}.{i}");
                    let start = item.span().start.max(at);
                    self.lines
                        .entry(item_path.clone())
                        .or_insert_with(|| starts.line(start));
                    self.walk_value(&item_path, item.get_ref(), start, starts);
                }
            }
            _ => {}
        }
    }
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Byte offset -> line number.
struct LineStarts(Vec<usize>);

impl LineStarts {
    fn of(text: &str) -> LineStarts {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineStarts(starts)
    }

    fn line(&self, offset: usize) -> usize {
        match self.0.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_array_elements_and_nested_tables_have_lines() {
        let text = "\
[host]
data_dir = \"d\"

[[connector]]
name = \"a\"
[connector.limits]
memory_mib = 8

[[connector]]
name = \"b\"
[[connector.filter]]
drop = \"x\"
";
        let k = KeyLines::of(text);
        assert_eq!(k.line("host.data_dir"), Some(2));
        assert_eq!(k.line("connector.0.name"), Some(5));
        assert_eq!(k.line("connector.0.limits.memory_mib"), Some(7));
        assert_eq!(k.line("connector.1.name"), Some(10));
        assert_eq!(k.line("connector.1.filter.0.drop"), Some(12));
        // A missing key is reported where its table is.
        assert_eq!(k.nearest("connector.1.tenant"), k.line("connector.1"));
        assert!(k.line("connector.1").is_some());
        assert_eq!(k.at("nowhere"), "");
    }

    #[test]
    fn line_col_counts_characters_from_one() {
        let text = "a = 1\nnamé = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // After the two-byte `é`: column 5, not 6.
        assert_eq!(line_col(text, text.find(" = 2").unwrap()), (2, 5));
        assert_eq!(line_col(text, 999), (3, 1));
        let k = KeyLines::of("[host]\nfoo = 1\n[[connector]]\nname = \"a\"\n");
        assert_eq!(k.path_on(2), Some("host.foo"));
        assert_eq!(k.path_on(4), Some("connector.0.name"));
        assert_eq!(k.path_on(9), None);
    }

    #[test]
    fn text_that_does_not_parse_maps_nothing() {
        assert_eq!(KeyLines::of("[[connector]\n").line("connector"), None);
    }
}
