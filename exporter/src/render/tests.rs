//! The renderer's output against the Prometheus and OpenMetrics text formats.

use super::*;
use crate::catalog::vllm;
use crate::exemplar::with_request_id;
use crate::{Exporter, ExporterConfig, MinorVersion};

fn exporter(f: impl FnOnce(&mut ExporterConfig)) -> Exporter {
    let mut config = ExporterConfig::new(1024);
    config.created_series = false;
    f(&mut config);
    let e = Exporter::new(config);
    e.precreate("m", &["0"]);
    e
}

/// The lines of `text` that belong to family `name` (its HELP/TYPE and samples).
fn family<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            let l = l
                .strip_prefix("# HELP ")
                .or_else(|| l.strip_prefix("# TYPE "))
                .unwrap_or(l);
            let Some(rest) = l.strip_prefix(name) else {
                return false;
            };
            let rest = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| rest.strip_prefix(s))
                .unwrap_or(rest);
            rest.starts_with([' ', '{'])
        })
        .collect()
}

#[test]
fn counter_in_prometheus_text() {
    let e = exporter(|_| {});
    metrics::with_local_recorder(&e, || {
        metrics::counter!(vllm::PROMPT_TOKENS.name, "model_name" => "m", "engine" => "0")
            .increment(1_234_567);
    });
    let text = e.render(Format::Prometheus);
    assert_eq!(
        family(&text, "vllm:prompt_tokens_total"),
        vec![
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            "vllm:prompt_tokens_total{engine=\"0\",model_name=\"m\"} 1.234567e+06",
        ]
    );
}

#[test]
fn created_series_follow_prometheus_client() {
    let e = exporter(|c| c.created_series = true);
    let text = e.render(Format::Prometheus);
    let created = family(&text, "vllm:num_preemptions_created");
    assert_eq!(
        created[0],
        "# HELP vllm:num_preemptions_created Cumulative number of preemption from the engine."
    );
    assert_eq!(created[1], "# TYPE vllm:num_preemptions_created gauge");
    let value: f64 = created[2].rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value > 1.6e9 && value < 1e10, "{value}");
    assert!(text.contains("# TYPE vllm:time_to_first_token_seconds_created gauge\n"));
    let om = e.render(Format::OpenMetrics);
    assert!(!om.contains("# TYPE vllm:num_preemptions_created"));
    assert!(om.contains("\nvllm:num_preemptions_created{engine=\"0\",model_name=\"m\"} 1."));
}

#[test]
fn histogram_lines_are_cumulative_with_le_sorted_among_labels() {
    let e = exporter(|_| {});
    metrics::with_local_recorder(&e, || {
        let h =
            metrics::histogram!(vllm::REQUEST_PARAMS_N.name, "model_name" => "m", "engine" => "0");
        for v in [1.0, 2.0, 2.0, 7.0, 100.0] {
            h.record(v);
        }
    });
    let text = e.render(Format::Prometheus);
    assert_eq!(
        family(&text, "vllm:request_params_n"),
        vec![
            "# HELP vllm:request_params_n Histogram of the n request parameter.",
            "# TYPE vllm:request_params_n histogram",
            "vllm:request_params_n_bucket{engine=\"0\",le=\"1.0\",model_name=\"m\"} 1.0",
            "vllm:request_params_n_bucket{engine=\"0\",le=\"2.0\",model_name=\"m\"} 3.0",
            "vllm:request_params_n_bucket{engine=\"0\",le=\"5.0\",model_name=\"m\"} 3.0",
            "vllm:request_params_n_bucket{engine=\"0\",le=\"10.0\",model_name=\"m\"} 4.0",
            "vllm:request_params_n_bucket{engine=\"0\",le=\"20.0\",model_name=\"m\"} 4.0",
            "vllm:request_params_n_bucket{engine=\"0\",le=\"+Inf\",model_name=\"m\"} 5.0",
            "vllm:request_params_n_count{engine=\"0\",model_name=\"m\"} 5.0",
            "vllm:request_params_n_sum{engine=\"0\",model_name=\"m\"} 112.0",
        ]
    );
}

