//! `--faults`: deliberate misbehaviour for robustness tests.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

const NOW: &str = "2031-03-04T10:00:30Z";
const WINDOW: &str = "/v2/siem/all?sinceSeconds=3600";
const SLOW_SECS: f64 = 0.6;

/// A simulator whose every authenticated API request gets `kind`, with a
/// frozen clock so `/_sim/truth` can be compared before and after.
struct FaultySim {
    sim: Sim,
    _dir: TempDir,
}

fn faulty(name: &str, spec: &str, extra: &[&str]) -> FaultySim {
    let dir = TempDir::new(&format!("faults-{name}"));
    let clock = dir.file("now");
    set_clock(&clock, NOW);
    let slow = SLOW_SECS.to_string();
    let mut args = vec![
        "--clock-file",
        clock.to_str().unwrap(),
        "--faults",
        spec,
        "--slow-secs",
        &slow,
        "--rate",
        "300",
        "--max-lag-min",
        "0",
    ];
    args.extend_from_slice(extra);
    let sim = Sim::start(&args);
    FaultySim { sim, _dir: dir }
}

/// Events the truth says the one-hour window ending at 10:00 holds.
fn expected_events(sim: &Sim) -> usize {
    sim.truth("?from=2031-03-04T09:00:00Z&to=2031-03-04T10:00:00Z")
        .len()
}

fn event_count(body: &Value) -> usize {
    ARRAYS
        .iter()
        .map(|a| body[a].as_array().map_or(0, Vec::len))
        .sum()
}

/// Any threat id the simulator knows.
fn some_threat_id(sim: &Sim) -> String {
    fn find(value: &Value) -> Option<String> {
        match value {
            Value::Object(map) => map.iter().find_map(|(k, v)| {
                if k.eq_ignore_ascii_case("threatId") {
                    v.as_str().map(str::to_string)
                } else {
                    find(v)
                }
            }),
            Value::Array(items) => items.iter().find_map(find),
            _ => None,
        }
    }
    sim.truth("").iter().find_map(find).unwrap()
}

fn faults_stat(sim: &Sim, kind: &str) -> u64 {
    sim.stats()["faults"][kind].as_u64().unwrap()
}

fn admitted(sim: &Sim) -> u64 {
    sim.stats()["pools"]["siem_other"]["admitted"]
        .as_u64()
        .unwrap()
}

#[test]
fn bad_fault_specs_exit_1() {
    for (spec, message) in [
        ("nope=0.1", "unknown fault kind"),
        ("500=1.5", "outside [0, 1]"),
        ("500=-1", "outside [0, 1]"),
        ("500=0.6,reset=0.5", "add up to"),
        ("500", "KIND=RATE"),
        ("truncate=lots", "not a number"),
    ] {
        let (code, stderr) = run_expecting_failure(&["--faults", spec]);
        assert_eq!(code, Some(1), "{spec}: {stderr}");
        assert!(stderr.contains("--faults"), "{spec}: {stderr}");
        assert!(stderr.contains(message), "{spec}: {stderr}");
    }
}

#[test]
fn status_faults_count_in_the_pool_but_spurious_429s_do_not() {
    for (kind, status) in [("500", 500), ("503", 503)] {
        let f = faulty(kind, &format!("{kind}=1"), &["--rate-limit", "2"]);
        let sim = &f.sim;
        let truth = sim.truth("");
        for _ in 0..2 {
            let (code, body) = sim.error(WINDOW);
            assert_eq!(code, status);
            assert!(!body.is_empty());
        }
        // The faulted requests spent the budget: now the real 429.
        assert_eq!(sim.error(WINDOW).0, 429);
        let id = some_threat_id(sim);
        assert_eq!(sim.error(&format!("/v2/threat/summary/{id}")).0, status);
        let stats = sim.stats();
        assert_eq!(stats["faults"][kind], 3, "{stats}");
        assert_eq!(stats["pools"]["siem_other"]["admitted"], 2);
        assert_eq!(stats["pools"]["siem_other"]["throttled"], 1);
        assert_eq!(sim.truth(""), truth, "faults must not change the truth");
    }

    let f = faulty("429", "429=1", &["--rate-limit", "2"]);
    let sim = &f.sim;
    for _ in 0..5 {
        let response = sim.get(WINDOW);
        assert_eq!(response.status(), 429);
        assert!(response.headers().get("retry-after").is_none());
    }
    let stats = sim.stats();
    assert_eq!(stats["faults"]["429"], 5);
    assert_eq!(stats["pools"]["siem_other"]["admitted"], 0);
    assert_eq!(stats["pools"]["siem_other"]["in_window"], 0);
    assert_eq!(stats["pools"]["siem_other"]["throttled"], 0);
    assert_eq!(stats["responses_429"], 5);
}

