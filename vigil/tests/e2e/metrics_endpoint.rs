//! `vigil serve` end to end: the real binary, scraped over HTTP and linted by promtool.

use crate::common;

use common::{promtool_problems, Vigil};
use exporter::catalog::{self, vllm, Kind};
use exporter::MinorVersion;
use exporter::{visibility, Visibility};

/// The sample names a catalog entry exposes in the Prometheus text format.
fn first_sample_name(def: &catalog::MetricDef) -> String {
    match def.kind {
        Kind::Counter => format!("{}_total{{", def.name),
        Kind::Gauge => format!("{}{{", def.name),
        Kind::Histogram => format!("{}_bucket{{", def.name),
    }
}

#[test]
fn every_visible_series_exists_at_zero_from_startup_and_promtool_accepts_it() {
    let vigil = Vigil::serve(&["--served-model-name", "smol"]);
    let (status, ctype, body) = vigil.get("/metrics", None);
    assert_eq!(status, 200);
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(promtool_problems(&body), Vec::<String>::new(), "{body}");

    let running = exporter::Running::current();
    // vLLM's series and the probes' status exist from start-up; the hardware series exist where
    // the hardware does (tests/probes.rs checks them).
    for def in vllm::ALL.iter().chain(catalog::probe::ALL).copied() {
        let shown = visibility(def, running, None) == Visibility::Shown;
        let present = body.contains(&first_sample_name(def));
        assert_eq!(
            present, shown,
            "{}: shown={shown} present={present}",
            def.name
        );
    }
    // Pre-created at zero with the served name and engine 0, every enum value included.
    for reason in vllm::FINISHED_REASONS {
        let line = format!(
            "vllm:request_success_total{{engine=\"0\",finished_reason=\"{reason}\",model_name=\"smol\"}} 0.0\n"
        );
        assert!(body.contains(&line), "missing {line}");
    }
    assert!(body.contains(
        "vllm:engine_sleep_state{engine=\"0\",model_name=\"smol\",sleep_state=\"awake\"} 1.0\n"
    ));
    assert!(body.contains(
        "vllm:e2e_request_latency_seconds_count{engine=\"0\",model_name=\"smol\"} 0.0\n"
    ));
    assert!(body.contains(
        "vllm:admission_rejections_total{model_name=\"smol\",reason=\"max_num_queued_reqs\"} 0.0\n"
    ));
    // Every field of vLLM 0.33's CacheConfig as a label (vllm/config/cache.py), plus engine,
    // with Vigil's cache settings in Python's spelling.
    let info = body
        .lines()
        .find(|l| l.starts_with("vllm:cache_config_info{"))
        .expect("vllm:cache_config_info");
    assert!(info.ends_with("} 1.0"), "{info}");
    let vllm_033_fields = [
        "block_size",
        "user_specified_block_size",
        "kv_cache_layout",
        "prefix_match_unit",
        "gpu_memory_utilization",
        "cache_dtype",
        "is_attention_free",
        "num_gpu_blocks_override",
        "sliding_window",
        "enable_prefix_caching",
        "prefix_caching_hash_algo",
        "prefix_cache_retention_interval",
        "kv_cache_dtype_skip_layers",
        "mamba_page_size_padded",
        "skip_page_size_padded",
        "mamba_block_size",
        "mamba_cache_dtype",
        "mamba_ssm_cache_dtype",
        "mamba_cache_mode",
        "enable_mamba_shared_prefix_checkpoint",
        "replayssm_buffer_len",
        "use_replayssm",
        "use_kda_recoverssm",
        "num_gpu_blocks",
        "num_cpu_blocks",
        "simple_cpu_offload_num_blocks",
        "effective_attention_block_size",
        "kv_cache_size_tokens",
        "kv_cache_max_concurrency",
        "hash_block_size",
        "cache_hit_alignment_tokens",
        "kv_sharing_fast_prefill",
        "swa_bounded_replay",
        "kv_cache_memory_bytes",
        "kv_offloading_size",
        "kv_offloading_backend",
        "_block_size_resolved",
    ];
    let labels: Vec<&str> = info[info.find('{').unwrap() + 1..info.rfind('}').unwrap()]
        .split("\",")
        .map(|kv| kv.split('=').next().unwrap())
        .collect();
    assert_eq!(labels.len(), vllm_033_fields.len() + 1, "{info}");
    for field in vllm_033_fields.iter().chain(&["engine"]) {
        assert!(labels.contains(field), "{field} missing: {info}");
    }
    for pair in [
        "block_size=\"16\"",
        "cache_dtype=\"auto\"",
        "enable_prefix_caching=\"True\"",
        "engine=\"0\"",
        "gpu_memory_utilization=\"0.9\"",
        "num_cpu_blocks=\"None\"",
        // 1 GiB over blocks of 16 tokens x 30 layers x K and V x 3 KV heads x 64 dims x 2 bytes
        // (f16, the CPU's cache beside quantized weights): 2912 blocks, the first one reserved.
        "num_gpu_blocks=\"2912\"",
        "num_gpu_blocks_override=\"None\"",
        "kv_cache_size_tokens=\"46576\"",
        "kv_cache_memory_bytes=\"1073741824\"",
        "prefix_caching_hash_algo=\"sha256\"",
    ] {
        assert!(info.contains(pair), "{pair}: {info}");
    }
    // Every histogram renders buckets (never a summary).
    assert!(!body.contains("quantile="));
    assert!(!body.contains(" summary\n"));
}

