//! The kernels compiled for the host, by entry point.
//!
//! The kernels compiled for the host (by build.rs): each entry point's name, source file,
//! launcher and parameter sizes.

use std::ffi::{c_char, c_void, CStr};
use std::sync::OnceLock;

/// Runs one CUDA thread of an entry point with cuLaunchKernel's parameter array.
pub(crate) type Launcher = unsafe extern "C" fn(*mut *mut c_void);

#[repr(C)]
struct RawKernel {
    name: *const c_char,
    file: *const c_char,
    digest: *const c_char,
    launch: Launcher,
    launch_profiled: Launcher,
    n_params: u32,
    sizes: *const u32,
}

extern "C" {
    static cuda_sim_kernels: [RawKernel; 0];
    static cuda_sim_kernel_count: u32;
}

/// An entry point compiled for the host.
#[derive(Debug)]
pub struct HostKernel {
    pub name: &'static str,
    pub file: &'static str,
    /// The SHA-256 (hex) of the source NVRTC compiles for it (the file, after `common.cuh`
    /// for the engine's kernels), which the backend's PTX carries as `vigil_source_digest`.
    pub digest: &'static str,
    pub launch: Launcher,
    /// The same, built so that each memory access is counted (see `crate::profile`).
    pub launch_profiled: Launcher,
    /// Each parameter's size in bytes, in order, as the C signature declares them.
    pub param_sizes: &'static [u32],
}

/// Every entry point build.rs found.
pub(crate) fn all() -> &'static [HostKernel] {
    static ALL: OnceLock<Vec<HostKernel>> = OnceLock::new();
    ALL.get_or_init(|| {
        // SAFETY: build.rs writes `cuda_sim_kernel_count` entries of static, NUL-terminated
        // names and size arrays of `n_params` elements.
        unsafe {
            let raw = std::slice::from_raw_parts(
                cuda_sim_kernels.as_ptr(),
                cuda_sim_kernel_count as usize,
            );
            raw.iter()
                .map(|k| HostKernel {
                    name: CStr::from_ptr(k.name).to_str().unwrap(),
                    file: CStr::from_ptr(k.file).to_str().unwrap(),
                    digest: CStr::from_ptr(k.digest).to_str().unwrap(),
                    launch: k.launch,
                    launch_profiled: k.launch_profiled,
                    param_sizes: std::slice::from_raw_parts(k.sizes, k.n_params as usize),
                })
                .collect()
        }
    })
}

/// The host-compiled kernel named `name`.
pub fn find(name: &str) -> Option<&'static HostKernel> {
    all().iter().find(|k| k.name == name)
}
