//! [`CudaBackend`]: the Llama forward pass on one GPU behind the [`Backend`] interface.
//!
//! [`CudaBackend`]: the Llama forward pass on one GPU, over a paged bf16 KV cache, behind the
//! same [`Backend`] interface the scheduler drives on the CPU.
//!
//! A step is: one upload of the packed metadata ([`StepPlan`]), the layers (cuBLAS GEMMs and
//! the kernels of `kernels/`, all on one stream), the LM head on only the rows that get logits,
//! a device argmax for greedy rows, and one copy back of what the host needs: whole rows for
//! requests that sample on the host, a token and a log-probability for greedy ones.

use super::attention::{Attention, Split, SplitScratch};
use super::error::CudaError;
use super::gemm::{Matrix, Output};
use super::gpu::{DeviceInfo, Gpu};
use super::graphs::DecodeGraphs;
use super::kernels::{
    ArgmaxRows, Bf16, DevPtr, EmbeddingGather, Grid, HeadDim, Heads, KvHeads, RmsNorm, RopeKvWrite,
    SiluAndMul,
};
use super::launch::addr;
use super::memory::{plan_kv_cache, KvPlan};
use super::quantized::{self, GemvInput, GEMV_MAX_TOKENS, MAX_TILE_ELEMENTS};
use super::step_plan::StepPlan;
use super::timing::StepClock;
use super::weights::{Bf16Buf, DeviceMatrix, DeviceWeights, MatrixAt};
use super::workspace::Workspace;
use crate::shape::LayerShape;
use crate::{
    llama, validate_batch, Backend, BackendError, GreedyToken, KvGeometry, Logits, SeqInput,
    StepTiming,
};
use model::{LlamaConfig, Model, WeightSource};

/// The attention kernel's limit (`kernels/attention.cu`).
const MAX_HEAD_DIM: usize = 256;

/// The RMSNorm kernel's limit (`NORM_MAX_HIDDEN` in `kernels/norm.cu`).
const MAX_HIDDEN: usize = 8192;

/// What to build a [`CudaBackend`] with (`vllm serve`'s flags of the same names).
#[derive(Debug, Clone)]
pub struct CudaOptions {
    /// CUDA device index.
    pub ordinal: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// `--gpu-memory-utilization`: the share of the device's memory this engine may use.
    pub gpu_memory_utilization: f64,
    /// `--num-gpu-blocks-override`: this many KV blocks, whatever the memory says.
    pub num_blocks_override: Option<usize>,
    /// The largest step the scheduler makes, for the activation workspace.
    pub max_num_batched_tokens: usize,
    /// The most sequences one step may carry (sizes the step's buffers).
    pub max_num_seqs: usize,
    /// `--max-model-len`: the longest context (0: the model's own), the width of the block
    /// tables a CUDA graph reads.
    pub max_model_len: usize,
    /// `--enforce-eager`: every step launches its kernels one by one; no CUDA graphs.
    pub enforce_eager: bool,
}

/// What capturing the decode graphs took, for the start-up log.
#[derive(Debug, Clone, Copy)]
pub struct GraphCapture {
    /// Graphs captured.
    pub graphs: usize,
    /// Largest batch a graph serves.
    pub max_batch: usize,
    /// Wall time of the capture.
    pub seconds: f64,
    /// Device memory the graphs took (free memory before less after).
    pub bytes: u64,
}

/// K and V of one layer: `[num_blocks, block_size, n_kv_heads * head_dim]` each.
struct LayerCache {
    k: Bf16Buf,
    v: Bf16Buf,
}

/// The Llama forward pass on one CUDA device: bf16 weights, cuBLAS GEMMs, our kernels.
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
    /// Split attention's partial outputs.
    split_scratch: SplitScratch,
    /// Where a large step decodes tiles of quantized matrices to bf16 for cuBLAS (empty when
    /// no matrix is quantized or no step is large).
    decode_scratch: Bf16Buf,
    clock: StepClock,
    timing: Option<StepTiming>,
    /// Pure-decode steps' graphs (`None` under `--enforce-eager`).
    graphs: Option<DecodeGraphs>,
    graph_capture: Option<GraphCapture>,
    gpu: Gpu,
}

