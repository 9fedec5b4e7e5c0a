//! Weight matrices kept on the device as the GGUF stores them, and the products that read them.
//!
//! A GGUF's Q4_0, Q4_1, Q8_0, Q4_K and Q6_K matrices stay quantized in device memory (1.8 to 5.7
//! times fewer bytes than bf16, so a decode step, which streams every weight once, reads that
//! much less). Each is held as two planes, quants and scales (`kernels/gemv.cu` gives the layout),
//! split from GGUF's packed blocks on the host at load, so that the kernels load aligned
//! 16-byte words. A step of up to [`GEMV_MAX_TOKENS`] tokens multiplies by the planes directly
//! (`gemv_*`: each weight decoded once, used for every token); a larger step, whose GEMM is
//! worth tensor cores, decodes row tiles of the matrix to bf16 in a scratch buffer and hands
//! each tile to cuBLAS, as vLLM's GGUF path does above its matrix-vector threshold.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::error::CudaError;
use super::gemm::{Gemm, Matrix, Output};
use super::kernels::{
    Bf16, DecodePlanesQ4_0, DecodePlanesQ4_1, DecodePlanesQ6K, DecodePlanesQ8_0, DevPtr,
    GemvOneQ4_0, GemvOneQ4_1, GemvOneQ6K, GemvOneQ8_0, GemvQ4_0, GemvQ4_1, GemvQ6K, GemvQ8_0, Grid,
};
use super::launch::{addr, Kernels};
use model::GgmlType;

/// The most tokens a step may have for the matrix-vector kernels (`GEMV_MAX_TOKENS` in
/// `kernels/gemv.cu`); larger steps decode tiles for cuBLAS.
pub const GEMV_MAX_TOKENS: usize = 8;

/// Threads per CTA of the matrix-vector kernels (`GEMV_THREADS`).
const GEMV_THREADS: usize = 128;

/// Rows a group of lanes serves together in the matrix-vector kernels (`GEMV_ROWS`).
const GEMV_ROWS: usize = 4;

/// Values per GGUF block.
const BLOCK: usize = 32;

/// Blocks a thread of `decode_planes_*` decodes (`DECODE_BLOCKS`).
const DECODE_BLOCKS_PER_THREAD: usize = 8;

/// The largest bf16 tile a large step decodes at once (64 MiB): a matrix larger than this (an
/// 8B model's LM head is 1 GiB in bf16) goes to cuBLAS in row tiles.
pub(crate) const MAX_TILE_ELEMENTS: usize = 32 << 20;

/// The GGUF encodings kept quantized on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaneKind {
    /// f16 d, 32 4-bit q: d (q - 8).
    Q4_0,
    /// f16 d, f16 m, 32 4-bit q: d q + m.
    Q4_1,
    /// f16 d, 32 signed bytes q: d q.
    Q8_0,
    /// Q6_K widened ([`q6_k_planes`]): f16 d of values 0-15 and of 16-31, 32 signed bytes q.
    Q6K,
}

impl PlaneKind {
    /// The kind of a GGUF encoding, if it is kept quantized.
    pub fn of(t: GgmlType) -> Option<PlaneKind> {
        match t {
            GgmlType::Q4_0 => Some(PlaneKind::Q4_0),
            GgmlType::Q4_1 => Some(PlaneKind::Q4_1),
            GgmlType::Q8_0 => Some(PlaneKind::Q8_0),
            _ => None,
        }
    }

    /// Bytes of quants a block.
    fn quant_bytes(self) -> usize {
        match self {
            PlaneKind::Q4_0 | PlaneKind::Q4_1 => 16,
            PlaneKind::Q8_0 | PlaneKind::Q6K => 32,
        }
    }

    /// f16 scales a block (d; for Q4_1, d and m; for Q6_K, a d per half).
    fn scales(self) -> usize {
        match self {
            PlaneKind::Q4_1 | PlaneKind::Q6K => 2,
            _ => 1,
        }
    }

    /// Bytes of a GGUF block: the scales, then the quants.
    fn gguf_block_bytes(self) -> usize {
        2 * self.scales() + self.quant_bytes()
    }
}

