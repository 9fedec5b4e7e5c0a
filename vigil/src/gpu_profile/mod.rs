//! `vigil gpu-profile`: what a decode step would cost on an H100, from the simulated GPU's counts.
//!
//! Runs on the simulated GPU only (`cargo xtask gpu-profile` builds it and puts it on
//! `LD_LIBRARY_PATH`). For each case ([`cases`]) it profiles one decode step on the model cut to
//! one layer and to two, scales to the model's depth, predicts each kernel's and the step's time
//! with [`cost_model`], and prints a table per case, then one JSON line with every case. Every
//! time it prints is predicted, never measured; the counts behind them are exact and the same
//! from run to run.

pub(crate) mod cases;
pub(crate) mod cost_model;
mod llama8b;
pub(crate) mod sim;

use std::path::PathBuf;

use model::names::{self, LayerTensor};
use model::{LlamaConfig, Model};

use cases::{Case, Measured, ModelKind};
use cost_model::{Bound, Gpu, StepParts, H100_SXM};
use sim::{Profile, Profiler};

/// `vigil gpu-profile`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct GpuProfileArgs {
    /// The default model's file (the `default-*` cases).
    #[arg(long, default_value = engine::DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Where the Llama-3.1-8B-shaped GGUF of random weights is written (once) and read.
    #[arg(long, default_value = "target/gpu-profile")]
    pub scratch: PathBuf,
    /// Run only the cases whose names contain this (repeatable).
    #[arg(long = "case", value_name = "NAME")]
    pub cases: Vec<String>,
    /// Also write each run's profile, as the simulator counted it, into this folder
    /// (`CASE-N-layers.json`).
    #[arg(long, value_name = "DIR")]
    pub raw: Option<PathBuf>,
}

pub(crate) fn run(args: &GpuProfileArgs) -> anyhow::Result<()> {
    let selected: Vec<Case> = cases::all()
        .into_iter()
        .filter(|c| args.cases.is_empty() || args.cases.iter().any(|f| c.name().contains(f)))
        .collect();
    anyhow::ensure!(!selected.is_empty(), "--case matches no case");
    // Opening the device loads the driver the profiler is looked up in.
    backend::probe_cuda().map_err(|e| anyhow::anyhow!("no CUDA device: {e}"))?;
    let profiler = Profiler::find()?;
    let gpu = H100_SXM;
    println!("All times below are PREDICTED for an {}, from the simulated GPU's counts; none is measured.", gpu.name);
    println!("{}", CAVEATS);
    let occupancy = occupancy();
    let mut json = Vec::new();
    for kind in [ModelKind::Default, ModelKind::Llama8b] {
        let these: Vec<Case> = selected
            .iter()
            .filter(|c| c.model == kind)
            .cloned()
            .collect();
        if these.is_empty() {
            continue;
        }
        let path = match kind {
            ModelKind::Default => args.model.clone(),
            ModelKind::Llama8b => llama8b::ensure(&args.scratch)?,
        };
        let model = Model::load(&path)?;
        let layers = match kind {
            ModelKind::Default => model.config.num_hidden_layers,
            ModelKind::Llama8b => llama8b::REAL_LAYERS,
        };
        let weights = stored_weight_bytes(&model, layers)?;
        let measured = cases::measure(&profiler, &path, &these, args.raw.as_deref())?;
        for (case, m) in these.iter().zip(&measured) {
            let report = CaseReport::new(&gpu, case, m, &model.config, layers, weights, &occupancy);
            report.print(&path);
            json.push(report.json(&path));
        }
    }
    println!("{}", serde_json::json!({ "cases": json }));
    Ok(())
}

const CAVEATS: &str = "What the model cannot know: L2 reuse across kernels (each launch's distinct sectors are charged to DRAM), \
clock boost and power limits (nominal constants), instructions issued (not counted), cuBLAS's kernel choice \
(GEMMs at bandwidth or tensor-core rate), host work between steps (sampling full rows on the host is not counted). \
Per-layer counts are measured on 1 and 2 layers and scaled to the model's depth.";

/// Each kernel's registers and shared memory on sm_90, from ptxas where `VIGIL_PTXAS` names it
/// (`cargo xtask gpu-profile` does); without it, occupancy counts threads alone, and the
/// output says so.
type Occupancy = std::collections::HashMap<String, backend::kernel_check::ptxas::Resources>;

fn occupancy() -> Occupancy {
    use backend::kernel_check::ptxas;
    match ptxas::ptxas().map(|p| ptxas::resources(&p, "sm_90")) {
        Some(Ok(resources)) => {
            println!("Occupancy from ptxas's registers and shared memory per kernel (sm_90).");
            resources
        }
        Some(Err(e)) => {
            println!("Occupancy from threads alone: ptxas failed ({e}).");
            Occupancy::new()
        }
        None => {
            println!("Occupancy from threads alone: VIGIL_PTXAS names no ptxas.");
            Occupancy::new()
        }
    }
}

