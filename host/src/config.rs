//! The operator's configuration file (`dphost.toml`): parsing, validation and
//! secret resolution.
//!
//! The host owns the keys it acts on (where to store data, which component,
//! where the API is, the credential, the schedule and the sandbox limits).
//! Every other key of a `[[connector]]` table belongs to the component and is
//! handed to it as JSON, where the component's own `validate-config` checks it.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config_lines::KeyLines;

/// The whole configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    /// Where each key is in the file, to name lines in later checks.
    pub lines: KeyLines,
    pub host: HostConfig,
    pub connectors: Vec<ConnectorConfig>,
    /// `[[output]]`: where records are forwarded (see `crate::forward`).
    pub outputs: Vec<OutputConfig>,
    /// `[[ad]]`: Active Directory targets of the response actions.
    pub ad: Vec<crate::response::config::AdTarget>,
}

/// `[host]`: where the host keeps its data and finds its components.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The embedded store lives here (relative paths: to the config file).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Every `*.wasm` component in this folder is loaded, named by its stem.
    #[serde(default = "default_components_dir")]
    pub components_dir: PathBuf,
    /// How many connector runs may execute at once (each is one sandbox).
    #[serde(default = "default_max_concurrent_runs")]
    pub max_concurrent_runs: usize,
    /// How many of those runs one tenant's connectors may hold at once, so
    /// a tenant with many slow or runaway connectors cannot take every slot
    /// from the others. Default: half of `max_concurrent_runs` (at least 1).
    #[serde(default)]
    pub max_runs_per_tenant: Option<usize>,
    /// On Ctrl-C, how long running collections may take to finish their
    /// current work before they are cancelled (a cancelled run loses nothing:
    /// every commit is one transaction).
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// For tests and simulations only: read "now" from this file instead of
    /// the real clock (see `clock.rs`; `tap-sim --clock-file` reads the same).
    #[serde(default)]
    pub clock_file: Option<PathBuf>,
    /// Where the data is kept: left out, the embedded SQLite store in
    /// `data_dir`; `postgres://USER@HOST:PORT/DATABASE`, a PostgreSQL
    /// database that several hosts share (connectors are leased among them).
    #[serde(default)]
    pub store: Option<StoreUrl>,
    /// The database password, when the URL has none: from this environment
    /// variable or this file (else PGPASSWORD).
    #[serde(default)]
    pub store_password_env: Option<String>,
    #[serde(default)]
    pub store_password_file: Option<PathBuf>,
    /// This host's name in the connector leases (default: the machine's
    /// host name and the process id).
    #[serde(default)]
    pub host_name: Option<String>,
    /// How long a connector lease lasts without renewal, in seconds: a host
    /// that dies loses its connectors to the others after this long.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

/// A `[host] store` URL: it may hold a password, so it is never printed
/// (Debug shows it without one).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct StoreUrl(pub String);

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match crate::store::parse_postgres_url(&self.0) {
            Ok(c) => write!(f, "{}", crate::store::redacted_postgres_url(&c)),
            Err(_) => write!(f, "<store URL>"),
        }
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            components_dir: default_components_dir(),
            max_concurrent_runs: default_max_concurrent_runs(),
            max_runs_per_tenant: None,
            shutdown_grace_secs: default_shutdown_grace_secs(),
            clock_file: None,
            store: None,
            store_password_env: None,
            store_password_file: None,
            host_name: None,
            lease_secs: default_lease_secs(),
        }
    }
}

impl HostConfig {
    /// Run slots one tenant may hold at once (see `max_runs_per_tenant`).
    pub fn runs_per_tenant(&self) -> usize {
        self.max_runs_per_tenant
            .unwrap_or(self.max_concurrent_runs.div_ceil(2))
            .clamp(1, self.max_concurrent_runs.max(1))
    }
}

fn default_data_dir() -> PathBuf {
    "data".into()
}
fn default_components_dir() -> PathBuf {
    "components".into()
}
fn default_max_concurrent_runs() -> usize {
    16
}
fn default_lease_secs() -> u64 {
    30
}

fn default_shutdown_grace_secs() -> u64 {
    30
}

/// Per-connector sandbox limits (`[connector.limits]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CPU time the component may spend executing WebAssembly in one run.
    #[serde(default = "default_cpu_seconds")]
    pub cpu_seconds: f64,
    /// Wall-clock bound of one run, waiting on the network included.
    #[serde(default = "default_run_timeout_secs")]
    pub run_timeout_secs: u64,
    /// The component's linear memory cap.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Most records (plus actions) one `sink.commit` may carry.
    #[serde(default = "default_max_batch_records")]
    pub max_batch_records: usize,
    /// Most bytes of record bodies one `sink.commit` may carry.
    #[serde(default = "default_max_batch_mib")]
    pub max_batch_mib: u64,
    /// Log lines kept per run; beyond that lines are counted and dropped.
    #[serde(default = "default_log_lines_per_run")]
    pub log_lines_per_run: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_seconds: default_cpu_seconds(),
            run_timeout_secs: default_run_timeout_secs(),
            memory_mib: default_memory_mib(),
            max_batch_records: default_max_batch_records(),
            max_batch_mib: default_max_batch_mib(),
            log_lines_per_run: default_log_lines_per_run(),
        }
    }
}

fn default_cpu_seconds() -> f64 {
    120.0
}
fn default_run_timeout_secs() -> u64 {
    1800
}
fn default_memory_mib() -> u64 {
    256
}
fn default_max_batch_records() -> usize {
    20_000
}
fn default_max_batch_mib() -> u64 {
    64
}
fn default_log_lines_per_run() -> u32 {
    2_000
}

/// Where the credential for the connector's API comes from.
#[derive(Clone, PartialEq)]
pub enum SecretSource {
    Inline(String),
    Env(String),
    File(PathBuf),
}

impl std::fmt::Debug for SecretSource {
    // An inline secret must not leak through debug output or logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            SecretSource::Env(var) => write!(f, "Env({var:?})"),
            SecretSource::File(path) => write!(f, "File({path:?})"),
        }
    }
}

/// The credential the host injects into requests to the connector's API.
#[derive(Clone, PartialEq)]
pub struct Credential {
    pub principal: String,
    pub secret: String,
}

