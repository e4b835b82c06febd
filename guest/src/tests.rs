//! Collection cycles and exports against the fake host and fake TAP API.

use serde_json::Value;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use crate::parse::EventType;
use crate::platform::{ConnectorError, HttpFailure, Index, LogLevel, TransportError};
use crate::record::{EVENT_CLASS, GAP_CLASS, QUARANTINE_CLASS, THREAT_CLASS};
use crate::test_support::{config, response, FakeEvent, FakePlatform, FakeTap, Mangle};
use crate::windows::api_time;

const NOW: OffsetDateTime = datetime!(2024-10-11 14:34:53.250 UTC);

fn run(
    cfg: &crate::config::Config,
    tap: &mut FakeTap,
    platform: &mut FakePlatform,
) -> Result<Value, ConnectorError> {
    crate::collect(cfg, tap, platform).map(|s| serde_json::from_str(&s).unwrap())
}

fn checkpoint_of(state: &[(String, Option<Vec<u8>>)]) -> Option<OffsetDateTime> {
    state.iter().find(|(k, _)| k == "checkpoint").map(|(_, v)| {
        let s: i64 = String::from_utf8(v.clone().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        OffsetDateTime::from_unix_timestamp(s).unwrap()
    })
}

/// Events every 10 minutes over the last `hours`, types rotating.
fn busy_api(hours: i64) -> FakeTap {
    let mut tap = FakeTap::new(NOW);
    let mut t = NOW - Duration::hours(hours);
    let mut n = 0;
    while t < NOW - Duration::minutes(2) {
        let et = EventType::ALL[n % 4];
        tap.add_event(et, t, n, &format!("threat-{}", n % 3));
        n += 1;
        t += Duration::minutes(10);
    }
    tap
}

#[test]
fn first_run_collects_every_window_and_moves_checkpoint_with_each_commit() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut tap = busy_api(24);
    let mut platform = FakePlatform::new(NOW);
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();

    let horizon = datetime!(2024-10-11 14:33:53 UTC);
    let expected_events = tap
        .events
        .iter()
        .filter(|e| e.time >= NOW - Duration::hours(24) && e.time < horizon)
        .count();
    assert_eq!(summary["windows"], 24);
    assert_eq!(summary["requests"], 24);
    assert_eq!(summary["events"], expected_events);
    assert_eq!(summary["written"], expected_events);
    assert_eq!(summary["duplicates"], 0);
    assert_eq!(summary["checkpoint"], "2024-10-11T14:33:53Z");
    let by_type_total: u64 = summary["by_type"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by_type_total, expected_events as u64);
    assert_eq!(platform.count(Index::Syslog, EVENT_CLASS), expected_events);
    assert_eq!(platform.checkpoint(), Some(horizon));

    // One commit per window, each carrying its own window's end.
    assert_eq!(platform.commits.len(), 24);
    let ends: Vec<_> = tap
        .siem_paths()
        .iter()
        .map(|p| {
            let end = p.rsplit('/').next().unwrap();
            crate::parse::parse_event_time(end).unwrap()
        })
        .collect();
    for (commit, end) in platform.commits.iter().zip(ends) {
        assert_eq!(checkpoint_of(&commit.state), Some(end));
    }
    // No threat lookups when only events are collected.
    assert!(!tap.requests.iter().any(|p| p.contains("/threat/")));
    assert!(platform.logged(
        LogLevel::Debug,
        "window 2024-10-10T14:34:53Z/2024-10-10T15:34:53Z"
    ));
}

#[test]
fn checkpoint_moves_only_with_commits() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut tap = busy_api(6);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::hours(5));
    platform.fail_commit = Some(2);

    let err = run(&cfg, &mut tap, &mut platform).unwrap_err();
    assert!(
        matches!(&err, ConnectorError::Internal(m) if m.contains("disk full")),
        "{err:?}"
    );
    // Two windows committed: the checkpoint is the second one's end, no further.
    assert_eq!(platform.commits.len(), 2);
    let second_end = checkpoint_of(&platform.commits[1].state).unwrap();
    assert_eq!(platform.checkpoint(), Some(second_end));
    assert!(platform
        .bodies(Index::Syslog)
        .iter()
        .all(|b| b["timestamp"].as_i64().unwrap() < second_end.unix_timestamp() * 1000));

    // The next run resumes behind the checkpoint and loses nothing.
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    let start = NOW - Duration::hours(5) - Duration::minutes(30);
    let horizon = datetime!(2024-10-11 14:33:53 UTC);
    let expected = tap
        .events
        .iter()
        .filter(|e| e.time >= start && e.time < horizon)
        .count();
    assert_eq!(platform.count(Index::Syslog, EVENT_CLASS), expected);
    assert!(
        summary["duplicates"].as_u64().unwrap() > 0,
        "the look-back re-reads stored events"
    );
    assert_eq!(platform.checkpoint(), Some(horizon));
}

#[test]
fn lookback_requery_catches_late_events() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut tap = FakeTap::new(NOW);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::minutes(10));
    // Happened 8 minutes ago, indexed only 5 minutes from now.
    tap.add_event(
        EventType::MessageDelivered,
        NOW - Duration::minutes(8),
        1,
        "t",
    );
    tap.events[0].visible_from = NOW + Duration::minutes(5);
    tap.add_event(
        EventType::MessageDelivered,
        NOW - Duration::minutes(7),
        2,
        "t",
    );

    let first = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(first["written"], 1);
    assert_eq!(
        tap.siem_paths()[0].as_str(),
        "/v2/siem/all?format=json&interval=2024-10-11T13:54:53Z/2024-10-11T14:33:53Z"
    );

    // Ten minutes later the late event is there, behind the checkpoint.
    let later = NOW + Duration::minutes(10);
    tap.now = later;
    platform.now = later;
    let second = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(second["written"], 1);
    assert_eq!(second["duplicates"], 1);
    assert_eq!(platform.count(Index::Syslog, EVENT_CLASS), 2);
}

#[test]
fn span_under_30_seconds_does_nothing() {
    let cfg = config(serde_json::json!({"lookback_minutes": 0}));
    let mut tap = FakeTap::new(NOW);
    let mut platform = FakePlatform::new(NOW);
    let cp = datetime!(2024-10-11 14:33:40 UTC);
    platform.set_checkpoint(cp);
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["windows"], 0);
    assert_eq!(summary["requests"], 0);
    assert!(tap.requests.is_empty());
    assert!(platform.commits.is_empty());
    assert_eq!(platform.checkpoint(), Some(cp));
}

#[test]
fn still_current_shrinks_the_window_once_and_retries() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut tap = FakeTap::new(NOW - Duration::seconds(90)); // API clock behind
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::minutes(20));
    tap.add_event(
        EventType::MessageBlocked,
        NOW - Duration::minutes(15),
        1,
        "t",
    );

    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    let paths = tap.siem_paths();
    assert_eq!(paths.len(), 2);
    assert!(paths[0].ends_with("/2024-10-11T14:33:53Z"), "{}", paths[0]);
    assert!(paths[1].ends_with("/2024-10-11T14:32:53Z"), "{}", paths[1]);
    assert_eq!(summary["written"], 1);
    assert_eq!(summary["requests"], 2);
    // The checkpoint never moves backwards, but moves with the retried window.
    assert_eq!(
        platform.checkpoint(),
        Some(datetime!(2024-10-11 14:32:53 UTC))
    );
    assert!(platform.logged(LogLevel::Warn, "still current"));
}

