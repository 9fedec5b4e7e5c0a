//! Every kernel against the CPU backend's code on random inputs.
//!
//! Every kernel against the CPU backend's code (or a plain host loop) on random inputs, at the
//! default model's shapes and a Llama-8B-like attention shape. Inputs are rounded to bf16 on the
//! host first, so the comparison measures the kernel, not the input rounding.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::kernel_device::Dev;
use super::report::{max_error, round_bf16, Report};
use backend::kernel_check::attention::{self, Geometry, Row};
use backend::kernel_check::ops;
use backend::kernel_check::StepPlan;
use backend::kernel_check::{
    gemv, gemv_lanes, planes_of, quantized_linear, GemvInput, Planes, GEMV_MAX_TOKENS, QUANTIZED,
};
use backend::kernel_check::{launch_attention, Attention, Split, SplitScratch};
use backend::kernel_check::{
    ArgmaxRows, ConvertF16, ConvertF32, DequantQ4_0, DequantQ4_1, DequantQ8_0, DevPtr,
    EmbeddingGather, Grid, HeadDim, Heads, KvHeads, RmsNorm, RopeKvWrite, SiluAndMul,
};
use backend::kernel_check::{Matrix, Output};
use backend::{kernel_check::rope, CudaError};
use backend::{GreedyToken, LayerShape, LogitsFor, SeqInput};
use model::{dequantize, GgmlType};
use model::{LlamaConfig, RopeScaling};

/// bf16 keeps 8 bits of mantissa: one rounding of the output is 2^-9 relative; a few chained
/// ones (norm, then scale) stay under 1%.
const BF16_TOL: f32 = 1e-2;

/// A kernel check: (largest error, tolerance).
type KernelCheck = fn(&Dev, &mut StdRng) -> Result<(f32, f32), CudaError>;

fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Runs every kernel check into `report`.
pub(crate) fn run(dev: &Dev, report: &mut Report) {
    let mut rng = StdRng::seed_from_u64(7);
    let checks: [(&str, KernelCheck); 12] = [
        ("kernel embedding_gather", embedding),
        ("kernel rms_norm", rms_norm),
        ("kernel rms_norm + residual", rms_norm_residual),
        ("kernel rope_kv_write (llama3 scaling, strided)", rope_check),
        ("kernel silu_and_mul", silu_and_mul),
        ("kernel rope_kv_write + paged_attention", attention_check),
        ("kernel argmax_rows", argmax),
        ("kernel dequant q8_0/q4_0/q4_1", dequant),
        ("kernel convert_f16/f32", convert),
        (
            "kernel gemv over Q4_0/Q4_1/Q8_0/Q4_K/Q6_K (plain, SwiGLU-gated), tiles + cuBLAS",
            quantized_products,
        ),
        ("cuBLAS linear (bf16 and f32 out)", gemm),
        (
            "CUDA graph: captured rms_norm + cuBLAS replay = direct",
            graph,
        ),
    ];
    for (name, check) in checks {
        match check(dev, &mut rng) {
            Ok((error, tolerance)) => report.check(
                name,
                error <= tolerance,
                format!("max error {error:.2e} (tolerance {tolerance:.0e})"),
            ),
            Err(e) => report.error(name, e),
        }
    }
}

fn embedding(dev: &Dev, rng: &mut StdRng) -> Result<(f32, f32), CudaError> {
    let (vocab, h) = (100, 576);
    let table = round_bf16(&random(rng, vocab * h, 1.0));
    let ids = [5u32, 0, 99, 5, 42];
    let d_table = dev.bf16(&table)?;
    let d_ids = dev.upload(&ids)?;
    let out = dev.zeros::<u16>(ids.len() * h)?;
    let (k, s) = dev.kernels();
    k.run(
        s,
        Grid::Blocks(ids.len() as u32, 1),
        EmbeddingGather {
            table: dev.at(&d_table, 0),
            ids: dev.at(&d_ids, 0),
            out: dev.at(&out, 0),
            hidden: h as i32,
        },
    )?;
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| table[i as usize * h..(i as usize + 1) * h].to_vec())
        .collect();
    Ok((max_error(&dev.read_bf16(&out)?, &want), 0.0))
}

/// At the default model's width (one 16-byte word a thread) and at 5,000 (three words for some
/// threads, a part-filled last round).
const NORM_WIDTHS: [usize; 2] = [576, 5000];

fn rms_norm(dev: &Dev, rng: &mut StdRng) -> Result<(f32, f32), CudaError> {
    let mut worst = 0f32;
    for h in NORM_WIDTHS {
        worst = worst.max(rms_norm_at(dev, rng, h)?);
    }
    Ok((worst, BF16_TOL))
}

