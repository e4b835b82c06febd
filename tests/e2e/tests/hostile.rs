//! Hostile components (`tests/probe`) beside a healthy TAP tenant: each is
//! stopped or refused with a clear status, and the healthy tenant's data is
//! complete and its run is not held up by them.

use anyhow::Result;
use e2e::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const T0: OffsetDateTime = datetime!(2026-11-20 10:00:00 UTC);

fn probe(name: &str, host_url: &str, extra: &str) -> String {
    format!(
        "[[connector]]\nname = \"{name}\"\ntenant = \"mallory\"\ncomponent = \"sandbox_probe\"\nhost_url = \"{host_url}\"\nprincipal = \"{PRINCIPAL}\"\nsecret = \"{SECRET}\"\n{extra}\n"
    )
}

/// A healthy tenant's simulator on a clock file, so its truth is exact.
fn healthy_sim(clock: &SimClock) -> Result<Sim> {
    Sim::start(&[
        "--clock-file",
        clock.path().to_str().unwrap(),
        "--seed",
        "17",
        "--rate",
        "300",
        "--history-hours",
        "2",
        "--max-lag-min",
        "0",
    ])
}

fn healthy_workspace(clock: &SimClock, sim: &Sim, probes: &str) -> Result<Workspace> {
    let ws = Workspace::new()?;
    ws.write_config_with_host(
        &format!("clock_file = {:?}", clock.path().display().to_string()),
        &format!(
            "{}{probes}",
            tap_connector("healthy", "acme", sim, "initial_lookback_hours = 2")
        ),
    )?;
    Ok(ws)
}

/// The healthy tenant stored exactly what the API had up to its horizon.
fn assert_healthy_complete(ws: &Workspace, sim: &Sim, clock: &SimClock) -> Result<usize> {
    let truth = sim.truth_between(None, Some(&rfc3339(clock.now() - Duration::seconds(60))))?;
    assert!(truth.len() > 400, "{}", truth.len());
    assert_same_events(&landed_events(ws)?, &truth, "the healthy tenant");
    Ok(truth.len())
}

fn line_of<'a>(out: &'a str, connector: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{connector} (tenant")))
        .unwrap_or_else(|| panic!("no line for {connector} in:\n{out}"))
}

fn probe_record(ws: &Workspace, id: &str) -> Result<Value> {
    let db = ws.db()?;
    let body: String = db.query_row(
        "SELECT body FROM records WHERE idx = 'syslog' AND record_id = ?1",
        [id],
        |r| r.get(0),
    )?;
    Ok(serde_json::from_str(&body)?)
}

