//! dphost's benchmarks (`make bench`), one module per benchmark:
//! - `instantiate`: a fresh sandbox from the TAP component's `InstancePre`
//!   (pooling allocator), and loading the component cached vs compiled;
//! - `overhead`: the connector's per-event pipeline natively vs inside the
//!   sandbox (epoch interruption on, as in production);
//! - `e2e`: `tap-sim` -> `dphost once` -> SQLite for one window, beside the
//!   floor of downloading the same body and parsing it with serde_json;
//! - `density`: many tenants on one host under `dphost run`.
//!
//! Each returns its figures; `main` prints them as one table. None of this is
//! a test: nothing here asserts a time.

pub mod density;
pub mod e2e;
pub mod instantiate;
pub mod overhead;
pub mod util;

/// A figure, its unit, and the target it is measured against.
#[derive(Debug, Clone)]
pub struct Figure {
    pub bench: &'static str,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// e.g. "<= 10", with whether the value meets it.
    pub target: Option<(String, bool)>,
}

impl Figure {
    pub fn new(
        bench: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Figure {
            bench,
            name: name.into(),
            value,
            unit,
            target: None,
        }
    }

    pub fn at_most(mut self, limit: f64) -> Self {
        self.target = Some((format!("<= {}", fmt_num(limit)), self.value <= limit));
        self
    }

    pub fn at_least(mut self, limit: f64) -> Self {
        self.target = Some((format!(">= {}", fmt_num(limit)), self.value >= limit));
        self
    }
}

pub fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 {
        let s = format!("{:.0}", v);
        // thousands separators
        let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The figures as a Markdown table.
pub fn table(figures: &[Figure]) -> String {
    let mut out =
        String::from("| benchmark | figure | value | target | met |\n|---|---|---:|---|---|\n");
    for f in figures {
        let (target, met) = match &f.target {
            Some((t, ok)) => (t.clone(), if *ok { "yes" } else { "NO" }),
            None => (String::new(), ""),
        };
        out.push_str(&format!(
            "| {} | {} | {} {} | {} | {} |\n",
            f.bench,
            f.name,
            fmt_num(f.value),
            f.unit,
            target,
            met
        ));
    }
    out
}

/// The median of `values` (sorted in place).
pub fn median(values: &mut [f64]) -> f64 {
    percentile(values, 50.0)
}

/// The `p`th percentile (nearest rank) of `values` (sorted in place).
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut v, 100.0), 100.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn tables_say_whether_targets_are_met() {
        let figures = [
            Figure::new("x", "a", 12_345.0, "ev/s").at_least(50_000.0),
            Figure::new("x", "b", 1.2, "x").at_most(1.3),
        ];
        let t = table(&figures);
        assert!(
            t.contains("| x | a | 12,345 ev/s | >= 50,000 | NO |"),
            "{t}"
        );
        assert!(t.contains("| x | b | 1.20 x | <= 1.30 | yes |"), "{t}");
    }
}
