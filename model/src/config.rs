//! The Llama architecture's hyper-parameters, from HF `config.json` or GGUF metadata.

use std::path::Path;

use serde::Deserialize;

use super::LoadError;
use crate::gguf::{GgufFile, MetaValue};

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear {
        /// The divisor.
        factor: f32,
    },
    /// Llama 3.1's band-wise scaling.
    Llama3 {
        /// Overall scaling factor.
        factor: f32,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled fully.
        low_freq_factor: f32,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// The context length the model was trained at.
        original_max_position_embeddings: f32,
    },
}

/// A Llama-family model's shape and hyperparameters, as HF's `config.json` names them.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// The longest context the model supports.
    pub max_position_embeddings: usize,
    /// RMSNorm's epsilon.
    pub rms_norm_eps: f32,
    /// RoPE's base.
    pub rope_theta: f32,
    /// RoPE's scaling for long contexts, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Whether the LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// Checks the hyper-parameters fit together (before any tensor is read).
    pub fn validate(&self, file: &Path) -> Result<(), LoadError> {
        let bad = |what: String| Err(LoadError::format(file, what));
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return bad(format!("{name} must be positive"));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if !(self.rms_norm_eps.is_finite()
            && self.rms_norm_eps > 0.0
            && self.rope_theta.is_finite()
            && self.rope_theta > 0.0)
        {
            return bad("rms_norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }

    /// The RoPE inverse frequencies, one per pair of dimensions, scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        (0..self.head_dim / 2)
            .map(|i| self.scaled_inv_freq(i) as f32)
            .collect()
    }

    /// Per pair of dimensions, what Llama 3's band-wise scaling divides the angle by (the
    /// `rope_freqs` tensor llama.cpp's converter writes); `None` for the other scalings.
    pub fn rope_freq_factors(&self) -> Option<Vec<f32>> {
        matches!(self.rope_scaling, Some(RopeScaling::Llama3 { .. })).then(|| {
            (0..self.head_dim / 2)
                .map(|i| (self.unscaled_inv_freq(i) / self.scaled_inv_freq(i)) as f32)
                .collect()
        })
    }

    fn unscaled_inv_freq(&self, i: usize) -> f64 {
        1.0 / (self.rope_theta as f64).powf(2.0 * i as f64 / self.head_dim as f64)
    }

    fn scaled_inv_freq(&self, i: usize) -> f64 {
        let f = self.unscaled_inv_freq(i);
        match &self.rope_scaling {
            None => f,
            Some(RopeScaling::Linear { factor }) => f / *factor as f64,
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let (factor, low, high, orig) = (
                    *factor as f64,
                    *low_freq_factor as f64,
                    *high_freq_factor as f64,
                    *original_max_position_embeddings as f64,
                );
                let wavelen = 2.0 * std::f64::consts::PI / f;
                let (low_wavelen, high_wavelen) = (orig / low, orig / high);
                if wavelen < high_wavelen {
                    f
                } else if wavelen > low_wavelen {
                    f / factor
                } else {
                    let smooth = (orig / wavelen - low) / (high - low);
                    (1.0 - smooth) * f / factor + smooth * f
                }
            }
        }
    }

    /// From an HF `config.json`.
    pub fn from_hf_json(file: &Path, text: &str) -> Result<LlamaConfig, LoadError> {
        #[derive(Deserialize)]
        struct Raw {
            architectures: Option<Vec<String>>,
            model_type: Option<String>,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            head_dim: Option<usize>,
            vocab_size: usize,
            max_position_embeddings: Option<usize>,
            rms_norm_eps: Option<f32>,
            rope_theta: Option<f32>,
            rope_scaling: Option<serde_json::Value>,
            tie_word_embeddings: Option<bool>,
        }
        let raw: Raw = serde_json::from_str(text)
            .map_err(|e| LoadError::format(file, format!("invalid config: {e}")))?;
        let arch_ok = raw
            .architectures
            .as_ref()
            .is_none_or(|a| a.iter().any(|a| a == "LlamaForCausalLM"))
            && raw.model_type.as_deref().is_none_or(|t| t == "llama");
        if !arch_ok {
            return Err(LoadError::format(
                file,
                format!(
                    "unsupported architecture {:?} / model_type {:?}: Vigil serves LlamaForCausalLM",
                    raw.architectures, raw.model_type
                ),
            ));
        }
        let rope_scaling = match raw.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(parse_hf_rope_scaling(file, &v)?),
        };
        let config = LlamaConfig {
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)),
            vocab_size: raw.vocab_size,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: raw.rope_theta.unwrap_or(10000.0),
            rope_scaling,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        };
        config.validate(file)?;
        Ok(config)
    }

    /// From GGUF `llama.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<LlamaConfig, LoadError> {
        let path = &file.path;
        let arch = file
            .meta("general.architecture")
            .and_then(MetaValue::as_str)
            .unwrap_or("");
        if arch != "llama" {
            return Err(LoadError::format(
                path,
                format!("unsupported architecture {arch:?}: Vigil serves llama"),
            ));
        }
        let int = |key: &str| -> Result<usize, LoadError> {
            file.meta(key)
                .and_then(MetaValue::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| {
                    LoadError::format(path, format!("metadata {key} is missing or not an integer"))
                })
        };
        let float = |key: &str, default: f32| -> f32 {
            file.meta(key)
                .and_then(MetaValue::as_f64)
                .map_or(default, |v| v as f32)
        };
        let hidden_size = int("llama.embedding_length")?;
        let heads = int("llama.attention.head_count")?;
        let vocab_size = match int("llama.vocab_size") {
            Ok(v) => v,
            Err(_) => file
                .meta("tokenizer.ggml.tokens")
                .and_then(MetaValue::as_array)
                .map(<[_]>::len)
                .ok_or_else(|| {
                    LoadError::format(path, "neither llama.vocab_size nor tokenizer.ggml.tokens")
                })?,
        };
        let rope_scaling = match file
            .meta("llama.rope.scaling.type")
            .and_then(MetaValue::as_str)
        {
            None | Some("none") => None,
            Some("linear") => Some(RopeScaling::Linear {
                factor: float("llama.rope.scaling.factor", 1.0),
            }),
            Some(other) => {
                return Err(LoadError::format(
                    path,
                    format!("unsupported llama.rope.scaling.type {other:?}"),
                ))
            }
        };
        let config = LlamaConfig {
            hidden_size,
            intermediate_size: int("llama.feed_forward_length")?,
            num_hidden_layers: int("llama.block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: int("llama.attention.head_count_kv").unwrap_or(heads),
            head_dim: int("llama.attention.key_length")
                .or_else(|_| int("llama.rope.dimension_count"))
                .unwrap_or(hidden_size / heads.max(1)),
            vocab_size,
            max_position_embeddings: int("llama.context_length").unwrap_or(2048),
            rms_norm_eps: float("llama.attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta: float("llama.rope.freq_base", 10000.0),
            rope_scaling,
            tie_word_embeddings: file.tensor("output.weight").is_none(),
        };
        config.validate(path)?;
        Ok(config)
    }
}