#[test]
fn runaway_and_malicious_components_are_stopped_and_the_healthy_tenant_is_complete() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = SimClock::new(dir.path(), T0)?;
    let sim = healthy_sim(&clock)?;
    let url = sim.url.clone();
    let probes = [
        probe(
            "spinner",
            &url,
            "probe = \"spin\"\nlimits = { cpu_seconds = 6 }",
        ),
        probe("hog", &url, "probe = \"hog\"\nlimits = { memory_mib = 32 }"),
        probe(
            "sleeper",
            &url,
            "probe = \"sleep\"\nlimits = { run_timeout_secs = 2 }",
        ),
        probe("secret-seeker", &url, "probe = \"snoop\""),
        probe("recurser", &url, "probe = \"recurse\""),
        probe(
            "flooder",
            &url,
            "probe = \"flood\"\nlines = 20000\nlimits = { log_lines_per_run = 50 }",
        ),
        probe(
            "giant",
            &url,
            "probe = \"giant\"\nlimits = { max_batch_records = 1000, max_batch_mib = 1 }",
        ),
        probe("garbage", &url, "probe = \"garbage\""),
        probe("trapper", &url, "probe = \"trap\""),
        probe(
            "snooper",
            &url,
            "probe = \"state\"\nvictim = \"healthy\"\nvictim_tenant = \"acme\"",
        ),
    ]
    .concat();
    let ws = healthy_workspace(&clock, &sim, &probes)?;
    let out = ws.dphost(&["once"])?;
    let all = text(&out);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{all}");

    // The healthy tenant: ok, complete, and done before the spinner was
    // stopped (it did not wait for the hostile sandboxes).
    assert!(line_of(&stdout, "healthy").contains(": ok in"), "{all}");
    let events = assert_healthy_complete(&ws, &sim, &clock)?;
    let healthy_end = ws.runs("healthy")?[0].2;
    let spinner_end = ws.runs("spinner")?[0].2;
    assert!(
        healthy_end < spinner_end,
        "the healthy run ended after the spinner was stopped"
    );

    // Infinite loop, allocation, recursion: stopped, each with its reason.
    let l = line_of(&stdout, "spinner");
    assert!(
        l.contains("FAILED (cpu-deadline)") && l.contains("CPU budget of 6 s"),
        "{l}"
    );
    let l = line_of(&stdout, "hog");
    assert!(
        l.contains("FAILED (memory-cap)") && l.contains("memory cap of 32 MiB"),
        "{l}"
    );
    // Rust keeps its frames on a shadow stack in linear memory: running off
    // its end is an out-of-bounds trap (a wasm-stack overflow would say
    // "call stack exhausted"); either way the sandbox stops cleanly.
    let l = line_of(&stdout, "recurser");
    assert!(
        l.contains("FAILED (trapped)")
            && (l.contains("out of bounds memory access") || l.contains("call stack exhausted")),
        "{l}"
    );

    // Waiting without end (no CPU spent): the wall-clock bound stops it.
    let l = line_of(&stdout, "sleeper");
    assert!(
        l.contains("FAILED (timeout)") && l.contains("longer than 2 s"),
        "{l}"
    );

    // Looking for the secret beside a tenant that uses it: not in what the
    // sandbox could see, not in the output.
    let seen = probe_record(&ws, "snoop")?.to_string();
    assert!(seen.contains("proc_environ"), "{seen}");
    assert!(!seen.contains(SECRET), "the secret leaked into the sandbox");
    assert!(
        !all.contains(SECRET),
        "the secret appears in dphost's output"
    );

    // Log flood: the run completes; only the budget's lines reach the log,
    // the rest are counted; the stderr flood is cut to its tail.
    assert!(line_of(&stdout, "flooder").contains(": ok in"), "{all}");
    let flood_lines = stderr.matches(" flood ").count();
    assert!(
        (1..=50).contains(&flood_lines),
        "{flood_lines} flood lines logged"
    );
    assert!(
        stderr.contains("dropped 19950 log lines past the per-run budget"),
        "{stderr:.2000}"
    );
    assert!(stderr.len() < 2 << 20, "stderr is {} bytes", stderr.len());

    // Giant batches: refused whole, with the limit that was hit.
    let giant = probe_record(&ws, "giant")?;
    let too_many = giant["too_many"].as_str().unwrap();
    let too_big = giant["too_big"].as_str().unwrap();
    assert!(
        too_many.starts_with("refused") && too_many.contains("max_batch_records"),
        "{too_many}"
    );
    assert!(
        too_big.starts_with("refused") && too_big.contains("max_batch_mib"),
        "{too_big}"
    );
    assert_eq!(ws.record_ids("giant", "syslog")?, vec!["giant"]);

    // Garbage: every malformed batch refused whole (its good record too).
    let answers = probe_record(&ws, "garbage")?["answers"].clone();
    let answers = answers.as_object().unwrap();
    assert_eq!(answers.len(), 10, "{answers:?}");
    for (case, answer) in answers {
        assert!(
            answer.as_str().unwrap().starts_with("refused: "),
            "{case}: {answer}"
        );
    }
    assert_eq!(ws.record_ids("garbage", "syslog")?, vec!["garbage"]);
    assert!(ws.state("garbage", "k")?.is_none());

    // A trap between commits: the first batch whole, nothing of the second.
    let l = line_of(&stdout, "trapper");
    assert!(
        l.contains("FAILED (trapped)") && l.contains("trapping half way"),
        "{l}"
    );
    let ids = ws.record_ids("trapper", "syslog")?;
    assert_eq!(ids.len(), 100, "{ids:?}");
    assert!(ids.iter().all(|id| id.starts_with("trap-a-")));
    assert_eq!(
        ws.state("trapper", "checkpoint")?.as_deref(),
        Some("after-a")
    );

    // Another tenant's state cannot even be named.
    let snoop = probe_record(&ws, "state")?;
    assert_eq!(snoop["tried"], 10);
    assert_eq!(snoop["found"], serde_json::json!([]), "{snoop}");
    assert!(ws.state("healthy", "checkpoint")?.is_some());
    assert_ne!(
        ws.state("healthy", "checkpoint")?,
        ws.state("trapper", "checkpoint")?
    );

    // `dphost status` names each failing sandbox and why.
    let out = ws.dphost(&["status", "--format", "json"])?;
    let status: Value = serde_json::from_slice(&out.stdout)?;
    let row = |name: &str| {
        status["connectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["connector"] == name)
            .unwrap()
            .clone()
    };
    for (name, outcome) in [
        ("spinner", "cpu-deadline"),
        ("hog", "memory-cap"),
        ("sleeper", "timeout"),
        ("recurser", "trapped"),
        ("trapper", "trapped"),
    ] {
        assert_eq!(row(name)["state"], "failing", "{name}");
        assert_eq!(row(name)["last_outcome"], outcome, "{name}");
    }
    assert_eq!(row("healthy")["state"], "ok");

    // After all that, the next runs work: the healthy tenant carries on
    // (an hour later, every new event), the trapped sandbox runs again.
    let mut clock = clock;
    clock.advance(Duration::hours(1))?;
    let out = ws.dphost(&["once", "--connector", "healthy"])?;
    assert!(out.status.success(), "{}", text(&out));
    let after = assert_healthy_complete(&ws, &sim, &clock)?;
    assert!(after > events);
    eprintln!(
        "hostile: 10 hostile sandboxes beside a healthy tenant; {events} then {after} events, 0 missing, 0 duplicated"
    );
    Ok(())
}

