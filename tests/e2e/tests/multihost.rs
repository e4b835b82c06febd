//! Several `dphost run` processes on one PostgreSQL store (a throwaway
//! server, tests/postgres/postgres.sh), against tap-sim:
//!
//! - three hosts, 50 tenants: every tenant collected, each by one host at a
//!   time, the work spread evenly; one host killed with SIGKILL mid-run: its
//!   tenants move to the others within the lease time and the store equals
//!   `/_sim/truth` (nothing missing, nothing twice, alert counts exact, each
//!   outbox action once);
//! - a host frozen with SIGSTOP past its lease, then resumed, cannot commit
//!   (fencing) and says so in its log and its run's outcome;
//! - the throughput with one host and with three.
//!
//! The hosts and the simulator share a frozen clock file, so the truth is
//! fixed; leases run on the database's real clock.

use anyhow::{bail, Context, Result};
use e2e::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use time::macros::datetime;

const LEASE_SECS: u64 = 6;

/// A `dphost run` process with JSON logs in a file.
struct HostProc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl HostProc {
    fn start(ws: &Workspace, name: &str) -> Result<HostProc> {
        Self::start_with(ws, name, &[])
    }

    fn start_with(ws: &Workspace, name: &str, args: &[&str]) -> Result<HostProc> {
        let log = ws.dir.path().join(format!("{name}.log"));
        let config = ws.dir.path().join(format!("{name}.toml"));
        // The same file for every host, but for the host's name.
        let text = std::fs::read_to_string(ws.config_path())?.replacen(
            &format!("host_name = \"{}\"", pg::TEST_HOST),
            &format!("host_name = \"{name}\""),
            1,
        );
        std::fs::write(&config, text)?;
        let child = Command::new(dphost_bin())
            .args(["run", "--log-format", "json"])
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,dphost::schedule=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting dphost run")?;
        Ok(HostProc {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill {sig} {} failed", self.pid());
        }
        Ok(())
    }

    fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's JSON lines.
    fn lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Per connector, its runs on this host: (start, end) in ms since the
    /// epoch, an unfinished run ending at `open_end`.
    fn runs(&self, open_end: i64) -> BTreeMap<String, Vec<(i64, i64)>> {
        let mut open: BTreeMap<String, i64> = BTreeMap::new();
        let mut out: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
        for l in self.lines() {
            let Some(c) = l["fields"]["connector"].as_str() else {
                continue;
            };
            let msg = l["fields"]["message"].as_str().unwrap_or("");
            let at = l["timestamp"]
                .as_str()
                .and_then(|t| parse_rfc3339(t).ok())
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .unwrap_or(0);
            if msg == "run starts" {
                open.insert(c.to_string(), at);
            } else if msg.starts_with("collect ") {
                if let Some(start) = open.remove(c) {
                    out.entry(c.to_string()).or_default().push((start, at));
                }
            }
        }
        for (c, start) in open {
            out.entry(c).or_default().push((start, open_end));
        }
        out
    }

    /// Connectors with a run in progress now.
    fn running(&self) -> Vec<String> {
        self.runs(i64::MAX)
            .into_iter()
            .filter(|(_, r)| r.iter().any(|(_, end)| *end == i64::MAX))
            .map(|(c, _)| c)
            .collect()
    }

    /// Commits that landed on this host so far (its "collect ok" lines'
    /// written counts are at the end only; the running runs' progress is in
    /// the store): runs finished.
    fn finished_runs(&self) -> usize {
        self.runs(0)
            .values()
            .flatten()
            .filter(|(_, e)| *e != 0)
            .count()
    }
}

impl Drop for HostProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// connector -> owning host, from the store.
fn owners(ws: &Workspace) -> Result<BTreeMap<String, Option<String>>> {
    ws.rows(
        "SELECT connector, owner FROM connector_leases ORDER BY connector",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok((
            r[0].text()?,
            match &r[1] {
                e2e::store::Cell::Text(t) => Some(t.clone()),
                _ => None,
            },
        ))
    })
    .collect()
}

fn per_owner(owners: &BTreeMap<String, Option<String>>) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for o in owners.values().flatten() {
        *n.entry(o.clone()).or_default() += 1;
    }
    n
}