#[test]
fn still_current_twice_stops_quietly() {
    let cfg = config(serde_json::json!({}));
    let mut tap = FakeTap::new(NOW - Duration::minutes(30));
    let mut platform = FakePlatform::new(NOW);
    let cp = NOW - Duration::minutes(5);
    platform.set_checkpoint(cp);
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(tap.siem_paths().len(), 2);
    assert_eq!(summary["stopped_early"], "interval still current");
    assert!(platform.commits.is_empty());
    assert_eq!(
        platform.checkpoint().map(|c| c.unix_timestamp()),
        Some(cp.unix_timestamp())
    );
}

#[test]
fn too_short_keeps_state_and_is_not_an_error() {
    let cfg = config(serde_json::json!({}));
    let mut tap = FakeTap::new(NOW);
    tap.scripted.push_back((
        "/v2/siem/all".into(),
        Ok(response(
            400,
            "The requested interval is too short. Requests must be for at least 30.00s of data",
        )),
    ));
    let mut platform = FakePlatform::new(NOW);
    let cp = datetime!(2024-10-11 14:00:00 UTC);
    platform.set_checkpoint(cp);
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["stopped_early"], "interval too short");
    assert!(platform.commits.is_empty());
    assert_eq!(platform.checkpoint(), Some(cp));
}

#[test]
fn other_400_is_an_http_error_quoting_the_api() {
    let cfg = config(serde_json::json!({}));
    let mut tap = FakeTap::new(NOW);
    tap.scripted.push_back((
        "/v2/siem/all".into(),
        Ok(response(400, "The requested interval is too long.")),
    ));
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::minutes(10));
    let err = run(&cfg, &mut tap, &mut platform).unwrap_err();
    match err {
        ConnectorError::Http(HttpFailure {
            status: 400,
            explanation,
            ..
        }) => assert!(explanation.contains("The requested interval is too long.")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rate_limit_returns_rate_limited_and_keeps_earlier_progress() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut tap = busy_api(4);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::hours(3));
    // Serve two windows, then 429.
    let mut limited = response(429, "");
    limited.headers.push(("Retry-After".into(), "3600".into()));
    tap.scripted.push_back((
        "/v2/siem/all?format=json&interval=2024-10-11T13:04:53Z".into(),
        Ok(limited),
    ));
    let err = run(&cfg, &mut tap, &mut platform).unwrap_err();
    assert_eq!(err, ConnectorError::RateLimited(3600));
    // Two windows, then the backoff alone: the checkpoint stays.
    assert_eq!(platform.commits.len(), 3);
    assert_eq!(platform.commits[2].records, 0);
    assert!(checkpoint_of(&platform.commits[2].state).is_none());
    assert_eq!(
        platform.checkpoint(),
        Some(datetime!(2024-10-11 13:04:53 UTC))
    );
    assert!(platform.logged(LogLevel::Warn, "as its Retry-After says"));
    assert!(
        platform.sleeps.is_empty(),
        "a 429 is not retried within the run"
    );
}

#[test]
fn a_429_backs_off_exponentially_in_state_without_sending() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut tap = busy_api(2);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::hours(1));
    let cp = platform.checkpoint();
    let backoff = |p: &FakePlatform| -> Value {
        serde_json::from_slice(p.state.get("rate_limit").expect("backoff stored")).unwrap()
    };

    // No Retry-After (Proofpoint sends none): 5 min less up to a fifth.
    tap.scripted
        .push_back(("/v2/siem/all".into(), Ok(response(429, ""))));
    let wait = match run(&cfg, &mut tap, &mut platform).unwrap_err() {
        ConnectorError::RateLimited(w) => w,
        other => panic!("{other:?}"),
    };
    assert!((240..=300).contains(&wait), "{wait}");
    assert_eq!(backoff(&platform)["strikes"], 1);
    assert_eq!(
        backoff(&platform)["until"],
        NOW.unix_timestamp() + i64::from(wait)
    );
    assert_eq!(platform.checkpoint(), cp);

    // Before the backoff ends: rate limited, nothing sent, nothing taken.
    let sent = tap.requests.len();
    let taken = platform.budget_taken["siem"];
    platform.now = NOW + Duration::seconds(100);
    assert_eq!(
        run(&cfg, &mut tap, &mut platform).unwrap_err(),
        ConnectorError::RateLimited(wait - 100)
    );
    assert_eq!(tap.requests.len(), sent);
    assert_eq!(platform.budget_taken["siem"], taken);
    // test-connection respects it too.
    assert!(matches!(
        crate::test_connection(&cfg, &mut tap, &mut platform),
        Err(ConnectorError::RateLimited(_))
    ));
    assert_eq!(tap.requests.len(), sent);

    // After it: another 429 doubles the wait.
    let later = NOW + Duration::seconds(i64::from(wait));
    platform.now = later;
    tap.now = later;
    tap.scripted
        .push_back(("/v2/siem/all".into(), Ok(response(429, ""))));
    let wait = match run(&cfg, &mut tap, &mut platform).unwrap_err() {
        ConnectorError::RateLimited(w) => w,
        other => panic!("{other:?}"),
    };
    assert!((480..=600).contains(&wait), "{wait}");
    assert_eq!(backoff(&platform)["strikes"], 2);
    assert_eq!(platform.checkpoint(), cp);

    // Then the API answers: the window lands and the backoff is cleared
    // in the same commit as the checkpoint.
    let later = later + Duration::seconds(i64::from(wait));
    platform.now = later;
    tap.now = later;
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert!(summary["windows"].as_u64().unwrap() >= 1);
    assert!(!platform.state.contains_key("rate_limit"));
    let clearing = platform
        .commits
        .iter()
        .find(|c| {
            c.state
                .iter()
                .any(|(k, v)| k == "rate_limit" && v.is_none())
        })
        .expect("a commit clears the backoff");
    assert!(checkpoint_of(&clearing.state).is_some());
}

#[test]
fn server_errors_and_timeouts_are_retried_then_transient() {
    let cfg = config(serde_json::json!({}));
    for answer in [
        Ok(response(503, "busy")),
        Err(TransportError::Timeout("first byte".into())),
        Err(TransportError::Failed("connection reset".into())),
    ] {
        let mut tap = FakeTap::new(NOW);
        for _ in 0..crate::collect::MAX_ATTEMPTS {
            tap.scripted
                .push_back(("/v2/siem/all".into(), answer.clone()));
        }
        let mut platform = FakePlatform::new(NOW);
        platform.set_checkpoint(NOW - Duration::minutes(10));
        let err = run(&cfg, &mut tap, &mut platform).unwrap_err();
        assert!(
            matches!(&err, ConnectorError::Transient(m) if m.contains("3 attempts") && m.contains("checkpoint stays")),
            "{err:?}"
        );
        assert!(platform.commits.is_empty());
        assert_eq!(tap.siem_paths().len(), 3);
        assert_eq!(
            platform.budget_taken["siem"], 3,
            "every attempt is budgeted"
        );
        assert_eq!(
            platform.sleeps,
            vec![
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(3)
            ]
        );
    }
}

