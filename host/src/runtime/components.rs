//! The wasmtime engine and the components folder.
//!
//! Every `*.wasm` in the components folder is compiled once (or loaded from
//! the on-disk cache of precompiled code under `data_dir/cache`, keyed by the
//! file's SHA-256 and the engine's compatibility hash, so a restart does not
//! recompile), linked against the host's capabilities and kept as an
//! `InstancePre`, so a run only pays for a fresh `Store` and instance. The
//! folder is looked at again before every call: a new version dropped in is
//! used from the next run on (see `ComponentSet`).

use super::RunState;
use crate::bindings::ConnectorWorldPre;
use crate::caps;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
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
        .max_memory_size(sizing.max_memory_bytes)
        // A table slot is zeroed in place when its instance ends instead
        // of given back to the kernel (madvise), so the next instance finds
        // its pages mapped: instantiation 10.8 -> 8.2 us and teardown 3.8 ->
        // 1.7 us (BENCHMARKS.md). Memories stay as they are: keeping them
        // resident moved more cost into teardown (a 1 MiB memset) than it saved.
        .table_keep_resident(1 << 16);
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
    /// SHA-256 (hex, first 12 bytes) of the `.wasm` file.
    pub digest: String,
}

/// What a file looked like when it was last read: a change of any of these
/// means a new version may have been dropped in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<FileStamp> {
        let meta = std::fs::metadata(path)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        })
    }
}

/// One component name: the version in use, and the file last looked at.
#[derive(Default)]
struct Slot {
    current: Option<Arc<LoadedComponent>>,
    /// The file as last read (loaded or rejected).
    seen: Option<FileStamp>,
    /// Why the file as last read cannot be used.
    rejected: Option<String>,
}

/// The components folder, watched: every call asks for its component by
/// name, and a new file dropped in (a new version) is compiled and used from
/// that call on, without restarting the host. A file that is not a valid
/// component, or lacks the world's exports, is rejected with a clear
/// message, and the version already loaded keeps running. Replace files
/// atomically (write elsewhere, then rename into the folder); a half-copied
/// file is rejected and read again once it changes.
pub struct ComponentSet {
    engine: Engine,
    linker: Linker<RunState>,
    dir: PathBuf,
    cache_dir: PathBuf,
    slots: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl ComponentSet {
    fn slot(&self, name: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        self.slots
            .lock()
            .expect("component slots poisoned")
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.wasm"))
    }

    /// The component to run now: the newest valid version in the folder.
    pub async fn get(&self, name: &str) -> Result<Arc<LoadedComponent>> {
        let slot = self.slot(name);
        let mut slot = slot.lock().await;
        let path = self.path_of(name);
        let stamp = match FileStamp::of(&path) {
            Ok(stamp) => stamp,
            Err(_) => {
                if let Some(current) = &slot.current {
                    // Removed while loaded: keep running what we have.
                    return Ok(current.clone());
                }
                let known = self.known_names();
                anyhow::bail!(
                    "no component `{name}` in {} (found: {}): set `component` to one found there, or put {name}.wasm in that folder (`make build` builds proofpoint_tap.wasm)",
                    self.dir.display(),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )
            }
        };
        if slot.seen != Some(stamp) {
            slot.seen = Some(stamp);
            let (engine, linker, cache_dir) = (
                self.engine.clone(),
                self.linker.clone(),
                self.cache_dir.clone(),
            );
            let (name_owned, path_owned) = (name.to_string(), path.clone());
            let current_digest = slot.current.as_ref().map(|c| c.digest.clone());
            let loaded = tokio::task::spawn_blocking(move || {
                load_one(
                    &engine,
                    &linker,
                    &name_owned,
                    &path_owned,
                    &cache_dir,
                    current_digest.as_deref(),
                )
            })
            .await
            .map_err(|e| anyhow::anyhow!("loading {} failed: {e}", path.display()))?;
            match loaded {
                Ok(None) => slot.rejected = None,
                Ok(Some(c)) => {
                    if let Some(old) = &slot.current {
                        tracing::info!(
                            component = %name,
                            "new version {} of {} is in use from this run on (was {})",
                            c.digest,
                            path.display(),
                            old.digest
                        );
                    }
                    slot.current = Some(Arc::new(c));
                    slot.rejected = None;
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    match &slot.current {
                        Some(old) => tracing::error!(
                            component = %name,
                            "rejected the new file {}: {why}; version {} keeps running: fix or replace the file",
                            path.display(),
                            old.digest
                        ),
                        None => tracing::error!(
                            component = %name,
                            "cannot load {}: {why}",
                            path.display()
                        ),
                    }
                    slot.rejected = Some(why);
                }
            }
        }
        match (&slot.current, &slot.rejected) {
            (Some(c), _) => Ok(c.clone()),
            (None, Some(why)) => anyhow::bail!("component `{name}` could not be loaded: {why}"),
            (None, None) => anyhow::bail!("component `{name}` is not loaded"),
        }
    }

    fn known_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_string))
            .collect();
        names.sort();
        names
    }
}

