//! The bench component's WIT glue (wasm32 only).

wit_bindgen::generate!({
    path: "wit",
    world: "pipeline",
});

use proofpoint_tap::platform::{BodyReader, TransportError};

struct Imported;

impl BodyReader for Imported {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        Ok(next_chunk())
    }
}

struct Component;

impl Guest for Component {
    fn run(tenant: String) -> String {
        match crate::run(Imported, &tenant) {
            Ok(summary) => summary.to_json(),
            Err(e) => serde_json::json!({ "error": e }).to_string(),
        }
    }
}

export!(Component);
