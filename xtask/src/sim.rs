//! `cargo xtask sim COMMAND [ARGS]`: runs a command on the simulated GPU.
//!
//! Builds `cuda-sim`, fetches NVRTC, and runs the command with both first on `LD_LIBRARY_PATH`, so
//! every CUDA library Vigil loads at run time is the simulator's (NVRTC stays NVIDIA's):
//!
//! ```text
//! cargo build --bin vigil && cargo xtask sim target/debug/vigil check-gpu --only kernels,model,serving
//! cargo xtask sim target/debug/vigil serve --device cuda
//! ```

use std::process::Command;

use anyhow::{bail, Context};

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let Some((program, rest)) = args.split_first() else {
        bail!("usage: cargo xtask sim COMMAND [ARGS]");
    };
    // The simulator's kernels are compiled for the host by clang.
    crate::test::ensure_tools(&[("clang", "clang"), ("clang++", "clang")])?;
    let sim = crate::test::build_cuda_sim()?;
    let nvrtc = crate::fetch_nvrtc::run()?;
    let mut paths = vec![sim, nvrtc];
    if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH") {
        paths.extend(std::env::split_paths(&existing));
    }
    let status = Command::new(program)
        .args(rest)
        .env("LD_LIBRARY_PATH", std::env::join_paths(paths)?)
        .status()
        .with_context(|| format!("running {program}"))?;
    std::process::exit(status.code().unwrap_or(1));
}
