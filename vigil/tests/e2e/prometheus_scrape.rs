//! A real Prometheus scrapes Vigil and its API shows what arrived.
//!
//! A real Prometheus server (Debian's package) scrapes Vigil, and its HTTP API shows that the
//! series arrived with the right types, HELP and labels, and that exemplars survive ingestion.

use crate::common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::prometheus::{encode, Prometheus};
use common::{wait_for, Vigil};
use exporter::catalog::{self, vllm, Kind};
use exporter::with_request_id;
use exporter::{Exporter, ExporterConfig};

/// Whether `def`'s series exist on this machine before any request: GPU series need a GPU (and
/// the eBPF ones root and BTF, which the tests have); Dynamo's request series appear with the
/// first request, as in Dynamo (tests/dynamo.rs checks them), its configuration gauges at once;
/// the node agent's series belong to `vigil probe` (tests/agent.rs).
fn on_this_host(def: &catalog::MetricDef) -> bool {
    let is = |family: &[&catalog::MetricDef]| family.iter().any(|g| std::ptr::eq(*g, def));
    let per_request = is(catalog::dynamo::ALL)
        && !def.name.contains("_model_")
        && !def.name.ends_with("_uptime_seconds");
    let gpu = is(catalog::gpu::ALL);
    !per_request && !is(catalog::agent::ALL) && (!gpu || Path::new("/dev/nvidiactl").exists())
}

#[test]
fn prometheus_ingests_every_series_with_types_help_and_labels() {
    assert!(
        Path::new("/usr/bin/prometheus").exists() || which("prometheus"),
        "prometheus must be installed"
    );
    let vigil = Vigil::serve(&["--served-model-name", "smol"]);
    let prom = Prometheus::start(&[("vigil", vigil.addr.to_string())]);
    prom.wait_up(&["vigil"]);

    // Types and HELP, as Prometheus recorded them from the (OpenMetrics) scrape.
    let metadata = prom.api("/api/v1/metadata");
    for def in catalog::all().filter(|d| d.deprecated.is_none() && on_this_host(d)) {
        let entry = &metadata[def.name][0];
        assert_eq!(entry["type"], def.kind.as_str(), "{}: {metadata}", def.name);
        assert_eq!(entry["help"], def.help, "{}", def.name);
    }

    // Labels: base labels on every engine series, every enum value, the le of each bucket.
    let success = wait_for("request_success samples", Duration::from_secs(30), || {
        let r = prom.query("vllm:request_success_total");
        (r.len() == vllm::FINISHED_REASONS.len()).then_some(r)
    });
    for s in &success {
        let m = &s["metric"];
        assert_eq!(m["model_name"], "smol");
        assert_eq!(m["engine"], "0");
        assert_eq!(m["job"], "vigil");
        assert!(vllm::FINISHED_REASONS.contains(&m["finished_reason"].as_str().unwrap()));
        assert_eq!(s["value"][1], "0");
    }
    let ttft_buckets = prom.query("vllm:time_to_first_token_seconds_bucket");
    assert_eq!(ttft_buckets.len(), 23, "22 bounds and +Inf");
    assert!(ttft_buckets.iter().any(|s| s["metric"]["le"] == "+Inf"));
    let iteration = prom.query("vllm:iteration_tokens_total_count");
    assert_eq!(iteration.len(), 1);
    let awake = prom.query("vllm:engine_sleep_state{sleep_state=\"awake\"}");
    assert_eq!(awake[0]["value"][1], "1");
    let info = prom.query("vllm:cache_config_info");
    assert_eq!(info[0]["metric"]["block_size"], "16");
    // Every non-deprecated family has at least one series in Prometheus.
    for def in catalog::all().filter(|d| d.deprecated.is_none() && on_this_host(d)) {
        let sample = match def.kind {
            Kind::Counter => format!("{}_total", def.name),
            Kind::Gauge => def.name.to_owned(),
            Kind::Histogram => format!("{}_count", def.name),
        };
        assert!(
            !prom.query(&format!("{{__name__=\"{sample}\"}}")).is_empty(),
            "{sample} missing"
        );
    }
}

#[test]
fn prometheus_stores_request_id_exemplars() {
    // An exporter in this process, with observations made here, served by the same route.
    let mut config = ExporterConfig::new(8192);
    config.enable_exemplars = true;
    let exporter = Exporter::new(config);
    exporter.precreate("m", &["0"]);
    metrics::with_local_recorder(&exporter, || {
        let ttft = metrics::histogram!(vllm::TIME_TO_FIRST_TOKEN_SECONDS.name, "model_name" => "m", "engine" => "0");
        let e2e = metrics::histogram!(vllm::E2E_REQUEST_LATENCY_SECONDS.name, "model_name" => "m", "engine" => "0");
        with_request_id("cmpl-e2e-1", || {
            ttft.record(0.07);
            e2e.record(1.2);
        });
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let router: axum::Router = exporter::router(exporter.clone());
    runtime.spawn(async move { axum::serve(listener, router).await });

    let prom = Prometheus::start(&[("exemplars", addr.to_string())]);
    prom.wait_up(&["exemplars"]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let found = wait_for("exemplars in prometheus", Duration::from_secs(30), || {
        let q = encode("vllm:time_to_first_token_seconds_bucket");
        let data = prom.api(&format!(
            "/api/v1/query_exemplars?query={q}&start={}&end={}",
            now - 600,
            now + 600
        ));
        let sets = data.as_array().unwrap().clone();
        (!sets.is_empty()).then_some(sets)
    });
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["seriesLabels"]["le"], "0.08");
    let ex = &found[0]["exemplars"][0];
    assert_eq!(ex["labels"]["request_id"], "cmpl-e2e-1");
    assert_eq!(ex["value"], "0.07");
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).exists()))
}