#[test]
fn a_transient_failure_is_retried_within_the_run() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut tap = busy_api(3);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::hours(2));
    tap.scripted
        .push_back(("/v2/siem/all".into(), Ok(response(500, "oops"))));
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["retries"], 1);
    assert_eq!(summary["windows"], 3);
    assert_eq!(summary["requests"], 4);
    assert_eq!(platform.sleeps.len(), 1);
    assert!(platform.logged(LogLevel::Warn, "asking again in 1 s"));
    assert_eq!(
        platform.checkpoint(),
        Some(datetime!(2024-10-11 14:33:53 UTC))
    );
}

#[test]
fn invalid_body_is_transient_and_the_checkpoint_stays() {
    let cfg = config(serde_json::json!({}));
    for body in [
        "<html>Service Unavailable</html>",
        "{\"messagesBlocked\": 3}",
        "{}",
        "{\"queryEndTime\":\"2024-10-11T14:33:53Z\",\"messagesBlocked\":[{}",
    ] {
        let mut tap = FakeTap::new(NOW);
        for _ in 0..crate::collect::MAX_ATTEMPTS {
            tap.scripted
                .push_back(("/v2/siem/all".into(), Ok(response(200, body))));
        }
        let mut platform = FakePlatform::new(NOW);
        let cp = NOW - Duration::minutes(10);
        platform.set_checkpoint(cp);
        let err = run(&cfg, &mut tap, &mut platform).unwrap_err();
        assert!(
            matches!(&err, ConnectorError::Transient(m) if m.contains("checkpoint stays")),
            "{err:?}"
        );
        assert!(platform.commits.is_empty());
        assert_eq!(
            platform.checkpoint().unwrap().unix_timestamp(),
            cp.unix_timestamp()
        );
    }
}

#[test]
fn old_checkpoint_is_clamped_and_the_gap_recorded() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut tap = FakeTap::new(NOW);
    let mut platform = FakePlatform::new(NOW);
    let cp = datetime!(2024-10-01 00:00:00 UTC);
    platform.set_checkpoint(cp);
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();

    let earliest = datetime!(2024-10-04 14:49:53 UTC);
    assert!(tap.siem_paths()[0].contains(&format!("interval={}/", api_time(earliest))));
    assert_eq!(summary["gaps"], 1);
    let gaps: Vec<_> = platform
        .bodies(Index::Syslog)
        .into_iter()
        .filter(|b| b["msg_class"] == GAP_CLASS)
        .collect();
    assert_eq!(gaps.len(), 1);
    // From a look-back before the checkpoint: late events there were due.
    assert_eq!(
        gaps[0]["gap_start"],
        (cp - Duration::minutes(30)).unix_timestamp() * 1000
    );
    assert_eq!(gaps[0]["gap_end"], earliest.unix_timestamp() * 1000);
    assert_eq!(gaps[0]["tenant_name"], "acme");
    assert_eq!(gaps[0]["connector"], "tap1");
    assert_eq!(gaps[0]["domain"], "http://127.0.0.1:4567");
    assert!(gaps[0]["reason"].as_str().unwrap().contains("7 days"));
    // The gap record rides with the first window's checkpoint.
    assert!(checkpoint_of(&platform.commits[0].state).is_some());
    assert!(platform.logged(LogLevel::Warn, "collection gap"));
    assert_eq!(
        platform.checkpoint(),
        Some(datetime!(2024-10-11 14:33:53 UTC))
    );
}

#[test]
fn too_far_into_the_past_backs_off_once_with_a_gap() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    // The API's clock runs 20 minutes ahead of ours.
    let mut tap = FakeTap::new(NOW + Duration::minutes(20));
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(datetime!(2024-10-01 00:00:00 UTC));
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    let paths = tap.siem_paths();
    assert!(paths[0].contains("interval=2024-10-04T14:49:53Z/"));
    assert!(
        paths[1].contains("interval=2024-10-04T15:04:53Z/"),
        "{}",
        paths[1]
    );
    assert_eq!(summary["gaps"], 1);
    let gap = platform
        .bodies(Index::Syslog)
        .into_iter()
        .find(|b| b["msg_class"] == GAP_CLASS)
        .unwrap();
    assert_eq!(
        gap["gap_end"],
        datetime!(2024-10-04 15:04:53 UTC).unix_timestamp() * 1000
    );
    assert_eq!(
        platform.checkpoint(),
        Some(datetime!(2024-10-11 14:33:53 UTC))
    );
}

#[test]
fn a_bad_event_is_quarantined_and_the_rest_of_the_window_lands() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut tap = FakeTap::new(NOW);
    let t = NOW - Duration::minutes(5);
    tap.add_event(EventType::MessageBlocked, t, 1, "t");
    tap.add_event(EventType::MessageBlocked, t, 2, "t");
    tap.events.push(FakeEvent {
        event_type: EventType::MessageBlocked,
        time: t,
        visible_from: t,
        raw: r#"{"GUID":"broken","id":"b","messageTime":"not a time"}"#.into(),
    });
    tap.events.push(FakeEvent {
        event_type: EventType::ClickBlocked,
        time: t,
        visible_from: t,
        raw: r#""just a string""#.into(),
    });
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::minutes(10));
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["events"], 4);
    assert_eq!(summary["quarantined"], 2);
    assert_eq!(platform.count(Index::Syslog, EVENT_CLASS), 2);
    let q = platform.bodies(Index::Quarantine);
    assert_eq!(q.len(), 2);
    assert!(q.iter().all(|b| b["msg_class"] == QUARANTINE_CLASS));
    assert!(q
        .iter()
        .any(|b| b["raw"] == "just a string" && b["event_type"] == "clickBlocked"));
    assert!(q
        .iter()
        .any(|b| b["raw"]["GUID"] == "broken"
            && b["reason"].as_str().unwrap().contains("messageTime")));
    assert_eq!(
        platform.checkpoint(),
        Some(datetime!(2024-10-11 14:33:53 UTC))
    );
    assert!(platform.logged(LogLevel::Warn, "quarantined a messageBlocked event"));
}

