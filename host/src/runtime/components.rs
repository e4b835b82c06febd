//! The wasmtime engine and the components folder.
//!
//! Every `*.wasm` in the components folder is compiled once (or loaded from
//! the on-disk cache of precompiled code under `data_dir/cache`), linked
//! against the host's capabilities and kept as an `InstancePre`, so a run only
//! pays for a fresh `Store` and instance.

use super::RunState;
use crate::bindings::ConnectorWorldPre;
use crate::caps;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of CPU accounting and of
/// the cooperative yields that keep one tenant from starving the others.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Sizing of the engine, derived from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct EngineSizing {
    /// Sandboxes that may exist at once.
    pub max_instances: u32,
    /// The largest memory cap any connector has.
    pub max_memory_bytes: usize,
}

pub fn build_engine(sizing: EngineSizing) -> Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    // A Rust component has one core instance with one memory and one table;
    // leave room for components built from several modules.
    pool.total_component_instances(sizing.max_instances)
        .total_core_instances(sizing.max_instances * 8)
        .total_memories(sizing.max_instances * 2)
        .total_tables(sizing.max_instances * 4)
        .total_stacks(sizing.max_instances)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .max_core_instances_per_component(16)
        .max_memory_size(sizing.max_memory_bytes);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("cannot create the WebAssembly engine")
}

/// Advances the engine's epoch every `EPOCH_TICK` for the process's life.
pub fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("dphost-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("cannot start the epoch thread");
}

pub fn build_linker(engine: &Engine) -> Result<Linker<RunState>> {
    let mut linker = Linker::new(engine);
    caps::wasi::link(&mut linker)?;
    caps::http::link(&mut linker)?;
    caps::state::link(&mut linker)?;
    caps::sink::link(&mut linker)?;
    caps::log::link(&mut linker)?;
    caps::budget::link(&mut linker)?;
    Ok(linker)
}

/// A component ready to instantiate.
pub struct LoadedComponent {
    pub pre: ConnectorWorldPre<RunState>,
    /// Whether the compiled code came from the cache.
    pub from_cache: bool,
    pub load_time: Duration,
}

/// The components folder: what loaded, and why the rest did not.
#[derive(Default)]
pub struct ComponentSet {
    pub loaded: BTreeMap<String, LoadedComponent>,
    pub failed: BTreeMap<String, String>,
}

impl ComponentSet {
    pub fn get(&self, name: &str, dir: &Path) -> Result<&LoadedComponent> {
        if let Some(c) = self.loaded.get(name) {
            return Ok(c);
        }
        if let Some(why) = self.failed.get(name) {
            anyhow::bail!("component `{name}` could not be loaded: {why}");
        }
        let known: Vec<_> = self.loaded.keys().map(String::as_str).collect();
        anyhow::bail!(
            "no component `{name}` in {} (found: {}); `make build` puts proofpoint_tap.wasm there",
            dir.display(),
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        )
    }
}

/// Loads every `*.wasm` in `dir`. `only` limits loading to the named
/// components (those the configuration uses). A component that fails to load
/// is reported, not fatal: the others still run.
pub fn load_components(
    engine: &Engine,
    linker: &Linker<RunState>,
    dir: &Path,
    cache_dir: &Path,
    only: Option<&[String]>,
) -> Result<ComponentSet> {
    let mut set = ComponentSet::default();
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot read the components folder {}: run `make build`, or set [host] components_dir",
            dir.display()
        )
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    paths.sort();
    for path in paths {
        let Some(name) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if only.is_some_and(|names| !names.contains(&name)) {
            continue;
        }
        match load_one(engine, linker, &name, &path, cache_dir) {
            Ok(c) => {
                tracing::debug!(
                    component = %name,
                    cached = c.from_cache,
                    "loaded in {:?}",
                    c.load_time
                );
                set.loaded.insert(name, c);
            }
            Err(e) => {
                tracing::error!(component = %name, "cannot load {}: {e:#}", path.display());
                set.failed.insert(name, format!("{e:#}"));
            }
        }
    }
    Ok(set)
}

fn load_one(
    engine: &Engine,
    linker: &Linker<RunState>,
    name: &str,
    path: &Path,
    cache_dir: &Path,
) -> Result<LoadedComponent> {
    let started = Instant::now();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cached = cache_path(engine, cache_dir, name, &bytes);
    let mut from_cache = false;
    // SAFETY: the cache folder is written only by this host (below) with
    // `Component::serialize` output; wasmtime checks the engine version and
    // settings recorded in the file and refuses a mismatch.
    let component = match unsafe { Component::deserialize_file(engine, &cached) } {
        Ok(c) => {
            from_cache = true;
            c
        }
        Err(_) => {
            let c = Component::new(engine, &bytes)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!("{} is not a valid WebAssembly component", path.display())
                })?;
            if let Err(e) = write_cache(&c, &cached) {
                tracing::warn!(component = %name, "cannot cache compiled code: {e:#}");
            }
            c
        }
    };
    let pre = linker
        .instantiate_pre(&component)
        .map_err(anyhow::Error::from)
        .context("the component needs imports this host does not provide (is it built for the dphost:connector world?)")?;
    let pre = ConnectorWorldPre::new(pre)
        .map_err(anyhow::Error::from)
        .context("the component does not export the dphost:connector/connector interface")?;
    Ok(LoadedComponent {
        pre,
        from_cache,
        load_time: started.elapsed(),
    })
}

/// The cache file for these bytes under this engine's settings.
fn cache_path(engine: &Engine, cache_dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let mut digest = Sha256::new();
    digest.update(bytes);
    digest.update(engine_hash.finish().to_le_bytes());
    let digest = hex::encode(&digest.finalize()[..12]);
    cache_dir.join(format!("{name}-{digest}.cwasm"))
}

fn write_cache(component: &Component, path: &Path) -> Result<()> {
    let dir = path.parent().context("cache path has no folder")?;
    std::fs::create_dir_all(dir)?;
    let code = component.serialize().map_err(anyhow::Error::from)?;
    // Write then rename: a crash never leaves a half-written cache entry.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, code)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
