//! tap-sim: a Proofpoint TAP API simulator for tests and demos.
//! See `cli.rs` (or `tap-sim --help`) for what it serves.

mod cli;
mod clock;
mod conn;
mod events_file;
mod faults;
mod generate;
mod interval;
mod json_writer;
mod model;
mod query;
mod random;
mod ratelimit;
mod server;
mod source;
mod stats;
mod stream_body;
mod threats;
mod timestamp;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::net::TcpListener;

use crate::cli::Cli;
use crate::clock::Clock;
use crate::conn::{Conn, FaultListener};
use crate::events_file::{LoadOptions, LoadedEvents};
use crate::faults::{FaultInjector, FaultSpec};
use crate::generate::{Generator, GeneratorConfig};
use crate::ratelimit::RateLimiter;
use crate::server::{AppState, Credentials};
use crate::source::EventSource;
use crate::stats::Stats;

const MINUTE_MS: f64 = 60_000.0;
const HOUR_MS: f64 = 3_600_000.0;

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tap-sim: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let clock = match &cli.clock_file {
        Some(path) => Clock::file(path),
        None => Clock::system(),
    };
    // "Now" at start: the history start and the --retime target.
    let start = clock.now()?;
    // Whole seconds, so generated times relative to start look tidy.
    let start_ms = timestamp::floor_ms(start).div_euclid(1000) * 1000;

    let faults = match &cli.faults {
        Some(text) => {
            let spec = FaultSpec::parse(text)
                .map_err(|why| anyhow::anyhow!("invalid --faults {text:?}: {why}"))?;
            let seed = cli.fault_seed.unwrap_or(cli.seed);
            let slow = std::time::Duration::try_from_secs_f64(cli.slow_secs)
                .map_err(|e| anyhow::anyhow!("invalid --slow-secs {}: {e}", cli.slow_secs))?;
            Some(FaultInjector::new(spec, seed, slow))
        }
        None => None,
    };
    let history_ms = (cli.history_hours * HOUR_MS) as i64;
    let max_lag_ms = (cli.max_lag_min * MINUTE_MS) as i64;

    let source: Arc<dyn EventSource> = if cli.events.is_empty() {
        Arc::new(Generator::new(GeneratorConfig {
            seed: cli.seed,
            events_per_hour: cli.rate,
            start_ms,
            history_ms,
            max_lag_ms,
            shape: cli.shape,
        }))
    } else {
        let loaded = LoadedEvents::load(
            &cli.events_files()?,
            &LoadOptions {
                retime: cli.retime.then_some((start_ms, history_ms)),
                seed: cli.seed,
                max_lag_ms,
            },
        )?;
        tracing::info!(events = loaded.len(), "loaded events");
        Arc::new(loaded)
    };

    let state = Arc::new(AppState {
        credentials: Credentials {
            principal: cli.principal.clone(),
            secret: cli.secret.clone(),
        },
        source,
        limiter: RateLimiter::new(cli.rate_limit),
        stats: Stats::default(),
        seed: cli.seed,
        clock,
        faults,
    });

    let listener = TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let address = listener.local_addr()?;
    // Tests and scripts read this first line to find the port.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on http://{address}")?;
    stdout.flush()?;
    tracing::info!(
        %address,
        seed = cli.seed,
        rate = cli.rate,
        history_hours = cli.history_hours,
        max_lag_min = cli.max_lag_min,
        rate_limit = cli.rate_limit,
        clock = state.clock.describe(),
        start = %timestamp::ms_to_datetime(start_ms),
        "tap-sim started"
    );
    if let Some(faults) = &state.faults {
        tracing::info!(
            faults = %faults.spec(),
            slow_secs = cli.slow_secs,
            "injecting faults"
        );
    }

    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let faulty = state.faults.is_some();
    let router = server::router(state);
    if faulty {
        // Connections a handler can reset or break off.
        axum::serve(
            FaultListener::new(listener),
            router.into_make_service_with_connect_info::<Conn>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("server failed")
    } else {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("server failed")
    }
}
