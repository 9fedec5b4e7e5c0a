//! The CPU backend: a Llama forward pass over a paged KV cache, on every core.
//!
//! The CPU backend: a Llama forward pass over a paged KV cache, batched across sequences,
//! using every core (rayon for attention and the quantized matmuls, `gemm` for f32 GEMMs).

/// Paged attention on the host: also the reference `vigil check-gpu` holds the CUDA kernels to.
pub mod attention;
mod embedding;
pub(crate) mod host_memory;
mod linear;
/// Norms, RoPE, activations on the host: also references for the CUDA kernels.
pub mod ops;
mod summation;

use std::sync::Arc;

use half::{bf16, f16};
use rayon::prelude::*;

use super::host_weights::{has_untied_lm_head, layer_groups, Group};
use super::{
    llama, validate_batch, Backend, BackendError, KvGeometry, Logits, LogitsFor, SeqInput,
};
use crate::shape::LayerShape;
use attention::KvElement;
pub(crate) use linear::Linear;
pub use linear::WeightFormat;
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
/// f32 beside f32 weights (the exact reference); f16 beside quantized ones, as llama.cpp and
/// vLLM keep it for a half-precision model.
enum KvCache {
    F32(LayerCaches<f32>),
    F16(LayerCaches<f16>),
    Bf16(LayerCaches<bf16>),
}

struct LayerCaches<T> {
    k: Vec<Vec<T>>,
    v: Vec<Vec<T>>,
}

impl<T: KvElement> LayerCaches<T> {
    fn new(layers: usize, per_layer: usize) -> Self {
        LayerCaches {
            k: (0..layers).map(|_| T::zeroed(per_layer)).collect(),
            v: (0..layers).map(|_| T::zeroed(per_layer)).collect(),
        }
    }

    /// Writes the step's K and V (in `qkv`) of layer `l` and attends over the cache.
    fn attend(
        &mut self,
        l: usize,
        (qkv, rows, tables): (&[f32], &[attention::Row], &[&[u32]]),
        g: attention::Geometry,
        out: &mut [f32],
    ) {
        let (k, v) = (&mut self.k[l], &mut self.v[l]);
        attention::write_kv(qkv, rows, tables, g, k, v);
        attention::paged_attention(qkv, rows, tables, g, k, v, out);
    }
}

/// The Llama forward pass on the host's cores, weights computed in their stored formats.
pub struct CpuBackend {
    config: LlamaConfig,
    /// The layers' widths, from `config`.
    shape: LayerShape,
    embed: embedding::Embedding,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Linear,
    rope: ops::RopeAngles,
    kv: KvCache,
    block_size: usize,
    num_blocks: usize,
    /// Beaten after each layer of a step (a long prefill keeps the watchdog fed while it moves).
    heartbeat: Option<Arc<crate::heartbeat::Heartbeat>>,
}

/// Options for building a [`CpuBackend`].
#[derive(Debug, Clone)]
pub struct CpuOptions {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks in the KV cache.
    pub num_blocks: usize,
    /// How the linear layers hold their weights.
    pub weight_format: WeightFormat,
    /// The KV cache's element; `None` (vLLM's `auto`): f32 beside f32 weights, else f16.
    pub kv_dtype: Option<KvDtype>,
}

/// Element types of the CPU backend's KV cache (`--kv-cache-dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    /// 4 bytes per element.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl KvDtype {
    /// The element used beside weights in `format` when none is asked for.
    pub fn auto(format: WeightFormat) -> KvDtype {
        if format == WeightFormat::F32 {
            KvDtype::F32
        } else {
            KvDtype::F16
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::Bf16 => 2,
        }
    }
}

impl CpuBackend {
    /// Builds the backend from `model`'s weights, converting each tensor as it is read.
    pub fn new(model: &Model, options: &CpuOptions) -> Result<CpuBackend, LoadError> {
        Self::from_weights(&model.config, model.weights.as_ref(), options)
    }