/// Loads every `*.wasm` in `dir`. `only` limits loading to the named
/// components (those the configuration uses); others load when first asked
/// for. A component that fails to load is reported, not fatal: the others
/// still run.
pub async fn load_components(
    engine: &Engine,
    linker: &Linker<RunState>,
    dir: &Path,
    cache_dir: &Path,
    only: Option<&[String]>,
) -> Result<ComponentSet> {
    let set = ComponentSet {
        engine: engine.clone(),
        linker: linker.clone(),
        dir: dir.to_path_buf(),
        cache_dir: cache_dir.to_path_buf(),
        slots: Mutex::default(),
    };
    std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot read the components folder {}: run `make build`, or set [host] components_dir",
            dir.display()
        )
    })?;
    for name in set.known_names() {
        if only.is_some_and(|names| !names.contains(&name)) {
            continue;
        }
        if let Ok(c) = set.get(&name).await {
            tracing::debug!(
                component = %name,
                cached = c.from_cache,
                "loaded in {:?}",
                c.load_time
            );
        }
    }
    Ok(set)
}

/// Compiles (or loads from the cache) the component in `path`. `Ok(None)`:
/// its bytes are those of the version in use (`current_digest`).
fn load_one(
    engine: &Engine,
    linker: &Linker<RunState>,
    name: &str,
    path: &Path,
    cache_dir: &Path,
    current_digest: Option<&str>,
) -> Result<Option<LoadedComponent>> {
    let started = Instant::now();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let digest = hex::encode(&Sha256::digest(&bytes)[..12]);
    if current_digest == Some(digest.as_str()) {
        return Ok(None);
    }
    let cached = cache_path(engine, cache_dir, name, &bytes);
    let mut from_cache = false;
    // SAFETY: the cache folder is written only by this host (below) with
    // `Component::serialize` output; wasmtime checks the engine version and
    // settings recorded in the file and refuses a mismatch.
    let component = match unsafe { Component::deserialize_file(engine, &cached) } {
        Ok(c) => {
            from_cache = true;
            tracing::debug!(component = %name, "loaded from the compiled cache {}", cached.display());
            c
        }
        Err(_) => {
            let c = Component::new(engine, &bytes)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!("{} is not a valid WebAssembly component", path.display())
                })?;
            match write_cache(&c, &cached) {
                Ok(()) => tracing::info!(
                    component = %name,
                    "compiled {} in {:.1?} (cached as {})",
                    path.display(),
                    started.elapsed(),
                    cached.display()
                ),
                Err(e) => tracing::warn!(component = %name, "cannot cache compiled code: {e:#}"),
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
    Ok(Some(LoadedComponent {
        pre,
        from_cache,
        load_time: started.elapsed(),
        digest,
    }))
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
