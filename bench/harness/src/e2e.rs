//! Benchmark 3: one window of N events, `tap-sim` over loopback HTTP ->
//! `dphost once` (the TAP component, memory cap 32 MiB) -> committed in
//! SQLite; and in the same run the floor: downloading the same body and
//! parsing every event with serde_json, natively.

use crate::util::{self, Sim, PRINCIPAL, SECRET};
use crate::Figure;
use anyhow::{bail, Context, Result};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The window `dphost` asks for on its first run with a one-hour look-back
/// at `util::T0` (the safety margin keeps its last minute out).
const WINDOW: &str = "2026-11-20T09:00:00Z/2026-11-20T09:59:00Z";

/// What one window's run measured.
#[derive(Debug, Clone)]
pub struct WindowRun {
    pub events: u64,
    pub elapsed: Duration,
    pub peak_memory_mib: f64,
    pub host_rss: u64,
    /// CPU time of the whole `dphost once` process (user + system).
    pub host_cpu: Duration,
    pub floor_download: Duration,
    pub floor_parse: Duration,
    pub body_bytes: u64,
}

pub fn sizes() -> Vec<u64> {
    std::env::var("BENCH_E2E_EVENTS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000])
}

pub fn run() -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for n in sizes() {
        let r = window(n)?;
        let label = crate::fmt_num(n as f64);
        let eps = r.events as f64 / r.elapsed.as_secs_f64();
        let floor = r.floor_download + r.floor_parse;
        let mut per_s = Figure::new(
            "e2e",
            format!("{label}: events/s ({} events)", r.events),
            eps,
            "events/s",
        );
        let mut ratio = Figure::new(
            "e2e",
            format!(
                "{label}: time / floor ({:.2} s / {:.2} s)",
                r.elapsed.as_secs_f64(),
                floor.as_secs_f64()
            ),
            r.elapsed.as_secs_f64() / floor.as_secs_f64(),
            "x",
        );
        if n >= 1_000_000 {
            per_s = per_s.at_least(50_000.0);
            ratio = ratio.at_most(3.0);
        }
        figures.push(per_s);
        figures.push(Figure::new(
            "e2e",
            format!(
                "{label}: events per CPU-second of dphost ({:.1} CPU-s)",
                r.host_cpu.as_secs_f64()
            ),
            r.events as f64 / r.host_cpu.as_secs_f64(),
            "events/s",
        ));
        figures.push(ratio);
        figures.push(Figure::new(
            "e2e",
            format!(
                "{label}: floor download + serde_json parse ({:.0} MB)",
                r.body_bytes as f64 / 1e6
            ),
            r.events as f64 / floor.as_secs_f64(),
            "events/s",
        ));
        figures.push(
            Figure::new(
                "e2e",
                format!("{label}: component peak memory"),
                r.peak_memory_mib,
                "MiB",
            )
            .at_most(32.0),
        );
        figures.push(Figure::new(
            "e2e",
            format!("{label}: host peak RSS"),
            r.host_rss as f64 / 1e6,
            "MB",
        ));
    }
    Ok(figures)
}

