//! Starts the built `tap-sim` binary and talks HTTP to it.

mod common;

use std::collections::HashSet;
use std::process::Command;

use serde_json::Value;
use time::{Duration, OffsetDateTime};

use common::*;

#[test]
fn auth_windows_filters_errors_and_truth() {
    let sim = Sim::start(&[
        "--seed",
        "7",
        "--rate",
        "3000",
        "--max-lag-min",
        "0",
        "--history-hours",
        "3",
    ]);

    // Auth.
    let response = sim.get_without_auth("/v2/siem/all?sinceSeconds=60");
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.text().unwrap(),
        "The provided credentials are invalid"
    );
    let response = sim
        .client
        .get(format!("{}/v2/siem/all?sinceSeconds=60", sim.base))
        .basic_auth(PRINCIPAL, Some("wrong"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 401);

    // A one-hour window matches the truth for that window exactly.
    let all = sim.json("/v2/siem/all?sinceSeconds=3600");
    let keys: HashSet<&str> = all
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected_keys: HashSet<&str> = ARRAYS.into_iter().collect();
    expected_keys.insert("queryEndTime");
    assert_eq!(keys, expected_keys);
    let end_text = all["queryEndTime"].as_str().unwrap();
    assert!(
        end_text.ends_with(":00Z") && end_text.len() == 20,
        "{end_text}"
    );
    let end = parse_time(&all["queryEndTime"]);
    let start = end - Duration::hours(1);

    let truth = sim.truth("");
    assert!(!truth.is_empty());
    for array in ARRAYS {
        let served: HashSet<String> = all[array]
            .as_array()
            .unwrap()
            .iter()
            .map(canonical)
            .collect();
        let expected: HashSet<String> = truth
            .iter()
            .filter(|line| line["type"] == array)
            .map(|line| &line["event"])
            .filter(|event| (start..end).contains(&filed_time(event)))
            .map(canonical)
            .collect();
        assert!(!served.is_empty(), "{array} empty");
        assert_eq!(served, expected, "{array}");
        for event in all[array].as_array().unwrap() {
            let recipient = &event["recipient"];
            if array.starts_with("messages") {
                assert_eq!(recipient.as_array().unwrap().len(), 1);
            } else {
                assert!(recipient.is_string());
            }
        }
    }
    // Same window as an explicit interval, half-open: the same events.
    let interval = sim.json(&format!(
        "/v2/siem/messages/delivered?interval={}/{}",
        format_z(start),
        format_z(end)
    ));
    assert_eq!(interval.as_object().unwrap().len(), 2);
    let a: HashSet<String> = interval["messagesDelivered"]
        .as_array()
        .unwrap()
        .iter()
        .map(canonical)
        .collect();
    let b: HashSet<String> = all["messagesDelivered"]
        .as_array()
        .unwrap()
        .iter()
        .map(canonical)
        .collect();
    assert_eq!(a, b);
    // Split in two halves: nothing lost, nothing repeated.
    let half = start + Duration::minutes(30);
    let mut halves = 0;
    for (from, to) in [(start, half), (half, end)] {
        let part = sim.json(&format!(
            "/v2/siem/messages/delivered?interval={}/{}",
            format_z(from),
            format_z(to)
        ));
        halves += part["messagesDelivered"].as_array().unwrap().len();
    }
    assert_eq!(halves, b.len());

    // Endpoints return only their own arrays.
    let issues = sim.json("/v2/siem/issues?sinceSeconds=600");
    let keys: HashSet<&str> = issues
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from(["queryEndTime", "messagesDelivered", "clicksPermitted"])
    );
    for (path, array) in [
        ("messages/blocked", "messagesBlocked"),
        ("messages/delivered", "messagesDelivered"),
        ("clicks/blocked", "clicksBlocked"),
        ("clicks/permitted", "clicksPermitted"),
    ] {
        let body = sim.json(&format!("/v2/siem/{path}?sinceSeconds=300"));
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 2, "{path}: {keys:?}");
        assert!(body[array].is_array(), "{path}");
    }

    // Threat filters.
    let fp = sim.json(&format!(
        "/v2/siem/clicks/blocked?interval={}/{}&threatStatus=falsePositive",
        format_z(start),
        format_z(end)
    ));
    for click in fp["clicksBlocked"].as_array().unwrap() {
        assert_eq!(click["threatStatus"], "falsePositive");
    }
    let attachments = sim.json("/v2/siem/all?sinceSeconds=3600&threatType=attachment");
    assert!(attachments["clicksBlocked"].as_array().unwrap().is_empty());
    for message in attachments["messagesBlocked"].as_array().unwrap() {
        let threats = message["threatsInfoMap"].as_array().unwrap();
        assert!(threats.iter().any(|t| t["threatType"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("attachment")));
    }

    // The 400 rules.
    let now = OffsetDateTime::now_utc();
    let old = now - Duration::days(8);
    let cases: Vec<(String, &str)> = vec![
        (
            "/v2/siem/all?interval=PT10S/2024-01-01T00:00:00Z".into(),
            TOO_SHORT,
        ),
        ("/v2/siem/all?sinceSeconds=10".into(), TOO_SHORT),
        ("/v2/siem/all?sinceSeconds=7200".into(), TOO_LONG),
        (
            format!(
                "/v2/siem/all?interval={}/PT2H",
                format_z(now - Duration::hours(3))
            ),
            TOO_LONG,
        ),
        (
            format!("/v2/siem/all?interval={}/PT1H", format_z(old)),
            TOO_FAR,
        ),
        (
            format!(
                "/v2/siem/all?interval=PT30M/{}",
                format_z(now + Duration::hours(1))
            ),
            STILL_CURRENT,
        ),
        (
            format!(
                "/v2/siem/all?interval={}/{}",
                format_z(now - Duration::minutes(10)),
                format_z(now - Duration::minutes(20))
            ),
            "",
        ),
    ];
    for (path, body) in &cases {
        assert_eq!(sim.error(path), (400, body.to_string()), "{path}");
    }
    for path in [
        "/v2/siem/all",
        "/v2/siem/all?sinceSeconds=60&sinceTime=2024-01-01T00:00:00Z",
        "/v2/siem/all?interval=yesterday",
        "/v2/siem/all?sinceSeconds=abc",
        "/v2/siem/all?sinceSeconds=60&threatType=virus",
        "/v2/siem/all?sinceSeconds=60&format=syslog",
    ] {
        let (status, body) = sim.error(path);
        assert_eq!(status, 400, "{path}");
        assert!(!body.is_empty(), "{path}");
    }

    // Threat summary: 200 for a threat in the events, 404 otherwise.
    let click = &all["clicksPermitted"][0];
    let threat_id = click["threatID"].as_str().unwrap();
    let summary = sim.json(&format!("/v2/threat/summary/{threat_id}"));
    assert_eq!(summary["id"], threat_id);
    assert_eq!(summary["type"], "url");
    for field in [
        "identifiedAt",
        "category",
        "status",
        "severityScore",
        "actors",
        "brands",
    ] {
        assert!(summary.get(field).is_some(), "{field}");
    }
    assert_eq!(sim.error("/v2/threat/summary/not-a-threat").0, 404);
    assert_eq!(
        sim.get_without_auth(&format!("/v2/threat/summary/{threat_id}"))
            .status(),
        401
    );

    // Unknown paths.
    assert_eq!(sim.error("/v2/siem/everything?sinceSeconds=60").0, 404);
    assert_eq!(sim.error("/nope").0, 404);

    // Truth with all=1 adds falsePositive-only events.
    let everything = sim.truth("?all=1");
    assert!(everything.len() > truth.len());

    // Stats count what we sent (not /_sim/*): 3 unauthenticated, 11 good
    // windows (one of them clicks/permitted), 13 bad windows, 2 threat
    // summaries, 2 unknown paths.
    let stats = sim.stats();
    assert_eq!(stats["total_requests"], 3 + 11 + 13 + 2 + 2);
    assert_eq!(stats["pools"]["siem_other"]["admitted"], 10 + 13);
    assert_eq!(stats["pools"]["clicks_permitted"]["admitted"], 1);
    assert_eq!(stats["responses_400"], 13);
    assert_eq!(stats["responses_401"], 3);
    assert_eq!(stats["responses_404"], 3);
    assert_eq!(stats["threat_requests"], 2);
}