fn rms_norm_at(dev: &Dev, rng: &mut StdRng, h: usize) -> Result<f32, CudaError> {
    let (t, eps) = (5, 1e-5f32);
    let x = round_bf16(&random(rng, t * h, 3.0));
    let w = round_bf16(&random(rng, h, 1.5));
    let (d_x, d_w) = (dev.bf16(&x)?, dev.bf16(&w)?);
    let out = dev.zeros::<u16>(t * h)?;
    let (k, s) = dev.kernels();
    k.run(
        s,
        Grid::Blocks(t as u32, 1),
        RmsNorm {
            x: dev.at(&d_x, 0),
            residual: DevPtr::null(),
            w: dev.at(&d_w, 0),
            out: dev.at(&out, 0),
            hidden: h as i32,
            eps,
        },
    )?;
    let mut want = vec![0f32; t * h];
    ops::rms_norm_rows(&x, &w, eps, &mut want);
    Ok(max_error(&dev.read_bf16(&out)?, &want))
}

fn rms_norm_residual(dev: &Dev, rng: &mut StdRng) -> Result<(f32, f32), CudaError> {
    let mut worst = 0f32;
    for h in NORM_WIDTHS {
        worst = worst.max(rms_norm_residual_at(dev, rng, h)?);
    }
    Ok((worst, BF16_TOL))
}

fn rms_norm_residual_at(dev: &Dev, rng: &mut StdRng, h: usize) -> Result<f32, CudaError> {
    let (t, eps) = (3, 1e-5f32);
    let x = round_bf16(&random(rng, t * h, 2.0));
    let res = round_bf16(&random(rng, t * h, 2.0));
    let w = round_bf16(&random(rng, h, 1.5));
    let (d_x, d_res, d_w) = (dev.bf16(&x)?, dev.bf16(&res)?, dev.bf16(&w)?);
    let out = dev.zeros::<u16>(t * h)?;
    let (k, s) = dev.kernels();
    k.run(
        s,
        Grid::Blocks(t as u32, 1),
        RmsNorm {
            x: dev.at(&d_x, 0),
            residual: dev.at(&d_res, 0),
            w: dev.at(&d_w, 0),
            out: dev.at(&out, 0),
            hidden: h as i32,
            eps,
        },
    )?;
    // The residual becomes x + residual (rounded to bf16), and that is what is normalised.
    let sum: Vec<f32> = round_bf16(&x.iter().zip(&res).map(|(a, b)| a + b).collect::<Vec<_>>());
    let mut want = vec![0f32; t * h];
    ops::rms_norm_rows(&sum, &w, eps, &mut want);
    let e_res = max_error(&dev.read_bf16(&d_res)?, &sum);
    let e_out = max_error(&dev.read_bf16(&out)?, &want);
    Ok(e_res.max(e_out))
}

/// A config with the default model's attention shape and Llama 3.1's rope scaling.
fn rope_config() -> LlamaConfig {
    LlamaConfig {
        rope_theta: 500000.0,
        rope_scaling: Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        }),
        head_dim: 64,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        max_position_embeddings: 2048,
        ..model::testing::tiny_config()
    }
}

/// Four tokens at positions 0, 7, 300 and 2047 (Llama-3 scaling, rows strided as in the fused
/// QKV output): q rotated in place, k rotated into the cache at each token's slot and v copied
/// beside it; the second token's slot is negative, so its q is rotated and the cache left
/// alone (its slot 2 stays zero).
fn rope_check(dev: &Dev, rng: &mut StdRng) -> Result<(f32, f32), CudaError> {
    // Head size 64 takes the kernel's 8-pairs-a-thread path; 72 (half 36) its pair-a-thread one.
    let mut worst = 0f32;
    for head_dim in [64, 72] {
        let c = LlamaConfig {
            head_dim,
            ..rope_config()
        };
        worst = worst.max(rope_check_with(dev, rng, &c)?);
    }
    Ok((worst, BF16_TOL))
}