impl std::fmt::Debug for Credential {
    // Never print the secret, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("principal", &self.principal)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// `ConnectorConfig::credential_key`: the same origin and principal give the
/// same key (so tenants sharing a credential share its request budget).
fn credential_key(name: &str, allowed: &AllowedOrigin, principal: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let identity = match principal {
        Some(p) => format!("{allowed}\n{p}"),
        None => format!("connector\n{name}"),
    };
    hex::encode(&Sha256::digest(identity.as_bytes())[..12])
}

/// One `[[connector]]`: a component instance for one tenant.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    pub name: String,
    pub tenant: String,
    pub component: String,
    /// Scheme and authority (and optional base path) of the vendor API,
    /// without a trailing slash.
    pub host_url: String,
    pub allowed: AllowedOrigin,
    pub interval_min: u64,
    /// `enabled = false` keeps the connector configured (and its data) but
    /// never runs it.
    pub enabled: bool,
    pub principal: Option<String>,
    pub secret: Option<SecretSource>,
    pub limits: Limits,
    /// Log filters: Syslog records matching any of them are not stored
    /// (shared with every run, not copied into each).
    pub filters: Arc<[LogFilter]>,
    /// See `credential_key`: worked out once, not per run.
    credential_key: String,
    /// `[connector.response.disable_user]`, if configured.
    pub response: Option<crate::response::config::DisableUserPolicy>,
    /// The configuration handed to the component as JSON (no secrets).
    pub component_config: serde_json::Map<String, serde_json::Value>,
}

/// `[[connector.filter]]`: drop the records that match a query.
#[derive(Debug, Clone)]
pub struct LogFilter {
    pub name: String,
    pub drop: crate::search::Query,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    name: Option<String>,
    drop: String,
}

/// The one origin a connector's sandbox may send HTTP requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl AllowedOrigin {
    /// Whether `scheme://authority` names this origin (default ports included).
    pub fn matches(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let default_port = if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        };
        scheme.eq_ignore_ascii_case(&self.scheme)
            && host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(&self.host)
            && port.unwrap_or(default_port) == self.port
    }
}

impl std::fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

/// Keys of a `[[connector]]` table that the host consumes. The rest go to the
/// component.
const HOST_KEYS: &[&str] = &[
    "name",
    "tenant",
    "component",
    "host_url",
    "interval_min",
    "enabled",
    "principal",
    "secret",
    "secret_env",
    "secret_file",
    "limits",
    "filter",
    "response",
];

/// Keys that must never reach a component.
const SECRET_KEYS: &[&str] = &["secret", "secret_env", "secret_file"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    host: Option<HostConfig>,
    #[serde(default)]
    connector: Vec<toml::Table>,
    #[serde(default)]
    output: Vec<toml::Table>,
    #[serde(default)]
    ad: Vec<toml::Value>,
}

impl HostConfig {
    /// How to reach the PostgreSQL store, if `store` names one; the
    /// password read from its source now.
    pub fn postgres(&self) -> Result<Option<crate::store::PgOptions>> {
        let Some(url) = &self.store else {
            return Ok(None);
        };
        let password = match (&self.store_password_env, &self.store_password_file) {
            (Some(var), _) => Some(std::env::var(var).with_context(|| {
                format!("the environment variable {var} named by `[host] store_password_env` is not set: set it to the database password")
            })?),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| {
                        format!(
                            "cannot read `[host] store_password_file` {}: it must hold the database password",
                            file.display()
                        )
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            (None, None) => None,
        };
        Ok(Some(crate::store::PgOptions {
            url: url.0.clone(),
            password,
            lease_secs: self.lease_secs,
        }))
    }

    /// This host's name in the connector leases.
    pub fn lease_owner(&self) -> String {
        match &self.host_name {
            Some(n) => n.clone(),
            None => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "host".to_string());
                format!("{host}/{}", std::process::id())
            }
        }
    }

    pub fn clock(&self) -> crate::clock::Clock {
        match &self.clock_file {
            Some(path) => crate::clock::Clock::File(path.clone()),
            None => crate::clock::Clock::Real,
        }
    }
}

