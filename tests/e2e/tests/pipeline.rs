//! simulator -> dphost -> TAP component -> SQLite -> `dphost search`, compared
//! with the simulator's truth: every visible event exactly once.

use anyhow::Result;
use e2e::*;
use std::collections::BTreeMap;

fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Checks truth_before ⊆ landed ⊆ truth_after, and nothing landed twice.
fn assert_exactly_once(
    before: &[(String, serde_json::Value)],
    landed: &[(String, serde_json::Value)],
    after: &[(String, serde_json::Value)],
) {
    let landed_set = multiset(landed.iter().map(|(t, e)| (t.as_str(), e)));
    let dups: Vec<_> = landed_set.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "{} events landed more than once: {:?}",
        dups.len(),
        dups.first()
    );
    let before_set = multiset(before.iter().map(|(t, e)| (t.as_str(), e)));
    let after_set = multiset(after.iter().map(|(t, e)| (t.as_str(), e)));
    let missing: Vec<_> = before_set
        .keys()
        .filter(|k| !landed_set.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} visible events are missing, e.g. {:?}",
        missing.len(),
        before_set.len(),
        missing.first()
    );
    let invented: Vec<_> = landed_set
        .keys()
        .filter(|k| !after_set.contains_key(*k))
        .collect();
    assert!(
        invented.is_empty(),
        "{} landed events the simulator never served: {:?}",
        invented.len(),
        invented.first()
    );
}

fn by_type(events: &[(String, serde_json::Value)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (t, _) in events {
        *m.entry(t.clone()).or_insert(0) += 1;
    }
    m
}

#[test]
fn every_visible_event_lands_exactly_once_across_runs() -> Result<()> {
    // Default indexing lag (up to 30 min): the look-back re-query must catch
    // late events and the sink must not store re-queried ones twice.
    let sim = Sim::start(&["--seed", "7", "--rate", "600", "--history-hours", "3"])?;
    let ws = Workspace::new()?;
    ws.write_config(&tap_connector(
        "acme-proofpoint_tap",
        "acme",
        &sim,
        "initial_lookback_hours = 4",
    ))?;

    // The connector's windows end a safety margin (60 s) before now.
    let cutoff = rfc3339(std::time::SystemTime::now() - std::time::Duration::from_secs(61));
    let before = sim.truth_between(None, Some(&cutoff))?;
    let out = ws.dphost(&["once"])?;
    assert!(out.status.success(), "{}", text(&out));
    let after = sim.truth()?;
    let landed = landed_events(&ws)?;
    assert!(
        before.len() > 500,
        "the simulator should have served a few hundred events, got {}",
        before.len()
    );
    assert_exactly_once(&before, &landed, &after);
    let types = by_type(&landed);
    for t in [
        "messageBlocked",
        "messageDelivered",
        "clickBlocked",
        "clickPermitted",
    ] {
        assert!(
            types.get(t).copied().unwrap_or(0) > 0,
            "no {t} landed: {types:?}"
        );
    }

    // A second cycle re-queries the look-back: nothing stored twice.
    let cutoff = rfc3339(std::time::SystemTime::now() - std::time::Duration::from_secs(61));
    let before = sim.truth_between(None, Some(&cutoff))?;
    let out = ws.dphost(&["once"])?;
    assert!(out.status.success(), "{}", text(&out));
    let after = sim.truth()?;
    assert_exactly_once(&before, &landed_events(&ws)?, &after);

    // Records carry the contract fields.
    let records = ws.search("syslog", "msg_class:proofpoint_tap_event tenant_name:acme")?;
    let r = &records[0];
    assert_eq!(r["msg_origin"]["source"], "proofpoint_tap");
    assert_eq!(r["msg_origin"]["vendor"], "proofpoint");
    assert_eq!(r["msg_origin"]["category"], "email");
    assert_eq!(r["connector"], "acme-proofpoint_tap");
    assert_eq!(r["domain"], sim.url.as_str());
    assert!(r["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    Ok(())
}

#[test]
fn every_fixture_event_goes_through_the_pipeline() -> Result<()> {
    let (args, expected) = fixture_sim_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sim = Sim::start(&args)?;
    let ws = Workspace::new()?;
    ws.write_config(&tap_connector(
        "fixtures",
        "samples",
        &sim,
        "initial_lookback_hours = 25",
    ))?;
    let out = ws.dphost(&["once"])?;
    assert!(out.status.success(), "{}", text(&out));

    let truth = sim.truth()?;
    assert_eq!(
        truth.len(),
        expected,
        "the simulator serves every sample event"
    );
    let landed = landed_events(&ws)?;
    assert_same_events(&landed, &truth, "what landed from the samples");
    assert!(
        ws.search("quarantine", "msg_class:*")?.is_empty(),
        "no sample is quarantined"
    );
    Ok(())
}

#[test]
fn alerts_count_every_event_once_and_are_searchable_by_sender() -> Result<()> {
    let (args, _) = fixture_sim_args();
    let sim = Sim::start(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let ws = Workspace::new()?;
    ws.write_config(&tap_connector(
        "alerting",
        "acme",
        &sim,
        "initial_lookback_hours = 25",
    ))?;
    let out = ws.dphost(&["once"])?;
    assert!(out.status.success(), "{}", text(&out));
    let events = ws.search("syslog", "msg_class:proofpoint_tap_event")?;
    let alerts = ws.search("alerts", "msg_class:proofpoint_tap_alert")?;
    assert!(!alerts.is_empty());
    let total = |alerts: &[serde_json::Value]| {
        alerts
            .iter()
            .map(|a| a["count"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        total(&alerts),
        events.len() as u64,
        "every event counts in exactly one alert"
    );
    for name in [
        "messageBlocked",
        "messageDelivered",
        "clickBlocked",
        "clickDelivered",
    ] {
        let of_type = ws.search(
            "alerts",
            &format!("xdr_event.name:\"Proofpoint TAP {name}\""),
        )?;
        assert!(!of_type.is_empty(), "no {name} alert");
    }
    // Alerts of one sender: the search finds them and only them.
    let sender = events
        .iter()
        .filter_map(|e| e["email"]["sender"]["address"].as_str())
        .next()
        .expect("a sample event with a sender")
        .to_string();
    let of_sender = ws.search("alerts", &format!("email.sender.address:\"{sender}\""))?;
    assert!(!of_sender.is_empty());
    assert!(of_sender
        .iter()
        .all(|a| a["email"]["sender"]["address"] == sender.as_str()));
    let sender_events = events
        .iter()
        .filter(|e| e["email"]["sender"]["address"] == sender.as_str())
        .count();
    assert_eq!(total(&of_sender), sender_events as u64);

    // Collecting the same span again changes no count.
    let out = ws.dphost(&["once"])?;
    assert!(out.status.success(), "{}", text(&out));
    let again = ws.search("alerts", "msg_class:proofpoint_tap_alert")?;
    assert_eq!(again.len(), alerts.len());
    assert_eq!(total(&again), total(&alerts));
    Ok(())
}
