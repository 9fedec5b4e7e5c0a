//! Vigil's models, independent of where they run: loading, weights, tokenizers, templates.
//!
//! Vigil's models, independent of where they run: Llama-family architectures from an HF folder
//! (`config.json`, safetensors, `tokenizer.json`) or a GGUF file, loaded into a [`Model`] (the
//! architecture as a [`LlamaConfig`], a [`WeightSource`] handing out tensors by canonical HF
//! name, the [`Tokenizer`] with its chat template); the GGUF format itself (`gguf`); and
//! the [`Detokenizer`] that turns generated tokens into text and finds stop strings.
//!
//! This crate depends on no other crate of Vigil's.

mod config;
mod detokenizer;
mod error;
mod gguf;
mod load_gguf;
mod load_hf;
mod model;
pub mod names;
pub mod testing;
mod tokenizer;

pub use config::{LlamaConfig, RopeScaling};
pub use detokenizer::Detokenizer;
pub use error::LoadError;
pub use gguf::quant::{dequantize, q4k_scale_min, GgmlType};
pub use gguf::writer::GgufWriter;
pub use model::{EncodedTensor, HostTensor, Model, WeightSource};
pub use tokenizer::{ChatMessage, ChatTemplate, DecodeStream, Tokenizer, TokenizerError};
