//! Paths, the simulator, the clock file and process measurements.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

pub fn dphost_bin() -> PathBuf {
    root().join("target/release/dphost")
}

pub fn tap_sim_bin() -> PathBuf {
    root().join("target/release/tap-sim")
}

pub fn tap_component() -> PathBuf {
    root().join("target/wasm32-wasip2/release/proofpoint_tap.wasm")
}

pub fn pipeline_component() -> PathBuf {
    root().join("target/bench-wasm/wasm32-wasip2/release/bench_pipeline.wasm")
}

/// Fails with what to build when an artifact is missing.
pub fn require(path: &Path) -> Result<()> {
    if !path.exists() {
        bail!(
            "{} is missing: run `make bench` (it builds it)",
            path.display()
        );
    }
    Ok(())
}

/// The simulator's fixed "now" for single-window runs.
pub const T0: &str = "2026-11-20T10:00:00Z";

pub const PRINCIPAL: &str = "sim-principal";
pub const SECRET: &str = "sim-secret";

/// A running `tap-sim`.
pub struct Sim {
    child: Child,
    pub url: String,
    pub port: u16,
}

impl Sim {
    pub fn start(args: &[String]) -> Result<Sim> {
        require(&tap_sim_bin())?;
        let mut child = Command::new(tap_sim_bin())
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
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no port in {url}"))?;
        Ok(Sim { child, url, port })
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the clock file atomically.
pub fn write_clock(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{text}\n"))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// How a child process ended and what it used (from `wait4`).
#[derive(Debug, Clone)]
pub struct Finished {
    pub success: bool,
    pub cpu: Duration,
}

/// Waits for `child` and reads its own resource usage.
pub fn wait_with_usage(child: &mut Child) -> Result<Finished> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid, and wait4 writes it in full.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet reaped; pointers are valid.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Finished {
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
    })
}

/// Peak resident set size (VmHWM) of a running process, bytes. (The
/// `ru_maxrss` of `wait4` is no use for this: a forked child's counts the
/// parent's memory copied at the fork.)
pub fn proc_peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Samples `proc_peak_rss(pid)` every 50 ms until the process is gone;
/// returns the last (highest) value.
pub fn watch_peak_rss(pid: u32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while let Some(hwm) = proc_peak_rss(pid) {
            peak = peak.max(hwm);
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    })
}

/// VmRSS and CPU time (user + system) of a running process, from /proc.
pub fn proc_usage(pid: u32) -> Option<(u64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) end with ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((rss_kb * 1024, Duration::from_millis(ticks * 1000 / hz)))
}

/// A `[[connector]]` table for the TAP component.
pub fn connector_toml(name: &str, tenant: &str, host_url: &str, extra: &str) -> String {
    format!(
        "[[connector]]\nname = \"{name}\"\ntenant = \"{tenant}\"\ncomponent = \"proofpoint_tap\"\nhost_url = \"{host_url}\"\nprincipal = \"{PRINCIPAL}\"\nsecret = \"{SECRET}\"\n{extra}\n"
    )
}

/// A dphost working folder: config, data and the TAP component.
pub fn workspace(dir: &Path, host_extra: &str, connectors: &str) -> Result<PathBuf> {
    require(&tap_component())?;
    let components = dir.join("components");
    std::fs::create_dir_all(&components)?;
    std::fs::copy(tap_component(), components.join("proofpoint_tap.wasm"))?;
    let config = dir.join("dphost.toml");
    std::fs::write(
        &config,
        format!("[host]\ndata_dir = \"data\"\ncomponents_dir = \"components\"\n{host_extra}\n\n{connectors}"),
    )?;
    Ok(config)
}