/// GGUF blocks split into the planes the kernels read: (quants, scales).
pub(crate) fn split_planes(kind: PlaneKind, blocks: &[u8]) -> (Vec<u8>, Vec<u16>) {
    let size = kind.gguf_block_bytes();
    assert!(blocks.len().is_multiple_of(size), "whole {kind:?} blocks");
    let n = blocks.len() / size;
    let (mut qs, mut scales) = (
        Vec::with_capacity(n * kind.quant_bytes()),
        Vec::with_capacity(n * kind.scales()),
    );
    for block in blocks.chunks_exact(size) {
        let (head, quants) = block.split_at(2 * kind.scales());
        scales.extend(
            head.chunks_exact(2)
                .map(|h| u16::from_le_bytes([h[0], h[1]])),
        );
        qs.extend_from_slice(quants);
    }
    (qs, scales)
}

/// The planes the kernels read for GGUF blocks of `ty`, and the kind they are in: Q4_0, Q4_1 and
/// Q8_0 as they are ([`split_planes`]); Q4_K as Q4_1 planes ([`q4_k_as_q4_1`]); Q6_K widened to
/// bytes ([`q6_k_planes`]); `None` for the encodings kept in bf16.
pub fn planes_of(ty: GgmlType, blocks: &[u8]) -> Option<(PlaneKind, Vec<u8>, Vec<u16>)> {
    if ty == GgmlType::Q4_K {
        let (qs, scales) = q4_k_as_q4_1(blocks);
        return Some((PlaneKind::Q4_1, qs, scales));
    }
    if ty == GgmlType::Q6_K {
        let (qs, scales) = q6_k_planes(blocks);
        return Some((PlaneKind::Q6K, qs, scales));
    }
    let kind = PlaneKind::of(ty)?;
    let (qs, scales) = split_planes(kind, blocks);
    Some((kind, qs, scales))
}

/// Q4_K super-blocks (256 values: f16 d and dmin, eight 6-bit scales and mins, 4-bit quants)
/// as Q4_1 planes: each 32-value sub-block j becomes a Q4_1 block with scale d * scale_j and
/// offset -dmin * min_j, each rounded to f16 (a relative error of at most 2^-12 on the weights,
/// an eighth of bf16's), and its quants re-paired as Q4_1 pairs them (value i with value i + 16
/// in one byte; Q4_K pairs sub-block 2p's value i with sub-block 2p + 1's). 20 bytes for each
/// 32 values on the device against the file's 18.
pub(crate) fn q4_k_as_q4_1(blocks: &[u8]) -> (Vec<u8>, Vec<u16>) {
    const SUPER: usize = 144;
    assert!(blocks.len().is_multiple_of(SUPER), "whole Q4_K blocks");
    let n = blocks.len() / SUPER;
    let (mut qs, mut scales) = (
        Vec::with_capacity(n * 8 * 16),
        Vec::with_capacity(n * 8 * 2),
    );
    let f16_of = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    for b in blocks.chunks_exact(SUPER) {
        let (d, dmin) = (f16_of(&b[0..2]), f16_of(&b[2..4]));
        let (packed, quants) = (&b[4..16], &b[16..]);
        for j in 0..8 {
            let (scale, min) = model::q4k_scale_min(j, packed);
            scales.push(half::f16::from_f32(d * f32::from(scale)).to_bits());
            scales.push(half::f16::from_f32(-dmin * f32::from(min)).to_bits());
            // Sub-block j: the low (even j) or high (odd j) nibbles of bytes 32 (j / 2)...
            let bytes = &quants[32 * (j / 2)..32 * (j / 2) + 32];
            let value = |i: usize| {
                if j % 2 == 0 {
                    bytes[i] & 0x0f
                } else {
                    bytes[i] >> 4
                }
            };
            qs.extend((0..16).map(|i| value(i) | (value(i + 16) << 4)));
        }
    }
    (qs, scales)
}

