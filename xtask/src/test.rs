//! `cargo xtask test`: the project's test command.
//!
//! Checks that the real tools the tests use are installed (installing them with apt when run as
//! root on Debian), fetches the default model and NVRTC (for the CUDA kernels' compile check), then
//! runs every test.

use std::process::Command;

use anyhow::{bail, Context};

use crate::workspace_root;

/// What the build and the tests need (a program on PATH, or an absolute file path), and the
/// Debian package that provides each: prometheus and promtool scrape and lint /metrics; clang and
/// libbpf's headers build the eBPF probe; bpftrace is the probe test's reference;
/// systemd-analyze checks the unit, strace lists the system calls its filter must allow.
const TOOLS: &[(&str, &str)] = &[
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("clang", "clang"),
    ("llvm-strip", "llvm"),
    ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
    ("bpftrace", "bpftrace"),
    ("systemd-analyze", "systemd"),
    ("strace", "strace"),
];

pub(crate) fn run(extra_args: &[String]) -> anyhow::Result<()> {
    ensure_tools(TOOLS)?;
    crate::fetch_model::run()?;
    // The CUDA kernels' checks load NVRTC and run ptxas, from PyPI on machines without CUDA.
    let nvrtc = crate::fetch_nvrtc::run()?;
    let ptxas = nvrtc.join(crate::fetch_nvrtc::PTXAS);
    let library_path = match std::env::var_os("LD_LIBRARY_PATH") {
        Some(existing) => {
            let mut paths = vec![nvrtc];
            paths.extend(std::env::split_paths(&existing));
            std::env::join_paths(paths)?
        }
        None => nvrtc.into_os_string(),
    };
    // The Python packages install while the tests compile: pip waits on the network and the
    // disk, the compiler on the CPU.
    let python = std::thread::spawn(|| -> anyhow::Result<_> {
        // The OpenAI client and a JSON-schema validator, for the tests that drive Vigil as
        // users do; instructor, LangChain, litellm and pydantic-ai, for the test of their
        // default paths.
        Ok((
            crate::python_clients::run()?,
            crate::python_clients::frameworks()?,
        ))
    });
    // Every target of the workspace (benchmarks and examples too, so that a lint run through
    // RUSTC_WORKSPACE_WRAPPER, as CI's, sees them all), with the features `cargo test
    // --workspace` unifies, so that the run below compiles nothing more; the simulated GPU's
    // library is among them. (The run's own target selection applies to the run; its profile
    // to both.)
    let mut build = vec!["test", "--workspace", "--all-targets", "--no-run"];
    let cargo_args = extra_args.iter().take_while(|a| *a != "--");
    let mut profile = cargo_args.skip_while(|a| !(*a == "--release" || a.starts_with("--profile")));
    if let Some(flag) = profile.next() {
        build.push(flag);
        if flag == "--profile" {
            build.extend(profile.next().map(String::as_str));
        }
    }
    let built = cargo(&build)?;
    let (python_clients, frameworks) = python
        .join()
        .map_err(|_| anyhow::anyhow!("the Python package installs panicked"))??;
    if !built {
        bail!("the tests did not compile");
    }
    let cuda_sim = link_cuda_sim()?;
    let status = Command::new(env!("CARGO"))
        .args(["test", "--workspace"])
        .args(extra_args)
        .env("LD_LIBRARY_PATH", library_path)
        .env("VIGIL_PTXAS", ptxas)
        .env("VIGIL_CUDA_SIM", cuda_sim)
        .env("VIGIL_TEST_PYTHONPATH", python_clients)
        .env("VIGIL_TEST_FRAMEWORKS", frameworks)
        .current_dir(workspace_root())
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("tests failed");
    }
    Ok(())
}

/// Runs cargo with `args` in the workspace; whether it succeeded.
fn cargo(args: &[&str]) -> anyhow::Result<bool> {
    Ok(Command::new(env!("CARGO"))
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?
        .success())
}

/// Builds the simulated GPU (`cuda-sim/`) and links it as [`link_cuda_sim`] does.
pub(crate) fn build_cuda_sim() -> anyhow::Result<std::path::PathBuf> {
    if !cargo(&["build", "-p", "vigil-cuda-sim"])? {
        bail!("building cuda-sim failed");
    }
    link_cuda_sim()
}

/// Links the simulated GPU's library (`cuda-sim/`, built) as `libcuda.so` and `libcublas.so` in
/// `target/cuda-sim/` (in Cargo's target folder), the folder a test puts first on
/// `LD_LIBRARY_PATH` to run the CUDA backend on the CPU. It is not on the tests' own path:
/// every other test sees no GPU. `target/cuda-sim/old-driver/libnvidia-ml.so.1` is the NVML of
/// an older driver (fewer functions), forwarding to the simulator that `VIGIL_NVML_SIM_LIB`
/// names.
pub(crate) fn link_cuda_sim() -> anyhow::Result<std::path::PathBuf> {
    // Cargo's target folder: CARGO_TARGET_DIR when set, else the workspace's.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .map(|t| {
            if t.is_relative() {
                workspace_root().join(t)
            } else {
                t
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"));
    // Where every build of the library writes it (a `cargo build` copies it up to `debug/`
    // too, `cargo test` does not).
    let library = target.join("debug/deps/libvigil_cuda_sim.so");
    anyhow::ensure!(
        library.is_file(),
        "{} is missing: the simulated GPU was not built",
        library.display()
    );
    let dir = target.join("cuda-sim");
    std::fs::create_dir_all(&dir)?;
    for name in [
        "libcuda.so",
        "libcuda.so.1",
        "libcublas.so",
        "libnvidia-ml.so.1",
    ] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&library, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    // The NVML of an older driver, from the newest build of cuda-sim's build script.
    let old_driver = std::fs::read_dir(target.join("debug/build"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("out/libnvidia-ml-old-driver.so"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .context("cuda-sim's build left no libnvidia-ml-old-driver.so")?;
    let old_dir = dir.join("old-driver");
    std::fs::create_dir_all(&old_dir)?;
    let link = old_dir.join("libnvidia-ml.so.1");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&old_driver, &link)
        .with_context(|| format!("linking {}", link.display()))?;
    Ok(dir)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Checks that each of `tools` (a program on PATH, or an absolute file path) is there, and
/// installs the Debian packages of the missing ones with apt when run as root on Debian.
pub(crate) fn ensure_tools(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(what, _)| {
            if what.starts_with('/') {
                !std::path::Path::new(what).exists()
            } else {
                !on_path(what)
            }
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !(is_root && on_path("apt-get")) {
        bail!(
            "the tests need {missing:?}: run `apt-get install -y {}` as root",
            missing.join(" ")
        );
    }
    eprintln!("installing {missing:?} with apt-get");
    let ok = Command::new("apt-get").arg("update").status()?.success()
        && Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success();
    if !ok {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}