/// The workspace: `tenants` TAP connectors on one simulator, a frozen
/// clock, an AD target nobody answers (actions stay queued).
fn setup(
    store: TestStore,
    tenants: usize,
    sim_args: &[&str],
    connector_extra: &str,
) -> Result<(Workspace, Sim, SimClock)> {
    let ws = Workspace::with_store(store)?;
    let clock = SimClock::new(ws.dir.path(), datetime!(2026-11-20 10:00:00 UTC))?;
    let path = clock.path().display().to_string();
    let mut args = vec!["--clock-file", path.as_str(), "--max-lag-min", "0"];
    args.extend_from_slice(sim_args);
    let sim = Sim::start(&args)?;
    std::fs::write(ws.dir.path().join("ad-password"), "x")?;
    std::fs::write(ws.dir.path().join("ad-ca.pem"), "")?;
    let mut tables = String::from("[[ad]]\nname = \"corp\"\nurl = \"ldaps://127.0.0.1:9\"\nbind_dn = \"svc@corp.test\"\npassword_file = \"ad-password\"\nbase_dn = \"DC=corp,DC=test\"\nca_file = \"ad-ca.pem\"\n\n");
    for i in 0..tenants {
        tables.push_str(&tap_connector(
            &format!("t{i:02}"),
            &format!("tenant-{i:02}"),
            &sim,
            &format!(
                "interval_min = 1440\ncontent_types = [\"events\"]\n{connector_extra}\n[connector.response.disable_user]\nenabled = true\nad = \"corp\"\n"
            ),
        ));
    }
    ws.write_config_with_host(
        &format!(
            "clock_file = {path:?}\nlease_secs = {LEASE_SECS}\nmax_concurrent_runs = 64\nmax_runs_per_tenant = 1\nshutdown_grace_secs = 2"
        ),
        &tables,
    )?;
    // Compiles the component into the shared cache once.
    let check = ws.dphost(&["check"])?;
    assert!(check.status.success(), "{}", text(&check));
    Ok((ws, sim, clock))
}

/// Syslog events per connector, as (event_type, original) pairs.
fn landed_by_connector(ws: &Workspace) -> Result<BTreeMap<String, Vec<(String, Value)>>> {
    let mut out: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for r in ws.search("syslog", "msg_class:proofpoint_tap_event")? {
        out.entry(r["connector"].as_str().unwrap_or("").to_string())
            .or_default()
            .push((
                r["event_type"].as_str().unwrap_or("").to_string(),
                r["proofpoint_tap"].clone(),
            ));
    }
    Ok(out)
}

