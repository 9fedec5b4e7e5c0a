//! The compiled kernels of one device, launched through one typed method per entry point (made
//! from the kernel table in [`super::kernels`]).
//!
//! Buffers are passed as typed device addresses ([`DevPtr`]): several kernels read and write
//! parts of one buffer at once (Q, K and V inside the fused QKV projection's output), which
//! borrowed views cannot express. The backend runs on one stream with cudarc's event tracking
//! off, so ordering is the stream's.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};

use super::error::CudaError;
use super::kernel_cache::{compile_cached, Source};
use super::kernels::{DevPtr, Grid, HeadDim, Heads, KvHeads, FILES};

/// One kernel argument, as the kernel's C signature declares it.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    /// A pointer (`T*`): a device address.
    Ptr(u64),
    /// `int`.
    I32(i32),
    /// `size_t`.
    Size(u64),
    /// `float`.
    F32(f32),
}

/// A launch method's parameter as the argument cuLaunchKernel takes.
pub trait IntoArg {
    fn into_arg(self) -> Arg;
}

impl<T> IntoArg for DevPtr<T> {
    fn into_arg(self) -> Arg {
        Arg::Ptr(self.addr())
    }
}

impl IntoArg for i32 {
    fn into_arg(self) -> Arg {
        Arg::I32(self)
    }
}

impl IntoArg for u64 {
    fn into_arg(self) -> Arg {
        Arg::Size(self)
    }
}

impl IntoArg for f32 {
    fn into_arg(self) -> Arg {
        Arg::F32(self)
    }
}

impl IntoArg for Heads {
    fn into_arg(self) -> Arg {
        Arg::I32(self.0)
    }
}

impl IntoArg for KvHeads {
    fn into_arg(self) -> Arg {
        Arg::I32(self.0)
    }
}

impl IntoArg for HeadDim {
    fn into_arg(self) -> Arg {
        Arg::I32(self.0)
    }
}

/// The device address of element `offset` of `buf`.
pub fn addr<T>(buf: &CudaSlice<T>, stream: &CudaStream, offset: usize) -> DevPtr<T> {
    let (base, _sync) = buf.device_ptr(stream);
    DevPtr::new(base + (offset * std::mem::size_of::<T>()) as u64)
}

/// Every entry point of [`FILES`], compiled for one device, with its threads per block.
pub struct Kernels {
    functions: HashMap<&'static str, (CudaFunction, u32)>,
}

impl Kernels {
    /// Compiles every kernel file with NVRTC for `arch` (e.g. `sm_90`), or takes it from the
    /// PTX cache ([`super::kernel_cache`]), and loads it.
    pub fn load(ctx: &Arc<CudaContext>, arch: &str) -> Result<Kernels, CudaError> {
        let started = std::time::Instant::now();
        let cache = super::kernel_cache::default_dir();
        let mut functions = HashMap::new();
        let mut cached = 0;
        for file in FILES {
            let (ptx, source) = compile_cached(file, arch, cache.as_deref()).map_err(|error| {
                CudaError::Compile {
                    file: file.name,
                    error,
                }
            })?;
            cached += usize::from(source == Source::Cache);
            let module = ctx.load_module(ptx)?;
            for entry in file.entries {
                let function = module.load_function(entry.name)?;
                functions.insert(entry.name, (function, entry.threads));
            }
        }
        tracing::info!(
            arch,
            cache = %cache.as_deref().map_or("none".into(), |d| d.display().to_string()),
            "{} kernel files ready ({cached} from the PTX cache) in {:.2?}",
            FILES.len(),
            started.elapsed()
        );
        Ok(Kernels { functions })
    }

    /// The entry point `name` and its threads per block.
    fn get(&self, name: &str) -> &(CudaFunction, u32) {
        self.functions
            .get(name)
            .unwrap_or_else(|| panic!("no kernel named {name} in kernels::FILES"))
    }

    /// Launches `name` on `stream` over `grid`, with the threads per block its
    /// [`super::kernels::Entry`] gives. Called by the typed launch methods only, whose
    /// parameters mirror the kernel's C signature.
    pub(super) fn launch(
        &self,
        stream: &CudaStream,
        name: &str,
        grid: Grid,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        let (function, block) = self.get(name);
        let grid = match grid {
            Grid::Blocks(x, y) => (x, y),
            Grid::Elements(n) => (n.div_ceil(*block as usize).max(1) as u32, 1),
        };
        let mut builder = stream.launch_builder(function);
        for arg in args {
            match arg {
                Arg::Ptr(v) | Arg::Size(v) => builder.arg(v),
                Arg::I32(v) => builder.arg(v),
                Arg::F32(v) => builder.arg(v),
            };
        }
        let config = LaunchConfig {
            grid_dim: (grid.0, grid.1, 1),
            block_dim: (*block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments follow the kernel's signature (see above) and address live
        // buffers of the sizes the kernel indexes; launches are ordered on one stream.
        unsafe { builder.launch(config) }?;
        Ok(())
    }
}