#[test]
fn large_windows_commit_in_chunks_with_the_checkpoint_last() {
    let cfg = config(serde_json::json!({
        "content_types": ["events"],
        "limits": {"max_batch_records": 5000},
        "alerts": {"enabled": false}
    }));
    let mut tap = FakeTap::new(NOW);
    let t = NOW - Duration::minutes(5);
    for n in 0..12_001 {
        tap.add_event(EventType::MessageDelivered, t, n, "t");
    }
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::minutes(10));
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["written"], 12_001);
    let sizes: Vec<_> = platform.commits.iter().map(|c| c.records).collect();
    assert_eq!(sizes, vec![5000, 5000, 2001]);
    // The first batch marks the window as in progress; only the last moves
    // the checkpoint, and clears the mark.
    let in_progress = |c: &crate::test_support::CommitLog| {
        c.state
            .iter()
            .find(|(k, _)| k == "window_in_progress")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        in_progress(&platform.commits[0]),
        Some(Some(b"1728654893-1728657233".to_vec()))
    );
    assert!(checkpoint_of(&platform.commits[0].state).is_none());
    assert!(platform.commits[1].state.is_empty());
    assert!(checkpoint_of(&platform.commits[2].state).is_some());
    assert_eq!(in_progress(&platform.commits[2]), Some(None));
    assert!(!platform.state.contains_key("window_in_progress"));
}

#[test]
fn a_run_stopped_inside_a_window_makes_the_next_ask_for_halves() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut tap = busy_api(3);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::hours(2));
    // What a run killed by a sandbox limit inside this window leaves.
    platform.state.insert(
        "window_in_progress".into(),
        b"1728648293-1728651893".to_vec(),
    );
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    let paths = tap.siem_paths();
    assert_eq!(
        paths[0].as_str(),
        "/v2/siem/all?format=json&interval=2024-10-11T12:04:53Z/2024-10-11T12:34:53Z"
    );
    assert_eq!(summary["windows"], 5, "{paths:?}");
    assert!(platform.logged(LogLevel::Warn, "stopped inside the window"));
    // Cleared with the window that took the checkpoint past it.
    assert!(!platform.state.contains_key("window_in_progress"));
    let cleared = platform
        .commits
        .iter()
        .position(|c| {
            c.state
                .iter()
                .any(|(k, v)| k == "window_in_progress" && v.is_none())
        })
        .unwrap();
    assert_eq!(
        checkpoint_of(&platform.commits[cleared].state),
        Some(datetime!(2024-10-11 13:04:53 UTC))
    );

    // The next run is back to hour-long windows.
    tap.requests.clear();
    let later = NOW + Duration::hours(2);
    tap.now = later;
    platform.now = later;
    run(&cfg, &mut tap, &mut platform).unwrap();
    assert!(
        tap.siem_paths()[0].ends_with("/2024-10-11T15:03:53Z"),
        "{:?}",
        tap.siem_paths()
    );
}

#[test]
fn batches_stay_within_the_byte_limit_sized_from_memory() {
    // 16 MiB of memory: batches of at most 2 MiB, whatever the host allows.
    let cfg = config(serde_json::json!({
        "content_types": ["events"],
        "limits": {"memory_mib": 16, "max_batch_mib": 64, "max_batch_records": 100000}
    }));
    assert_eq!(cfg.limits.batch_bytes(), 2 << 20);
    let mut tap = FakeTap::new(NOW);
    tap.chunk_size = 4096;
    let t = NOW - Duration::minutes(5);
    for n in 0..20_000 {
        tap.add_event(EventType::ClickPermitted, t, n, "t");
    }
    let mut platform = FakePlatform::new(NOW);
    platform.max_batch_bytes = 2 << 20;
    platform.set_checkpoint(NOW - Duration::minutes(10));
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["written"], 20_000);
    assert!(platform.commits.len() >= 3, "{}", platform.commits.len());
    let (last, rest) = platform.commits.split_last().unwrap();
    for c in rest {
        assert!(c.bytes <= 2 << 20);
        assert!(
            checkpoint_of(&c.state).is_none(),
            "only the last batch moves the checkpoint"
        );
    }
    assert!(checkpoint_of(&last.state).is_some());
}

#[test]
fn chunk_boundaries_do_not_matter() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut stored = Vec::new();
    for chunk in [1, 7, 100_000] {
        let mut tap = busy_api(3);
        tap.chunk_size = chunk;
        let mut platform = FakePlatform::new(NOW);
        platform.set_checkpoint(NOW - Duration::hours(2));
        let summary = run(&cfg, &mut tap, &mut platform).unwrap();
        assert_eq!(summary["retries"], 0);
        stored.push(platform.stored);
    }
    assert!(stored[0].len() > 10);
    assert_eq!(stored[0], stored[1]);
    assert_eq!(stored[0], stored[2]);
}

/// The one window of a run with the checkpoint ten minutes back.
const TEN_MIN_WINDOW: &str =
    "/v2/siem/all?format=json&interval=2024-10-11T13:54:53Z/2024-10-11T14:33:53Z";

fn ten_minutes_of_events(n: usize) -> (crate::config::Config, FakeTap, FakePlatform) {
    let cfg = config(serde_json::json!({
        "content_types": ["events"],
        "limits": {"max_batch_records": 100}
    }));
    let mut tap = FakeTap::new(NOW);
    for i in 0..n {
        tap.add_event(
            EventType::ALL[i % 4],
            NOW - Duration::minutes(8) + Duration::milliseconds(i as i64),
            i,
            "t",
        );
    }
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::minutes(10));
    (cfg, tap, platform)
}

#[test]
fn a_body_cut_off_is_retried_and_committed_batches_are_harmless() {
    for error in [
        Some(TransportError::Failed("connection reset".into())),
        None,
    ] {
        for content_length in [true, false] {
            let (cfg, mut tap, mut platform) = ten_minutes_of_events(1000);
            tap.content_length = content_length;
            tap.mangle.push_back((
                TEN_MIN_WINDOW.into(),
                Mangle::Cut {
                    at: 150_000,
                    error: error.clone(),
                },
            ));
            let summary = run(&cfg, &mut tap, &mut platform).unwrap();
            assert_eq!(summary["retries"], 1, "{error:?} {content_length}");
            assert_eq!(summary["events"], 1000);
            assert_eq!(platform.count(Index::Syslog, EVENT_CLASS), 1000);
            // The first attempt committed whole batches, without the checkpoint.
            let first_attempt = platform
                .commits
                .iter()
                .take_while(|c| checkpoint_of(&c.state).is_none())
                .count();
            assert!(first_attempt > 0);
            assert!(summary["duplicates"].as_u64().unwrap() >= 100);
            assert_eq!(summary["written"], 1000);
            assert!(platform.logged(LogLevel::Warn, "asking again"));
        }
    }
}

#[test]
fn a_body_cut_off_every_time_keeps_the_checkpoint() {
    let (cfg, mut tap, mut platform) = ten_minutes_of_events(1000);
    let cp = platform.checkpoint();
    for _ in 0..crate::collect::MAX_ATTEMPTS {
        tap.mangle.push_back((
            TEN_MIN_WINDOW.into(),
            Mangle::Cut {
                at: 150_000,
                error: None,
            },
        ));
    }
    let err = run(&cfg, &mut tap, &mut platform).unwrap_err();
    assert!(
        matches!(&err, ConnectorError::Transient(m) if m.contains("cut off") && m.contains("checkpoint stays")),
        "{err:?}"
    );
    assert_eq!(platform.checkpoint(), cp);
    assert!(platform
        .commits
        .iter()
        .all(|c| checkpoint_of(&c.state).is_none()));
    // The run ended by itself: the next need not shrink its windows.
    assert!(!platform.state.contains_key("window_in_progress"));
    let partial = platform.count(Index::Syslog, EVENT_CLASS);
    assert!(partial > 0 && partial < 1000, "{partial}");

    // The next run asks again and completes the window.
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(platform.count(Index::Syslog, EVENT_CLASS), 1000);
    assert_eq!(summary["duplicates"], partial);
    assert!(platform.checkpoint() > cp);
}