impl Config {
    /// Reads and validates `path`. Every problem found is reported at once.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the configuration file {}: pass --config FILE, or create dphost.toml (see README)",
                path.display()
            )
        })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text; `path` anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let raw: RawFile = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut host = raw.host.unwrap_or_default();
        host.data_dir = anchor(&base, &host.data_dir);
        host.components_dir = anchor(&base, &host.components_dir);
        host.clock_file = host.clock_file.map(|f| anchor(&base, &f));
        host.store_password_file = host.store_password_file.map(|f| anchor(&base, &f));

        let lines = KeyLines::of(text);
        let mut problems = Vec::new();
        match &host.store {
            Some(url) => {
                if let Err(e) = crate::store::parse_postgres_url(&url.0) {
                    problems.push(format!("{}{e}", lines.at("host.store")));
                }
                if host.store_password_env.is_some() && host.store_password_file.is_some() {
                    problems.push(format!(
                        "{}[host] give at most one of `store_password_env` and `store_password_file`",
                        lines.at("host.store_password_file")
                    ));
                }
            }
            None => {
                for key in ["store_password_env", "store_password_file"] {
                    if lines.line(&format!("host.{key}")).is_some() {
                        problems.push(format!(
                            "{}[host] `{key}` is for a PostgreSQL `store`, and none is set: add `store = \"postgres://USER@HOST:PORT/DATABASE\"` or remove it",
                            lines.at(&format!("host.{key}"))
                        ));
                    }
                }
            }
        }
        if host.lease_secs < 3 {
            problems.push(format!(
                "{}[host] lease_secs must be at least 3 (leases are renewed every third of it)",
                lines.at("host.lease_secs")
            ));
        }
        if host.max_concurrent_runs == 0 {
            problems.push(format!(
                "{}[host] max_concurrent_runs must be at least 1",
                lines.at("host.max_concurrent_runs")
            ));
        }
        if host.max_runs_per_tenant == Some(0) {
            problems.push(format!(
                "{}[host] max_runs_per_tenant must be at least 1 (leave it out for half of max_concurrent_runs)",
                lines.at("host.max_runs_per_tenant")
            ));
        }
        let mut connectors = Vec::new();
        let mut names = BTreeSet::new();
        // AD targets are named even when a table has problems, so a policy
        // naming it is not reported as naming nothing.
        let ad_names: Vec<String> = raw
            .ad
            .iter()
            .filter_map(|t| t.get("name")?.as_str().map(str::to_string))
            .collect();
        for (i, table) in raw.connector.into_iter().enumerate() {
            let at = |key: &str| lines.at(&format!("connector.{i}.{key}"));
            match ConnectorConfig::from_table(table, &base, &at) {
                Ok(c) => {
                    if let Some(target) = c.response.as_ref().and_then(|p| p.ad.as_deref()) {
                        if !ad_names.iter().any(|a| a == target) {
                            let known: Vec<_> = ad_names.iter().map(String::as_str).collect();
                            problems.push(format!(
                                "{}connector `{}`: response.disable_user.ad = \"{target}\" names no [[ad]] table (configured: {})",
                                at("response.disable_user.ad"),
                                c.name,
                                if known.is_empty() { "none".to_string() } else { known.join(", ") }
                            ));
                        }
                    }
                    if !names.insert(c.name.clone()) {
                        problems.push(format!(
                            "{}connector `{}` is defined twice: connector names must be unique",
                            at("name"),
                            c.name
                        ));
                    }
                    connectors.push(c);
                }
                Err(errs) => {
                    for e in errs {
                        problems.push(format!("{e} ([[connector]] #{})", i + 1));
                    }
                }
            }
        }
        let outputs = parse_outputs(raw.output, &base, &lines, &mut problems);
        let mut ad = Vec::new();
        for (i, table) in raw.ad.into_iter().enumerate() {
            match crate::response::config::AdTarget::from_toml(table, &base) {
                Ok(t)
                    if ad
                        .iter()
                        .any(|a: &crate::response::config::AdTarget| a.name == t.name) =>
                {
                    problems.push(format!(
                        "{}[[ad]] `{}` is defined twice: AD target names must be unique",
                        lines.at(&format!("ad.{i}.name")),
                        t.name
                    ))
                }
                Ok(t) => ad.push(t),
                Err(errs) => problems
                    .extend(errs.into_iter().map(|e| {
                        format!("{}[[ad]] #{}: {e}", lines.at(&format!("ad.{i}")), i + 1)
                    })),
            }
        }
        if !problems.is_empty() {
            bail!(
                "{} has {} problem(s):\n  - {}",
                path.display(),
                problems.len(),
                problems.join("\n  - ")
            );
        }
        Ok(Config {
            path: path.to_path_buf(),
            lines,
            host,
            connectors,
            outputs,
            ad,
        })
    }

    /// `"line N: "` for `key` of connector `name` (its table if the key is
    /// not in the file), for problems found after parsing.
    pub fn at(&self, name: &str, key: &str) -> String {
        match self.connectors.iter().position(|c| c.name == name) {
            Some(i) => self.lines.at(&format!("connector.{i}.{key}")),
            None => String::new(),
        }
    }

    /// The line of exactly `key` in connector `name`'s table, if written there.
    pub fn key_line(&self, name: &str, key: &str) -> Option<usize> {
        let i = self.connectors.iter().position(|c| c.name == name)?;
        self.lines.line(&format!("connector.{i}.{key}"))
    }

    pub fn connector(&self, name: &str) -> Result<&ConnectorConfig> {
        self.connectors
            .iter()
            .find(|c| c.name == name)
            .with_context(|| {
                let known: Vec<_> = self.connectors.iter().map(|c| c.name.as_str()).collect();
                format!(
                    "no connector named `{name}` in {} (configured: {})",
                    self.path.display(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )
            })
    }
}

/// A TOML error as one operator sentence: file, line, column, what is wrong
/// and what to do. Never the error's `Display`: it quotes the offending
/// line, which may hold a secret (`secret = S3cr3t` without quotes, a bad
/// escape in it, the key given twice).
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let file = path.display();
    let Some(span) = e.span() else {
        return anyhow::anyhow!(
            "{file} is not a valid dphost configuration: {}: fix it (README, \"Configuration\")",
            e.message()
        );
    };
    let (line, column) = crate::config_lines::line_col(text, span.start);
    let message = e.message().trim().replace('\n', "; ");
    if toml::de::DeTable::parse(text).is_err() {
        return anyhow::anyhow!(
            "{file}: line {line}, column {column}: not valid TOML: {message}: fix that line (strings are quoted: secret = \"...\"; each key once per table); the line is not shown because it may hold a secret"
        );
    }
    // Valid TOML with a key or value dphost does not take (`[host]` and the
    // top level are fixed; [[connector]] keys are checked later).
    let table = KeyLines::of(text)
        .path_on(line)
        .and_then(|p| p.rsplit_once('.').map(|(t, _)| t.to_string()))
        .map(|t| format!(" in [{t}]"))
        .unwrap_or_else(|| " at the top level".into());
    match message.strip_prefix("unknown field ") {
        Some(rest) => anyhow::anyhow!(
            "{file}: line {line}: unknown key {}{table}: remove it or fix its spelling (expected {})",
            rest.split(',').next().unwrap_or(rest),
            rest.split_once(", expected ").map_or("see README", |(_, x)| x)
        ),
        None => anyhow::anyhow!(
            "{file}: line {line}, column {column}: {message}{table}: fix that value"
        ),
    }
}