#[test]
fn rate_limit_pools_and_429() {
    let sim = Sim::start(&["--rate-limit", "3", "--rate", "60"]);
    // 400s spend budget too.
    for _ in 0..2 {
        assert_eq!(sim.error("/v2/siem/all?sinceSeconds=1").0, 400);
    }
    assert_eq!(
        sim.get("/v2/siem/messages/blocked?sinceSeconds=60")
            .status(),
        200
    );
    let throttled = sim.get("/v2/siem/all?sinceSeconds=60");
    assert_eq!(throttled.status(), 429);
    assert!(throttled.headers().get("retry-after").is_none());
    // Another endpoint of the same pool is throttled too.
    assert_eq!(sim.get("/v2/siem/issues?sinceSeconds=60").status(), 429);

    // clicks/permitted has its own pool.
    for _ in 0..3 {
        assert_eq!(
            sim.get("/v2/siem/clicks/permitted?sinceSeconds=60")
                .status(),
            200
        );
    }
    assert_eq!(
        sim.get("/v2/siem/clicks/permitted?sinceSeconds=60")
            .status(),
        429
    );

    // Unauthenticated requests and the Threat API are not limited.
    assert_eq!(
        sim.get_without_auth("/v2/siem/all?sinceSeconds=60")
            .status(),
        401
    );
    for _ in 0..5 {
        assert_eq!(sim.get("/v2/threat/summary/unknown").status(), 404);
    }

    let stats = sim.stats();
    assert_eq!(stats["pools"]["siem_other"]["admitted"], 3);
    assert_eq!(stats["pools"]["siem_other"]["in_window"], 3);
    assert_eq!(stats["pools"]["siem_other"]["throttled"], 2);
    assert_eq!(stats["pools"]["clicks_permitted"]["throttled"], 1);
    assert_eq!(stats["responses_429"], 3);
    assert_eq!(stats["siem_requests"], 9);
}