/// Bytes cuBLAS and the driver may take beyond our own buffers (cuBLAS workspaces, module
/// images), kept out of the KV cache.
const RESERVE_BYTES: u64 = 256 << 20;

impl CudaBackend {
    /// Uploads `model`'s weights and sizes the KV cache on the first device.
    pub fn new(model: &Model, options: &CudaOptions) -> Result<CudaBackend, CudaError> {
        Self::from_weights(&model.config, model.weights.as_ref(), options)
    }

    /// A backend over weights from any source (a model file, or tests' in-memory weights).
    pub fn from_weights(
        config: &LlamaConfig,
        w: &dyn WeightSource,
        options: &CudaOptions,
    ) -> Result<CudaBackend, CudaError> {
        let c = config;
        if c.head_dim > MAX_HEAD_DIM || !c.head_dim.is_multiple_of(8) {
            return Err(CudaError::Unsupported(format!(
                "head_dim {} (the attention kernel takes head sizes that are multiples of 8, up to {MAX_HEAD_DIM})",
                c.head_dim
            )));
        }
        if c.hidden_size > MAX_HIDDEN || !c.hidden_size.is_multiple_of(8) {
            return Err(CudaError::Unsupported(format!(
                "hidden_size {} (the RMSNorm kernel takes widths that are multiples of 8, up to {MAX_HIDDEN})",
                c.hidden_size
            )));
        }
        let gpu = Gpu::open(options.ordinal)?;
        let (free_at_start, total) = (gpu.free_at_open, gpu.info.total_memory);
        let stream = &gpu.stream;
        let weights = DeviceWeights::upload(stream, &gpu.kernels, c, w)?;

        let (cos, sin) = super::rope::tables(&c.rope_inv_freq(), c.max_position_embeddings);
        let rope_cos = stream.clone_htod(&cos)?;
        let rope_sin = stream.clone_htod(&sin)?;

        let shape = LayerShape::of(c);
        let tokens = options.max_num_batched_tokens.max(1);
        let rows = options.max_num_seqs.max(1);
        let max_blocks = c.max_position_embeddings.div_ceil(options.block_size);
        let work = Workspace::new(
            stream,
            shape,
            tokens,
            rows,
            4 * tokens + rows * max_blocks + rows,
        )?;
        let split_scratch = SplitScratch::new(stream, &shape, gpu.info.sms)?;
        let decode_elements = if tokens > GEMV_MAX_TOKENS {
            weights.largest_quantized.min(MAX_TILE_ELEMENTS)
        } else {
            0
        };
        // SAFETY: each tile is written by `decode_planes_*` before cuBLAS reads it.
        let decode_scratch = unsafe { stream.alloc::<u16>(decode_elements.max(1)) }?;
        let kv_width = c.num_key_value_heads * c.head_dim;
        let block_bytes = (2 * c.num_hidden_layers * options.block_size * kv_width * 2) as u64;
        let activations = work.bytes()
            + split_scratch.bytes()
            + decode_scratch.num_bytes() as u64
            + (rope_cos.num_bytes() + rope_sin.num_bytes()) as u64
            + RESERVE_BYTES;
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
        let max_context = match options.max_model_len {
            0 => c.max_position_embeddings,
            n => n.min(c.max_position_embeddings),
        };
        let graphs = (!options.enforce_eager).then(|| {
            DecodeGraphs::new(
                rows.min(tokens),
                max_context,
                max_context.div_ceil(options.block_size),
            )
        });
        let mut backend = CudaBackend {
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
            split_scratch,
            decode_scratch,
            timing: None,
            graphs,
            graph_capture: None,
            gpu,
        };
        backend.capture_graphs()?;
        Ok(backend)
    }

