//! A predicted H100 SXM time for each launch and step the simulated GPU profiled.
//!
//! Every figure this model produces is a **prediction**: the simulator counts what a step asks
//! of the device (bytes, sectors, per-thread load chains, launches, copies, synchronisations)
//! exactly, and this file turns the counts into time with the constants below, each with its
//! source. What it cannot know, it says: caches across kernels (each launch's distinct sectors
//! are charged to DRAM, as if L2 held nothing from the launch before; a weight matrix larger than
//! L2 is streamed either way), clock boost and power limits (the constants are nominal), the
//! instructions a kernel issues (not counted: a kernel bound by arithmetic or shuffles is
//! under-predicted), and cuBLAS's choice of kernel (its GEMMs are charged at the bandwidth and
//! tensor-core rates below, with no split-K reduction kernels).
//!
//! Per kernel launch: `max(DRAM, L2, latency chain, minimum kernel)`, where
//! - DRAM = distinct 32-byte sectors x 32 / (HBM peak x the share large streams reach);
//! - L2 = all bytes loaded and stored / L2 bandwidth (re-reads that hit L2 still cost it);
//! - latency chain = the most global loads one thread made / the loads a thread keeps in
//!   flight x DRAM latency, once per wave of CTAs the SMs can hold at once (by threads, and by
//!   registers and shared memory where ptxas reports them): a kernel with few CTAs, or with
//!   long dependent loops, cannot reach bandwidth however few bytes it moves.
//!
//! Per cuBLAS GEMM: `max(operand bytes / HBM, FLOPs / tensor-core rate, minimum kernel)`.
//!
//! Per step: the host enqueues launches while the GPU runs them, so the step takes the longer of
//! the two (GPU = kernels + a gap between consecutive kernels; host = a launch overhead per
//! kernel, or one per graph launch), plus what serialises the host and the GPU: each copy
//! (pageable copies are synchronous) and each synchronisation.

use backend::kernel_check::ptxas::Resources;

use super::sim::{Gemm, Launch};

/// The machine the prediction is for, and where each number comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gpu {
    pub name: &'static str,
    /// HBM peak bytes/s. NVIDIA H100 datasheet, SXM5 80 GB: HBM3, 3.35 TB/s.
    pub hbm_peak: f64,
    /// The share of the peak large streams reach: 80-90% measured by large copies and by
    /// bandwidth-bound decode in vLLM-class engines (`shared/reference/gpu-step-review.md`,
    /// sections 3 and 4); the middle of that range.
    pub hbm_stream_share: f64,
    /// L2 bytes/s: ~5.5 TB/s measured on the H100 PCIe (Chips and Cheese, "Nvidia's H100:
    /// Funny L2, and Tons of Bandwidth", 2023); the SXM's is likely higher, so L2-bound kernels
    /// are predicted slow rather than fast.
    pub l2_bandwidth: f64,
    /// Streaming multiprocessors: 132 (H100 SXM5, NVIDIA Hopper architecture whitepaper).
    pub sms: u64,
    /// Resident threads per SM: 2048 (CUDA C++ Programming Guide, compute capability 9.0).
    pub threads_per_sm: u64,
    /// Resident CTAs per SM: 32 (same table).
    pub ctas_per_sm: u64,
    /// 32-bit registers per SM: 65536 (same table).
    pub registers_per_sm: u64,
    /// Shared memory per SM: 228 KB, of which 1 KB is reserved per resident CTA (same table).
    pub shared_per_sm: u64,
    pub shared_reserved_per_cta: u64,
    /// Dense bf16 tensor-core FLOP/s: 989 TFLOPS (H100 datasheet, SXM5, without sparsity).
    pub bf16_peak: f64,
    /// The share of it large GEMMs reach: ~797 TFLOPS measured at 8192^2 bf16 on an H100 80GB
    /// HBM3 (zzc0721/torch-performance-test-data#79), 0.8 of the peak.
    pub tensor_share: f64,
    /// DRAM load-to-use latency under load: 450-700 ns (the review's section 3); 600 ns.
    pub dram_latency: f64,
    /// Global loads one thread keeps in flight on average: an assumption, since the simulator
    /// counts a thread's loads, not which depend on which. 4 puts the review's per-kernel
    /// estimates where it put them (decode attention 0.5-1 us per key of a warp: a block-table
    /// load, then the key's K and V loads together, 5 loads at head size 64 and 9 at 128;
    /// RMSNorm over 4096 at batch 1, 48 loads a thread, 3-6 us). The first measurement on a GPU
    /// (`vigil check-gpu --only bench`) replaces it.
    pub loads_in_flight_per_thread: f64,
    /// The shortest a kernel runs: 2 us (the review's "2-3 us per tiny kernel").
    pub min_kernel: f64,
    /// Between consecutive kernels on the GPU, graph or not: 1 us (the review's section 3).
    pub kernel_gap: f64,
    /// Host time to enqueue one kernel without a graph: 4 us (the review's section 3, for
    /// cudarc's `cuLaunchKernel` path).
    pub host_launch: f64,
    /// Host time to enqueue one graph: 10 us (an assumption, the order of a few launches).
    pub graph_launch: f64,
    /// Pageable copies: staged through a driver buffer and synchronous; ~10 GB/s and 10 us
    /// each (an assumption: PCIe Gen5 x16 carries 64 GB/s, staging costs most of it).
    pub pageable_bandwidth: f64,
    pub pageable_latency: f64,
    /// Pinned copies: ~50 GB/s (PCIe Gen5 x16, 64 GB/s per direction, less protocol) and 5 us.
    pub pinned_bandwidth: f64,
    pub pinned_latency: f64,
    /// One synchronisation: the host waking from a wait on an idle stream, 5 us (assumption).
    pub sync: f64,
}

