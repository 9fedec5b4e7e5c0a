//! What the model benchmarks share.

use std::path::PathBuf;

/// The model to measure: the first argument that is not a flag (cargo bench passes
/// `--bench`), else the default model.
pub(crate) fn model_path() -> PathBuf {
    std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
            ))
        })
}