fn rope_check_with(dev: &Dev, rng: &mut StdRng, c: &LlamaConfig) -> Result<f32, CudaError> {
    let shape = LayerShape::of(c);
    let (nh, nkv, hd) = (shape.n_heads, shape.n_kv_heads, shape.head_dim);
    let (stride, kv_width) = (shape.qkv_width(), shape.kv_width());
    let positions = [0u32, 7, 300, 2047];
    let slots = [5i32, -1, 0, 3];
    let t = positions.len();
    let qkv = round_bf16(&random(rng, t * stride, 2.0));
    let inv_freq = c.rope_inv_freq();
    let (cos, sin) = rope::tables(&inv_freq, c.max_position_embeddings);
    let d_qkv = dev.bf16(&qkv)?;
    let (d_pos, d_slots, d_cos, d_sin) = (
        dev.upload(&positions)?,
        dev.upload(&slots)?,
        dev.upload(&cos)?,
        dev.upload(&sin)?,
    );
    let cache_slots = 6;
    let (d_kc, d_vc) = (
        dev.zeros::<u16>(cache_slots * kv_width)?,
        dev.zeros::<u16>(cache_slots * kv_width)?,
    );
    let (k, s) = dev.kernels();
    // Three CTAs a token at least (as a large model's decode splits it); attention_check runs one.
    k.run(
        s,
        Grid::Blocks(t as u32, rope::ctas_per_token(&shape).max(3) as u32),
        RopeKvWrite {
            q: dev.at(&d_qkv, 0),
            k: dev.at(&d_qkv, shape.q_width()),
            v: dev.at(&d_qkv, shape.q_width() + kv_width),
            k_cache: dev.at(&d_kc, 0),
            v_cache: dev.at(&d_vc, 0),
            positions: dev.at(&d_pos, 0),
            slots: dev.at(&d_slots, 0),
            cos_table: dev.at(&d_cos, 0),
            sin_table: dev.at(&d_sin, 0),
            n_heads: Heads::of(&shape),
            n_kv_heads: KvHeads::of(&shape),
            head_dim: HeadDim::of(&shape),
            stride: stride as i32,
        },
    )?;
    let mut want_q = qkv.clone();
    let (mut want_k, mut want_v) = (
        vec![0f32; cache_slots * kv_width],
        vec![0f32; cache_slots * kv_width],
    );
    for ((row, &pos), &slot) in want_q.chunks_exact_mut(stride).zip(&positions).zip(&slots) {
        // The kernel's tables hold the angles `pos * inv_freq[i]`.
        let angles = inv_freq.iter().map(|f| pos as f32 * f);
        let cos_sin: Vec<f32> = angles
            .clone()
            .map(f32::cos)
            .chain(angles.map(f32::sin))
            .collect();
        let (q, kv) = row.split_at_mut(nh * hd);
        ops::rope(q, nh, hd, &cos_sin);
        if slot >= 0 {
            let at = slot as usize * kv_width;
            let mut key = kv[..kv_width].to_vec();
            ops::rope(&mut key, nkv, hd, &cos_sin);
            want_k[at..at + kv_width].copy_from_slice(&key);
            want_v[at..at + kv_width].copy_from_slice(&kv[kv_width..]);
        }
    }
    // Only q's part of the QKV rows is compared: k and v stay as they were there.
    let got_q: Vec<f32> = dev.read_bf16(&d_qkv)?;
    let q_of = |rows: &[f32]| -> Vec<f32> {
        rows.chunks_exact(stride)
            .flat_map(|r| r[..nh * hd].to_vec())
            .collect()
    };
    let error = max_error(&q_of(&got_q), &q_of(&want_q))
        .max(max_error(&dev.read_bf16(&d_kc)?, &want_k))
        .max(max_error(&dev.read_bf16(&d_vc)?, &want_v));
    Ok(error)
}

fn silu_and_mul(dev: &Dev, rng: &mut StdRng) -> Result<(f32, f32), CudaError> {
    let (t, inter) = (4, 1536);
    let gate_up = round_bf16(&random(rng, t * 2 * inter, 6.0));
    let d_in = dev.bf16(&gate_up)?;
    let out = dev.zeros::<u16>(t * inter)?;
    let (k, s) = dev.kernels();
    k.run(
        s,
        Grid::Elements(t * inter),
        SiluAndMul {
            gate_up: dev.at(&d_in, 0),
            out: dev.at(&out, 0),
            inter: inter as i32,
            tokens: t as u64,
        },
    )?;
    let want: Vec<f32> = gate_up
        .chunks_exact(2 * inter)
        .flat_map(|r| {
            let (g, u) = r.split_at(inter);
            g.iter()
                .zip(u)
                .map(|(g, u)| ops::silu(*g) * u)
                .collect::<Vec<_>>()
        })
        .collect();
    Ok((max_error(&dev.read_bf16(&out)?, &want), BF16_TOL))
}