/// The H100 SXM5 80 GB.
pub(crate) const H100_SXM: Gpu = Gpu {
    name: "H100 SXM5 80GB (predicted)",
    hbm_peak: 3.35e12,
    hbm_stream_share: 0.85,
    l2_bandwidth: 5.5e12,
    sms: 132,
    threads_per_sm: 2048,
    ctas_per_sm: 32,
    registers_per_sm: 65536,
    shared_per_sm: 228 * 1024,
    shared_reserved_per_cta: 1024,
    bf16_peak: 989e12,
    tensor_share: 0.8,
    dram_latency: 600e-9,
    loads_in_flight_per_thread: 4.0,
    min_kernel: 2e-6,
    kernel_gap: 1e-6,
    host_launch: 4e-6,
    graph_launch: 10e-6,
    pageable_bandwidth: 10e9,
    pageable_latency: 10e-6,
    pinned_bandwidth: 50e9,
    pinned_latency: 5e-6,
    sync: 5e-6,
};

/// What bounds a kernel's predicted time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    Dram,
    L2,
    Latency,
    TensorCores,
    Minimum,
}

impl Bound {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Bound::Dram => "dram",
            Bound::L2 => "l2",
            Bound::Latency => "latency",
            Bound::TensorCores => "tensor",
            Bound::Minimum => "min",
        }
    }
}

/// A predicted kernel time, seconds, and what bounds it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KernelCost {
    pub seconds: f64,
    pub bound: Bound,
}

fn slowest(terms: &[(f64, Bound)]) -> KernelCost {
    let (seconds, bound) =
        terms
            .iter()
            .copied()
            .fold((0.0, Bound::Minimum), |a, b| if b.0 > a.0 { b } else { a });
    KernelCost { seconds, bound }
}

impl Gpu {
    fn hbm(&self) -> f64 {
        self.hbm_peak * self.hbm_stream_share
    }

