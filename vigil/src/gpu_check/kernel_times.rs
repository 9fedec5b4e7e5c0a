//! Each kernel of a decode step timed with CUDA events, beside the simulator's prediction.
//!
//! The calibration of `vigil gpu-profile`'s cost model: the default model's decode steps of
//! its `default-b1-ctx512` and `default-b64-ctx1024` cases, run here, each launch timed by a
//! pair of CUDA events, and printed per kernel beside what the prediction in
//! `docs/gpu-profile.json` (written by `cargo xtask gpu-profile`) says for the same step. The
//! whole step is timed apart, on the host, with the per-launch events off.

use std::collections::BTreeMap;
use std::time::Instant;

use model::Model;
use serde_json::Value;

use super::report::Report;
use crate::gpu_profile::cases::{self, Case, ModelKind};
use crate::gpu_profile::gemm_name;

/// The simulator's predictions, as `cargo xtask gpu-profile` last wrote them.
const PREDICTED: &str = include_str!("../../../docs/gpu-profile.json");

/// Steps timed per case (a simulated device runs one: its times mean nothing).
const STEPS: usize = 20;

pub(crate) fn run(model: &Model, simulated: bool, report: &mut Report) -> anyhow::Result<()> {
    let predicted: Value = serde_json::from_str(PREDICTED)?;
    let file = model.path.file_name().unwrap_or_default().to_string_lossy();
    let shapes: &[(usize, usize)] = if simulated {
        &[(1, 512)]
    } else {
        &[(1, 512), (64, 1024)]
    };
    let steps = if simulated { 1 } else { STEPS };
    for &(batch, ctx) in shapes {
        let case = Case {
            model: ModelKind::Default,
            batch,
            ctx,
            sampled: false,
        };
        let name = case.name();
        let prediction = predicted["cases"]
            .as_array()
            .and_then(|cases| {
                cases
                    .iter()
                    .find(|c| c["name"] == name.as_str() && c["model"] == file.as_ref())
            })
            .cloned();
        let mut gpu = cases::decode_backend(model, batch * case.blocks_per_seq(), batch)?;
        let vocab = model.config.vocab_size;
        for _ in 0..steps.min(3) {
            cases::step(&mut gpu, &case, vocab)?;
        }
        let started = Instant::now();
        for _ in 0..steps {
            cases::step(&mut gpu, &case, vocab)?;
        }
        let step_us = started.elapsed().as_secs_f64() * 1e6 / steps as f64;
        gpu.time_kernels(true);
        let mut measured: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        for _ in 0..steps {
            cases::step(&mut gpu, &case, vocab)?;
            for (label, seconds) in gpu.take_kernel_times()? {
                let row = match label.strip_prefix("cublas:") {
                    Some(dims) => {
                        let d: Vec<u64> = dims.split('x').filter_map(|v| v.parse().ok()).collect();
                        format!("cuBLAS {}", gemm_name(&model.config, d[0], d[1], d[2]))
                    }
                    None => label,
                };
                let entry = measured.entry(row).or_default();
                entry.0 += seconds;
                entry.1 += 1;
            }
        }
        gpu.time_kernels(false);
        print_case(
            &name,
            &measured,
            steps,
            step_us,
            prediction.as_ref(),
            simulated,
        );
        // The prediction is of this binary's kernels only if it was regenerated with them.
        let predicted: Vec<String> = prediction
            .as_ref()
            .and_then(|p| p["predicted_kernel_us"].as_object())
            .map(|k| k.keys().cloned().collect())
            .unwrap_or_default();
        let unpredicted: Vec<&String> =
            measured.keys().filter(|k| !predicted.contains(k)).collect();
        let unmeasured: Vec<&String> = predicted
            .iter()
            .filter(|k| !measured.contains_key(*k))
            .collect();
        report.check(
            format!("{name}: every kernel timed beside its prediction"),
            prediction.is_some() && unpredicted.is_empty() && unmeasured.is_empty(),
            if prediction.is_none() {
                format!(
                    "no prediction for {name} on {file} in docs/gpu-profile.json (cargo xtask gpu-profile)"
                )
            } else if unpredicted.is_empty() && unmeasured.is_empty() {
                format!("{} kernels", measured.len())
            } else {
                format!(
                    "docs/gpu-profile.json is stale (regenerate it: cargo xtask gpu-profile): \
                     not predicted {unpredicted:?}, not launched {unmeasured:?}"
                )
            },
        );
    }
    Ok(())
}

fn print_case(
    name: &str,
    measured: &BTreeMap<String, (f64, usize)>,
    steps: usize,
    step_us: f64,
    prediction: Option<&Value>,
    simulated: bool,
) {
    println!(
        "per-kernel times, {name}: measured with CUDA events{} beside the H100 prediction",
        if simulated {
            " (on the SIMULATED device: the host's clock, meaningless)"
        } else {
            ""
        }
    );
    println!(
        "{:<22} {:>8} {:>13} {:>13} {:>8}",
        "kernel", "launches", "measured us", "predicted us", "ratio"
    );
    let predicted =
        |kernel: &str| prediction.and_then(|p| p["predicted_kernel_us"][kernel].as_f64());
    for (kernel, (seconds, launches)) in measured {
        let us = seconds * 1e6 / steps as f64;
        let p = predicted(kernel);
        println!(
            "{:<22} {:>8} {:>13.1} {:>13} {:>8}",
            kernel,
            launches / steps,
            us,
            p.map_or("-".into(), |p| format!("{p:.1}")),
            p.map_or("-".into(), |p| format!("{:.2}", us / p))
        );
    }
    let p = prediction.and_then(|p| p["predicted_step_us"].as_f64());
    println!(
        "{:<22} {:>8} {:>13.1} {:>13} {:>8}",
        "step (host clock)",
        "",
        step_us,
        p.map_or("-".into(), |p| format!("{p:.1}")),
        p.map_or("-".into(), |p| format!("{:.2}", step_us / p))
    );
}