/// What tap-sim's `malformed` fault does half of the time: the body is cut
/// in the middle and closed with a stray byte and garbage that balances
/// the brackets, so it looks complete.
fn cut_and_close(body: &[u8]) -> Vec<u8> {
    let mut out = body[..body.len() / 2].to_vec();
    out.push(0x01);
    out.extend_from_slice(b"garbage\"}]}");
    out
}

#[test]
fn a_damaged_body_that_looks_complete_is_asked_for_again() {
    for mangle in [
        Mangle::With(cut_and_close),
        Mangle::Insert {
            at: 100_000,
            byte: 0xff,
        },
        Mangle::Insert {
            at: 100_001,
            byte: 0x00,
        },
    ] {
        let (cfg, mut tap, mut platform) = ten_minutes_of_events(1000);
        tap.content_length = false;
        tap.mangle
            .push_back((TEN_MIN_WINDOW.into(), mangle.clone()));
        let summary = run(&cfg, &mut tap, &mut platform).unwrap();
        assert_eq!(summary["retries"], 1, "{mangle:?}");
        assert_eq!(summary["quarantined"], 0, "{mangle:?}");
        assert_eq!(platform.count(Index::Syslog, EVENT_CLASS), 1000);
        assert!(platform.bodies(Index::Quarantine).is_empty());
    }
}

#[test]
fn an_event_the_api_sends_damaged_every_time_is_quarantined_and_the_rest_lands() {
    let (cfg, mut tap, mut platform) = ten_minutes_of_events(500);
    let t = NOW - Duration::minutes(6);
    // A raw control character inside a string: not JSON.
    let damaged = "{\"GUID\":\"d\",\"id\":\"d\",\"messageTime\":\"2024-10-11T14:28:53Z\",\"subject\":\"a\u{1}b\"}";
    tap.events.push(FakeEvent {
        event_type: EventType::MessageDelivered,
        time: t,
        visible_from: t,
        raw: damaged.into(),
    });
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    // Asked twice: the second answer had the same bytes.
    assert_eq!(tap.siem_paths().len(), 2);
    assert_eq!(summary["retries"], 1);
    assert_eq!(summary["events"], 501);
    assert_eq!(summary["quarantined"], 1);
    assert_eq!(platform.count(Index::Syslog, EVENT_CLASS), 500);
    let q = platform.bodies(Index::Quarantine);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["msg_class"], QUARANTINE_CLASS);
    assert_eq!(q[0]["event_type"], "messageDelivered");
    assert_eq!(q[0]["raw_text"], damaged);
    assert!(q[0]["reason"].as_str().unwrap().contains("not valid JSON"));
    assert_eq!(
        q[0]["raw_sha256"],
        crate::identity::sha256_hex(damaged.as_bytes())
    );

    // A later run re-reads it in the look-back: already quarantined, so
    // believed at once (one request, no retry).
    let later = NOW + Duration::minutes(5);
    tap.now = later;
    platform.now = later;
    tap.requests.clear();
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(tap.siem_paths().len(), 1);
    assert_eq!(summary["retries"], 0);
    assert_eq!(platform.bodies(Index::Quarantine).len(), 1);
}

#[test]
fn an_oversized_event_is_quarantined_with_its_size_and_the_rest_lands() {
    let (_, mut tap, mut platform) = ten_minutes_of_events(200);
    let cfg = config(serde_json::json!({
        "content_types": ["events"],
        "limits": {"memory_mib": 16}
    }));
    let max = cfg.limits.max_event_bytes();
    let t = NOW - Duration::minutes(6);
    let big = format!(
        "{{\"GUID\":\"big\",\"id\":\"big\",\"messageTime\":\"2024-10-11T14:28:53Z\",\"subject\":\"{}\"}}",
        "x".repeat(max + 10)
    );
    tap.events.push(FakeEvent {
        event_type: EventType::MessageBlocked,
        time: t,
        visible_from: t,
        raw: big.clone(),
    });
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["retries"], 0);
    assert_eq!(summary["quarantined"], 1);
    assert_eq!(platform.count(Index::Syslog, EVENT_CLASS), 200);
    let q = platform.bodies(Index::Quarantine);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["raw_bytes"], big.len());
    assert_eq!(
        q[0]["raw_sha256"],
        crate::identity::sha256_hex(big.as_bytes())
    );
    assert!(big.starts_with(q[0]["raw_text"].as_str().unwrap()));
    assert!(q[0]["reason"].as_str().unwrap().contains("bytes"));
}

#[test]
fn an_answer_ending_early_moves_the_checkpoint_only_that_far() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut tap = busy_api(3);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::hours(2));
    tap.content_length = false;
    tap.mangle.push_back((
        "/v2/siem/all?format=json&interval=2024-10-11T12:04:53Z/2024-10-11T13:04:53Z".into(),
        Mangle::With(|b| {
            String::from_utf8_lossy(b)
                .replace(
                    "\"queryEndTime\":\"2024-10-11T13:04:53Z\"",
                    "\"queryEndTime\":\"2024-10-11T12:40:00Z\"",
                )
                .into_bytes()
        }),
    ));
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["windows"], 1);
    assert_eq!(summary["stopped_early"], "answer ended early");
    assert_eq!(
        platform.checkpoint(),
        Some(datetime!(2024-10-11 12:40:00 UTC))
    );
}

#[test]
fn the_configured_quota_is_the_budget() {
    let cfg = config(serde_json::json!({
        "content_types": ["events"], "siem_requests_per_day": 30, "interval_min": 1440
    }));
    let mut tap = busy_api(6);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::hours(5));
    platform.budget_taken.insert("siem".into(), 27);
    platform.budget_retry_at = (NOW + Duration::hours(20)).unix_timestamp() as u64;
    let err = run(&cfg, &mut tap, &mut platform).unwrap_err();
    assert_eq!(err, ConnectorError::RateLimited(20 * 3600));
    assert_eq!(tap.siem_paths().len(), 3);
    assert!(platform.logged(LogLevel::Warn, "the 30 SIEM requests a day"));
    assert!(platform.logged(LogLevel::Warn, "resumes at 2024-10-12T10:34:53Z"));
}