/// Q6_K super-blocks (256 values: 4 low bits each in `ql`, 2 high bits each in `qh`, sixteen
/// int8 scales, one per 16 values, and f16 d; value = d * scale * (q - 32), ggml's
/// `dequantize_row_q6_K`) as planes of 32-value blocks: each value's q - 32 as a signed byte, and
/// each block's two half-scales d * scale rounded to f16 (at most 2^-12 relative, as for Q4_K).
/// 36 bytes for each 32 values on the device against the file's 26.25 (bf16: 64): a packed 6-bit
/// plane would save the difference at the cost of a decoder of its own.
pub(crate) fn q6_k_planes(blocks: &[u8]) -> (Vec<u8>, Vec<u16>) {
    const SUPER: usize = 210;
    assert!(blocks.len().is_multiple_of(SUPER), "whole Q6_K blocks");
    let n = blocks.len() / SUPER;
    let (mut qs, mut scales) = (Vec::with_capacity(n * 256), Vec::with_capacity(n * 16));
    for b in blocks.chunks_exact(SUPER) {
        let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
        let d = half::f16::from_le_bytes([b[208], b[209]]).to_f32();
        for y in 0..256 {
            // Values y of the two 128-value halves n: 32 at a time from ql's low nibbles, the
            // next 32's, then the high nibbles of both, with qh's 2-bit fields in turn.
            let (n, l, group) = (y / 128, y % 32, (y % 128) / 32);
            let low = ql[64 * n + l + 32 * (group % 2)] >> (4 * (group / 2)) & 0x0f;
            let high = (qh[32 * n + l] >> (2 * group)) & 0x03;
            qs.push(((low | high << 4) as i8 - 32) as u8);
        }
        scales.extend(
            sc.iter()
                .map(|&s| half::f16::from_f32(d * f32::from(s as i8)).to_bits()),
        );
    }
    (qs, scales)
}

/// A quantized `[rows, inp]` matrix on the device, as its two planes.
pub(crate) struct QuantMatrix {
    kind: PlaneKind,
    qs: CudaSlice<u8>,
    scales: CudaSlice<u16>,
    rows: usize,
    inp: usize,
}

impl QuantMatrix {
    /// Uploads `rows` x `inp` values given as GGUF blocks of `ty`, as the planes of
    /// [`planes_of`].
    pub(crate) fn upload(
        stream: &Arc<CudaStream>,
        ty: GgmlType,
        blocks: &[u8],
        rows: usize,
        inp: usize,
    ) -> Result<QuantMatrix, CudaError> {
        let (per_block, block_bytes) = ty.block();
        let (per_block, block_bytes) = (per_block as usize, block_bytes as usize);
        let planes = if inp.is_multiple_of(per_block)
            && blocks.len() == rows * inp / per_block * block_bytes
        {
            planes_of(ty, blocks)
        } else {
            None
        };
        let Some((kind, qs, scales)) = planes else {
            return Err(CudaError::Unsupported(format!(
                "a {ty:?} matrix of {rows} x {inp} in {} bytes",
                blocks.len()
            )));
        };
        Ok(QuantMatrix {
            kind,
            qs: stream.clone_htod(&qs)?,
            scales: stream.clone_htod(&scales)?,
            rows,
            inp,
        })
    }

    /// Device bytes of both planes.
    pub(crate) fn bytes(&self) -> u64 {
        (self.qs.num_bytes() + self.scales.num_bytes()) as u64
    }

    /// Rows times columns.
    pub(crate) fn elements(&self) -> usize {
        self.rows * self.inp
    }

    /// The addresses the kernels take.
    pub(crate) fn planes(&self, stream: &CudaStream) -> Planes {
        Planes {
            kind: self.kind,
            qs: addr(&self.qs, stream, 0),
            scales: addr(&self.scales, stream, 0),
            rows: self.rows,
            inp: self.inp,
        }
    }
}

/// A quantized matrix's planes on the device, as launches take them.
#[derive(Debug, Clone, Copy)]
pub struct Planes {
    /// The encoding.
    pub kind: PlaneKind,
    /// The quants plane.
    pub qs: DevPtr<u8>,
    /// The scales plane.
    pub scales: DevPtr<u16>,
    /// Output features.
    pub rows: usize,
    /// Input features (a multiple of 32).
    pub inp: usize,
}

/// Threads a row group has in the matrix-vector kernels: the largest power of two up to a whole
/// CTA that leaves each thread at least one block of a row, so that a thread's chain of loads
/// stays short (an 8B model's 14,336-wide down projection: 128 lanes of 3-4 blocks, not 32 of
/// 14; the default model's 576-wide inputs: 16 lanes of 1-2 blocks, where at least two blocks
/// a lane made 8 lanes of 2-3 and a batch-1 step's products 702 us predicted, not 468) while
/// each of its loads of x still serves [`GEMV_ROWS`] rows.
pub fn gemv_lanes(inp: usize) -> usize {
    let blocks = inp / BLOCK;
    let mut lanes = 1;
    while lanes < GEMV_THREADS && lanes * 2 <= blocks {
        lanes *= 2;
    }
    lanes
}