/// Two steps over scattered blocks, at four attention shapes and three block sizes: the
/// default model's 9/3 heads of 64 in blocks of 16, a Llama-8B-like 32/8 of 128 in blocks of
/// 32, 20/2 of 80 (a GQA group of 10, more than one CTA serves, and a head size whose 16-byte
/// lanes are not a power of two) and 8/2 of 256 in blocks of 64; and the first in blocks of 8
/// with 600 cached positions, more than the kernel stages of a block table at once (64 blocks,
/// 512 positions). A first
/// step caches history for two sequences, the second mixes a whole prefill, a decode token
/// after the cached positions and a prefill chunk starting at 20. The second step's attention
/// output is compared, computed whole and split across CTAs.
fn attention_check(dev: &Dev, rng: &mut StdRng) -> Result<(f32, f32), CudaError> {
    let mut worst = 0f32;
    // (heads, KV heads, head size, block size, the decoding sequence's cached positions).
    let shapes: [(usize, usize, usize, usize, usize); 5] = [
        (9, 3, 64, 16, 70),
        (32, 8, 128, 32, 70),
        (20, 2, 80, 16, 70),
        (8, 2, 256, 64, 70),
        (9, 3, 64, 8, 600),
    ];
    for (nh, nkv, hd, block_size, cached) in shapes {
        let shape = LayerShape {
            hidden: nh * hd,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            inter: 0,
            vocab: 0,
        };
        let g = Geometry {
            block_size,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
        };
        let per_seq = (cached + 1).div_ceil(block_size).max(8);
        let num_blocks = 3 * per_seq;
        let mut blocks: Vec<u32> = (0..num_blocks as u32).collect();
        for i in (1..blocks.len()).rev() {
            blocks.swap(i, rng.random_range(0..=i));
        }
        let tables: Vec<Vec<u32>> = blocks.chunks(per_seq).map(|c| c.to_vec()).collect();
        let width = (nh + 2 * nkv) * hd;
        let kv_len = num_blocks * g.block_size * nkv * hd;
        let (mut k_host, mut v_host) = (vec![0f32; kv_len], vec![0f32; kv_len]);
        let (d_k, d_v) = (dev.zeros::<u16>(kv_len)?, dev.zeros::<u16>(kv_len)?);
        let history: [(usize, usize, usize); 2] = [(1, 0, cached), (2, 0, 20)];
        let step: [(usize, usize, usize); 3] = [(0, 0, 40), (1, cached, 1), (2, 20, 17)];
        let mut out = Vec::new();
        // Angle 0 at every position the steps reach.
        let positions = cached + 1;
        let d_cos = dev.upload(&vec![1f32; positions * hd / 2])?;
        let d_sin = dev.upload(&vec![0f32; positions * hd / 2])?;
        // Room for the largest step split eight ways: the history's tokens, at most a CTA per
        // query head a token.
        let ctas = (cached + 40) * nh * 8;
        let scratch = SplitScratch::with_ctas(&dev.gpu.stream, &shape, dev.gpu.info.sms, ctas)?;
        for (i, spans) in [&history[..], &step[..]].into_iter().enumerate() {
            let tokens: Vec<Vec<u32>> = spans.iter().map(|s| vec![0; s.2]).collect();
            let batch: Vec<SeqInput> = spans
                .iter()
                .zip(&tokens)
                .map(|(&(seq, start, _), t)| SeqInput {
                    tokens: t,
                    start_pos: start,
                    block_table: &tables[seq],
                    logits_for: LogitsFor::None,
                })
                .collect();
            let plan = StepPlan::new(&batch, g.block_size);
            let rows: Vec<Row> = plan.packed[plan.token_seq()]
                .iter()
                .zip(&plan.packed[plan.positions()])
                .map(|(&seq, &pos)| Row {
                    seq: seq as usize,
                    pos: pos as usize,
                })
                .collect();
            let t = plan.tokens;
            let qkv = round_bf16(&random(rng, t * width, 2.0));
            let seq_tables: Vec<&[u32]> = batch.iter().map(|s| s.block_table).collect();
            attention::write_kv(&qkv, &rows, &seq_tables, g, &mut k_host, &mut v_host);
            let mut want = vec![0f32; t * nh * hd];
            attention::paged_attention(&qkv, &rows, &seq_tables, g, &k_host, &v_host, &mut want);
            let d_qkv = dev.bf16(&qkv)?;
            let d_meta = dev.upload(&plan.packed)?;
            let d_out = dev.zeros::<u16>(t * nh * hd)?;
            let (k, s) = dev.kernels();
            let meta = |at: usize| dev.at(&d_meta, at).cast::<i32>();
            // The cache written by the fused kernel, with a rotation by zero (cos 1, sin 0):
            // the CPU reference attends over unrotated keys.
            k.run(
                s,
                Grid::Blocks(t as u32, 1),
                RopeKvWrite {
                    q: dev.at(&d_qkv, 0),
                    k: dev.at(&d_qkv, shape.q_width()),
                    v: dev.at(&d_qkv, shape.q_width() + shape.kv_width()),
                    k_cache: dev.at(&d_k, 0),
                    v_cache: dev.at(&d_v, 0),
                    positions: meta(plan.positions().start).cast::<u32>(),
                    slots: meta(plan.slots().start),
                    cos_table: dev.at(&d_cos, 0),
                    sin_table: dev.at(&d_sin, 0),
                    n_heads: Heads::of(&shape),
                    n_kv_heads: KvHeads::of(&shape),
                    head_dim: HeadDim::of(&shape),
                    stride: width as i32,
                },
            )?;
            let attention = Attention {
                out: dev.at(&d_out, 0),
                q: dev.at(&d_qkv, 0),
                q_stride: width,
                k_cache: dev.at(&d_k, 0),
                v_cache: dev.at(&d_v, 0),
                block_tables: meta(plan.block_tables().start),
                max_blocks_per_seq: plan.max_blocks,
                token_seq: meta(plan.token_seq().start),
                token_pos: meta(plan.positions().start),
                tokens: t,
                block_size: g.block_size,
            };
            // Whole, split three ways (at 70 cached positions, partitions of 24 keys at the
            // longest context, 71: one split of the 20-key prefix has no key, and the merge
            // skips it), and eight ways as a CUDA graph splits (each token cuts its keys into
            // partitions of at least 8: a 9-key context fills two splits, six are empty).
            let graph_split = Split {
                splits: 8,
                partition: 8,
            };
            let splits = [
                Split::fixed(plan.max_context, 1),
                Split::fixed(plan.max_context, 3),
                graph_split,
            ];
            // The history's step only fills the cache; the step after is the one compared.
            let splits = if i == 1 { &splits[..] } else { &splits[..1] };
            for &split in splits {
                // A fresh output each time: a launch that failed to write it must not pass on
                // the launch before's.
                let d_out = dev.zeros::<u16>(t * nh * hd)?;
                let attention = Attention {
                    out: dev.at(&d_out, 0),
                    ..attention
                };
                launch_attention(k, s, &shape, &attention, split, &scratch)?;
                if i == 1 {
                    out.push((dev.read_bf16(&d_out)?, want.clone()));
                }
            }
        }
        for (got, want) in out {
            worst = worst.max(max_error(&got, &want));
        }
    }
    Ok((worst, BF16_TOL))
}

