//! NVRTC for the CUDA kernels' compile check, on machines without CUDA: `libnvrtc.so.12` and
//! its builtins come from PyPI's `nvidia-cuda-nvrtc-cu12` wheel (pip caches it) into
//! `target/nvrtc/`; `cargo xtask test` puts that folder on `LD_LIBRARY_PATH`.

use std::path::PathBuf;

use anyhow::Context;

use crate::fetch_model::{download_wheel, tempdir};
use crate::workspace_root;

pub const PACKAGE: &str = "nvidia-cuda-nvrtc-cu12==12.9.86";
/// The libraries the check loads (libnvrtc loads its builtins from its own folder).
const LIBS: &[&str] = &["libnvrtc.so.12", "libnvrtc-builtins.so.12.9"];

/// Returns the folder holding libnvrtc, fetching it first if needed.
pub fn run() -> anyhow::Result<PathBuf> {
    let dir = workspace_root().join("target/nvrtc");
    if LIBS.iter().all(|l| dir.join(l).is_file()) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir)?;
    let tmp = tempdir(&dir)?;
    let unpacked = download_wheel(PACKAGE, &tmp)?;
    let lib_dir = unpacked.join("nvidia/cuda_nvrtc/lib");
    for lib in LIBS {
        std::fs::copy(lib_dir.join(lib), dir.join(lib))
            .with_context(|| format!("{lib} is not in the wheel of {PACKAGE}"))?;
    }
    std::fs::remove_dir_all(&tmp).ok();
    println!("wrote {}", dir.display());
    Ok(dir)
}
