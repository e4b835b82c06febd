//! The operator's view: `dphost test`, configuration errors, search output,
//! `dphost run` and its clean shutdown.

use anyhow::Result;
use e2e::*;
use std::time::{Duration, Instant};

#[test]
fn connection_test_explains_success_bad_credentials_and_wrong_url() -> Result<()> {
    let sim = Sim::start(&["--rate", "0"])?;
    let ws = Workspace::new()?;
    let good = tap_connector("good", "acme", &sim, "");
    let bad_secret = tap_connector("bad-secret", "acme", &sim, "").replace(SECRET, "wrong");
    let wrong_path = tap_connector("wrong-path", "acme", &sim, "")
        .replace(&sim.url, &format!("{}/not-tap", sim.url));
    ws.write_config(&format!("{good}{bad_secret}{wrong_path}"))?;

    let out = ws.dphost(&["test", "good"])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("connection test succeeded"),
        "{}",
        text(&out)
    );

    let out = ws.dphost(&["test", "bad-secret"])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("HTTP 401"), "{said}");
    assert!(said.to_lowercase().contains("credential"), "{said}");

    let out = ws.dphost(&["test", "wrong-path"])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("HTTP 404"), "{said}");
    assert!(
        said.contains("host_url") || said.contains("Host URL"),
        "{said}"
    );

    // Each test is one request: the good one spent one SIEM request from the
    // 1800/day pool (not clicks/permitted, never a 50/day endpoint).
    let stats: serde_json::Value = serde_json::from_str(&sim.get("/_sim/stats")?)?;
    assert_eq!(stats["siem_requests"], 1, "{stats}");
    assert_eq!(stats["pools"]["siem_other"]["admitted"], 1, "{stats}");
    assert_eq!(stats["pools"]["clicks_permitted"]["admitted"], 0, "{stats}");
    assert_eq!(stats["responses_401"], 1, "{stats}");
    assert_eq!(stats["total_requests"], 3, "{stats}");
    Ok(())
}