/// Three rows at two vocabulary sizes: 49152 (rows 16-byte aligned) and 32001 (rows 1 and 2
/// start inside a 16-byte word, so the kernel's unaligned ends are read too). Row 0 has masked
/// (-inf) logits; row 2 a tie, the lower index winning as on the host, one of the pair in the
/// row's unaligned head where there is one.
fn argmax(dev: &Dev, rng: &mut StdRng) -> Result<(f32, f32), CudaError> {
    let mut error = 0f32;
    for vocab in [49152, 32001] {
        let mut logits = random(rng, 3 * vocab, 12.0);
        for masked in logits[..vocab].iter_mut().step_by(3) {
            *masked = f32::NEG_INFINITY;
        }
        logits[2 * vocab + 1] = 50.0;
        logits[2 * vocab + 30000] = 50.0;
        let d_logits = dev.upload(&logits)?;
        let (ids, lps) = (dev.zeros::<u32>(3)?, dev.zeros::<f32>(3)?);
        let (k, s) = dev.kernels();
        k.run(
            s,
            Grid::Blocks(3, 1),
            ArgmaxRows {
                logits: dev.at(&d_logits, 0),
                vocab: vocab as i32,
                ids: dev.at(&ids, 0),
                logprobs: dev.at(&lps, 0),
            },
        )?;
        let (ids, lps) = (dev.read(&ids)?, dev.read(&lps)?);
        for (r, row) in logits.chunks_exact(vocab).enumerate() {
            let want = GreedyToken::of_row(row);
            let difference = (lps[r] - want.logprob).abs();
            // f32::max passes a NaN by: a NaN log-probability fails outright.
            if ids[r] != want.token || difference.is_nan() {
                return Ok((f32::INFINITY, 1e-3));
            }
            error = error.max(difference);
        }
    }
    Ok((error, 1e-3))
}

/// Random GGUF blocks of each quantized type, dequantized by the kernel and by the loader.
fn dequant(dev: &Dev, rng: &mut StdRng) -> Result<(f32, f32), CudaError> {
    let n_blocks = 64;
    let mut worst = 0f32;
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
        let data = random_blocks(rng, ty, n_blocks);
        let mut want = vec![0f32; n_blocks * 32];
        dequantize(ty, &data, &mut want);
        let d_data = dev.upload(&data)?;
        let out = dev.zeros::<u16>(n_blocks * 32)?;
        let (k, s) = dev.kernels();
        let (blocks, bf16, n) = (dev.at(&d_data, 0), dev.at(&out, 0), n_blocks as u64);
        let grid = Grid::Elements(n_blocks);
        match ty {
            GgmlType::Q8_0 => k.run(
                s,
                grid,
                DequantQ8_0 {
                    blocks,
                    out: bf16,
                    n_blocks: n,
                },
            ),
            GgmlType::Q4_0 => k.run(
                s,
                grid,
                DequantQ4_0 {
                    blocks,
                    out: bf16,
                    n_blocks: n,
                },
            ),
            _ => k.run(
                s,
                grid,
                DequantQ4_1 {
                    blocks,
                    out: bf16,
                    n_blocks: n,
                },
            ),
        }?;
        worst = worst.max(max_error(&dev.read_bf16(&out)?, &round_bf16(&want)));
    }
    Ok((worst, 1e-6))
}

