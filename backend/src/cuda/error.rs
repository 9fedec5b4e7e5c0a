//! What can go wrong on the device side, with enough said to act on it.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;
use cudarc::nvrtc::CompileError;

use crate::BackendError;
use model::LoadError;

/// What can fail on the device, from loading to a step.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// The CUDA driver refused a call.
    #[error("CUDA driver: {0:?}")]
    Driver(#[from] DriverError),
    /// cuBLAS refused a call.
    #[error("cuBLAS: {0:?}")]
    Blas(#[from] CublasError),
    /// NVRTC could not compile a kernel file.
    #[error("NVRTC could not compile {file}: {error:?}")]
    Compile {
        /// The kernel file.
        file: &'static str,
        /// NVRTC's error and log.
        error: CompileError,
    },
    /// The model or device lacks something the backend needs.
    #[error("the model does not fit this backend: {0}")]
    Unsupported(String),
    /// The device's memory cannot hold what was asked.
    #[error("device memory: {0}")]
    Memory(String),
    /// The weights could not be read.
    #[error(transparent)]
    Load(#[from] LoadError),
}

impl From<CudaError> for BackendError {
    fn from(e: CudaError) -> Self {
        BackendError::Device(e.to_string())
    }
}
