//! Whether this host can run the CUDA backend, and if not, why.
//!
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
    /// The driver loaded but reports no device.
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
                "libnvrtc cannot be loaded (install the CUDA runtime libraries, or put libnvrtc.so on LD_LIBRARY_PATH; for pip's NVIDIA wheels see backend/src/cuda/cuda-libs.sh)"
            ),
            NoCuda::NoCublas => write!(
                f,
                "libcublas cannot be loaded (install the CUDA runtime libraries, or put libcublas.so on LD_LIBRARY_PATH; for pip's NVIDIA wheels see backend/src/cuda/cuda-libs.sh)"
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

#[cfg(test)]
mod tests {
    /// `cuda-libs.sh` links pip's CUDA 13 libraries under the unversioned names cudarc opens,
    /// and prints the LD_LIBRARY_PATH line (a fake site-packages stands in for PyTorch's).
    #[test]
    fn cuda_libs_script_links_pip_libraries_under_loadable_names() {
        let tmp = tempfile::tempdir().unwrap();
        let site = tmp.path().join("site");
        for (pkg, lib) in [
            ("cuda_nvrtc", "libnvrtc.so.13"),
            ("cuda_nvrtc", "libnvrtc-builtins.so.13.0"),
            ("cublas", "libcublas.so.12"),
            ("cublas", "libcublas.so.13"),
            ("cublas", "libcublasLt.so.13"),
        ] {
            let dir = site.join("nvidia").join(pkg).join("lib");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(lib), b"").unwrap();
        }
        let python = tmp.path().join("python");
        std::fs::write(&python, format!("#!/bin/sh\necho {}\n", site.display())).unwrap();
        std::fs::set_permissions(&python, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let dest = tmp.path().join("libs");
        let run = || {
            std::process::Command::new("sh")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/src/cuda/cuda-libs.sh"
                ))
                .arg(&dest)
                .env("PYTHON", &python)
                .output()
                .unwrap()
        };
        let out = run();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        assert!(
            line.starts_with(&format!("export LD_LIBRARY_PATH={}", dest.display())),
            "{line}"
        );
        let target = |name: &str| std::fs::read_link(dest.join(name)).unwrap();
        assert!(target("libnvrtc.so").ends_with("cuda_nvrtc/lib/libnvrtc.so.13"));
        assert!(
            target("libcublas.so").ends_with("cublas/lib/libcublas.so.13"),
            "the newest"
        );
        assert!(target("libcublasLt.so").ends_with("libcublasLt.so.13"));
        assert!(target("libnvrtc-builtins.so.13.0").ends_with("libnvrtc-builtins.so.13.0"));
        // Nothing to link: an error that says where it looked.
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::write(&python, format!("#!/bin/sh\necho {}\n", empty.display())).unwrap();
        let out = run();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no nvidia/*/lib under"));
    }
}
