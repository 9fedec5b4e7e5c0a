//! The CPU backend: a Llama forward pass over a paged KV cache, batched across sequences,
//! using every core (rayon for attention and the quantized matmuls, `gemm` for f32 GEMMs).

/// Paged attention on the host: also the reference `vigil check-gpu` holds the CUDA kernels to.
pub mod attention;
pub mod host_memory;
mod linear;
/// Norms, RoPE, activations on the host: also references for the CUDA kernels.
pub mod ops;

use std::sync::Arc;

use rayon::prelude::*;

use super::host_weights::{untied_lm_head, HostLayer};
use super::{validate_batch, Backend, BackendError, KvGeometry, Logits, LogitsFor, SeqInput};
pub use linear::{Linear, WeightFormat};
use model::names;
use model::{LlamaConfig, LoadError, Model, WeightSource};

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V projections fused into one matrix (rows: Q heads, then K, then V).
    qkv: Linear,
    o: Linear,
    ffn_norm: Vec<f32>,
    /// Gate and up projections fused (rows: gate, then up).
    gate_up: Linear,
    down: Linear,
}

/// K and V of every layer, paged: `[num_blocks, block_size, n_kv_heads, head_dim]` per layer.
struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

pub struct CpuBackend {
    config: LlamaConfig,
    embed: Arc<Vec<f32>>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    kv: KvCache,
    block_size: usize,
    num_blocks: usize,
    /// Beaten after each layer of a step (a long prefill keeps the watchdog fed while it moves).
    heartbeat: Option<Arc<crate::heartbeat::Heartbeat>>,
}

/// Options for building a [`CpuBackend`].
#[derive(Debug, Clone)]
pub struct CpuOptions {
    pub block_size: usize,
    pub num_blocks: usize,
    pub weight_format: WeightFormat,
}

impl CpuBackend {
    /// Builds the backend from `model`'s weights, converting each tensor as it is read.
    pub fn new(model: &Model, options: &CpuOptions) -> Result<CpuBackend, LoadError> {
        Self::from_weights(&model.config, model.weights.as_ref(), options)
    }