#[test]
fn request_token_buckets_follow_max_model_len() {
    let e = exporter(|_| {});
    let text = e.render(Format::Prometheus);
    let les: Vec<&str> = family(&text, "vllm:request_prompt_tokens_bucket")
        .iter()
        .map(|l| l.split("le=\"").nth(1).unwrap().split('"').next().unwrap())
        .collect();
    assert_eq!(
        les,
        [
            "1.0", "2.0", "5.0", "10.0", "20.0", "50.0", "100.0", "200.0", "500.0", "1000.0",
            "+Inf"
        ]
    );
}

#[test]
fn iteration_tokens_keeps_its_total_suffix_as_a_histogram() {
    let text = exporter(|_| {}).render(Format::Prometheus);
    assert!(text.contains("# TYPE vllm:iteration_tokens_total histogram\n"));
    assert!(text.contains(
        "vllm:iteration_tokens_total_bucket{engine=\"0\",le=\"16384.0\",model_name=\"m\"} 0.0\n"
    ));
    assert!(!text.contains("vllm:iteration_tokens_total_total"));
}

#[test]
fn label_values_are_escaped() {
    let mut config = ExporterConfig::new(1024);
    config.created_series = false;
    let e = Exporter::new(config);
    e.precreate("a\"b\\c\nd", &["0"]);
    for format in [Format::Prometheus, Format::OpenMetrics] {
        let text = e.render(format);
        assert!(
            text.contains(
                "vllm:num_requests_running{engine=\"0\",model_name=\"a\\\"b\\\\c\\nd\"} 0.0\n"
            ),
            "{format:?}"
        );
        // No raw newline inside any sample line: every line starts with '#' or a metric name.
        assert!(
            text.lines().all(|l| l.starts_with('#')
                || crate::catalog::all().any(|d| l.starts_with(d.name))),
            "{format:?}"
        );
    }
}

#[test]
fn openmetrics_families_and_eof() {
    let e = exporter(|_| {});
    let om = e.render(Format::OpenMetrics);
    assert!(om.ends_with("\n# EOF\n"));
    assert_eq!(om.matches("# EOF").count(), 1);
    assert!(om.contains("# TYPE vllm:prompt_tokens counter\nvllm:prompt_tokens_total{"));
    assert!(om.contains(
        "# TYPE vllm:estimated_flops_per_gpu counter\nvllm:estimated_flops_per_gpu_total{"
    ));
    assert!(om.contains("# TYPE vllm:iteration_tokens_total histogram\n"));
    assert!(!e.render(Format::Prometheus).contains("# EOF"));
}

#[test]
fn exemplars_only_in_openmetrics_and_only_when_enabled() {
    let observe = |e: &Exporter| {
        metrics::with_local_recorder(e, || {
            let ttft = metrics::histogram!(vllm::TIME_TO_FIRST_TOKEN_SECONDS.name, "model_name" => "m", "engine" => "0");
            with_request_id("cmpl-\"42\"", || ttft.record(0.03));
            ttft.record(0.5);
            let iter = metrics::histogram!(vllm::ITERATION_TOKENS.name, "model_name" => "m", "engine" => "0");
            with_request_id("cmpl-1", || iter.record(3.0));
        })
    };
    let on = exporter(|c| c.enable_exemplars = true);
    observe(&on);
    let om = on.render(Format::OpenMetrics);
    let line = om
        .lines()
        .find(|l| l.starts_with("vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"0.04\""))
        .unwrap();
    let (sample, exemplar) = line.split_once(" # ").unwrap();
    assert!(sample.ends_with("} 1.0"), "{line}");
    let mut parts = exemplar.split(' ');
    assert_eq!(parts.next(), Some("{request_id=\"cmpl-\\\"42\\\"\"}"));
    assert_eq!(parts.next(), Some("0.03"));
    let ts: f64 = parts.next().unwrap().parse().unwrap();
    assert!(ts > 1.6e9);
    // Only the bucket the observation landed in carries it; 0.5 had no request id.
    assert_eq!(om.matches("# {request_id=").count(), 1, "{om}");
    // Per-step histograms never carry request ids; the text format never carries exemplars.
    assert!(!on.render(Format::Prometheus).contains("request_id"));

    let off = exporter(|_| {});
    observe(&off);
    assert!(!off.render(Format::OpenMetrics).contains("request_id"));
}

