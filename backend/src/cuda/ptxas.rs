//! What ptxas says each kernel needs: registers, static shared memory, spills.
//!
//! A GPU holds as many CTAs of a kernel on an SM as its registers, shared memory and threads
//! allow. NVRTC gives PTX, not machine code; ptxas (from PyPI's `nvidia-cuda-nvcc-cu12`, which
//! `cargo xtask test` fetches and names in `VIGIL_PTXAS`) assembles it and reports each entry
//! point's resources with `-v`. The kernel tests check that every launch fits; the GPU profile
//! computes occupancy from the same report.

use std::collections::HashMap;

use super::kernels::{compile, FILES};

/// One entry point's resources on an architecture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory per CTA, bytes.
    pub shared: u32,
    /// Bytes spilled to local memory.
    pub spill_stores: u32,
}

/// The ptxas `VIGIL_PTXAS` names, if it is set.
pub fn ptxas() -> Option<std::path::PathBuf> {
    std::env::var_os("VIGIL_PTXAS").map(Into::into)
}

/// Every kernel's resources for `arch` (e.g. `sm_90`): each file compiled by NVRTC and
/// assembled by `ptxas`.
pub fn resources(
    ptxas: &std::path::Path,
    arch: &str,
) -> Result<HashMap<String, Resources>, String> {
    let dir = std::env::temp_dir().join(format!("vigil-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut all = HashMap::new();
    for file in FILES {
        let ptx = compile(file, arch)
            .map_err(|e| format!("NVRTC, {}: {e:?}", file.name))?
            .to_src();
        let path = dir.join(format!("{}-{arch}.ptx", file.name));
        std::fs::write(&path, ptx).map_err(|e| e.to_string())?;
        let out = std::process::Command::new(ptxas)
            .args([&format!("-arch={arch}"), "-v", "-o", "/dev/null"])
            .arg(&path)
            .output()
            .map_err(|e| format!("running {}: {e}", ptxas.display()))?;
        let report = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("ptxas {} {arch}: {report}", file.name));
        }
        all.extend(parse(&report));
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(all)
}

/// Parses `ptxas -v`: per entry, "Function properties for NAME" then "N bytes spill
/// stores", and "Compiling entry function 'NAME'" then "Used N registers, ... M bytes smem".
pub fn parse(report: &str) -> HashMap<String, Resources> {
    let mut out: HashMap<String, Resources> = HashMap::new();
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
    out.remove("");
    out
}
