//! The CUDA backend, under construction (issue 7). In so far: the kernels, as CUDA C sources
//! (one file per kernel family in `kernels/`), and their run-time compilation by NVRTC
//! ([`kernels`]), checked in CI without a GPU. To come: device memory for weights (bf16) and the
//! paged KV cache, cuBLAS GEMMs, the forward pass behind [`super::Backend`], `--device`.
//!
//! Everything is loaded at run time through cudarc (libcuda, libnvrtc, libcublas), so the binary
//! builds and runs on machines without CUDA.

pub mod device;
pub mod kernels;
pub mod memory;
pub mod rope;
pub mod step_plan;
