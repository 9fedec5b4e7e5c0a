//! `vigil check-gpu`'s NVML section: the poller's readings against `nvidia-smi`, field by field.
//!
//! `vigil check-gpu`: runs the real NVML poller against the real GPUs and compares what it reads
//! with `nvidia-smi --query-gpu`, field by field; optionally records the polls as JSON for the
//! tests that run without a GPU.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use super::reading::{GpuPoll, Poll};
use super::source::{GpuSource, NvmlSource};

/// The nvidia-smi fields compared, and how far apart the two readings may be (they are taken a
/// moment apart; memory, power, clocks and temperature move).
const FIELDS: &[(&str, Tolerance)] = &[
    ("index", Tolerance::Exact),
    ("uuid", Tolerance::Exact),
    ("name", Tolerance::Exact),
    ("pci.bus_id", Tolerance::Exact),
    ("memory.total", Tolerance::Exact),
    ("memory.used", Tolerance::Within(512.0)),
    ("power.draw", Tolerance::Within(30.0)),
    ("power.limit", Tolerance::Within(1.0)),
    ("temperature.gpu", Tolerance::Within(3.0)),
    ("clocks.sm", Tolerance::Within(300.0)),
    ("clocks.mem", Tolerance::Within(100.0)),
    ("utilization.gpu", Tolerance::Within(30.0)),
    ("pcie.link.gen.current", Tolerance::Skip),
];

#[derive(Debug, Clone, Copy)]
enum Tolerance {
    Exact,
    Within(f64),
    Skip,
}

/// Runs the check; returns the report, and whether every compared field agreed.
pub fn run(record: Option<&Path>) -> anyhow::Result<(String, bool)> {
    let mut source = NvmlSource::open()
        .map_err(|state| anyhow::anyhow!("NVML probe off ({})", state.describe()))?;
    let poll = source.poll();
    let smi = nvidia_smi()?;
    let mut report = String::new();
    let mut ok = true;
    let _ = writeln!(
        report,
        "driver {:?}, CUDA {:?}, {} GPU(s)",
        poll.driver_version,
        poll.cuda_driver_version,
        poll.gpus.len()
    );
    if smi.len() != poll.gpus.len() {
        ok = false;
        let _ = writeln!(
            report,
            "MISMATCH: nvidia-smi lists {} GPUs, NVML {}",
            smi.len(),
            poll.gpus.len()
        );
    }
    for (gpu, row) in poll.gpus.iter().zip(&smi) {
        let _ = writeln!(report, "GPU {}:", gpu.index);
        for ((field, tolerance), theirs) in FIELDS.iter().zip(row) {
            let ours = ours(gpu, field);
            let agree = match (tolerance, &ours) {
                (Tolerance::Skip, _) => true,
                (_, None) => theirs.contains("N/A") || theirs.contains("Not Supported"),
                (Tolerance::Exact, Some(v)) => v == theirs,
                (Tolerance::Within(d), Some(v)) => {
                    match (v.parse::<f64>(), theirs.parse::<f64>()) {
                        (Ok(a), Ok(b)) => (a - b).abs() <= *d,
                        _ => false,
                    }
                }
            };
            ok &= agree;
            let _ = writeln!(
                report,
                "  {:<22} vigil {:<40} nvidia-smi {:<40} {}",
                field,
                ours.as_deref().unwrap_or("(absent)"),
                theirs,
                if agree { "ok" } else { "MISMATCH" }
            );
        }
    }
    if let Some(path) = record {
        std::thread::sleep(Duration::from_secs(1));
        let polls: Vec<Poll> = vec![poll, source.poll()];
        std::fs::write(path, serde_json::to_string_pretty(&polls)?)
            .with_context(|| format!("writing {}", path.display()))?;
        let _ = writeln!(report, "recorded 2 polls to {}", path.display());
    }
    Ok((report, ok))
}

/// Vigil's reading of one nvidia-smi field, in nvidia-smi's units (MiB, W, MHz, %, °C).
fn ours(g: &GpuPoll, field: &str) -> Option<String> {
    let id = g.identity.as_ref().ok();
    let mib = |b: u64| (b / (1024 * 1024)).to_string();
    match field {
        "index" => Some(g.index.to_string()),
        "uuid" => id.map(|i| i.uuid.clone()),
        "name" => id.map(|i| i.name.clone()),
        "pci.bus_id" => id.map(|i| i.pci_bus_id.clone()),
        "memory.total" => g.memory.as_ref().ok().map(|m| mib(m.total)),
        "memory.used" => g.memory.as_ref().ok().map(|m| mib(m.used)),
        "power.draw" => g
            .power_milliwatts
            .ok()
            .map(|mw| format!("{:.2}", f64::from(mw) / 1000.0)),
        "power.limit" => g
            .power_limit_milliwatts
            .ok()
            .map(|mw| format!("{:.2}", f64::from(mw) / 1000.0)),
        "temperature.gpu" => g.temperature_celsius.ok().map(|c| c.to_string()),
        "clocks.sm" => g.sm_clock_mhz.ok().map(|c| c.to_string()),
        "clocks.mem" => g.memory_clock_mhz.ok().map(|c| c.to_string()),
        "utilization.gpu" => g.utilization.ok().map(|u| u.gpu_percent.to_string()),
        _ => None,
    }
}

/// `nvidia-smi --query-gpu=<FIELDS> --format=csv,noheader,nounits`, one row per GPU.
fn nvidia_smi() -> anyhow::Result<Vec<Vec<String>>> {
    let query: Vec<&str> = FIELDS.iter().map(|(f, _)| *f).collect();
    let out = Command::new("nvidia-smi")
        .arg(format!("--query-gpu={}", query.join(",")))
        .arg("--format=csv,noheader,nounits")
        .output()
        .context("running nvidia-smi")?;
    if !out.status.success() {
        bail!(
            "nvidia-smi failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(|f| f.trim().to_owned()).collect())
        .collect())
}
