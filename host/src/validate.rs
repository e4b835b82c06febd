//! Whole-configuration validation before anything runs: the host's own keys
//! are checked while parsing (`config.rs`); here each connector's component
//! is loaded and asked to check the keys it owns (`validate-config`).
//!
//! Problems name the file's line: a component names the key it objects to
//! in backticks (`content_types`, `alerts.dedup_window`), and the key's line
//! is looked up; otherwise the connector's table is named.

use crate::bindings::ConnectorError;
use crate::config::{Config, ConnectorConfig};
use crate::runtime::{Failure, Operation, Runtime};
use crate::store::{Identity, Store};

/// Every problem of every connector, each as one line for an operator.
/// Empty means the configuration may run.
pub async fn problems(config: &Config, runtime: &Runtime) -> Vec<String> {
    let mut all = Vec::new();
    for c in &config.connectors {
        all.extend(connector_problems(config, runtime, c).await);
    }
    all
}

/// One connector's problems (empty if none).
pub async fn connector_problems(
    config: &Config,
    runtime: &Runtime,
    c: &ConnectorConfig,
) -> Vec<String> {
    let report = runtime.call(c, Operation::ValidateConfig).await;
    match report.result {
        Ok(_) => Vec::new(),
        Err(Failure::Connector(ConnectorError::BadConfig(items))) => items
            .iter()
            .map(|p| format!("{}{p}", config.at(&c.name, named_key(config, c, p))))
            .collect(),
        Err(other) => vec![format!(
            "{}connector `{}`: component `{}`: {other}",
            config.at(&c.name, "component"),
            c.name,
            c.component
        )],
    }
}

/// The first backticked word of `problem` that is a key of this connector's
/// table, else "" (which names the table itself).
fn named_key<'p>(config: &Config, c: &ConnectorConfig, problem: &'p str) -> &'p str {
    problem
        .split('`')
        .skip(1)
        .step_by(2)
        .find(|word| !word.is_empty() && config.key_line(&c.name, word).is_some())
        .unwrap_or("")
}

/// Connectors whose `tenant` or `component` differs from what the store
/// keeps their data under (the guard holds across restarts and across a
/// connector removed and added again). With `claim`, and if none differ,
/// new names are recorded as theirs. Each problem with its connector's name.
pub fn identity_problems(
    config: &Config,
    store: &Store,
    claim: bool,
) -> anyhow::Result<Vec<(String, String)>> {
    let wanted: Vec<Identity> = config
        .connectors
        .iter()
        .map(|c| Identity {
            connector: c.name.clone(),
            tenant: c.tenant.clone(),
            component: c.component.clone(),
        })
        .collect();
    Ok(store
        .check_identities(&wanted, claim)?
        .into_iter()
        .map(|x| {
            let problem = format!(
                "{}connector `{}`: `{}` is `{}` here, but this connector's data has been kept under {} `{}` since {}: a connector's tenant and component cannot change; restore `{} = \"{}\"`, or give the connector a new name (it then starts afresh)",
                config.at(&x.connector, x.key),
                x.connector,
                x.key,
                x.configured,
                x.key,
                x.kept,
                crate::status::fmt_ms(x.since_ms),
                x.key,
                x.kept
            );
            (x.connector, problem)
        })
        .collect())
}

/// Formats problems the way `Config::load` does, for one error message.
pub fn report(config: &Config, problems: &[String]) -> String {
    format!(
        "{} has {} problem(s):\n  - {}",
        config.path.display(),
        problems.len(),
        problems.join("\n  - ")
    )
}
