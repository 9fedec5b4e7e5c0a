//! The CUDA backend: the Llama forward pass on one GPU behind [`super::Backend`].
//!
//! - `kernels/`: the kernels as CUDA C, one file per family, compiled by NVRTC at start-up for
//!   the device's architecture ([`kernels`], [`launch`]); CI compiles them without a GPU.
//! - [`weights`]: bf16 weights on the device; [`gemm`]: cuBLAS GEMMs (bf16 in, f32 accumulate).
//! - [`step_plan`]: a step's metadata packed for one upload; [`workspace`]: activations.
//! - [`gpu`]: one device: context, stream, compiled kernels, cuBLAS handle.
//! - [`backend`]: [`CudaBackend`]; [`memory`]: KV cache sizing; [`timing`]: CUDA-event step
//!   timing; [`kernel_timer`]: CUDA-event times per launch, when asked; [`availability`]: whether this host can run any of it, and why not.
//!
//! Everything is loaded at run time through cudarc (libcuda, libnvrtc, libcublas), so the binary
//! builds and runs on machines without CUDA.

pub(crate) mod attention;
pub(crate) mod availability;
pub(crate) mod backend;
pub(crate) mod error;
pub(crate) mod gemm;
pub(crate) mod gpu;
pub(crate) mod graphs;
pub(crate) mod kernel_cache;
pub(crate) mod kernel_timer;
pub(crate) mod kernels;
pub(crate) mod launch;
pub(crate) mod memory;
pub(crate) mod pinned;
pub mod ptxas;
pub(crate) mod quantized;
pub mod rope;
pub(crate) mod step_plan;
pub(crate) mod timing;
pub(crate) mod weights;
pub(crate) mod workspace;

pub use backend::{CudaBackend, CudaOptions};
pub use error::CudaError;