#[test]
fn configuration_errors_are_explained() -> Result<()> {
    let ws = Workspace::new()?;
    ws.write_config(
        "[[connector]]\nname = \"acmé-tap\"\ntenant = \"acme\"\ncomponent = \"proofpoint_tap\"\nhost_url = \"http://tap.example.com\"\n",
    )?;
    let out = ws.dphost(&["once"])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("non-ASCII"), "{err}");
    assert!(err.contains("must use https"), "{err}");

    // Unknown component keys are the component's to reject.
    let sim = Sim::start(&["--rate", "0"])?;
    ws.write_config(&tap_connector(
        "typo",
        "acme",
        &sim,
        "initial_lookback_hour = 3",
    ))?;
    let out = ws.dphost(&["check"])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("initial_lookback_hour"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn search_filters_and_formats() -> Result<()> {
    let sim = Sim::start(&[
        "--seed",
        "3",
        "--rate",
        "400",
        "--history-hours",
        "2",
        "--max-lag-min",
        "0",
    ])?;
    let ws = Workspace::new()?;
    ws.write_config(&tap_connector(
        "acme-tap",
        "acme",
        &sim,
        "initial_lookback_hours = 2",
    ))?;
    assert!(ws.dphost(&["once"])?.status.success());
    let all = ws.search("syslog", "msg_class:proofpoint_tap_event")?;
    let clicks = ws.search(
        "syslog",
        "msg_class:proofpoint_tap_event AND event_type:clickPermitted",
    )?;
    assert!(!clicks.is_empty() && clicks.len() < all.len());
    assert!(clicks.iter().all(|r| r["event_type"] == "clickPermitted"));
    let out = ws.dphost(&["search", "--count", "msg_class:proofpoint_tap_event"])?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        all.len().to_string()
    );
    let out = ws.dphost(&[
        "search",
        "--format",
        "table",
        "--limit",
        "3",
        "event_type:clickPermitted",
    ])?;
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(table.starts_with("TIME"), "{table}");
    assert_eq!(table.lines().count(), 1 + 3 + 1, "{table}");
    let either = ws.search(
        "syslog",
        "msg_class:proofpoint_tap_event AND (event_type:clickPermitted OR event_type:clickBlocked)",
    )?;
    let blocked = ws.search("syslog", "event_type:clickblocked")?;
    assert_eq!(
        either.len(),
        clicks.len() + blocked.len(),
        "OR, and case-insensitive enumerations"
    );
    let not_clicks = ws.search(
        "syslog",
        "msg_class:proofpoint_tap_event NOT event_type:click*",
    )?;
    assert_eq!(not_clicks.len() + either.len(), all.len());
    let tenant = ws.dphost(&["search", "--count", "--tenant", "nobody", "*"])?;
    assert_eq!(String::from_utf8_lossy(&tenant.stdout).trim(), "0");
    let recent = ws.dphost(&[
        "search",
        "--count",
        "--since",
        "30m",
        "msg_class:proofpoint_tap_event",
    ])?;
    let recent: usize = String::from_utf8_lossy(&recent.stdout).trim().parse()?;
    assert!(
        recent > 0 && recent < all.len(),
        "--since 30m keeps the last half hour of a 2 h history: {recent} of {}",
        all.len()
    );
    let out = ws.dphost(&["search", "(event_type:clickPermitted"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not closed"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn run_collects_on_schedule_and_stops_cleanly_on_ctrl_c() -> Result<()> {
    let sim = Sim::start(&[
        "--rate",
        "300",
        "--history-hours",
        "1",
        "--max-lag-min",
        "0",
    ])?;
    let ws = Workspace::new()?;
    ws.write_config(&format!(
        "{}{}",
        tap_connector(
            "a",
            "tenant-a",
            &sim,
            "interval_min = 1\ninitial_lookback_hours = 1"
        ),
        tap_connector(
            "b",
            "tenant-b",
            &sim,
            "interval_min = 1\ninitial_lookback_hours = 1"
        )
    ))?;
    let mut child = std::process::Command::new(dphost_bin())
        .args(["run", "--config"])
        .arg(ws.config_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(ws.dir.path().join("run.log"))?)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let both_collected = loop {
        let a = ws
            .search(
                "syslog",
                "msg_class:proofpoint_tap_event tenant_name:tenant-a",
            )?
            .len();
        let b = ws
            .search(
                "syslog",
                "msg_class:proofpoint_tap_event tenant_name:tenant-b",
            )?
            .len();
        if a > 0 && b > 0 {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // SIGINT, as Ctrl-C sends.
    send_sigint(child.id());
    let stopped = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if stopped.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        both_collected,
        "both tenants' first runs should land within a minute"
    );
    let status = status.expect("dphost run did not stop within 30 s of Ctrl-C");
    assert!(status.success(), "dphost run exited with {status:?}");
    Ok(())
}

fn send_sigint(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
}

#[test]
fn log_filters_drop_exactly_the_matching_records_and_count_them() -> Result<()> {
    // The samples: a fixed set of events, so the expected counts are exact.
    let (args, _) = fixture_sim_args();
    let sim = Sim::start(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let ws = Workspace::new()?;
    let filters = "\n[[connector.filter]]\nname = \"no-blocked-clicks\"\ndrop = 'event_type:clickBlocked OR (event_type:messageBlocked AND NOT proofpoint_tap.threatsInfoMap.threatStatus:active)'\n";
    ws.write_config(&format!(
        "{}{filters}",
        tap_connector("filtered", "acme", &sim, "initial_lookback_hours = 25")
    ))?;
    let out = ws.dphost(&["once"])?;
    assert!(out.status.success(), "{}", text(&out));
    let truth = sim.truth()?;
    let dropped = |(t, e): &(String, serde_json::Value)| {
        t == "clickBlocked"
            || (t == "messageBlocked"
                && !e["threatsInfoMap"].as_array().is_some_and(|m| {
                    m.iter().any(|x| {
                        x["threatStatus"]
                            .as_str()
                            .is_some_and(|s| s.eq_ignore_ascii_case("active"))
                    })
                }))
    };
    let expected_dropped = truth.iter().filter(|x| dropped(x)).count();
    assert!(expected_dropped > 0, "the samples hold blocked clicks");
    let kept: Vec<_> = truth.iter().filter(|x| !dropped(x)).cloned().collect();
    assert_same_events(
        &landed_events(&ws)?,
        &kept,
        "records stored past the filter",
    );
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains(&format!("dropped by log filters: {expected_dropped}")),
        "{said}"
    );

    // A filter that does not parse is a configuration error naming its line.
    std::fs::write(
        ws.config_path(),
        std::fs::read_to_string(ws.config_path())?
            .replace("drop = 'event_type", "drop = '(event_type"),
    )?;
    let out = ws.dphost(&["once"])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("line ")
            && err.contains("no-blocked-clicks: drop = '(event_type")
            && err.contains("does not parse"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_false_positive_filter_drops_exactly_the_events_with_a_false_positive_threat() -> Result<()> {
    // The samples, with a falsePositive threat added beside the active one of
    // every third delivered message (the API returns such events by default:
    // they also have an active threat).
    let dir = tempfile::tempdir()?;
    let source = std::fs::read_to_string(fixtures_dir().join("message_delivered.ndjson"))?;
    let mut marked = 0;
    let mut lines = Vec::new();
    for (i, line) in source.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let mut event: serde_json::Value = serde_json::from_str(line)?;
        if i % 3 == 0 {
            let threats = event["threatsInfoMap"].as_array_mut().expect("threats");
            let mut fp = threats[0].clone();
            fp["threatStatus"] = "falsePositive".into();
            fp["threatID"] = format!("fp-{i}").into();
            threats.push(fp);
            marked += 1;
        }
        lines.push(event.to_string());
    }
    let file = dir.path().join("delivered.ndjson");
    std::fs::write(&file, lines.join("\n") + "\n")?;
    let file = file.display().to_string();
    let sim = Sim::start(&[
        "--events",
        &file,
        "--events-type",
        "messagesDelivered",
        "--retime",
        "--max-lag-min",
        "0",
    ])?;
    let ws = Workspace::new()?;
    ws.write_config(&format!(
        "{}\n[[connector.filter]]\nname = \"false-positives\"\ndrop = 'threat.status:falsepositive'\n",
        tap_connector("fp", "acme", &sim, "initial_lookback_hours = 25")
    ))?;
    let out = ws.dphost(&["once"])?;
    assert!(out.status.success(), "{}", text(&out));
    let truth = sim.truth()?;
    assert_eq!(truth.len(), lines.len(), "the simulator serves every event");
    let stored = ws.search("syslog", "msg_class:proofpoint_tap_event")?;
    assert_eq!(stored.len(), lines.len() - marked);
    assert!(ws
        .search("syslog", "threat.status:falsepositive")?
        .is_empty());
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains(&format!("dropped by log filters: {marked}")),
        "{said}"
    );
    let status = ws.dphost(&["status", "--format", "json"])?;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(
        status["connectors"][0]["filtered_last_run"], marked as u64,
        "{status}"
    );
    Ok(())
}
