//! The CPU backend against itself and against a naive f64 implementation.
//!
//! The CPU backend against itself (batching, paging, chunking) and against an independent naive
//! f64 implementation of the same Llama.

use super::*;
use model::testing::{random_weights, tiny_config, MemWeights};

fn backend(config: &LlamaConfig, weights: &MemWeights, num_blocks: usize) -> CpuBackend {
    let options = CpuOptions {
        block_size: 4,
        num_blocks,
        weight_format: WeightFormat::F32,
        kv_dtype: None,
    };
    CpuBackend::from_weights(config, weights, &options).unwrap()
}

fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0 as u32
}

/// Greedy decoding of several sequences, `batched` in one step per token or one at a time.
fn greedy(
    be: &mut CpuBackend,
    prompts: &[Vec<u32>],
    tables: &[Vec<u32>],
    steps: usize,
    batched: bool,
) -> Vec<Vec<u32>> {
    let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
    let mut cached = vec![0usize; prompts.len()];
    for _ in 0..steps {
        let groups: Vec<Vec<usize>> = if batched {
            vec![(0..seqs.len()).collect()]
        } else {
            (0..seqs.len()).map(|i| vec![i]).collect()
        };
        for group in groups {
            let inputs: Vec<SeqInput> = group
                .iter()
                .map(|&i| SeqInput {
                    tokens: &seqs[i][cached[i]..],
                    start_pos: cached[i],
                    block_table: &tables[i],
                    logits_for: LogitsFor::Last,
                })
                .collect();
            let logits = be.forward(&inputs).unwrap();
            for (row, &i) in group.iter().enumerate() {
                cached[i] = seqs[i].len();
                seqs[i].push(argmax(logits.row(row)));
            }
        }
    }
    seqs
}

#[test]
fn batched_decoding_equals_one_at_a_time() {
    // Untied: with tied embeddings a random model just repeats its input token.
    let config = LlamaConfig {
        tie_word_embeddings: false,
        ..tiny_config()
    };
    let weights = random_weights(&config, 1);
    let prompts = vec![
        vec![1, 2, 3, 4, 5, 6, 7],
        vec![200, 17],
        vec![9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11, 12, 13],
    ];
    let tables = vec![(0..8).collect(), (8..16).collect(), (16..24).collect()];
    let alone = greedy(
        &mut backend(&config, &weights, 24),
        &prompts,
        &tables,
        12,
        false,
    );
    let together = greedy(
        &mut backend(&config, &weights, 24),
        &prompts,
        &tables,
        12,
        true,
    );
    assert_eq!(alone, together);
    // The tiny model is not degenerate: it does not emit one token forever.
    assert!(alone.iter().any(|s| s[s.len() - 12..]
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len()
        > 1));
}

#[test]
fn scattered_blocks_equal_contiguous_blocks() {
    let config = tiny_config();
    let weights = random_weights(&config, 2);
    let prompt: Vec<u32> = (0..21).map(|i| (i * 37 % 256) as u32).collect();
    let contiguous: Vec<u32> = (0..6).collect();
    let scattered: Vec<u32> = vec![17, 3, 29, 8, 0, 22];
    let run = |table: &[u32]| {
        let mut be = backend(&config, &weights, 32);
        // Fill some other blocks with another sequence's KV first, so stale data would show.
        let other: Vec<u32> = (0..40).map(|i| (i * 11 % 256) as u32).collect();
        let other_table: Vec<u32> = (0..32).filter(|b| !table.contains(b)).take(10).collect();
        be.forward(&[SeqInput {
            tokens: &other,
            start_pos: 0,
            block_table: &other_table,
            logits_for: LogitsFor::None,
        }])
        .unwrap();
        be.forward(&[SeqInput {
            tokens: &prompt,
            start_pos: 0,
            block_table: table,
            logits_for: LogitsFor::All,
        }])
        .unwrap()
    };
    let a = run(&contiguous);
    let b = run(&scattered);
    assert_eq!(a.rows(), prompt.len());
    assert_eq!(a, b);
}

