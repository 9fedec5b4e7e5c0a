//! The Python clients the end-to-end tests drive Vigil with, as users do: the official `openai`
//! client, and `jsonschema` to validate structured outputs. Installed from PyPI (pip caches the
//! wheels) into `target/py-clients/`, for `python3` with that folder on `PYTHONPATH`;
//! `cargo xtask test` names the folder in `VIGIL_TEST_PYTHONPATH`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

use crate::workspace_root;

/// Pinned, so that a test run is repeatable.
const PACKAGES: &[&str] = &["openai==3.57.0", "jsonschema==4.26.0"];

/// Returns the folder holding the packages, installing them first when the pins changed.
pub fn run() -> anyhow::Result<PathBuf> {
    let dir = workspace_root().join("target/py-clients");
    let stamp = dir.join(".installed");
    let wanted = PACKAGES.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--target")
        .arg(&dir)
        .args(PACKAGES)
        .status()
        .context("running python3 -m pip")?;
    if !status.success() {
        bail!("pip install {} failed", PACKAGES.join(" "));
    }
    std::fs::write(&stamp, wanted)?;
    Ok(dir)
}