/// A tiny HTTP server on loopback answering every request with `response`,
/// counting connections.
struct RawServer {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl RawServer {
    fn start(response: String) -> Result<RawServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(response.as_bytes());
            }
        });
        Ok(RawServer { port, connections })
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

#[test]
fn requests_are_refused_by_name_and_by_resolved_address_and_redirects_are_not_followed(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = SimClock::new(dir.path(), T0)?;
    let sim = healthy_sim(&clock)?;
    let sim_port = sim.url.rsplit(':').next().unwrap().to_string();
    // Another port of this machine (as the host's admin API would be), and
    // a server whose every answer redirects there.
    let other = RawServer::start(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi".into(),
    )?;
    let redirector = RawServer::start(format!(
        "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{}/admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        other.port
    ))?;
    let siem = "/v2/siem/clicks/blocked?format=json&sinceSeconds=60";
    let by_name = format!("http://localhost:{sim_port}");
    let cases: Vec<(&str, String, String)> = vec![
        // (name, host_url, target)
        (
            "redirect",
            format!("http://127.0.0.1:{}", redirector.port),
            format!("http://127.0.0.1:{}/start", redirector.port),
        ),
        (
            "other-port",
            sim.url.clone(),
            format!("http://127.0.0.1:{}/admin", other.port),
        ),
        (
            "ip-literal",
            by_name.clone(),
            format!("http://127.0.0.1:{sim_port}{siem}"),
        ),
        (
            "metadata-literal",
            sim.url.clone(),
            "http://169.254.169.254/latest/meta-data/".into(),
        ),
        // The allowed name itself, resolving to the metadata service.
        (
            "metadata-by-name",
            "https://metadata.test".into(),
            "https://metadata.test/latest/meta-data/".into(),
        ),
        // A loopback origin whose name resolves off this machine.
        ("rebound", by_name.clone(), format!("{by_name}{siem}")),
        // A public origin resolving into a private network.
        (
            "private",
            "https://api.test:8443".into(),
            format!("https://api.test:8443{siem}"),
        ),
    ];
    let mut probes = String::new();
    for (name, host_url, target) in &cases {
        probes.push_str(&probe(
            name,
            host_url,
            &format!("probe = \"http\"\ntarget_url = \"{target}\""),
        ));
    }
    let ws = healthy_workspace(&clock, &sim, &probes)?;
    let out = std::process::Command::new(dphost_bin())
        .args(["once", "--config"])
        .arg(ws.config_path())
        .env(
            "DPHOST_RESOLVE",
            "metadata.test=169.254.169.254,localhost=169.254.169.254,api.test=10.1.2.3",
        )
        .env_remove("RUST_LOG")
        .output()?;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let outcome = |name: &str| -> String {
        let db = ws.db().unwrap();
        let body: String = db
            .query_row(
                "SELECT body FROM records WHERE connector = ?1 AND record_id = 'http'",
                [name],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}\n{all}"));
        let v: Value = serde_json::from_str(&body).unwrap();
        v["outcome"].as_str().unwrap().to_string()
    };
    // The redirect reaches the component as a 302; nothing follows it.
    assert!(
        outcome("redirect").starts_with("status 302;"),
        "{}",
        outcome("redirect")
    );
    assert_eq!(redirector.connections(), 1);
    // By name: another port, an IP literal for the allowed name, the
    // metadata address.
    for name in ["other-port", "ip-literal", "metadata-literal"] {
        assert!(
            outcome(name).starts_with("denied;"),
            "{name}: {}",
            outcome(name)
        );
    }
    // By address: the allowed name resolves somewhere a sandbox may not go.
    for name in ["metadata-by-name", "rebound", "private"] {
        assert!(
            outcome(name).starts_with("error ErrorCode::DestinationIpProhibited;"),
            "{name}: {}",
            outcome(name)
        );
    }
    assert_eq!(other.connections(), 0, "nothing reached the other port");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "metadata.test resolves to 169.254.169.254, which a sandbox may not reach: link-local"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("localhost resolves to 169.254.169.254, which a sandbox may not reach: the connector's origin is a loopback host"),
        "{stderr}"
    );
    assert!(
        stderr.contains("api.test resolves to 10.1.2.3, which a sandbox may not reach: private"),
        "{stderr}"
    );
    assert_healthy_complete(&ws, &sim, &clock)?;

    // Without the override, the same loopback name resolves to loopback and
    // the request goes through (pinned to the checked address).
    let out = ws.dphost(&["once", "--connector", "rebound"])?;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        outcome("rebound"),
        "status 200; authorization header refused: true"
    );
    Ok(())
}

