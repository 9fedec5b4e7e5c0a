//! A layer's weights as every backend reads them: in f32 from the [`WeightSource`], checked
//! against the config's shapes, with Q, K and V fused into one matrix (rows: Q heads, then K,
//! then V) and gate and up fused into another (rows: gate, then up), so that each takes one GEMM.
//! Backends turn these into their own format (Q8 blocks on the CPU, bf16 on a GPU).

use crate::model::names::{self, LayerTensor};
use crate::model::{LlamaConfig, LoadError, WeightSource};

pub struct HostLayer {
    pub attn_norm: Vec<f32>,
    /// `[(n_heads + 2 n_kv_heads) head_dim, hidden]`.
    pub qkv: Vec<f32>,
    /// `[hidden, n_heads head_dim]`.
    pub o: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    /// `[2 intermediate, hidden]`.
    pub gate_up: Vec<f32>,
    /// `[hidden, intermediate]`.
    pub down: Vec<f32>,
}

impl HostLayer {
    /// Reads layer `l`.
    pub fn read(c: &LlamaConfig, w: &dyn WeightSource, l: usize) -> Result<HostLayer, LoadError> {
        let (h, hd, nh, nkv, inter) = (
            c.hidden_size,
            c.head_dim,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.intermediate_size,
        );
        let t = |lt: LayerTensor, shape: &[usize]| w.tensor(&lt.hf_name(l), shape).map(|t| t.data);
        let mut qkv = t(LayerTensor::Q, &[nh * hd, h])?;
        qkv.extend(t(LayerTensor::K, &[nkv * hd, h])?);
        qkv.extend(t(LayerTensor::V, &[nkv * hd, h])?);
        let mut gate_up = t(LayerTensor::Gate, &[inter, h])?;
        gate_up.extend(t(LayerTensor::Up, &[inter, h])?);
        Ok(HostLayer {
            attn_norm: t(LayerTensor::AttnNorm, &[h])?,
            qkv,
            o: t(LayerTensor::O, &[h, nh * hd])?,
            ffn_norm: t(LayerTensor::FfnNorm, &[h])?,
            gate_up,
            down: t(LayerTensor::Down, &[h, inter])?,
        })
    }
}

/// The LM head's own matrix `[vocab, hidden]`, or `None` when it is the embedding (tied, or
/// absent from the file).
pub fn untied_lm_head(
    c: &LlamaConfig,
    w: &dyn WeightSource,
) -> Result<Option<Vec<f32>>, LoadError> {
    if c.tie_word_embeddings || !w.has(names::LM_HEAD) {
        return Ok(None);
    }
    Ok(Some(
        w.tensor(names::LM_HEAD, &[c.vocab_size, c.hidden_size])?
            .data,
    ))
}
