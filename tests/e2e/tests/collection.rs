//! Collection that loses nothing, end to end: tap-sim and dphost share a
//! simulated clock (a clock file moved forward between runs), so hours and
//! days of a tenant's life pass in seconds. What lands is compared with
//! `/_sim/truth`.

use anyhow::Result;
use e2e::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Instant;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const T0: OffsetDateTime = datetime!(2026-11-20 10:00:00 UTC);
/// The connector's windows end this long before now (its default margin).
const SAFETY_MARGIN: Duration = Duration::seconds(60);

/// A workspace whose host reads the clock file, with one TAP connector.
fn workspace(clock: &SimClock, sim: &Sim, extra: &str) -> Result<Workspace> {
    let ws = Workspace::new()?;
    ws.write_config_with_host(
        &format!("clock_file = {:?}", clock.path().display().to_string()),
        &tap_connector("tap", "acme", sim, extra),
    )?;
    Ok(ws)
}

fn start_sim(clock: &SimClock, args: &[&str]) -> Result<Sim> {
    let path = clock.path().display().to_string();
    let mut all = vec!["--clock-file", path.as_str()];
    all.extend_from_slice(args);
    Sim::start(&all)
}

/// Events filed before the connector's horizon at the clock's time: what
/// a successful run at that time must have collected.
fn truth_to_horizon(sim: &Sim, clock: &SimClock) -> Result<Vec<(String, Value)>> {
    sim.truth_between(None, Some(&rfc3339(clock.now() - SAFETY_MARGIN)))
}

fn quarantined(ws: &Workspace) -> Result<Vec<Value>> {
    ws.search("quarantine", "msg_class:*")
}

/// Every GUID that more than one event (one per recipient) shares.
fn shared_guids(events: &[(String, Value)]) -> BTreeMap<String, usize> {
    let mut n: BTreeMap<String, usize> = BTreeMap::new();
    for (t, e) in events {
        if t.starts_with("message") {
            if let Some(g) = e["GUID"].as_str() {
                *n.entry(g.to_string()).or_default() += 1;
            }
        }
    }
    n.retain(|_, c| *c > 1);
    n
}

#[test]
fn late_events_are_caught_by_runs_every_five_minutes() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut clock = SimClock::new(dir.path(), T0)?;
    // Default indexing lag: each event shows up 0 to 30 minutes late.
    let sim = start_sim(
        &clock,
        &["--seed", "21", "--rate", "300", "--history-hours", "1"],
    )?;
    let ws = workspace(&clock, &sim, "initial_lookback_hours = 2")?;

    // Three simulated hours of runs every five minutes.
    let mut requeried = 0;
    for _ in 0..36 {
        clock.advance(Duration::minutes(5))?;
        let run = ws.once()?;
        assert!(run.ok, "{}", run.text);
        requeried += run.already_stored;
    }
    // Past the lag, one more run.
    clock.advance(Duration::minutes(35))?;
    let run = ws.once()?;
    assert!(run.ok, "{}", run.text);

    let truth = truth_to_horizon(&sim, &clock)?;
    let landed = landed_events(&ws)?;
    assert!(truth.len() > 900, "{} events", truth.len());
    assert_same_events(&landed, &truth, "after 3 hours of 5-minute runs");
    let guids = shared_guids(&truth);
    assert!(
        guids.len() > 20,
        "the simulator should send per-recipient events sharing a GUID: {}",
        guids.len()
    );
    assert_eq!(
        shared_guids(&landed),
        guids,
        "every per-recipient event lands"
    );
    assert!(
        requeried > 0,
        "the look-back re-reads events; they are stored once"
    );
    assert!(quarantined(&ws)?.is_empty());
    eprintln!(
        "late arrival: {} events over {} runs in {:.1?}",
        truth.len(),
        37,
        started.elapsed()
    );
    Ok(())
}