/// One kernel's (or one GEMM shape's) share of a step, scaled to the model's depth.
#[derive(Debug, Clone, Default)]
struct Row {
    name: String,
    gemm: bool,
    launches: f64,
    loaded: f64,
    stored: f64,
    accesses: f64,
    sectors: f64,
    seconds: f64,
    ctas: (u64, u64),
    /// CTAs one SM holds at once.
    ctas_per_sm: u64,
    /// What bounds its slowest launch.
    bound: Option<Bound>,
    bound_seconds: f64,
}

impl Row {
    fn add(&mut self, seconds: f64, bound: Bound) {
        self.launches += 1.0;
        self.seconds += seconds;
        if seconds > self.bound_seconds {
            self.bound_seconds = seconds;
            self.bound = Some(bound);
        }
    }

    /// `self + (layers - 1) x (two - self)`, field by field.
    fn scaled(&self, two: &Row, layers: usize) -> Row {
        let f = (layers - 1) as f64;
        let s = |a: f64, b: f64| a + f * (b - a);
        Row {
            launches: s(self.launches, two.launches),
            loaded: s(self.loaded, two.loaded),
            stored: s(self.stored, two.stored),
            accesses: s(self.accesses, two.accesses),
            sectors: s(self.sectors, two.sectors),
            seconds: s(self.seconds, two.seconds),
            ..two.clone()
        }
    }
}

/// Rows of one profile, in order of first launch.
fn rows(gpu: &Gpu, profile: &Profile, config: &LlamaConfig, occupancy: &Occupancy) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut row = |name: String, gemm: bool| -> usize {
        match rows.iter().position(|r| r.name == name) {
            Some(i) => i,
            None => {
                rows.push(Row {
                    name,
                    gemm,
                    ctas: (u64::MAX, 0),
                    ..Default::default()
                });
                rows.len() - 1
            }
        }
    };
    let mut indices = Vec::new();
    for l in &profile.launches {
        indices.push(row(l.kernel.clone(), false));
    }
    for g in &profile.gemms {
        indices.push(row(
            format!("cuBLAS {}", gemm_name(config, g.m, g.n, g.k)),
            true,
        ));
    }
    let mut at = indices.into_iter();
    for l in &profile.launches {
        let r = &mut rows[at.next().expect("an index per launch")];
        let resources = occupancy.get(&l.kernel).copied();
        let cost = gpu.kernel(l, resources);
        r.add(cost.seconds, cost.bound);
        r.ctas_per_sm = gpu.resident_per_sm(l.threads_per_cta(), resources);
        r.loaded += l.global_loads.bytes as f64;
        r.stored += l.global_stores.bytes as f64;
        r.accesses += (l.global_loads.count() + l.global_stores.count()) as f64;
        r.sectors += l.global_sectors as f64;
        r.ctas = (r.ctas.0.min(l.ctas()), r.ctas.1.max(l.ctas()));
    }
    for g in &profile.gemms {
        let r = &mut rows[at.next().expect("an index per GEMM")];
        let cost = gpu.gemm(g);
        r.add(cost.seconds, cost.bound);
        r.loaded += g.bytes as f64;
    }
    rows
}

/// Which of the model's matrices a GEMM multiplies, from its shape.
pub(crate) fn gemm_name(c: &LlamaConfig, m: u64, n: u64, k: u64) -> String {
    let (h, q, kv, inter) = (
        c.hidden_size,
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
        c.intermediate_size,
    );
    let known = [
        ("qkv", q + 2 * kv, h),
        ("o", h, q),
        ("gate_up", 2 * inter, h),
        ("down", h, inter),
        ("lm_head", c.vocab_size, h),
    ];
    known
        .iter()
        .find(|(_, out, inp)| k == *inp as u64 && (m == *out as u64 || n == *out as u64))
        .map_or_else(|| format!("{m}x{n}x{k}"), |(name, ..)| (*name).to_owned())
}