/// Random GGUF blocks of `ty`, `blocks` of them, with weights of a model's size (within about
/// ±0.13: scales within ±0.001 for Q8_0's ±127, ±0.016 for 4 bits, Q4_1's offsets ±0.05).
fn random_blocks(rng: &mut StdRng, ty: GgmlType, blocks: usize) -> Vec<u8> {
    if ty == GgmlType::Q6_K {
        // 256 values a block: 192 bytes of 6-bit quants and 16 int8 scales, all random, then d
        // within ±0.00002 (times scales up to 128 and quants up to 32).
        let mut data = Vec::with_capacity(blocks * 210);
        for _ in 0..blocks {
            data.extend((0..208).map(|_| rng.random::<u8>()));
            let d = half::f16::from_f32(rng.random_range(-0.00002..0.00002));
            data.extend_from_slice(&d.to_le_bytes());
        }
        return data;
    }
    if ty == GgmlType::Q4_K {
        // 256 values a block: d and dmin within ±0.0005 (times 6-bit scales and mins up to
        // 63), then 12 bytes of packed scales and mins and 128 of quants, all random.
        let mut data = Vec::with_capacity(blocks * 144);
        for _ in 0..blocks {
            for _ in 0..2 {
                let scale = half::f16::from_f32(rng.random_range(-0.0005..0.0005));
                data.extend_from_slice(&scale.to_le_bytes());
            }
            data.extend((0..140).map(|_| rng.random::<u8>()));
        }
        return data;
    }
    let (halves, quant_bytes, d) = match ty {
        GgmlType::Q4_1 => (2, 16, 0.008),
        GgmlType::Q8_0 => (1, 32, 0.001),
        _ => (1, 16, 0.016),
    };
    let mut data = Vec::with_capacity(blocks * (2 * halves + quant_bytes));
    for _ in 0..blocks {
        for half in 0..halves {
            let range = if half == 0 { d } else { 0.05 };
            let scale = half::f16::from_f32(rng.random_range(-range..range));
            data.extend_from_slice(&scale.to_le_bytes());
        }
        data.extend((0..quant_bytes).map(|_| rng.random::<u8>()));
    }
    data
}

