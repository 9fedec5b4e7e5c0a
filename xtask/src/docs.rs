//! `cargo xtask docs`: the files generated from the code: the metric reference and the Grafana
//! dashboard (from the catalog) and the systemd environment file (from `vigil serve`'s command
//! line).

use anyhow::{bail, Context};

use crate::workspace_root;

/// Where the metric reference lives, relative to the workspace root.
pub const METRICS_MD: &str = "docs/metrics.md";

/// Every generated file: its path and what it should contain.
pub fn generated() -> Vec<(&'static str, String)> {
    vec![
        (METRICS_MD, exporter::docs::metrics_markdown()),
        (crate::env_file::ENV_FILE, crate::env_file::render()),
        (crate::dashboard::DASHBOARD, crate::dashboard::render()),
    ]
}

pub fn run(check: bool) -> anyhow::Result<()> {
    for (rel, fresh) in generated() {
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