/// What a matrix-vector product reads as its input.
#[derive(Debug, Clone, Copy)]
pub enum GemvInput {
    /// `[tokens, inp]` values.
    Plain(DevPtr<Bf16>),
    /// A gate/up projection's output, `[tokens, 2 inp]` (gate, then up), taken as
    /// `silu(gate) * up` rounded to bf16: the SwiGLU activation fused into the down projection.
    Gated(DevPtr<Bf16>),
}

/// `y[t, rows] = x[t, inp] · Wᵀ` for `tokens` <= [`GEMV_MAX_TOKENS`], reading the planes.
pub fn gemv(
    kernels: &Kernels,
    stream: &CudaStream,
    w: Planes,
    x: GemvInput,
    tokens: usize,
    y: Output,
) -> Result<(), CudaError> {
    let (x, gated) = match x {
        GemvInput::Plain(x) => (x, 0),
        GemvInput::Gated(x) => (x, 1),
    };
    assert!(
        (1..=GEMV_MAX_TOKENS).contains(&tokens),
        "gemv takes 1 to {GEMV_MAX_TOKENS} tokens"
    );
    let lanes = gemv_lanes(w.inp);
    let grid = Grid::Blocks(w.rows.div_ceil(GEMV_THREADS / lanes * GEMV_ROWS) as u32, 1);
    let (y, y_f32) = match y {
        Output::Bf16(y) => (y, DevPtr::null()),
        Output::F32(y) => (DevPtr::null(), y),
    };
    let (rows, k_blocks) = (w.rows as i32, (w.inp / BLOCK) as i32);
    let (tokens, lanes) = (tokens as i32, lanes as i32);
    let (qs, scales) = (w.qs, w.scales);
    // Every gemv entry point takes the same arguments; a step of one token has its own.
    macro_rules! run {
        ($args:ident) => {
            kernels.run(
                stream,
                grid,
                $args {
                    qs,
                    scales,
                    x,
                    y,
                    y_f32,
                    rows,
                    k_blocks,
                    tokens,
                    lanes,
                    gated,
                },
            )
        };
    }
    match (w.kind, tokens == 1) {
        (PlaneKind::Q4_0, false) => run!(GemvQ4_0),
        (PlaneKind::Q4_1, false) => run!(GemvQ4_1),
        (PlaneKind::Q8_0, false) => run!(GemvQ8_0),
        (PlaneKind::Q6K, false) => run!(GemvQ6K),
        (PlaneKind::Q4_0, true) => run!(GemvOneQ4_0),
        (PlaneKind::Q4_1, true) => run!(GemvOneQ4_1),
        (PlaneKind::Q8_0, true) => run!(GemvOneQ8_0),
        (PlaneKind::Q6K, true) => run!(GemvOneQ6K),
    }
}

/// Rows `first_row..first_row + n_rows` of the matrix decoded to bf16 at `out`, row-major.
pub fn decode_rows(
    kernels: &Kernels,
    stream: &CudaStream,
    w: Planes,
    first_row: usize,
    n_rows: usize,
    out: DevPtr<Bf16>,
) -> Result<(), CudaError> {
    let per_row = w.inp / BLOCK;
    let n_blocks = n_rows * per_row;
    let grid = Grid::Elements(n_blocks.div_ceil(DECODE_BLOCKS_PER_THREAD));
    let (qs, scales, first) = (w.qs, w.scales, (first_row * per_row) as u64);
    let n_blocks = n_blocks as u64;
    match w.kind {
        PlaneKind::Q4_0 => kernels.run(
            stream,
            grid,
            DecodePlanesQ4_0 {
                qs,
                scales,
                out,
                first,
                n_blocks,
            },
        ),
        PlaneKind::Q4_1 => kernels.run(
            stream,
            grid,
            DecodePlanesQ4_1 {
                qs,
                scales,
                out,
                first,
                n_blocks,
            },
        ),
        PlaneKind::Q8_0 => kernels.run(
            stream,
            grid,
            DecodePlanesQ8_0 {
                qs,
                scales,
                out,
                first,
                n_blocks,
            },
        ),
        PlaneKind::Q6K => kernels.run(
            stream,
            grid,
            DecodePlanesQ6K {
                qs,
                scales,
                out,
                first,
                n_blocks,
            },
        ),
    }
}

