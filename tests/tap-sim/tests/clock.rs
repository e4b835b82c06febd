//! `--clock-file`: simulated time that tests move forward.

mod common;

use std::collections::HashSet;

use serde_json::Value;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use common::*;

/// Far from the real date, so a fallback to the real clock cannot pass.
const T0: OffsetDateTime = datetime!(2031-03-04 10:00:30 UTC);

fn stamp(at: OffsetDateTime) -> String {
    format_z(at)
}

fn events_in(
    truth: &[Value],
    array: &str,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> HashSet<String> {
    truth
        .iter()
        .filter(|line| line["type"] == array)
        .map(|line| &line["event"])
        .filter(|event| (from..to).contains(&filed_time(event)))
        .map(canonical)
        .collect()
}

fn served(body: &Value, array: &str) -> HashSet<String> {
    body[array]
        .as_array()
        .unwrap()
        .iter()
        .map(canonical)
        .collect()
}

fn canonical_truth(truth: &[Value]) -> HashSet<String> {
    truth.iter().map(canonical).collect()
}

#[test]
fn clock_file_drives_windows_rules_visibility_and_truth() {
    let dir = TempDir::new("clock-main");
    let clock = dir.file("now");
    set_clock(&clock, &stamp(T0));
    let sim = Sim::start(&[
        "--clock-file",
        clock.to_str().unwrap(),
        "--seed",
        "5",
        "--rate",
        "600",
        "--max-lag-min",
        "10",
        "--history-hours",
        "3",
    ]);

    // sinceSeconds ends at the clock's minute; the window matches the truth.
    let all = sim.json("/v2/siem/all?sinceSeconds=3600");
    assert_eq!(all["queryEndTime"], "2031-03-04T10:00:00Z");
    let truth = sim.truth("");
    let start = datetime!(2031-03-04 09:00 UTC);
    let end = datetime!(2031-03-04 10:00 UTC);
    let mut total = 0;
    for array in ARRAYS {
        let expected = events_in(&truth, array, start, end);
        assert_eq!(served(&all, array), expected, "{array}");
        total += expected.len();
    }
    assert!(total > 100, "{total}");
    // History starts 3 h before the clock's time at start; nothing is
    // visible beyond the clock's now.
    let filed: Vec<OffsetDateTime> = truth.iter().map(|l| filed_time(&l["event"])).collect();
    assert!(filed
        .iter()
        .all(|&t| t >= T0 - Duration::hours(3) && t <= T0));
    assert!(filed.iter().any(|&t| t < T0 - Duration::minutes(170)));

    let since_time = sim.json("/v2/siem/clicks/blocked?sinceTime=2031-03-04T09:30:00Z");
    assert_eq!(since_time["queryEndTime"], "2031-03-04T10:00:00Z");

    // The 400 rules use the clock: "still current" and "7 days".
    assert_eq!(
        sim.get("/v2/siem/all?interval=PT30M/2031-03-04T10:00:30Z")
            .status(),
        200
    );
    assert_eq!(
        sim.error("/v2/siem/all?interval=PT30M/2031-03-04T10:00:31Z"),
        (400, STILL_CURRENT.to_string())
    );
    assert_eq!(
        sim.get("/v2/siem/all?interval=2031-02-25T10:00:30Z/PT1H")
            .status(),
        200
    );
    assert_eq!(
        sim.error("/v2/siem/all?interval=2031-02-25T10:00:29Z/PT1H"),
        (400, TOO_FAR.to_string())
    );
    // The real clock's recent past is "too far" in 2031.
    let real = OffsetDateTime::now_utc() - Duration::hours(2);
    assert_eq!(
        sim.error(&format!("/v2/siem/all?interval={}/PT1H", stamp(real))),
        (400, TOO_FAR.to_string())
    );

    // Eleven simulated minutes later, late-indexed events filed before T0
    // have become visible, and newer ones exist.
    let before = canonical_truth(&truth);
    set_clock(&clock, &stamp(T0 + Duration::minutes(11)));
    let later = sim.truth("");
    let after = canonical_truth(&later);
    assert!(after.is_superset(&before));
    let late_indexed = later
        .iter()
        .filter(|l| filed_time(&l["event"]) <= T0 && !before.contains(&canonical(l)))
        .count();
    assert!(late_indexed > 0, "no event became visible by lag");
    assert!(later
        .iter()
        .any(|l| filed_time(&l["event"]) > T0 + Duration::minutes(5)));

    // Two hours on: new windows have new events.
    set_clock(&clock, &stamp(T0 + Duration::hours(2)));
    let all = sim.json("/v2/siem/all?sinceSeconds=3600");
    assert_eq!(all["queryEndTime"], "2031-03-04T12:00:00Z");
    let truth = sim.truth("?from=2031-03-04T11:00:00Z&to=2031-03-04T12:00:00Z");
    let mut total = 0;
    for array in ARRAYS {
        let expected = events_in(
            &truth,
            array,
            datetime!(2031-03-04 11:00 UTC),
            datetime!(2031-03-04 12:00 UTC),
        );
        assert_eq!(served(&all, array), expected, "{array}");
        total += expected.len();
    }
    assert!(total > 100, "{total}");

    // Epoch milliseconds work too.
    let ms = (T0 + Duration::hours(2)).unix_timestamp() * 1000 + 250;
    set_clock(&clock, &ms.to_string());
    assert_eq!(
        sim.json("/v2/siem/issues?sinceSeconds=60")["queryEndTime"],
        "2031-03-04T12:00:00Z"
    );

    // Backwards: answered sensibly, no panic.
    set_clock(&clock, &stamp(T0 + Duration::hours(1)));
    assert_eq!(
        sim.json("/v2/siem/all?sinceSeconds=60")["queryEndTime"],
        "2031-03-04T11:00:00Z"
    );
    assert!(!sim.truth("?from=2031-03-04T10:00:00Z").is_empty());
    assert_eq!(sim.get_without_auth("/_sim/stats").status(), 200);

    // Missing or unparsable: 500 with a clear message, never the real clock.
    std::fs::remove_file(&clock).unwrap();
    let (status, body) = sim.error("/v2/siem/all?sinceSeconds=60");
    assert_eq!(status, 500);
    assert!(
        body.contains("--clock-file") && body.contains("now"),
        "{body}"
    );
    assert_eq!(sim.get_without_auth("/_sim/truth").status(), 500);
    assert_eq!(sim.get_without_auth("/_sim/stats").status(), 500);
    set_clock(&clock, "next tuesday");
    let (status, body) = sim.error("/v2/siem/all?sinceSeconds=60");
    assert_eq!(status, 500);
    assert!(body.contains("next tuesday"), "{body}");
    // Back to normal.
    set_clock(&clock, &stamp(T0 + Duration::hours(3)));
    assert_eq!(
        sim.json("/v2/siem/all?sinceSeconds=60")["queryEndTime"],
        "2031-03-04T13:00:00Z"
    );
}

#[test]
fn rate_limit_pools_expire_by_simulated_time() {
    let dir = TempDir::new("clock-pools");
    let clock = dir.file("now");
    set_clock(&clock, &stamp(T0));
    let sim = Sim::start(&[
        "--clock-file",
        clock.to_str().unwrap(),
        "--rate-limit",
        "3",
        "--rate",
        "60",
    ]);
    let at = |offset: Duration| set_clock(&clock, &stamp(T0 + offset));
    let status = || sim.get("/v2/siem/all?sinceSeconds=60").status().as_u16();
    let in_window = || sim.stats()["pools"]["siem_other"]["in_window"].clone();

    for hour in 0..3 {
        at(Duration::hours(hour));
        assert_eq!(status(), 200, "hour {hour}");
    }
    at(Duration::hours(3));
    assert_eq!(status(), 429);
    assert_eq!(in_window(), 3);
    // The pool reopens 24 simulated hours after its oldest request.
    at(Duration::hours(24) - Duration::seconds(1));
    assert_eq!(status(), 429);
    at(Duration::hours(24));
    assert_eq!(status(), 200);
    assert_eq!(status(), 429);
    assert_eq!(in_window(), 3);
    // Days later the whole budget is back.
    at(Duration::days(3));
    assert_eq!(in_window(), 0);
    for _ in 0..3 {
        assert_eq!(status(), 200);
    }
    assert_eq!(status(), 429);

    let stats = sim.stats();
    assert_eq!(stats["pools"]["siem_other"]["admitted"], 7);
    assert_eq!(stats["pools"]["siem_other"]["throttled"], 4);
}

const CLICK: &str = r#"{"url":"https://www.example.com/","classification":"phish","clickTime":"2022-03-21T07:52:11.000Z","threatTime":"2022-03-18T14:54:20.000Z","campaignId":"c","id":"8760d0fc","recipient":"a@example.com","threatID":"3xx97","threatStatus":"active"}"#;

#[test]
fn retime_targets_the_clock() {
    let dir = TempDir::new("clock-retime");
    let clock = dir.file("now");
    set_clock(&clock, &stamp(T0));
    let events = dir.file("events.ndjson");
    std::fs::write(&events, format!("{CLICK}\n")).unwrap();
    let sim = Sim::start(&[
        "--clock-file",
        clock.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--events-type",
        "clicksBlocked",
        "--retime",
        "--max-lag-min",
        "0",
    ]);
    let truth = sim.truth("");
    assert_eq!(truth.len(), 1);
    assert_eq!(
        truth[0]["event"]["clickTime"], "2031-03-04T09:58:30.000Z",
        "newest = clock - 2 min"
    );
}

#[test]
fn unusable_clock_file_at_start_fails_clearly() {
    let dir = TempDir::new("clock-start");
    let missing = dir.file("missing");
    let (code, stderr) = run_expecting_failure(&["--clock-file", missing.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");

    let bad = dir.file("bad");
    std::fs::write(&bad, "2031-13-01T00:00:00Z").unwrap();
    let (code, stderr) = run_expecting_failure(&["--clock-file", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("2031-13-01"), "{stderr}");
}
