//! Why a model or one of its files could not be loaded, naming the file.
//!
//! Why a model, its tokenizer or one of their files could not be loaded: the one error of every
//! loader (GGUF, safetensors, tokenizer files), naming the file and what is wrong with it.

use std::path::{Path, PathBuf};

/// Why a model failed to load. Every variant names the file, and the tensor where there is one.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// The file is not what its format says.
    #[error("{file}: {what}")]
    Format {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A tensor is missing, or has a type or shape Vigil cannot use.
    #[error("{file}: tensor {tensor:?}: {what}")]
    Tensor {
        /// The file.
        file: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        what: String,
    },
}

impl LoadError {
    /// An I/O error reading `file`.
    pub fn io(file: &Path, source: std::io::Error) -> Self {
        LoadError::Io {
            file: file.to_owned(),
            source,
        }
    }
    /// A format error in `file`.
    pub fn format(file: &Path, what: impl Into<String>) -> Self {
        LoadError::Format {
            file: file.to_owned(),
            what: what.into(),
        }
    }
}

/// Checks a tensor's shape against the one the architecture needs.
pub(crate) fn check_shape(
    file: &Path,
    name: &str,
    got: &[usize],
    want: &[usize],
) -> Result<(), LoadError> {
    if got == want {
        Ok(())
    } else {
        Err(LoadError::Tensor {
            file: file.to_owned(),
            tensor: name.to_owned(),
            what: format!("shape mismatch: the file has {got:?}, the model config needs {want:?}"),
        })
    }
}
