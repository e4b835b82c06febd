//! Host capabilities: one module per interface the connector world imports.
//!
//! Each capability follows the same steps (the shape of Spin's factors):
//! - `prepare`: build the per-run state that goes into the sandbox's `Store`
//!   (what this tenant's run may reach, its budgets);
//! - `link`: add the interface's host functions to the shared `Linker`, once.
//!
//! Host-wide setup (engine, store, component cache) lives in `runtime`.

pub mod budget;
pub mod http;
pub mod log;
pub mod net_policy;
pub mod sink;
pub mod state;
pub mod wasi;

/// A host function that could not use the store (a failing or read-only
/// disk, a locked database): the run ends as a host error with what to
/// check, not as "the component crashed", which would blame the connector.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreFailure(pub String);

/// `e` from the store while `doing` something for the component, as the
/// error that ends the run (see `StoreFailure`).
pub fn store_failure(e: anyhow::Error, doing: &str) -> wasmtime::Error {
    let advice = crate::store::storage_advice(&e);
    wasmtime::Error::new(StoreFailure(format!(
        "the host could not {doing}: {e:#} ({advice})"
    )))
}
