//! Benchmark 1: a fresh sandbox (`Store` + instance of the TAP component
//! from its `InstancePre`, pooling allocator) and loading the component from
//! the on-disk cache of compiled code vs compiling it.

use crate::util::{self, workspace};
use crate::{median, percentile, Figure};
use anyhow::{Context, Result};
use dphost::config::{Config, ConnectorConfig};
use dphost::runtime::components::{self, EngineSizing};
use dphost::runtime::Runtime;
use std::time::{Duration, Instant};

/// A host runtime with the TAP component loaded, as `dphost` builds it.
pub struct Setup {
    pub runtime: Runtime,
    pub connector: ConnectorConfig,
    pub config: Config,
    _dir: tempfile::TempDir,
}

impl Setup {
    pub fn new() -> Result<Setup> {
        let dir = tempfile::tempdir()?;
        let config_path = workspace(
            dir.path(),
            "",
            &util::connector_toml("bench-tap", "bench", "http://127.0.0.1:9", ""),
        )?;
        let config = Config::load(&config_path)?;
        let runtime = Runtime::new(&config)?;
        let connector = config.connectors[0].clone();
        Ok(Setup {
            runtime,
            connector,
            config,
            _dir: dir,
        })
    }

    /// One fresh sandbox: the run's `Store` (capabilities, limits, CPU
    /// budget) and a new instance in it; both dropped. Returns the time of
    /// the `Store`, of the instance, and of dropping both (the pooling slot
    /// is reset then: what instantiation does not pay, teardown does).
    pub async fn instantiate_once(&self) -> Result<(Duration, Duration, Duration)> {
        let component = self
            .runtime
            .components
            .get(&self.connector.component)
            .await?;
        let started = Instant::now();
        let (mut store, _stderr) = self
            .runtime
            .new_store(&self.connector, None)
            .map_err(|f| anyhow::anyhow!("{f}"))?;
        let stored = started.elapsed();
        let instance = component
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(anyhow::Error::from)
            .context("instantiating the TAP component")?;
        let total = started.elapsed();
        let _ = instance;
        let dropping = Instant::now();
        drop(store);
        Ok((stored, total - stored, dropping.elapsed()))
    }
}

pub const SAMPLES: usize = 5_000;

pub fn run() -> Result<Vec<Figure>> {
    let setup = Setup::new()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut sandbox, mut instance, mut teardown) = rt.block_on(async {
        for _ in 0..200 {
            setup.instantiate_once().await?;
        }
        let mut sandbox = Vec::with_capacity(SAMPLES);
        let mut instance = Vec::with_capacity(SAMPLES);
        let mut teardown = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let (s, i, d) = setup.instantiate_once().await?;
            sandbox.push((s + i).as_secs_f64() * 1e6);
            instance.push(i.as_secs_f64() * 1e6);
            teardown.push(d.as_secs_f64() * 1e6);
        }
        anyhow::Ok((sandbox, instance, teardown))
    })?;
    let (compile, cached) = rt.block_on(load_times(&setup.config))?;
    Ok(vec![
        Figure::new(
            "instantiate",
            "instance from InstancePre, p50",
            percentile(&mut instance, 50.0),
            "µs",
        ),
        Figure::new(
            "instantiate",
            "instance from InstancePre, p99",
            percentile(&mut instance, 99.0),
            "µs",
        ),
        Figure::new(
            "instantiate",
            "run Store (caps, limits) + instance, p50",
            percentile(&mut sandbox, 50.0),
            "µs",
        )
        .at_most(10.0),
        Figure::new(
            "instantiate",
            "run Store (caps, limits) + instance, p99",
            percentile(&mut sandbox, 99.0),
            "µs",
        ),
        Figure::new(
            "instantiate",
            "teardown (Store and instance dropped, slot reset), p50",
            percentile(&mut teardown, 50.0),
            "µs",
        ),
        Figure::new(
            "instantiate",
            "component ready from the cwasm cache (median)",
            cached,
            "ms",
        )
        .at_most(5.0),
        Figure::new(
            "instantiate",
            "component ready by compiling (median)",
            compile,
            "ms",
        ),
    ])
}

/// Median milliseconds to have the TAP component ready (`InstancePre`):
/// compiled (empty cache), and deserialized from the cache.
pub async fn load_times(config: &Config) -> Result<(f64, f64)> {
    let engine = components::build_engine(EngineSizing {
        max_instances: 16,
        max_memory_bytes: 256 << 20,
    })?;
    let linker = components::build_linker(&engine)?;
    let only = vec!["proofpoint_tap".to_string()];
    let load = async |cache: &std::path::Path| -> Result<(bool, f64)> {
        let set = components::load_components(
            &engine,
            &linker,
            &config.host.components_dir,
            cache,
            Some(&only),
        )
        .await?;
        let c = set.get("proofpoint_tap").await?;
        Ok((c.from_cache, c.load_time.as_secs_f64() * 1e3))
    };
    let mut compiled = Vec::new();
    let mut cached = Vec::new();
    for _ in 0..3 {
        let cache = tempfile::tempdir()?;
        let (hit, ms) = load(cache.path()).await?;
        anyhow::ensure!(!hit, "an empty cache cannot hit");
        compiled.push(ms);
        for _ in 0..7 {
            let (hit, ms) = load(cache.path()).await?;
            anyhow::ensure!(hit, "the second load should come from the cache");
            cached.push(ms);
        }
    }
    Ok((median(&mut compiled), median(&mut cached)))
}
