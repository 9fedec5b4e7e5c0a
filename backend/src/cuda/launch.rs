//! The compiled kernels of one device, launched with typed argument structs.
//!
//! The compiled kernels of one device, launched with the argument struct of an entry point
//! (made from the kernel table in [`super::kernels`]).
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
use super::kernel_timer::KernelTimer;
use super::kernels::{Arg, DevPtr, Grid, KernelArgs, FILES};

/// The device address of element `offset` of `buf`.
pub fn addr<T>(buf: &CudaSlice<T>, stream: &CudaStream, offset: usize) -> DevPtr<T> {
    let (base, _sync) = buf.device_ptr(stream);
    DevPtr::new(base + (offset * std::mem::size_of::<T>()) as u64)
}

/// Every entry point of [`FILES`], compiled for one device, with its threads per block.
pub struct Kernels {
    functions: HashMap<&'static str, (CudaFunction, u32)>,
    timer: Arc<KernelTimer>,
}

impl Kernels {
    /// Compiles every kernel file with NVRTC for `arch` (e.g. `sm_90`), or takes it from the
    /// PTX cache (`super::kernel_cache`), and loads it.
    pub fn load(
        ctx: &Arc<CudaContext>,
        arch: &str,
        timer: Arc<KernelTimer>,
    ) -> Result<Kernels, CudaError> {
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
        Ok(Kernels { functions, timer })
    }

    /// The entry point `name` and its threads per block.
    fn get(&self, name: &str) -> &(CudaFunction, u32) {
        self.functions
            .get(name)
            .unwrap_or_else(|| panic!("no kernel named {name} in kernels::FILES"))
    }

    /// Launches the kernel `args` are for on `stream` over `grid`, with the threads per block
    /// its [`super::kernels::Entry`] gives.
    pub fn run<A: KernelArgs>(
        &self,
        stream: &CudaStream,
        grid: Grid,
        args: A,
    ) -> Result<(), CudaError> {
        args.with_args(|list| self.launch(stream, A::ENTRY, grid, list))
    }

    /// Launches `name` on `stream` over `grid`, with the threads per block its
    /// [`super::kernels::Entry`] gives; `args` mirror the kernel's C signature.
    fn launch(
        &self,
        stream: &CudaStream,
        name: &str,
        grid: Grid,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        let (function, block) = self.get(name);
        let grid = match grid {
            Grid::Blocks(x, y) => (x, y, 1),
            Grid::Blocks3(x, y, z) => (x, y, z),
            Grid::Elements(n) => (n.div_ceil(*block as usize).max(1) as u32, 1, 1),
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
            grid_dim: grid,
            block_dim: (*block, 1, 1),
            shared_mem_bytes: 0,
        };
        self.timer.time(
            stream,
            || name.to_owned(),
            || {
                // SAFETY: the arguments follow the kernel's signature (see above) and address live
                // buffers of the sizes the kernel indexes; launches are ordered on one stream.
                unsafe { builder.launch(config) }?;
                Ok(())
            },
        )
    }
}