#[test]
fn an_eight_day_outage_leaves_one_gap_record_and_seven_days_collected() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut clock = SimClock::new(dir.path(), T0)?;
    let sim = start_sim(
        &clock,
        &["--seed", "8", "--rate", "60", "--history-hours", "2"],
    )?;
    let ws = workspace(&clock, &sim, "initial_lookback_hours = 3")?;

    let run = ws.once()?;
    assert!(run.ok, "{}", run.text);
    let before = sim.stats()?["siem_requests"].as_u64().unwrap();
    let checkpoint = clock.now() - SAFETY_MARGIN;

    clock.advance(Duration::days(8))?;
    let run = ws.once()?;
    assert!(run.ok, "{}", run.text);
    let stats = sim.stats()?;
    let backfill = stats["siem_requests"].as_u64().unwrap() - before;

    // One gap record: from a look-back (30 min) before the old checkpoint,
    // where late events were still due, to 7 days back (plus the 15 min
    // margin the connector keeps from the API's limit).
    let gaps = ws.search("syslog", "msg_class:proofpoint_tap_gap")?;
    assert_eq!(gaps.len(), 1, "{gaps:#?}");
    let gap = &gaps[0];
    let gap_start = checkpoint - Duration::minutes(30);
    let gap_end = clock.now() - Duration::days(7) + Duration::minutes(15);
    assert_eq!(gap["gap_start"], gap_start.unix_timestamp() * 1000, "{gap}");
    assert_eq!(gap["gap_end"], gap_end.unix_timestamp() * 1000, "{gap}");
    assert_eq!(gap["tenant_name"], "acme");
    assert!(gap["reason"].as_str().unwrap().contains("7 days"), "{gap}");

    // Everything outside the gap landed exactly once: the first run's
    // events before it, and every event of the last 7 days after it.
    let landed = landed_events(&ws)?;
    let outside_gap: Vec<(String, Value)> = sim
        .truth_between(None, Some(&rfc3339(gap_start)))?
        .into_iter()
        .chain(sim.truth_between(
            Some(&rfc3339(gap_end)),
            Some(&rfc3339(clock.now() - SAFETY_MARGIN)),
        )?)
        .collect();
    let in_gap = sim.truth_between(Some(&rfc3339(gap_start)), Some(&rfc3339(gap_end)))?;
    let in_gap_set = multiset(in_gap.iter().map(|(t, e)| (t.as_str(), e)));
    let landed_outside: Vec<(String, Value)> = landed
        .iter()
        .filter(|(t, e)| !in_gap_set.contains_key(&(t.clone(), canonical(e))))
        .cloned()
        .collect();
    assert!(outside_gap.len() > 9000, "{}", outside_gap.len());
    assert_same_events(&landed_outside, &outside_gap, "outside the gap");
    let twice: Vec<_> = multiset(landed.iter().map(|(t, e)| (t.as_str(), e)))
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "landed twice: {:?}", twice.first());
    assert!(
        landed.len() - landed_outside.len() <= in_gap.len(),
        "what landed in the gap was served"
    );

    // The 7-day backfill fits the budget many times over, and was never refused.
    assert!(backfill <= 1800, "{backfill}");
    assert_eq!(stats["responses_429"], 0, "{stats}");
    eprintln!(
        "outage: 7-day backfill took {backfill} SIEM requests; {} events outside the gap; {:.1?}",
        outside_gap.len(),
        started.elapsed()
    );
    Ok(())
}

#[test]
fn a_small_quota_is_never_exceeded_and_collection_resumes_a_day_later() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut clock = SimClock::new(dir.path(), T0)?;
    let sim = start_sim(
        &clock,
        &[
            "--seed",
            "40",
            "--rate",
            "60",
            "--history-hours",
            "48",
            "--rate-limit",
            "40",
        ],
    )?;
    // Twice a day: 13 windows a run, 26 a day, within a quota of 40.
    let ws = workspace(
        &clock,
        &sim,
        "initial_lookback_hours = 48\ninterval_min = 720\nsiem_requests_per_day = 40",
    )?;

    // 48 hours to backfill, 40 requests allowed: the run stops before the
    // API would refuse, and says when it resumes.
    let run = ws.once()?;
    assert!(!run.ok, "{}", run.text);
    let wait = run.rate_limited_secs.expect("rate limited");
    assert!((86_000..=86_400).contains(&wait), "{wait}: {}", run.text);
    let stats = sim.stats()?;
    assert_eq!(stats["siem_requests"], 40, "{stats}");
    assert_eq!(stats["responses_429"], 0, "{stats}");

    // Asked again at once: nothing is sent.
    clock.advance(Duration::minutes(10))?;
    let run = ws.once()?;
    assert!(run.rate_limited_secs.is_some(), "{}", run.text);
    assert_eq!(sim.stats()?["siem_requests"], 40);

    // A day later the quota is back and the run completes.
    clock.advance(Duration::hours(24))?;
    let run = ws.once()?;
    assert!(run.ok, "{}", run.text);
    let stats = sim.stats()?;
    assert_eq!(stats["responses_429"], 0, "{stats}");
    assert_eq!(stats["pools"]["siem_other"]["throttled"], 0, "{stats}");

    let truth = truth_to_horizon(&sim, &clock)?;
    assert!(truth.len() > 3000, "{}", truth.len());
    assert_same_events(&landed_events(&ws)?, &truth, "after the quota came back");
    assert!(ws
        .search("syslog", "msg_class:proofpoint_tap_gap")?
        .is_empty());
    eprintln!(
        "small quota: {} SIEM requests in all, {} events; {:.1?}",
        stats["siem_requests"],
        truth.len(),
        started.elapsed()
    );
    Ok(())
}

