//! Running connector components: one fresh sandbox per call.
//!
//! A call (collect, test-connection, validate-config, describe) gets a new
//! `Store` from the component's `InstancePre` (pooling allocator), with
//! - a CPU budget: the epoch advances every 10 ms; each tick in which the
//!   component was executing is charged to it and it yields to the scheduler,
//!   so tenants share the cores; past the budget the call is stopped;
//! - a memory cap enforced by a resource limiter;
//! - a wall-clock bound on the whole call, network waits included;
//! - the per-run state of each capability (`caps`).
//!
//! The store and instance are dropped when the call returns: nothing carries
//! over between runs except what the component committed.

pub mod components;

use crate::bindings::{ConnectorError, ConnectorExports};
use crate::caps::{self, http::HttpGate, log::LogBudget, sink::SinkStats, wasi::StderrTail};
use crate::clock::Clock;
use crate::config::{Config, ConnectorConfig, Limits};
use crate::store::{now_ms, RunRecord, Store};
use anyhow::Result;
use components::{ComponentSet, EngineSizing, EPOCH_TICK};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Who a run is for and what it may use; shared by the run's capabilities.
pub struct RunScope {
    pub connector: String,
    pub tenant: String,
    pub store: Arc<Store>,
    pub limits: Limits,
    pub clock: Clock,
    /// Identifies the API credential (origin + principal) without revealing
    /// it: the key of the request budgets this connector shares.
    pub credential_key: String,
    pub filters: Arc<[crate::config::LogFilter]>,
    /// The connector lease this run commits under (shared stores).
    pub fence: Option<crate::store::Fence>,
}

/// Progress of a collection as the component reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub done: u32,
    pub total: u32,
    pub items: u64,
}

/// Receives progress reports during a call (e.g. a progress bar).
pub type ProgressObserver = Arc<dyn Fn(Progress) + Send + Sync>;

/// Everything a sandbox's `Store` holds for one run.
pub struct RunState {
    pub scope: Arc<RunScope>,
    table: ResourceTable,
    wasi: WasiCtx,
    http_ctx: WasiHttpCtx,
    pub http: HttpGate,
    pub log: LogBudget,
    pub sink: SinkStats,
    /// The batch `commit-begin` took, while it is written.
    pub commits: caps::sink::CommitPipe,
    pub progress: Progress,
    pub progress_observer: Option<ProgressObserver>,
    memory: MemoryCap,
    cpu_ticks: u64,
    cpu_budget_ticks: u64,
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RunState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

/// Refuses memory growth past the connector's cap, and remembers it did, so
/// the run's failure can say so instead of showing a bare trap.
struct MemoryCap {
    limit: usize,
    exceeded: bool,
    peak: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("the component tried to grow its memory to {desired} bytes, past its cap of {limit} bytes")]
struct MemoryCapExceeded {
    desired: usize,
    limit: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("the component used its whole CPU budget")]
struct CpuBudgetExhausted;

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Err(wasmtime::Error::new(MemoryCapExceeded {
                desired,
                limit: self.limit,
            }));
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Which export to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Describe,
    ValidateConfig,
    TestConnection,
    Collect,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Describe => "describe",
            Operation::ValidateConfig => "validate-config",
            Operation::TestConnection => "test-connection",
            Operation::Collect => "collect",
        }
    }
}

/// Why a call did not succeed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The component reported an error (HTTP status, bad config, ...).
    Connector(ConnectorError),
    CpuDeadline {
        seconds: f64,
    },
    MemoryCap {
        mib: u64,
    },
    Timeout {
        seconds: u64,
    },
    /// The component trapped (panic, stack overflow, bad host call, ...).
    Trap {
        message: String,
        stderr: String,
    },
    /// The host could not run the call (component missing, bad credential
    /// source, storage failure, ...).
    Host(String),
    /// Another host took the connector's lease over while this run was
    /// paused or cut off: its commits were refused (fencing).
    LeaseLost(String),
}

