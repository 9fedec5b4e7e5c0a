//! `cargo xtask <task>`: chores for Vigil's developers.
//!
//! - `docs [--check]`: write `docs/metrics.md` from the catalog and `systemd/vigil.env` from
//!   `vigil serve`'s flags (`--check` fails if either is stale).
//! - `dashboard`: write `grafana/vigil.json`, the Grafana dashboard, from the catalog (with the
//!   other generated files).
//! - `test [ARGS]`: the project's test command: check (or install) the tools the end-to-end tests
//!   use, then `cargo test --workspace [ARGS]`.
//! - `fetch-model`: put the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) into `models/`.
//! - `bench-model`: the CPU backend's prefill/decode throughput on the default model beside
//!   llama.cpp (llama-cpp-python) on the same GGUF.
//! - `bench`: run the exporter's criterion benchmarks and the prometheus_client peer, and print
//!   them side by side.
//! - `bench-metrics-cost [--rounds N]`: the same serving load with metrics on and with
//!   `--disable-log-stats`, paired rounds; throughput and server CPU per token ratios.
//! - `bench-ebpf [--rounds N]`: the eBPF probe's cost per event and on a switch-heavy
//!   benchmark, beside libbpf-tools' runqlat (root, perf, bpftool, runqlat).
//! - `bpf-object`: recompile the eBPF probe into the objects committed under `probes/bpf/`
//!   (embedded by builds without clang).
//! - `gpu-profile [--case NAME]...`: a decode step's predicted cost on an H100, per kernel, from
//!   the simulated GPU's counts (writes `docs/gpu-performance.md`'s figures when run whole).
//! - `sim COMMAND [ARGS]`: run a command on the simulated GPU (`cuda-sim/`), e.g.
//!   `target/debug/vigil check-gpu` or `target/debug/vigil serve --device cuda`.
//! - `install [--prefix DIR] [--destdir DIR] [--bin FILE] [--dry-run]`: build and install the
//!   binary, the systemd unit, the sysusers.d entry and the environment file.

mod bench;
mod bench_ebpf;
mod bench_metrics_cost;
mod bench_model;
mod bpf_object;
mod dashboard;
mod docs;
mod fetch_model;
mod fetch_nvrtc;
mod gpu_profile;
mod install;
mod instructions;
mod python_clients;
mod sim;
mod test;

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("docs") => docs::run(args.iter().any(|a| a == "--check")),
        // The dashboard is one of the generated files; `docs` writes it too.
        Some("dashboard") => docs::run(false),
        Some("bench") => bench::run(),
        Some("test") => test::run(&args[1..]),
        Some("fetch-model") => fetch_model::run(),
        Some("bench-model") => bench_model::run(),
        Some("bench-metrics-cost") => bench_metrics_cost::run(&args[1..]),
        Some("bench-ebpf") => bench_ebpf::run(&args[1..]),
        Some("install") => install::run(&args[1..]),
        Some("sim") => sim::run(&args[1..]),
        Some("gpu-profile") => gpu_profile::run(&args[1..]),
        Some("bpf-object") => bpf_object::run(),
        _ => {
            eprintln!("usage: cargo xtask <docs [--check] | dashboard | test [ARGS] | fetch-model | bench | bench-model | bench-metrics-cost [--rounds N] | bench-ebpf [--rounds N] | install [--prefix DIR] [--destdir DIR] [--bin FILE] [--dry-run] | sim COMMAND [ARGS] | gpu-profile [--case NAME]... | bpf-object>");
            std::process::exit(2);
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}

/// Builds the release `vigil` binary (the benchmarks measure it) and returns its path.
pub fn release_vigil() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "vigil"])
        .current_dir(&root)
        .status()?;
    anyhow::ensure!(status.success(), "cargo build --release failed");
    Ok(root.join("target/release/vigil"))
}
