//! What rendering the whole catalog costs, against metrics-exporter-prometheus.
//!
//! Render time of the full catalog (every pre-created series, each observed once), Vigil's
//! Prometheus text and OpenMetrics against metrics-exporter-prometheus in the same run, and the
//! Prometheus text compressed with gzip (what a scrape asking for it costs).

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use exporter::Format;

fn bench(c: &mut Criterion) {
    let vigil = common::vigil();
    metrics::with_local_recorder(&vigil, common::observe_everything);
    let peer = common::peer();
    metrics::with_local_recorder(&peer, common::observe_everything);
    let peer = peer.handle();

    let mut g = c.benchmark_group("render/full_catalog");
    g.bench_function("vigil/prometheus_text", |b| {
        b.iter(|| black_box(vigil.render(Format::Prometheus)))
    });
    g.bench_function("vigil/openmetrics", |b| {
        b.iter(|| black_box(vigil.render(Format::OpenMetrics)))
    });
    // What a scrape that asks for gzip (Prometheus does by default) costs on top.
    g.bench_function("vigil/prometheus_text+gzip", |b| {
        b.iter(|| black_box(exporter::gzip(vigil.render(Format::Prometheus).as_bytes())))
    });
    g.bench_function("metrics_exporter_prometheus/prometheus_text", |b| {
        b.iter(|| black_box(peer.render()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
