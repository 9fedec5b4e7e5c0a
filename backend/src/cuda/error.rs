//! What can go wrong on the device side, with enough said to act on it.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;
use cudarc::nvrtc::CompileError;

use crate::BackendError;
use model::LoadError;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("CUDA driver: {0:?}")]
    Driver(#[from] DriverError),
    #[error("cuBLAS: {0:?}")]
    Blas(#[from] CublasError),
    #[error("NVRTC could not compile {file}: {error:?}")]
    Compile {
        file: &'static str,
        error: CompileError,
    },
    #[error("the model does not fit this backend: {0}")]
    Unsupported(String),
    #[error("device memory: {0}")]
    Memory(String),
    #[error(transparent)]
    Load(#[from] LoadError),
}

impl From<CudaError> for BackendError {
    fn from(e: CudaError) -> Self {
        BackendError::Device(e.to_string())
    }
}
