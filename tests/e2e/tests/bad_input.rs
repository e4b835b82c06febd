//! Bad input through the built component: the corpus of nasty events
//! (`guest/src/harness/corpus.rs`, also run natively by the guest's tests)
//! served by tap-sim `--events` beside good events. No trap, no failed run:
//! every good event lands, every nasty one is stored or quarantined with
//! its reason, as the corpus says.

use anyhow::Result;
use e2e::*;
use proofpoint_tap::harness::corpus::{self, Expect};
use proofpoint_tap::parse::EventType;
use serde_json::Value;

#[test]
fn nasty_events_through_the_component_are_stored_or_quarantined_with_their_reason() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cases: Vec<_> = corpus::events()
        .into_iter()
        .filter(|c| c.via_sim)
        .enumerate()
        .map(|(i, mut c)| {
            // Distinct identities, so that no two cases are one event.
            let text = String::from_utf8(c.bytes).expect("via_sim cases are UTF-8");
            c.bytes = text
                .replacen(r#""GUID":"nasty""#, &format!(r#""GUID":"nasty-{i}""#), 1)
                .into_bytes();
            (format!("nasty-{i}"), c)
        })
        .collect();
    let mut args: Vec<String> = vec!["--retime".into(), "--max-lag-min".into(), "0".into()];
    for (k, event_type) in EventType::ALL.into_iter().enumerate() {
        let mut lines: Vec<String> = (0..3)
            .map(|n| corpus::good_event(event_type, 100 * k + n))
            .collect();
        for (_, c) in cases.iter().filter(|(_, c)| c.event_type == event_type) {
            lines.push(String::from_utf8(c.bytes.clone())?);
        }
        let path = dir.path().join(format!("{}.ndjson", event_type.array()));
        std::fs::write(&path, lines.join("\n") + "\n")?;
        args.extend([
            "--events".into(),
            path.display().to_string(),
            "--events-type".into(),
            event_type.array().into(),
        ]);
    }
    let sim = Sim::start(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let ws = Workspace::new()?;
    ws.write_config(&tap_connector(
        "tap",
        "acme",
        &sim,
        "initial_lookback_hours = 1\ncontent_types = [\"events\"]\nlimits = { memory_mib = 64 }",
    ))?;
    let out = ws.dphost(&["once"])?;
    assert!(out.status.success(), "{}", text(&out));

    // (Counted, not parsed: some lines are beyond what serde_json reads.)
    assert_eq!(
        sim.truth_count(None)?,
        12 + cases.len(),
        "tap-sim serves every line"
    );
    let landed = landed_events(&ws)?;
    let quarantined = ws.search("quarantine", "msg_class:proofpoint_tap_quarantine")?;
    let guid_of = |e: &Value| e["GUID"].as_str().unwrap_or_default().to_string();
    for (guid, case) in &cases {
        let stored = landed.iter().filter(|(_, e)| guid_of(e) == *guid).count();
        let held: Vec<&Value> = quarantined
            .iter()
            .filter(|q| {
                q["raw"]["GUID"] == guid.as_str()
                    || q["raw_text"]
                        .as_str()
                        .is_some_and(|t| t.contains(&format!("\"{guid}\"")))
            })
            .collect();
        match &case.expect {
            Expect::Event => {
                assert_eq!(
                    (stored, held.len()),
                    (1, 0),
                    "{}: stored as an event",
                    case.name
                )
            }
            Expect::Quarantine(reason) => {
                assert_eq!((stored, held.len()), (0, 1), "{}: quarantined", case.name);
                let why = held[0]["reason"].as_str().unwrap();
                assert!(why.contains(reason), "{}: {why}", case.name);
                assert_eq!(held[0]["event_type"], case.event_type.as_str());
            }
        }
    }
    let good_landed = landed
        .iter()
        .filter(|(_, e)| guid_of(e).starts_with("good-"))
        .count();
    assert_eq!(good_landed, 12, "every good event lands");
    eprintln!(
        "bad input: {} nasty events through the component ({} stored, {} quarantined with their reason), 12 good events all landed",
        cases.len(),
        landed.len() - 12,
        quarantined.len()
    );
    Ok(())
}
