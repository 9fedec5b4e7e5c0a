//! Compiles the CUDA kernels for the host, for the simulator to run.
//!
//! Compiles the CUDA kernels for the host: the engine's own `.cu` files (with `common.cuh`
//! prepended, as the engine does before NVRTC) and this crate's fidelity kernels, each as C++
//! with `include/cuda_sim.h` force-included. For every `extern "C" __global__` entry point it
//! writes a launcher that takes cuLaunchKernel's `void** kernelParams`, and a table of entry
//! points (name, file, launcher, parameter sizes) that the simulated driver looks kernels up in.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One entry point as its C signature declares it.
struct Entry {
    name: String,
    /// Each parameter's C type.
    params: Vec<String>,
}

fn main() {
    require_clang();
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let engine_kernels = root.join("../backend/src/cuda/kernels");
    let fidelity_kernels = root.join("tests/kernels");
    let header = root.join("include/cuda_sim.h");
    for dir in [&engine_kernels, &fidelity_kernels] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rerun-if-changed=src/runtime.cpp");

    let common = engine_kernels.join("common.cuh");
    let mut sources = vec![root.join("src/runtime.cpp")];
    let mut profiled_sources = Vec::new();
    let mut table = String::new();
    let mut declarations = String::new();
    let mut count = 0;
    for (dir, prelude) in [(&engine_kernels, Some(&common)), (&fidelity_kernels, None)] {
        for file in cu_files(dir) {
            let text = std::fs::read_to_string(&file).unwrap();
            let file_name = file.file_name().unwrap().to_string_lossy().into_owned();
            // What NVRTC compiles: the prelude, a newline, the file (the backend's
            // `kernels::compile`); the PTX carries this digest of it.
            let compiled = match prelude {
                Some(prelude) => format!("{}\n{text}", std::fs::read_to_string(prelude).unwrap()),
                None => text.clone(),
            };
            let digest = hex_sha256(&compiled);
            let entries = entries(&text).unwrap_or_else(|e| panic!("{file_name}: {e}"));
            let mut unit = String::new();
            // The profiled twin: the same source, its entry points renamed, compiled with every
            // load and store calling the profiler (see `profiled_build`).
            let mut profiled = String::new();
            for entry in &entries {
                writeln!(
                    profiled,
                    "#define {n} cuda_sim_profiled_{n}",
                    n = entry.name
                )
                .unwrap();
            }
            for u in [&mut unit, &mut profiled] {
                if let Some(prelude) = prelude {
                    writeln!(u, "#include \"{}\"", prelude.display()).unwrap();
                }
                writeln!(u, "#include \"{}\"", file.display()).unwrap();
            }
            for entry in &entries {
                let args: Vec<String> = entry
                    .params
                    .iter()
                    .enumerate()
                    .map(|(i, ty)| format!("*({ty}*)p[{i}]"))
                    .collect();
                let sizes: Vec<String> = entry
                    .params
                    .iter()
                    .map(|ty| format!("sizeof({ty})"))
                    .collect();
                writeln!(
                    unit,
                    "extern \"C\" void cuda_sim_launch_{n}(void** p) {{ {n}({}); }}\n\
                     extern \"C\" const unsigned cuda_sim_sizes_{n}[] = {{ {} }};",
                    args.join(", "),
                    if sizes.is_empty() {
                        "0".to_owned()
                    } else {
                        sizes.join(", ")
                    },
                    n = entry.name,
                )
                .unwrap();
                writeln!(
                    profiled,
                    "extern \"C\" __attribute__((no_sanitize(\"kernel-address\"))) \
                     void cuda_sim_launch_profiled_{n}(void** p) {{ {n}({}); }}",
                    args.join(", "),
                    n = entry.name,
                )
                .unwrap();
                writeln!(
                    declarations,
                    "extern \"C\" void cuda_sim_launch_{n}(void**);\n\
                     extern \"C\" void cuda_sim_launch_profiled_{n}(void**);\n\
                     extern \"C\" const unsigned cuda_sim_sizes_{n}[];",
                    n = entry.name
                )
                .unwrap();
                writeln!(
                    table,
                    "    {{\"{n}\", \"{file_name}\", \"{digest}\", cuda_sim_launch_{n}, \
                     cuda_sim_launch_profiled_{n}, {}, cuda_sim_sizes_{n}}},",
                    entry.params.len(),
                    n = entry.name
                )
                .unwrap();
                count += 1;
            }
            let path = out.join(format!("kernel_{}.cpp", file_name.replace('.', "_")));
            std::fs::write(&path, unit).unwrap();
            sources.push(path);
            let path = out.join(format!("profiled_{}.cpp", file_name.replace('.', "_")));
            std::fs::write(&path, profiled).unwrap();
            profiled_sources.push(path);
        }
    }
    let registry = format!(
        "struct CudaSimKernel {{ const char* name; const char* file; const char* digest; \
         void (*launch)(void**); void (*launch_profiled)(void**); unsigned n_params; \
         const unsigned* sizes; }};\n{declarations}\n\
         extern \"C\" const CudaSimKernel cuda_sim_kernels[] = {{\n{table}}};\n\
         extern \"C\" const unsigned cuda_sim_kernel_count = {count};\n"
    );
    let registry_path = out.join("kernel_registry.cpp");
    std::fs::write(&registry_path, registry).unwrap();
    sources.push(registry_path);

    old_driver_nvml(&root, &out);

    kernel_build(&header)
        .files(&sources)
        .compile("cuda_sim_kernels");
    profiled_build(&header)
        .files(&profiled_sources)
        .compile("cuda_sim_kernels_profiled");
}