/// Thousands of message events (one per line) made from a sample event, with
/// two broken ones: one without `messageTime`, one whose `messageTime` is a
/// number. Both keep a top-level `threatTime` so the simulator files them.
fn events_with_two_malformed(n: usize) -> Result<(String, Vec<String>)> {
    let sample = std::fs::read_to_string(fixtures_dir().join("message_delivered.ndjson"))?;
    let template: Value = serde_json::from_str(
        sample
            .lines()
            .find(|l| !l.contains("queryEndTime") && l.contains("\"id\""))
            .expect("a sample message with an id"),
    )?;
    let base = datetime!(2024-10-11 00:00:00 UTC);
    let mut lines = Vec::new();
    let mut broken = Vec::new();
    for i in 0..n {
        let mut e = template.clone();
        let at = rfc3339(base + Duration::seconds(10 * i as i64));
        e["id"] = format!("event-{i}").into();
        e["GUID"] = format!("guid-{}", i / 2).into();
        e["recipient"] = serde_json::json!([format!("user{i}@example.com")]);
        e["messageTime"] = at.clone().into();
        if i == n / 3 {
            e.as_object_mut().unwrap().remove("messageTime");
            e["threatTime"] = at.into();
            broken.push(format!("event-{i}"));
        } else if i == 2 * n / 3 {
            e["messageTime"] = 1_728_605_000.into();
            e["threatTime"] = at.into();
            broken.push(format!("event-{i}"));
        }
        lines.push(serde_json::to_string(&e)?);
    }
    Ok((lines.join("\n") + "\n", broken))
}

#[test]
fn malformed_events_among_thousands_are_quarantined_and_the_rest_lands() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let (ndjson, broken) = events_with_two_malformed(3000)?;
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, ndjson)?;
    let sim = Sim::start(&[
        "--events",
        file.to_str().unwrap(),
        "--events-type",
        "messagesDelivered",
        "--retime",
        "--max-lag-min",
        "0",
    ])?;
    let ws = Workspace::new()?;
    ws.write_config(&tap_connector(
        "tap",
        "acme",
        &sim,
        "initial_lookback_hours = 24\ncontent_types = [\"events\"]",
    ))?;
    let run = ws.once()?;
    assert!(run.ok, "{}", run.text);

    let truth = sim.truth()?;
    assert_eq!(truth.len(), 3000, "the simulator serves every event");
    let is_broken = |e: &Value| broken.iter().any(|id| e["id"] == id.as_str());
    let good: Vec<(String, Value)> = truth
        .iter()
        .filter(|(_, e)| !is_broken(e))
        .cloned()
        .collect();
    assert_same_events(&landed_events(&ws)?, &good, "all but the malformed");

    let q = quarantined(&ws)?;
    assert_eq!(q.len(), 2, "{q:#?}");
    for (t, e) in truth.iter().filter(|(_, e)| is_broken(e)) {
        let record = q
            .iter()
            .find(|r| r["raw"]["id"] == e["id"])
            .unwrap_or_else(|| panic!("{} not quarantined", e["id"]));
        assert_eq!(record["msg_class"], "proofpoint_tap_quarantine");
        assert_eq!(record["event_type"].as_str(), Some(t.as_str()));
        assert_eq!(canonical(&record["raw"]), canonical(e), "kept as sent");
        let reason = record["reason"].as_str().unwrap();
        assert!(reason.contains("messageTime"), "{reason}");
    }
    assert!(q.iter().any(|r| r["reason"]
        .as_str()
        .unwrap()
        .contains("has no `messageTime`")));
    assert!(q
        .iter()
        .any(|r| r["reason"].as_str().unwrap().contains("1728605000")));
    eprintln!("malformed: {:.1?}", started.elapsed());
    Ok(())
}

