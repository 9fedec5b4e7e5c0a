//! The simulated GPU's profile, read from the simulator this process loaded as `libcuda.so`.
//!
//! `cuda-sim` exports three C functions beside the driver API: `cuda_sim_profile_enable`,
//! `cuda_sim_profile_take` (what the device was asked to do since the last take, as JSON) and
//! `cuda_sim_profile_free`. They are looked up in the `libcuda.so.1` cudarc already loaded; on a
//! real driver they are absent and profiling is refused with the reason.

use std::ffi::{c_char, c_int, c_void, CStr};

use serde::Deserialize;

/// Global-memory accesses of one direction.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Accesses {
    /// Accesses of 1, 2, 4, 8 and 16 bytes.
    pub by_width: [u64; 5],
    pub bytes: u64,
}

impl Accesses {
    pub(crate) fn count(&self) -> u64 {
        self.by_width.iter().sum()
    }
}

/// A launch's accesses within one device allocation.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Region {
    pub start: u64,
    pub loaded_bytes: u64,
    pub sectors: u64,
}

/// One kernel launch as the simulator counted it.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Launch {
    pub kernel: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub global_loads: Accesses,
    pub global_stores: Accesses,
    pub global_sectors: u64,
    pub max_thread_global_loads: u64,
    pub regions: Vec<Region>,
    /// Run by a graph's replay, not launched on its own.
    pub in_graph: bool,
}

impl Launch {
    pub(crate) fn ctas(&self) -> u64 {
        self.grid.iter().map(|&g| g as u64).product()
    }
    pub(crate) fn threads_per_cta(&self) -> u64 {
        self.block.iter().map(|&b| b as u64).product()
    }
}

/// One cuBLAS GEMM.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub(crate) struct Gemm {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub flops: u64,
    pub bytes: u64,
    /// Run by a graph's replay.
    pub in_graph: bool,
}

/// One copy between host and device.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Copy {
    pub kind: String,
    pub bytes: u64,
    /// Whether its host side is page-locked.
    pub pinned: bool,
}

/// What the device was asked to do between two takes.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Profile {
    pub launches: Vec<Launch>,
    pub gemms: Vec<Gemm>,
    pub copies: Vec<Copy>,
    pub syncs: u64,
    /// Graphs launched (their kernels and GEMMs are in the lists above, marked).
    pub graph_launches: u64,
}

type Enable = unsafe extern "C" fn(c_int);
type Take = unsafe extern "C" fn() -> *mut c_char;
type Free = unsafe extern "C" fn(*mut c_char);

/// The simulator's profiling entry points.
pub(crate) struct Profiler {
    enable: Enable,
    take: Take,
    free: Free,
}

impl Profiler {
    /// The entry points of the simulator loaded as the CUDA driver (after the backend opened
    /// the device, so that the library is loaded).
    pub(crate) fn find() -> anyhow::Result<Profiler> {
        let name = c"libcuda.so.1";
        // SAFETY: RTLD_NOLOAD only looks up a library already loaded; nothing is run.
        let lib = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        anyhow::ensure!(
            !lib.is_null(),
            "no CUDA driver is loaded (the profile runs on the simulated GPU: cargo xtask gpu-profile)"
        );
        let symbol = |name: &CStr| -> anyhow::Result<*mut c_void> {
            // SAFETY: a lookup in a loaded library.
            let f = unsafe { libc::dlsym(lib, name.as_ptr()) };
            anyhow::ensure!(
                !f.is_null(),
                "the CUDA driver loaded is not the simulated GPU (it has no {name:?}): the profile counts what the simulator runs; run it with cargo xtask gpu-profile"
            );
            Ok(f)
        };
        // SAFETY: the simulator's C entry points, with these signatures (cuda-sim's profile.rs).
        unsafe {
            Ok(Profiler {
                enable: std::mem::transmute::<*mut c_void, Enable>(symbol(
                    c"cuda_sim_profile_enable",
                )?),
                take: std::mem::transmute::<*mut c_void, Take>(symbol(c"cuda_sim_profile_take")?),
                free: std::mem::transmute::<*mut c_void, Free>(symbol(c"cuda_sim_profile_free")?),
            })
        }
    }

    /// Profiles from now on, or stops.
    pub(crate) fn enable(&self, on: bool) {
        // SAFETY: a plain store in the simulator.
        unsafe { (self.enable)(on as c_int) }
    }

    /// What the device was asked to do since the last take.
    pub(crate) fn take(&self) -> anyhow::Result<Profile> {
        Ok(self.take_raw()?.0)
    }

    /// [`Profiler::take`], with the simulator's JSON as it came.
    pub(crate) fn take_raw(&self) -> anyhow::Result<(Profile, String)> {
        // SAFETY: returns null or a NUL-terminated string we free once below.
        let json = unsafe { (self.take)() };
        anyhow::ensure!(!json.is_null(), "the simulator's profiling is off");
        // SAFETY: non-null, NUL-terminated, alive until freed.
        let text = unsafe { CStr::from_ptr(json) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: from `take`, freed once.
        unsafe { (self.free)(json) };
        Ok((serde_json::from_str(&text)?, text))
    }
}
