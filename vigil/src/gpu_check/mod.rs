//! `vigil check-gpu`: the one command that checks a GPU node, for anyone to run there.
//!
//! Sections, in order (`--only` picks some):
//! - `nvml`: the NVML probe's readings against `nvidia-smi`, field by field.
//! - `kernels`: every CUDA kernel and the cuBLAS GEMM against the CPU backend on random inputs.
//! - `model`: the whole forward pass against the CPU backend: a tiny random model, then the
//!   served model's logits and 64 greedy steps on several prompts.
//! - `serving`: `vigil serve --device cuda` end to end over HTTP.
//! - `bench`: prefill/decode throughput at batch 1, 16, 64, 256, the bandwidth fraction of
//!   decode, and (with PyTorch and transformers) the same generation in transformers; then
//!   `kernel-times`.
//! - `kernel-times`: each kernel of the default model's decode steps timed with CUDA events,
//!   beside `vigil gpu-profile`'s prediction for the same step.
//!
//! Every check prints PASS or FAIL with its numbers; the command fails if any failed.

pub(crate) mod bench;
pub(crate) mod kernel_device;
pub(crate) mod kernel_times;
pub(crate) mod kernels;
pub(crate) mod model;
pub(crate) mod report;
pub(crate) mod serving;
pub(crate) mod transformers;

use crate::cli::{CheckGpuArgs, CheckSection};
use report::Report;

pub(crate) fn run(args: &CheckGpuArgs) -> anyhow::Result<()> {
    let wants = |s: CheckSection| args.only.is_empty() || args.only.contains(&s);
    let mut report = Report::default();
    if wants(CheckSection::Nvml) {
        println!("== NVML vs nvidia-smi");
        match probes::check_nvml(args.record.as_deref()) {
            Ok((text, ok)) => {
                print!("{text}");
                report.check("NVML readings = nvidia-smi", ok, "see the fields above");
            }
            Err(e) => report.error("NVML readings = nvidia-smi", e),
        }
    }
    let device_sections = [
        CheckSection::Kernels,
        CheckSection::Model,
        CheckSection::Serving,
        CheckSection::Bench,
        CheckSection::KernelTimes,
    ];
    if device_sections.iter().any(|s| wants(*s)) {
        match backend::probe_cuda() {
            Ok(n) => {
                let name = cudarc::driver::CudaContext::new(0)
                    .and_then(|ctx| ctx.name())
                    .unwrap_or_else(|e| format!("(no name: {e:?})"));
                println!("== CUDA: {n} device(s); checking device 0: {name}");
                if name.contains("simulated") {
                    report.simulated = true;
                    println!("{SIMULATED}");
                }
            }
            Err(why) => {
                report.error("CUDA backend", why);
                return finish(&report);
            }
        }
    }
    if wants(CheckSection::Kernels) {
        println!("== kernels vs CPU");
        match kernel_device::Dev::open(0) {
            Ok(dev) => {
                println!("{} ({})", dev.gpu.info.name, dev.gpu.info.arch);
                kernels::run(&dev, &mut report);
            }
            Err(e) => report.error("opening the device", e),
        }
    }
    let needs_model = [
        CheckSection::Model,
        CheckSection::Serving,
        CheckSection::Bench,
        CheckSection::KernelTimes,
    ];
    if needs_model.iter().any(|s| wants(*s)) {
        if wants(CheckSection::Model) {
            println!("== model vs CPU");
            model::run_tiny(&mut report);
        }
        let loaded = ::model::Model::load(&args.model)
            .map_err(|e| anyhow::anyhow!("loading {}: {e}", args.model.display()));
        match loaded {
            Ok(m) => {
                if wants(CheckSection::Model) {
                    model::run_model(&m, &mut report);
                }
                if wants(CheckSection::Serving) {
                    println!("== serving on the GPU");
                    serving::run(&m, &mut report);
                }
                if wants(CheckSection::Bench) {
                    println!("== benchmark");
                    match bench::run(&m, &mut report) {
                        Ok(rows) => transformers::run(&m, &args.python, &rows, &mut report),
                        Err(e) => report.error("benchmark", e),
                    }
                }
                if wants(CheckSection::Bench) || wants(CheckSection::KernelTimes) {
                    println!("== per-kernel times");
                    let simulated = report.simulated;
                    if let Err(e) = kernel_times::run(&m, simulated, &mut report) {
                        report.error("per-kernel times", e);
                    }
                }
            }
            Err(e) => report.error("model", e),
        }
    }
    finish(&report)
}

/// What a pass on the simulated device (`cuda-sim/`) proves, and what it does not.
const SIMULATED: &str = "NOTE: this device is SIMULATED (vigil-cuda-sim runs the CUDA backend's \
    kernels and cuBLAS calls on the CPU). A pass proves the backend's logic, launches, memory \
    accesses and numerics; not its speed, the GPU's memory model, or the real driver. Run \
    `vigil check-gpu` on a real GPU for the final word.";

fn finish(report: &Report) -> anyhow::Result<()> {
    anyhow::ensure!(
        report.passed(),
        "{} of {} checks failed (see FAIL above)",
        report.failures(),
        report.checks.len()
    );
    println!(
        "all {} checks passed{}",
        report.checks.len(),
        if report.simulated {
            " on a SIMULATED device"
        } else {
            ""
        }
    );
    Ok(())
}
