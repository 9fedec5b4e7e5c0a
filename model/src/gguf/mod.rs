//! GGUF files: the container, block dequantization, and what a Llama model needs from them.
//!
//! GGUF files (llama.cpp's model format): the container ([`reader`]), block dequantization
//! ([`quant`]), and the pieces a Llama model needs from it (config, tensors, tokenizer).
//!
//! No maintained crate parses GGUF without pulling in a tensor framework (candle's parser lives
//! inside candle-core), so the parser is small, bounds-checked everywhere, and fuzzed by the
//! tests with truncated and corrupted files.

pub(crate) mod quant;
pub(crate) mod reader;
pub(crate) mod writer;

pub(crate) use reader::{GgufFile, MetaValue};