    /// The CTAs of `threads` threads one SM holds at once: as many as its threads allow, and,
    /// where ptxas's report is at hand, its registers and shared memory (register allocation
    /// granularity is not modelled).
    pub(crate) fn resident_per_sm(&self, threads: u64, resources: Option<Resources>) -> u64 {
        let mut ctas = (self.threads_per_sm / threads.max(1)).min(self.ctas_per_sm);
        if let Some(r) = resources {
            let registers = r.registers as u64 * threads;
            if let Some(fit) = self.registers_per_sm.checked_div(registers) {
                ctas = ctas.min(fit);
            }
            let shared = r.shared as u64 + self.shared_reserved_per_cta;
            ctas = ctas.min(self.shared_per_sm / shared);
        }
        ctas.max(1)
    }

    /// One of our kernels' launches; `resources` its ptxas report, when known.
    pub(crate) fn kernel(&self, l: &Launch, resources: Option<Resources>) -> KernelCost {
        let dram = (l.global_sectors * 32) as f64 / self.hbm();
        let l2 = (l.global_loads.bytes + l.global_stores.bytes) as f64 / self.l2_bandwidth;
        let resident = self.sms * self.resident_per_sm(l.threads_per_cta(), resources);
        let waves = l.ctas().div_ceil(resident).max(1);
        let chain = l.max_thread_global_loads as f64 / self.loads_in_flight_per_thread
            * self.dram_latency
            * waves as f64;
        slowest(&[
            (self.min_kernel, Bound::Minimum),
            (dram, Bound::Dram),
            (l2, Bound::L2),
            (chain, Bound::Latency),
        ])
    }

    /// One cuBLAS GEMM.
    pub(crate) fn gemm(&self, g: &Gemm) -> KernelCost {
        slowest(&[
            (self.min_kernel, Bound::Minimum),
            (g.bytes as f64 / self.hbm(), Bound::Dram),
            (
                g.flops as f64 / (self.bf16_peak * self.tensor_share),
                Bound::TensorCores,
            ),
        ])
    }

    /// One copy between host and device.
    pub(crate) fn copy(&self, bytes: u64, pinned: bool) -> f64 {
        if pinned {
            self.pinned_latency + bytes as f64 / self.pinned_bandwidth
        } else {
            self.pageable_latency + bytes as f64 / self.pageable_bandwidth
        }
    }

    /// The seconds HBM needs at its peak for `bytes`: the bandwidth roofline.
    pub(crate) fn roofline(&self, bytes: f64) -> f64 {
        bytes / self.hbm_peak
    }

    /// A step from its parts: kernels' and GEMMs' predicted seconds summed, kernel launches
    /// and graph launches, the copies' seconds and synchronisations.
    pub(crate) fn step(&self, parts: &StepParts) -> StepCost {
        let kernels = parts.kernels;
        let gpu = parts.kernel_seconds + kernels * self.kernel_gap;
        let host = (kernels - parts.graph_kernels) * self.host_launch
            + parts.graph_launches * self.graph_launch;
        let serial = parts.copy_seconds + parts.syncs * self.sync;
        StepCost {
            gpu,
            host,
            seconds: gpu.max(host) + serial,
        }
    }
}

/// What a step is made of, for [`Gpu::step`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StepParts {
    /// Kernels and GEMMs, each one kernel on the GPU.
    pub kernels: f64,
    /// Those of them launched inside a graph.
    pub graph_kernels: f64,
    pub graph_launches: f64,
    pub kernel_seconds: f64,
    pub copy_seconds: f64,
    pub syncs: f64,
}