#[test]
fn chunked_prefill_equals_whole_prefill() {
    let config = tiny_config();
    let weights = random_weights(&config, 3);
    let prompt: Vec<u32> = (0..19).map(|i| (i * 53 % 256) as u32).collect();
    let table: Vec<u32> = (0..5).collect();
    let mut whole = backend(&config, &weights, 5);
    let w = whole
        .forward(&[SeqInput {
            tokens: &prompt,
            start_pos: 0,
            block_table: &table,
            logits_for: LogitsFor::Last,
        }])
        .unwrap();
    let mut chunked = backend(&config, &weights, 5);
    let mut last = None;
    for (start, end) in [(0, 5), (5, 6), (6, 16), (16, 19)] {
        let logits_for = if end == prompt.len() {
            LogitsFor::Last
        } else {
            LogitsFor::None
        };
        let out = chunked
            .forward(&[SeqInput {
                tokens: &prompt[start..end],
                start_pos: start,
                block_table: &table,
                logits_for,
            }])
            .unwrap();
        assert_eq!(out.rows(), usize::from(end == prompt.len()));
        last = Some(out);
    }
    let c = last.unwrap();
    let max_diff = w
        .data
        .iter()
        .zip(&c.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(max_diff < 1e-5, "{max_diff}");
    assert_eq!(argmax(w.row(0)), argmax(c.row(0)));
}

#[test]
fn logits_match_a_naive_f64_reference() {
    for (seed, mut config) in [(4, tiny_config()), (5, tiny_config())] {
        if seed == 5 {
            config.tie_word_embeddings = false;
        }
        let weights = random_weights(&config, seed);
        let tokens: Vec<u32> = (0..23)
            .map(|i| ((i * 97 + seed as usize) % 256) as u32)
            .collect();
        let table: Vec<u32> = (0..6).rev().collect();
        let mut be = backend(&config, &weights, 6);
        let got = be
            .forward(&[SeqInput {
                tokens: &tokens,
                start_pos: 0,
                block_table: &table,
                logits_for: LogitsFor::All,
            }])
            .unwrap();
        let want = naive::logits(&config, &weights, &tokens);
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let max_diff = got
            .data
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(
            max_diff / scale < 1e-4,
            "seed {seed}: max diff {max_diff} vs scale {scale}"
        );
    }
}

#[test]
fn bad_batches_are_errors() {
    let config = tiny_config();
    let weights = random_weights(&config, 6);
    let mut be = backend(&config, &weights, 4);
    let table = [0u32, 1];
    let e = be.forward(&[SeqInput {
        tokens: &[1; 9],
        start_pos: 0,
        block_table: &table,
        logits_for: LogitsFor::Last,
    }]);
    assert!(
        matches!(e, Err(BackendError::BlockTableTooShort { .. })),
        "{e:?}"
    );
    let e = be.forward(&[SeqInput {
        tokens: &[300],
        start_pos: 0,
        block_table: &table,
        logits_for: LogitsFor::Last,
    }]);
    assert!(
        matches!(e, Err(BackendError::TokenOutOfVocab { .. })),
        "{e:?}"
    );
    let e = be.forward(&[SeqInput {
        tokens: &[1],
        start_pos: 0,
        block_table: &[9],
        logits_for: LogitsFor::Last,
    }]);
    assert!(
        matches!(e, Err(BackendError::BlockOutOfRange { .. })),
        "{e:?}"
    );
}

/// A straightforward Llama in f64: no cache, no batching, no fusion, written from the
/// architecture's definition rather than from the backend's code.
mod naive {
    use model::names::{self, LayerTensor};
    use model::testing::MemWeights;
    use model::{LlamaConfig, WeightSource};

    fn get(w: &MemWeights, name: &str) -> Vec<f64> {
        w.0[name].data.iter().map(|v| *v as f64).collect()
    }

    /// `W x` for `W` of shape `[rows, x.len()]`.
    fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
        w.chunks(x.len())
            .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        x.iter()
            .zip(w)
            .map(|(v, w)| v / (ms + eps).sqrt() * w)
            .collect()
    }

    fn rope(x: &mut [f64], head_dim: usize, pos: usize, theta: f64) {
        let half = head_dim / 2;
        for head in x.chunks_mut(head_dim) {
            let rotated: Vec<f64> = (0..head_dim)
                .map(|i| {
                    if i < half {
                        -head[i + half]
                    } else {
                        head[i - half]
                    }
                })
                .collect();
            for i in 0..head_dim {
                let freq = 1.0 / theta.powf(2.0 * (i % half) as f64 / head_dim as f64);
                let angle = pos as f64 * freq;
                head[i] = head[i] * angle.cos() + rotated[i] * angle.sin();
            }
        }
    }

    pub(super) fn logits(c: &LlamaConfig, w: &MemWeights, tokens: &[u32]) -> Vec<f64> {
        let (h, hd) = (c.hidden_size, c.head_dim);
        let embed = get(w, names::EMBED);
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|t| embed[*t as usize * h..(*t as usize + 1) * h].to_vec())
            .collect();
        let eps = c.rms_norm_eps as f64;
        for l in 0..c.num_hidden_layers {
            let t = |lt: LayerTensor| get(w, &lt.hf_name(l));
            let (wq, wk, wv, wo) = (
                t(LayerTensor::Q),
                t(LayerTensor::K),
                t(LayerTensor::V),
                t(LayerTensor::O),
            );
            let mut qs = Vec::new();
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            for (pos, x) in xs.iter().enumerate() {
                let xn = rms_norm(x, &t(LayerTensor::AttnNorm), eps);
                let mut q = matvec(&wq, &xn);
                let mut k = matvec(&wk, &xn);
                rope(&mut q, hd, pos, c.rope_theta as f64);
                rope(&mut k, hd, pos, c.rope_theta as f64);
                qs.push(q);
                ks.push(k);
                vs.push(matvec(&wv, &xn));
            }
            let group = c.num_attention_heads / c.num_key_value_heads;
            for pos in 0..xs.len() {
                let mut attn = vec![0f64; c.num_attention_heads * hd];
                for head in 0..c.num_attention_heads {
                    let kvh = head / group;
                    let q = &qs[pos][head * hd..(head + 1) * hd];
                    let scores: Vec<f64> = (0..=pos)
                        .map(|j| {
                            q.iter()
                                .zip(&ks[j][kvh * hd..(kvh + 1) * hd])
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = exps.iter().sum();
                    for (j, e) in exps.iter().enumerate() {
                        for d in 0..hd {
                            attn[head * hd + d] += e / sum * vs[j][kvh * hd + d];
                        }
                    }
                }
                let o = matvec(&wo, &attn);
                for (x, o) in xs[pos].iter_mut().zip(o) {
                    *x += o;
                }
            }
            for x in xs.iter_mut() {
                let xn = rms_norm(x, &t(LayerTensor::FfnNorm), eps);
                let g = matvec(&t(LayerTensor::Gate), &xn);
                let u = matvec(&t(LayerTensor::Up), &xn);
                let act: Vec<f64> = g
                    .iter()
                    .zip(&u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                for (x, d) in x.iter_mut().zip(matvec(&t(LayerTensor::Down), &act)) {
                    *x += d;
                }
            }
        }
        let head = if c.tie_word_embeddings || !w.has(names::LM_HEAD) {
            embed
        } else {
            get(w, names::LM_HEAD)
        };
        xs.iter()
            .flat_map(|x| matvec(&head, &rms_norm(x, &get(w, names::FINAL_NORM), eps)))
            .collect()
    }
}

/// A batch mixing every kind of request: greedy sequences come back reduced (argmax and its
/// log-probability of the very row a `Last` request gets), the others as full rows in order.
#[test]
fn greedy_rows_are_the_argmax_of_the_full_rows() {
    let config = LlamaConfig {
        tie_word_embeddings: false,
        ..tiny_config()
    };
    let weights = random_weights(&config, 3);
    let prompts: [&[u32]; 4] = [&[1, 2, 3], &[40, 41], &[7, 8, 9, 10], &[100]];
    let kinds = [
        LogitsFor::Greedy,
        LogitsFor::All,
        LogitsFor::None,
        LogitsFor::Greedy,
    ];
    let tables: Vec<Vec<u32>> = (0..4).map(|i| vec![2 * i, 2 * i + 1]).collect();
    let run = |kinds: &[LogitsFor]| {
        let mut be = backend(&config, &weights, 8);
        let batch: Vec<SeqInput> = (0..4)
            .map(|i| SeqInput {
                tokens: prompts[i],
                start_pos: 0,
                block_table: &tables[i],
                logits_for: kinds[i],
            })
            .collect();
        be.forward(&batch).unwrap()
    };
    let mixed = run(&kinds);
    let full = run(&[
        LogitsFor::Last,
        LogitsFor::All,
        LogitsFor::None,
        LogitsFor::Last,
    ]);
    let v = config.vocab_size;
    assert_eq!(mixed.greedy.len(), 2);
    assert_eq!(mixed.rows(), 2, "sequence 1's two positions, nothing else");
    assert_eq!(&mixed.data[..], &full.data[v..3 * v]);
    for (g, row) in mixed.greedy.iter().zip([full.row(0), full.row(3)]) {
        assert_eq!(g.token, argmax(row));
        let lse = row
            .iter()
            .map(|x| (x - row[g.token as usize]).exp())
            .sum::<f32>()
            .ln();
        assert!((g.logprob + lse).abs() < 1e-5, "{} vs {}", g.logprob, -lse);
        assert!(g.logprob <= 0.0);
    }
}

/// A model mixed as llama.cpp's Q4_K_M mixes it: V and down projections in Q6_K, the other
/// linears in Q4_K (random super-blocks: any bits are a valid block); its f32 tensors are those
/// blocks decoded by the loader's dequantizer.
struct KQuantWeights {
    decoded: MemWeights,
    blocks: std::collections::HashMap<String, (model::GgmlType, Vec<u8>)>,
}

impl WeightSource for KQuantWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<model::HostTensor, LoadError> {
        self.decoded.tensor(name, shape)
    }
    fn has(&self, name: &str) -> bool {
        self.decoded.has(name)
    }
    fn encoded(
        &self,
        name: &str,
        _shape: &[usize],
    ) -> Result<Option<model::EncodedTensor<'_>>, LoadError> {
        Ok(self
            .blocks
            .get(name)
            .map(|(ggml_type, bytes)| model::EncodedTensor {
                ggml_type: *ggml_type,
                bytes: bytes[..].into(),
            }))
    }
}