/// The products over quantized planes (each encoding the device keeps; Q4_K as its Q4_1 planes,
/// Q6_K as its byte planes, at the widths that are whole 256-value blocks) against `x · Wᵀ` in
/// f64 over the loader's dequantized W (rounded to bf16 where the tiles round it): the
/// matrix-vector kernels at 1, 3 and 8 tokens with bf16 and f32 output, at widths that give 16,
/// 32 and 128 threads a row group, some lanes an extra block (the default model's 576 and 1536,
/// an 8B model's 4096 and 14,336) and row counts that leave a CTA part-filled; a 12-token step,
/// which decodes row tiles (a small scratch, so four tiles, the last a part one) for cuBLAS; and
/// the product whose input is SwiGLU of a gate/up output, taken as it loads.
fn quantized_products(dev: &Dev, rng: &mut StdRng) -> Result<(f32, f32), CudaError> {
    let mut worst = 0f32;
    for ty in QUANTIZED.iter().copied() {
        let per_block = ty.block().0 as usize;
        for (rows, inp) in [(200usize, 576usize), (70, 1536), (33, 4096), (9, 14336)] {
            if !inp.is_multiple_of(per_block) {
                continue;
            }
            let data = random_blocks(rng, ty, rows * inp / per_block);
            let (kind, qs, scales) = planes_of(ty, &data).expect("a quantized encoding");
            let mut w = vec![0f32; rows * inp];
            if ty == GgmlType::Q4_K {
                // The device holds Q4_K as Q4_1 blocks with f16-rounded sub-block scales (the
                // conversion has its own test against the loader): the reference is the
                // loader's Q4_1 reading of those blocks.
                let q4_1: Vec<u8> = scales
                    .chunks_exact(2)
                    .zip(qs.chunks_exact(16))
                    .flat_map(|(dm, q)| {
                        let mut block = Vec::with_capacity(20);
                        block.extend(dm[0].to_le_bytes());
                        block.extend(dm[1].to_le_bytes());
                        block.extend_from_slice(q);
                        block
                    })
                    .collect();
                dequantize(GgmlType::Q4_1, &q4_1, &mut w);
            } else if ty == GgmlType::Q6_K {
                // Likewise Q6_K's planes: a signed byte a value, an f16 scale a 16 values.
                for (i, v) in w.iter_mut().enumerate() {
                    let d = half::f16::from_bits(scales[i / 16]).to_f32();
                    *v = d * f32::from(qs[i] as i8);
                }
            } else {
                dequantize(ty, &data, &mut w);
            }
            let (d_qs, d_scales) = (dev.upload(&qs)?, dev.upload(&scales)?);
            let planes = Planes {
                kind,
                qs: dev.at(&d_qs, 0),
                scales: dev.at(&d_scales, 0),
                rows,
                inp,
            };
            // The tiles hold W rounded to bf16, as the dequantization kernels write it.
            let w_bf16 = round_bf16(&w);
            for tokens in [1, 3, GEMV_MAX_TOKENS, 12] {
                let x = round_bf16(&random(rng, tokens * inp, 1.0));
                let w = if tokens <= GEMV_MAX_TOKENS {
                    &w
                } else {
                    &w_bf16
                };
                let want: Vec<f32> = (0..tokens * rows)
                    .map(|i| {
                        let (t, r) = (i / rows, i % rows);
                        (0..inp)
                            .map(|j| f64::from(x[t * inp + j]) * f64::from(w[r * inp + j]))
                            .sum::<f64>() as f32
                    })
                    .collect();
                let d_x = dev.bf16(&x)?;
                let (y16, y32) = (
                    dev.zeros::<u16>(tokens * rows)?,
                    dev.zeros::<f32>(tokens * rows)?,
                );
                let (k, s) = dev.kernels();
                let outputs = [Output::Bf16(dev.at(&y16, 0)), Output::F32(dev.at(&y32, 0))];
                if tokens <= GEMV_MAX_TOKENS {
                    for y in outputs {
                        gemv(k, s, planes, GemvInput::Plain(dev.at(&d_x, 0)), tokens, y)?;
                    }
                } else {
                    let tile_rows = 64;
                    let scratch = dev.zeros::<u16>(tile_rows * inp)?;
                    for y in outputs {
                        quantized_linear(
                            k,
                            &dev.gpu.gemm,
                            s,
                            planes,
                            dev.at(&d_x, 0),
                            tokens,
                            y,
                            dev.at(&scratch, 0),
                            tile_rows * inp,
                        )?;
                    }
                }
                let e16 = max_error(&dev.read_bf16(&y16)?, &want);
                // f32 output: only the order of the sums differs; scale the bound to bf16's.
                let e32 = max_error(&dev.read(&y32)?, &want) * 10.0;
                let e = e16.max(e32);
                if e > BF16_TOL {
                    eprintln!(
                        "{ty:?} {rows}x{inp} ({} lanes), {tokens} tokens: error {e:.2e}",
                        gemv_lanes(inp)
                    );
                }
                worst = worst.max(e);
            }
            worst = worst.max(gated_product(dev, rng, planes, &w)?);
        }
    }
    Ok((worst, BF16_TOL))
}

/// The matrix-vector product with SwiGLU fused into its input (gate/up rows of twice the
/// matrix's width) against `silu(gate) * up`, rounded to bf16 as `silu_and_mul` writes it,
/// times W, at 1 and 5 tokens.
fn gated_product(dev: &Dev, rng: &mut StdRng, planes: Planes, w: &[f32]) -> Result<f32, CudaError> {
    let (rows, inp) = (planes.rows, planes.inp);
    let mut worst = 0f32;
    for tokens in [1, 5] {
        let gate_up = round_bf16(&random(rng, tokens * 2 * inp, 4.0));
        let act: Vec<f32> = round_bf16(
            &(0..tokens * inp)
                .map(|i| {
                    let (t, j) = (i / inp, i % inp);
                    let g = gate_up[t * 2 * inp + j];
                    g / (1.0 + (-g).exp()) * gate_up[t * 2 * inp + inp + j]
                })
                .collect::<Vec<_>>(),
        );
        let want: Vec<f32> = (0..tokens * rows)
            .map(|i| {
                let (t, r) = (i / rows, i % rows);
                (0..inp)
                    .map(|j| f64::from(act[t * inp + j]) * f64::from(w[r * inp + j]))
                    .sum::<f64>() as f32
            })
            .collect();
        let d_in = dev.bf16(&gate_up)?;
        let y = dev.zeros::<f32>(tokens * rows)?;
        let (k, s) = dev.kernels();
        let input = GemvInput::Gated(dev.at(&d_in, 0));
        gemv(k, s, planes, input, tokens, Output::F32(dev.at(&y, 0)))?;
        let e = max_error(&dev.read(&y)?, &want);
        if e > BF16_TOL {
            eprintln!(
                "{:?} {rows}x{inp} gated, {tokens} tokens: error {e:.2e}",
                planes.kind
            );
        }
        worst = worst.max(e);
    }
    Ok(worst)
}