#[test]
fn threat_summaries_are_stored_once_and_failures_retried() {
    let cfg = config(serde_json::json!({"alerts": {"enabled": false}}));
    let mut tap = FakeTap::new(NOW);
    let t = NOW - Duration::minutes(5);
    for (n, threat) in ["t-found", "t-missing", "t-broken", "t-known", "t-found"]
        .iter()
        .enumerate()
    {
        tap.add_event(EventType::MessageDelivered, t, n, threat);
    }
    let summary_json = r#"{"id":"t-found","name":"Phish kit", "severityScore":  700}"#;
    tap.threats.insert("t-found".into(), summary_json.into());
    tap.threat_status.insert("t-broken".into(), 500);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::minutes(10));
    platform
        .stored
        .insert((Index::Syslog, "threat:t-known".into()), "{}".into());

    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["threats"], 2);
    let lookups: Vec<_> = tap
        .requests
        .iter()
        .filter(|p| p.starts_with("/v2/threat/summary/"))
        .cloned()
        .collect();
    assert_eq!(
        lookups,
        vec![
            "/v2/threat/summary/t-found",
            "/v2/threat/summary/t-missing",
            "/v2/threat/summary/t-broken"
        ]
    );
    let found = &platform.stored[&(Index::Syslog, "threat:t-found".to_string())];
    assert!(
        found.contains(summary_json),
        "summary stored verbatim: {found}"
    );
    let found: Value = serde_json::from_str(found).unwrap();
    assert_eq!(found["msg_class"], THREAT_CLASS);
    assert_eq!(found["threat_id"], "t-found");
    assert_eq!(found["timestamp"], crate::parse::epoch_ms(NOW));
    let missing: Value =
        serde_json::from_str(&platform.stored[&(Index::Syslog, "threat:t-missing".to_string())])
            .unwrap();
    assert_eq!(missing["status"], "not_found");
    assert!(!platform
        .stored
        .contains_key(&(Index::Syslog, "threat:t-broken".to_string())));
    assert!(platform.logged(LogLevel::Warn, "t-broken"));
    // Threat records and the backlog ride in the window's batch.
    assert_eq!(platform.commits.len(), 1);
    assert_eq!(platform.commits[0].records, 5 + 2);
    assert_eq!(
        platform
            .state
            .get("threat_backlog")
            .map(|b| String::from_utf8(b.clone()).unwrap()),
        Some("[\"t-broken\"]".to_string())
    );

    // Next run: no event names t-broken any more, but the backlog does.
    tap.threat_status.clear();
    tap.threats
        .insert("t-broken".into(), "{\"id\":\"t-broken\"}".into());
    tap.events.clear();
    tap.requests.clear();
    let later = NOW + Duration::minutes(5);
    tap.now = later;
    platform.now = later;
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["threats"], 1);
    assert!(platform
        .stored
        .contains_key(&(Index::Syslog, "threat:t-broken".to_string())));
    assert_eq!(platform.state.get("threat_backlog"), None);
}

#[test]
fn threat_lookups_stop_after_repeated_failures() {
    let cfg = config(serde_json::json!({"content_types": ["threats"]}));
    let mut tap = FakeTap::new(NOW);
    let t = NOW - Duration::minutes(5);
    for n in 0..10 {
        let id = format!("t{n}");
        tap.add_event(EventType::MessageBlocked, t, n, &id);
        tap.threat_status.insert(id, 503);
    }
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::minutes(10));
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["threats"], 0);
    assert_eq!(
        summary["written"], 0,
        "events are not stored with content_types = [threats]"
    );
    let lookups = tap
        .requests
        .iter()
        .filter(|p| p.contains("/threat/"))
        .count();
    assert_eq!(lookups, 3);
    let backlog: Vec<String> =
        serde_json::from_slice(platform.state.get("threat_backlog").unwrap()).unwrap();
    assert_eq!(backlog.len(), 10);
}

#[test]
fn fixture_events_collect_end_to_end() {
    // Every fixture event served in one window by the fake API.
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut tap = FakeTap::new(NOW);
    let t = NOW - Duration::minutes(5);
    let mut lines = 0;
    for (file, event_type) in crate::test_support::FIXTURE_FILES {
        for line in crate::test_support::fixture_lines(file) {
            if line.contains("queryEndTime") {
                continue;
            }
            tap.events.push(FakeEvent {
                event_type,
                time: t,
                visible_from: t,
                raw: line,
            });
            lines += 1;
        }
    }
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::minutes(10));
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["events"], lines);
    assert_eq!(summary["written"], lines);
    assert_eq!(summary["quarantined"], 0);
    assert_eq!(summary["by_type"]["messageBlocked"], 6);
    assert_eq!(summary["by_type"]["messageDelivered"], 8);
    assert_eq!(summary["by_type"]["clickPermitted"], 4);
    assert_eq!(summary["by_type"]["clickBlocked"], 5);
    // Raw events are stored byte for byte.
    for e in &tap.events {
        assert!(
            platform.stored.values().any(|b| b.contains(&e.raw)),
            "not stored verbatim: {}",
            e.raw
        );
    }
    // Collecting the same window again stores nothing twice.
    let again = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(again["written"], 0);
    assert_eq!(again["duplicates"], lines);
}

#[test]
fn test_connection_is_one_cheap_request() {
    let cfg = config(serde_json::json!({}));
    let mut platform = FakePlatform::new(NOW);
    let mut tap = FakeTap::new(NOW);
    let message = crate::test_connection(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(
        message,
        "connected to http://127.0.0.1:4567 as the configured service principal: SIEM API reachable"
    );
    assert_eq!(
        tap.requests,
        vec!["/v2/siem/clicks/blocked?format=json&sinceSeconds=60"]
    );

    tap.scripted
        .push_back(("/v2/siem/clicks/blocked".into(), Ok(response(401, ""))));
    let err = crate::test_connection(&cfg, &mut tap, &mut platform).unwrap_err();
    assert!(matches!(
        err,
        ConnectorError::Http(HttpFailure { status: 401, .. })
    ));
}

#[test]
fn host_url_path_prefix_is_kept() {
    let cfg = config(serde_json::json!({"host_url": "http://127.0.0.1:4567/tap/"}));
    assert_eq!(cfg.host_url, "http://127.0.0.1:4567/tap");
    let mut platform = FakePlatform::new(NOW);
    let mut tap = FakeTap::new(NOW);
    tap.scripted.push_back((
        "/tap/v2/siem/clicks/blocked".into(),
        Ok(response(200, "{}")),
    ));
    crate::test_connection(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(
        tap.requests,
        vec!["/tap/v2/siem/clicks/blocked?format=json&sinceSeconds=60"]
    );
}

#[test]
fn describe_names_the_connector_and_its_schema() {
    let d: Value = serde_json::from_str(&crate::describe()).unwrap();
    assert_eq!(d["name"], "proofpoint_tap");
    assert_eq!(d["vendor"], "Proofpoint");
    assert_eq!(d["version"], env!("CARGO_PKG_VERSION"));
    assert!(d["description"].as_str().unwrap().len() > 20);
    assert_eq!(d["config"]["type"], "object");
    for key in crate::config::CONNECTOR_KEYS {
        assert!(d["config"]["properties"].get(key).is_some(), "{key}");
    }
}

#[test]
fn every_siem_request_takes_from_the_shared_budget_threat_lookups_do_not() {
    let cfg = config(serde_json::json!({}));
    let mut tap = busy_api(3);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::hours(2));
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    let siem_requests = tap.siem_paths().len() as u32;
    assert!(summary["threats"].as_u64().unwrap() > 0);
    assert!(tap.requests.len() as u32 > siem_requests);
    assert_eq!(platform.budget_taken.get("siem"), Some(&siem_requests));
    assert_eq!(platform.budget_taken.len(), 1);
}

#[test]
fn an_empty_budget_stops_the_run_as_rate_limited_before_sending() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut tap = busy_api(4);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::hours(3));
    platform.budget_limit = Some(2);
    platform.budget_retry_at = (NOW + Duration::minutes(40)).unix_timestamp() as u64;
    let err = run(&cfg, &mut tap, &mut platform).unwrap_err();
    // 40 min from NOW, counted from NOW's whole second.
    assert_eq!(err, ConnectorError::RateLimited(2400));
    assert_eq!(
        tap.siem_paths().len(),
        2,
        "no request once the budget is empty"
    );
    assert_eq!(platform.commits.len(), 2, "progress so far stays committed");
    assert!(platform.logged(LogLevel::Warn, "used up"));

    // test-connection checks the budget too.
    let mut tap = FakeTap::new(NOW);
    let err = crate::test_connection(&cfg, &mut tap, &mut platform).unwrap_err();
    assert!(matches!(err, ConnectorError::RateLimited(_)));
    assert!(tap.requests.is_empty());
}

