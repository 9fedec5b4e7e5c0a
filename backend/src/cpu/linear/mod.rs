//! Linear layers `y = x W^T` with `W` of shape `[out, in]`, in one of these formats:
//!
//! - [`WeightFormat::F32`]: exact; multiplied with the `gemm` crate. The reference.
//! - GGUF's block formats (Q4_0, Q4_1, Q8_0, and Q4_K and Q6_K as blocks of 32), computed as
//!   stored: the weights keep the file's quants at 4.5 to 8.5 bits per weight (4.75 for Q4_K,
//!   6.625 for Q6_K), the activations are quantized per block as llama.cpp does
//!   (Q8_0, or Q8_1 for Q4_1), and each block is an integer dot product scaled once. Decode
//!   streams every weight once per token, so bits per weight is what bounds it; and computing
//!   the file's own numbers is what makes Vigil's output agree with llama.cpp's on a GGUF.
//!
//! The weights are repacked into panels of four rows ([`panels`]) and multiplied by tile
//! kernels ([`kernels`]) that hold a 4 x `X` block of results in registers, for decode
//! (`X = 1`) and batches alike. A fused matrix whose parts the file stores in different
//! formats (llama.cpp's Q4_K_M keeps V in Q6_K beside Q and K in Q4_K) keeps each part in its
//! own format, the parts' rows stacked.

mod activations;
mod kernels;
mod panels;

use rayon::prelude::*;

use kernels::{Acts, Isa, MAX_X};
use model::GgmlType;
pub(crate) use panels::QK;
use panels::{BlockFormat, Panels, PANEL_ROWS};

/// How the CPU backend keeps weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// f32: exact, 4 bytes per weight.
    F32,
    /// Q8_0 blocks, re-quantized from any source: 8.5 bits per weight.
    Q8,
    /// As the GGUF stores them where that is Q4_0, Q4_1, Q8_0, Q4_K or Q6_K (4.5 to 8.5 bits
    /// per weight); otherwise Q8_0.
    #[default]
    Native,
}

pub(crate) struct Linear {
    out: usize,
    inp: usize,
    w: Weights,
    isa: Isa,
}

enum Weights {
    F32(Vec<f32>),
    /// Row blocks of the matrix, each in its file's format, stacked in order.
    Blocks(Vec<Part>),
}

/// Rows `first..first + rows` of a matrix, as panels.
struct Part {
    first: usize,
    rows: usize,
    panels: Panels,
}

