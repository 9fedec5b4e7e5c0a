//! [`CudaBackend`]: the Llama forward pass on one GPU, over a paged bf16 KV cache, behind the
//! same [`Backend`] interface the scheduler drives on the CPU.
//!
//! A step is: one upload of the packed metadata ([`StepPlan`]), the layers (cuBLAS GEMMs and
//! the kernels of `kernels/`, all on one stream), the LM head on only the rows that get logits,
//! a device argmax for greedy rows, and one copy back of what the host needs: whole rows for
//! requests that sample on the host, a token and a log-probability for greedy ones.

use super::error::CudaError;
use super::gemm::{Matrix, Output};
use super::gpu::{DeviceInfo, Gpu};
use super::launch::{addr, Arg};
use super::memory::{plan_kv_cache, KvPlan};
use super::step_plan::StepPlan;
use super::timing::StepClock;
use super::weights::{Bf16Buf, DeviceWeights};
use super::workspace::{Widths, Workspace};
use crate::backend::{
    validate_batch, Backend, BackendError, GreedyToken, Logits, SeqInput, StepTiming,
};
use crate::model::{LlamaConfig, Model, WeightSource};

/// The attention kernel's limit (`kernels/attention.cu`).
const MAX_HEAD_DIM: usize = 256;

/// What to build a [`CudaBackend`] with (`vllm serve`'s flags of the same names).
#[derive(Debug, Clone)]
pub struct CudaOptions {
    /// CUDA device index.
    pub ordinal: usize,
    pub block_size: usize,
    /// `--gpu-memory-utilization`: the share of the device's memory this engine may use.
    pub gpu_memory_utilization: f64,
    /// `--num-gpu-blocks-override`: this many KV blocks, whatever the memory says.
    pub num_blocks_override: Option<usize>,
    /// The largest step the scheduler makes, for the activation workspace.
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
}

/// K and V of one layer: `[num_blocks, block_size, n_kv_heads * head_dim]` each.
struct LayerCache {
    k: Bf16Buf,
    v: Bf16Buf,
}

pub struct CudaBackend {
    config: LlamaConfig,
    kv_plan: KvPlan,
    block_size: usize,
    num_blocks: usize,
    // Field order is drop order: buffers before the handles and the stream they live on.
    weights: DeviceWeights,
    cache: Vec<LayerCache>,
    rope_cos: cudarc::driver::CudaSlice<f32>,
    rope_sin: cudarc::driver::CudaSlice<f32>,
    work: Workspace,
    clock: StepClock,
    timing: Option<StepTiming>,
    gpu: Gpu,
}

/// Bytes cuBLAS and the driver may take beyond our own buffers (cuBLAS workspaces, module
/// images), kept out of the KV cache.
const RESERVE_BYTES: u64 = 256 << 20;

impl CudaBackend {
    pub fn new(model: &Model, options: &CudaOptions) -> Result<CudaBackend, CudaError> {
        Self::from_weights(&model.config, model.weights.as_ref(), options)
    }