/// One window of about `n` events.
pub fn window(n: u64) -> Result<WindowRun> {
    let dir = tempfile::tempdir()?;
    let clock = dir.path().join("now");
    util::write_clock(&clock, util::T0)?;
    // ~93% of generated events pass the default filters; the window holds
    // 59 of the hour's 60 minutes.
    let rate = (n as f64 / 0.93 / (59.0 / 60.0)).ceil();
    let sim = Sim::start(&[
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--seed".into(),
        "7".into(),
        "--rate".into(),
        format!("{rate}"),
        "--history-hours".into(),
        "2".into(),
        "--max-lag-min".into(),
        "0".into(),
        "--clock-file".into(),
        clock.display().to_string(),
    ])?;
    let config = util::workspace(
        dir.path(),
        &format!("clock_file = \"{}\"", clock.display()),
        &util::connector_toml(
            "bench-tap",
            "bench",
            &sim.url,
            "initial_lookback_hours = 1\ncontent_types = [\"events\"]\n\n[connector.limits]\nmemory_mib = 32\ncpu_seconds = 3600\nrun_timeout_secs = 7200",
        ),
    )?;
    // Compile the component into the cache first: the run measures collection.
    let check = Command::new(util::dphost_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()?;
    if !check.status.success() {
        bail!("dphost check: {}", String::from_utf8_lossy(&check.stdout));
    }
    let out_path = dir.path().join("once.out");
    let mut child = Command::new(util::dphost_bin())
        .args(["once", "--config"])
        .arg(&config)
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(Stdio::null())
        .spawn()?;
    let rss = util::watch_peak_rss(child.id());
    let finished = util::wait_with_usage(&mut child)?;
    let host_rss = rss.join().expect("the RSS watcher does not panic");
    let out = std::fs::read_to_string(&out_path)?;
    if !finished.success {
        bail!("dphost once failed: {out}");
    }
    let elapsed = parse_debug_duration(between(&out, "ok in ", " ").context("no `ok in`")?)
        .with_context(|| format!("no run time in {out}"))?;
    let peak_memory_mib: f64 = between(&out, "peak memory ", " ")
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no peak memory in {out}"))?;
    let events: u64 = between(&out, "events by type: ", "\n")
        .map(|s| {
            s.split(", ")
                .filter_map(|p| p.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        })
        .with_context(|| format!("no events by type in {out}"))?;

    let (body_bytes, floor_download, floor_parse, floor_events) = floor(&sim.url)?;
    if floor_events != events {
        bail!("the floor parsed {floor_events} events, dphost collected {events}");
    }
    Ok(WindowRun {
        events,
        elapsed,
        peak_memory_mib,
        host_rss,
        host_cpu: finished.cpu,
        floor_download,
        floor_parse,
        body_bytes,
    })
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let rest = &text[from..];
    Some(rest[..rest.find(end).unwrap_or(rest.len())].trim())
}

/// `Duration`'s `Debug` text (`1.2s`, `850.3ms`, `12µs`).
pub fn parse_debug_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (n, unit) = text.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" | "us" => n / 1e6,
        "ns" => n / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// Downloads the window's body and parses every event into a
/// `serde_json::Value` (dropped at once). Returns (bytes, download time,
/// parse time, events).
pub fn floor(url: &str) -> Result<(u64, Duration, Duration, u64)> {
    let started = Instant::now();
    let body = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()?
        .get(format!("{url}/v2/siem/all?format=json&interval={WINDOW}"))
        .basic_auth(PRINCIPAL, Some(SECRET))
        .send()?
        .error_for_status()?
        .bytes()?;
    let download = started.elapsed();
    let started = Instant::now();
    let mut de = serde_json::Deserializer::from_slice(&body);
    let events = CountEvents.deserialize(&mut de)?;
    de.end()?;
    Ok((body.len() as u64, download, started.elapsed(), events))
}

/// The SIEM response: each event of the four arrays parsed, counted, dropped.
struct CountEvents;

impl<'de> DeserializeSeed<'de> for CountEvents {
    type Value = u64;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for CountEvents {
    type Value = u64;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a SIEM response")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut n = 0;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "messagesDelivered" | "messagesBlocked" | "clicksPermitted" | "clicksBlocked" => {
                    n += map.next_value_seed(CountItems)?
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(n)
    }
}

struct CountItems;

impl<'de> DeserializeSeed<'de> for CountItems {
    type Value = u64;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for CountItems {
    type Value = u64;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut n = 0;
        while let Some(v) = seq.next_element::<serde_json::Value>()? {
            drop(v);
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_durations_parse() {
        assert_eq!(
            parse_debug_duration("1.5s"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_debug_duration("250.0ms"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_debug_duration("12µs"),
            Some(Duration::from_micros(12))
        );
        assert_eq!(parse_debug_duration("soon"), None);
    }

    #[test]
    fn the_floor_counts_events_of_the_four_arrays() {
        let body = br#"{"queryEndTime":"x","messagesDelivered":[{"a":1},{"b":[1,2]}],"clicksBlocked":[{}],"other":[1,2,3]}"#;
        let mut de = serde_json::Deserializer::from_slice(body);
        assert_eq!(CountEvents.deserialize(&mut de).unwrap(), 3);
    }
}
