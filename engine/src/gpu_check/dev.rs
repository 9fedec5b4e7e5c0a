//! A bare device for the per-kernel checks: the compiled kernels, a cuBLAS handle, and
//! upload/download helpers (bf16 through the host's rounding).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};

use crate::backend::cuda::backend::device_info;
use crate::backend::cuda::gemm::Gemm;
use crate::backend::cuda::launch::{addr, Arg, Kernels};
use crate::backend::cuda::{CudaError, DeviceInfo};

pub struct Dev {
    pub info: DeviceInfo,
    pub kernels: Kernels,
    pub gemm: Gemm,
    pub stream: Arc<CudaStream>,
    _ctx: Arc<CudaContext>,
}

impl Dev {
    pub fn open(ordinal: usize) -> Result<Dev, CudaError> {
        let ctx = CudaContext::new(ordinal)?;
        // SAFETY: one stream only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let info = device_info(&ctx, ctx.total_mem()? as u64)?;
        Ok(Dev {
            kernels: Kernels::load(&ctx, &info.arch)?,
            gemm: Gemm::new(stream.clone())?,
            info,
            stream,
            _ctx: ctx,
        })
    }

    /// `host` as bf16 on the device (rounded to nearest even, as the kernels round).
    pub fn bf16(&self, host: &[f32]) -> Result<CudaSlice<u16>, CudaError> {
        let bits: Vec<u16> = host
            .iter()
            .map(|v| half::bf16::from_f32(*v).to_bits())
            .collect();
        Ok(self.stream.clone_htod(&bits)?)
    }

    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, CudaError> {
        Ok(self.stream.clone_htod(host)?)
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        Ok(self.stream.alloc_zeros::<T>(n.max(1))?)
    }

    pub fn read_bf16(&self, buf: &CudaSlice<u16>) -> Result<Vec<f32>, CudaError> {
        Ok(self
            .read(buf)?
            .into_iter()
            .map(|b| half::bf16::from_bits(b).to_f32())
            .collect())
    }

    pub fn read<T: DeviceRepr>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>, CudaError> {
        let v = self.stream.clone_dtoh(buf)?;
        self.stream.synchronize()?;
        Ok(v)
    }

    pub fn at<T>(&self, buf: &CudaSlice<T>, offset: usize) -> Arg {
        addr(buf, &self.stream, offset)
    }

    pub fn launch(&self, name: &str, grid: (u32, u32), args: &[Arg]) -> Result<(), CudaError> {
        self.kernels.launch(&self.stream, name, grid, args)
    }
}
