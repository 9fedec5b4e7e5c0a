//! `cargo xtask docs`: the files generated from the code.
//!
//! `cargo xtask docs`: the files generated from the code: the metric reference and the Grafana
//! dashboard (from the catalog), and the systemd environment file (`vigil env-file`, from
//! `vigil serve`'s command line; the engine's own test checks that one is fresh).

use anyhow::{bail, Context};

use crate::workspace_root;

/// Where the metric reference lives, relative to the workspace root.
pub(crate) const METRICS_MD: &str = "docs/metrics.md";

/// Where the systemd environment file lives, relative to the workspace root.
pub(crate) const ENV_FILE: &str = "systemd/vigil.env";

/// The generated files xtask renders itself (from the catalog): path and content.
pub(crate) fn generated() -> Vec<(&'static str, String)> {
    vec![
        (METRICS_MD, exporter::metrics_markdown()),
        (crate::dashboard::DASHBOARD, crate::dashboard::render()),
    ]
}

/// The environment file, as the `vigil` binary prints it (xtask does not link the engine, so
/// that `cargo xtask fetch-model` stays quick).
fn env_file() -> anyhow::Result<String> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--bin", "vigil", "--", "env-file"])
        .current_dir(workspace_root())
        .output()
        .context("running vigil env-file")?;
    if !out.status.success() {
        bail!(
            "vigil env-file failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("vigil env-file printed UTF-8")
}

pub(crate) fn run(check: bool) -> anyhow::Result<()> {
    let mut files = generated();
    files.push((ENV_FILE, env_file()?));
    for (rel, fresh) in files {
        let path = workspace_root().join(rel);
        if check {
            let current = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            if current != fresh {
                bail!("{rel} is stale: run `cargo xtask docs`");
            }
            println!("{rel} is up to date");
        } else {
            std::fs::write(&path, fresh).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {rel}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI fails when the catalog or the command line changed and the files were not
    /// regenerated.
    #[test]
    fn generated_files_are_fresh() {
        for (rel, fresh) in generated() {
            let current = std::fs::read_to_string(workspace_root().join(rel))
                .unwrap_or_else(|e| panic!("{rel}: {e}"));
            assert!(current == fresh, "{rel} is stale: run `cargo xtask docs`");
        }
    }
}