/// A one-hour window of about 300 MB (~175,000 events) collected by a
/// component capped at 32 MiB: the body is streamed and committed in
/// batches, so memory does not grow with the window.
#[test]
fn a_300_mb_window_is_collected_in_32_mib() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let clock = SimClock::new(dir.path(), T0)?;
    let sim = start_sim(
        &clock,
        &[
            "--seed",
            "3",
            "--rate",
            "190000",
            "--history-hours",
            "1",
            "--max-lag-min",
            "0",
        ],
    )?;
    let ws = workspace(
        &clock,
        &sim,
        "initial_lookback_hours = 1\ncontent_types = [\"events\"]\n\n[connector.limits]\nmemory_mib = 32\ncpu_seconds = 600",
    )?;
    let run = ws.once()?;
    assert!(run.ok, "{}", run.text);
    let peak = run.peak_memory_mib.expect("peak memory reported");
    let expected = sim.truth_count(Some(&rfc3339(clock.now() - SAFETY_MARGIN)))?;
    assert!(expected > 150_000, "{expected}");
    // "new records" also counts the alerts derived from the events.
    assert!(run.new_records as usize > expected, "{}", run.text);
    let out = ws.dphost(&["search", "--count", "msg_class:proofpoint_tap_event"])?;
    let stored: usize = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    assert_eq!(stored, expected, "{}", run.text);
    // One window, one request.
    assert_eq!(sim.stats()?["siem_requests"], 1);
    // Succeeding within the cap is the point; the figure goes to the notes.
    assert!(peak < 32.0, "peak memory {peak} MiB");
    eprintln!(
        "300 MB window: {expected} events, peak guest memory {peak} MiB, {:.1?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn runs_through_faults_converge_to_the_truth() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut clock = SimClock::new(dir.path(), T0)?;
    // One request in four or five goes wrong, in every way tap-sim knows.
    // (That the budget holds when it binds is the quota test's.)
    let sim = start_sim(
        &clock,
        &[
            "--seed",
            "5",
            "--rate",
            "400",
            "--history-hours",
            "3",
            "--faults",
            "500=0.035,503=0.035,reset=0.035,truncate=0.035,malformed=0.035,429=0.035,slow-first-byte=0.035,slow-body=0.035",
            "--slow-secs",
            "1",
            // A fault sequence in which every kind occurs.
            "--fault-seed",
            "8",
        ],
    )?;
    // Events only, so every fault hits a SIEM request; 10-minute windows,
    // so each run sends several.
    let ws = workspace(
        &clock,
        &sim,
        "initial_lookback_hours = 4\ncontent_types = [\"events\"]\nmax_window_minutes = 10",
    )?;

    // Every 5 simulated minutes (or after the wait a 429 asked for), for
    // at least an hour and until a run succeeds.
    let (mut runs, mut failed, mut rate_limited) = (0, 0, 0);
    loop {
        let run = ws.once()?;
        runs += 1;
        assert!(runs < 80, "no convergence after {runs} runs: {}", run.text);
        if run.ok {
            if runs >= 12 {
                break;
            }
            clock.advance(Duration::minutes(5))?;
            continue;
        }
        failed += 1;
        match run.rate_limited_secs {
            Some(wait) => {
                rate_limited += 1;
                clock.advance(Duration::seconds(wait as i64 + 1))?;
            }
            None => {
                assert!(
                    run.text.contains("temporary failure"),
                    "only transient failures: {}",
                    run.text
                );
                clock.advance(Duration::minutes(5))?;
            }
        }
    }

    let stats = sim.stats()?;
    let faults: u64 = stats["faults"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let total = stats["total_requests"].as_u64().unwrap();
    assert!(
        faults * 5 >= total,
        "at least one request in five was faulty: {faults} of {total}: {stats}"
    );
    for (kind, n) in stats["faults"].as_object().unwrap() {
        assert!(
            n.as_u64().unwrap() >= 1,
            "no {kind} fault was injected: {stats}"
        );
    }
    let truth = truth_to_horizon(&sim, &clock)?;
    assert!(truth.len() > 1000, "{}", truth.len());
    assert_same_events(&landed_events(&ws)?, &truth, "after runs through faults");
    // The request budget held: the API never had to refuse a request for
    // quota, and the host counted every request the API admitted (retries
    // of faulty responses included) against the credential's budget.
    let (admitted, throttled) = ["siem_other", "clicks_permitted"]
        .iter()
        .map(|p| &stats["pools"][p])
        .fold((0, 0), |(a, t), p| {
            (
                a + p["admitted"].as_u64().unwrap(),
                t + p["throttled"].as_u64().unwrap(),
            )
        });
    assert_eq!(throttled, 0, "the API refused requests for quota: {stats}");
    let counted = ws.scalar("SELECT count(*) FROM request_budget")? as u64;
    assert!(
        counted >= admitted && admitted > 0,
        "host counted {counted} requests, the API admitted {admitted}"
    );
    assert!(
        quarantined(&ws)?.is_empty(),
        "damage on the way is never quarantined as an event"
    );
    eprintln!(
        "faults: {runs} runs ({failed} failed, {rate_limited} rate limited), {faults} faults injected ({}) in {} requests, {admitted} admitted, {counted} counted by the host, 0 throttled; {} events; {:.1?}",
        stats["faults"],
        stats["total_requests"],
        truth.len(),
        started.elapsed()
    );
    Ok(())
}

#[test]
fn a_429_backs_off_in_state_and_runs_before_its_end_send_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut clock = SimClock::new(dir.path(), T0)?;
    // Every request is refused with 429 (no Retry-After, like Proofpoint).
    let sim = start_sim(&clock, &["--rate", "60", "--faults", "429=1"])?;
    let ws = workspace(&clock, &sim, "initial_lookback_hours = 2")?;
    let requests = || -> Result<u64> { Ok(sim.stats()?["total_requests"].as_u64().unwrap()) };

    let run = ws.once()?;
    let first = run.rate_limited_secs.expect("rate limited");
    assert!(
        (240..=300).contains(&first),
        "5 min less jitter: {}",
        run.text
    );
    assert_eq!(requests()?, 1, "a 429 is not retried within the run");

    // Before the backoff ends, runs send nothing.
    clock.advance(Duration::seconds(first as i64 - 10))?;
    let run = ws.once()?;
    assert_eq!(run.rate_limited_secs, Some(10), "{}", run.text);
    assert_eq!(requests()?, 1);

    // After it, the next 429 doubles the wait; nothing was committed.
    clock.advance(Duration::seconds(10))?;
    let run = ws.once()?;
    let second = run.rate_limited_secs.expect("rate limited");
    assert!((480..=600).contains(&second), "{}", run.text);
    assert_eq!(requests()?, 2);
    assert!(landed_events(&ws)?.is_empty());
    Ok(())
}

