//! The generated Grafana dashboard's queries, run against a real Prometheus.
//!
//! The Grafana dashboard `cargo xtask dashboard` generates (grafana/vigil.json), checked the way
//! Grafana would run it: every panel query, with the dashboard's variables filled in, goes to a
//! real Prometheus that scraped a real `vigil serve` under load, and must return data.
//!
//! No GPU here: `vigil serve` runs on the simulated node (`cuda-sim`'s NVML with the
//! failing-node profile: GPUs at work, one that reports an XID and is lost, one throttling), so
//! the GPU panels read the series the NVML probe itself polled.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::*;
use serde_json::Value;

/// Every (panel title, expression) of the dashboard, rows included.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                panel["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

/// Requests of several shapes from a few clients for `duration`.
fn load(vigil: &Vigil, duration: Duration) {
    let started = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let completions = vigil.url("/v1/completions");
            let chat = vigil.url("/v1/chat/completions");
            std::thread::spawn(move || {
                let mut n = 0;
                while started.elapsed() < duration {
                    let (url, body) = match (i + n) % 4 {
                        0 => (&completions, format!(r#"{{"prompt": "Write a story number {n}", "max_tokens": 24}}"#)),
                        1 => (&chat, format!(r#"{{"messages": [{{"role": "user", "content": "Say hi {n}"}}], "max_tokens": 16, "stream": true}}"#)),
                        2 => (&completions, format!(r#"{{"prompt": "Count: 1, 2, 3,", "max_tokens": 12, "stop": [" 5"], "seed": {n}}}"#)),
                        _ => (&completions, format!(r#"{{"prompt": "Mood {n}:", "max_tokens": 8, "guided_choice": ["happy", "sad"]}}"#)),
                    };
                    let (status, text) = http_post(url, body.as_bytes(), &[]);
                    assert_eq!(status, 200, "{text}");
                    n += 1;
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn every_panel_query_returns_data_from_prometheus_scraping_vigil_under_load() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana/vigil.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard JSON");
    let queries = queries(&dashboard);
    assert!(queries.len() > 40, "{} queries", queries.len());

    let node = simulated_node("failing-node");
    let env: Vec<(&str, &str)> = node.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let vigil = Vigil::serve_env(&["--served-model-name", "smollm", "--device", "cpu"], &env);
    let prometheus = Prometheus::start(&[("vigil", vigil.addr.to_string())]);
    prometheus.wait_up(&["vigil"]);
    load(&vigil, Duration::from_secs(15));
    // Two more scrapes after the load, so rates see its end.
    std::thread::sleep(Duration::from_secs(2));

    let mut empty = Vec::new();
    for (title, expr) in &queries {
        let promql = expr
            .replace("$model_name", "smollm")
            .replace("$instance", ".*")
            .replace("$__rate_interval", "1m");
        let result = prometheus.query(&promql);
        let finite = result.iter().any(|s| {
            s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        });
        if !finite {
            empty.push(format!("{title}: {promql} -> {result:?}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panel queries without data:\n{}",
        empty.join("\n")
    );
}

#[test]
fn the_dashboard_reads_only_catalog_series_and_has_every_panel_of_vllms() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana/vigil.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (title, expr) in queries(&dashboard) {
        for (series, def) in series_in_promql(&expr) {
            let def = def.unwrap_or_else(|| panic!("{title}: {series} is not in the catalog"));
            assert!(def.deprecated.is_none(), "{title}: {series} is deprecated");
        }
    }
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    // vLLM's dashboard (examples/online_serving/prometheus_grafana/grafana.json), panel by panel.
    for vllm in [
        "E2E Request Latency",
        "Token Throughput",
        "Time Per Output Token Latency",
        "Scheduler State",
        "Time To First Token Latency",
        "Cache Utilization",
        "Request Prompt Length",
        "Request Generation Length",
        "Finish Reason",
        "Queue Time",
        "Requests Prefill and Decode Time",
        "Max Generation Token in Sequence Group",
    ] {
        assert!(titles.contains(&vllm), "vLLM's panel {vllm:?} is missing");
    }
    for row in [
        "Why is it slow?",
        "vLLM",
        "GPU (NVML)",
        "Host scheduling (eBPF)",
        "Dynamo frontend",
        "Telemetry",
    ] {
        assert!(titles.contains(&row), "row {row:?}");
    }
    assert!(titles.contains(&"Trace spans/s by outcome"));
}