#[test]
fn a_traced_requests_exemplar_carries_its_trace_id() {
    let e = exporter(|c| c.enable_exemplars = true);
    metrics::with_local_recorder(&e, || {
        let e2e = metrics::histogram!(vllm::E2E_REQUEST_LATENCY_SECONDS.name, "model_name" => "m", "engine" => "0");
        crate::exemplar::with_request("cmpl-7", Some("4bf92f3577b34da6a3ce929d0e0e4736"), || {
            e2e.record(0.2)
        });
    });
    let om = e.render(Format::OpenMetrics);
    assert!(
        om.contains(
            " # {request_id=\"cmpl-7\",trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.2 "
        ),
        "{om}"
    );
}

#[test]
fn legacy_aliases_hidden_by_default_and_shown_with_the_flag() {
    let record = |e: &Exporter| {
        metrics::with_local_recorder(e, || {
            metrics::gauge!(vllm::KV_CACHE_USAGE_PERC.name, "model_name" => "m", "engine" => "0")
                .set(0.25);
            metrics::counter!(vllm::PREFIX_CACHE_HITS.name, "model_name" => "m", "engine" => "0")
                .increment(32);
        })
    };
    let running = crate::gating::VLLM_CATALOG;
    let prev = running
        .previous()
        .expect("the catalog's vLLM version has a previous minor");
    assert_eq!(
        vllm::LEGACY_DEPRECATED_IN,
        prev,
        "legacy names are deprecated in the minor before the catalog's vLLM version"
    );

    let hidden = exporter(|_| {});
    record(&hidden);
    let text = hidden.render(Format::Prometheus);
    for def in [
        &vllm::GPU_CACHE_USAGE_PERC,
        &vllm::GPU_PREFIX_CACHE_QUERIES,
        &vllm::GPU_PREFIX_CACHE_HITS,
        &vllm::TIME_PER_OUTPUT_TOKEN_SECONDS,
    ] {
        assert!(!text.contains(def.name), "{} should be hidden", def.name);
    }

    // Vigil's own line's value does not bring back vLLM's series.
    let vigil_line = exporter(|c| c.show_hidden_for = MinorVersion::running().previous());
    record(&vigil_line);
    assert!(!vigil_line
        .render(Format::Prometheus)
        .contains("vllm:gpu_cache_usage_perc"));

    let shown = exporter(|c| c.show_hidden_for = Some(prev));
    record(&shown);
    let text = shown.render(Format::Prometheus);
    assert!(text.contains(
        "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.DEPRECATED: Use vllm:kv_cache_usage_perc instead.\n"
    ));
    assert!(text.contains("vllm:gpu_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25\n"));
    assert!(text.contains("vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25\n"));
    assert!(text.contains("vllm:gpu_prefix_cache_hits_total{engine=\"0\",model_name=\"m\"} 32.0\n"));
    assert!(text.contains("# TYPE vllm:time_per_output_token_seconds histogram\n"));
    assert!(text.contains("vllm:time_per_output_token_seconds_bucket{engine=\"0\",le=\"0.01\",model_name=\"m\"} 0.0\n"));

    // In the version that deprecated them, they show without the flag; two versions on, never.
    let same = exporter(|c| c.running.vllm = prev);
    assert!(same
        .render(Format::Prometheus)
        .contains("vllm:gpu_cache_usage_perc{"));
    let later = exporter(|c| {
        c.running.vllm = MinorVersion::new(running.major, running.minor + 1);
        c.show_hidden_for = Some(prev);
    });
    assert!(!later
        .render(Format::Prometheus)
        .contains("vllm:gpu_cache_usage_perc"));
}

#[test]
fn disable_log_stats_renders_no_engine_series() {
    let e = exporter(|c| c.engine_stats = false);
    metrics::with_local_recorder(&e, || {
        metrics::counter!(vllm::PROMPT_TOKENS.name, "model_name" => "m", "engine" => "0")
            .increment(1);
    });
    assert_eq!(e.render(Format::Prometheus), "");
    assert_eq!(e.render(Format::OpenMetrics), "# EOF\n");
}