#[test]
fn progress_is_reported_per_window() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut tap = busy_api(4);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::hours(3));
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    let progress = platform.progress.borrow().clone();
    assert_eq!(progress.len(), 4);
    assert_eq!(
        progress.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
        vec![(1, 4), (2, 4), (3, 4), (4, 4)]
    );
    assert_eq!(progress[3].2, summary["events"].as_u64().unwrap());
}

fn alerts_stored(platform: &FakePlatform) -> Vec<Value> {
    platform
        .stored
        .iter()
        .filter(|((index, _), _)| *index == Index::Alerts)
        .map(|(_, body)| serde_json::from_str(body).unwrap())
        .collect()
}

#[test]
fn alerts_ride_with_their_events_and_recollection_counts_nothing_twice() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut tap = FakeTap::new(NOW);
    let t = NOW - Duration::minutes(5);
    for n in 0..50 {
        tap.add_event(EventType::MessageDelivered, t, n, "t");
    }
    for n in 50..53 {
        tap.add_event(EventType::ClickPermitted, t, n, "t");
    }
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::minutes(10));
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["written"], 53, "alerts are not counted as events");
    assert_eq!(summary["alerts_created"], 2);
    // One commit holds the events, their alerts and the alert book.
    assert_eq!(platform.commits.len(), 1);
    assert!(platform.commits[0]
        .state
        .iter()
        .any(|(k, v)| k.starts_with("alert_slot:") && v.is_some()));
    let alerts = alerts_stored(&platform);
    assert_eq!(alerts.len(), 2);
    let delivered = alerts
        .iter()
        .find(|a| a["xdr_event"]["name"] == "Proofpoint TAP messageDelivered")
        .expect("a messageDelivered alert");
    assert_eq!(delivered["count"], 50);
    assert_eq!(delivered["email"]["sender"]["address"], "bad@example.net");
    assert_eq!(
        delivered["email"]["recipient"]["addresses"]
            .as_array()
            .unwrap()
            .len(),
        50
    );
    assert_eq!(delivered["connector"], cfg.name.as_str());
    assert!(alerts
        .iter()
        .any(|a| a["xdr_event"]["name"] == "Proofpoint TAP clickDelivered"));

    // The look-back re-reads the same events: no count moves.
    platform.now = NOW + Duration::minutes(5);
    tap.now = NOW + Duration::minutes(5);
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["written"], 0);
    assert_eq!(summary["alerts_updated"], 0);
    let again = alerts_stored(&platform);
    let delivered = again
        .iter()
        .find(|a| a["xdr_event"]["name"] == "Proofpoint TAP messageDelivered")
        .unwrap();
    assert_eq!(delivered["count"], 50);
}

#[test]
fn events_dropped_by_log_filters_raise_no_alert() {
    let cfg = config(serde_json::json!({"content_types": ["events"], "log_filters": 1}));
    let mut tap = FakeTap::new(NOW);
    let t = NOW - Duration::minutes(5);
    for n in 0..3 {
        tap.add_event(EventType::ClickPermitted, t, n, "t");
    }
    tap.add_event(EventType::MessageDelivered, t, 3, "t");
    let mut platform = FakePlatform::new(NOW);
    platform.drop_containing = vec!["\"event_type\":\"clickPermitted\"".into()];
    platform.set_checkpoint(NOW - Duration::minutes(10));
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["filtered"], 3);
    let alerts = alerts_stored(&platform);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        alerts[0]["xdr_event"]["name"],
        "Proofpoint TAP messageDelivered"
    );
}

#[test]
fn response_actions_ride_with_their_alert_once_per_recipient() {
    let cfg = config(serde_json::json!({
        "content_types": ["events"],
        "response": {"disable_user": {"enabled": true, "ad": "corp", "on": ["clickDelivered"], "duration_ms": null, "dry_run": false}}
    }));
    let mut tap = FakeTap::new(NOW);
    let t = NOW - Duration::minutes(5);
    for n in 0..3 {
        tap.add_event(EventType::ClickPermitted, t, n, "t");
    }
    // Not a trigger: no action for its recipient.
    tap.add_event(EventType::MessageDelivered, t, 3, "t");
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::minutes(10));
    run(&cfg, &mut tap, &mut platform).unwrap();
    // One commit holds the events, the alerts and the actions.
    assert_eq!(platform.commits.len(), 1);
    assert_eq!(platform.actions_queued, vec![3]);
    let click_alert = alerts_stored(&platform)
        .into_iter()
        .find(|a| a["xdr_event"]["name"] == "Proofpoint TAP clickDelivered")
        .unwrap();
    let mut targets: Vec<&str> = platform
        .outbox
        .values()
        .map(|a| a.target.as_str())
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        vec![
            "user0@example.com",
            "user1@example.com",
            "user2@example.com"
        ]
    );
    for a in platform.outbox.values() {
        assert_eq!(a.kind, "disable-user");
        let params: Value = serde_json::from_str(&a.params).unwrap();
        assert_eq!(params["alert_id"], click_alert["alert"]["id"]);
        assert_eq!(params["ad"], "corp");
        assert_eq!(
            a.id,
            crate::response::action_id(click_alert["alert"]["id"].as_str().unwrap(), &a.target)
        );
    }

    // Re-collecting the window queues nothing new.
    platform.now = NOW + Duration::minutes(5);
    tap.now = NOW + Duration::minutes(5);
    run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(platform.outbox.len(), 3);
    assert!(platform.actions_queued[1..].iter().all(|n| *n == 0));
}

#[test]
fn response_policy_problems_are_reported() {
    let cfg = crate::config::Config::parse(
        &serde_json::json!({
            "name": "c", "tenant": "t", "host_url": "https://tap-api-v2.proofpoint.com",
            "response": {"disable_user": {"enabled": true, "ad": "corp", "on": ["bogus"]}}
        })
        .to_string(),
    );
    let problems = cfg.unwrap_err();
    assert!(
        problems.iter().any(|p| p.contains("`bogus`")),
        "{problems:?}"
    );
}