impl Failure {
    /// A short status word for tables and the run history.
    pub fn status(&self) -> &'static str {
        match self {
            Failure::Connector(ConnectorError::RateLimited(_)) => "rate-limited",
            Failure::Connector(ConnectorError::BadConfig(_)) => "bad-config",
            Failure::Connector(_) => "failed",
            Failure::CpuDeadline { .. } => "cpu-deadline",
            Failure::MemoryCap { .. } => "memory-cap",
            Failure::Timeout { .. } => "timeout",
            Failure::Trap { .. } => "trapped",
            Failure::Host(_) => "host-error",
            Failure::LeaseLost(_) => "lease-lost",
        }
    }

    /// Seconds the scheduler should wait before the next run, if the
    /// component asked for it.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Connector(ConnectorError::RateLimited(s)) => {
                Some(Duration::from_secs(*s as u64))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connector(e) => write!(f, "{}", explain_connector_error(e)),
            Failure::CpuDeadline { seconds } => write!(
                f,
                "stopped: the run used its CPU budget of {seconds} s (limits.cpu_seconds); committed progress is kept and the next run continues from it"
            ),
            Failure::MemoryCap { mib } => write!(
                f,
                "stopped: the component needed more than its memory cap of {mib} MiB (limits.memory_mib); committed progress is kept"
            ),
            Failure::Timeout { seconds } => write!(
                f,
                "stopped: the run took longer than {seconds} s (limits.run_timeout_secs); committed progress is kept"
            ),
            Failure::Trap { message, stderr } => {
                write!(f, "the component crashed: {message}")?;
                if !stderr.is_empty() {
                    write!(f, " (its stderr ends with: {})", last_lines(stderr, 5))?;
                }
                Ok(())
            }
            Failure::Host(m) => write!(f, "{m}"),
            Failure::LeaseLost(m) => write!(f, "stopped: {m}"),
        }
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Operator wording for a connector's own error.
pub fn explain_connector_error(e: &ConnectorError) -> String {
    match e {
        ConnectorError::BadConfig(problems) => {
            format!("invalid configuration: {}", problems.join("; "))
        }
        ConnectorError::Http(h) if h.status == 0 => {
            format!("{} {}", h.explanation, h.recommendation)
        }
        ConnectorError::Http(h) => {
            format!("HTTP {}: {} {}", h.status, h.explanation, h.recommendation)
        }
        ConnectorError::RateLimited(secs) => {
            let at = std::time::SystemTime::now() + Duration::from_secs(*secs as u64);
            let at = time::OffsetDateTime::from(at)
                .replace_nanosecond(0)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            format!(
                "rate limited: the API's request quota (or the credential's shared budget) is used up; the connector retries by itself at {at} (in {secs} s)"
            )
        }
        ConnectorError::Transient(m) => {
            format!("temporary failure, retried on the next run: {m}")
        }
        ConnectorError::Internal(m) => format!("connector error: {m}"),
    }
}

/// What one call did.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub connector: String,
    pub tenant: String,
    pub operation: Operation,
    pub started_ms: i64,
    pub elapsed: Duration,
    /// The export's result text (collect: a JSON summary).
    pub result: Result<String, Failure>,
    pub requests: u64,
    pub refused_requests: Vec<String>,
    pub sink: SinkStats,
    pub logs_dropped: u64,
    pub last_warning: Option<String>,
    pub cpu_time: Duration,
    pub peak_memory: usize,
    pub progress: Progress,
}

impl CallReport {
    pub fn status(&self) -> &'static str {
        match &self.result {
            Ok(_) => "ok",
            Err(f) => f.status(),
        }
    }
}

/// The host's engine, capabilities, components and store.
pub struct Runtime {
    pub engine: Engine,
    pub components: ComponentSet,
    pub components_dir: PathBuf,
    pub store: Arc<Store>,
    pub clock: Clock,
    /// The largest memory cap the engine's instance pool was sized for.
    max_memory_mib: u64,
}

impl Runtime {
    /// Builds the engine and loads the components the configuration uses.
    pub fn new(config: &Config) -> Result<Runtime> {
        let store = Arc::new(Store::for_host(&config.host)?);
        let max_memory_mib = config
            .connectors
            .iter()
            .map(|c| c.limits.memory_mib)
            .max()
            .unwrap_or(Limits::default().memory_mib);
        let engine = components::build_engine(EngineSizing {
            // Room for every scheduled run plus a few operator calls.
            max_instances: (config.host.max_concurrent_runs as u32).saturating_add(8),
            max_memory_bytes: (max_memory_mib as usize) << 20,
        })?;
        components::start_epoch_ticker(&engine);
        let linker = components::build_linker(&engine)?;
        let mut used: Vec<String> = config
            .connectors
            .iter()
            .map(|c| c.component.clone())
            .collect();
        used.sort();
        used.dedup();
        let components = load_components_blocking(
            &engine,
            &linker,
            &config.host.components_dir,
            &config.host.data_dir.join("cache"),
            &used,
        )?;
        Ok(Runtime {
            engine,
            components,
            components_dir: config.host.components_dir.clone(),
            store,
            clock: config.host.clock(),
            max_memory_mib,
        })
    }

    /// The largest `limits.memory_mib` this runtime can honour.
    pub fn max_memory_mib(&self) -> u64 {
        self.max_memory_mib
    }

    /// Calls one export of `connector`'s component in a fresh sandbox and
    /// records the call in the run history (collections and connection tests).
    pub async fn call(&self, connector: &ConnectorConfig, operation: Operation) -> CallReport {
        self.call_observed(connector, operation, None).await
    }

