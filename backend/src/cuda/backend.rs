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
use super::kernels::{DevPtr, Grid};
use super::launch::addr;
use super::memory::{plan_kv_cache, KvPlan};
use super::step_plan::StepPlan;
use super::timing::StepClock;
use super::weights::{Bf16Buf, DeviceWeights};
use super::workspace::{Widths, Workspace};
use crate::{
    validate_batch, Backend, BackendError, GreedyToken, KvGeometry, Logits, SeqInput, StepTiming,
};
use model::{LlamaConfig, Model, WeightSource};

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
        // The plan's parts, as the kernels read them (u32 words; tables, slots and sequence
        // numbers are the kernels' `int`).
        let meta = |r: std::ops::Range<usize>| addr(&work.meta, s, r.start);
        let meta_int = |r: std::ops::Range<usize>| meta(r).cast::<i32>();
        let (residual, delta, normed) = (
            addr(&work.residual, s, 0),
            addr(&work.delta, s, 0),
            addr(&work.normed, s, 0),
        );
        let qkv = |offset: usize| addr(&work.qkv, s, offset);
        let eps = c.rms_norm_eps;
        let per_token = Grid::Blocks(t as u32, 1);

        k.embedding_gather(
            s,
            per_token,
            addr(&self.weights.embed, s, 0),
            meta(plan.ids()),
            residual,
            h as i32,
        )?;
        // With a residual, rms_norm adds x to it first. The first layer normalises the
        // embeddings as they are; every later norm adds the previous sub-layer's output on the
        // way.
        let norm = |x, res, weight: &Bf16Buf| {
            k.rms_norm(
                s,
                per_token,
                x,
                res,
                addr(weight, s, 0),
                normed,
                h as i32,
                eps,
            )
        };
        for (l, layer) in self.weights.layers.iter().enumerate() {
            if l == 0 {
                norm(residual, DevPtr::null(), &layer.attn_norm)?;
            } else {
                norm(delta, residual, &layer.attn_norm)?;
            }
            let matrix = |w: &Bf16Buf, out, inp| Matrix {
                addr: addr(w, s, 0),
                out,
                inp,
            };
            self.gpu.gemm.linear(
                normed,
                t,
                matrix(&layer.qkv, w.qkv, h),
                Output::Bf16(qkv(0)),
            )?;
            k.rope(
                s,
                per_token,
                qkv(0),
                qkv(nh * hd),
                meta(plan.positions()),
                addr(&self.rope_cos, s, 0),
                addr(&self.rope_sin, s, 0),
                nh as i32,
                nkv as i32,
                hd as i32,
                w.qkv as i32,
            )?;
            let cache = &self.cache[l];
            k.kv_cache_write(
                s,
                per_token,
                qkv(nh * hd),
                qkv((nh + nkv) * hd),
                addr(&cache.k, s, 0),
                addr(&cache.v, s, 0),
                meta_int(plan.slots()),
                (nkv * hd) as i32,
                w.qkv as i32,
            )?;
            k.paged_attention(
                s,
                Grid::Blocks(t as u32, nh as u32),
                addr(&work.attn, s, 0),
                qkv(0),
                addr(&cache.k, s, 0),
                addr(&cache.v, s, 0),
                meta_int(plan.block_tables()),
                plan.max_blocks as i32,
                meta_int(plan.token_seq()),
                meta_int(plan.positions()),
                nh as i32,
                nkv as i32,
                hd as i32,
                self.block_size as i32,
                1.0 / (hd as f32).sqrt(),
                w.qkv as i32,
            )?;
            self.gpu.gemm.linear(
                addr(&work.attn, s, 0),
                t,
                matrix(&layer.o, h, w.attn),
                Output::Bf16(delta),
            )?;
            norm(delta, residual, &layer.ffn_norm)?;
            self.gpu.gemm.linear(
                normed,
                t,
                matrix(&layer.gate_up, 2 * w.inter, h),
                Output::Bf16(addr(&work.gate_up, s, 0)),
            )?;
            k.silu_and_mul(
                s,
                Grid::Elements(t * w.inter),
                addr(&work.gate_up, s, 0),
                addr(&work.act, s, 0),
                w.inter as i32,
                t as u64,
            )?;
            self.gpu.gemm.linear(
                addr(&work.act, s, 0),
                t,
                matrix(&layer.down, h, w.inter),
                Output::Bf16(delta),
            )?;
        }
        norm(delta, residual, &self.weights.norm)?;

        let vocab = w.vocab;
        if rows > 0 {
            // The rows that get logits, full ones first (embedding_gather gathers any rows).
            k.embedding_gather(
                s,
                Grid::Blocks(rows as u32, 1),
                normed,
                meta(plan.logit_row_ids()),
                addr(&work.selected, s, 0),
                h as i32,
            )?;
            self.gpu.gemm.linear(
                addr(&work.selected, s, 0),
                rows,
                Matrix {
                    addr: addr(self.weights.lm_head(), s, 0),
                    out: vocab,
                    inp: h,
                },
                Output::F32(addr(&work.logits, s, 0)),
            )?;
        }
        if plan.greedy_rows > 0 {
            k.argmax_rows(
                s,
                Grid::Blocks(plan.greedy_rows as u32, 1),
                addr(&work.logits, s, plan.full_rows * vocab),
                vocab as i32,
                addr(&work.greedy_ids, s, 0),
                addr(&work.greedy_logprobs, s, 0),
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

    fn kv_geometry(&self) -> KvGeometry {
        KvGeometry {
            block_size: self.block_size,
            num_blocks: self.num_blocks,
        }
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