    /// Captures a graph of every pure-decode shape (see [`super::graphs`]), replacing any held.
    fn capture_graphs(&mut self) -> Result<(), CudaError> {
        let Some(mut graphs) = self.graphs.take() else {
            return Ok(());
        };
        graphs.clear();
        let started = std::time::Instant::now();
        // One step of padding rows (they write no KV slot) run eagerly first, as vLLM warms up
        // before capturing: whatever cuBLAS or the driver set up on first use (handles,
        // workspaces, lazily loaded kernels) happens outside the capture, where it is allowed.
        let warm = StepPlan::padded_decode(&[], self.block_size, 1, graphs.max_blocks)
            .expect("an empty batch pads to any size");
        self.upload_plan(&warm)?;
        self.enqueue(&warm, self.eager_split(&warm))?;
        self.gpu.stream.synchronize()?;
        let free_before = self.gpu.ctx.mem_get_info()?.0;
        let shapes = graphs.shapes(&self.split_scratch, &self.work.shape);
        let max_batch = shapes.iter().map(|s| s.0).max().unwrap_or(0);
        for (rows, split) in shapes {
            let plan = StepPlan::padded_decode(&[], self.block_size, rows, graphs.max_blocks)
                .expect("an empty batch pads to any size");
            match self.capture(&plan, split) {
                Ok(graph) => graphs.insert(rows, split, graph),
                Err(e) => {
                    // The graph set is an optimisation: steps run eagerly instead.
                    tracing::error!("capturing a CUDA graph of {rows} rows failed ({e}); decode steps run without graphs");
                    graphs.clear();
                    self.graphs = None;
                    return Ok(());
                }
            }
        }
        self.graph_capture = Some(GraphCapture {
            graphs: graphs.len(),
            max_batch,
            seconds: started.elapsed().as_secs_f64(),
            bytes: free_before.saturating_sub(self.gpu.ctx.mem_get_info()?.0) as u64,
        });
        self.graphs = Some(graphs);
        Ok(())
    }

    /// One graph: the layers and LM head of a step laid out as `plan`, attention split as
    /// `split`, recorded on the stream rather than run.
    fn capture(
        &self,
        plan: &StepPlan,
        split: Split,
    ) -> Result<cudarc::driver::CudaGraph, CudaError> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        let s = &self.gpu.stream;
        s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let recorded = self.enqueue(plan, split);
        // The capture ends whatever happened, so that the stream leaves capture mode.
        let graph = s.end_capture(CUgraphInstantiate_flags(0));
        recorded?;
        let graph = graph?.ok_or_else(|| {
            CudaError::Unsupported("stream capture recorded an empty graph".into())
        })?;
        graph.upload()?;
        Ok(graph)
    }

    /// Copies `plan`'s packed metadata to the device, through the page-locked staging buffer.
    fn upload_plan(&mut self, plan: &StepPlan) -> Result<(), CudaError> {
        self.work.host_meta.write(&plan.packed);
        let s = &self.gpu.stream;
        self.work
            .host_meta
            .upload(s, &self.work.meta, plan.packed.len())
    }

    /// The attention split an eagerly launched step takes: its own tokens and longest context.
    fn eager_split(&self, plan: &StepPlan) -> Split {
        self.split_scratch
            .plan(&self.work.shape, plan.tokens, plan.max_context)
    }

    /// Enqueues the layers and LM head of a step laid out as `plan` (its metadata uploaded),
    /// attention split as `split`: run, or recorded into a graph while the stream captures.
    fn enqueue(&self, plan: &StepPlan, split: Split) -> Result<(), CudaError> {
        llama::forward(
            &mut CudaStep {
                backend: self,
                plan,
                split,
            },
            self.config.num_hidden_layers,
        )
    }

    /// What capturing the decode graphs took, when they were captured.
    pub fn graph_capture(&self) -> Option<GraphCapture> {
        self.graph_capture
    }

    /// The device it runs on.
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

    /// Times each kernel launch and GEMM of the steps that follow (see
    /// [`super::kernel_timer`]), or stops.
    pub fn time_kernels(&self, on: bool) {
        self.gpu.timer.set(on);
    }

    /// The launches timed since the last call, in launch order: label and seconds.
    pub fn take_kernel_times(&self) -> Result<Vec<(String, f64)>, CudaError> {
        self.gpu.timer.take()
    }

    /// Where the KV cache lies on the device: `(address, bytes)` of each layer's K and V, for a
    /// profile that tells attention's KV traffic from the rest of its accesses.
    pub fn kv_cache_ranges(&self) -> Vec<(u64, u64)> {
        let s = &self.gpu.stream;
        self.cache
            .iter()
            .flat_map(|layer| [&layer.k, &layer.v])
            .map(|buf| (addr(buf, s, 0).addr(), (buf.len() * 2) as u64))
            .collect()
    }

    /// The step itself, with device errors as [`CudaError`]: upload the plan, run the layers
    /// ([`llama::forward`] over a [`CudaStep`]), and copy back what the host needs.
    fn run(&mut self, plan: &StepPlan, graph: Option<Split>) -> Result<Logits, CudaError> {
        let (t, rows) = (plan.tokens, plan.lm_rows);
        let s = &self.gpu.stream;
        if self.work.fit(s, t, rows, plan.packed.len())? {
            // The buffers the graphs read moved.
            self.capture_graphs()?;
        }
        self.clock.begin(&self.gpu.stream)?;
        self.upload_plan(plan)?;
        let replay = graph.and_then(|split| {
            let graphs = self.graphs.as_ref()?;
            graphs.get(plan.tokens, split)
        });
        match replay {
            Some(graph) => graph.launch()?,
            None => self.enqueue(plan, graph.unwrap_or_else(|| self.eager_split(plan)))?,
        }

        let vocab = self.work.shape.vocab;
        let (s, work) = (&self.gpu.stream, &mut self.work);
        let (full, greedy) = (plan.full_rows * vocab, plan.greedy_rows);
        // The argmax's rows: the greedy ones are `first..first + greedy` of them.
        let (reduced, first) = (
            plan.argmax_rows.len(),
            plan.full_rows - plan.argmax_rows.start,
        );
        if full > 0 {
            work.host_logits.download(s, &work.logits, full)?;
        }
        if greedy > 0 {
            work.host_greedy.download(s, &work.greedy, 2 * reduced)?;
        }
        self.clock.end(s)?;
        // The step's one synchronisation: the host reads what came back after it.
        s.synchronize()?;
        self.timing = Some(self.clock.read()?);
        let data = work.host_logits.read(full).to_vec();
        let words = work.host_greedy.read(2 * reduced);
        let greedy = words[first..first + greedy]
            .iter()
            .zip(&words[reduced + first..reduced + first + greedy])
            .map(|(&token, &logprob)| GreedyToken {
                token,
                logprob: f32::from_bits(logprob),
            })
            .collect();
        Ok(Logits {
            vocab_size: vocab,
            data,
            greedy,
        })
    }
}