    pub fn from_weights(
        config: &LlamaConfig,
        w: &dyn WeightSource,
        options: &CudaOptions,
    ) -> Result<CudaBackend, CudaError> {
        let c = config;
        if c.head_dim > MAX_HEAD_DIM || !c.head_dim.is_multiple_of(2) {
            return Err(CudaError::Unsupported(format!(
                "head_dim {} (the attention kernel takes even head sizes up to {MAX_HEAD_DIM})",
                c.head_dim
            )));
        }
        let gpu = Gpu::open(options.ordinal)?;
        let (free_at_start, total) = (gpu.free_at_open, gpu.info.total_memory);
        let stream = &gpu.stream;
        let weights = DeviceWeights::upload(stream, &gpu.kernels, c, w)?;

        let (cos, sin) = super::rope::tables(&c.rope_inv_freq(), c.max_position_embeddings);
        let rope_cos = stream.clone_htod(&cos)?;
        let rope_sin = stream.clone_htod(&sin)?;

        let widths = Widths::of(c);
        let tokens = options.max_num_batched_tokens.max(1);
        let rows = options.max_num_seqs.max(1);
        let max_blocks = c.max_position_embeddings.div_ceil(options.block_size);
        let work = Workspace::new(
            stream,
            widths,
            tokens,
            rows,
            4 * tokens + rows * max_blocks + rows,
        )?;
        let kv_width = c.num_key_value_heads * c.head_dim;
        let block_bytes = (2 * c.num_hidden_layers * options.block_size * kv_width * 2) as u64;
        let activations =
            work.bytes() + (rope_cos.num_bytes() + rope_sin.num_bytes()) as u64 + RESERVE_BYTES;
        let kv_plan = match options.num_blocks_override {
            // As vLLM: the override replaces the profile, memory checks included.
            Some(n) => KvPlan {
                budget: (total as f64 * options.gpu_memory_utilization) as u64,
                kv_bytes: n as u64 * block_bytes,
                num_blocks: n,
            },
            None => plan_kv_cache(
                total,
                free_at_start,
                options.gpu_memory_utilization,
                weights.bytes,
                activations,
                block_bytes,
            )
            .map_err(CudaError::Memory)?,
        };
        let per_layer = kv_plan.num_blocks * options.block_size * kv_width;
        let cache = (0..c.num_hidden_layers)
            .map(|_| {
                Ok(LayerCache {
                    k: stream.alloc_zeros::<u16>(per_layer)?,
                    v: stream.alloc_zeros::<u16>(per_layer)?,
                })
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        stream.synchronize()?;
        Ok(CudaBackend {
            config: c.clone(),
            clock: StepClock::new(&gpu.ctx)?,
            block_size: options.block_size,
            num_blocks: kv_plan.num_blocks,
            kv_plan,
            weights,
            cache,
            rope_cos,
            rope_sin,
            work,
            timing: None,
            gpu,
        })
    }

    pub fn device(&self) -> &DeviceInfo {
        &self.gpu.info
    }

    /// How the KV cache was sized.
    pub fn kv_plan(&self) -> &KvPlan {
        &self.kv_plan
    }

    /// Device bytes of the weights.
    pub fn weight_bytes(&self) -> u64 {
        self.weights.bytes
    }

    /// The step itself, with device errors as [`CudaError`].
    fn run(&mut self, plan: &StepPlan) -> Result<Logits, CudaError> {
        let c = &self.config;
        let (h, hd, nh, nkv) = (
            c.hidden_size,
            c.head_dim,
            c.num_attention_heads,
            c.num_key_value_heads,
        );
        let w = self.work.widths;
        let (t, rows) = (plan.tokens, plan.logit_rows());
        let s = &self.gpu.stream;
        let k = &self.gpu.kernels;
        self.work.fit(s, t, rows, plan.packed.len())?;
        self.clock.begin(s)?;
        s.memcpy_htod(&plan.packed, &mut self.work.meta)?;
        let work = &self.work;
        let meta = |r: std::ops::Range<usize>| addr(&work.meta, s, r.start);
        let (residual, delta, normed) = (
            addr(&work.residual, s, 0),
            addr(&work.delta, s, 0),
            addr(&work.normed, s, 0),
        );
        let qkv = |offset: usize| addr(&work.qkv, s, offset);
        let eps = Arg::F32(c.rms_norm_eps);
        let tokens = (t as u32, 1);

        // embedding_gather(const bf16* table, const unsigned int* ids, bf16* out, int hidden)
        k.launch(
            s,
            "embedding_gather",
            tokens,
            &[
                addr(&self.weights.embed, s, 0),
                meta(plan.ids()),
                residual,
                Arg::I32(h as i32),
            ],
        )?;
        // rms_norm(const bf16* x, bf16* residual, const bf16* w, bf16* out, int hidden, float eps):
        // with a residual, residual += x first. The first layer normalises the embeddings as
        // they are; every later norm adds the previous sub-layer's output on the way.
        let norm = |x: Arg, res: Arg, weight: &Bf16Buf| {
            k.launch(
                s,
                "rms_norm",
                tokens,
                &[x, res, addr(weight, s, 0), normed, Arg::I32(h as i32), eps],
            )
        };
        for (l, layer) in self.weights.layers.iter().enumerate() {
            if l == 0 {
                norm(residual, Arg::Ptr(0), &layer.attn_norm)?;
            } else {
                norm(delta, residual, &layer.attn_norm)?;
            }
            self.gpu.gemm.linear(
                normed,
                t,
                Matrix {
                    addr: addr(&layer.qkv, s, 0),
                    out: w.qkv,
                    inp: h,
                },
                qkv(0),
                Output::Bf16,
            )?;
            // rope(bf16* q, bf16* k, const unsigned int* positions, const float* cos_table,
            //      const float* sin_table, int n_heads, int n_kv_heads, int head_dim, int stride)
            k.launch(
                s,
                "rope",
                tokens,
                &[
                    qkv(0),
                    qkv(nh * hd),
                    meta(plan.positions()),
                    addr(&self.rope_cos, s, 0),
                    addr(&self.rope_sin, s, 0),
                    Arg::I32(nh as i32),
                    Arg::I32(nkv as i32),
                    Arg::I32(hd as i32),
                    Arg::I32(w.qkv as i32),
                ],
            )?;
            let cache = &self.cache[l];
            // kv_cache_write(const bf16* k, const bf16* v, bf16* k_cache, bf16* v_cache,
            //                const int* slots, int kv_width, int stride)
            k.launch(
                s,
                "kv_cache_write",
                tokens,
                &[
                    qkv(nh * hd),
                    qkv((nh + nkv) * hd),
                    addr(&cache.k, s, 0),
                    addr(&cache.v, s, 0),
                    meta(plan.slots()),
                    Arg::I32((nkv * hd) as i32),
                    Arg::I32(w.qkv as i32),
                ],
            )?;
            // paged_attention(bf16* out, const bf16* q, const bf16* k_cache,
            //     const bf16* v_cache, const int* block_tables, int max_blocks_per_seq,
            //     const int* token_seq, const int* token_pos, int n_heads, int n_kv_heads,
            //     int head_dim, int block_size, float scale, int q_stride)
            k.launch(
                s,
                "paged_attention",
                (t as u32, nh as u32),
                &[
                    addr(&work.attn, s, 0),
                    qkv(0),
                    addr(&cache.k, s, 0),
                    addr(&cache.v, s, 0),
                    meta(plan.block_tables()),
                    Arg::I32(plan.max_blocks as i32),
                    meta(plan.token_seq()),
                    meta(plan.positions()),
                    Arg::I32(nh as i32),
                    Arg::I32(nkv as i32),
                    Arg::I32(hd as i32),
                    Arg::I32(self.block_size as i32),
                    Arg::F32(1.0 / (hd as f32).sqrt()),
                    Arg::I32(w.qkv as i32),
                ],
            )?;
            self.gpu.gemm.linear(
                addr(&work.attn, s, 0),
                t,
                Matrix {
                    addr: addr(&layer.o, s, 0),
                    out: h,
                    inp: w.attn,
                },
                delta,
                Output::Bf16,
            )?;
            norm(delta, residual, &layer.ffn_norm)?;
            self.gpu.gemm.linear(
                normed,
                t,
                Matrix {
                    addr: addr(&layer.gate_up, s, 0),
                    out: 2 * w.inter,
                    inp: h,
                },
                addr(&work.gate_up, s, 0),
                Output::Bf16,
            )?;
            // silu_and_mul(const bf16* gate_up, bf16* out, int inter, size_t tokens)
            k.launch_1d(
                s,
                "silu_and_mul",
                t * w.inter,
                &[
                    addr(&work.gate_up, s, 0),
                    addr(&work.act, s, 0),
                    Arg::I32(w.inter as i32),
                    Arg::Size(t as u64),
                ],
            )?;
            self.gpu.gemm.linear(
                addr(&work.act, s, 0),
                t,
                Matrix {
                    addr: addr(&layer.down, s, 0),
                    out: h,
                    inp: w.inter,
                },
                delta,
                Output::Bf16,
            )?;
        }
        norm(delta, residual, &self.weights.norm)?;

        let vocab = w.vocab;
        if rows > 0 {
            // The rows that get logits, full ones first (embedding_gather gathers any rows).
            k.launch(
                s,
                "embedding_gather",
                (rows as u32, 1),
                &[
                    normed,
                    meta(plan.logit_row_ids()),
                    addr(&work.selected, s, 0),
                    Arg::I32(h as i32),
                ],
            )?;
            self.gpu.gemm.linear(
                addr(&work.selected, s, 0),
                rows,
                Matrix {
                    addr: addr(self.weights.lm_head(), s, 0),
                    out: vocab,
                    inp: h,
                },
                addr(&work.logits, s, 0),
                Output::F32,
            )?;
        }
        if plan.greedy_rows > 0 {
            // argmax_rows(const float* logits, int vocab, unsigned int* ids, float* logprobs)
            k.launch(
                s,
                "argmax_rows",
                (plan.greedy_rows as u32, 1),
                &[
                    addr(&work.logits, s, plan.full_rows * vocab),
                    Arg::I32(vocab as i32),
                    addr(&work.greedy_ids, s, 0),
                    addr(&work.greedy_logprobs, s, 0),
                ],
            )?;
        }
        let mut data = vec![0f32; plan.full_rows * vocab];
        let mut ids = vec![0u32; plan.greedy_rows];
        let mut logprobs = vec![0f32; plan.greedy_rows];
        if !data.is_empty() {
            s.memcpy_dtoh(&work.logits.slice(..data.len()), &mut data)?;
        }
        if !ids.is_empty() {
            s.memcpy_dtoh(&work.greedy_ids.slice(..ids.len()), &mut ids)?;
            s.memcpy_dtoh(&work.greedy_logprobs.slice(..ids.len()), &mut logprobs)?;
        }
        self.clock.end(s)?;
        s.synchronize()?;
        self.timing = Some(self.clock.read()?);
        let greedy = ids
            .into_iter()
            .zip(logprobs)
            .map(|(token, logprob)| GreedyToken { token, logprob })
            .collect();
        Ok(Logits {
            vocab_size: vocab,
            data,
            greedy,
        })
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn block_size(&self) -> usize {
        self.block_size
    }

    fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    fn forward(&mut self, batch: &[SeqInput<'_>]) -> Result<Logits, BackendError> {
        validate_batch(batch, &self.config, self.block_size, self.num_blocks)?;
        let plan = StepPlan::new(batch, self.block_size);
        if plan.tokens == 0 {
            return Ok(Logits::from_rows(batch, self.config.vocab_size, Vec::new()));
        }
        Ok(self.run(&plan)?)
    }

    fn take_step_timing(&mut self) -> Option<StepTiming> {
        self.timing.take()
    }

    fn idle(&mut self) {
        self.clock.idle();
    }
}