    pub fn from_weights(
        config: &LlamaConfig,
        w: &dyn WeightSource,
        options: &CpuOptions,
    ) -> Result<CpuBackend, LoadError> {
        let c = config;
        let (h, hd, nh, nkv, inter) = (
            c.hidden_size,
            c.head_dim,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.intermediate_size,
        );
        let fmt = options.weight_format;
        let embed = w.tensor(names::EMBED, &[c.vocab_size, h])?.data;
        let layers = (0..c.num_hidden_layers)
            .map(|l| -> Result<Layer, LoadError> {
                let host = HostLayer::read(c, w, l)?;
                Ok(Layer {
                    attn_norm: host.attn_norm,
                    qkv: Linear::new(host.qkv, (nh + 2 * nkv) * hd, h, fmt),
                    o: Linear::new(host.o, h, nh * hd, fmt),
                    ffn_norm: host.ffn_norm,
                    gate_up: Linear::new(host.gate_up, 2 * inter, h, fmt),
                    down: Linear::new(host.down, h, inter, fmt),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let norm = w.tensor(names::FINAL_NORM, &[h])?.data;
        let lm_head = match untied_lm_head(c, w)? {
            Some(head) => Linear::new(head, c.vocab_size, h, fmt),
            None => Linear::new(embed.clone(), c.vocab_size, h, fmt),
        };
        let per_layer = options.num_blocks * options.block_size * nkv * hd;
        let kv = KvCache {
            k: (0..c.num_hidden_layers)
                .map(|_| vec![0f32; per_layer])
                .collect(),
            v: (0..c.num_hidden_layers)
                .map(|_| vec![0f32; per_layer])
                .collect(),
        };
        Ok(CpuBackend {
            config: c.clone(),
            embed: Arc::new(embed),
            layers,
            norm,
            lm_head,
            inv_freq: c.rope_inv_freq(),
            kv,
            block_size: options.block_size,
            num_blocks: options.num_blocks,
            heartbeat: None,
        })
    }

    /// Bytes of KV cache per token (K and V, every layer).
    pub fn kv_bytes_per_token(config: &LlamaConfig) -> usize {
        2 * config.num_hidden_layers
            * config.num_key_value_heads
            * config.head_dim
            * std::mem::size_of::<f32>()
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn kv_geometry(&self) -> KvGeometry {
        KvGeometry {
            block_size: self.block_size,
            num_blocks: self.num_blocks,
        }
    }

    fn beat_while_working(&mut self, heartbeat: Arc<crate::heartbeat::Heartbeat>) {
        self.heartbeat = Some(heartbeat);
    }

    fn forward(&mut self, batch: &[SeqInput<'_>]) -> Result<Logits, BackendError> {
        validate_batch(batch, &self.config, self.block_size, self.num_blocks)?;
        let c = &self.config;
        let (h, hd, nh, nkv, inter) = (
            c.hidden_size,
            c.head_dim,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.intermediate_size,
        );
        // Flatten the batch: one row per new token, with its sequence and position.
        let mut rows: Vec<attention::Row> = Vec::new();
        for (seq, s) in batch.iter().enumerate() {
            for i in 0..s.tokens.len() {
                rows.push(attention::Row {
                    seq,
                    pos: s.start_pos + i,
                });
            }
        }
        let t = rows.len();
        let vocab = c.vocab_size;
        if t == 0 {
            return Ok(Logits::from_rows(batch, vocab, Vec::new()));
        }
        let mut x = vec![0f32; t * h];
        for (row, tok) in x
            .chunks_exact_mut(h)
            .zip(batch.iter().flat_map(|s| s.tokens.iter()))
        {
            row.copy_from_slice(&self.embed[*tok as usize * h..(*tok as usize + 1) * h]);
        }
        let tables: Vec<&[u32]> = batch.iter().map(|s| s.block_table).collect();
        let geometry = attention::Geometry {
            block_size: self.block_size,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
        };
        let qkv_width = (nh + 2 * nkv) * hd;
        let mut xn = vec![0f32; t * h];
        let mut qkv = vec![0f32; t * qkv_width];
        let mut attn = vec![0f32; t * nh * hd];
        let mut tmp = vec![0f32; t * h];
        let mut gate_up = vec![0f32; t * 2 * inter];
        let mut act = vec![0f32; t * inter];
        for (l, layer) in self.layers.iter().enumerate() {
            ops::rms_norm_rows(&x, &layer.attn_norm, c.rms_norm_eps, &mut xn);
            layer.qkv.forward(&xn, t, &mut qkv);
            qkv.par_chunks_mut(qkv_width)
                .zip(rows.par_iter())
                .for_each(|(r, row)| {
                    let (q, k) = r.split_at_mut(nh * hd);
                    ops::rope(q, nh, hd, row.pos, &self.inv_freq);
                    ops::rope(&mut k[..nkv * hd], nkv, hd, row.pos, &self.inv_freq);
                });
            attention::write_kv(
                &qkv,
                &rows,
                &tables,
                geometry,
                &mut self.kv.k[l],
                &mut self.kv.v[l],
            );
            attention::paged_attention(
                &qkv,
                &rows,
                &tables,
                geometry,
                &self.kv.k[l],
                &self.kv.v[l],
                &mut attn,
            );
            layer.o.forward(&attn, t, &mut tmp);
            ops::add_assign(&mut x, &tmp);
            ops::rms_norm_rows(&x, &layer.ffn_norm, c.rms_norm_eps, &mut xn);
            layer.gate_up.forward(&xn, t, &mut gate_up);
            act.par_chunks_mut(inter)
                .zip(gate_up.par_chunks(2 * inter))
                .for_each(|(a, gu)| {
                    let (g, u) = gu.split_at(inter);
                    for ((a, g), u) in a.iter_mut().zip(g).zip(u) {
                        *a = ops::silu(*g) * u;
                    }
                });
            layer.down.forward(&act, t, &mut tmp);
            ops::add_assign(&mut x, &tmp);
            if let Some(heartbeat) = &self.heartbeat {
                heartbeat.beat();
            }
        }
        // Final norm and LM head on the rows asked for.
        let mut picked = Vec::new();
        let mut offset = 0;
        for s in batch {
            let n = s.tokens.len();
            match s.logits_for {
                LogitsFor::None => {}
                LogitsFor::Last | LogitsFor::Greedy if n > 0 => picked.push(offset + n - 1),
                LogitsFor::Last | LogitsFor::Greedy => {}
                LogitsFor::All => picked.extend(offset..offset + n),
            }
            offset += n;
        }
        let mut sel = vec![0f32; picked.len() * h];
        for (dst, &r) in sel.chunks_exact_mut(h).zip(&picked) {
            ops::rms_norm(&x[r * h..(r + 1) * h], &self.norm, c.rms_norm_eps, dst);
        }
        let mut data = vec![0f32; picked.len() * vocab];
        if !picked.is_empty() {
            self.lm_head.forward(&sel, picked.len(), &mut data);
        }
        Ok(Logits::from_rows(batch, vocab, data))
    }
}

#[cfg(test)]
mod hf_folder_tests;
#[cfg(test)]
mod tests;
