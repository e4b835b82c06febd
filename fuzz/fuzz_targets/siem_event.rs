//! One event, between two good ones in a well-formed SIEM response: the
//! normaliser, the identity, alert derivation and the quarantine must cope
//! with any bytes in it. The good events always land; the fuzzed one is
//! stored or quarantined with its reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proofpoint_tap::harness::{self, corpus};
use proofpoint_tap::parse::EventType;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, event)) = data.split_first() else {
        return;
    };
    let event_type = EventType::ALL[selector as usize % 4];
    let good1 = corpus::good_event(event_type, 1);
    let good2 = corpus::good_event(event_type, 2);
    let body = corpus::body_with(event_type, &[good1.as_bytes(), event, good2.as_bytes()]);
    let outcome = harness::collect_body(&body, 4096);
    harness::check_invariants(&outcome);
    if outcome.result.is_ok() {
        let ids: Vec<&str> = outcome
            .events
            .iter()
            .filter_map(|e| e["proofpoint_tap"]["id"].as_str())
            .collect();
        assert!(
            ids.contains(&"good-id-1") && ids.contains(&"good-id-2"),
            "a bad event cost its neighbours"
        );
    }
});
