//! Crash consistency: `dphost once` is killed with SIGKILL at random points,
//! again and again, over one collection of thousands of events with late
//! arrivals, and restarted each time. In the end the store equals the
//! simulator's truth: nothing missing, nothing twice, alert counts exact,
//! and the outbox holds exactly one disable-user action per recipient of
//! every triggering alert (none lost, none twice). The action is queued for
//! an AD target that cannot be reached, so the worker's passes (in every
//! `dphost once`) are killed too; that the worker performs an action at most
//! once across crashes is proved against a real DC in `ad.rs`.
//!
//! `make test` kills 50 times; `make soak` sets `DPHOST_SOAK_KILLS` (e.g.
//! 500). `DPHOST_KILL_SEED` replays a sequence of kill points.

use anyhow::Result;
use e2e::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration as StdDuration, Instant};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const T0: OffsetDateTime = datetime!(2026-11-20 10:00:00 UTC);

/// xorshift64*: reproducible kill points without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The alert name's event type (`clickDelivered` is from clicksPermitted).
fn alert_event_type(name: &str) -> String {
    match name.trim_start_matches("Proofpoint TAP ") {
        "clickDelivered" => "clickPermitted".into(),
        other => other.into(),
    }
}

#[test]
fn sigkill_at_random_points_loses_nothing_and_stores_nothing_twice() -> Result<()> {
    let started = Instant::now();
    let kills_wanted = env_u64("DPHOST_SOAK_KILLS", 50);
    let seed = env_u64("DPHOST_KILL_SEED", 0x5eed_cafe);
    let mut rng = Rng(seed.max(1));

    let dir = tempfile::tempdir()?;
    let mut clock = SimClock::new(dir.path(), T0)?;
    // Default indexing lag: events show up 0 to 30 minutes late.
    let sim = Sim::start(&[
        "--clock-file",
        clock.path().to_str().unwrap(),
        "--seed",
        "44",
        "--rate",
        "900",
        "--history-hours",
        "3",
    ])?;
    let ws = Workspace::new()?;
    // A DC that is not there (nothing listens on port 9): actions stay
    // queued, retried by each run's worker pass.
    std::fs::write(ws.dir.path().join("ad-password"), "x")?;
    std::fs::write(ws.dir.path().join("ad-ca.pem"), "")?;
    let ad = "[[ad]]\nname = \"corp\"\nurl = \"ldaps://127.0.0.1:9\"\nbind_dn = \"svc@corp.test\"\npassword_file = \"ad-password\"\nbase_dn = \"DC=corp,DC=test\"\nca_file = \"ad-ca.pem\"\n\n";
    // Small batches: a window takes about 15 commits, so kills also land
    // between the batches of one window (its checkpoint not yet moved).
    ws.write_config_with_host(
        &format!("clock_file = {:?}", clock.path().display().to_string()),
        &format!(
            "{ad}{}",
            tap_connector(
                "tap",
                "acme",
                &sim,
                "initial_lookback_hours = 8\nmax_window_minutes = 10\n[connector.limits]\nmax_batch_records = 10\n[connector.response.disable_user]\nenabled = true\nad = \"corp\"\n",
            )
        ),
    )?;
    // Compile the component into the cache first, so that kills land in
    // collection and commits, not in the one-time compilation.
    let check = ws.dphost(&["check"])?;
    assert!(check.status.success(), "{}", text(&check));

    let stored = || ws.scalar("SELECT count(*) FROM records");
    let (mut kills, mut completed, mut attempts) = (0u64, 0u64, 0u64);
    // Kills of a run that had already committed something, and of those,
    // kills between two batches of one window.
    let (mut kills_after_commits, mut kills_mid_window) = (0u64, 0u64);
    let mut max_delay_ms = 400u64;
    while kills < kills_wanted {
        let before = stored()?;
        attempts += 1;
        assert!(attempts < kills_wanted * 4 + 20, "too few runs were killed");
        let mut child = Command::new(dphost_bin())
            .args(["once", "--config"])
            .arg(ws.config_path())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // Somewhere in start-up, collection or a commit. The range adapts
        // to the machine's speed: shorter when runs finish before their
        // kill point, longer when kills land before the first commit.
        std::thread::sleep(StdDuration::from_millis(5 + rng.below(max_delay_ms)));
        if child.try_wait()?.is_some() {
            completed += 1;
            max_delay_ms = (max_delay_ms * 4 / 5).max(50);
        } else {
            child.kill()?; // SIGKILL
            child.wait()?;
            kills += 1;
            if stored()? > before {
                kills_after_commits += 1;
                if ws.state("tap", "window_in_progress")?.is_some() {
                    kills_mid_window += 1;
                }
            } else {
                max_delay_ms = (max_delay_ms * 11 / 10).min(5_000);
            }
        }
        // Time goes on between attempts; late events keep arriving.
        clock.advance(Duration::minutes(2))?;
    }

    assert!(
        kills_after_commits * 4 >= kills,
        "only {kills_after_commits} of {kills} kills hit a run after it had committed"
    );
    // Typically 8 to 10 in 50 with batches of 10 (2 in 50 was seen with
    // batches of 40 on a quiet machine): 1 in 20 is the bound.
    assert!(
        kills_mid_window * 20 >= kills,
        "only {kills_mid_window} of {kills} kills hit a run between two batches of a window"
    );

    // Past the indexing lag, runs until one completes.
    clock.advance(Duration::minutes(35))?;
    let mut finishing_runs = 0;
    loop {
        finishing_runs += 1;
        let run = ws.once()?;
        if run.ok {
            break;
        }
        assert!(finishing_runs < 5, "{}", run.text);
    }

    ws.assert_store_intact()?;
    let truth = sim.truth_between(None, Some(&rfc3339(clock.now() - Duration::seconds(60))))?;
    assert!(truth.len() > 3000, "{} events", truth.len());
    let landed = landed_events(&ws)?;
    assert_same_events(&landed, &truth, "after the kills");
    assert!(
        ws.search("quarantine", "msg_class:*")?.is_empty(),
        "nothing quarantined"
    );

    // Alerts: every event counted once, in the alert of its type and sender.
    let records = ws.search("syslog", "msg_class:proofpoint_tap_event")?;
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    for r in &records {
        let key = (
            r["event_type"].as_str().unwrap().to_string(),
            r["email"]["sender"]["address"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
        *want.entry(key).or_default() += 1;
    }
    let mut got: BTreeMap<(String, String), u64> = BTreeMap::new();
    let alerts: Vec<Value> = ws.search("alerts", "msg_class:proofpoint_tap_alert")?;
    for a in &alerts {
        let key = (
            alert_event_type(a["xdr_event"]["name"].as_str().unwrap()),
            a["email"]["sender"]["address"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
        *got.entry(key).or_default() += a["count"].as_u64().unwrap();
    }
    assert_eq!(got, want, "alert counts per type and sender");

    // The outbox: one action per recipient of each triggering alert
    // (clickDelivered, messageDelivered), none missing, none twice.
    let mut want_actions: Vec<(String, String)> = Vec::new();
    for a in &alerts {
        let kind = a["alert"]["type"].as_str().unwrap_or_default();
        if !matches!(
            kind.trim_start_matches("Proofpoint TAP "),
            "clickDelivered" | "messageDelivered"
        ) {
            continue;
        }
        for r in a["email"]["recipient"]["addresses"].as_array().unwrap() {
            want_actions.push((
                a["alert"]["id"].as_str().unwrap().to_string(),
                r.as_str().unwrap().to_string(),
            ));
        }
    }
    want_actions.sort();
    let mut got_actions: Vec<(String, String)> = ws
        .outbox()?
        .into_iter()
        .map(|(target, params)| {
            let p: Value = serde_json::from_str(&params).unwrap();
            (p["alert_id"].as_str().unwrap().to_string(), target)
        })
        .collect();
    got_actions.sort();
    assert!(want_actions.len() > 100, "{} actions", want_actions.len());
    assert_eq!(
        got_actions, want_actions,
        "the outbox holds each recipient of each triggering alert once"
    );
    let actions = got_actions.len();

    eprintln!(
        "crash: {kills} SIGKILLs survived ({kills_after_commits} after the run had committed, {kills_mid_window} of them between two batches of a window, {completed} runs finished before their kill point, {finishing_runs} finishing run(s)), seed {seed:#x}; {} events, {} alerts, {actions} outbox actions; 0 missing, 0 duplicated; {:.1?}",
        truth.len(),
        alerts.len(),
        started.elapsed()
    );
    Ok(())
}
