//! A Q4_0 GGUF with Llama-3.1-8B's layer shapes and random weights, a few layers deep.
//!
//! The profile needs the 8B model's shapes, not its values: what a decode step moves and how
//! its kernels are laid out depend on the shapes alone. Llama-3.1-8B (its `config.json`):
//! hidden 4096, intermediate 14336, 32 layers, 32 query heads over 8 KV heads of 128, vocabulary
//! 128256, an untied output head, RoPE base 500000. The file holds [`LAYERS`] layers (the profile
//! scales them to 32) in Q4_0, as llama.cpp's quantizer writes it, so that the cases measure
//! quantized weights the day the backend keeps them quantized; norms stay F32, as in the files
//! llama.cpp writes.

use std::path::{Path, PathBuf};

use model::names::{self, LayerTensor};
use model::{GgmlType, GgufWriter};

/// Layers in the file.
pub(crate) const LAYERS: usize = 2;
/// Layers of the real model.
pub(crate) const REAL_LAYERS: usize = 32;

const HIDDEN: u64 = 4096;
const INTERMEDIATE: u64 = 14336;
const HEADS: u64 = 32;
const KV_HEADS: u64 = 8;
const HEAD_DIM: u64 = 128;
const VOCAB: u64 = 128256;

/// The file under `dir`, written the first time (about 840 MB; the same bytes every time).
pub(crate) fn ensure(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!(
        "llama-3.1-8b-shape-{LAYERS}-layers-q4_0-random.gguf"
    ));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    eprintln!("writing {} (random weights)", path.display());
    let bytes = write();
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

fn write() -> Vec<u8> {
    let tokens: Vec<String> = (0..VOCAB)
        .map(|i| match i {
            0..256 => model::testing::byte_level_alphabet()[i as usize].clone(),
            _ => format!("<|tok_{i}|>"),
        })
        .collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut w = GgufWriter::default();
    w.str("general.architecture", "llama")
        .str("general.name", "Llama-3.1-8B shape, random Q4_0 weights")
        .u32("llama.block_count", LAYERS as u32)
        .u32("llama.embedding_length", HIDDEN as u32)
        .u32("llama.feed_forward_length", INTERMEDIATE as u32)
        .u32("llama.attention.head_count", HEADS as u32)
        .u32("llama.attention.head_count_kv", KV_HEADS as u32)
        .u32("llama.rope.dimension_count", HEAD_DIM as u32)
        .u32("llama.context_length", 131072)
        .u32("llama.vocab_size", VOCAB as u32)
        .f32("llama.rope.freq_base", 500000.0)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .str("tokenizer.ggml.model", "gpt2")
        .strs("tokenizer.ggml.tokens", &tokens)
        .u32("tokenizer.ggml.bos_token_id", 256)
        .u32("tokenizer.ggml.eos_token_id", 257);
    let mut rng = 0x9E3779B97F4A7C15u64;
    let mut q4_0 = |w: &mut GgufWriter, name: &str, rows: u64, cols: u64| {
        let scale = half::f16::from_f32(1.0 / ((cols as f32).sqrt() * 4.0)).to_le_bytes();
        let blocks = (rows * cols / 32) as usize;
        let mut bytes = Vec::with_capacity(blocks * 18);
        for _ in 0..blocks {
            bytes.extend(scale);
            for _ in 0..2 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                bytes.extend(rng.to_le_bytes());
            }
        }
        w.tensor(name, &[cols, rows], GgmlType::Q4_0, &bytes);
    };
    let ones = vec![1f32; HIDDEN as usize];
    let gguf = |hf: &str| names::hf_to_gguf(hf).expect("a Llama tensor");
    q4_0(&mut w, &gguf(names::EMBED), VOCAB, HIDDEN);
    for l in 0..LAYERS {
        for t in LayerTensor::ALL {
            let name = t.gguf_name(l);
            let (rows, cols) = match t {
                LayerTensor::AttnNorm | LayerTensor::FfnNorm => {
                    w.f32_tensor(&name, &[HIDDEN], &ones);
                    continue;
                }
                LayerTensor::Q => (HEADS * HEAD_DIM, HIDDEN),
                LayerTensor::K | LayerTensor::V => (KV_HEADS * HEAD_DIM, HIDDEN),
                LayerTensor::O => (HIDDEN, HEADS * HEAD_DIM),
                LayerTensor::Gate | LayerTensor::Up => (INTERMEDIATE, HIDDEN),
                LayerTensor::Down => (HIDDEN, INTERMEDIATE),
            };
            q4_0(&mut w, &name, rows, cols);
        }
    }
    w.f32_tensor(&gguf(names::FINAL_NORM), &[HIDDEN], &ones);
    q4_0(&mut w, &gguf(names::LM_HEAD), VOCAB, HIDDEN);
    w.finish()
}
