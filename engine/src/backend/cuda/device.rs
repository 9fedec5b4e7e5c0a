//! Whether this host can run the CUDA backend, and if not, why: the driver library, a device,
//! NVRTC and cuBLAS, each loaded at run time. `--device auto` uses the answer to fall back to
//! the CPU (with one log line); `--device cuda` turns a "no" into a start-up error.

use std::fmt;

/// Why the CUDA backend cannot run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoCuda {
    /// libcuda.so.1 (the NVIDIA driver's library) cannot be loaded.
    NoDriverLibrary,
    /// The driver did not initialise (e.g. no kernel module), with its error.
    DriverInit(String),
    NoDevice,
    /// libnvrtc (kernels are compiled at start-up) cannot be loaded.
    NoNvrtc,
    /// libcublas (the GEMMs) cannot be loaded.
    NoCublas,
}

impl fmt::Display for NoCuda {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoCuda::NoDriverLibrary => {
                write!(f, "libcuda.so.1 cannot be loaded (no NVIDIA driver on this host)")
            }
            NoCuda::DriverInit(e) => write!(f, "the CUDA driver did not initialise: {e}"),
            NoCuda::NoDevice => write!(f, "the CUDA driver sees no GPU"),
            NoCuda::NoNvrtc => write!(
                f,
                "libnvrtc cannot be loaded (install the CUDA runtime libraries, or put libnvrtc.so on LD_LIBRARY_PATH)"
            ),
            NoCuda::NoCublas => write!(
                f,
                "libcublas cannot be loaded (install the CUDA runtime libraries, or put libcublas.so on LD_LIBRARY_PATH)"
            ),
        }
    }
}

/// The number of CUDA devices, once every library the backend needs loads.
pub fn probe() -> Result<usize, NoCuda> {
    // SAFETY: each check only tries to dlopen the library by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(NoCuda::NoDriverLibrary);
    }
    let count = cudarc::driver::CudaContext::device_count()
        .map_err(|e| NoCuda::DriverInit(format!("{e:?}")))?;
    if count < 1 {
        return Err(NoCuda::NoDevice);
    }
    if !super::kernels::nvrtc_available() {
        return Err(NoCuda::NoNvrtc);
    }
    // SAFETY: as above.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(NoCuda::NoCublas);
    }
    Ok(count as usize)
}