fn anchor(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl ConnectorConfig {
    /// `at(key)` prefixes a problem with the line of `key` in this table.
    fn from_table(
        table: toml::Table,
        base: &Path,
        at: &dyn Fn(&str) -> String,
    ) -> std::result::Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let label = table
            .get("name")
            .and_then(|v| v.as_str())
            .map(|n| format!("connector `{n}`"))
            .unwrap_or_else(|| "connector".to_string());
        let mut string_key = |key: &str, required: bool| -> Option<String> {
            match table.get(key) {
                Some(toml::Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    problems.push(format!(
                        "{}{label}: `{key}` must be a string, not {}",
                        at(key),
                        other.type_str()
                    ));
                    None
                }
                None if required => {
                    problems.push(format!("{}{label}: `{key}` is required", at(key)));
                    None
                }
                None => None,
            }
        };
        let name = string_key("name", true);
        let tenant = string_key("tenant", true);
        let component = string_key("component", true);
        let host_url = string_key("host_url", true);
        let principal = string_key("principal", false);
        let inline = string_key("secret", false);
        let secret_env = string_key("secret_env", false);
        let secret_file = string_key("secret_file", false);

        if let Some(n) = &name {
            if let Err(e) = check_name(n) {
                problems.push(format!("{}connector name {e}", at("name")));
            }
        }
        if let Some(t) = &tenant {
            if t.trim().is_empty() {
                problems.push(format!(
                    "{}{label}: `tenant` must not be empty",
                    at("tenant")
                ));
            }
        }
        if let Some(c) = &component {
            if let Err(e) = check_name(c) {
                problems.push(format!("{}{label}: component name {e}", at("component")));
            }
        }

        let interval_min = match table.get("interval_min") {
            None => 5,
            Some(toml::Value::Integer(n)) if (1..=1440).contains(n) => *n as u64,
            Some(v) => {
                problems.push(format!(
                    "{}{label}: `interval_min` must be a whole number of minutes from 1 to 1440, not {v}",
                    at("interval_min")
                ));
                5
            }
        };

        let enabled = match table.get("enabled") {
            None => true,
            Some(toml::Value::Boolean(b)) => *b,
            Some(v) => {
                problems.push(format!(
                    "{}{label}: `enabled` must be true or false, not {v}",
                    at("enabled")
                ));
                true
            }
        };

        let allowed = host_url.as_deref().map(parse_host_url).transpose();
        let (host_url, allowed) = match allowed {
            Ok(Some((url, origin))) => (url, Some(origin)),
            Ok(None) => (String::new(), None),
            Err(e) => {
                problems.push(format!("{}{label}: {e}", at("host_url")));
                (String::new(), None)
            }
        };

        let sources: Vec<SecretSource> = [
            inline.map(SecretSource::Inline),
            secret_env.map(SecretSource::Env),
            secret_file.map(|f| SecretSource::File(anchor(base, Path::new(&f)))),
        ]
        .into_iter()
        .flatten()
        .collect();
        if sources.len() > 1 {
            problems.push(format!(
                "{}{label}: give exactly one of `secret`, `secret_env` or `secret_file`",
                at("secret_file")
            ));
        }
        let secret = sources.into_iter().next();
        if principal.is_some() != secret.is_some() {
            problems.push(format!(
                "{}{label}: `principal` and a secret (`secret`, `secret_env` or `secret_file`) go together: give both or neither",
                at("principal")
            ));
        }

        let limits = match table.get("limits") {
            None => Limits::default(),
            Some(v) => match v.clone().try_into::<Limits>() {
                Ok(l) => l,
                Err(e) => {
                    problems.push(format!(
                        "{}{label}: [limits]: {}",
                        at("limits"),
                        e.message()
                    ));
                    Limits::default()
                }
            },
        };
        if !(limits.cpu_seconds > 0.0 && limits.cpu_seconds <= 86_400.0) {
            problems.push(format!(
                "{}{label}: limits.cpu_seconds must be in (0, 86400]",
                at("limits.cpu_seconds")
            ));
        }
        if limits.memory_mib < 16 || limits.memory_mib > 4096 {
            problems.push(format!(
                "{}{label}: limits.memory_mib must be from 16 to 4096",
                at("limits.memory_mib")
            ));
        }
        if limits.run_timeout_secs == 0 {
            problems.push(format!(
                "{}{label}: limits.run_timeout_secs must be at least 1",
                at("limits.run_timeout_secs")
            ));
        }

        let filters = parse_filters(table.get("filter"), &label, at, &mut problems);
        let response = crate::response::config::DisableUserPolicy::from_toml(
            table.get("response"),
            &label,
            at,
            &mut problems,
        );

        if !problems.is_empty() {
            return Err(problems);
        }
        let (name, tenant, component, allowed) = (
            name.expect("checked"),
            tenant.expect("checked"),
            component.expect("checked"),
            allowed.expect("checked"),
        );

        // What the component sees: its own keys plus the resolved host keys,
        // never a secret.
        let mut component_config = serde_json::Map::new();
        for (k, v) in &table {
            if HOST_KEYS.contains(&k.as_str()) || SECRET_KEYS.contains(&k.as_str()) {
                continue;
            }
            component_config.insert(k.clone(), toml_to_json(v.clone()));
        }
        component_config.insert("name".into(), name.clone().into());
        component_config.insert("tenant".into(), tenant.clone().into());
        component_config.insert("component".into(), component.clone().into());
        component_config.insert("host_url".into(), host_url.clone().into());
        component_config.insert("interval_min".into(), interval_min.into());
        // A component need not ask about filters (copying every batch across
        // the sandbox boundary) when there are none.
        component_config.insert("log_filters".into(), filters.len().into());
        if let Some(policy) = &response {
            component_config.insert("response".into(), policy.to_component_json());
        }
        // The component sizes its commits and reads to fit what the host allows.
        component_config.insert(
            "limits".into(),
            serde_json::json!({
                "memory_mib": limits.memory_mib,
                "max_batch_records": limits.max_batch_records,
                "max_batch_mib": limits.max_batch_mib,
                "cpu_seconds": limits.cpu_seconds,
                "run_timeout_secs": limits.run_timeout_secs,
            }),
        );

        let credential_key = credential_key(&name, &allowed, principal.as_deref());
        Ok(ConnectorConfig {
            name,
            tenant,
            component,
            host_url,
            allowed,
            interval_min,
            enabled,
            principal,
            secret,
            limits,
            filters: filters.into(),
            credential_key,
            response,
            component_config,
        })
    }

    /// The JSON configuration handed to the component.
    pub fn component_config_json(&self) -> String {
        serde_json::Value::Object(self.component_config.clone()).to_string()
    }

    /// A stable, non-reversible key for this connector's API credential
    /// (origin + principal); connectors without one get their own key.
    pub fn credential_key(&self) -> &str {
        &self.credential_key
    }

    /// Resolves the credential from its source. Called per run, so a rotated
    /// secret file or variable takes effect without a restart.
    pub fn credential(&self) -> Result<Option<Credential>> {
        let (Some(principal), Some(source)) = (&self.principal, &self.secret) else {
            return Ok(None);
        };
        let secret = match source {
            SecretSource::Inline(s) => s.clone(),
            SecretSource::Env(var) => std::env::var(var).with_context(|| {
                format!(
                    "connector `{}`: the environment variable {var} named by `secret_env` is not set",
                    self.name
                )
            })?,
            SecretSource::File(path) => std::fs::read_to_string(path)
                .with_context(|| {
                    format!(
                        "connector `{}`: cannot read `secret_file` {}",
                        self.name,
                        path.display()
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        };
        if secret.is_empty() {
            bail!("connector `{}`: the secret is empty", self.name);
        }
        Ok(Some(Credential {
            principal: principal.clone(),
            secret,
        }))
    }
}

/// `[[connector.filter]]` tables. A query that does not parse is reported
/// with its line in the file and the parser's reason.
fn parse_filters(
    value: Option<&toml::Value>,
    label: &str,
    at: &dyn Fn(&str) -> String,
    problems: &mut Vec<String>,
) -> Vec<LogFilter> {
    let Some(value) = value else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        problems.push(format!(
            "{}{label}: `filter` must be a list of [[connector.filter]] tables",
            at("filter")
        ));
        return Vec::new();
    };
    let mut filters = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let raw: RawFilter = match item.clone().try_into() {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!(
                    "{}{label}: filter #{}: {}",
                    at(&format!("filter.{i}")),
                    i + 1,
                    e.message()
                ));
                continue;
            }
        };
        let name = raw.name.unwrap_or_else(|| format!("filter #{}", i + 1));
        match crate::search::Query::parse(&raw.drop) {
            Ok(drop) => filters.push(LogFilter { name, drop }),
            Err(e) => {
                problems.push(format!(
                    "{}{label}: {name}: drop = '{}' does not parse: {e}",
                    at(&format!("filter.{i}.drop")),
                    raw.drop
                ));
            }
        }
    }
    filters
}