    /// A backend over weights from any source (a model file, or tests' in-memory weights).
    pub fn from_weights(
        config: &LlamaConfig,
        w: &dyn WeightSource,
        options: &CpuOptions,
    ) -> Result<CpuBackend, LoadError> {
        let c = config;
        let shape = LayerShape::of(c);
        let (h, inter) = (shape.hidden, shape.inter);
        let fmt = options.weight_format;
        // A group's matrix as the file stores it (each tensor in its own format) where that is
        // computed natively, else from f32.
        let linear = |group: &Group, out: usize, inp: usize| -> Result<Linear, LoadError> {
            if fmt == WeightFormat::Native {
                if let Some(parts) = group.encoded_parts(w, Linear::NATIVE)? {
                    let parts: Vec<_> = parts
                        .iter()
                        .map(|p| (p.ggml_type, &p.bytes[..], p.rows))
                        .collect();
                    if let Some(linear) = Linear::from_file_parts(&parts, inp) {
                        assert_eq!(linear.out(), out, "a group's rows");
                        return Ok(linear);
                    }
                }
            }
            Ok(Linear::new(group.read(w)?, out, inp, fmt))
        };
        let embed = embedding::Embedding::load(w, c.vocab_size, h)?;
        let layers = (0..c.num_hidden_layers)
            .map(|l| -> Result<Layer, LoadError> {
                let [attn_norm, qkv, o, ffn_norm, gate_up, down] = layer_groups(c, l);
                Ok(Layer {
                    attn_norm: attn_norm.read(w)?,
                    qkv: linear(&qkv, shape.qkv_width(), h)?,
                    o: linear(&o, h, shape.q_width())?,
                    ffn_norm: ffn_norm.read(w)?,
                    gate_up: linear(&gate_up, 2 * inter, h)?,
                    down: linear(&down, h, inter)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let norm = w.tensor(names::FINAL_NORM, &[h])?.data;
        let head = if has_untied_lm_head(c, w) {
            Group::one(names::LM_HEAD, &[c.vocab_size, h])
        } else {
            Group::one(names::EMBED, &[c.vocab_size, h])
        };
        let lm_head = linear(&head, c.vocab_size, h)?;
        let per_layer = options.num_blocks * options.block_size * shape.kv_width();
        let layers_n = c.num_hidden_layers;
        let kv = match options.kv_dtype.unwrap_or(KvDtype::auto(fmt)) {
            KvDtype::F32 => KvCache::F32(LayerCaches::new(layers_n, per_layer)),
            KvDtype::F16 => KvCache::F16(LayerCaches::new(layers_n, per_layer)),
            KvDtype::Bf16 => KvCache::Bf16(LayerCaches::new(layers_n, per_layer)),
        };
        Ok(CpuBackend {
            config: c.clone(),
            shape,
            embed,
            layers,
            norm,
            lm_head,
            rope: ops::RopeAngles::new(c),
            kv,
            block_size: options.block_size,
            num_blocks: options.num_blocks,
            heartbeat: None,
        })
    }

    /// Bytes of KV cache per token (K and V, every layer) in elements of `dtype`.
    pub fn kv_bytes_per_token(config: &LlamaConfig, dtype: KvDtype) -> usize {
        2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * dtype.bytes()
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
        let (layers, vocab) = (self.layers.len(), self.config.vocab_size);
        let mut step = CpuStep::new(self, batch);
        if !step.rows.is_empty() {
            // The whole pass runs on one of rayon's workers: each of its parallel loops then
            // splits between the workers directly, instead of this thread handing every loop to
            // the pool and sleeping until it is done (hundreds of wake-ups per decoded token).
            rayon::scope(|_| llama::forward(&mut step, layers))?;
        }
        Ok(Logits::from_rows(batch, vocab, step.logits))
    }
}

/// One forward step on the host: the batch flattened into rows (one per new token), the
/// residual stream `x`, and the scratch the layers reuse.
struct CpuStep<'a, 'b> {
    backend: &'a mut CpuBackend,
    batch: &'a [SeqInput<'b>],
    /// One per new token, with its sequence and position.
    rows: Vec<attention::Row>,
    /// The residual stream, `[rows, hidden]`.
    x: Vec<f32>,
    /// `x` normalised, the input of the next projection.
    xn: Vec<f32>,
    qkv: Vec<f32>,
    /// Each row's RoPE cosines and sines, `[rows, head_dim]`.
    rope: Vec<f32>,
    attn: Vec<f32>,
    /// A sub-layer's output, before it is added to `x`.
    out: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    /// The LM head's rows, `[rows wanted, vocab]`.
    logits: Vec<f32>,
}

impl<'a, 'b> CpuStep<'a, 'b> {
    fn new(backend: &'a mut CpuBackend, batch: &'a [SeqInput<'b>]) -> Self {
        let rows: Vec<attention::Row> = batch
            .iter()
            .enumerate()
            .flat_map(|(seq, s)| {
                (0..s.tokens.len()).map(move |i| attention::Row {
                    seq,
                    pos: s.start_pos + i,
                })
            })
            .collect();
        let t = rows.len();
        let shape = backend.shape;
        let (h, hd, inter) = (shape.hidden, shape.head_dim, shape.inter);
        let mut rope = vec![0f32; t * hd];
        for (cos_sin, row) in rope.chunks_exact_mut(hd).zip(&rows) {
            backend.rope.at(row.pos, cos_sin);
        }
        CpuStep {
            rope,
            x: vec![0f32; t * h],
            xn: vec![0f32; t * h],
            qkv: vec![0f32; t * shape.qkv_width()],
            attn: vec![0f32; t * shape.q_width()],
            out: vec![0f32; t * h],
            gate_up: vec![0f32; t * 2 * inter],
            act: vec![0f32; t * inter],
            logits: Vec::new(),
            rows,
            backend,
            batch,
        }
    }
}

impl llama::LlamaStep for CpuStep<'_, '_> {
    type Error = BackendError;

    fn embed(&mut self) -> Result<(), BackendError> {
        let h = self.backend.shape.hidden;
        let tokens = self.batch.iter().flat_map(|s| s.tokens.iter());
        for (row, &tok) in self.x.chunks_exact_mut(h).zip(tokens) {
            let tok = tok as usize;
            self.backend.embed.row(tok, row);
        }
        Ok(())
    }

    fn attention(&mut self, l: usize) -> Result<(), BackendError> {
        let b = &mut *self.backend;
        let c = &b.config;
        let shape = b.shape;
        let (t, hd, nh, nkv) = (
            self.rows.len(),
            shape.head_dim,
            shape.n_heads,
            shape.n_kv_heads,
        );
        let layer = &b.layers[l];
        ops::rms_norm_rows(&self.x, &layer.attn_norm, c.rms_norm_eps, &mut self.xn);
        layer.qkv.forward(&self.xn, t, &mut self.qkv);
        self.qkv
            .par_chunks_mut(shape.qkv_width())
            .zip(self.rope.par_chunks(hd))
            .for_each(|(r, cos_sin)| {
                let (q, k) = r.split_at_mut(shape.q_width());
                ops::rope(q, nh, hd, cos_sin);
                ops::rope(&mut k[..shape.kv_width()], nkv, hd, cos_sin);
            });
        let tables: Vec<&[u32]> = self.batch.iter().map(|s| s.block_table).collect();
        let geometry = attention::Geometry {
            block_size: b.block_size,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
        };
        let step = (&self.qkv[..], &self.rows[..], &tables[..]);
        match &mut b.kv {
            KvCache::F32(cache) => cache.attend(l, step, geometry, &mut self.attn),
            KvCache::F16(cache) => cache.attend(l, step, geometry, &mut self.attn),
            KvCache::Bf16(cache) => cache.attend(l, step, geometry, &mut self.attn),
        }
        layer.o.forward(&self.attn, t, &mut self.out);
        ops::add_assign(&mut self.x, &self.out);
        Ok(())
    }

    fn mlp(&mut self, l: usize) -> Result<(), BackendError> {
        let b = &*self.backend;
        let (t, inter) = (self.rows.len(), b.shape.inter);
        let layer = &b.layers[l];
        ops::rms_norm_rows(
            &self.x,
            &layer.ffn_norm,
            b.config.rms_norm_eps,
            &mut self.xn,
        );
        layer.gate_up.forward(&self.xn, t, &mut self.gate_up);
        self.act
            .par_chunks_mut(inter)
            .zip(self.gate_up.par_chunks(2 * inter))
            .for_each(|(a, gu)| {
                let (g, u) = gu.split_at(inter);
                ops::swiglu(a, g, u);
            });
        layer.down.forward(&self.act, t, &mut self.out);
        ops::add_assign(&mut self.x, &self.out);
        if let Some(heartbeat) = &b.heartbeat {
            heartbeat.beat();
        }
        Ok(())
    }

    fn lm_head(&mut self) -> Result<(), BackendError> {
        let b = &*self.backend;
        let (h, vocab, eps) = (b.shape.hidden, b.shape.vocab, b.config.rms_norm_eps);
        let mut picked = Vec::new();
        let mut offset = 0;
        for s in self.batch {
            let n = s.tokens.len();
            match s.logits_for {
                LogitsFor::None => {}
                LogitsFor::Last | LogitsFor::Greedy if n > 0 => picked.push(offset + n - 1),
                LogitsFor::Last | LogitsFor::Greedy => {}
                LogitsFor::All => picked.extend(offset..offset + n),
            }
            offset += n;
        }
        let mut selected = vec![0f32; picked.len() * h];
        for (dst, &r) in selected.chunks_exact_mut(h).zip(&picked) {
            ops::rms_norm(&self.x[r * h..(r + 1) * h], &b.norm, eps, dst);
        }
        self.logits = vec![0f32; picked.len() * vocab];
        if !picked.is_empty() {
            b.lm_head.forward(&selected, picked.len(), &mut self.logits);
        }
        Ok(())
    }
}

#[cfg(test)]
mod hf_folder_tests;
#[cfg(test)]
mod tests;