fn parse_hf_rope_scaling(file: &Path, v: &serde_json::Value) -> Result<RopeScaling, LoadError> {
    let ty = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("");
    let num = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .map(|x| x as f32)
    };
    let missing = |k: &str| LoadError::format(file, format!("rope_scaling.{k} is missing"));
    match ty {
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor").ok_or_else(|| missing("factor"))?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor").ok_or_else(|| missing("factor"))?,
            low_freq_factor: num("low_freq_factor").ok_or_else(|| missing("low_freq_factor"))?,
            high_freq_factor: num("high_freq_factor").ok_or_else(|| missing("high_freq_factor"))?,
            original_max_position_embeddings: num("original_max_position_embeddings")
                .ok_or_else(|| missing("original_max_position_embeddings"))?,
        }),
        other => Err(LoadError::format(
            file,
            format!("unsupported rope_scaling type {other:?} (linear and llama3 are supported)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gguf_of_another_architecture_is_refused_by_name() {
        let bytes = crate::GgufWriter::default()
            .str("general.architecture", "gpt2")
            .finish();
        let file = GgufFile::from_bytes(std::path::Path::new("g.gguf"), bytes).unwrap();
        let err = LlamaConfig::from_gguf(&file).unwrap_err().to_string();
        assert!(err.contains("g.gguf") && err.contains("\"gpt2\""), "{err}");
    }

    #[test]
    fn hf_config_with_llama3_scaling() {
        let json = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":256,
            "rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":8192},"tie_word_embeddings":true}"#;
        let c = LlamaConfig::from_hf_json(Path::new("config.json"), json).unwrap();
        assert_eq!((c.head_dim, c.num_key_value_heads), (16, 2));
        let f = c.rope_inv_freq();
        // The highest frequency is untouched, the lowest is divided by the factor.
        assert_eq!(f[0], 1.0);
        let unscaled = 1.0 / 500000f64.powf(14.0 / 16.0);
        assert!(((f[7] as f64) - unscaled / 8.0).abs() < 1e-12, "{}", f[7]);
    }

    #[test]
    fn rejects_other_architectures_and_bad_shapes() {
        let e = LlamaConfig::from_hf_json(Path::new("config.json"), r#"{"architectures":["GPT2LMHeadModel"],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":256}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.json") && e.contains("GPT2LMHeadModel"),
            "{e}"
        );
        let e = LlamaConfig::from_hf_json(Path::new("config.json"), r#"{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":3,"vocab_size":256}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("multiple"), "{e}");
    }
}
