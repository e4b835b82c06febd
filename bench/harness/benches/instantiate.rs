//! Criterion: a fresh sandbox (run `Store` + instance) from the TAP
//! component's `InstancePre`. `cargo bench -p dphost-bench` after
//! `make build`; `make bench` prints p50/p99 from its own samples.

use criterion::{criterion_group, criterion_main, Criterion};
use dphost_bench::instantiate::Setup;
use std::time::Instant;

fn instantiation(c: &mut Criterion) {
    let setup = Setup::new().expect("set up the host (run `make build` first)");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    c.bench_function("store_and_instance", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    setup.instantiate_once().await.unwrap();
                }
                started.elapsed()
            })
        })
    });
}

criterion_group!(benches, instantiation);
criterion_main!(benches);