fn k_quant_model() -> (LlamaConfig, KQuantWeights) {
    use model::{dequantize, GgmlType};
    let mut c = tiny_config();
    (c.hidden_size, c.intermediate_size, c.head_dim) = (256, 512, 64);
    let mut decoded = random_weights(&c, 9);
    let mut blocks = std::collections::HashMap::new();
    let mut state = 77u64;
    let mut byte = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 24) as u8
    };
    for (name, t) in decoded.0.iter_mut() {
        if t.shape.len() != 2 {
            continue;
        }
        let q6 = name.contains("v_proj") || name.contains("down_proj");
        let mut bytes = Vec::new();
        for _ in 0..t.data.len() / 256 {
            if q6 {
                // Signed scales and quants centred on 32: centred weights.
                let mut block: Vec<u8> = (0..210).map(|_| byte()).collect();
                block[208..].copy_from_slice(&half::f16::from_f32(2e-4).to_le_bytes());
                bytes.extend(block);
            } else {
                let mut block: Vec<u8> = (0..144).map(|_| byte()).collect();
                // d small enough that the activations stay in range; dmin near 7.5 d centres
                // the weights (mean sc q is 31.5 x 7.5, mean min 31.5).
                block[..2].copy_from_slice(&half::f16::from_f32(2e-4).to_le_bytes());
                block[2..4].copy_from_slice(&half::f16::from_f32(1.5e-3).to_le_bytes());
                bytes.extend(block);
            }
        }
        let kind = if q6 { GgmlType::Q6_K } else { GgmlType::Q4_K };
        dequantize(kind, &bytes, &mut t.data);
        blocks.insert(name.clone(), (kind, bytes));
    }
    (c, KQuantWeights { decoded, blocks })
}

