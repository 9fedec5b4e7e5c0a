//! `cargo xtask bench`: the exporter's benchmarks beside Python's prometheus_client.
//!
//! `cargo xtask bench`: the exporter's criterion benchmarks beside Python's prometheus_client
//! doing the same observations and renders on the same catalog, in the same run, so that the
//! reported ratios do not depend on how busy the (shared, noisy) machine was.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use exporter::catalog::{self, vllm, Kind};
use exporter::ExporterConfig;
use serde_json::{json, Value};

use crate::workspace_root;

/// The label values the benchmarks use (the same as exporter/benches/common).
const MODEL: &str = "SmolLM2-135M-Instruct";
const MAX_MODEL_LEN: u64 = 8192;

pub(crate) fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    let status = Command::new(env!("CARGO"))
        .args(["bench", "-p", "vigil-exporter"])
        .current_dir(&root)
        .status()
        .context("running cargo bench")?;
    if !status.success() {
        bail!("cargo bench failed");
    }
    let rust = criterion_results(&root.join("target/criterion"))?;

    let catalog_path = root.join("target/bench-catalog.json");
    std::fs::write(&catalog_path, catalog_json().to_string())?;
    let script = root.join("xtask/bench/prometheus_client_peer.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&catalog_path)
        .output()
        .context("running python3 (the prometheus_client peer)")?;
    if !out.status.success() {
        bail!(
            "the prometheus_client peer failed (pip install prometheus_client?):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let python: BTreeMap<String, f64> = serde_json::from_slice(&out.stdout)?;
    let version = Command::new("python3")
        .args(["-c", "import importlib.metadata as m, sys; print(m.version('prometheus_client'), 'on CPython', sys.version.split()[0])"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();

    println!("\nper operation, mean (criterion) / best of 5 (python); prometheus_client {version}");
    println!(
        "{:<42} {:>12} {:>16} {:>18} {:>14}",
        "operation", "vigil", "metrics-exp-prom", "prometheus_client", "py / vigil"
    );
    let rows = [
        (
            "counter_increment/handle",
            "observe/vigil/counter_increment/handle",
            "observe/metrics_exporter_prometheus/counter_increment/handle",
        ),
        (
            "histogram_record/handle",
            "observe/vigil/histogram_record/handle",
            "observe/metrics_exporter_prometheus/histogram_record/handle",
        ),
        (
            "counter_increment/macro",
            "observe/vigil/counter_increment/macro",
            "observe/metrics_exporter_prometheus/counter_increment/macro",
        ),
        (
            "histogram_record/macro",
            "observe/vigil/histogram_record/macro",
            "observe/metrics_exporter_prometheus/histogram_record/macro",
        ),
        (
            "counter_increment/contended_2_threads",
            "observe/vigil/counter_increment/contended_2_threads",
            "observe/metrics_exporter_prometheus/counter_increment/contended_2_threads",
        ),
        (
            "histogram_record/contended_2_threads",
            "observe/vigil/histogram_record/contended_2_threads",
            "observe/metrics_exporter_prometheus/histogram_record/contended_2_threads",
        ),
        (
            "render/prometheus_text",
            "render/full_catalog/vigil/prometheus_text",
            "render/full_catalog/metrics_exporter_prometheus/prometheus_text",
        ),
        (
            "render/openmetrics",
            "render/full_catalog/vigil/openmetrics",
            "",
        ),
    ];
    for (op, vigil_id, peer_id) in rows {
        let v = rust.get(vigil_id).copied();
        let p = rust.get(peer_id).copied();
        let py = python.get(op).copied();
        let ratio = match (v, py) {
            (Some(v), Some(py)) => format!("{:.1}x", py / v),
            _ => "-".into(),
        };
        println!(
            "{op:<42} {:>12} {:>16} {:>18} {ratio:>14}",
            fmt_ns(v),
            fmt_ns(p),
            fmt_ns(py)
        );
    }
    Ok(())
}

fn fmt_ns(ns: Option<f64>) -> String {
    match ns {
        None => "-".into(),
        Some(ns) if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
        Some(ns) if ns >= 1e3 => format!("{:.1} µs", ns / 1e3),
        Some(ns) => format!("{ns:.1} ns"),
    }
}

/// Mean time (ns) of every benchmark criterion saved under `dir`, by full id.
fn criterion_results(dir: &Path) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "benchmark.json")
                && path.parent().is_some_and(|p| p.ends_with("new"))
            {
                let bench: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
                let estimates: Value = serde_json::from_str(&std::fs::read_to_string(
                    path.with_file_name("estimates.json"),
                )?)?;
                if let (Some(id), Some(mean)) = (
                    bench["full_id"].as_str(),
                    estimates["mean"]["point_estimate"].as_f64(),
                ) {
                    out.insert(id.to_owned(), mean);
                }
            }
        }
    }
    Ok(out)
}

/// The catalog as the Python peer needs it: every pre-created family with its label sets and
/// bucket bounds, plus the two series the observe benchmarks use.
fn catalog_json() -> Value {
    let buckets = ExporterConfig::new(MAX_MODEL_LEN).buckets;
    let families: Vec<Value> = catalog::all()
        .filter(|d| d.precreate && d.mirror_of.is_none())
        .map(|d| {
            let label_sets: Vec<Value> = catalog::precreated_label_sets(d, MODEL, &["0"])
                .iter()
                .map(|set| set.iter().map(|l| (l.key().to_owned(), json!(l.value()))).collect::<serde_json::Map<_, _>>().into())
                .collect();
            json!({
                "name": d.name,
                "kind": d.kind.as_str(),
                "help": d.help,
                "labels": d.label_names().collect::<Vec<_>>(),
                "label_sets": label_sets,
                "buckets": d.buckets.filter(|_| d.kind == Kind::Histogram).map(|f| buckets.bounds(f)),
            })
        })
        .collect();
    json!({
        "model": MODEL,
        "engine": "0",
        "counter": vllm::PROMPT_TOKENS.name,
        "histogram": vllm::E2E_REQUEST_LATENCY_SECONDS.name,
        "families": families,
    })
}
