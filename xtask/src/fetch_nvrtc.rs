//! The CUDA toolchain pieces the kernels' CI checks need, fetched from PyPI.
//!
//! The CUDA toolchain pieces the kernels' CI checks need, on machines without CUDA, from PyPI
//! (pip caches the wheels) into `target/nvrtc/`: NVRTC (`libnvrtc.so.12` and its builtins, from
//! `nvidia-cuda-nvrtc-cu12`), which compiles the kernels to PTX, and `ptxas` (from
//! `nvidia-cuda-nvcc-cu12`), which assembles the PTX for a GPU and reports each kernel's
//! registers and spills. `cargo xtask test` puts the folder on `LD_LIBRARY_PATH` and names
//! ptxas in `VIGIL_PTXAS`.

use std::path::PathBuf;

use anyhow::Context;

use crate::fetch_model::{download_wheel, tempdir};
use crate::workspace_root;

/// Each wheel and the files taken from it (path in the wheel, name in `target/nvrtc/`).
const WHEELS: &[(&str, &[(&str, &str)])] = &[
    (
        "nvidia-cuda-nvrtc-cu12==12.9.86",
        &[
            ("nvidia/cuda_nvrtc/lib/libnvrtc.so.12", "libnvrtc.so.12"),
            (
                "nvidia/cuda_nvrtc/lib/libnvrtc-builtins.so.12.9",
                "libnvrtc-builtins.so.12.9",
            ),
        ],
    ),
    (
        "nvidia-cuda-nvcc-cu12==12.9.86",
        &[("nvidia/cuda_nvcc/bin/ptxas", PTXAS)],
    ),
];

/// The name `ptxas` gets in the folder [`run`] returns.
pub(crate) const PTXAS: &str = "ptxas";

/// Returns the folder holding libnvrtc and ptxas, fetching what is missing first.
pub(crate) fn run() -> anyhow::Result<PathBuf> {
    let dir = workspace_root().join("target/nvrtc");
    std::fs::create_dir_all(&dir)?;
    for (package, files) in WHEELS {
        if files.iter().all(|(_, name)| dir.join(name).is_file()) {
            continue;
        }
        let tmp = tempdir(&dir)?;
        let unpacked = download_wheel(package, &tmp)?;
        for (inside, name) in *files {
            std::fs::copy(unpacked.join(inside), dir.join(name))
                .with_context(|| format!("{inside} is not in the wheel of {package}"))?;
            // Unzipping drops the executable bit; libraries keep working without it.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::remove_dir_all(&tmp).ok();
        println!("fetched {package} into {}", dir.display());
    }
    Ok(dir)
}