/// One forward step on the device, enqueued on the backend's stream. The residual stream lives
/// in `residual`; each sub-layer writes its output to `delta`, and the next norm adds `delta`
/// to `residual` on the way (the `rms_norm` kernel fuses the add), so the first norm of a step
/// has nothing to add.
struct CudaStep<'a> {
    backend: &'a CudaBackend,
    plan: &'a StepPlan,
    /// How attention splits its keys.
    split: Split,
}

impl CudaStep<'_> {
    fn stream(&self) -> &cudarc::driver::CudaStream {
        &self.backend.gpu.stream
    }

    /// A part of the uploaded plan, as the kernels read it.
    fn meta(&self, r: std::ops::Range<usize>) -> DevPtr<u32> {
        addr(&self.backend.work.meta, self.stream(), r.start)
    }

    /// A part of the plan the kernels read as `int` (tables, slots, sequence numbers).
    fn meta_int(&self, r: std::ops::Range<usize>) -> DevPtr<i32> {
        self.meta(r).cast::<i32>()
    }

    fn buf<T>(&self, buf: &cudarc::driver::CudaSlice<T>) -> DevPtr<T> {
        addr(buf, self.stream(), 0)
    }

    /// One grid block per new token.
    fn per_token(&self) -> Grid {
        Grid::Blocks(self.plan.tokens as u32, 1)
    }

    /// `normed = rms_norm(x + residual)`, and `residual += x` first when a residual is given.
    fn norm(
        &self,
        x: DevPtr<Bf16>,
        residual: DevPtr<Bf16>,
        weight: &Bf16Buf,
    ) -> Result<(), CudaError> {
        let b = self.backend;
        b.gpu.kernels.run(
            self.stream(),
            self.per_token(),
            RmsNorm {
                x,
                residual,
                w: self.buf(weight),
                out: self.buf(&b.work.normed),
                hidden: b.work.shape.hidden as i32,
                eps: b.config.rms_norm_eps,
            },
        )
    }

    /// `y = x W^T` for the step's tokens.
    fn linear(
        &self,
        x: DevPtr<Bf16>,
        w: &DeviceMatrix,
        out: usize,
        inp: usize,
        y: DevPtr<Bf16>,
    ) -> Result<(), CudaError> {
        self.product(
            x,
            self.plan.tokens,
            w.at(self.stream()),
            out,
            inp,
            Output::Bf16(y),
        )
    }

    /// `y = x W^T` for `tokens` rows of `x`: cuBLAS for bf16 weights, `super::quantized` for
    /// quantized ones.
    fn product(
        &self,
        x: DevPtr<Bf16>,
        tokens: usize,
        w: MatrixAt,
        out: usize,
        inp: usize,
        y: Output,
    ) -> Result<(), CudaError> {
        let (b, s) = (self.backend, &self.backend.gpu.stream);
        match w {
            MatrixAt::Bf16(addr) => b.gpu.gemm.linear(x, tokens, Matrix { addr, out, inp }, y),
            MatrixAt::Quantized(planes) => {
                debug_assert_eq!((planes.rows, planes.inp), (out, inp));
                quantized::linear(
                    &b.gpu.kernels,
                    &b.gpu.gemm,
                    s,
                    planes,
                    x,
                    tokens,
                    y,
                    self.buf(&b.decode_scratch),
                    b.decode_scratch.len(),
                )
            }
        }
    }
}

