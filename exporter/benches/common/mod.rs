//! The recorders the exporter's benchmarks compare, each holding the whole catalog.
//!
//! Set-up shared by the exporter's benchmarks: Vigil's recorder and the peer
//! (metrics-exporter-prometheus), each holding every pre-created series of the catalog.

#![allow(dead_code)]

use exporter::catalog::{self, Kind};
use exporter::{Exporter, ExporterConfig};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

pub(crate) const MODEL: &str = "SmolLM2-135M-Instruct";
pub(crate) const ENGINES: &[&str] = &["0"];
pub(crate) const MAX_MODEL_LEN: u64 = 8192;

/// Vigil's exporter with every series pre-created (as `vigil serve` does at start-up).
pub(crate) fn vigil() -> Exporter {
    let exporter = Exporter::new(ExporterConfig::new(MAX_MODEL_LEN));
    exporter.precreate(MODEL, ENGINES);
    exporter
}

/// metrics-exporter-prometheus with the catalog's buckets and the same series registered.
pub(crate) fn peer() -> PrometheusRecorder {
    let buckets = ExporterConfig::new(MAX_MODEL_LEN).buckets;
    let mut builder = PrometheusBuilder::new();
    for def in catalog::all().filter(|d| d.kind == Kind::Histogram && d.mirror_of.is_none()) {
        builder = builder
            .set_buckets_for_metric(
                Matcher::Full(def.name.to_owned()),
                &buckets.bounds(def.buckets.unwrap()),
            )
            .expect("non-empty buckets");
    }
    let recorder = builder.build_recorder();
    metrics::with_local_recorder(&recorder, || {
        catalog::describe_all();
        touch_every_series();
    });
    recorder
}

/// Registers every pre-creatable series through the facade (for recorders without `precreate`).
pub(crate) fn touch_every_series() {
    for def in catalog::all().filter(|d| d.precreate && d.mirror_of.is_none()) {
        for labels in catalog::precreated_label_sets(def, MODEL, ENGINES) {
            match def.kind {
                Kind::Counter => metrics::counter!(def.name, labels).increment(0),
                Kind::Gauge => metrics::gauge!(def.name, labels).set(0.0),
                Kind::Histogram => {
                    let _ = metrics::histogram!(def.name, labels);
                }
            }
        }
    }
}

/// One observation in every histogram and an increment of every counter: a realistic scrape.
pub(crate) fn observe_everything() {
    for def in catalog::all().filter(|d| d.precreate && d.mirror_of.is_none()) {
        for labels in catalog::precreated_label_sets(def, MODEL, ENGINES) {
            match def.kind {
                Kind::Counter => metrics::counter!(def.name, labels).increment(17),
                Kind::Gauge => metrics::gauge!(def.name, labels).set(0.5),
                Kind::Histogram => metrics::histogram!(def.name, labels).record(0.7),
            }
        }
    }
}
