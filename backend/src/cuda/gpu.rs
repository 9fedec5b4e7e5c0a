//! One GPU as the backend uses it: context, stream, compiled kernels and cuBLAS.
//!
//! One GPU as the backend (and `vigil check-gpu`) uses it: its context, the single stream
//! everything runs on, the compiled kernels and a cuBLAS handle on that stream.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};

use super::error::CudaError;
use super::gemm::Gemm;
use super::kernel_timer::KernelTimer;
use super::launch::Kernels;

/// The device and its name, as the log and `check-gpu` print them.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    pub arch: String,
    pub total_memory: u64,
    /// Streaming multiprocessors.
    pub sms: usize,
    /// Peak DRAM bandwidth from the memory clock and bus width (bytes/s), where the driver
    /// still reports them (CUDA 13 deprecates the memory clock attribute).
    pub memory_bandwidth: Option<f64>,
}

/// See the module documentation.
pub struct Gpu {
    /// What the device is.
    pub info: DeviceInfo,
    /// Free device memory when the context was made, before anything of ours was loaded (the
    /// KV plan's "free at start").
    pub free_at_open: u64,
    // Field order is drop order: the handles before the stream and context they live on.
    /// The compiled kernels.
    pub kernels: Kernels,
    /// The cuBLAS handle, bound to `stream`.
    pub gemm: Gemm,
    /// Times each launch of `kernels` and `gemm`, when switched on.
    pub timer: Arc<KernelTimer>,
    /// The one stream everything runs on.
    pub stream: Arc<CudaStream>,
    /// The device's primary context.
    pub ctx: Arc<CudaContext>,
}

impl Gpu {
    /// Opens device `ordinal`: one stream with cudarc's per-buffer event tracking off (one
    /// ordered stream needs none, and it would add work to every launch), the kernels compiled
    /// (or taken from the PTX cache) for its architecture, and a cuBLAS handle.
    pub fn open(ordinal: usize) -> Result<Gpu, CudaError> {
        let ctx = CudaContext::new(ordinal)?;
        // SAFETY: no buffer of this context is used from another stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let (free, total) = ctx.mem_get_info()?;
        let info = device_info(&ctx, total as u64)?;
        let timer = Arc::new(KernelTimer::new(&ctx));
        Ok(Gpu {
            free_at_open: free as u64,
            kernels: Kernels::load(&ctx, &info.arch, timer.clone())?,
            gemm: Gemm::new(stream.clone(), timer.clone())?,
            timer,
            info,
            stream,
            ctx,
        })
    }
}

/// The device's name, architecture for NVRTC, and peak memory bandwidth.
pub(crate) fn device_info(
    ctx: &Arc<CudaContext>,
    total_memory: u64,
) -> Result<DeviceInfo, CudaError> {
    use cudarc::driver::sys::CUdevice_attribute as A;
    let (major, minor) = ctx.compute_capability()?;
    let clock_khz = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE).ok();
    let bus_bits = ctx
        .attribute(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)
        .ok();
    let sms = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    Ok(DeviceInfo {
        name: ctx.name()?,
        arch: format!("sm_{major}{minor}"),
        total_memory,
        sms: sms.max(1) as usize,
        // Double data rate: two transfers per clock.
        memory_bandwidth: match (clock_khz, bus_bits) {
            (Some(khz), Some(bits)) if khz > 0 && bits > 0 => {
                Some(2.0 * f64::from(khz) * 1e3 * f64::from(bits) / 8.0)
            }
            _ => None,
        },
    })
}
