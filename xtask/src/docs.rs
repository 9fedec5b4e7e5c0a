//! `cargo xtask docs`: the generated metric reference.

use anyhow::{bail, Context};

use crate::workspace_root;

/// Where the reference lives, relative to the workspace root.
pub const METRICS_MD: &str = "docs/metrics.md";

pub fn run(check: bool) -> anyhow::Result<()> {
    let path = workspace_root().join(METRICS_MD);
    let fresh = exporter::docs::metrics_markdown();
    if check {
        let current = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if current != fresh {
            bail!("{METRICS_MD} is stale: run `cargo xtask docs`");
        }
        println!("{METRICS_MD} is up to date");
    } else {
        std::fs::write(&path, fresh).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {METRICS_MD}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI fails when the catalog changed and the reference was not regenerated.
    #[test]
    fn metrics_reference_is_fresh() {
        let path = workspace_root().join(METRICS_MD);
        let current = std::fs::read_to_string(&path).expect("docs/metrics.md exists");
        assert!(
            current == exporter::docs::metrics_markdown(),
            "{METRICS_MD} is stale: run `cargo xtask docs`"
        );
    }
}