/// Bytes of the weights a decode step must read as the file stores them: every layer's
/// matrices and norms, the final norm and the output head (the embedding, when tied). The
/// roofline's yardstick: the least any engine serving this file moves per step.
fn stored_weight_bytes(model: &Model, layers: usize) -> anyhow::Result<f64> {
    let c = &model.config;
    let (h, q, kv, inter) = (
        c.hidden_size,
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
        c.intermediate_size,
    );
    let bytes = |name: &str, shape: &[usize]| -> anyhow::Result<f64> {
        Ok(match model.weights.encoded(name, shape)? {
            Some(t) => t.bytes.len() as f64,
            // Not kept encoded (F32 norms, HF checkpoints): two bytes a value, as a bf16 engine
            // holds them.
            None => 2.0 * shape.iter().product::<usize>() as f64,
        })
    };
    let mut layer = 0.0;
    for t in LayerTensor::ALL {
        let shape = match t {
            LayerTensor::AttnNorm | LayerTensor::FfnNorm => vec![h],
            LayerTensor::Q => vec![q, h],
            LayerTensor::K | LayerTensor::V => vec![kv, h],
            LayerTensor::O => vec![h, q],
            LayerTensor::Gate | LayerTensor::Up => vec![inter, h],
            LayerTensor::Down => vec![h, inter],
        };
        layer += bytes(&t.hf_name(0), &shape)?;
    }
    let head = if c.tie_word_embeddings {
        names::EMBED
    } else {
        names::LM_HEAD
    };
    Ok(layer * layers as f64 + bytes(names::FINAL_NORM, &[h])? + bytes(head, &[c.vocab_size, h])?)
}

/// A case's prediction.
struct CaseReport {
    name: String,
    layers: usize,
    rows: Vec<Row>,
    step: cost_model::StepCost,
    launches: f64,
    graph_launches: f64,
    syncs: f64,
    copies: f64,
    pageable_copies: f64,
    copy_bytes: (f64, f64),
    weight_bytes: f64,
    kv_bytes: f64,
    roofline: f64,
    kv_read_redundancy: f64,
}