    /// `call`, reporting the component's progress to `observer`.
    pub async fn call_observed(
        &self,
        connector: &ConnectorConfig,
        operation: Operation,
        observer: Option<ProgressObserver>,
    ) -> CallReport {
        self.call_fenced(connector, operation, observer, None).await
    }

    /// `call_observed` under a connector lease: every commit of the run
    /// checks `fence` (see `store::Fence`).
    pub async fn call_fenced(
        &self,
        connector: &ConnectorConfig,
        operation: Operation,
        observer: Option<ProgressObserver>,
        fence: Option<crate::store::Fence>,
    ) -> CallReport {
        let started_ms = now_ms();
        let started = Instant::now();
        let mut report = CallReport {
            connector: connector.name.clone(),
            tenant: connector.tenant.clone(),
            operation,
            started_ms,
            elapsed: Duration::ZERO,
            result: Err(Failure::Host("not run".into())),
            requests: 0,
            refused_requests: Vec::new(),
            sink: SinkStats::default(),
            logs_dropped: 0,
            last_warning: None,
            cpu_time: Duration::ZERO,
            peak_memory: 0,
            progress: Progress::default(),
        };
        report.result = self
            .call_inner(connector, operation, observer, fence, &mut report)
            .await;
        report.elapsed = started.elapsed();
        // Describing and validating are not runs: the history (and status)
        // keep collections and connection tests.
        if !matches!(operation, Operation::Describe | Operation::ValidateConfig) {
            let (summary, error) = match &report.result {
                Ok(s) => (Some(s.clone()), None),
                Err(f) => (None, Some(f.to_string())),
            };
            let record = RunRecord {
                connector: connector.name.clone(),
                tenant: connector.tenant.clone(),
                operation: operation.as_str().to_string(),
                started_ms,
                ended_ms: now_ms(),
                outcome: report.status().to_string(),
                summary,
                error,
            };
            if let Err(e) = self.store.record_run(&record) {
                tracing::warn!(connector = %connector.name, "cannot record the run: {e:#}");
            }
        }
        report
    }

    /// A fresh sandbox for one call of `connector`: a new `Store` holding
    /// the run's capabilities, memory cap and CPU budget, ready for
    /// `InstancePre::instantiate_async` (benchmarks time exactly this).
    pub fn new_store(
        &self,
        connector: &ConnectorConfig,
        observer: Option<ProgressObserver>,
    ) -> Result<(wasmtime::Store<RunState>, StderrTail), Failure> {
        self.new_fenced_store(connector, observer, None)
    }

