//! Quantized linear layers against exact f64 products of the file's own weights.

use half::f16;
use model::{dequantize, GgmlType};

use super::activations::quantize_block;
use super::kernels::{self, Acts, Isa, MAX_X};
use super::panels::{BlockFormat, Panels};
use super::*;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

/// GGUF blocks of `w` in `t`, quantized as llama.cpp's reference quantizers do; for Q4_K,
/// random super-blocks (any bits are a valid block) with small positive `d` and `dmin`.
fn file_blocks(t: GgmlType, w: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    if t == GgmlType::Q4_K {
        let bits = random(w.len() / 256 * 144, 99);
        for (i, chunk) in bits.chunks_exact(144).enumerate() {
            let mut block: Vec<u8> = chunk.iter().map(|v| (v.abs() * 255.0) as u8).collect();
            block[..2].copy_from_slice(&f16::from_f32(0.002 + (i % 7) as f32 * 1e-3).to_le_bytes());
            block[2..4].copy_from_slice(&f16::from_f32(0.01 + (i % 5) as f32 * 1e-3).to_le_bytes());
            out.extend(block);
        }
        return out;
    }
    if t == GgmlType::Q6_K {
        let bits = random(w.len() / 256 * 210, 98);
        for (i, chunk) in bits.chunks_exact(210).enumerate() {
            let mut block: Vec<u8> = chunk.iter().map(|v| (v.abs() * 255.0) as u8).collect();
            block[208..]
                .copy_from_slice(&f16::from_f32(1e-4 + (i % 3) as f32 * 1e-4).to_le_bytes());
            out.extend(block);
        }
        return out;
    }
    for x in w.chunks_exact(QK) {
        match t {
            GgmlType::Q8_0 => out.extend(activations::quantize_q8_0(x)),
            GgmlType::Q4_0 => {
                let max = x
                    .iter()
                    .fold(0f32, |m, v| if v.abs() > m.abs() { *v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                for j in 0..16 {
                    let q = |v: f32| ((v * id + 8.5) as u8).min(15);
                    out.push(q(x[j]) | (q(x[j + 16]) << 4));
                }
            }
            GgmlType::Q4_1 => {
                let min = x.iter().copied().fold(f32::MAX, f32::min);
                let max = x.iter().copied().fold(f32::MIN, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(f16::from_f32(min).to_le_bytes());
                for j in 0..16 {
                    let q = |v: f32| (((v - min) * id + 0.5) as u8).min(15);
                    out.push(q(x[j]) | (q(x[j + 16]) << 4));
                }
            }
            _ => unreachable!(),
        }
    }
    out
}

/// `x · W^T` in f64 with W as the file's blocks decode (the model crate's decoder).
fn exact(t: GgmlType, blocks: &[u8], out: usize, inp: usize, x: &[f32]) -> Vec<f64> {
    let mut w = vec![0f32; out * inp];
    dequantize(t, blocks, &mut w);
    let rows = x.len() / inp;
    let mut y = vec![0f64; rows * out];
    for r in 0..rows {
        for o in 0..out {
            y[r * out + o] = (0..inp)
                .map(|i| w[o * inp + i] as f64 * x[r * inp + i] as f64)
                .sum();
        }
    }
    y
}

const FORMATS: [GgmlType; 5] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

/// Columns for a test of `t`: three blocks, or two super-blocks for the k-quants.
fn columns(t: GgmlType) -> usize {
    if matches!(t, GgmlType::Q4_K | GgmlType::Q6_K) {
        512
    } else {
        96
    }
}

#[test]
fn block_formats_compute_the_files_weights_for_every_batch_shape() {
    // 37 rows: the last panel is padded.
    let out = 37;
    for t in FORMATS {
        let inp = columns(t);
        let w = random(out * inp, 1);
        let blocks = file_blocks(t, &w);
        let linear = Linear::from_file_blocks(t, &blocks, out, inp).unwrap();
        for rows in [1, 2, 3, 4, 5, 9] {
            let x = random(rows * inp, 10 + rows as u64);
            let want = exact(t, &blocks, out, inp, &x);
            let mut got = vec![0f32; rows * out];
            linear.forward(&x, rows, &mut got);
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // Only the activations' 8-bit rounding separates them.
                assert!(
                    (*g as f64 - w).abs() < 0.01 * scale,
                    "{t:?} rows={rows} [{i}]: {g} vs {w}"
                );
            }
        }
    }
}

/// A matrix whose row blocks are in different formats (as Q4_K_M's fused QKV): each part's
/// rows are that part's own product, whatever its neighbours' formats.
#[test]
fn stacked_parts_in_different_formats_compute_their_own_rows() {
    let inp = 512;
    // 9 and 6 rows: panels padded inside the matrix, not only at its end.
    let parts = [
        (GgmlType::Q4_K, 9),
        (GgmlType::Q6_K, 6),
        (GgmlType::Q4_1, 5),
    ];
    let blocks: Vec<Vec<u8>> = parts
        .iter()
        .enumerate()
        .map(|(i, &(t, rows))| file_blocks(t, &random(rows * inp, 20 + i as u64)))
        .collect();
    let spec: Vec<(GgmlType, &[u8], usize)> = parts
        .iter()
        .zip(&blocks)
        .map(|(&(t, rows), b)| (t, &b[..], rows))
        .collect();
    let linear = Linear::from_file_parts(&spec, inp).unwrap();
    let out = 20;
    for rows in [1, 3, 6] {
        let x = random(rows * inp, 30 + rows as u64);
        let mut got = vec![0f32; rows * out];
        linear.forward(&x, rows, &mut got);
        let mut first = 0;
        for &(t, b, n) in &spec {
            let want = exact(t, b, n, inp, &x);
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            for r in 0..rows {
                for o in 0..n {
                    let (g, w) = (got[r * out + first + o] as f64, want[r * n + o]);
                    assert!(
                        (g - w).abs() < 0.01 * scale,
                        "{t:?} rows={rows} [{r}, {o}]: {g} vs {w}"
                    );
                }
            }
            first += n;
        }
    }
}

#[test]
fn q8_from_f32_is_close_to_f32_and_a_quarter_of_its_bytes() {
    let (out, inp) = (37, 96);
    let w = random(out * inp, 1);
    let f32s = Linear::new(w.clone(), out, inp, WeightFormat::F32);
    let q8 = Linear::new(w, out, inp, WeightFormat::Q8);
    assert!(q8.weight_bytes() * 3 < f32s.weight_bytes());
    for t in [1, 2, 17] {
        let x = random(t * inp, 10 + t as u64);
        let (mut a, mut b) = (vec![0f32; t * out], vec![0f32; t * out]);
        f32s.forward(&x, t, &mut a);
        q8.forward(&x, t, &mut b);
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(err / scale < 0.02, "t={t}: {err} vs {scale}");
    }
}

#[test]
fn block_weights_take_their_bits() {
    let (out, inp) = (64, 256);
    let w = random(out * inp, 2);
    // The files' bits per weight, and for the k-quants a quarter bit (Q4_K) or a sixteenth
    // (Q6_K) more: their block scales take a byte each rather than six bits.
    for (t, bits) in [
        (GgmlType::Q4_0, 4.5),
        (GgmlType::Q4_1, 5.0),
        (GgmlType::Q8_0, 8.5),
        (GgmlType::Q4_K, 4.75),
        (GgmlType::Q6_K, 6.625),
    ] {
        let linear = Linear::from_file_blocks(t, &file_blocks(t, &w), out, inp).unwrap();
        assert_eq!(
            linear.weight_bytes() as f64 * 8.0,
            bits * (out * inp) as f64,
            "{t:?}"
        );
    }
}

#[test]
fn every_instruction_set_gives_the_portable_result() {
    let out = 8;
    let isas = Isa::available();
    eprintln!("instruction sets here: {isas:?}");
    for t in FORMATS {
        let inp = columns(t) * 2;
        let w = random(out * inp, 3);
        let x = random(MAX_X * inp, 4);
        let format = BlockFormat::from_ggml(t).unwrap();
        let p = Panels::from_file_blocks(format, &file_blocks(t, &w), out, inp);
        let xq = activations::quantize(&x, inp, format.needs_sums());
        for n in 1..=MAX_X {
            let mut acts = Acts {
                qs: [&[]; MAX_X],
                d: [&[]; MAX_X],
                s: [&[]; MAX_X],
                n,
            };
            for i in 0..n {
                (acts.qs[i], acts.d[i], acts.s[i]) = xq.row(i);
            }
            for panel in 0..p.count {
                let want = kernels::tile(Isa::Portable, format, p.panel(panel), p.blocks, &acts);
                for &isa in &isas {
                    let got = kernels::tile(isa, format, p.panel(panel), p.blocks, &acts);
                    for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                        assert!(
                            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                            "{isa:?} {t:?} n={n}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn activations_round_as_llama_cpp_does() {
    // amax 127: id = 127 / amax = 1, so x * id is x itself; halves go to the even neighbour
    // (x86 llama.cpp rounds with _mm256_round_ps to nearest even).
    let mut x = [0f32; QK];
    x[0] = 127.0;
    x[1] = 0.5;
    x[2] = 1.5;
    x[3] = -2.5;
    x[4] = 2.51;
    let mut q = [0i8; QK];
    let d = quantize_block(&x, &mut q);
    assert_eq!(d, 1.0);
    assert_eq!(&q[..5], &[127, 0, 2, -2, 3]);
    // Scales are f16 in the blocks: 0.1 / 127 is not an f16, so the stored scale is rounded.
    let rows = activations::quantize(&[0.1f32; QK], QK, true);
    assert_eq!(rows.d[0], f16::from_f32(0.1 / 127.0).to_f32());
    assert_eq!(rows.qs[0], 127);
    assert_eq!(
        rows.s[0],
        f16::from_f32(0.1 / 127.0 * 127.0 * 32.0).to_f32()
    );
    // Every value a block can hold rounds as f32::round_ties_even does.
    for i in -127_000..=127_000 {
        let mut x = [0f32; QK];
        x[0] = 127.0;
        x[1] = i as f32 / 1000.0;
        x[2] = i as f32 / 1000.0 + 0.0005;
        quantize_block(&x, &mut q);
        assert_eq!(q[1], x[1].round_ties_even() as i8, "{}", x[1]);
        assert_eq!(q[2], x[2].round_ties_even() as i8, "{}", x[2]);
    }
    let zero = activations::quantize(&[0f32; QK], QK, true);
    assert_eq!((zero.d[0], zero.s[0], zero.qs[0]), (0.0, 0.0, 0));
}