/// `n` delivered messages from `senders` senders (round robin) at `t`.
fn messages(tap: &mut FakeTap, t: OffsetDateTime, n: usize, senders: usize) {
    let at = api_time(t);
    for i in 0..n {
        tap.events.push(FakeEvent {
            event_type: EventType::MessageDelivered,
            time: t,
            visible_from: t,
            raw: format!(
                r#"{{"GUID":"g{i}","id":"id-{i}","messageTime":"{at}","recipient":["user{i}@example.com"],"sender":"s{}@evil.example","threatsInfoMap":[{{"threatID":"t","classification":"phish"}}]}}"#,
                i % senders
            ),
        });
    }
}

fn pending_keys(platform: &FakePlatform) -> Vec<String> {
    platform
        .state
        .keys()
        .filter(|k| k.starts_with(crate::alert_flush::PENDING_PREFIX))
        .cloned()
        .collect()
}

fn alert_count_total(platform: &FakePlatform) -> u64 {
    alerts_stored(platform)
        .iter()
        .map(|a| a["count"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_window_of_many_batches_writes_its_alerts_once_with_its_last_batch() {
    // 10 records a batch (half of 20: the rest is the alerts' room).
    let cfg = config(serde_json::json!({
        "content_types": ["events"], "limits": {"max_batch_records": 20}
    }));
    let mut tap = FakeTap::new(NOW);
    messages(&mut tap, NOW - Duration::minutes(5), 50, 2);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::minutes(10));
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["written"], 50);
    assert_eq!(summary["alerts_created"], 2);
    let commits = &platform.commits;
    assert!(commits.len() >= 5, "{} commits", commits.len());
    let (last, earlier) = commits.split_last().unwrap();
    assert_eq!(last.alerts, 2, "both alerts ride with the last batch");
    assert!(earlier.iter().all(|c| c.alerts == 0));
    // Each earlier batch listed its events as pending; the last cleared them.
    for (n, c) in earlier.iter().enumerate() {
        let key = format!("alert_pending:{n}");
        assert!(
            c.state.iter().any(|(k, v)| *k == key && v.is_some()),
            "{key}"
        );
    }
    assert!(pending_keys(&platform).is_empty());
    assert_eq!(alert_count_total(&platform), 50);
}

#[test]
fn a_run_stopped_between_batches_loses_no_event_from_its_alerts_and_counts_none_twice() {
    let cfg = config(serde_json::json!({
        "content_types": ["events"], "limits": {"max_batch_records": 20}
    }));
    let mut tap = FakeTap::new(NOW);
    messages(&mut tap, NOW - Duration::minutes(5), 50, 3);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::minutes(10));
    // The fourth commit fails: three batches (30 events) are stored, no alert.
    platform.fail_commit = Some(3);
    let failed = run(&cfg, &mut tap, &mut platform);
    assert!(failed.is_err());
    assert_eq!(platform.count(Index::Syslog, EVENT_CLASS), 30);
    assert!(alerts_stored(&platform).is_empty());
    assert_eq!(pending_keys(&platform).len(), 3);

    // The next run fetches the window again: the 30 stored events are counted
    // from the pending lists, the other 20 as new.
    platform.fail_commit = None;
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["written"], 20);
    assert_eq!(alert_count_total(&platform), 50);
    assert_eq!(alerts_stored(&platform).len(), 3);
    assert!(pending_keys(&platform).is_empty());

    // And once more: nothing moves.
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["alerts_updated"], 0);
    assert_eq!(alert_count_total(&platform), 50);
}

#[test]
fn alerts_that_outgrow_their_share_are_flushed_before_the_window_ends() {
    // The smallest batches the connector sizes (256 KiB): a flush is due
    // after about 64 KiB of alerts, and 400 senders are well past that.
    let cfg = config(serde_json::json!({
        "content_types": ["events"], "limits": {"memory_mib": 1}
    }));
    let mut tap = FakeTap::new(NOW);
    messages(&mut tap, NOW - Duration::minutes(5), 800, 400);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::minutes(10));
    run(&cfg, &mut tap, &mut platform).unwrap();
    let with_alerts = platform.commits.iter().filter(|c| c.alerts > 0).count();
    assert!(with_alerts >= 2, "{with_alerts} commits carried alerts");
    assert_eq!(alerts_stored(&platform).len(), 400);
    assert_eq!(alert_count_total(&platform), 800);
    assert!(pending_keys(&platform).is_empty());
}

#[test]
fn pending_events_the_api_no_longer_returns_are_dropped_once_their_window_is_passed() {
    let cfg = config(serde_json::json!({"content_types": ["events"]}));
    let mut tap = FakeTap::new(NOW);
    messages(&mut tap, NOW - Duration::minutes(5), 3, 1);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(NOW - Duration::minutes(10));
    let window_end = (NOW - Duration::minutes(3)).unix_timestamp();
    platform.state.insert(
        "alert_pending:0".into(),
        format!("0 {window_end}\ngone-1\ngone-2\n").into_bytes(),
    );
    run(&cfg, &mut tap, &mut platform).unwrap();
    assert!(
        pending_keys(&platform).is_empty(),
        "{:?}",
        pending_keys(&platform)
    );
    assert_eq!(alert_count_total(&platform), 3);
}

#[test]
fn pending_events_of_a_look_back_window_are_counted_when_it_comes_again() {
    // Five-minute windows, so the run's first windows end before the
    // checkpoint (its look-back) and before the pending list's window.
    let cfg = config(serde_json::json!({
        "content_types": ["events"], "max_window_minutes": 5, "interval_min": 15
    }));
    let mut tap = FakeTap::new(NOW);
    let cp = NOW - Duration::minutes(2);
    messages(&mut tap, cp - Duration::minutes(22), 3, 1);
    let mut platform = FakePlatform::new(NOW);
    platform.set_checkpoint(cp - Duration::minutes(40));
    run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(alert_count_total(&platform), 3);
    // As if a run stopped inside the look-back window [cp-25min, cp-20min)
    // had stored the three events without counting them.
    platform
        .stored
        .retain(|(index, _), _| *index != Index::Alerts);
    platform.state.retain(|k, _| !k.starts_with("alert_slot:"));
    let ids: Vec<String> = platform
        .stored
        .keys()
        .filter(|(index, _)| *index == Index::Syslog)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(ids.len(), 3);
    platform.set_checkpoint(cp);
    platform.state.insert(
        "alert_pending:0".into(),
        format!(
            "{} {}\n{}\n",
            (cp - Duration::minutes(25)).unix_timestamp(),
            (cp - Duration::minutes(20)).unix_timestamp(),
            ids.join("\n")
        )
        .into_bytes(),
    );
    let summary = run(&cfg, &mut tap, &mut platform).unwrap();
    assert_eq!(summary["written"], 0, "the events are stored already");
    assert_eq!(alert_count_total(&platform), 3);
    assert!(pending_keys(&platform).is_empty());
}