    fn new_fenced_store(
        &self,
        connector: &ConnectorConfig,
        observer: Option<ProgressObserver>,
        fence: Option<crate::store::Fence>,
    ) -> Result<(wasmtime::Store<RunState>, StderrTail), Failure> {
        let credential = connector
            .credential()
            .map_err(|e| Failure::Host(format!("{e:#}")))?;
        let limits = connector.limits.clone();
        let (wasi, stderr) = caps::wasi::prepare(&self.clock);
        let state = RunState {
            scope: Arc::new(RunScope {
                connector: connector.name.clone(),
                tenant: connector.tenant.clone(),
                store: self.store.clone(),
                limits: limits.clone(),
                clock: self.clock.clone(),
                credential_key: connector.credential_key().to_string(),
                filters: connector.filters.clone(),
                fence,
            }),
            table: ResourceTable::new(),
            wasi,
            http_ctx: WasiHttpCtx::new(),
            http: caps::http::prepare(&connector.name, &connector.allowed, credential.as_ref()),
            log: caps::log::prepare(limits.log_lines_per_run),
            sink: SinkStats::default(),
            commits: Default::default(),
            progress: Progress::default(),
            progress_observer: observer,
            memory: MemoryCap {
                limit: (limits.memory_mib as usize) << 20,
                exceeded: false,
                peak: 0,
            },
            cpu_ticks: 0,
            cpu_budget_ticks: (limits.cpu_seconds / EPOCH_TICK.as_secs_f64()).ceil() as u64,
        };
        let mut store = wasmtime::Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory);
        // Each time the deadline passes while the component executes, charge
        // it one tick and yield; past its budget, stop it.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            state.cpu_ticks += 1;
            if state.cpu_ticks > state.cpu_budget_ticks {
                return Err(wasmtime::Error::new(CpuBudgetExhausted));
            }
            Ok(UpdateDeadline::Yield(1))
        });

        Ok((store, stderr))
    }

    async fn call_inner(
        &self,
        connector: &ConnectorConfig,
        operation: Operation,
        observer: Option<ProgressObserver>,
        fence: Option<crate::store::Fence>,
        report: &mut CallReport,
    ) -> Result<String, Failure> {
        let component = self
            .components
            .get(&connector.component)
            .await
            .map_err(|e| Failure::Host(format!("{e:#}")))?;
        let (mut store, stderr) = self.new_fenced_store(connector, observer, fence)?;
        let limits = connector.limits.clone();

        let config_json = connector.component_config_json();
        let timeout = Duration::from_secs(limits.run_timeout_secs);
        let outcome = tokio::time::timeout(timeout, async {
            let instance = component.pre.instantiate_async(&mut store).await?;
            let api: &ConnectorExports = instance.dphost_connector_connector();
            match operation {
                Operation::Describe => api.call_describe(&mut store).await.map(Ok),
                Operation::ValidateConfig => api
                    .call_validate_config(&mut store, &config_json)
                    .await
                    .map(|r| {
                        r.map(|()| "configuration is valid".to_string())
                            .map_err(ConnectorError::BadConfig)
                    }),
                Operation::TestConnection => {
                    api.call_test_connection(&mut store, &config_json).await
                }
                Operation::Collect => api.call_collect(&mut store, &config_json).await,
            }
        })
        .await;
        // A batch still being written when the call ended counts: the run
        // fails if it does. (After a trap or a timeout the write still ends
        // whole, one way or the other: wait for it so the report is true.)
        let last_write = store.data_mut().settle_commit().await;
        let lost_batch = store.data_mut().uncollected_commit_failure();

        let data = store.data();
        report.requests = data.http.requests;
        report.refused_requests = data.http.refused();
        report.sink = data.sink;
        report.logs_dropped = data.log.dropped;
        report.last_warning = data.log.last_warning.clone();
        report.cpu_time = EPOCH_TICK * data.cpu_ticks.min(u32::MAX as u64) as u32;
        report.peak_memory = data.memory.peak;
        report.progress = data.progress;
        let memory_exceeded = data.memory.exceeded;
        if report.logs_dropped > 0 {
            tracing::warn!(
                connector = %connector.name,
                "dropped {} log lines past the per-run budget (limits.log_lines_per_run)",
                report.logs_dropped
            );
        }

        // A lost lease stops the run whichever way the call ended.
        if let Some(lost) = last_write
            .as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<crate::store::LeaseLost>())
        {
            return Err(Failure::LeaseLost(lost.to_string()));
        }
        match outcome {
            Err(_elapsed) => Err(Failure::Timeout {
                seconds: limits.run_timeout_secs,
            }),
            Ok(Ok(Ok(_))) if last_write.is_err() || lost_batch.is_some() => {
                Err(Failure::Host(format!(
                    "the connector ended while its last batch was being written, and that write failed: {}",
                    match (&last_write, &lost_batch) {
                        (Err(e), _) => format!("{e:#}"),
                        (_, Some(why)) => why.clone(),
                        _ => unreachable!("one of them failed"),
                    }
                )))
            }
            Ok(Ok(Ok(text))) => Ok(text),
            Ok(Ok(Err(e))) => Err(Failure::Connector(e)),
            Ok(Err(trap)) => Err(classify_trap(trap, memory_exceeded, &limits, &stderr)),
        }
    }
}

/// `load_components` from synchronous code, inside a runtime or not.
fn load_components_blocking(
    engine: &Engine,
    linker: &wasmtime::component::Linker<RunState>,
    dir: &std::path::Path,
    cache_dir: &std::path::Path,
    used: &[String],
) -> Result<ComponentSet> {
    let load = components::load_components(engine, linker, dir, cache_dir, Some(used));
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => tokio::task::block_in_place(|| handle.block_on(load)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(load),
    }
}

fn classify_trap(
    error: wasmtime::Error,
    memory_exceeded: bool,
    limits: &Limits,
    stderr: &StderrTail,
) -> Failure {
    if error.is::<CpuBudgetExhausted>() {
        return Failure::CpuDeadline {
            seconds: limits.cpu_seconds,
        };
    }
    // A component that cannot grow its memory may also fail its allocation
    // and abort: either way the cause is the cap.
    if memory_exceeded || error.is::<MemoryCapExceeded>() {
        return Failure::MemoryCap {
            mib: limits.memory_mib,
        };
    }
    if let Some(lost) = error.downcast_ref::<crate::store::LeaseLost>() {
        return Failure::LeaseLost(lost.to_string());
    }
    if let Some(store) = error.downcast_ref::<crate::caps::StoreFailure>() {
        return Failure::Host(format!("stopped: {store}; committed progress is kept"));
    }
    let error = anyhow::Error::from(error);
    let message = match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => format!("{trap} ({:#})", error.root_cause()),
        None => format!("{error:#}"),
    };
    Failure::Trap {
        message,
        stderr: stderr.text(),
    }
}
