//! The GEMMs, through cuBLAS: bf16 inputs, f32 accumulation, bf16 or f32 output.
//!
//! Our matrices are row-major and cuBLAS is column-major. A row-major `[rows, cols]` matrix is
//! the column-major `[cols, rows]` one, so `y = x · Wᵀ` (x `[t, in]`, W `[out, in]`, y
//! `[t, out]`, all row-major) is, column-major, `yᵀ = W' · xᵀ` with `W'` the stored W read
//! transposed: `gemm(op_a = T, op_b = N, m = out, n = t, k = in)`, no copies.

use std::sync::Arc;

use cudarc::cublas::{result, sys, CudaBlas};
use cudarc::driver::CudaStream;

use super::error::CudaError;
use super::kernel_timer::KernelTimer;
use super::kernels::{Bf16, DevPtr};

/// Where a GEMM writes, and as what.
#[derive(Debug, Clone, Copy)]
pub enum Output {
    /// bf16 output.
    Bf16(DevPtr<Bf16>),
    /// For logits: argmax and log-probabilities want more than bf16's 8 bits of mantissa.
    F32(DevPtr<f32>),
}

impl Output {
    /// The same output `columns` elements further on: where a tile of a matrix's rows writes
    /// its columns of a row-major `[t, out]` result.
    pub fn offset(self, columns: usize) -> Output {
        match self {
            Output::Bf16(y) => Output::Bf16(DevPtr::new(y.addr() + 2 * columns as u64)),
            Output::F32(y) => Output::F32(DevPtr::new(y.addr() + 4 * columns as u64)),
        }
    }
}

/// A weight matrix on the device: `[out, inp]`, row-major, bf16.
#[derive(Debug, Clone, Copy)]
pub struct Matrix {
    /// Row-major `[out, inp]` weights on the device.
    pub addr: DevPtr<Bf16>,
    /// Output features (rows).
    pub out: usize,
    /// Input features (columns).
    pub inp: usize,
}

pub struct Gemm {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
    timer: Arc<KernelTimer>,
}

impl Gemm {
    pub fn new(stream: Arc<CudaStream>, timer: Arc<KernelTimer>) -> Result<Gemm, CudaError> {
        Ok(Gemm {
            blas: CudaBlas::new(stream.clone())?,
            stream,
            timer,
        })
    }

    /// `y[t, out] = x[t, inp] · wᵀ`; `x` and `w` are bf16, `y` is bf16 or f32.
    pub fn linear(&self, x: DevPtr<Bf16>, t: usize, w: Matrix, y: Output) -> Result<(), CudaError> {
        self.linear_into(x, t, w, y, w.out)
    }

    /// As [`Gemm::linear`], into a `y` whose rows are `y_stride` elements apart (`w`'s
    /// columns of a wider result).
    pub fn linear_into(
        &self,
        x: DevPtr<Bf16>,
        t: usize,
        w: Matrix,
        y: Output,
        y_stride: usize,
    ) -> Result<(), CudaError> {
        let Matrix { addr: w, out, inp } = w;
        let (x, w) = (x.addr(), w.addr());
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (y, c_type) = match y {
            Output::Bf16(y) => (y.addr(), sys::cudaDataType::CUDA_R_16BF),
            Output::F32(y) => (y.addr(), sys::cudaDataType::CUDA_R_32F),
        };
        let label = || format!("cublas:{out}x{t}x{inp}");
        // SAFETY: the addresses are live device buffers of at least out*inp (w), t*inp (x) and
        // (t - 1) * y_stride + out (y) elements, on the handle's stream.
        self.timer.time(&self.stream, label, || unsafe {
            result::gemm_ex(
                *self.blas.handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                out as i32,
                t as i32,
                inp as i32,
                &alpha as *const f32 as *const _,
                w as *const _,
                sys::cudaDataType::CUDA_R_16BF,
                inp as i32,
                x as *const _,
                sys::cudaDataType::CUDA_R_16BF,
                inp as i32,
                &beta as *const f32 as *const _,
                y as *mut _,
                c_type,
                y_stride as i32,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )?;
            Ok(())
        })
    }
}
