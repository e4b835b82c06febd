//! Host-side bindings for the `connector-world` WIT world (`wit/`).
//!
//! WASI interfaces are not generated again: they map onto wasmtime-wasi's and
//! wasmtime-wasi-http's own bindings, which implement them.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "dphost:connector/connector-world",
    imports: {
        // A commit may write thousands of rows: it runs on a blocking thread.
        "dphost:connector/sink.commit": async | trappable,
        // These wait for a commit in flight (`commit-begin`) first.
        "dphost:connector/sink.commit-wait": async | trappable,
        "dphost:connector/sink.contains": async | trappable,
        "dphost:connector/sink.dropped-by-filters": async | trappable,
        "dphost:connector/state.get": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
    },
});

pub use dphost::connector::types::{ConnectorError, HttpFailure};
pub use exports::dphost::connector::connector::Guest as ConnectorExports;
