//! A whole SIEM response body, as the API might send it: one collection
//! cycle over a window answered with these bytes must not panic, must only
//! commit records the host accepts (and search can read), and must either
//! collect the window (every bad event quarantined with its reason) or fail
//! it as a transient error that keeps the checkpoint.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proofpoint_tap::harness;

fuzz_target!(|data: &[u8]| {
    // The chunk size the body arrives in varies with the input, so chunk
    // boundaries fall everywhere.
    let chunk = 1 + data.first().copied().unwrap_or(0) as usize * 37;
    let outcome = harness::collect_body(data, chunk);
    harness::check_invariants(&outcome);
});
