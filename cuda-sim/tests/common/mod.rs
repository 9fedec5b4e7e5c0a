//! The fidelity kernels on the simulated device, for the simulator's tests.
#![allow(dead_code)]

use std::ffi::c_void;

pub(crate) use vigil_cuda_sim::driver::*;

pub(crate) const SOURCE: &str = include_str!("../kernels/fidelity.cu");

/// The fidelity kernels loaded on the simulated device.
pub(crate) struct Device {
    module: Handle,
}

pub(crate) fn ok(code: CUresult, what: &str) {
    assert_eq!(code, CUDA_SUCCESS, "{what}");
}

/// `source` compiled for sm_90 by the real NVRTC, as the text the driver loads.
pub(crate) fn ptx(source: String) -> std::ffi::CString {
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(
        source,
        cudarc::nvrtc::CompileOptions {
            arch: Some("sm_90"),
            ..Default::default()
        },
    )
    .expect("NVRTC (run the tests with `cargo xtask test`, which fetches it)");
    std::ffi::CString::new(ptx.to_src()).unwrap()
}

impl Device {
    pub(crate) fn open() -> Device {
        let text = ptx(SOURCE.to_owned());
        let mut module = std::ptr::null_mut();
        // SAFETY: plain calls of the simulated driver with valid out-pointers.
        unsafe {
            ok(cuInit(0), "cuInit");
            ok(
                cuModuleLoadData(&mut module, text.as_ptr() as *const c_void),
                "load",
            );
        }
        Device { module }
    }

    pub(crate) fn upload<T: Copy>(&self, data: &[T]) -> u64 {
        let bytes = std::mem::size_of_val(data);
        let mut p = 0;
        // SAFETY: as above; the copy stays inside the new allocation.
        unsafe {
            ok(cuMemAlloc_v2(&mut p, bytes.max(1)), "alloc");
            ok(
                cuMemcpyHtoD_v2(p, data.as_ptr() as *const c_void, bytes),
                "upload",
            );
        }
        p
    }

    /// Overwrites the allocation at `p` with `data`.
    pub(crate) fn upload_to<T: Copy>(&self, p: u64, data: &[T]) {
        // SAFETY: the caller's allocation holds `data`'s bytes.
        unsafe {
            ok(
                cuMemcpyHtoD_v2(
                    p,
                    data.as_ptr() as *const c_void,
                    std::mem::size_of_val(data),
                ),
                "upload",
            )
        };
    }

    pub(crate) fn download<T: Copy + Default>(&self, p: u64, n: usize) -> Vec<T> {
        let mut out = vec![T::default(); n];
        // SAFETY: as above.
        unsafe {
            ok(
                cuMemcpyDtoH_v2(
                    out.as_mut_ptr() as *mut c_void,
                    p,
                    n * std::mem::size_of::<T>(),
                ),
                "download",
            )
        };
        out
    }

    /// Launches `name` with `args` (each a pointer to its value, as cuLaunchKernel takes them).
    pub(crate) fn launch(
        &self,
        name: &str,
        grid: u32,
        block: u32,
        args: &mut [*mut c_void],
    ) -> CUresult {
        self.launch_on(std::ptr::null_mut(), name, grid, block, args)
    }

    /// [`Device::launch`] on `stream`.
    pub(crate) fn launch_on(
        &self,
        stream: Handle,
        name: &str,
        grid: u32,
        block: u32,
        args: &mut [*mut c_void],
    ) -> CUresult {
        let name = std::ffi::CString::new(name).unwrap();
        let mut f = std::ptr::null_mut();
        // SAFETY: as above; the arguments point at live values of the kernel's types.
        unsafe {
            ok(
                cuModuleGetFunction(&mut f, self.module, name.as_ptr()),
                "function",
            );
            cuLaunchKernel(
                f,
                grid,
                1,
                1,
                block,
                1,
                1,
                0,
                stream,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
    }
}

pub(crate) fn arg<T>(v: &mut T) -> *mut c_void {
    v as *mut T as *mut c_void
}