/// `y[t, rows] = x[t, inp] · Wᵀ` for any number of tokens: [`gemv`] for small steps; else row
/// tiles of at most `scratch_elements` values decoded into `scratch` and multiplied by cuBLAS,
/// each writing its columns of `y`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    kernels: &Kernels,
    gemm: &Gemm,
    stream: &CudaStream,
    w: Planes,
    x: DevPtr<Bf16>,
    tokens: usize,
    y: Output,
    scratch: DevPtr<Bf16>,
    scratch_elements: usize,
) -> Result<(), CudaError> {
    if tokens <= GEMV_MAX_TOKENS {
        return gemv(kernels, stream, w, GemvInput::Plain(x), tokens, y);
    }
    let tile_rows = (scratch_elements / w.inp).clamp(1, w.rows);
    let mut first = 0;
    while first < w.rows {
        let n = tile_rows.min(w.rows - first);
        decode_rows(kernels, stream, w, first, n, scratch)?;
        let tile = Matrix {
            addr: scratch,
            out: n,
            inp: w.inp,
        };
        gemm.linear_into(x, tokens, tile, y.offset(first), w.rows)?;
        first += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of element `i` of Q4_1 planes, as the kernels decode it: d q + m.
    fn q4_1_value(qs: &[u8], scales: &[u16], i: usize) -> f32 {
        let (block, at) = (i / 32, i % 32);
        let byte = qs[16 * block + at % 16];
        let q = if at < 16 { byte & 0x0f } else { byte >> 4 };
        let d = half::f16::from_bits(scales[2 * block]).to_f32();
        let m = half::f16::from_bits(scales[2 * block + 1]).to_f32();
        d * f32::from(q) + m
    }

    /// Q6_K blocks (quants and scales from a fixed pseudo-random sequence) widened to planes
    /// decode to ggml's Q6_K values as the loader computes them, each within the f16 rounding of
    /// its half-block's scale (2^-11 of it, relative).
    #[test]
    fn q6_k_blocks_as_planes_decode_to_the_loaders_values() {
        let mut state = 777u32;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        };
        let mut blocks = Vec::new();
        for _ in 0..3 {
            blocks.extend((0..208).map(|_| next()));
            blocks.extend(half::f16::from_f32(0.0031).to_le_bytes());
        }
        let mut want = vec![0f32; 3 * 256];
        model::dequantize(GgmlType::Q6_K, &blocks, &mut want);
        let (qs, scales) = q6_k_planes(&blocks);
        assert_eq!((qs.len(), scales.len()), (3 * 256, 3 * 16));
        for (i, &w) in want.iter().enumerate() {
            let d = half::f16::from_bits(scales[i / 16]).to_f32();
            let got = d * f32::from(qs[i] as i8);
            let bound = 0.0031 * 128.0 * 32.0 * 2f32.powi(-11);
            assert!((got - w).abs() <= bound, "element {i}: {got} against {w}");
        }
    }

    /// Q4_K blocks (scales and quants from a fixed pseudo-random sequence) turned into Q4_1
    /// planes decode to the loader's Q4_K values, each within the f16 rounding of its
    /// sub-block's scale and offset (2^-11 of each, relative).
    #[test]
    fn q4_k_blocks_as_q4_1_planes_decode_to_the_loaders_values() {
        let mut state = 12345u32;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        };
        let mut blocks = Vec::new();
        for _ in 0..3 {
            blocks.extend(half::f16::from_f32(0.0123).to_le_bytes());
            blocks.extend(half::f16::from_f32(0.0071).to_le_bytes());
            blocks.extend((0..140).map(|_| next()));
        }
        let mut want = vec![0f32; 3 * 256];
        model::dequantize(GgmlType::Q4_K, &blocks, &mut want);
        let (qs, scales) = q4_k_as_q4_1(&blocks);
        assert_eq!((qs.len(), scales.len()), (3 * 8 * 16, 3 * 8 * 2));
        for (i, &w) in want.iter().enumerate() {
            let got = q4_1_value(&qs, &scales, i);
            // d' q and m' each carry at most half an f16 ulp of their size.
            let bound = (0.0123 * 63.0 * 15.0 + 0.0071 * 63.0) * 2f32.powi(-11);
            assert!((got - w).abs() <= bound, "element {i}: {got} against {w}");
        }
    }
}
