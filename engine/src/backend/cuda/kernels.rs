//! The CUDA kernels and their compilation by NVRTC at start-up, for the device's architecture.
//!
//! Sources carry no `#include` (NVRTC finds no system headers without a CUDA toolkit): the
//! shared helpers of `kernels/common.cuh` are prepended to every file instead.

use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};

/// Helpers every kernel file uses (bf16 conversions, warp and block reductions).
pub const COMMON: &str = include_str!("kernels/common.cuh");

/// One kernel family: its file and the entry points it defines.
pub struct KernelFile {
    pub name: &'static str,
    pub source: &'static str,
    pub entries: &'static [&'static str],
}

/// Every kernel file of the backend.
pub const FILES: &[KernelFile] = &[
    KernelFile {
        name: "embedding.cu",
        source: include_str!("kernels/embedding.cu"),
        entries: &["embedding_gather"],
    },
    KernelFile {
        name: "norm.cu",
        source: include_str!("kernels/norm.cu"),
        entries: &["rms_norm", "add_inplace"],
    },
    KernelFile {
        name: "rope.cu",
        source: include_str!("kernels/rope.cu"),
        entries: &["rope"],
    },
    KernelFile {
        name: "activation.cu",
        source: include_str!("kernels/activation.cu"),
        entries: &["silu_and_mul"],
    },
    KernelFile {
        name: "kv_cache.cu",
        source: include_str!("kernels/kv_cache.cu"),
        entries: &["kv_cache_write"],
    },
    KernelFile {
        name: "attention.cu",
        source: include_str!("kernels/attention.cu"),
        entries: &["paged_attention"],
    },
    KernelFile {
        name: "sampling.cu",
        source: include_str!("kernels/sampling.cu"),
        entries: &["argmax_rows"],
    },
    KernelFile {
        name: "dequant.cu",
        source: include_str!("kernels/dequant.cu"),
        entries: &[
            "dequant_q8_0",
            "dequant_q4_0",
            "dequant_q4_1",
            "convert_f16",
            "convert_f32",
        ],
    },
];

/// Whether libnvrtc can be loaded here.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC options besides the architecture.
pub const OPTIONS: &[&str] = &["-std=c++17"];

/// Compiles `file` to PTX for `arch` (e.g. `sm_90`, from the device's compute capability).
/// Panics inside cudarc when libnvrtc is missing: check [`nvrtc_available`] first.
pub fn compile(file: &KernelFile, arch: &str) -> Result<Ptx, CompileError> {
    let mut options = vec![format!("--gpu-architecture={arch}")];
    options.extend(OPTIONS.iter().map(|o| o.to_string()));
    compile_ptx_with_opts(
        format!("{COMMON}\n{}", file.source),
        CompileOptions {
            options,
            name: Some(file.name.to_owned()),
            ..Default::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI has no GPU but loads the real NVRTC (`cargo xtask test` fetches libnvrtc from PyPI's
    /// nvidia-cuda-nvrtc-cu12 and puts it on LD_LIBRARY_PATH).
    #[test]
    fn every_kernel_compiles_with_nvrtc_for_ampere_and_hopper() {
        assert!(
            nvrtc_available(),
            "libnvrtc cannot be loaded: run the tests with `cargo xtask test`, which fetches it \
             (PyPI nvidia-cuda-nvrtc-cu12) and sets LD_LIBRARY_PATH"
        );
        for arch in ["sm_80", "sm_90"] {
            for file in FILES {
                let ptx = compile(file, arch)
                    .unwrap_or_else(|e| panic!("{} for {arch}: {e:?}", file.name))
                    .to_src();
                assert!(ptx.contains(&format!(".target {arch}")), "{}", file.name);
                for entry in file.entries {
                    assert!(
                        ptx.contains(&format!(".entry {entry}(")),
                        "{}: no entry {entry} for {arch}",
                        file.name
                    );
                }
            }
        }
    }

    #[test]
    fn a_kernel_with_an_error_is_reported_not_compiled() {
        if !nvrtc_available() {
            panic!("libnvrtc cannot be loaded: run the tests with `cargo xtask test`");
        }
        let bad = KernelFile {
            name: "bad.cu",
            source: "extern \"C\" __global__ void broken(float* x) { x[0] = undefined_name; }",
            entries: &["broken"],
        };
        let err = compile(&bad, "sm_80").expect_err("an undefined name does not compile");
        assert!(format!("{err:?}").contains("undefined_name"), "{err:?}");
    }
}