/// Names end up in keys, file names and log lines: keep them plain ASCII.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("`{name}` must be 1 to 64 characters long"));
    }
    if !name.is_ascii() {
        return Err(format!(
            "`{name}` contains non-ASCII (multibyte) characters: use only ASCII letters, digits, '-', '_' and '.'"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "`{name}` contains {c:?}: use only ASCII letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// Validates a Host URL and derives the one origin the sandbox may reach.
/// `https` is required unless the host is loopback (local simulators, tests).
pub fn parse_host_url(url: &str) -> Result<(String, AllowedOrigin)> {
    let trimmed = url.trim().trim_end_matches('/');
    let uri: http::Uri = trimmed.parse().with_context(|| {
        format!("`host_url` `{url}` is not a valid URL (e.g. https://tap-api-v2.proofpoint.com)")
    })?;
    let scheme = uri
        .scheme_str()
        .with_context(|| format!("`host_url` `{url}` needs a scheme: https://..."))?
        .to_ascii_lowercase();
    let host = uri
        .host()
        .with_context(|| format!("`host_url` `{url}` has no host name"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if uri.query().is_some() {
        bail!("`host_url` `{url}` must not contain a query string");
    }
    if !trimmed.is_ascii() {
        bail!("`host_url` `{url}` must be ASCII (use the punycode form of the host name)");
    }
    let port = match (uri.port_u16(), scheme.as_str()) {
        (Some(p), _) => p,
        (None, "https") => 443,
        (None, "http") => 80,
        (None, other) => bail!("`host_url` `{url}`: unsupported scheme `{other}` (use https)"),
    };
    match scheme.as_str() {
        "https" => {}
        "http" if is_loopback_host(&host) => {}
        "http" => bail!(
            "`host_url` `{url}` must use https: plain http is only allowed for loopback hosts (127.0.0.1, ::1, localhost)"
        ),
        other => bail!("`host_url` `{url}`: unsupported scheme `{other}` (use https)"),
    }
    Ok((trimmed.to_string(), AllowedOrigin { scheme, host, port }))
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

fn toml_to_json(v: toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => s.into(),
        toml::Value::Integer(i) => i.into(),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        toml::Value::Boolean(b) => b.into(),
        toml::Value::Datetime(d) => d.to_string().into(),
        toml::Value::Array(a) => a.into_iter().map(toml_to_json).collect(),
        toml::Value::Table(t) => t
            .into_iter()
            .map(|(k, v)| (k, toml_to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

/// `[[output]]`: one destination the Syslog and Alerts indexes are
/// forwarded to, with its own cursor (kept under `name`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputConfig {
    /// Unique; the key of its cursor (renaming an output starts it over).
    pub name: String,
    pub indexes: Vec<crate::store::Index>,
    pub kind: OutputKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutputKind {
    Syslog(SyslogOutput),
    Ndjson(NdjsonOutput),
}

/// RFC 5424 messages over TCP, octet-counted (RFC 6587), optionally TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct SyslogOutput {
    /// `host:port` as written.
    pub address: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// PEM CA certificates the server's certificate must chain to; without
    /// it (and with `tls`), the public web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Syslog facility number (0-23).
    pub facility: u8,
}

/// NDJSON files in a folder, rotated by size and age.
#[derive(Debug, Clone, PartialEq)]
pub struct NdjsonOutput {
    pub dir: PathBuf,
    pub rotate_bytes: u64,
    pub rotate_secs: u64,
}

impl OutputConfig {
    /// `syslog siem.example:6514 (tls)` / `ndjson /var/spool/dphost`.
    pub fn destination(&self) -> String {
        match &self.kind {
            OutputKind::Syslog(s) => {
                format!("syslog {}{}", s.address, if s.tls { " (tls)" } else { "" })
            }
            OutputKind::Ndjson(n) => format!("ndjson {}", n.dir.display()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    name: Option<String>,
    kind: String,
    indexes: Option<Vec<String>>,
    address: Option<String>,
    tls: Option<bool>,
    ca_file: Option<PathBuf>,
    facility: Option<toml::Value>,
    path: Option<PathBuf>,
    rotate_mib: Option<toml::Value>,
    rotate_secs: Option<u64>,
}

const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

fn parse_outputs(
    tables: Vec<toml::Table>,
    base: &Path,
    lines: &KeyLines,
    problems: &mut Vec<String>,
) -> Vec<OutputConfig> {
    let mut outputs: Vec<OutputConfig> = Vec::new();
    for (i, table) in tables.into_iter().enumerate() {
        let at = format!("{}[[output]] #{}", lines.at(&format!("output.{i}")), i + 1);
        let raw: RawOutput = match toml::Value::Table(table).try_into() {
            Ok(r) => r,
            Err(e) => {
                // "invalid type: ..., expected a boolean in `tls`"
                problems.push(format!("{at}: {}", e.to_string().trim().replace('\n', " ")));
                continue;
            }
        };
        match output_from_raw(raw, base) {
            Ok(o) => {
                if outputs.iter().any(|p| p.name == o.name) {
                    problems.push(format!(
                        "{at}: a second output named `{}`: give each output its own `name` (its forwarding cursor is kept under it)",
                        o.name
                    ));
                } else {
                    outputs.push(o);
                }
            }
            Err(errs) => problems.extend(errs.into_iter().map(|e| format!("{at}: {e}"))),
        }
    }
    outputs
}

fn output_from_raw(raw: RawOutput, base: &Path) -> std::result::Result<OutputConfig, Vec<String>> {
    use crate::store::Index;
    let mut problems = Vec::new();
    let name = raw.name.clone().unwrap_or_else(|| raw.kind.clone());
    if let Err(e) = check_name(&name) {
        problems.push(format!("output name {e}"));
    }
    let mut indexes = Vec::new();
    for i in raw
        .indexes
        .unwrap_or_else(|| vec!["syslog".into(), "alerts".into()])
    {
        match i.as_str() {
            "syslog" => indexes.push(Index::Syslog),
            "alerts" => indexes.push(Index::Alerts),
            other => problems.push(format!(
                "`indexes` has `{other}`: an output forwards `syslog` and/or `alerts`"
            )),
        }
    }
    let mut seen = Vec::new();
    indexes.retain(|i| {
        let first = !seen.contains(i);
        seen.push(*i);
        first
    });
    if indexes.is_empty() && problems.is_empty() {
        problems.push("`indexes` is empty: list `syslog` and/or `alerts`".into());
    }
    let not_for = |key: &str, present: bool, kind: &str, problems: &mut Vec<String>| {
        if present {
            problems.push(format!(
                "`{key}` does not apply to a `{kind}` output: remove it"
            ));
        }
    };
    let kind = match raw.kind.as_str() {
        "syslog" => {
            not_for("path", raw.path.is_some(), "syslog", &mut problems);
            not_for(
                "rotate_mib",
                raw.rotate_mib.is_some(),
                "syslog",
                &mut problems,
            );
            not_for(
                "rotate_secs",
                raw.rotate_secs.is_some(),
                "syslog",
                &mut problems,
            );
            let tls = raw.tls.unwrap_or(false);
            if raw.ca_file.is_some() && !tls {
                problems.push("`ca_file` is set but `tls` is not: add `tls = true` (the CA verifies the SIEM's certificate)".into());
            }
            let ca_file = raw.ca_file.map(|f| anchor(base, &f));
            if let Some(f) = &ca_file {
                match std::fs::read(f) {
                    Ok(pem) if pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => {}
                    Ok(_) => problems.push(format!(
                        "`ca_file` {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                        f.display()
                    )),
                    Err(e) => {
                        problems.push(format!("`ca_file` {} cannot be read: {e}", f.display()))
                    }
                }
            }
            let facility = match &raw.facility {
                None => 16,
                Some(toml::Value::Integer(n)) if (0..24).contains(n) => *n as u8,
                Some(toml::Value::String(s)) if FACILITIES.contains(&s.as_str()) => {
                    FACILITIES.iter().position(|f| f == s).unwrap_or(16) as u8
                }
                Some(other) => {
                    problems.push(format!(
                        "`facility` {other} is not a syslog facility: use 0-23 or a name such as local0, auth, audit"
                    ));
                    16
                }
            };
            match raw.address.as_deref().map(split_host_port) {
                None => {
                    problems.push("`address` is required for a syslog output: \"host:port\" of the SIEM's syslog listener".into());
                    None
                }
                Some(Err(e)) => {
                    problems.push(e);
                    None
                }
                Some(Ok((host, port))) => Some(OutputKind::Syslog(SyslogOutput {
                    address: raw.address.clone().unwrap_or_default(),
                    host,
                    port,
                    tls,
                    ca_file,
                    facility,
                })),
            }
        }
        "ndjson" => {
            not_for("address", raw.address.is_some(), "ndjson", &mut problems);
            not_for("tls", raw.tls.is_some(), "ndjson", &mut problems);
            not_for("ca_file", raw.ca_file.is_some(), "ndjson", &mut problems);
            not_for("facility", raw.facility.is_some(), "ndjson", &mut problems);
            let rotate_mib = match &raw.rotate_mib {
                None => Some(64.0),
                Some(toml::Value::Integer(n)) => Some(*n as f64),
                Some(toml::Value::Float(f)) => Some(*f),
                Some(other) => {
                    problems.push(format!(
                        "`rotate_mib` must be a number, not {}",
                        other.type_str()
                    ));
                    None
                }
            };
            let rotate_bytes = rotate_mib.map(|m| (m * 1024.0 * 1024.0) as u64);
            if matches!(rotate_bytes, Some(b) if b < 1024) {
                problems.push("`rotate_mib` must be at least 0.001 (1 KiB)".into());
            }
            let rotate_secs = raw.rotate_secs.unwrap_or(3600);
            if rotate_secs == 0 {
                problems.push("`rotate_secs` must be at least 1".into());
            }
            match raw.path {
                None => {
                    problems.push("`path` is required for an ndjson output: the folder the files are written to".into());
                    None
                }
                Some(p) => Some(OutputKind::Ndjson(NdjsonOutput {
                    dir: anchor(base, &p),
                    rotate_bytes: rotate_bytes.unwrap_or(0),
                    rotate_secs,
                })),
            }
        }
        other => {
            problems.push(format!(
                "`kind = \"{other}\"` is unknown: use \"syslog\" or \"ndjson\""
            ));
            None
        }
    };
    match kind {
        Some(kind) if problems.is_empty() => Ok(OutputConfig {
            name,
            indexes,
            kind,
        }),
        _ => Err(problems),
    }
}

/// `host:port`, `[v6]:port`.
fn split_host_port(address: &str) -> std::result::Result<(String, u16), String> {
    let bad = || {
        format!(
            "`address` {address:?} is not host:port (e.g. \"siem.example:6514\", \"[::1]:6514\")"
        )
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/dphost/dphost.toml"))
    }

    const GOOD: &str = r#"
        [host]
        data_dir = "data"
        [[connector]]
        name = "acme-proofpoint_tap"
        tenant = "acme"
        component = "proofpoint_tap"
        host_url = "https://tap-api-v2.proofpoint.com/"
        principal = "p"
        secret = "s3cret"
        interval_min = 5
        content_types = ["events", "threats"]
        initial_lookback_hours = 24
    "#;

    #[test]
    fn good_config_resolves_paths_and_hides_the_secret_from_the_component() {
        let cfg = parse(GOOD).unwrap();
        assert_eq!(cfg.host.data_dir, Path::new("/etc/dphost/data"));
        assert_eq!(cfg.host.components_dir, Path::new("/etc/dphost/components"));
        let c = &cfg.connectors[0];
        assert_eq!(c.host_url, "https://tap-api-v2.proofpoint.com");
        assert_eq!(c.allowed.port, 443);
        let json = c.component_config_json();
        assert!(!json.contains("s3cret"), "{json}");
        assert!(!json.contains("secret"), "{json}");
        assert!(json.contains("\"initial_lookback_hours\":24"));
        assert!(json.contains("\"tenant\":\"acme\""));
        assert_eq!(
            c.credential().unwrap().unwrap(),
            Credential {
                principal: "p".into(),
                secret: "s3cret".into()
            }
        );
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn multibyte_names_are_rejected_with_a_clear_error() {
        let text = GOOD.replace("acme-proofpoint_tap", "acmé-tap");
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains("non-ASCII"), "{err}");
    }

    #[test]
    fn plain_http_only_for_loopback() {
        let err = format!(
            "{:#}",
            parse(&GOOD.replace(
                "https://tap-api-v2.proofpoint.com/",
                "http://tap.example.com"
            ))
            .unwrap_err()
        );
        assert!(err.contains("must use https"), "{err}");
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:9",
            "http://[::1]:80",
        ] {
            let cfg = parse(&GOOD.replace("https://tap-api-v2.proofpoint.com/", ok)).unwrap();
            assert_eq!(cfg.connectors[0].allowed.scheme, "http", "{ok}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [[connector]]
            name = "a"
            tenant = "t"
            component = "c"
            host_url = "ftp://x"
            interval_min = 0
            [[connector]]
            name = "a"
            tenant = "t"
            component = "c"
            host_url = "https://x"
            secret = "only-a-secret"
        "#;
        let err = format!("{:#}", parse(text).unwrap_err());
        assert!(err.contains("interval_min"), "{err}");
        assert!(err.contains("unsupported scheme"), "{err}");
        assert!(err.contains("go together"), "{err}");
    }

    #[test]
    fn problems_name_their_line() {
        let text = GOOD.replace("interval_min = 5", "interval_min = 0");
        let line = text
            .lines()
            .position(|l| l.contains("interval_min"))
            .unwrap()
            + 1;
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(
            err.contains("/etc/dphost/dphost.toml has 1 problem"),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "line {line}: connector `acme-proofpoint_tap`: `interval_min`"
            )),
            "{err}"
        );
        // A missing key is reported at its table's header.
        let text = GOOD.replace("tenant = \"acme\"", "");
        let header = text
            .lines()
            .position(|l| l.contains("[[connector]]"))
            .unwrap()
            + 1;
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains(&format!("line {header}: ")), "{err}");
        assert!(err.contains("`tenant` is required"), "{err}");
    }

    /// Every broken line below holds the secret; the error names its line
    /// and never shows it.
    #[test]
    fn toml_errors_name_the_line_and_never_quote_it() {
        const S: &str = "Zq9-SECRET-on-the-broken-line";
        let secret_line = |text: &str| text.lines().position(|l| l.contains(S)).unwrap() + 1;
        for (what, text) in [
            (
                "unquoted",
                GOOD.replace("secret = \"s3cret\"", &format!("secret = {S}")),
            ),
            (
                "bad escape",
                GOOD.replace("secret = \"s3cret\"", &format!("secret = \"{S}\\q\"")),
            ),
            (
                "duplicate key",
                GOOD.replace(
                    "secret = \"s3cret\"",
                    &format!("secret = \"x\"\n        secret = \"{S}\""),
                ),
            ),
            (
                "unclosed",
                GOOD.replace("secret = \"s3cret\"", &format!("secret = \"{S}")),
            ),
        ] {
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(!err.contains(S), "{what}: the secret is shown: {err}");
            let want = format!(
                "/etc/dphost/dphost.toml: line {}, column ",
                secret_line(&text)
            );
            assert!(err.contains(&want), "{what}: no `{want}` in: {err}");
            assert!(err.contains("not valid TOML"), "{what}: {err}");
            assert!(err.contains("fix that line"), "{what}: {err}");
        }
    }

    #[test]
    fn unknown_top_level_and_host_keys_name_their_line() {
        let text = GOOD.replace(
            "data_dir = \"data\"",
            "data_dir = \"data\"\n        data_dri = \"x\"",
        );
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(
            err.contains("/etc/dphost/dphost.toml: line 4: unknown key `data_dri` in [host]: remove it or fix its spelling (expected"),
            "{err}"
        );
        assert!(err.contains("`components_dir`"), "{err}");
        let text = format!("connectors = 1\n{GOOD}");
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(
            err.contains("dphost.toml: line 1: unknown key `connectors` at the top level: remove it or fix its spelling (expected one of `host`, `connector`"),
            "{err}"
        );
        let text = GOOD.replace("data_dir = \"data\"", "max_concurrent_runs = \"many\"");
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains("dphost.toml: line 3, column "), "{err}");
        assert!(err.contains("in [host]: fix that value"), "{err}");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let text = format!("{GOOD}\n{}", &GOOD[GOOD.find("[[connector]]").unwrap()..]);
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains("defined twice"), "{err}");
    }

    #[test]
    fn filters_parse_and_bad_ones_name_their_line() {
        let text = format!(
            "{GOOD}\n[[connector.filter]]\nname = \"fp\"\ndrop = 'threat.status:falsepositive OR event_type:clickBlocked'\n"
        );
        let cfg = parse(&text).unwrap();
        let c = &cfg.connectors[0];
        assert_eq!(c.filters.len(), 1);
        assert_eq!(c.filters[0].name, "fp");
        assert!(
            !c.component_config_json().contains("falsepositive"),
            "filters are the host's"
        );
        let bad = format!("{GOOD}\n[[connector.filter]]\ndrop = '(event_type:x'\n");
        let err = format!("{:#}", parse(&bad).unwrap_err());
        let line = bad
            .lines()
            .position(|l| l.contains("(event_type:x"))
            .unwrap()
            + 1;
        assert!(err.contains(&format!("line {line}: connector")), "{err}");
        assert!(err.contains("not closed"), "{err}");
    }

    #[test]
    fn origin_matching_uses_default_ports() {
        let (_, o) = parse_host_url("https://Tap.Example.com").unwrap();
        assert!(o.matches("https", "tap.example.com", None));
        assert!(o.matches("https", "tap.example.com", Some(443)));
        assert!(!o.matches("http", "tap.example.com", Some(443)));
        assert!(!o.matches("https", "tap.example.com", Some(8443)));
        assert!(!o.matches("https", "evil.example.com", None));
    }

    #[test]
    fn a_postgres_store_is_checked_and_its_password_never_shown() {
        let with = |host: &str| {
            Config::parse(
                &format!("[host]\n{host}\n"),
                Path::new("/etc/dphost/dphost.toml"),
            )
        };
        let err = format!("{:#}", with("store = \"mysql://u:pw@h/db\"").unwrap_err());
        assert!(
            err.contains("line 2: `[host] store` must be a PostgreSQL URL"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            with("store = \"postgres://u:S3cr3t-pw@h:notaport/db\"").unwrap_err()
        );
        assert!(err.contains("not a valid PostgreSQL URL"), "{err}");
        assert!(!err.contains("S3cr3t-pw"), "{err}");
        let c = with("store = \"postgres://u:S3cr3t-pw@db.example:5433/dphost\"").unwrap();
        let shown = format!("{:?}", c.host);
        assert!(!shown.contains("S3cr3t-pw"), "{shown}");
        assert!(
            shown.contains("postgres://u@db.example:5433/dphost"),
            "{shown}"
        );
        let err = format!(
            "{:#}",
            with("store = \"postgres://u@h/db\"\nstore_password_env = \"A\"\nstore_password_file = \"b\"")
                .unwrap_err()
        );
        assert!(err.contains("at most one of `store_password_env`"), "{err}");
        let err = format!("{:#}", with("store_password_env = \"A\"").unwrap_err());
        assert!(err.contains("is for a PostgreSQL `store`"), "{err}");
        // The password sources, read when the store is opened.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "from-file\n").unwrap();
        let c = Config::parse(
            "[host]\nstore = \"postgres://u@h/db\"\nstore_password_file = \"pw\"\n",
            &dir.path().join("dphost.toml"),
        )
        .unwrap();
        let o = c.host.postgres().unwrap().unwrap();
        assert_eq!(o.password.as_deref(), Some("from-file"));
        let c =
            with("store = \"postgres://u@h/db\"\nstore_password_env = \"DPHOST_TEST_UNSET_PG\"")
                .unwrap();
        let err = format!("{:#}", c.host.postgres().unwrap_err());
        assert!(
            err.contains("DPHOST_TEST_UNSET_PG named by `[host] store_password_env` is not set"),
            "{err}"
        );
        assert!(with("").unwrap().host.postgres().unwrap().is_none());
    }

    #[test]
    fn secret_from_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), "from-file\n").unwrap();
        let text = GOOD.replace("secret = \"s3cret\"", "secret_file = \"s\"");
        let cfg = Config::parse(&text, &dir.path().join("dphost.toml")).unwrap();
        assert_eq!(
            cfg.connectors[0].credential().unwrap().unwrap().secret,
            "from-file"
        );
        let text = GOOD.replace(
            "secret = \"s3cret\"",
            "secret_env = \"DPHOST_TEST_UNSET_VAR\"",
        );
        let err = parse(&text).unwrap().connectors[0]
            .credential()
            .unwrap_err();
        assert!(format!("{err:#}").contains("DPHOST_TEST_UNSET_VAR"));
    }

    #[test]
    fn outputs_parse_with_defaults_and_anchored_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ca.pem"),
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let text = r#"
            [[output]]
            name = "siem"
            kind = "syslog"
            address = "siem.example:6514"
            tls = true
            ca_file = "ca.pem"
            [[output]]
            kind = "ndjson"
            path = "spool"
            indexes = ["alerts", "alerts"]
            rotate_mib = 0.5
        "#;
        let c = Config::parse(text, &dir.path().join("dphost.toml")).unwrap();
        assert_eq!(c.outputs.len(), 2);
        assert_eq!(c.outputs[0].name, "siem");
        assert_eq!(
            c.outputs[0].indexes,
            vec![crate::store::Index::Syslog, crate::store::Index::Alerts]
        );
        match &c.outputs[0].kind {
            OutputKind::Syslog(s) => {
                assert_eq!(
                    (s.host.as_str(), s.port, s.tls, s.facility),
                    ("siem.example", 6514, true, 16)
                );
                assert_eq!(
                    s.ca_file.as_deref(),
                    Some(dir.path().join("ca.pem").as_path())
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.outputs[1].name, "ndjson");
        assert_eq!(c.outputs[1].indexes, vec![crate::store::Index::Alerts]);
        match &c.outputs[1].kind {
            OutputKind::Ndjson(n) => {
                assert_eq!(n.dir, dir.path().join("spool"));
                assert_eq!((n.rotate_bytes, n.rotate_secs), (512 * 1024, 3600));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_outputs_are_explained() {
        let err = format!(
            "{:#}",
            parse(
                r#"
                [[output]]
                kind = "kafka"
                [[output]]
                kind = "syslog"
                address = "no-port"
                path = "x"
                ca_file = "/nonexistent/ca.pem"
                [[output]]
                kind = "ndjson"
                indexes = ["quarantine"]
                rotate_secs = 0
                [[output]]
                kind = "syslog"
                address = "a:1"
                tls = "yes"
                [[output]]
                kind = "syslog"
                address = "b:2"
                colour = "blue"
                "#
            )
            .unwrap_err()
        );
        for want in [
            "#1: `kind = \"kafka\"` is unknown: use \"syslog\" or \"ndjson\"",
            "#2: `path` does not apply to a `syslog` output",
            "#2: `ca_file` is set but `tls` is not",
            "#2: `ca_file` /nonexistent/ca.pem cannot be read",
            "#2: `address` \"no-port\" is not host:port",
            "#3: `indexes` has `quarantine`",
            "#3: `rotate_secs` must be at least 1",
            "#3: `path` is required for an ndjson output",
            "#4: invalid type: string \"yes\", expected a boolean in `tls`",
            "#5: unknown field `colour`",
        ] {
            assert!(err.contains(want), "missing {want:?} in:\n{err}");
        }
        // Two unnamed syslog outputs would share a cursor.
        let err = format!(
            "{:#}",
            parse("[[output]]\nkind = \"syslog\"\naddress = \"a:1\"\n[[output]]\nkind = \"syslog\"\naddress = \"b:2\"\n")
                .unwrap_err()
        );
        assert!(err.contains("a second output named `syslog`"), "{err}");
    }
}