/// Waits until `tenants` connectors each hold `per_tenant` events.
fn wait_collected(
    ws: &Workspace,
    tenants: usize,
    per_tenant: usize,
    patience: Duration,
    hosts: &[&HostProc],
) -> Result<Duration> {
    let started = Instant::now();
    let want = (tenants * per_tenant) as i64;
    loop {
        let n = ws.scalar("SELECT count(*) FROM records WHERE idx = 'syslog'")?;
        if n >= want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > patience {
            let logs: Vec<String> = hosts
                .iter()
                .map(|h| {
                    let t = h.log_text();
                    format!("{}: ...{}", h.name, &t[t.len().saturating_sub(3000)..])
                })
                .collect();
            bail!(
                "only {n} of {want} events landed after {patience:?}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The alert name's event type (`clickDelivered` is from clicksPermitted).
fn alert_event_type(name: &str) -> String {
    match name.trim_start_matches("Proofpoint TAP ") {
        "clickDelivered" => "clickPermitted".into(),
        other => other.into(),
    }
}

/// Per connector: events equal the truth; alert counts per (type, sender)
/// equal the events'; the outbox holds each recipient of each triggering
/// alert once. Returns (events, alerts, actions) in all.
fn assert_store_equals_truth(
    ws: &Workspace,
    truth: &[(String, Value)],
    tenants: usize,
) -> Result<(usize, usize, usize)> {
    ws.assert_store_intact()?;
    let landed = landed_by_connector(ws)?;
    assert_eq!(landed.len(), tenants, "every tenant collected");
    for (c, events) in &landed {
        assert_same_events(events, truth, &format!("connector {c}"));
    }
    let mut alerts_by: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for a in ws.search("alerts", "msg_class:proofpoint_tap_alert")? {
        alerts_by
            .entry(a["connector"].as_str().unwrap_or("").to_string())
            .or_default()
            .push(a);
    }
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (t, e) in truth {
        let sender = e["sender"].as_str().unwrap_or("").trim().to_lowercase();
        *want.entry((t.clone(), sender)).or_default() += 1;
    }
    let by_connector = ws.rows("SELECT connector, target, params FROM outbox", &[])?;
    let mut got_actions: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for r in &by_connector {
        let p: Value = serde_json::from_str(&r[2].text()?)?;
        got_actions.entry(r[0].text()?).or_default().push((
            p["alert_id"].as_str().unwrap_or("").to_string(),
            r[1].text()?,
        ));
    }
    let (mut alerts_n, mut actions_n) = (0, 0);
    for c in landed.keys() {
        let alerts = alerts_by.get(c).cloned().unwrap_or_default();
        let mut got: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut want_actions = Vec::new();
        for a in &alerts {
            let kind = a["xdr_event"]["name"].as_str().unwrap_or("");
            let key = (
                alert_event_type(kind),
                a["email"]["sender"]["address"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            );
            *got.entry(key).or_default() += a["count"].as_u64().unwrap_or(0);
            if matches!(
                kind.trim_start_matches("Proofpoint TAP "),
                "clickDelivered" | "messageDelivered"
            ) {
                for r in a["email"]["recipient"]["addresses"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    want_actions.push((
                        a["alert"]["id"].as_str().unwrap_or("").to_string(),
                        r.as_str().unwrap_or("").to_string(),
                    ));
                }
            }
        }
        // Alerts are keyed by the sender as the connector normalises it:
        // compare the totals per type, and the per-sender counts' multiset.
        let per_type = |m: &BTreeMap<(String, String), u64>| {
            let mut t: BTreeMap<String, u64> = BTreeMap::new();
            for ((ty, _), n) in m {
                *t.entry(ty.clone()).or_default() += n;
            }
            t
        };
        let counts = |m: &BTreeMap<(String, String), u64>| {
            let mut v: Vec<u64> = m.values().copied().collect();
            v.sort();
            v
        };
        assert_eq!(
            per_type(&got),
            per_type(&want),
            "connector {c}: alert counts per type"
        );
        assert_eq!(
            counts(&got),
            counts(&want),
            "connector {c}: alert counts per type and sender"
        );
        let mut have = got_actions.get(c).cloned().unwrap_or_default();
        have.sort();
        want_actions.sort();
        assert_eq!(
            have, want_actions,
            "connector {c}: each recipient of each triggering alert queued once"
        );
        alerts_n += alerts.len();
        actions_n += have.len();
    }
    assert!(actions_n > 0, "some actions were queued");
    Ok((landed.values().map(Vec::len).sum(), alerts_n, actions_n))
}

/// Runs of one connector on different hosts never overlap in time.
fn assert_one_host_at_a_time(hosts: &[(&HostProc, i64)]) {
    let mut all: BTreeMap<String, Vec<(i64, i64, String)>> = BTreeMap::new();
    for (h, open_end) in hosts {
        for (c, runs) in h.runs(*open_end) {
            for (s, e) in runs {
                all.entry(c.clone())
                    .or_default()
                    .push((s, e, h.name.clone()));
            }
        }
    }
    for (c, mut runs) in all {
        runs.sort();
        for w in runs.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            assert!(
                a.2 == b.2 || a.1 <= b.0,
                "connector {c} ran on {} ({}..{}) and on {} ({}..{}) at once",
                a.2,
                a.0,
                a.1,
                b.2,
                b.0,
                b.1
            );
        }
    }
}

#[test]
fn three_hosts_share_fifty_tenants_and_one_killed_loses_nothing() -> Result<()> {
    const TENANTS: usize = 50;
    let started = Instant::now();
    let (ws, sim, clock) = setup(
        TestStore::postgres()?,
        TENANTS,
        &["--seed", "91", "--rate", "60", "--history-hours", "3"],
        "initial_lookback_hours = 4\nmax_window_minutes = 20\n[connector.limits]\nmax_batch_records = 10",
    )?;
    let truth = sim.truth_between(
        None,
        Some(&rfc3339(clock.now() - time::Duration::seconds(60))),
    )?;
    assert!(truth.len() > 100, "{} events", truth.len());
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let admin = format!("127.0.0.1:{admin_port}");
    let mut hosts = vec![HostProc::start_with(&ws, "h1", &["--admin", &admin])?];
    for i in 2..=3 {
        hosts.push(HostProc::start(&ws, &format!("h{i}"))?);
    }

    // All 50 owned, no host above its share (17) while all three live.
    let share = TENANTS.div_ceil(3);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = owners(&ws).unwrap_or_default();
        let counts = per_owner(&o);
        assert!(
            counts.values().all(|n| *n <= share),
            "a host took more than its share of {share}: {counts:?}"
        );
        if o.len() == TENANTS && o.values().all(Option::is_some) && counts.len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "leases not spread: {counts:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // h1's admin API shows its leases as the store has them.
    let h1_held = per_owner(&owners(&ws)?).get("h1").copied().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = reqwest::blocking::get(format!("http://{admin}/metrics"))
            .and_then(|r| r.text())
            .unwrap_or_default();
        let status: Value = reqwest::blocking::get(format!("http://{admin}/status"))
            .and_then(|r| r.json())
            .unwrap_or(Value::Null);
        let held = status["leases"]["held"].as_object().map(|m| m.len());
        if metrics.contains(&format!("dphost_leases_held {h1_held}\n"))
            && metrics.contains("dphost_lease_hosts 3\n")
            && metrics.contains("dphost_connector_lease{connector=")
            && held == Some(h1_held)
            && status["leases"]["share"] == share
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "h1's admin API does not show its {h1_held} leases:\n{metrics}\n{status:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Kill h3 while it runs connectors that have committed something.
    let victim = 2;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let running = hosts[victim].running();
        let stored =
            ws.scalar("SELECT count(DISTINCT connector) FROM records WHERE idx = 'syslog'")?;
        if !running.is_empty() && stored >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "h3 never ran anything:\n{}",
            hosts[victim].log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = owners(&ws)?;
    let moved: BTreeSet<String> = before
        .iter()
        .filter(|(_, o)| o.as_deref() == Some("h3"))
        .map(|(c, _)| c.clone())
        .collect();
    let interrupted = hosts[victim].running();
    let killed_at = now_ms();
    let kill_instant = Instant::now();
    hosts[victim].kill9()?;
    // Its tenants move within the lease time (plus one renewal round).
    let takeover = loop {
        let o = owners(&ws)?;
        if moved
            .iter()
            .all(|c| matches!(o.get(c), Some(Some(h)) if h != "h3"))
        {
            break kill_instant.elapsed();
        }
        assert!(
            kill_instant.elapsed() < Duration::from_secs(LEASE_SECS * 3),
            "h3's connectors not taken over after {:?}: {o:?}",
            kill_instant.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let bound = Duration::from_secs(LEASE_SECS)
        + Duration::from_secs(LEASE_SECS) / 3
        + Duration::from_secs(2);
    assert!(
        takeover <= bound,
        "takeover took {takeover:?}, more than {bound:?}"
    );
    let counts = per_owner(&owners(&ws)?);
    assert!(
        counts.values().all(|n| *n <= TENANTS.div_ceil(2)),
        "{counts:?}"
    );

    let survivors: Vec<&HostProc> = hosts[..2].iter().collect();
    let collect_time = wait_collected(
        &ws,
        TENANTS,
        truth.len(),
        Duration::from_secs(300),
        &survivors,
    )?;
    // Whatever is in progress finishes; then compare.
    std::thread::sleep(Duration::from_secs(1));
    let (events, alerts, actions) = assert_store_equals_truth(&ws, &truth, TENANTS)?;
    assert_one_host_at_a_time(&[
        (&hosts[0], now_ms()),
        (&hosts[1], now_ms()),
        (&hosts[2], killed_at),
    ]);
    // Every tenant has a successful collection, by whichever host.
    let ok = ws.scalar(
        "SELECT count(DISTINCT connector) FROM runs WHERE operation = 'collect' AND outcome = 'ok'",
    )?;
    assert_eq!(ok, TENANTS as i64);
    // `dphost status` names the owner of each connector.
    let status = ws.dphost(&["status", "--format", "json"])?;
    assert!(status.status.success(), "{}", text(&status));
    let status: Value = serde_json::from_slice(&status.stdout)?;
    for c in status["connectors"].as_array().unwrap() {
        let owner = c["lease"]["owner"].as_str().unwrap_or("");
        assert!(owner == "h1" || owner == "h2", "{c:#}");
    }
    for h in &hosts {
        assert!(
            !h.log_text().contains(pg::PASSWORD),
            "{}'s log shows the database password",
            h.name
        );
    }
    eprintln!(
        "multihost: {TENANTS} tenants on 3 hosts, {} of them running on h3 when it was killed ({} leases moved); takeover after {:.1?} (lease {LEASE_SECS} s); all collected {:.1?} after the kill; {events} events, {alerts} alerts, {actions} outbox actions, 0 missing, 0 duplicated; {:.1?} in all",
        interrupted.len(),
        moved.len(),
        takeover,
        collect_time,
        started.elapsed()
    );
    Ok(())
}

#[test]
fn a_host_frozen_past_its_lease_cannot_commit_and_says_so() -> Result<()> {
    const TENANTS: usize = 4;
    let (ws, sim, clock) = setup(
        TestStore::postgres()?,
        TENANTS,
        &["--seed", "92", "--rate", "60", "--history-hours", "12"],
        "initial_lookback_hours = 13\nmax_window_minutes = 5\n[connector.limits]\nmax_batch_records = 5",
    )?;
    let truth = sim.truth_between(
        None,
        Some(&rfc3339(clock.now() - time::Duration::seconds(60))),
    )?;
    let hosts = [HostProc::start(&ws, "h1")?, HostProc::start(&ws, "h2")?];
    // Freeze h2 in the middle of a run that has committed.
    let deadline = Instant::now() + Duration::from_secs(120);
    let frozen_runs = loop {
        let running = hosts[1].running();
        let committed: i64 = running
            .iter()
            .map(|c| {
                ws.rows("SELECT count(*) FROM records WHERE connector = $1", &[c])
                    .ok()
                    .and_then(|r| r.first().and_then(|r| r[0].int().ok()))
                    .unwrap_or(0)
            })
            .sum();
        if !running.is_empty() && committed > 0 {
            break running;
        }
        assert!(
            Instant::now() < deadline,
            "h2 never ran:\n{}",
            hosts[1].log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    hosts[1].signal("-STOP")?;
    // Past its lease, h1 takes the frozen host's connectors over.
    let deadline = Instant::now() + Duration::from_secs(LEASE_SECS * 4);
    loop {
        let o = owners(&ws)?;
        if frozen_runs
            .iter()
            .all(|c| o.get(c).cloned().flatten().as_deref() == Some("h1"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "not taken over: {o:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // h1 runs them (their runs did not finish), then h2 wakes up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !frozen_runs
        .iter()
        .any(|c| hosts[0].runs(i64::MAX).contains_key(c))
    {
        assert!(Instant::now() < deadline, "h1 did not run h2's connectors");
        std::thread::sleep(Duration::from_millis(100));
    }
    hosts[1].signal("-CONT")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = hosts[1].log_text();
        if log.contains("commit refused: this host (h2) no longer holds the lease of connector") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "h2 never said it lost the lease:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its run's outcome says so too, and the store is still whole.
    let deadline = Instant::now() + Duration::from_secs(30);
    let lost_runs = loop {
        let rows = ws.rows(
            "SELECT connector, error FROM runs WHERE outcome = 'lease-lost'",
            &[],
        )?;
        if !rows.is_empty() {
            break rows;
        }
        assert!(Instant::now() < deadline, "no run ended lease-lost");
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = lost_runs[0][1].text()?;
    assert!(
        err.contains("no longer holds the lease") && err.contains("held by h1"),
        "{err}"
    );
    let refs: Vec<&HostProc> = hosts.iter().collect();
    wait_collected(&ws, TENANTS, truth.len(), Duration::from_secs(300), &refs)?;
    std::thread::sleep(Duration::from_secs(1));
    assert_store_equals_truth(&ws, &truth, TENANTS)?;
    eprintln!(
        "fencing: h2 frozen during {} run(s), taken over by h1, its commits refused after SIGCONT ({} run(s) ended lease-lost)",
        frozen_runs.len(),
        lost_runs.len()
    );
    Ok(())
}

/// Time for `hosts` fresh hosts to collect `tenants` tenants.
fn collect_with(hosts_n: usize, tenants: usize) -> Result<(Duration, usize)> {
    let (ws, sim, clock) = setup(
        TestStore::postgres()?,
        tenants,
        &["--seed", "93", "--rate", "120", "--history-hours", "3"],
        "initial_lookback_hours = 4\nmax_window_minutes = 60",
    )?;
    let truth = sim.truth_between(
        None,
        Some(&rfc3339(clock.now() - time::Duration::seconds(60))),
    )?;
    let started = Instant::now();
    let hosts: Vec<HostProc> = (1..=hosts_n)
        .map(|i| HostProc::start(&ws, &format!("h{i}")))
        .collect::<Result<_>>()?;
    let refs: Vec<&HostProc> = hosts.iter().collect();
    wait_collected(&ws, tenants, truth.len(), Duration::from_secs(300), &refs)?;
    let took = started.elapsed();
    for h in &hosts {
        assert!(
            h.finished_runs() > 0 || hosts_n > tenants,
            "{} ran nothing",
            h.name
        );
    }
    Ok((took, tenants * truth.len()))
}

#[test]
fn throughput_with_one_host_and_with_three() -> Result<()> {
    let (one, events) = collect_with(1, 30)?;
    let (three, _) = collect_with(3, 30)?;
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    eprintln!(
        "throughput: {events} events of 30 tenants: 1 host {:.1?} ({:.0} events/s), 3 hosts {:.1?} ({:.0} events/s) on this machine's {} cores",
        one,
        rate(one),
        three,
        rate(three),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    Ok(())
}

/// `dphost check` opens the configured store: a wrong password is reported
/// with the URL but never the password; `store_password_env` supplies it.
#[test]
fn check_reports_a_store_it_cannot_open_without_showing_the_password() -> Result<()> {
    let server = pg::server()?;
    let db = server.new_database()?;
    let ws = Workspace::sqlite()?;
    let sim = Sim::start(&["--rate", "0"])?;
    let connector = tap_connector("a", "tenant-a", &sim, "");
    let write = |host_extra: &str| {
        std::fs::write(
            ws.config_path(),
            format!("[host]\ndata_dir = \"data\"\ncomponents_dir = \"components\"\n{host_extra}\n\n{connector}"),
        )
    };
    write(&format!(
        "store = \"postgres://dphost:Wrong-pw-93kq@127.0.0.1:{}/{db}\"",
        server.port
    ))?;
    let out = ws.dphost(&["check"])?;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains(&format!(
            "cannot open the store postgres://dphost@127.0.0.1:{}/{db}",
            server.port
        )) && all.contains("password authentication failed"),
        "{all}"
    );
    assert!(!all.contains("Wrong-pw-93kq"), "{all}");
    write(&format!(
        "store = \"postgres://dphost@127.0.0.1:{}/{db}\"\nstore_password_env = \"DPHOST_TEST_PG_PASSWORD\"",
        server.port
    ))?;
    let out = Command::new(dphost_bin())
        .args(["check", "--config"])
        .arg(ws.config_path())
        .env("DPHOST_TEST_PG_PASSWORD", pg::PASSWORD)
        .output()?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(pg::PASSWORD));
    let out = ws.dphost(&["check"])?;
    assert!(
        text(&out)
            .contains("DPHOST_TEST_PG_PASSWORD named by `[host] store_password_env` is not set"),
        "{}",
        text(&out)
    );
    Ok(())
}