impl CaseReport {
    fn new(
        gpu: &Gpu,
        case: &Case,
        m: &Measured,
        config: &LlamaConfig,
        layers: usize,
        weight_bytes: f64,
        occupancy: &Occupancy,
    ) -> CaseReport {
        let one = rows(gpu, &m.one_layer, config, occupancy);
        let two = rows(gpu, &m.two_layers, config, occupancy);
        let rows: Vec<Row> = two
            .iter()
            .map(|t| {
                let o = one
                    .iter()
                    .find(|o| o.name == t.name)
                    .cloned()
                    .unwrap_or_default();
                o.scaled(t, layers)
            })
            .collect();
        let scale = |a: f64, b: f64| a + (layers - 1) as f64 * (b - a);
        let per_profile = |p: &Profile, f: &dyn Fn(&Profile) -> f64| f(p);
        let both = |f: &dyn Fn(&Profile) -> f64| {
            scale(per_profile(&m.one_layer, f), per_profile(&m.two_layers, f))
        };
        let copy_seconds = both(&|p| p.copies.iter().map(|c| gpu.copy(c.bytes, c.pinned)).sum());
        let direction = |kind: &'static str| {
            move |p: &Profile| {
                p.copies
                    .iter()
                    .filter(|c| c.kind == kind)
                    .map(|c| c.bytes as f64)
                    .sum()
            }
        };
        let syncs = both(&|p| p.syncs as f64);
        let pageable_copies = both(&|p| p.copies.iter().filter(|c| !c.pinned).count() as f64);
        let copies = both(&|p| p.copies.len() as f64);
        let launches: f64 = rows.iter().map(|r| r.launches).sum();
        let graph_launches = both(&|p| p.graph_launches as f64);
        let graph_kernels = both(&|p| {
            (p.launches.iter().filter(|l| l.in_graph).count()
                + p.gemms.iter().filter(|g| g.in_graph).count()) as f64
        });
        let step = gpu.step(&StepParts {
            kernels: launches,
            kernel_seconds: rows.iter().map(|r| r.seconds).sum(),
            copy_seconds,
            syncs,
            graph_kernels,
            graph_launches,
        });
        let kv_width = config.num_key_value_heads * config.head_dim;
        let kv_bytes = (case.batch * case.ctx * layers * 2 * kv_width * 2) as f64;
        let roofline = gpu.roofline(weight_bytes + kv_bytes);
        // Attention's loads from the KV cache over the distinct KV bytes they touched.
        let kv_traffic = |p: &Profile, kv: &[(u64, u64)]| -> (f64, f64) {
            let mut loaded = 0.0;
            let mut distinct = 0.0;
            for l in p.launches.iter().filter(|l| l.kernel.contains("attention")) {
                for r in l
                    .regions
                    .iter()
                    .filter(|r| kv.iter().any(|k| k.0 == r.start))
                {
                    loaded += r.loaded_bytes as f64;
                    distinct += (r.sectors * 32) as f64;
                }
            }
            (loaded, distinct)
        };
        let (l1, d1) = kv_traffic(&m.one_layer, &m.kv_ranges[0]);
        let (l2, d2) = kv_traffic(&m.two_layers, &m.kv_ranges[1]);
        let kv_read_redundancy = scale(l1, l2) / scale(d1, d2).max(1.0);
        CaseReport {
            name: case.name(),
            layers,
            rows,
            step,
            launches,
            graph_launches,
            syncs,
            copies,
            pageable_copies,
            copy_bytes: (
                both(&direction("host_to_device")),
                both(&direction("device_to_host")),
            ),
            weight_bytes,
            kv_bytes,
            roofline,
            kv_read_redundancy,
        }
    }

    fn roofline_share(&self) -> f64 {
        self.roofline / self.step.seconds
    }

    fn print(&self, model: &std::path::Path) {
        let us = |s: f64| s * 1e6;
        let mb = |b: f64| b / 1e6;
        println!();
        println!(
            "== {} ({}, {} layers), PREDICTED for {}",
            self.name,
            model.file_name().unwrap_or_default().to_string_lossy(),
            self.layers,
            H100_SXM.name
        );
        println!(
            "{:<22} {:>8} {:>11} {:>10} {:>7} {:>13} {:>7} {:>8} {:>12} {:>6}",
            "kernel",
            "launches",
            "loaded MB",
            "stored MB",
            "mean B",
            "CTAs/132 SMs",
            "per SM",
            "bound",
            "predicted us",
            "share"
        );
        let kernels: f64 = self.rows.iter().map(|r| r.seconds).sum();
        for r in &self.rows {
            let mean = if r.gemm || r.accesses == 0.0 {
                "-".to_owned()
            } else {
                format!("{:.1}", (r.loaded + r.stored) / r.accesses)
            };
            let ctas = if r.gemm {
                "-".to_owned()
            } else if r.ctas.0 == r.ctas.1 {
                r.ctas.0.to_string()
            } else {
                format!("{}-{}", r.ctas.0, r.ctas.1)
            };
            let per_sm = if r.gemm {
                "-".to_owned()
            } else {
                r.ctas_per_sm.to_string()
            };
            println!(
                "{:<22} {:>8.0} {:>11.2} {:>10.2} {:>7} {:>13} {:>7} {:>8} {:>12.1} {:>5.1}%",
                r.name,
                r.launches,
                mb(r.loaded),
                mb(r.stored),
                mean,
                ctas,
                per_sm,
                r.bound.map_or("-", Bound::as_str),
                us(r.seconds),
                100.0 * r.seconds / kernels.max(f64::MIN_POSITIVE)
            );
        }
        println!(
            "step: {:.0} us predicted = max(GPU {:.0} us, host enqueue {:.0} us) + {:.0} copies ({:.3} MB up, {:.3} MB down, {:.0} pageable) + {:.0} sync(s)",
            us(self.step.seconds),
            us(self.step.gpu),
            us(self.step.host),
            self.copies,
            mb(self.copy_bytes.0),
            mb(self.copy_bytes.1),
            self.pageable_copies,
            self.syncs
        );
        println!(
            "roofline: {:.0} us = ({:.1} MB of weights as the file stores them + {:.1} MB of KV) / 3.35 TB/s; predicted share {:.1}%; KV read redundancy {:.2}x",
            us(self.roofline),
            mb(self.weight_bytes),
            mb(self.kv_bytes),
            100.0 * self.roofline_share(),
            self.kv_read_redundancy
        );
    }

    fn json(&self, model: &std::path::Path) -> serde_json::Value {
        let mean: serde_json::Map<String, serde_json::Value> = self
            .rows
            .iter()
            .filter(|r| !r.gemm && r.accesses > 0.0)
            .map(|r| {
                let bytes = (r.loaded + r.stored) / r.accesses;
                (r.name.clone(), serde_json::json!(round(bytes, 2)))
            })
            .collect();
        let per_kernel = |f: &dyn Fn(&Row) -> serde_json::Value| -> serde_json::Value {
            self.rows.iter().map(|r| (r.name.clone(), f(r))).collect()
        };
        serde_json::json!({
            "name": self.name,
            "model": model.file_name().unwrap_or_default().to_string_lossy(),
            "predicted_step_us": round(self.step.seconds * 1e6, 1),
            "roofline_us": round(self.roofline * 1e6, 1),
            "roofline_share": round(self.roofline_share(), 4),
            "launches_per_step": self.launches.round() as u64,
            "graph_launches_per_step": self.graph_launches.round() as u64,
            "syncs_per_step": self.syncs.round() as u64,
            "copies_per_step": self.copies.round() as u64,
            "pageable_copies_per_step": self.pageable_copies.round() as u64,
            "kv_read_redundancy": round(self.kv_read_redundancy, 3),
            "mean_access_bytes": mean,
            "launches_by_kernel": per_kernel(&|r| serde_json::json!(r.launches.round() as u64)),
            "predicted_kernel_us": per_kernel(&|r| serde_json::json!(round(r.seconds * 1e6, 1))),
        })
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}
