//! A simulated CUDA device for tests, running the engine's own kernels on the CPU.
//!
//! A simulated CUDA device for tests: stand-ins for `libcuda.so` (the driver API subset cudarc
//! and Vigil call) and `libcublas.so` (handles and `cublasGemmEx`) that run the engine's own
//! kernels, compiled for the host from the same `.cu` sources, on the CPU.
//!
//! - [`driver`]: the driver's C functions; `blas`: cuBLAS's.
//! - `ptx`: what a module load reads from NVRTC's PTX, checked against `kernels`, the entry
//!   points build.rs compiled for the host.
//! - `threads`: a grid's blocks on the host's cores, a block's threads as fibers with real
//!   barrier, shuffle and vote semantics.
//! - `memory` and `memcheck`: guarded device allocations, and reports of out-of-bounds
//!   accesses with the kernel, block and thread.
//! - `profile`: with `VIGIL_SIM_PROFILE` set, what each launch loads and stores in global memory
//!   (by access width, and distinct 32-byte sectors), from a second, instrumented kernel build.
//! - `device`: the simulated GPU's properties (an H100's, with the memory size of our choice).
//! - `nvml`: a simulated NVML (`libnvidia-ml.so.1`) answering from a node profile
//!   (`profiles/*.json`).
//!
//! `cargo xtask test` builds the cdylib and links it as `libcuda.so`, `libcublas.so` and
//! `libnvidia-ml.so.1` in
//! `target/cuda-sim/`; a process with that folder first on `LD_LIBRARY_PATH` sees one GPU
//! (and, with `VIGIL_NVML_PROFILE` naming a profile, NVML sees that profile's node).
//! What it cannot show: timing, the GPU's memory model (a race that works when threads run in
//! turn), the driver's and the hardware's own behaviour.

mod blas;
mod device;
pub mod driver;
mod graph;
mod kernels;
mod memcheck;
mod memory;
mod nvml;
mod profile;
mod ptx;
mod threads;

pub use kernels::find as find_kernel;
pub use profile::{
    cuda_sim_profile_enable, cuda_sim_profile_free, cuda_sim_profile_take, take as take_profile,
    Accesses, CopyKind, CopyProfile, GemmProfile, LaunchProfile, Profile, RegionProfile,
    SECTOR_BYTES, WIDTHS,
};
pub use threads::{run_grid, Launch};