/// Where a tile writes its results: rows of `y`, disjoint between panels.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every panel writes only its own columns of `y` (see `forward_blocks`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Linear {
    /// The GGUF encodings computed as stored.
    pub(crate) const NATIVE: &[GgmlType] = &[
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ];

    /// Wraps `w` (`out * inp` values, row-major). Block formats need `inp` to be a multiple of
    /// 32; other shapes stay f32.
    pub(crate) fn new(w: Vec<f32>, out: usize, inp: usize, format: WeightFormat) -> Linear {
        assert_eq!(w.len(), out * inp, "linear weight size");
        let w = match format {
            WeightFormat::Q8 | WeightFormat::Native if inp.is_multiple_of(QK) => {
                let blocks = activations::quantize_q8_0(&w);
                Weights::Blocks(vec![Part {
                    first: 0,
                    rows: out,
                    panels: Panels::from_file_blocks(BlockFormat::Q8_0, &blocks, out, inp),
                }])
            }
            _ => Weights::F32(w),
        };
        Linear {
            out,
            inp,
            w,
            isa: Isa::detect(),
        }
    }

    /// Wraps GGUF blocks (`out` rows of `inp` elements) when they are in a format computed
    /// natively; `None` otherwise.
    #[cfg(test)]
    pub(crate) fn from_file_blocks(
        ggml_type: GgmlType,
        bytes: &[u8],
        out: usize,
        inp: usize,
    ) -> Option<Linear> {
        Linear::from_file_parts(&[(ggml_type, bytes, out)], inp)
    }

    /// Wraps a matrix of `inp` columns whose row blocks the file stores each in its own
    /// format (`(format, bytes, rows)`, stacked in order), when every one is computed
    /// natively; `None` otherwise.
    pub(crate) fn from_file_parts(
        parts: &[(GgmlType, &[u8], usize)],
        inp: usize,
    ) -> Option<Linear> {
        if !inp.is_multiple_of(QK) {
            return None;
        }
        let mut first = 0;
        let mut stacked = Vec::with_capacity(parts.len());
        for &(ggml_type, bytes, rows) in parts {
            let format = BlockFormat::from_ggml(ggml_type)?;
            if !inp.is_multiple_of(QK * format.super_blocks()) {
                return None;
            }
            stacked.push(Part {
                first,
                rows,
                panels: Panels::from_file_blocks(format, bytes, rows, inp),
            });
            first += rows;
        }
        Some(Linear {
            out: first,
            inp,
            w: Weights::Blocks(stacked),
            isa: Isa::detect(),
        })
    }

    /// Rows of the matrix (the output's width).
    pub(crate) fn out(&self) -> usize {
        self.out
    }

    /// Bytes the weights take.
    #[cfg(test)]
    pub(crate) fn weight_bytes(&self) -> usize {
        match &self.w {
            Weights::F32(w) => w.len() * 4,
            Weights::Blocks(parts) => parts.iter().map(|p| p.panels.bytes()).sum(),
        }
    }

    /// `y[t, out] = x[t, in] · W^T`.
    pub(crate) fn forward(&self, x: &[f32], t: usize, y: &mut [f32]) {
        assert_eq!(x.len(), t * self.inp);
        assert_eq!(y.len(), t * self.out);
        match &self.w {
            Weights::F32(w) => gemm_f32(w, self.out, self.inp, x, t, y),
            Weights::Blocks(parts) => self.forward_blocks(parts, x, t, y),
        }
    }

    fn forward_blocks(&self, parts: &[Part], x: &[f32], t: usize, y: &mut [f32]) {
        let (out, isa) = (self.out, self.isa);
        // Q8_1's quants and scales are Q8_0's: one quantization serves every part.
        let sums = parts.iter().any(|p| p.panels.format.needs_sums());
        let xq = activations::quantize(x, self.inp, sums);
        let y = Out(y.as_mut_ptr());
        // Every part's panels, numbered in order.
        let panels: usize = parts.iter().map(|p| p.panels.count).sum();
        let locate = |mut i: usize| {
            for part in parts {
                if i < part.panels.count {
                    return (part, i);
                }
                i -= part.panels.count;
            }
            unreachable!("panel index within the parts")
        };
        // Each task takes a few panels (rows of W) and every activation row, in tiles of
        // MAX_X rows: the panels stay in L1 while the activations stream past.
        (0..panels)
            .into_par_iter()
            .with_min_len(4)
            .for_each(move |i| {
                let y = y;
                let (part, pi) = locate(i);
                let p = &part.panels;
                let panel = p.panel(pi);
                let rows = (part.rows - pi * PANEL_ROWS).min(PANEL_ROWS);
                let column = part.first + pi * PANEL_ROWS;
                let mut r0 = 0;
                while r0 < t {
                    let n = (t - r0).min(MAX_X);
                    let mut acts = Acts {
                        qs: [&[]; MAX_X],
                        d: [&[]; MAX_X],
                        s: [&[]; MAX_X],
                        n,
                    };
                    for i in 0..n {
                        (acts.qs[i], acts.d[i], acts.s[i]) = xq.row(r0 + i);
                    }
                    let tile = kernels::tile(isa, p.format, panel, p.blocks, &acts);
                    for (i, values) in tile.iter().take(n).enumerate() {
                        let at = (r0 + i) * out + column;
                        // SAFETY: row `r0 + i` < t and columns `at..at + rows` < out lie in
                        // `y`, and no other panel writes these columns.
                        let dst = unsafe { std::slice::from_raw_parts_mut(y.0.add(at), rows) };
                        dst.copy_from_slice(&values[..rows]);
                    }
                    r0 += n;
                }
            });
    }
}

fn gemm_f32(w: &[f32], out: usize, inp: usize, x: &[f32], t: usize, y: &mut [f32]) {
    // SAFETY: the slices hold exactly the elements the strides address (checked by the caller).
    unsafe {
        gemm::gemm(
            t,
            out,
            inp,
            y.as_mut_ptr(),
            1,
            out as isize,
            false,
            x.as_ptr(),
            1,
            inp as isize,
            w.as_ptr(),
            inp as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

#[cfg(test)]
mod tests;