#[test]
fn openmetrics_when_asked() {
    let vigil = Vigil::serve(&["--served-model-name", "smol", "--enable-exemplars"]);
    let (status, ctype, body) = vigil.get(
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0"),
    );
    assert_eq!(status, 200);
    assert_eq!(
        ctype,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(body.ends_with("# EOF\n"));
    assert!(body.contains("# TYPE vllm:generation_tokens counter\nvllm:generation_tokens_total{engine=\"0\",model_name=\"smol\"} 0.0\n"));
    // No requests were served, so no exemplar exists: none is invented.
    assert!(!body.contains("request_id"));
}

#[test]
fn hidden_metrics_come_back_with_the_flag() {
    let legacy = [
        &vllm::GPU_CACHE_USAGE_PERC,
        &vllm::GPU_PREFIX_CACHE_QUERIES,
        &vllm::GPU_PREFIX_CACHE_HITS,
        &vllm::TIME_PER_OUTPUT_TOKEN_SECONDS,
    ];
    let plain = Vigil::serve(&[]).metrics();
    for def in legacy {
        assert!(
            !plain.contains(def.name),
            "{} shown without the flag",
            def.name
        );
    }
    // Vigil's own line's previous minor is accepted, and does not bring back vLLM's series.
    let vigil_prev = MinorVersion::running().previous().unwrap().to_string();
    let other = Vigil::serve(&["--show-hidden-metrics-for-version", &vigil_prev]).metrics();
    for def in legacy {
        assert!(
            !other.contains(def.name),
            "{} shown with {vigil_prev}",
            def.name
        );
    }
    // The value a vLLM 0.33 operator passes.
    let vigil = Vigil::serve(&["--show-hidden-metrics-for-version", "0.32"]);
    let body = vigil.metrics();
    for def in legacy {
        assert!(
            body.contains(&first_sample_name(def)),
            "{} hidden with the flag",
            def.name
        );
        let help = format!(
            "DEPRECATED: Use {} instead.\n",
            def.deprecated.unwrap().use_instead.name
        );
        assert!(body.contains(&help), "{} lacks its notice", def.name);
    }
    assert_eq!(promtool_problems(&body), Vec::<String>::new());
}

#[test]
fn disable_log_stats_exposes_no_engine_series() {
    let vigil = Vigil::serve(&["--disable-log-stats"]);
    let body = vigil.metrics();
    assert!(!body.contains("vllm:"), "{body}");
    assert!(vigil.log().contains("--disable-log-stats"));
}

#[test]
fn served_model_name_is_escaped() {
    // Quotes and backslashes are escaped; control characters are refused at the command line
    // (cli::bad_values_name_their_flag), and their escaping is the renderer's unit test.
    let vigil = Vigil::serve(&["--served-model-name", "we\"ird\\name"]);
    let body = vigil.metrics();
    assert!(body.contains(
        "vllm:num_requests_running{engine=\"0\",model_name=\"we\\\"ird\\\\name\"} 0.0\n"
    ));
    assert_eq!(promtool_problems(&body), Vec::<String>::new());
}

#[test]
fn token_buckets_follow_max_model_len_and_custom_buckets() {
    let vigil = Vigil::serve(&[
        "--served-model-name",
        "m",
        "--max-model-len",
        "4k",
        "--custom-histogram-buckets",
        r#"{"request_latency": [0.5, 2, 1000000]}"#,
    ]);
    let body = vigil.metrics();
    assert!(body.contains(
        "vllm:request_prompt_tokens_bucket{engine=\"0\",le=\"2000.0\",model_name=\"m\"} 0.0\n"
    ));
    assert!(!body.contains("vllm:request_prompt_tokens_bucket{engine=\"0\",le=\"5000.0\""));
    let les: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("vllm:e2e_request_latency_seconds_bucket{"))
        .map(|l| l.split("le=\"").nth(1).unwrap().split('"').next().unwrap())
        .collect();
    assert_eq!(les, ["0.5", "2.0", "1e+06", "+Inf"]);
}

