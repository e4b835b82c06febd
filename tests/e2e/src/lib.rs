//! Helpers for the end-to-end tests: start `tap-sim`, write a dphost
//! configuration, run `dphost`, compare what landed with `/_sim/truth`.
//!
//! The binaries and components come from `make build` (the tests say so if
//! they are missing): `target/release/{dphost,tap-sim}`,
//! `components/proofpoint_tap.wasm` and
//! `target/wasm32-wasip2/release/sandbox_probe.wasm`.

pub mod pg;
pub mod store;

pub use pg::TestStore;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn built(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `make build` first (make test does)",
        path.display()
    );
    path
}

pub fn dphost_bin() -> PathBuf {
    built(root().join("target/release/dphost"))
}

pub fn tap_sim_bin() -> PathBuf {
    built(root().join("target/release/tap-sim"))
}

pub fn tap_component() -> PathBuf {
    built(root().join("components/proofpoint_tap.wasm"))
}

pub fn probe_component() -> PathBuf {
    built(root().join("target/wasm32-wasip2/release/sandbox_probe.wasm"))
}

pub fn fixtures_dir() -> PathBuf {
    root().join("../shared/fixtures/tap/elastic")
}

/// A running tap-sim, killed on drop.
pub struct Sim {
    child: Child,
    pub url: String,
}

pub const PRINCIPAL: &str = "sim-principal";
pub const SECRET: &str = "sim-secret";

impl Sim {
    pub fn start(args: &[&str]) -> Result<Sim> {
        let mut child = Command::new(tap_sim_bin())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tap-sim")?;
        let stdout = child.stdout.take().expect("piped");
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        let url = first
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line from tap-sim: {first:?}"))?
            .to_string();
        Ok(Sim { child, url })
    }

    pub fn get(&self, path: &str) -> Result<String> {
        let resp = reqwest::blocking::get(format!("{}{path}", self.url))?;
        if !resp.status().is_success() {
            bail!("GET {path}: {}", resp.status());
        }
        Ok(resp.text()?)
    }

    /// `/_sim/truth` as (event_type, event) pairs.
    pub fn truth(&self) -> Result<Vec<(String, Value)>> {
        self.truth_between(None, None)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The record `event_type` for a SIEM array name.
pub fn event_type_of(array: &str) -> &'static str {
    match array {
        "messagesBlocked" => "messageBlocked",
        "messagesDelivered" => "messageDelivered",
        "clicksBlocked" => "clickBlocked",
        "clicksPermitted" => "clickPermitted",
        other => panic!("unknown SIEM array {other}"),
    }
}

/// A scratch folder with a components folder and a configuration, and
/// where its data lives: SQLite in `data/`, or a PostgreSQL database of its
/// own with `DPHOST_TEST_STORE=postgres`.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub store: TestStore,
}

impl Workspace {
    /// A workspace on the store `DPHOST_TEST_STORE` names (SQLite if unset).
    pub fn new() -> Result<Workspace> {
        Self::with_store(TestStore::from_env()?)
    }

    /// A workspace on the embedded SQLite store, whatever the environment
    /// says (tests of the data dir's file system).
    pub fn sqlite() -> Result<Workspace> {
        Self::with_store(TestStore::Sqlite)
    }

