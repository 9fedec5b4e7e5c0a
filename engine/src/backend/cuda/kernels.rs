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
    pub entries: &'static [Entry],
}

/// An entry point and the threads per block every launch of it uses (the one place that says
/// so: launches read it from here, and a test checks with ptxas that it fits the registers).
pub struct Entry {
    pub name: &'static str,
    pub threads: u32,
}

const fn entry(name: &'static str, threads: u32) -> Entry {
    Entry { name, threads }
}

/// Every kernel file of the backend.
pub const FILES: &[KernelFile] = &[
    KernelFile {
        name: "embedding.cu",
        source: include_str!("kernels/embedding.cu"),
        entries: &[entry("embedding_gather", 256)],
    },
    KernelFile {
        name: "norm.cu",
        source: include_str!("kernels/norm.cu"),
        entries: &[entry("rms_norm", 256), entry("add_inplace", 256)],
    },
    KernelFile {
        name: "rope.cu",
        source: include_str!("kernels/rope.cu"),
        entries: &[entry("rope", 128)],
    },
    KernelFile {
        name: "activation.cu",
        source: include_str!("kernels/activation.cu"),
        entries: &[entry("silu_and_mul", 256)],
    },
    KernelFile {
        name: "kv_cache.cu",
        source: include_str!("kernels/kv_cache.cu"),
        entries: &[entry("kv_cache_write", 256)],
    },
    KernelFile {
        name: "attention.cu",
        source: include_str!("kernels/attention.cu"),
        entries: &[entry("paged_attention", 128)],
    },
    KernelFile {
        name: "sampling.cu",
        source: include_str!("kernels/sampling.cu"),
        entries: &[entry("argmax_rows", 1024)],
    },
    KernelFile {
        name: "dequant.cu",
        source: include_str!("kernels/dequant.cu"),
        entries: &[
            entry("dequant_q8_0", 256),
            entry("dequant_q4_0", 256),
            entry("dequant_q4_1", 256),
            entry("convert_f16", 256),
            entry("convert_f32", 256),
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
                        ptx.contains(&format!(".entry {}(", entry.name)),
                        "{}: no entry {} for {arch}",
                        file.name,
                        entry.name
                    );
                }
            }
        }
    }

    /// What ptxas reports for one entry point.
    #[derive(Debug, Default)]
    struct Resources {
        registers: u32,
        shared: u32,
        spill_stores: u32,
    }

    /// Parses `ptxas -v`: per entry, "Function properties for NAME" then "N bytes spill
    /// stores", and "Compiling entry function 'NAME'" then "Used N registers, ... M bytes smem".
    fn parse_ptxas(report: &str) -> std::collections::HashMap<String, Resources> {
        let mut out: std::collections::HashMap<String, Resources> = Default::default();
        let mut current = String::new();
        let number_before = |line: &str, unit: &str| -> Option<u32> {
            let at = line.find(unit)?;
            line[..at].split_whitespace().last()?.parse().ok()
        };
        for line in report.lines() {
            if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                current = rest.split('\'').next().unwrap_or_default().to_owned();
            } else if let Some(rest) = line.split("Function properties for ").nth(1) {
                current = rest.trim().to_owned();
            }
            let r = out.entry(current.clone()).or_default();
            if let Some(n) = number_before(line, " registers") {
                r.registers = n;
            }
            if let Some(n) = number_before(line, " bytes smem") {
                r.shared = n;
            }
            if let Some(n) = number_before(line, " bytes spill stores") {
                r.spill_stores = n;
            }
        }
        out
    }

    /// ptxas (CI fetches it from PyPI's nvidia-cuda-nvcc-cu12) assembles every kernel for Ampere
    /// and Hopper, as the driver will, and each fits the launch the backend makes: registers ×
    /// threads per block within the 64K-register file, static shared memory within 48 KiB, and
    /// no spills to local memory.
    #[test]
    fn every_kernel_fits_its_launch_in_registers_and_shared_memory() {
        assert!(nvrtc_available(), "run the tests with `cargo xtask test`");
        let ptxas = std::env::var_os("VIGIL_PTXAS").expect(
            "VIGIL_PTXAS names no ptxas: run the tests with `cargo xtask test`, which fetches it \
             (PyPI nvidia-cuda-nvcc-cu12)",
        );
        let dir = tempfile::tempdir().unwrap();
        for arch in ["sm_80", "sm_90"] {
            for file in FILES {
                let ptx = compile(file, arch).unwrap().to_src();
                let path = dir.path().join(format!("{}-{arch}.ptx", file.name));
                std::fs::write(&path, ptx).unwrap();
                let out = std::process::Command::new(&ptxas)
                    .args([&format!("-arch={arch}"), "-v", "-o", "/dev/null"])
                    .arg(&path)
                    .output()
                    .expect("run ptxas");
                let report = String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "ptxas {} {arch}: {report}", file.name);
                let resources = parse_ptxas(&report);
                for entry in file.entries {
                    let r = resources
                        .get(entry.name)
                        .unwrap_or_else(|| panic!("no ptxas report for {}: {report}", entry.name));
                    eprintln!("{arch} {}: {r:?} at {} threads", entry.name, entry.threads);
                    assert!(r.registers > 0, "{}: {report}", entry.name);
                    assert!(
                        r.registers * entry.threads <= 65536,
                        "{} {arch}: {} registers x {} threads exceed the register file",
                        entry.name,
                        r.registers,
                        entry.threads
                    );
                    assert!(r.shared <= 48 * 1024, "{} {arch}: {r:?}", entry.name);
                    assert_eq!(r.spill_stores, 0, "{} {arch} spills: {r:?}", entry.name);
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
            entries: &[Entry {
                name: "broken",
                threads: 32,
            }],
        };
        let err = compile(&bad, "sm_80").expect_err("an undefined name does not compile");
        assert!(format!("{err:?}").contains("undefined_name"), "{err:?}");
    }
}