#[test]
fn only_authenticated_api_requests_get_faults() {
    let f = faulty("scope", "500=1", &[]);
    let sim = &f.sim;
    assert_eq!(sim.get_without_auth(WINDOW).status(), 401);
    assert_eq!(sim.get_without_auth("/v2/threat/summary/x").status(), 401);
    assert_eq!(sim.get("/v2/siem/everything?sinceSeconds=60").status(), 404);
    assert_eq!(sim.get("/nope").status(), 404);
    assert_eq!(sim.get_without_auth("/_sim/truth").status(), 200);
    let stats = sim.stats();
    assert_eq!(stats["faults"]["500"], 0);
    // Every kind is listed; the existing keys are still there.
    let kinds: Vec<&String> = stats["faults"].as_object().unwrap().keys().collect();
    assert_eq!(kinds.len(), 8, "{kinds:?}");
    for key in [
        "total_requests",
        "siem_requests",
        "threat_requests",
        "pools",
        "responses_400",
        "responses_401",
        "responses_404",
        "responses_429",
    ] {
        assert!(stats.get(key).is_some(), "{key}");
    }
    assert_eq!(sim.error("/v2/threat/summary/not-a-threat").0, 500);
    assert_eq!(sim.stats()["faults"]["500"], 1);
}

#[test]
fn reset_closes_the_connection_without_a_response() {
    let f = faulty("reset", "reset=1", &[]);
    let sim = &f.sim;
    let truth = sim.truth("");
    let reply = sim.raw_get(WINDOW);
    assert!(
        reply.bytes.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&reply.bytes)
    );
    let error = reply.error.expect("a reset, not an orderly close");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    let sent = sim
        .client
        .get(format!("{}{WINDOW}", sim.base))
        .basic_auth(PRINCIPAL, Some(SECRET))
        .send();
    assert!(sent.is_err());
    assert_eq!(faults_stat(sim, "reset"), 2);
    assert_eq!(admitted(sim), 2);
    assert_eq!(sim.truth(""), truth);
}

#[test]
fn truncate_sends_part_of_the_announced_body() {
    let f = faulty("truncate", "truncate=1", &[]);
    let sim = &f.sim;
    let truth = sim.truth("");
    for path in [
        WINDOW.to_string(),
        format!("/v2/threat/summary/{}", some_threat_id(sim)),
    ] {
        let reply = sim.raw_get(&path);
        let (status, headers, body) = reply.parse().expect("a response head");
        assert_eq!(status, 200, "{path}");
        let announced: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .expect("Content-Length");
        assert!(
            !body.is_empty() && body.len() < announced,
            "{path}: {} of {announced}",
            body.len()
        );
        // A client sees an error, not a short body.
        let response = sim.get(&path);
        assert_eq!(response.status(), 200);
        assert!(response.bytes().is_err(), "{path}");
    }
    assert_eq!(faults_stat(sim, "truncate"), 4);
    assert_eq!(admitted(sim), 2);
    assert_eq!(sim.truth(""), truth);
}