#[test]
fn under_dphost_run_the_healthy_tenant_keeps_its_cadence_while_hostile_runs_are_stopped(
) -> Result<()> {
    let sim = Sim::start(&[
        "--seed",
        "23",
        "--rate",
        "300",
        "--history-hours",
        "1",
        "--max-lag-min",
        "0",
    ])?;
    let ws = Workspace::new()?;
    ws.write_config(&format!(
        "{}{}{}",
        tap_connector("healthy", "acme", &sim, "initial_lookback_hours = 1"),
        probe(
            "spinner",
            &sim.url,
            "probe = \"spin\"\nlimits = { cpu_seconds = 3 }"
        ),
        probe(
            "hog",
            &sim.url,
            "probe = \"hog\"\nlimits = { memory_mib = 32 }"
        ),
    ))?;
    // Every connector every second.
    let mut child = std::process::Command::new(dphost_bin())
        .args(["run", "--config"])
        .arg(ws.config_path())
        .env("DPHOST_INTERVAL_SECS", "1")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let waited = loop {
        let spinner_runs = ws.runs("spinner").map(|r| r.len()).unwrap_or(0);
        if spinner_runs >= 2 {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait()?;
    assert!(waited, "the spinner never finished two runs");
    assert!(status.success(), "{status:?}");

    let healthy = ws.runs("healthy")?;
    let spinner = ws.runs("spinner")?;
    let hog = ws.runs("hog")?;
    assert!(healthy.iter().all(|(o, _, _)| o == "ok"), "{healthy:?}");
    assert!(
        spinner.iter().all(|(o, _, _)| o == "cpu-deadline"),
        "{spinner:?}"
    );
    assert!(hog.iter().all(|(o, _, _)| o == "memory-cap"), "{hog:?}");
    // While the spinner burnt its 3 CPU seconds, the healthy tenant kept
    // starting its runs, one a second.
    let (_, s_start, s_end) = spinner[0];
    let during = healthy
        .iter()
        .filter(|(_, start, _)| (s_start..=s_end).contains(start))
        .count();
    assert!(
        during >= 2,
        "{during} healthy runs started during the spinner's run: {healthy:?} / {spinner:?}"
    );
    // Its data: no duplicates, nothing that is not in the API, everything
    // up to its last run's horizon.
    ws.assert_store_intact()?;
    let last_start = healthy.last().unwrap().1;
    let horizon =
        OffsetDateTime::from_unix_timestamp_nanos((last_start as i128 - 61_000) * 1_000_000)?;
    let landed = landed_events(&ws)?;
    let landed_set = multiset(landed.iter().map(|(t, e)| (t.as_str(), e)));
    let truth_all = sim.truth()?;
    let all_set = multiset(truth_all.iter().map(|(t, e)| (t.as_str(), e)));
    assert!(landed_set.iter().all(|(k, n)| all_set.get(k) == Some(n)));
    let due = sim.truth_between(None, Some(&rfc3339(horizon)))?;
    assert!(due.len() > 200, "{}", due.len());
    for (k, n) in multiset(due.iter().map(|(t, e)| (t.as_str(), e))) {
        assert_eq!(landed_set.get(&k), Some(&n), "missing: {}", &k.1[..120]);
    }
    eprintln!(
        "hostile run: {} healthy runs ({during} during the spinner's first run), {} spinner and {} hog runs stopped; {} events, 0 missing, 0 duplicated",
        healthy.len(),
        spinner.len(),
        hog.len(),
        landed.len()
    );
    Ok(())
}

#[test]
fn a_tenant_with_many_runaway_connectors_cannot_take_every_run_slot() -> Result<()> {
    let sim = Sim::start(&[
        "--seed",
        "29",
        "--rate",
        "300",
        "--history-hours",
        "1",
        "--max-lag-min",
        "0",
    ])?;
    let ws = Workspace::new()?;
    // Two run slots; by default a tenant holds at most half of them.
    let spinners: String = (1..=3)
        .map(|i| {
            probe(
                &format!("spinner-{i}"),
                &sim.url,
                "probe = \"spin\"\nlimits = { cpu_seconds = 2 }",
            )
        })
        .collect();
    ws.write_config_with_host(
        "max_concurrent_runs = 2",
        &format!(
            "{}{spinners}",
            tap_connector("healthy", "acme", &sim, "initial_lookback_hours = 1"),
        ),
    )?;
    let mut child = std::process::Command::new(dphost_bin())
        .args(["run", "--config"])
        .arg(ws.config_path())
        .env("DPHOST_INTERVAL_SECS", "1")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let spinner_runs = || -> Vec<(String, i64, i64)> {
        (1..=3)
            .flat_map(|i| ws.runs(&format!("spinner-{i}")).unwrap_or_default())
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let waited = loop {
        if spinner_runs().len() >= 4 {
            break true;
        }
        if let Some(status) = child.try_wait()? {
            panic!("dphost run ended by itself: {status:?}");
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait()?;
    assert!(waited, "the spinners never finished four runs");
    assert!(status.success(), "{status:?}");

    let mut spinners = spinner_runs();
    spinners.sort_by_key(|(_, start, _)| *start);
    assert!(
        spinners.iter().all(|(o, _, _)| o == "cpu-deadline"),
        "{spinners:?}"
    );
    // The runaway tenant never held both slots: its runs never overlapped.
    for pair in spinners.windows(2) {
        assert!(
            pair[1].1 >= pair[0].2,
            "two of mallory's runs overlapped: {spinners:?}"
        );
    }
    // The other slot stayed free for the healthy tenant, which kept its
    // one-second cadence while the spinners burnt their CPU budgets.
    let healthy = ws.runs("healthy")?;
    assert!(healthy.iter().all(|(o, _, _)| o == "ok"), "{healthy:?}");
    let (first, last) = (spinners[0].1, spinners.last().unwrap().2);
    let during = healthy
        .iter()
        .filter(|(_, start, _)| (first..=last).contains(start))
        .count();
    let span_secs = (last - first) / 1000;
    assert!(
        during as i64 >= span_secs / 2,
        "{during} healthy runs started in the {span_secs} s the spinners ran: {healthy:?}"
    );
    eprintln!(
        "run slots: {} spinner runs one at a time over {span_secs} s, {during} healthy runs meanwhile",
        spinners.len()
    );
    Ok(())
}
