//! A bare device for the per-kernel checks, with upload and download helpers.
//!
//! A bare device for the per-kernel checks: the backend's [`Gpu`] (kernels, cuBLAS, stream)
//! with upload/download helpers (bf16 through the host's rounding).

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

use backend::kernel_check::DevPtr;
use backend::kernel_check::Gpu;
use backend::kernel_check::{addr, Kernels};
use backend::CudaError;

pub(crate) struct Dev {
    pub gpu: Gpu,
}

impl Dev {
    pub(crate) fn open(ordinal: usize) -> Result<Dev, CudaError> {
        Ok(Dev {
            gpu: Gpu::open(ordinal)?,
        })
    }

    /// `host` as bf16 on the device (rounded to nearest even, as the kernels round).
    pub(crate) fn bf16(&self, host: &[f32]) -> Result<CudaSlice<u16>, CudaError> {
        let bits: Vec<u16> = host
            .iter()
            .map(|v| half::bf16::from_f32(*v).to_bits())
            .collect();
        Ok(self.gpu.stream.clone_htod(&bits)?)
    }

    pub(crate) fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, CudaError> {
        Ok(self.gpu.stream.clone_htod(host)?)
    }

    pub(crate) fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        Ok(self.gpu.stream.alloc_zeros::<T>(n.max(1))?)
    }

    pub(crate) fn read_bf16(&self, buf: &CudaSlice<u16>) -> Result<Vec<f32>, CudaError> {
        Ok(self
            .read(buf)?
            .into_iter()
            .map(|b| half::bf16::from_bits(b).to_f32())
            .collect())
    }

    pub(crate) fn read<T: DeviceRepr>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>, CudaError> {
        let v = self.gpu.stream.clone_dtoh(buf)?;
        self.gpu.stream.synchronize()?;
        Ok(v)
    }

    pub(crate) fn at<T>(&self, buf: &CudaSlice<T>, offset: usize) -> DevPtr<T> {
        addr(buf, &self.gpu.stream, offset)
    }

    /// The kernels' launch methods and the stream they run on.
    pub(crate) fn kernels(&self) -> (&Kernels, &cudarc::driver::CudaStream) {
        (&self.gpu.kernels, &self.gpu.stream)
    }
}