impl llama::LlamaStep for CudaStep<'_> {
    type Error = CudaError;

    fn embed(&mut self) -> Result<(), CudaError> {
        let b = self.backend;
        b.gpu.kernels.run(
            self.stream(),
            self.per_token(),
            EmbeddingGather {
                table: self.buf(&b.weights.embed),
                ids: self.meta(self.plan.ids()),
                out: self.buf(&b.work.residual),
                hidden: b.work.shape.hidden as i32,
            },
        )
    }

    fn attention(&mut self, l: usize) -> Result<(), CudaError> {
        let (b, plan, s) = (self.backend, self.plan, self.stream());
        let (k, work, shape) = (&b.gpu.kernels, &b.work, &b.work.shape);
        let h = shape.hidden;
        let (q_width, kv_width, qkv_width) = (shape.q_width(), shape.kv_width(), shape.qkv_width());
        let layer = &b.weights.layers[l];
        let (residual, delta) = (self.buf(&work.residual), self.buf(&work.delta));
        if l == 0 {
            self.norm(residual, DevPtr::null(), &layer.attn_norm)?;
        } else {
            self.norm(delta, residual, &layer.attn_norm)?;
        }
        let qkv = |offset: usize| addr(&work.qkv, s, offset);
        self.linear(self.buf(&work.normed), &layer.qkv, qkv_width, h, qkv(0))?;
        let cache = &b.cache[l];
        k.run(
            s,
            Grid::Blocks(
                plan.tokens as u32,
                super::rope::ctas_per_token(shape) as u32,
            ),
            RopeKvWrite {
                q: qkv(0),
                k: qkv(q_width),
                v: qkv(q_width + kv_width),
                k_cache: self.buf(&cache.k),
                v_cache: self.buf(&cache.v),
                positions: self.meta(plan.positions()),
                slots: self.meta_int(plan.slots()),
                cos_table: self.buf(&b.rope_cos),
                sin_table: self.buf(&b.rope_sin),
                n_heads: Heads::of(shape),
                n_kv_heads: KvHeads::of(shape),
                head_dim: HeadDim::of(shape),
                stride: qkv_width as i32,
            },
        )?;
        let attention = Attention {
            out: self.buf(&work.attn),
            q: qkv(0),
            q_stride: qkv_width,
            k_cache: self.buf(&cache.k),
            v_cache: self.buf(&cache.v),
            block_tables: self.meta_int(plan.block_tables()),
            max_blocks_per_seq: plan.max_blocks,
            token_seq: self.meta_int(plan.token_seq()),
            token_pos: self.meta_int(plan.positions()),
            tokens: plan.tokens,
            block_size: b.block_size,
        };
        super::attention::launch(k, s, shape, &attention, self.split, &b.split_scratch)?;
        self.linear(self.buf(&work.attn), &layer.o, h, q_width, delta)
    }

    fn mlp(&mut self, l: usize) -> Result<(), CudaError> {
        let b = self.backend;
        let (work, w) = (&b.work, b.work.shape);
        let h = w.hidden;
        let layer = &b.weights.layers[l];
        let (residual, delta) = (self.buf(&work.residual), self.buf(&work.delta));
        self.norm(delta, residual, &layer.ffn_norm)?;
        let (gate_up, act) = (self.buf(&work.gate_up), self.buf(&work.act));
        self.linear(
            self.buf(&work.normed),
            &layer.gate_up,
            2 * w.inter,
            h,
            gate_up,
        )?;
        let tokens = self.plan.tokens;
        if let (DeviceMatrix::Quantized(down), true) = (&layer.down, tokens <= GEMV_MAX_TOKENS) {
            // The activation is taken as the down projection loads its input.
            return quantized::gemv(
                &b.gpu.kernels,
                self.stream(),
                down.planes(self.stream()),
                GemvInput::Gated(gate_up),
                tokens,
                Output::Bf16(delta),
            );
        }
        b.gpu.kernels.run(
            self.stream(),
            Grid::Elements(self.plan.tokens * w.inter),
            SiluAndMul {
                gate_up,
                out: act,
                inter: w.inter as i32,
                tokens: self.plan.tokens as u64,
            },
        )?;
        self.linear(act, &layer.down, h, w.inter, delta)
    }

    fn lm_head(&mut self) -> Result<(), CudaError> {
        let (b, plan, s) = (self.backend, self.plan, self.stream());
        let (k, work) = (&b.gpu.kernels, &b.work);
        let (h, vocab) = (work.shape.hidden, work.shape.vocab);
        let (residual, delta) = (self.buf(&work.residual), self.buf(&work.delta));
        self.norm(delta, residual, &b.weights.norm)?;
        let rows = plan.lm_rows;
        if rows > 0 {
            // The rows that get logits, full ones first (embedding_gather gathers any rows),
            // unless they are already every row in order.
            let input = if plan.logits_in_place {
                self.buf(&work.normed)
            } else {
                k.run(
                    s,
                    Grid::Blocks(rows as u32, 1),
                    EmbeddingGather {
                        table: self.buf(&work.normed),
                        ids: self.meta(plan.logit_row_ids()),
                        out: self.buf(&work.selected),
                        hidden: h as i32,
                    },
                )?;
                self.buf(&work.selected)
            };
            self.product(
                input,
                rows,
                b.weights.lm_head(s),
                vocab,
                h,
                Output::F32(self.buf(&work.logits)),
            )?;
        }
        let argmax = &plan.argmax_rows;
        if !argmax.is_empty() {
            k.run(
                s,
                Grid::Blocks(argmax.len() as u32, 1),
                ArgmaxRows {
                    logits: addr(&work.logits, s, argmax.start * vocab),
                    vocab: vocab as i32,
                    ids: self.buf(&work.greedy),
                    logprobs: addr(&work.greedy, s, argmax.len()).cast::<f32>(),
                },
            )?;
        }
        Ok(())
    }
}

impl CudaBackend {
    /// A pure-decode step's padded plan and split, when a graph serves it (never while
    /// launches are timed: a graph's launches are not timed one by one).
    fn graph_plan(&self, batch: &[SeqInput<'_>]) -> Option<(StepPlan, Split)> {
        let graphs = self.graphs.as_ref()?;
        if self.gpu.timer.is_on() {
            return None;
        }
        let context = batch.iter().map(|s| s.start_pos + 1).max()?;
        let (rows, split) =
            graphs.shape_for(&self.split_scratch, &self.work.shape, batch.len(), context)?;
        let plan = StepPlan::padded_decode(batch, self.block_size, rows, graphs.max_blocks)?;
        Some((plan, split))
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
        if let Some((plan, split)) = self.graph_plan(batch) {
            return Ok(self.run(&plan, Some(split))?);
        }
        let plan = StepPlan::new(batch, self.block_size);
        if plan.tokens == 0 {
            return Ok(Logits::from_rows(batch, self.config.vocab_size, Vec::new()));
        }
        Ok(self.run(&plan, None)?)
    }

    fn take_step_timing(&mut self) -> Option<StepTiming> {
        self.timing.take()
    }

    fn idle(&mut self) {
        self.clock.idle();
    }
}