fn convert(dev: &Dev, rng: &mut StdRng) -> Result<(f32, f32), CudaError> {
    let x = random(rng, 5000, 100.0);
    let halves: Vec<u16> = x
        .iter()
        .map(|v| half::f16::from_f32(*v).to_bits())
        .collect();
    let from_half: Vec<f32> = halves
        .iter()
        .map(|b| half::f16::from_bits(*b).to_f32())
        .collect();
    let (d_f32, d_f16) = (dev.upload(&x)?, dev.upload(&halves)?);
    let mut worst = 0f32;
    let (k, s) = dev.kernels();
    let (grid, n) = (Grid::Elements(x.len()), x.len() as u64);
    for from_f16 in [false, true] {
        let out = dev.zeros::<u16>(x.len())?;
        let want = if from_f16 {
            let args = ConvertF16 {
                r#in: dev.at(&d_f16, 0),
                out: dev.at(&out, 0),
                n,
            };
            k.run(s, grid, args)?;
            round_bf16(&from_half)
        } else {
            let args = ConvertF32 {
                r#in: dev.at(&d_f32, 0),
                out: dev.at(&out, 0),
                n,
            };
            k.run(s, grid, args)?;
            round_bf16(&x)
        };
        worst = worst.max(max_error(&dev.read_bf16(&out)?, &want));
    }
    Ok((worst, 0.0))
}

fn gemm(dev: &Dev, rng: &mut StdRng) -> Result<(f32, f32), CudaError> {
    let (t, out, inp) = (7, 300, 576);
    let x = round_bf16(&random(rng, t * inp, 1.0));
    let w = round_bf16(&random(rng, out * inp, 0.1));
    let want: Vec<f32> = (0..t * out)
        .map(|i| {
            let (r, o) = (i / out, i % out);
            (0..inp)
                .map(|j| f64::from(x[r * inp + j]) * f64::from(w[o * inp + j]))
                .sum::<f64>() as f32
        })
        .collect();
    let (d_x, d_w) = (dev.bf16(&x)?, dev.bf16(&w)?);
    let (y16, y32) = (dev.zeros::<u16>(t * out)?, dev.zeros::<f32>(t * out)?);
    let m = Matrix {
        addr: dev.at(&d_w, 0),
        out,
        inp,
    };
    let gemm = &dev.gpu.gemm;
    gemm.linear(dev.at(&d_x, 0), t, m, Output::Bf16(dev.at(&y16, 0)))?;
    gemm.linear(dev.at(&d_x, 0), t, m, Output::F32(dev.at(&y32, 0)))?;
    let e16 = max_error(&dev.read_bf16(&y16)?, &want);
    // f32 output: only the accumulation order differs; scale the bound to bf16's.
    let e32 = max_error(&dev.read(&y32)?, &want) * 10.0;
    Ok((e16.max(e32), BF16_TOL))
}

/// A CUDA graph captured through cudarc's stream capture (an RMSNorm, then a GEMM of its output)
/// replays that work over the data as it is when the graph launches: after new input is
/// copied in, the replay's output is the direct launches' on the same input, to the bit.
fn graph(dev: &Dev, rng: &mut StdRng) -> Result<(f32, f32), CudaError> {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let (t, h, out, eps) = (3, 576, 300, 1e-5f32);
    let mut d_x = dev.bf16(&round_bf16(&random(rng, t * h, 3.0)))?;
    let d_norm = dev.bf16(&round_bf16(&random(rng, h, 1.5)))?;
    let d_w = dev.bf16(&round_bf16(&random(rng, out * h, 0.1)))?;
    let (normed, y) = (dev.zeros::<u16>(t * h)?, dev.zeros::<f32>(t * out)?);
    let (k, s) = dev.kernels();
    // The graph keeps this address; the input's bytes are replaced under it below.
    let x = dev.at(&d_x, 0);
    let run = || -> Result<(), CudaError> {
        k.run(
            s,
            Grid::Blocks(t as u32, 1),
            RmsNorm {
                x,
                residual: DevPtr::null(),
                w: dev.at(&d_norm, 0),
                out: dev.at(&normed, 0),
                hidden: h as i32,
                eps,
            },
        )?;
        let m = Matrix {
            addr: dev.at(&d_w, 0),
            out,
            inp: h,
        };
        dev.gpu
            .gemm
            .linear(dev.at(&normed, 0), t, m, Output::F32(dev.at(&y, 0)))
    };
    let stream = &dev.gpu.stream;
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    run()?;
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))?
        .ok_or_else(|| CudaError::Unsupported("stream capture recorded no graph".into()))?;
    let new_input: Vec<u16> = round_bf16(&random(rng, t * h, 3.0))
        .iter()
        .map(|v| half::bf16::from_f32(*v).to_bits())
        .collect();
    stream.memcpy_htod(&new_input, &mut d_x)?;
    graph.launch()?;
    let replayed = dev.read(&y)?;
    run()?;
    let direct = dev.read(&y)?;
    Ok((max_error(&replayed, &direct), 0.0))
}
