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
