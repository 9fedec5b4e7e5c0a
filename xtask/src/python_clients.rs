//! The Python clients the end-to-end tests drive Vigil with, installed from PyPI.
//!
//! The Python clients the end-to-end tests drive Vigil with, as users do: the official `openai`
//! client, and `jsonschema` to validate structured outputs. Installed from PyPI (pip caches the
//! wheels) into `target/py-clients/`, for `python3` with that folder on `PYTHONPATH`;
//! `cargo xtask test` names the folder in `VIGIL_TEST_PYTHONPATH`.
//!
//! The frameworks people put between their code and an OpenAI-compatible server (instructor,
//! LangChain, litellm, pydantic-ai) each go into a folder of their own under
//! `target/py-frameworks/` (their pins of `openai` and `pydantic` conflict), which `cargo xtask
//! test` names in `VIGIL_TEST_FRAMEWORKS`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

use crate::workspace_root;

/// Pinned, so that a test run is repeatable.
const PACKAGES: &[&str] = &["openai==3.57.0", "jsonschema==4.26.0"];

/// Each framework's folder under `target/py-frameworks/` and its pinned package (with whatever
/// version of `openai` it resolves to).
const FRAMEWORKS: &[(&str, &str)] = &[
    ("instructor", "instructor==1.17.0"),
    ("langchain", "langchain-openai==1.8.1"),
    ("litellm", "litellm==1.110.2"),
    ("pydantic-ai", "pydantic-ai-slim[openai]==2.78.0"),
];

/// Returns the folder holding the packages, installing them first when the pins changed.
pub(crate) fn run() -> anyhow::Result<PathBuf> {
    install(&workspace_root().join("target/py-clients"), PACKAGES)
}

/// Returns the folder holding one folder per framework, installing those whose pins changed.
pub(crate) fn frameworks() -> anyhow::Result<PathBuf> {
    let root = workspace_root().join("target/py-frameworks");
    for (name, package) in FRAMEWORKS {
        install(&root.join(name), &[package])?;
    }
    Ok(root)
}

/// Installs `packages` into `dir` unless its stamp says they are there.
fn install(dir: &std::path::Path, packages: &[&str]) -> anyhow::Result<PathBuf> {
    let dir = dir.to_owned();
    let stamp = dir.join(".installed");
    let wanted = packages.join("\n");
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
        .args(packages)
        .status()
        .context("running python3 -m pip")?;
    if !status.success() {
        bail!("pip install {} failed", packages.join(" "));
    }
    std::fs::write(&stamp, wanted)?;
    Ok(dir)
}
