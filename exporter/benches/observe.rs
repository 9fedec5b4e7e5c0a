//! What recording through the `metrics` facade costs, against metrics-exporter-prometheus.
//!
//! Cost of recording through the `metrics` facade with Vigil's recorder, against
//! metrics-exporter-prometheus in the same run.
//!
//! - `handle`: the engine's way: a `Counter`/`Histogram` handle obtained once, then used.
//! - `macro`: `counter!(name, labels)` at every call (key hashing and registry lookup included).
//! - `contended_2_threads`: two threads hammering the same handle; time per operation per thread.

mod common;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use exporter::catalog::vllm;
use metrics::{Counter, Histogram, Recorder};

fn counter_handle(recorder: &dyn Recorder) -> Counter {
    metrics::with_local_recorder(
        recorder,
        || metrics::counter!(vllm::PROMPT_TOKENS.name, "model_name" => common::MODEL, "engine" => "0"),
    )
}

fn histogram_handle(recorder: &dyn Recorder) -> Histogram {
    metrics::with_local_recorder(
        recorder,
        || metrics::histogram!(vllm::E2E_REQUEST_LATENCY_SECONDS.name, "model_name" => common::MODEL, "engine" => "0"),
    )
}

/// Runs `op` `iters` times on each of two threads at once; returns the wall time, i.e. the time
/// per operation per thread once divided by `iters`.
fn contended(iters: u64, op: impl Fn() + Sync) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let run = || {
            barrier.wait();
            let start = Instant::now();
            for _ in 0..iters {
                op();
            }
            start.elapsed()
        };
        let a = s.spawn(run);
        let b = s.spawn(run);
        a.join().unwrap().max(b.join().unwrap())
    })
}

fn bench(c: &mut Criterion) {
    let vigil = common::vigil();
    let peer = common::peer();
    let recorders: [(&str, &dyn Recorder); 2] =
        [("vigil", &vigil), ("metrics_exporter_prometheus", &peer)];

    for (name, recorder) in recorders {
        let counter = counter_handle(recorder);
        let histogram = histogram_handle(recorder);
        let mut g = c.benchmark_group(format!("observe/{name}"));
        g.bench_function("counter_increment/handle", |b| {
            b.iter(|| counter.increment(black_box(1)))
        });
        g.bench_function("histogram_record/handle", |b| {
            let mut v = 0.0f64;
            b.iter(|| {
                v = if v > 100.0 { 0.0 } else { v + 0.37 };
                histogram.record(black_box(v))
            })
        });
        g.bench_function("counter_increment/macro", |b| {
            metrics::with_local_recorder(recorder, || {
                b.iter(|| {
                    metrics::counter!(vllm::PROMPT_TOKENS.name, "model_name" => common::MODEL, "engine" => "0")
                        .increment(black_box(1))
                })
            })
        });
        g.bench_function("histogram_record/macro", |b| {
            metrics::with_local_recorder(recorder, || {
                b.iter(|| {
                    metrics::histogram!(vllm::E2E_REQUEST_LATENCY_SECONDS.name, "model_name" => common::MODEL, "engine" => "0")
                        .record(black_box(0.7))
                })
            })
        });
        g.bench_function("counter_increment/contended_2_threads", |b| {
            b.iter_custom(|iters| contended(iters, || counter.increment(black_box(1))))
        });
        g.bench_function("histogram_record/contended_2_threads", |b| {
            b.iter_custom(|iters| contended(iters, || histogram.record(black_box(0.7))))
        });
        g.finish();
        if name == "metrics_exporter_prometheus" {
            // Its histograms keep raw samples until rendered; drain them so memory stays flat.
            peer.handle().run_upkeep();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
