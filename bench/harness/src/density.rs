//! Benchmark 4: many tenants on one host. `dphost run` with N connectors
//! (each its own tenant and API origin, so each has its own request budget,
//! as real tenants have their own credentials), every one on a 1-minute
//! interval against one `tap-sim`, for M minutes; the schedule lag of every
//! run (the scheduler's `dphost::schedule` debug lines: how late a run
//! starts after it fell due), the host's RSS and CPU sampled from /proc.

use crate::util::{self, Sim};
use crate::{percentile, Figure};
use anyhow::{bail, Result};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one density run measured.
#[derive(Debug, Clone)]
pub struct DensityRun {
    pub tenants: usize,
    pub minutes: f64,
    pub lags_ms: Vec<f64>,
    pub ok_runs: u64,
    pub failed_runs: u64,
    pub peak_rss: u64,
    /// CPU time over wall time (1.0 = one core busy).
    pub cpu_cores: f64,
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn run() -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let small = env_f64("BENCH_DENSITY_TENANTS", 1000.0) as usize;
    let large = env_f64("BENCH_DENSITY_LARGE_TENANTS", 10_000.0) as usize;
    let runs = [
        (small, env_f64("BENCH_DENSITY_MINUTES", 10.0)),
        (large, env_f64("BENCH_DENSITY_LARGE_MINUTES", 3.0)),
    ];
    for (tenants, minutes) in runs {
        if tenants == 0 || minutes <= 0.0 {
            continue;
        }
        let r = density(tenants, minutes)?;
        let label = format!("{tenants} tenants, {} min", r.minutes);
        let mut lags = r.lags_ms.clone();
        let p50 = percentile(&mut lags, 50.0) / 1e3;
        let p99 = percentile(&mut lags, 99.0) / 1e3;
        let small_run = tenants == small;
        let mut p99f = Figure::new("density", format!("{label}: schedule lag p99"), p99, "s");
        let mut rss = Figure::new(
            "density",
            format!("{label}: host peak RSS"),
            r.peak_rss as f64 / 1e6,
            "MB",
        );
        let mut failed = Figure::new(
            "density",
            format!("{label}: failed runs"),
            r.failed_runs as f64,
            "runs",
        );
        if small_run {
            p99f = p99f.at_most(2.0);
            rss = rss.at_most(300.0);
        } else {
            failed = failed.at_most(0.0);
        }
        figures.push(Figure::new(
            "density",
            format!("{label}: runs started"),
            r.lags_ms.len() as f64,
            "runs",
        ));
        figures.push(Figure::new(
            "density",
            format!("{label}: runs ok"),
            r.ok_runs as f64,
            "runs",
        ));
        figures.push(failed);
        figures.push(Figure::new(
            "density",
            format!("{label}: schedule lag p50"),
            p50,
            "s",
        ));
        figures.push(p99f);
        figures.push(rss);
        figures.push(Figure::new(
            "density",
            format!("{label}: host CPU"),
            r.cpu_cores * 100.0,
            "% of a core",
        ));
    }
    Ok(figures)
}

/// The loopback address of tenant `i`: all of 127/8 reaches the simulator.
fn tenant_host(i: usize) -> String {
    format!("127.1.{}.{}", i / 250, i % 250 + 1)
}

pub fn density(tenants: usize, minutes: f64) -> Result<DensityRun> {
    let dir = tempfile::tempdir()?;
    // Every tenant sees one event a minute (the same ones: one simulator).
    let sim = Sim::start(&[
        "--listen".into(),
        "0.0.0.0:0".into(),
        "--seed".into(),
        "3".into(),
        "--rate".into(),
        "60".into(),
        "--history-hours".into(),
        "2".into(),
        "--rate-limit".into(),
        "1000000000".into(),
    ])?;
    let mut connectors = String::new();
    for i in 0..tenants {
        connectors.push_str(&util::connector_toml(
            &format!("t{i}-tap"),
            &format!("t{i}"),
            &format!("http://{}:{}", tenant_host(i), sim.port),
            "interval_min = 1\ninitial_lookback_hours = 1\ncontent_types = [\"events\"]",
        ));
    }
    let config = util::workspace(dir.path(), "shutdown_grace_secs = 20", &connectors)?;
    let check = Command::new(util::dphost_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()?;
    if !check.status.success() {
        bail!("dphost check: {}", String::from_utf8_lossy(&check.stdout));
    }
    let log_path = dir.path().join("run.log");
    let mut child = Command::new(util::dphost_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info,dphost::schedule=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()?;
    let pid = child.id();
    let hwm = util::watch_peak_rss(pid);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(minutes * 60.0);
    let mut peak_rss = 0;
    let mut cpu = Duration::ZERO;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_secs(1));
        if let Some((rss, c)) = util::proc_usage(pid) {
            peak_rss = peak_rss.max(rss);
            cpu = c;
        } else {
            bail!("dphost run ended early; see its log: {}", tail(&log_path));
        }
    }
    let wall = started.elapsed();
    // SAFETY: `pid` is our running child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    util::wait_with_usage(&mut child)?;
    peak_rss = peak_rss.max(hwm.join().expect("the RSS watcher does not panic"));
    let log = std::fs::read_to_string(&log_path)?;
    let mut lags_ms = Vec::new();
    let mut ok_runs = 0;
    let mut failed_runs = 0;
    for line in log.lines() {
        if line.contains("run starts") {
            if let Some(v) = field(line, "lag_ms=") {
                lags_ms.push(v);
            }
        } else if line.contains("collect ok in") {
            ok_runs += 1;
        } else if line.contains("WARN") && line.contains(" collect ") && line.contains(" after ") {
            failed_runs += 1;
        }
    }
    Ok(DensityRun {
        tenants,
        minutes,
        lags_ms,
        ok_runs,
        failed_runs,
        peak_rss,
        cpu_cores: cpu.as_secs_f64() / wall.as_secs_f64(),
    })
}

fn field(line: &str, key: &str) -> Option<f64> {
    let at = line.find(key)? + key.len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_fields_and_tenant_hosts() {
        let line =
            "2026-11-28T11:00:00Z DEBUG dphost::schedule: run starts connector=t1-tap lag_ms=1234";
        assert_eq!(field(line, "lag_ms="), Some(1234.0));
        assert_eq!(tenant_host(0), "127.1.0.1");
        assert_eq!(tenant_host(9_999), "127.1.39.250");
    }
}
