//! Benchmark 2: the connector's per-event pipeline (`bench-pipeline`: scan,
//! strict JSON check, interpret, normalise, record bodies, alerts) over the
//! same SIEM response body of ~100k events, natively and inside a sandbox
//! built like production's (dphost's engine: pooling allocator, epoch
//! interruption with the 10 ms tick, the deadline callback charging and
//! yielding each tick).

use crate::util::{self, Sim, PRINCIPAL, SECRET};
use crate::{median, Figure};
use anyhow::{bail, Context, Result};
use bench_pipeline::Summary;
use dphost::runtime::components::{self, EngineSizing};
use proofpoint_tap::platform::InMemoryBody;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../pipeline/wit",
    world: "pipeline",
    exports: { default: async },
});

/// Body chunks handed to the component, like the HTTP body's.
pub const CHUNK: usize = 64 * 1024;
const ROUNDS: usize = 3;

struct Host {
    table: ResourceTable,
    wasi: WasiCtx,
    body: Vec<u8>,
    pos: usize,
    /// Epoch ticks in which the component was running.
    ticks: u64,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl PipelineImports for Host {
    fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.pos >= self.body.len() {
            return None;
        }
        let end = (self.pos + CHUNK).min(self.body.len());
        let chunk = self.body[self.pos..end].to_vec();
        self.pos = end;
        Some(chunk)
    }
}

/// One hour of SIEM events from a simulator, about `events` of them.
pub fn corpus(events: usize) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let clock = dir.path().join("now");
    util::write_clock(&clock, util::T0)?;
    // About 93% of generated events pass the default threat filters.
    let rate = (events as f64 / 0.93).ceil();
    let sim = Sim::start(&[
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--seed".into(),
        "11".into(),
        "--rate".into(),
        format!("{rate}"),
        "--history-hours".into(),
        "2".into(),
        "--max-lag-min".into(),
        "0".into(),
        "--clock-file".into(),
        clock.display().to_string(),
    ])?;
    let url = format!(
        "{}/v2/siem/all?format=json&interval=2026-11-20T09:00:00Z/2026-11-20T09:59:00Z",
        sim.url
    );
    let body = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?
        .get(url)
        .basic_auth(PRINCIPAL, Some(SECRET))
        .send()?
        .error_for_status()?
        .bytes()?;
    Ok(body.to_vec())
}

/// The pipeline natively: median seconds of `ROUNDS` runs.
pub fn native(body: &[u8]) -> Result<(f64, Summary)> {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let s = bench_pipeline::run(InMemoryBody::new(body.to_vec(), CHUNK), "bench")
            .map_err(anyhow::Error::msg)?;
        times.push(started.elapsed().as_secs_f64());
        last = Some(s);
    }
    Ok((median(&mut times), last.expect("rounds > 0")))
}

/// The pipeline in the sandbox: median seconds of `ROUNDS` calls, each in a
/// fresh instance (instantiation included: a few µs), and the CPU ticks the
/// deadline callback charged.
pub fn sandboxed(body: &[u8]) -> Result<(f64, Summary, u64)> {
    let path = util::pipeline_component();
    util::require(&path)?;
    let engine = components::build_engine(EngineSizing {
        max_instances: 4,
        max_memory_bytes: 256 << 20,
    })?;
    components::start_epoch_ticker(&engine);
    let component = Component::from_file(&engine, &path)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("compiling {}", path.display()))?;
    let mut linker: Linker<Host> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Pipeline::add_to_linker::<_, wasmtime::component::HasSelf<Host>>(&mut linker, |s| s)?;
    let pre = PipelinePre::new(linker.instantiate_pre(&component)?)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut times = Vec::new();
    let mut last = None;
    let mut ticks = 0;
    for _ in 0..ROUNDS {
        let host = Host {
            table: ResourceTable::new(),
            wasi: WasiCtx::builder().build(),
            body: body.to_vec(),
            pos: 0,
            ticks: 0,
        };
        let mut store = Store::new(&engine, host);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            ctx.data_mut().ticks += 1;
            Ok(UpdateDeadline::Yield(1))
        });
        let started = Instant::now();
        let text = rt.block_on(async {
            let p = pre.instantiate_async(&mut store).await?;
            p.call_run(&mut store, "bench").await
        })?;
        times.push(started.elapsed().as_secs_f64());
        ticks = store.data().ticks;
        let Some(s) = Summary::from_json(&text) else {
            bail!("the bench component failed: {text}");
        };
        last = Some(s);
    }
    Ok((median(&mut times), last.expect("rounds > 0"), ticks))
}

/// Native time per event of each stage (one run to that stage, minus the
/// run to the stage before): where the pipeline's time goes.
pub fn stages(body: &[u8]) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let mut before = 0.0;
    for stage in bench_pipeline::Stage::ALL {
        let started = Instant::now();
        let s = bench_pipeline::run_to(InMemoryBody::new(body.to_vec(), CHUNK), "bench", stage)
            .map_err(anyhow::Error::msg)?;
        let t = started.elapsed().as_secs_f64();
        let events = s.events;
        figures.push(Figure::new(
            "overhead",
            format!("native stage: {}", stage.as_str()),
            (t - before) / events.max(1) as f64 * 1e6,
            "µs/event",
        ));
        before = t;
    }
    Ok(figures)
}

pub fn run(events: usize) -> Result<Vec<Figure>> {
    let body = corpus(events)?;
    let stage_figures = stages(&body)?;
    let (native_s, native_sum) = native(&body)?;
    let (wasm_s, wasm_sum, ticks) = sandboxed(&body)?;
    if native_sum != wasm_sum {
        bail!("native and sandboxed runs disagree: {native_sum:?} vs {wasm_sum:?}");
    }
    let n = native_sum.events as f64;
    Ok([
        Figure::new("overhead", "corpus events", n, "events"),
        Figure::new("overhead", "corpus bytes", body.len() as f64 / 1e6, "MB"),
        Figure::new(
            "overhead",
            "record JSON written per event",
            native_sum.record_bytes as f64 / n,
            "bytes",
        ),
        Figure::new(
            "overhead",
            format!(
                "alert JSON (bodies + slot state) per event, {} batches",
                native_sum.batches
            ),
            native_sum.alert_bytes as f64 / n,
            "bytes",
        ),
        Figure::new("overhead", "native pipeline", n / native_s, "events/s"),
        Figure::new(
            "overhead",
            "sandboxed pipeline (epoch deadline on)",
            n / wasm_s,
            "events/s",
        ),
        Figure::new(
            "overhead",
            "epoch ticks charged in the last sandboxed run",
            ticks as f64,
            "ticks",
        ),
        Figure::new("overhead", "wasm/native time", wasm_s / native_s, "x").at_most(1.3),
    ]
    .into_iter()
    .chain(stage_figures)
    .collect())
}