    pub fn with_store(store: TestStore) -> Result<Workspace> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("components"))?;
        std::fs::copy(
            tap_component(),
            dir.path().join("components/proofpoint_tap.wasm"),
        )?;
        std::fs::copy(
            probe_component(),
            dir.path().join("components/sandbox_probe.wasm"),
        )?;
        Ok(Workspace { dir, store })
    }

    /// The `[host]` table this workspace's configurations start with, plus
    /// `extra` lines.
    pub fn host_table(&self, extra: &str) -> String {
        format!(
            "[host]\ndata_dir = \"data\"\ncomponents_dir = \"components\"\n{extra}\n{}",
            self.store.host_line()
        )
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("dphost.toml")
    }

    /// Writes `dphost.toml`: a `[host]` table plus the given connector tables.
    pub fn write_config(&self, connectors: &str) -> Result<()> {
        let text = format!("{}\n{connectors}", self.host_table(""));
        std::fs::write(self.config_path(), text)?;
        Ok(())
    }

    /// Runs `dphost ARGS --config <this config>`.
    pub fn dphost(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new(dphost_bin())
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .env_remove("RUST_LOG")
            .output()
            .context("running dphost")?;
        Ok(out)
    }

    /// Every record matching `query` in `index`, parsed.
    pub fn search(&self, index: &str, query: &str) -> Result<Vec<Value>> {
        let out = self.dphost(&["search", "--index", index, query])?;
        if !out.status.success() {
            bail!(
                "dphost search failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8(out.stdout)?
            .lines()
            .map(|l| Ok(serde_json::from_str(l)?))
            .collect()
    }
}

/// A TAP connector table for `sim`.
pub fn tap_connector(name: &str, tenant: &str, sim: &Sim, extra: &str) -> String {
    format!(
        "[[connector]]\nname = \"{name}\"\ntenant = \"{tenant}\"\ncomponent = \"proofpoint_tap\"\nhost_url = \"{}\"\nprincipal = \"{PRINCIPAL}\"\nsecret = \"{SECRET}\"\n{extra}\n",
        sim.url
    )
}

/// Multiset of (event_type, canonical event JSON).
pub fn multiset<'a>(
    items: impl IntoIterator<Item = (&'a str, &'a Value)>,
) -> BTreeMap<(String, String), usize> {
    let mut m = BTreeMap::new();
    for (t, e) in items {
        *m.entry((t.to_string(), canonical(e))).or_insert(0) += 1;
    }
    m
}

/// JSON text with object keys sorted at every level, whatever map type
/// serde_json was built with.
pub fn canonical(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// What landed in the Syslog index as (event_type, original event) pairs.
pub fn landed_events(ws: &Workspace) -> Result<Vec<(String, Value)>> {
    ws.search("syslog", "msg_class:proofpoint_tap_event")?
        .into_iter()
        .map(|r| {
            Ok((
                r["event_type"]
                    .as_str()
                    .context("record without event_type")?
                    .to_string(),
                r["proofpoint_tap"].clone(),
            ))
        })
        .collect()
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts two event lists hold the same events the same number of times,
/// printing a short difference (not the whole lists) when they do not.
pub fn assert_same_events(got: &[(String, Value)], want: &[(String, Value)], what: &str) {
    let got_set = multiset(got.iter().map(|(t, e)| (t.as_str(), e)));
    let want_set = multiset(want.iter().map(|(t, e)| (t.as_str(), e)));
    if got_set == want_set {
        return;
    }
    let short = |k: &(String, String)| format!("{} {}", k.0, &k.1[..k.1.len().min(160)]);
    let missing: Vec<String> = want_set
        .iter()
        .filter(|(k, n)| got_set.get(*k) != Some(n))
        .take(3)
        .map(|(k, n)| {
            format!(
                "{} (want {n}, got {})",
                short(k),
                got_set.get(k).unwrap_or(&0)
            )
        })
        .collect();
    let extra: Vec<String> = got_set
        .iter()
        .filter(|(k, _)| !want_set.contains_key(*k))
        .take(3)
        .map(|(k, n)| format!("{} (got {n})", short(k)))
        .collect();
    panic!(
        "{what}: {} events, expected {}\n  missing or miscounted: {missing:#?}\n  unexpected: {extra:#?}",
        got.len(),
        want.len()
    );
}

/// The elastic sample events, as tap-sim arguments that serve all of them
/// retimed to the last hours with no indexing lag, and how many events they
/// hold (whole empty responses carry none).
pub fn fixture_sim_args() -> (Vec<String>, usize) {
    let files = [
        ("message_blocked.ndjson", "messagesBlocked"),
        ("message_delivered.ndjson", "messagesDelivered"),
        ("clicks_blocked.ndjson", "clicksBlocked"),
        ("clicks_permitted.ndjson", "clicksPermitted"),
    ];
    let mut args: Vec<String> = vec!["--retime".into(), "--max-lag-min".into(), "0".into()];
    let mut events = 0;
    for (file, array) in files {
        let path = fixtures_dir().join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        events += text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("queryEndTime"))
            .count();
        args.extend([
            "--events".into(),
            path.display().to_string(),
            "--events-type".into(),
            array.into(),
        ]);
    }
    (args, events)
}

/// A simulated clock: one file read by both `tap-sim --clock-file` and
/// dphost's `[host] clock_file`, so simulated days pass in seconds.
pub struct SimClock {
    path: PathBuf,
    now: time::OffsetDateTime,
}

impl SimClock {
    /// A clock file in `dir` reading `start`.
    pub fn new(dir: &Path, start: time::OffsetDateTime) -> Result<SimClock> {
        let mut clock = SimClock {
            path: dir.join("now"),
            now: start,
        };
        clock.set(start)?;
        Ok(clock)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn now(&self) -> time::OffsetDateTime {
        self.now
    }

    /// Move the clock to `t`, atomically (temporary file, then rename), so
    /// a reader never sees half a line.
    pub fn set(&mut self, t: time::OffsetDateTime) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", rfc3339(t)))?;
        std::fs::rename(&tmp, &self.path)?;
        self.now = t;
        Ok(())
    }

    pub fn advance(&mut self, by: time::Duration) -> Result<()> {
        self.set(self.now + by)
    }
}

/// `2026-11-20T10:00:00Z` (whole seconds).
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .expect("0 ns is valid")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("UTC times format")
}