#[test]
fn token_buckets_default_to_the_models_context_length() {
    // SmolLM2's context is 8192 tokens: buckets end at 5000.
    let body = Vigil::serve(&["--served-model-name", "m"]).metrics();
    assert!(body.contains(
        "vllm:request_prompt_tokens_bucket{engine=\"0\",le=\"5000.0\",model_name=\"m\"} 0.0\n"
    ));
    assert!(!body.contains("le=\"10000.0\""));
}

#[test]
fn health_and_version() {
    let vigil = Vigil::serve(&[]);
    let (status, _, body) = vigil.get("/health", None);
    assert_eq!((status, body.as_str()), (200, ""));
    let (status, ctype, body) = vigil.get("/version", None);
    assert_eq!(status, 200);
    assert!(ctype.starts_with("application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let (status, _, _) = vigil.get("/no-such-route", None);
    assert_eq!(status, 404);
}

#[test]
fn the_promtool_check_itself_catches_problems() {
    // A sanity check of the helper the tests above rely on: a parse error and a lint problem
    // outside vLLM's inherent ones are both reported.
    assert!(!promtool_problems("vllm:x{a=\"b\" 1\n").is_empty());
    assert!(
        !promtool_problems("# HELP foo_bytes x\n# TYPE foo_bytes counter\nfoo_bytes 1\n")
            .is_empty()
    );
    assert!(
        promtool_problems("# HELP foo_total x\n# TYPE foo_total counter\nfoo_total 1\n").is_empty()
    );
}

/// Asked for gzip (as Prometheus asks by default), `/metrics` answers compressed, and the
/// inflated body is the same valid exposition; asked for nothing, plain text.
#[test]
fn metrics_are_gzip_compressed_when_the_scraper_asks() {
    use std::io::Read;
    let vigil = Vigil::serve(&[]);
    let (head, body) = common::raw_get(vigil.addr, "/metrics", "Accept-Encoding: gzip\r\n");
    assert!(head.contains("content-encoding: gzip"), "{head}");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .expect("a gzip body");
    assert!(text.contains("vllm:num_requests_running{"), "{text}");
    assert_eq!(promtool_problems(&text), Vec::<String>::new());
    assert!(
        body.len() * 4 < text.len(),
        "{} of {}",
        body.len(),
        text.len()
    );
    let (head, body) = common::raw_get(vigil.addr, "/metrics", "");
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("vllm:num_requests_running{"));
}

/// `--kv-cache-dtype` decides the CPU cache's element, so the blocks 1 GiB holds: f32 takes
/// twice f16's bytes; bfloat16 as many as f16.
#[test]
fn the_kv_cache_dtype_sets_the_cpu_cache_size() {
    for (dtype, blocks) in [("float32", 1456), ("bfloat16", 2912), ("float16", 2912)] {
        let vigil = Vigil::serve(&["--served-model-name", "smol", "--kv-cache-dtype", dtype]);
        let body = vigil.metrics();
        let info = body
            .lines()
            .find(|l| l.starts_with("vllm:cache_config_info{"))
            .unwrap();
        assert!(
            info.contains(&format!("num_gpu_blocks=\"{blocks}\"")),
            "{dtype}: {info}"
        );
        assert!(
            info.contains(&format!("cache_dtype=\"{dtype}\"")),
            "{dtype}: {info}"
        );
        assert!(vigil.log().contains("CPU backend ready"), "{}", vigil.log());
    }
}
