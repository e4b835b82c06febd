//! `dphost-bench [all|instantiate|overhead|e2e|density]`: runs benchmarks and
//! prints their figures as one Markdown table (`make bench` runs `all`).
//! Needs the release binaries and components (`make bench` builds them).

use anyhow::Result;
use dphost_bench::{density, e2e, instantiate, overhead, table, Figure};

fn main() -> Result<()> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let all = which == "all";
    let mut figures: Vec<Figure> = Vec::new();
    let mut step = |name: &str, f: &dyn Fn() -> Result<Vec<Figure>>| -> Result<()> {
        if all || which == name {
            eprintln!("== {name}");
            let got = f()?;
            eprint!("{}", table(&got));
            figures.extend(got);
        }
        Ok(())
    };
    step("instantiate", &instantiate::run)?;
    step("overhead", &|| {
        let events = std::env::var("BENCH_OVERHEAD_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        overhead::run(events)
    })?;
    step("e2e", &e2e::run)?;
    step("density", &density::run)?;
    if figures.is_empty() {
        anyhow::bail!(
            "unknown benchmark `{which}`: use all, instantiate, overhead, e2e or density"
        );
    }
    println!("{}", table(&figures));
    Ok(())
}
