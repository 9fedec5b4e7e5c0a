//! Fixtures for tests and benchmarks: a tiny random Llama held in memory.

use std::collections::HashMap;

use crate::names::{self, LayerTensor};
use crate::{HostTensor, LlamaConfig, LoadError, WeightSource};

/// A small Llama with GQA: 2 layers, hidden 64, 4 query heads over 2 KV heads, byte vocabulary.
pub fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        vocab_size: 256,
        max_position_embeddings: 512,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        tie_word_embeddings: true,
    }
}

/// Weights held in memory by canonical name.
pub struct MemWeights(pub HashMap<String, HostTensor>);

impl WeightSource for MemWeights {
    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<HostTensor, LoadError> {
        let t = self.0.get(name).ok_or_else(|| LoadError::Tensor {
            file: "memory".into(),
            tensor: name.into(),
            what: "missing".into(),
        })?;
        crate::error::check_shape("memory".as_ref(), name, &t.shape, shape)?;
        Ok(t.clone())
    }
}

/// Deterministic random weights for `config` (xorshift; values scaled like a trained model's).
pub fn random_weights(config: &LlamaConfig, seed: u64) -> MemWeights {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let c = config;
    let (h, hd, nh, nkv, inter) = (
        c.hidden_size,
        c.head_dim,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.intermediate_size,
    );
    let mut map = HashMap::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f64, offset: f64| {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| (offset + next() * scale) as f32).collect();
        map.insert(name, HostTensor { shape, data });
    };
    add(names::EMBED.into(), vec![c.vocab_size, h], 1.0, 0.0);
    for l in 0..c.num_hidden_layers {
        let lin = |fan_in: usize| 1.0 / (fan_in as f64).sqrt();
        add(LayerTensor::AttnNorm.hf_name(l), vec![h], 0.2, 1.0);
        add(LayerTensor::Q.hf_name(l), vec![nh * hd, h], lin(h), 0.0);
        add(LayerTensor::K.hf_name(l), vec![nkv * hd, h], lin(h), 0.0);
        add(LayerTensor::V.hf_name(l), vec![nkv * hd, h], lin(h), 0.0);
        add(
            LayerTensor::O.hf_name(l),
            vec![h, nh * hd],
            lin(nh * hd),
            0.0,
        );
        add(LayerTensor::FfnNorm.hf_name(l), vec![h], 0.2, 1.0);
        add(LayerTensor::Gate.hf_name(l), vec![inter, h], lin(h), 0.0);
        add(LayerTensor::Up.hf_name(l), vec![inter, h], lin(h), 0.0);
        add(
            LayerTensor::Down.hf_name(l),
            vec![h, inter],
            lin(inter),
            0.0,
        );
    }
    add(names::FINAL_NORM.into(), vec![h], 0.2, 1.0);
    if !c.tie_word_embeddings {
        add(names::LM_HEAD.into(), vec![c.vocab_size, h], 1.0, 0.0);
    }
    MemWeights(map)
}

/// GPT-2's byte-to-unicode table: the 256 single-byte tokens of a byte-level BPE vocabulary,
/// indexed by byte.
pub fn byte_level_alphabet() -> Vec<String> {
    let printable: Vec<u32> = ('!' as u32..='~' as u32)
        .chain('¡' as u32..='¬' as u32)
        .chain('®' as u32..='ÿ' as u32)
        .collect();
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            let c = if printable.contains(&b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).expect("valid char").to_string()
        })
        .collect()
}

/// A byte-level BPE tokenizer over the 256 byte tokens (the tiny model's vocabulary).
pub fn byte_tokenizer_json() -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = byte_level_alphabet()
        .into_iter()
        .enumerate()
        .map(|(b, t)| (t, b.into()))
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
    .to_string()
}

/// The byte-level tokenizer of [`byte_tokenizer_json`], with a chat template that joins the
/// messages' contents.
pub fn byte_tokenizer() -> crate::tokenizer::Tokenizer {
    let inner: tokenizers::Tokenizer = byte_tokenizer_json().parse().expect("valid tokenizer JSON");
    let mut tokenizer = crate::tokenizer::Tokenizer::new(inner);
    tokenizer.chat_template = Some(
        crate::tokenizer::ChatTemplate::new("{% for m in messages %}{{ m.content }}{% endfor %}")
            .expect("valid template"),
    );
    tokenizer
}