#[test]
fn k_quant_blocks_run_natively_and_give_the_f32_paths_logits() {
    let (config, weights) = k_quant_model();
    let tokens: Vec<u32> = (0..19).map(|i| (i * 37 % 256) as u32).collect();
    let table: Vec<u32> = (0..5).collect();
    let logits = |format| {
        let options = CpuOptions {
            block_size: 4,
            num_blocks: 5,
            weight_format: format,
            kv_dtype: Some(KvDtype::F32),
        };
        let mut be = CpuBackend::from_weights(&config, &weights, &options).unwrap();
        let l = &be.layers[0];
        let bytes = [&l.gate_up, &l.down, &l.qkv].map(|m| m.weight_bytes());
        let out = be
            .forward(&[SeqInput {
                tokens: &tokens,
                start_pos: 0,
                block_table: &table,
                logits_for: LogitsFor::All,
            }])
            .unwrap();
        (out.data, bytes)
    };
    let (exact, f32_bytes) = logits(WeightFormat::F32);
    let (native, native_bytes) = logits(WeightFormat::Native);
    // Native keeps the quants and their super-blocks: Q4_K's gate/up at 4.75 bits per weight
    // (the file's 4.5) against f32's 32, Q6_K's down at 6.625 (the file's 6.5625); the fused
    // QKV keeps Q and K in Q4_K and V in Q6_K.
    let bits = |i: usize| native_bytes[i] as f64 * 32.0 / f32_bytes[i] as f64;
    let (q, kv) = (
        config.num_attention_heads as f64,
        config.num_key_value_heads as f64,
    );
    let qkv_bits = (4.75 * (q + kv) + 6.625 * kv) / (q + 2.0 * kv);
    assert_eq!([bits(0), bits(1), bits(2)], [4.75, 6.625, qkv_bits]);
    let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = exact
        .iter()
        .zip(&native)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    // Only the activations' 8-bit rounding separates them.
    assert!(diff < 0.05 * scale, "{diff} vs {scale}");
    let rows = |v: &[f32]| v.chunks(256).map(argmax).collect::<Vec<_>>();
    let same = rows(&exact)
        .iter()
        .zip(rows(&native))
        .filter(|(a, b)| **a == *b)
        .count();
    assert!(same >= 17, "{same} of 19 rows pick the same token");
}