/// How the kernels are compiled for the host: C++17, the simulator's header first.
fn kernel_build(header: &Path) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .compiler("clang++")
        .cpp_link_stdlib(None)
        .std("c++17")
        .opt_level(2)
        .flag("-include")
        .flag(header.to_str().unwrap())
        .flag("-fno-exceptions")
        .flag("-fno-rtti")
        .flag("-fvisibility=hidden")
        .flag("-Wno-unused-parameter")
        .flag("-Wno-unused-function");
    build
}

/// The kernels again, each load and store of memory calling `__asan_{load,store}{N}_noabort`
/// with its address (clang's kernel address sanitizer, every check outlined, no stack or global
/// redzones), which the simulator's profiler implements as counters. Access widths are the
/// source's after optimisation: a vector type's load (`float4`) stays one 16-byte access.
fn profiled_build(header: &Path) -> cc::Build {
    let mut build = kernel_build(header);
    build
        .define("CUDA_SIM_PROFILED", None)
        .flag("-fsanitize=kernel-address")
        .flag("-mllvm")
        .flag("-asan-instrumentation-with-call-threshold=0")
        .flag("-mllvm")
        .flag("-asan-stack=0")
        .flag("-mllvm")
        .flag("-asan-globals=0");
    build
}

/// The SHA-256 of `text` in lower-case hex.
fn hex_sha256(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Stops the build with what to install when clang (for the kernels, C++17) is missing: the
/// simulator is for tests, and a plain `cargo build --workspace` should say so rather than
/// panic in `cc`.
fn require_clang() {
    let found = |program: &str| {
        std::process::Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Some(missing) = ["clang++", "clang"].into_iter().find(|p| !found(p)) {
        eprintln!(
            "error: {missing} is not installed. vigil-cuda-sim, the simulated GPU the tests run \
             the CUDA backend on, compiles the CUDA kernels for the host with clang. Install it \
             (`apt-get install clang` on Debian; `cargo xtask test` and `cargo xtask sim` do it \
             when run as root), or build without the simulator: \
             `cargo build --workspace --exclude vigil-cuda-sim`."
        );
        std::process::exit(1);
    }
}

/// The NVML of an older driver (`old-driver/`): a shared library of its own, since what it
/// tests is the functions it lacks. `cargo xtask test` links it from `OUT_DIR`.
fn old_driver_nvml(root: &Path, out: &Path) {
    let source = root.join("old-driver/nvml_old_driver.c");
    println!("cargo:rerun-if-changed={}", source.display());
    let status = std::process::Command::new("clang")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(out.join("libnvidia-ml-old-driver.so"))
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("running clang for the old-driver NVML");
    assert!(status.success(), "clang failed on {}", source.display());
}

fn cu_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    files
}

/// Every `extern "C" __global__ void name(params)` of a source file.
fn entries(text: &str) -> Result<Vec<Entry>, String> {
    const MARK: &str = "extern \"C\" __global__ void";
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        rest = &rest[at + MARK.len()..];
        let open = rest
            .find('(')
            .ok_or("an entry point without a parameter list")?;
        // The last word before the list: a launch-bounds macro may stand before the name.
        let name = rest[..open]
            .split_whitespace()
            .last()
            .ok_or("an entry point without a name")?
            .to_owned();
        let close = rest[open..].find(')').ok_or("an unclosed parameter list")? + open;
        let list = rest[open + 1..close].trim();
        let params = if list.is_empty() || list == "void" {
            Vec::new()
        } else {
            list.split(',')
                .map(|param| {
                    let param = param.split_whitespace().collect::<Vec<_>>().join(" ");
                    let cut = param
                        .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .ok_or_else(|| format!("{name}: no type in `{param}`"))?;
                    let ty = param[..=cut].trim().to_owned();
                    if ty.contains('[') {
                        return Err(format!("{name}: array parameter `{param}`"));
                    }
                    Ok(ty)
                })
                .collect::<Result<_, String>>()?
        };
        found.push(Entry { name, params });
        rest = &rest[close..];
    }
    Ok(found)
}
