//! Loading Llama-family models from an HF folder or a GGUF file into one [`Model`].
//!
//! Loading Llama-family models: an HF folder (`config.json`, safetensors, `tokenizer.json`) or a
//! GGUF file. Either way the result is a [`Model`]: the architecture ([`LlamaConfig`]), a source
//! of weights by canonical (HF) tensor name, and the tokenizer with its chat template.
//!
//! Weights are handed out one tensor at a time as `f32` so a backend can convert each to its own
//! format (quantized blocks, bf16 on a device) without holding the whole model in `f32`.

use std::path::{Path, PathBuf};

use crate::{LlamaConfig, LoadError};

use crate::tokenizer::Tokenizer;

/// A weight tensor in `f32`, row-major, in HF's shape convention (`[out, in]` for linears).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f32>,
}

/// A weight tensor in the file's GGUF block encoding (row-major, rows of whole blocks, in HF's
/// row order), for a backend that computes on the encoded blocks: borrowed from the file, or
/// owned where the loader had to reorder rows.
#[derive(Debug, Clone)]
pub struct EncodedTensor<'a> {
    /// How the bytes encode the values.
    pub ggml_type: crate::gguf::quant::GgmlType,
    /// The bytes as the file stores them.
    pub bytes: std::borrow::Cow<'a, [u8]>,
}

/// Where a model's weights come from.
pub trait WeightSource: Send + Sync {
    /// The tensor with canonical (HF) name `name`, checked against `shape`.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<HostTensor, LoadError>;
    /// Whether the source has a tensor of that canonical name.
    fn has(&self, name: &str) -> bool;
    /// The tensor `name` as stored, checked against `shape`, when the file keeps it quantized
    /// (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) or in f16 exactly as the model uses it (GGUF's permuted Q and K rows
    /// put back in HF's order). `None` when it must go through [`WeightSource::tensor`]: f32 in
    /// the file, or other sources.
    fn encoded(&self, name: &str, shape: &[usize]) -> Result<Option<EncodedTensor<'_>>, LoadError> {
        let _ = (name, shape);
        Ok(None)
    }
}

/// A loaded model, ready to be turned into a backend.
pub struct Model {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Its shape and hyperparameters.
    pub config: LlamaConfig,
    /// Its tensors.
    pub weights: Box<dyn WeightSource>,
    /// Its tokenizer and chat template.
    pub tokenizer: Tokenizer,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads `path`: a GGUF file, or a folder holding an HF checkpoint.
    pub fn load(path: &Path) -> Result<Model, LoadError> {
        let meta = std::fs::metadata(path).map_err(|e| LoadError::io(path, e))?;
        if meta.is_dir() {
            crate::load_hf::load(path)
        } else {
            crate::load_gguf::load(path)
        }
    }
}