/// A predicted step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepCost {
    /// The GPU's busy time.
    pub gpu: f64,
    /// The host's enqueueing time.
    pub host: f64,
    /// The step.
    pub seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu_profile::sim::Accesses;

    fn launch(ctas: u32, threads: u32, sectors: u64, chain: u64) -> Launch {
        Launch {
            kernel: "k".into(),
            grid: [ctas, 1, 1],
            block: [threads, 1, 1],
            global_loads: Accesses {
                by_width: [0, 0, 0, 0, sectors * 2],
                bytes: sectors * 32,
            },
            global_sectors: sectors,
            max_thread_global_loads: chain,
            ..Default::default()
        }
    }

    #[test]
    fn a_large_stream_is_charged_at_the_share_of_peak_hbm_reaches() {
        // 1 GB of distinct sectors, one load per thread: DRAM-bound at 0.85 x 3.35 TB/s.
        let l = launch(1 << 16, 256, 1_000_000_000 / 32, 1);
        let cost = H100_SXM.kernel(&l, None);
        assert_eq!(cost.bound, Bound::Dram);
        assert!((cost.seconds - 1e9 / (3.35e12 * 0.85)).abs() < 1e-9);
    }

    #[test]
    fn a_long_chain_in_few_ctas_is_latency_bound() {
        // 9 CTAs whose threads each make 640 loads: 640 / 4 x 600 ns = 96 us,
        // however few bytes they move.
        let cost = H100_SXM.kernel(&launch(9, 128, 10_000, 640), None);
        assert_eq!(cost.bound, Bound::Latency);
        assert!((cost.seconds - 96e-6).abs() < 1e-9);
    }

    #[test]
    fn registers_and_shared_memory_bound_how_many_ctas_an_sm_holds() {
        // 128 threads: 16 CTAs by threads; at 192 registers, 65536 / (192 x 128) = 2; with
        // 41 KB of shared memory (+1 KB reserved), 228 KB / 42 KB = 5.
        let r = |registers, shared| {
            Some(Resources {
                registers,
                shared,
                spill_stores: 0,
            })
        };
        assert_eq!(H100_SXM.resident_per_sm(128, None), 16);
        assert_eq!(H100_SXM.resident_per_sm(128, r(192, 41 * 1024)), 2);
        assert_eq!(H100_SXM.resident_per_sm(128, r(32, 41 * 1024)), 5);
        // 600 CTAs of 128 threads at 2 an SM: 3 waves of 264, so the chain counts 3 times.
        let l = launch(600, 128, 1, 640);
        let one = H100_SXM.kernel(&l, None).seconds;
        assert!((H100_SXM.kernel(&l, r(192, 0)).seconds - 3.0 * one).abs() < 1e-12);
    }

    #[test]
    fn a_tiny_kernel_costs_the_minimum_and_a_large_gemm_the_tensor_cores() {
        assert_eq!(
            H100_SXM.kernel(&launch(1, 32, 1, 1), None).bound,
            Bound::Minimum
        );
        let (m, n, k) = (8192u64, 8192u64, 8192u64);
        let gemm = Gemm {
            m,
            n,
            k,
            flops: 2 * m * n * k,
            bytes: 2 * (m * k + k * n + m * n),
            in_graph: false,
        };
        let cost = H100_SXM.gemm(&gemm);
        assert_eq!(cost.bound, Bound::TensorCores);
        assert!((cost.seconds - gemm.flops as f64 / (989e12 * 0.8)).abs() < 1e-12);
    }

    #[test]
    fn a_step_overlaps_host_enqueueing_with_the_gpu_and_adds_what_serialises() {
        let parts = StepParts {
            kernels: 100.0,
            kernel_seconds: 1e-3,
            copy_seconds: 20e-6,
            syncs: 1.0,
            ..Default::default()
        };
        let cost = H100_SXM.step(&parts);
        // GPU: 1 ms + 100 gaps of 1 us; host: 100 x 4 us = 0.4 ms; the GPU is longer.
        assert!((cost.seconds - (1.1e-3 + 20e-6 + 5e-6)).abs() < 1e-12);
        // Under a graph the host's share is one graph launch.
        let graphed = H100_SXM.step(&StepParts {
            graph_kernels: 100.0,
            graph_launches: 1.0,
            kernel_seconds: 0.0,
            ..parts
        });
        assert!((graphed.host - 10e-6).abs() < 1e-12);
    }
}