const CLICK: &str = r#"{"url":"https://www.example.com/?name=john","classification":"phish","clickTime":"2022-03-21T07:52:11.000Z","threatTime":"2022-03-18T14:54:20.000Z","campaignId":"c","id":"8760d0fc","recipient":"123abc@example.com","threatID":"3xx97","threatStatus":"active"}"#;
const MESSAGE: &str = r#"{"spamScore":0,"threatsInfoMap":[{"threatID":"dhg","threatStatus":"active","classification":"malware","threatTime":"2022-03-21T07:53:40.050Z","threat":"example.com/xyz/","campaignID":null,"threatType":"url"}],"messageTime":"2022-03-21T07:45:55.050Z","id":"401cc","GUID":"q1","recipient":["mailer-daemon@example.com"]}"#;

#[test]
fn events_file_is_served_retimed_and_byte_identical() {
    let dir = TempDir::new("events");
    let path = dir.0.join("events.ndjson");
    std::fs::write(
        &path,
        format!("{CLICK}\n\n{{\"queryEndTime\":\"2024-10-11T14:34:53Z\",\"messagesBlocked\":[{MESSAGE}]}}\n"),
    )
    .unwrap();
    let sim = Sim::start(&[
        "--events",
        path.to_str().unwrap(),
        "--events-type",
        "clicksBlocked",
        "--retime",
        "--max-lag-min",
        "0",
    ]);

    let all = sim.json("/v2/siem/all?sinceSeconds=3600");
    assert_eq!(all["clicksBlocked"].as_array().unwrap().len(), 1);
    assert_eq!(all["messagesBlocked"].as_array().unwrap().len(), 1);
    assert!(all["messagesDelivered"].as_array().unwrap().is_empty());

    let raw = sim.get_without_auth("/_sim/truth").text().unwrap();
    let lines: Vec<&str> = raw.lines().collect();
    assert_eq!(lines.len(), 2);
    // Oldest filed first: the click (filed 07:52:11) before the message (07:53:40.050).
    let click_line = lines[0];
    assert!(click_line.starts_with(r#"{"type":"clicksBlocked","event":{"url":"https://www.example.com/?name=john","classification":"phish","clickTime":""#));
    let message: Value = serde_json::from_str(lines[1]).unwrap();
    let event = &message["event"];
    let newest = parse_time(&event["threatsInfoMap"][0]["threatTime"]);
    let age = OffsetDateTime::now_utc() - newest;
    assert!(
        age >= Duration::minutes(2) && age < Duration::minutes(3),
        "{age}"
    );
    // Same gaps, same format (milliseconds kept).
    assert_eq!(
        newest - parse_time(&event["messageTime"]),
        Duration::seconds(465)
    );
    assert!(event["messageTime"].as_str().unwrap().ends_with(".050Z"));
    let click: Value = serde_json::from_str(click_line).unwrap();
    assert_eq!(
        newest - parse_time(&click["event"]["clickTime"]),
        Duration::milliseconds(89_050)
    );

    // Every non-time byte is as recorded.
    let served_message = &lines[1][lines[1].find(r#""event":"#).unwrap() + 8..lines[1].len() - 1];
    let rewritten_times = [
        (
            "2022-03-21T07:53:40.050Z",
            event["threatsInfoMap"][0]["threatTime"].as_str().unwrap(),
        ),
        (
            "2022-03-21T07:45:55.050Z",
            event["messageTime"].as_str().unwrap(),
        ),
    ];
    let mut expected = MESSAGE.to_string();
    for (old, new) in rewritten_times {
        expected = expected.replace(old, new);
    }
    assert_eq!(served_message, expected);

    // A threat from the file has a summary.
    assert_eq!(sim.json("/v2/threat/summary/dhg")["id"], "dhg");
}

#[test]
fn events_file_single_event_without_type_fails_clearly() {
    let dir = TempDir::new("bad");
    let path = dir.0.join("bad.ndjson");
    std::fs::write(&path, format!("\n{CLICK}\n")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tap-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--events",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "must fail before listening");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.ndjson:2"), "{stderr}");
    assert!(stderr.contains("--events-type"), "{stderr}");
}