#[test]
fn uncatalogued_series_are_never_exposed_and_label_order_does_not_matter() {
    let e = exporter(|_| {});
    metrics::with_local_recorder(&e, || {
        metrics::counter!("vllm:not_in_catalog", "model_name" => "m").increment(1);
        metrics::counter!(vllm::PROMPT_TOKENS.name, "engine" => "0", "model_name" => "m")
            .increment(9);
        metrics::counter!(vllm::PROMPT_TOKENS.name, "model_name" => "m", "engine" => "0", "x" => "y").increment(5);
        metrics::gauge!(vllm::NUM_PREEMPTIONS.name, "model_name" => "m", "engine" => "0").set(3.0);
    });
    let text = e.render(Format::Prometheus);
    assert!(!text.contains("not_in_catalog"));
    assert!(!text.contains("x=\"y\""));
    // Labels given in another order reach the pre-created series, not a duplicate.
    assert!(text.contains("vllm:prompt_tokens_total{engine=\"0\",model_name=\"m\"} 9.0\n"));
    // A gauge under a counter's name is not exposed as either.
    assert!(text.contains("vllm:num_preemptions_total{engine=\"0\",model_name=\"m\"} 0.0\n"));
    assert_eq!(text.matches("vllm:num_preemptions").count(), 3);
    assert_eq!(text.matches("vllm:prompt_tokens_total{").count(), 1);
}

#[test]
fn accept_negotiation() {
    assert_eq!(Format::from_accept(None), Format::Prometheus);
    assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
    assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
    // What Prometheus 2.x sends.
    let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(Format::from_accept(Some(prom)), Format::OpenMetrics);
    assert_eq!(
        Format::from_accept(Some("Application/OpenMetrics-Text")),
        Format::OpenMetrics
    );
    assert_eq!(
        Format::from_accept(Some("application/openmetrics-text;q=0")),
        Format::Prometheus
    );
}

#[test]
fn render_is_deterministic_in_catalog_order() {
    let e = exporter(|_| {});
    let a = e.render(Format::Prometheus);
    assert_eq!(a, e.render(Format::Prometheus));
    let order: Vec<&str> = a
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let running = order
        .iter()
        .position(|n| *n == "vllm:num_requests_running")
        .unwrap();
    let info = order.iter().position(|n| *n == "vllm:cache_config_info");
    assert_eq!(running, 0);
    assert_eq!(
        info, None,
        "cache_config_info appears once an engine sets it"
    );
}

/// Dynamo's families come out as Dynamo's Rust exporter (the `prometheus` crate's
/// `TextEncoder`) writes them: no `_created` even when prometheus_client's families have it,
/// Rust's shortest numbers, `le` last, `_sum` before `_count`; vLLM's keep prometheus_client's.
#[test]
fn dynamo_families_are_written_as_dynamos_rust_exporter_writes_them() {
    use crate::catalog::dynamo;
    let e = exporter(|c| c.created_series = true);
    metrics::with_local_recorder(&e, || {
        metrics::gauge!(dynamo::MODEL_CONTEXT_LENGTH.name, "model" => "m").set(8192.0);
        metrics::histogram!(dynamo::FRONTEND_CACHED_TOKENS.name, "model" => "m").record(32.0);
        metrics::counter!(vllm::PROMPT_TOKENS.name, "model_name" => "m", "engine" => "0")
            .increment(3);
    });
    let text = e.render(Format::Prometheus);
    assert_eq!(
        family(&text, "dynamo_frontend_model_context_length"),
        [
            "# HELP dynamo_frontend_model_context_length Maximum context length in tokens for a worker serving the model",
            "# TYPE dynamo_frontend_model_context_length gauge",
            "dynamo_frontend_model_context_length{model=\"m\"} 8192",
        ]
    );
    let cached = family(&text, "dynamo_frontend_cached_tokens");
    let n = cached.len();
    assert_eq!(
        cached[2..4],
        [
            "dynamo_frontend_cached_tokens_bucket{model=\"m\",le=\"0\"} 0",
            "dynamo_frontend_cached_tokens_bucket{model=\"m\",le=\"100\"} 1",
        ],
        "{cached:#?}"
    );
    assert_eq!(
        cached[n - 3..],
        [
            "dynamo_frontend_cached_tokens_bucket{model=\"m\",le=\"+Inf\"} 1",
            "dynamo_frontend_cached_tokens_sum{model=\"m\"} 32",
            "dynamo_frontend_cached_tokens_count{model=\"m\"} 1",
        ]
    );
    assert!(!text.contains("dynamo_frontend_cached_tokens_created"));
    // vLLM's families keep prometheus_client's form.
    assert!(text.contains("vllm:prompt_tokens_total{engine=\"0\",model_name=\"m\"} 3.0\n"));
    assert!(text.contains("vllm:prompt_tokens_created{"));
}
