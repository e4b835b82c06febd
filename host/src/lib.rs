//! dphost: a sandboxed, multi-tenant runtime for security-data connectors.
//!
//! - `config`: the operator's TOML file;
//! - `clock`: "now", real or from a clock file shared with the simulator;
//! - `runtime`: the wasmtime engine, the components folder, one sandbox per call;
//! - `caps`: what a sandbox may use, one module per imported WIT interface;
//! - `store`: the storage interface and its backends, embedded SQLite and
//!   PostgreSQL (state, indexes, outbox, run history, leases);
//! - `leases`: which connectors this host runs when several share a store;
//! - `scheduler`: `dphost run`; `slots`: how many runs at once, per host and tenant;
//! - `search`: the query language of `dphost search`;
//! - `forward`: `[[output]]`s shipping the Syslog and Alerts indexes to a SIEM;
//! - `response`: response actions (disable a user in Active Directory) from
//!   the outbox, with their audit trail;
//! - `commands`: the CLI's subcommands.

pub mod admin;
pub mod bindings;
pub mod caps;
pub mod clock;
pub mod commands;
pub mod config;
pub mod config_lines;
pub mod forward;
pub mod leases;
pub mod metrics;
pub mod response;
pub mod runtime;
pub mod scheduler;
pub mod search;
pub mod slots;
pub mod status;
pub mod store;
pub mod table;
pub mod validate;