#[test]
fn malformed_is_a_200_with_invalid_json() {
    let f = faulty("malformed", "malformed=1", &[]);
    let sim = &f.sim;
    let truth = sim.truth("");
    let id = some_threat_id(sim);
    for path in [WINDOW.to_string(), format!("/v2/threat/summary/{id}")] {
        for _ in 0..5 {
            let response = sim.get(&path);
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "application/json");
            let body = response.bytes().unwrap();
            assert!(body.len() > 10);
            assert!(serde_json::from_slice::<Value>(&body).is_err(), "{path}");
        }
    }
    // Body faults need a 200: a 400 or 404 is left alone (and not counted).
    assert_eq!(sim.error("/v2/siem/all?sinceSeconds=5").0, 400);
    assert_eq!(sim.error("/v2/threat/summary/unknown").0, 404);
    assert_eq!(faults_stat(sim, "malformed"), 10);
    assert_eq!(admitted(sim), 6);
    assert_eq!(sim.truth(""), truth);
}

#[test]
fn slow_faults_delay_but_answer_correctly() {
    let slow = Duration::from_secs_f64(SLOW_SECS);

    let f = faulty("slow-first-byte", "slow-first-byte=1", &[]);
    let sim = &f.sim;
    let expected = expected_events(sim);
    let started = Instant::now();
    let response = sim.get(WINDOW);
    assert!(started.elapsed() >= slow, "{:?}", started.elapsed());
    assert_eq!(response.status(), 200);
    let body: Value = response.json().unwrap();
    assert_eq!(event_count(&body), expected);
    assert_eq!(faults_stat(sim, "slow-first-byte"), 1);

    let f = faulty("slow-body", "slow-body=1", &[]);
    let sim = &f.sim;
    let expected = expected_events(sim);
    let started = Instant::now();
    let response = sim.get(WINDOW);
    let headers_after = started.elapsed();
    assert_eq!(response.status(), 200);
    let length: usize = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = response.bytes().unwrap();
    let total = started.elapsed();
    assert_eq!(bytes.len(), length);
    assert!(total >= slow.mul_f64(0.9), "{total:?}");
    assert!(headers_after < total, "{headers_after:?} {total:?}");
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(event_count(&body), expected);
    assert_eq!(faults_stat(sim, "slow-body"), 1);
}

#[test]
fn faults_are_deterministic_per_request_sequence() {
    let spec = "500=0.2,503=0.2,429=0.2";
    let outcomes = |name: &str, extra: &[&str]| {
        let f = faulty(name, spec, extra);
        (0..40)
            .map(|_| f.sim.get("/v2/threat/summary/unknown").status().as_u16())
            .collect::<Vec<u16>>()
    };
    let a = outcomes("det-a", &["--seed", "42"]);
    assert!(
        a.contains(&404) && a.contains(&500) && a.contains(&503) && a.contains(&429),
        "{a:?}"
    );
    // --fault-seed defaults to --seed.
    assert_eq!(a, outcomes("det-b", &["--seed", "1", "--fault-seed", "42"]));
    assert_ne!(
        a,
        outcomes("det-c", &["--seed", "42", "--fault-seed", "43"])
    );
}

#[test]
fn mixed_faults_leave_the_truth_and_the_budget_consistent() {
    let f = faulty(
        "mixed",
        "500=0.1,503=0.1,429=0.1,reset=0.1,truncate=0.1,malformed=0.1",
        &["--seed", "3"],
    );
    let sim = &f.sim;
    let truth = sim.truth("");
    let mut good = 0u64;
    for _ in 0..60 {
        let sent = sim
            .client
            .get(format!("{}{WINDOW}", sim.base))
            .basic_auth(PRINCIPAL, Some(SECRET))
            .send();
        let Ok(response) = sent else { continue };
        if response.status() != 200 {
            continue;
        }
        let Ok(bytes) = response.bytes() else {
            continue;
        };
        if serde_json::from_slice::<Value>(&bytes).is_ok() {
            good += 1;
        }
    }
    let stats = sim.stats();
    let faults = stats["faults"].as_object().unwrap();
    let injected: u64 = faults.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(injected + good, 60, "{stats}");
    // Every request but the spurious 429s spent budget.
    assert_eq!(
        stats["pools"]["siem_other"]["admitted"].as_u64().unwrap(),
        60 - faults["429"].as_u64().unwrap()
    );
    assert!(good > 10 && injected > 10, "{good} {injected}");
    assert_eq!(sim.truth(""), truth);
}