/// A window holding more than one run can process (a CPU budget of 1.5 s
/// for ~55,000 events) is still collected: the first batches of a window
/// mark it as in progress, and a run that finds the mark (its predecessor
/// was stopped inside that window) asks for windows half as long.
#[test]
fn a_window_too_big_for_one_run_is_collected_over_several_runs() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut clock = SimClock::new(dir.path(), T0)?;
    let sim = start_sim(
        &clock,
        &[
            "--seed",
            "9",
            "--rate",
            "60000",
            "--history-hours",
            "1",
            "--max-lag-min",
            "0",
        ],
    )?;
    // No look-back: what each run must re-read has to fit in one run too.
    let ws = workspace(
        &clock,
        &sim,
        "initial_lookback_hours = 1\ncontent_types = [\"events\"]\nlookback_minutes = 0\n\n[connector.limits]\nmemory_mib = 32\ncpu_seconds = 1.5",
    )?;
    let mut runs = 0;
    let mut stopped = 0;
    loop {
        let run = ws.once()?;
        runs += 1;
        if run.ok {
            break;
        }
        assert!(run.text.contains("cpu-deadline"), "{}", run.text);
        stopped += 1;
        assert!(runs < 25, "no progress after {runs} runs: {}", run.text);
    }
    assert!(stopped >= 1, "the budget should stop the first run");
    // A run stopped between the last two windows can leave a remainder
    // shorter than 30 s before the horizon; a span that short waits until it
    // grows, so the next run is ok without reaching the horizon. Time moves
    // on once more, and that run completes the picture.
    clock.advance(Duration::seconds(60))?;
    let last = ws.once()?;
    assert!(last.ok, "{}", last.text);
    let truth = truth_to_horizon(&sim, &clock)?;
    assert!(truth.len() > 50_000, "{}", truth.len());
    let landed = ws.dphost(&["search", "--count", "msg_class:proofpoint_tap_event"])?;
    assert_eq!(
        String::from_utf8_lossy(&landed.stdout).trim(),
        truth.len().to_string(),
        "{}",
        text(&landed)
    );
    eprintln!(
        "too big for one run: {} events in {runs} runs ({stopped} stopped by the CPU budget); {:.1?}",
        truth.len(),
        started.elapsed()
    );
    Ok(())
}