/// Parse an RFC 3339 time.
pub fn parse_rfc3339(text: &str) -> Result<time::OffsetDateTime> {
    Ok(time::OffsetDateTime::parse(
        text,
        &time::format_description::well_known::Rfc3339,
    )?)
}

impl Sim {
    /// `/_sim/stats`.
    pub fn stats(&self) -> Result<Value> {
        Ok(serde_json::from_str(&self.get("/_sim/stats")?)?)
    }

    /// `/_sim/truth` with filed-time bounds `[from, to)` (RFC 3339), as
    /// (event_type, event) pairs.
    pub fn truth_between(
        &self,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<(String, Value)>> {
        let mut query = Vec::new();
        if let Some(from) = from {
            query.push(format!("from={from}"));
        }
        if let Some(to) = to {
            query.push(format!("to={to}"));
        }
        let body = self.get(&format!("/_sim/truth?{}", query.join("&")))?;
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l)?;
                let array = v["type"].as_str().context("truth line without type")?;
                Ok((event_type_of(array).to_string(), v["event"].clone()))
            })
            .collect()
    }

    /// How many events `/_sim/truth` holds now (filed before `to`, if
    /// given), counted as they stream.
    pub fn truth_count(&self, to: Option<&str>) -> Result<usize> {
        let query = to.map(|t| format!("?to={t}")).unwrap_or_default();
        let resp = reqwest::blocking::get(format!("{}/_sim/truth{query}", self.url))?;
        if !resp.status().is_success() {
            bail!("GET /_sim/truth: {}", resp.status());
        }
        let mut count = 0;
        for line in BufReader::new(resp).lines() {
            if !line?.trim().is_empty() {
                count += 1;
            }
        }
        Ok(count)
    }
}

/// What `dphost once` said about one connector.
#[derive(Debug, Clone)]
pub struct OnceReport {
    pub ok: bool,
    /// The whole output, for assertion messages.
    pub text: String,
    pub new_records: u64,
    pub already_stored: u64,
    pub requests: u64,
    pub peak_memory_mib: Option<f64>,
    /// The wait a rate-limited run asked for, in seconds.
    pub rate_limited_secs: Option<u64>,
}

impl Workspace {
    /// Writes `dphost.toml` with extra `[host]` keys (e.g. `clock_file`).
    pub fn write_config_with_host(&self, host_extra: &str, connectors: &str) -> Result<()> {
        let text = format!("{}\n{connectors}", self.host_table(host_extra));
        std::fs::write(self.config_path(), text)?;
        Ok(())
    }

    /// `dphost once` for a workspace with one connector, read back.
    pub fn once(&self) -> Result<OnceReport> {
        let out = self.dphost(&["once"])?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let report_text = text(&out);
        let number_before = |needle: &str| -> Option<u64> {
            let at = stdout.find(needle)?;
            stdout[..at]
                .rsplit(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        };
        let peak_memory_mib = stdout.find("peak memory ").and_then(|at| {
            stdout[at + "peak memory ".len()..]
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
        });
        let rate_limited_secs = if stdout.contains("FAILED (rate-limited)") {
            // "... retries by itself at 2026-11-21T10:00:00Z (in 900 s)"
            stdout.find("retries by itself at ").and_then(|at| {
                let rest = &stdout[at..];
                let from = rest.find("(in ")? + "(in ".len();
                rest[from..]
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
            })
        } else {
            None
        };
        Ok(OnceReport {
            ok: out.status.success(),
            new_records: number_before(" new record(s)").unwrap_or(0),
            already_stored: number_before(" already stored").unwrap_or(0),
            requests: number_before(" request(s)").unwrap_or(0),
            peak_memory_mib,
            rate_limited_secs,
            text: report_text,
        })
    }
}
