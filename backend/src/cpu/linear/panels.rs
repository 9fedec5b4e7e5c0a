//! Weights in GGUF's block formats, repacked into panels of [`PANEL_ROWS`] rows: block `b` of
//! the panel's rows lies together (their scales, then their quants), so a kernel computing
//! several rows at once reads one contiguous stream, and the same layout serves a single
//! activation row (decode) and many (prefill).
//!
//! A panel block, for 4 rows: `d[4]`, then `m[4]` (Q4_1 and Q4_K), then each row's quants (16
//! bytes of nibbles for the 4-bit formats, 32 signed bytes for Q8_0). For Q4_0, Q4_1 and Q8_0
//! these are the file's bytes, only reordered (scales in f16). Q4_K's super-blocks of 256 become
//! eight blocks of 32 with `d = d_super * sc` and `m = -dmin * min` in f32 (exact: an f16 times
//! a 6-bit integer) and the nibbles regrouped to Q4_1's order, so Q4_K runs Q4_1's kernel: 6
//! bits per weight rather than the file's 4.5, the same values. Q6_K's become blocks of 32 with
//! an f32 scale per half (`d * sc`, exact) and the 6-bit quants as 16 bytes of low nibbles and
//! 8 of high bit pairs: 8 bits per weight rather than 6.5625.

use half::f16;
use model::gguf::quant::GgmlType;

/// Weight rows per panel.
pub const PANEL_ROWS: usize = 4;
/// Elements per block, in every format here.
pub const QK: usize = 32;

/// The block formats computed without dequantizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// `x = (q - 8) d`, against Q8_0 activations.
    Q4_0,
    /// `x = q d + m`, against Q8_1 activations (which carry `d Σq` for the `m` term).
    Q4_1,
    /// `x = q d`, against Q8_0 activations.
    Q8_0,
    /// Q4_K as blocks of 32: `x = q d + m` with f32 `d` and `m`, against Q8_1 activations.
    Q4K,
    /// Q6_K as blocks of 32: `x = (q - 32) d`, a 6-bit `q` (16 bytes of low nibbles, 8 of
    /// high bit pairs) and an f32 `d` per half block, against Q8_0 activations.
    Q6K,
}

impl BlockFormat {
    pub fn from_ggml(t: GgmlType) -> Option<BlockFormat> {
        match t {
            GgmlType::Q4_0 => Some(BlockFormat::Q4_0),
            GgmlType::Q4_1 => Some(BlockFormat::Q4_1),
            GgmlType::Q8_0 => Some(BlockFormat::Q8_0),
            GgmlType::Q4_K => Some(BlockFormat::Q4K),
            GgmlType::Q6_K => Some(BlockFormat::Q6K),
            _ => None,
        }
    }

    fn ggml(self) -> GgmlType {
        match self {
            BlockFormat::Q4_0 => GgmlType::Q4_0,
            BlockFormat::Q4_1 => GgmlType::Q4_1,
            BlockFormat::Q8_0 => GgmlType::Q8_0,
            BlockFormat::Q4K => GgmlType::Q4_K,
            BlockFormat::Q6K => GgmlType::Q6_K,
        }
    }

    /// Bytes of one scale: f16, or f32 for the k-quants' products.
    pub fn scale_width(self) -> usize {
        match self {
            BlockFormat::Q4K | BlockFormat::Q6K => 4,
            _ => 2,
        }
    }

    /// Scales per row and block: `d`, then `m` where there is one (Q6_K: `d` of each half).
    fn scales(self) -> usize {
        match self {
            BlockFormat::Q4_1 | BlockFormat::Q4K | BlockFormat::Q6K => 2,
            _ => 1,
        }
    }

    /// Bytes of one row's block in a panel: scales, then quants.
    fn unit_bytes(self) -> usize {
        self.scales() * self.scale_width() + self.quant_bytes()
    }

    /// Bytes of one row's quants in a block.
    pub fn quant_bytes(self) -> usize {
        match self {
            BlockFormat::Q8_0 => 32,
            BlockFormat::Q6K => 24,
            _ => 16,
        }
    }

    /// Bytes of one panel block.
    pub fn panel_block_bytes(self) -> usize {
        PANEL_ROWS * self.unit_bytes()
    }

    /// Offset of the quants in a panel block.
    pub fn quants_offset(self) -> usize {
        PANEL_ROWS * self.scales() * self.scale_width()
    }

    /// Whether the activations need their per-block sums (`d Σq`), Q8_1 rather than Q8_0.
    pub fn needs_sums(self) -> bool {
        matches!(self, BlockFormat::Q4_1 | BlockFormat::Q4K)
    }

    /// One row's blocks of 32 as the panels hold them: per block its scales (`scale_width`
    /// bytes each), then its quants.
    fn units(self, row: &[u8]) -> Vec<u8> {
        match self {
            // The file's blocks are already scales then quants.
            BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q8_0 => row.to_vec(),
            BlockFormat::Q4K => {
                let mut out = Vec::with_capacity(row.len() / 144 * 8 * self.unit_bytes());
                for b in row.chunks_exact(144) {
                    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                    let dmin = f16::from_le_bytes([b[2], b[3]]).to_f32();
                    let (scales, qs) = (&b[4..16], &b[16..]);
                    for j in 0..8 {
                        let (sc, min) = model::gguf::quant::q4k_scale_min(j, scales);
                        out.extend((d * sc as f32).to_le_bytes());
                        out.extend((-(dmin * min as f32)).to_le_bytes());
                        // Sub-block j is the low (even j) or high (odd j) nibbles of 32 bytes.
                        let q = &qs[32 * (j / 2)..][..32];
                        let nibble = |i: usize| if j % 2 == 0 { q[i] & 0x0f } else { q[i] >> 4 };
                        out.extend((0..16).map(|i| nibble(i) | (nibble(i + 16) << 4)));
                    }
                }
                out
            }
            BlockFormat::Q6K => {
                let mut out = Vec::with_capacity(row.len() / 210 * 8 * self.unit_bytes());
                for b in row.chunks_exact(210) {
                    let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
                    let d = f16::from_le_bytes([b[208], b[209]]).to_f32();
                    // Element e: its low nibble and high bit pair where llama.cpp's layout puts
                    // them (halves of 128; within a half, four runs of 32), its scale sc[e / 16].
                    let q = |e: usize| {
                        let (h, r) = (e / 128, e % 128);
                        let (k, l) = (r / 32, r % 32);
                        let byte = ql[64 * h + l + 32 * (k % 2)];
                        let low = if k < 2 { byte & 0x0f } else { byte >> 4 };
                        low | (((qh[32 * h + l] >> (2 * k)) & 3) << 4)
                    };
                    for j in 0..8 {
                        for half in 0..2 {
                            out.extend((d * sc[2 * j + half] as i8 as f32).to_le_bytes());
                        }
                        let e = |i: usize| q(32 * j + i);
                        out.extend((0..16).map(|i| (e(i) & 0x0f) | ((e(i + 16) & 0x0f) << 4)));
                        out.extend((0..8).map(|i| {
                            (0..4).fold(0u8, |acc, k| acc | ((e(i + 8 * k) >> 4) << (2 * k)))
                        }));
                    }
                }
                out
            }
        }
    }
}

/// A `[out, inp]` weight matrix as panels (the last one padded with zero rows).
pub struct Panels {
    pub format: BlockFormat,
    /// Blocks per row.
    pub blocks: usize,
    pub count: usize,
    bytes: Vec<u8>,
}

impl Panels {
    /// Repacks `bytes`, `out` rows of `inp / 32` blocks of `format` as a GGUF file stores them.
    pub fn from_file_blocks(format: BlockFormat, bytes: &[u8], out: usize, inp: usize) -> Panels {
        let row_bytes = format
            .ggml()
            .bytes_for(inp as u64)
            .expect("rows of whole blocks") as usize;
        assert_eq!(
            bytes.len(),
            out * row_bytes,
            "block bytes for [{out}, {inp}]"
        );
        let blocks = inp / QK;
        let count = out.div_ceil(PANEL_ROWS);
        let (w, qb, ub, pb) = (
            format.scale_width(),
            format.quant_bytes(),
            format.unit_bytes(),
            format.panel_block_bytes(),
        );
        let sb = ub - qb;
        let mut packed = vec![0u8; count * blocks * pb];
        for (row, file_row) in bytes.chunks_exact(row_bytes).enumerate() {
            let (p, r) = (row / PANEL_ROWS, row % PANEL_ROWS);
            for (b, src) in format.units(file_row).chunks_exact(ub).enumerate() {
                let dst = &mut packed[(p * blocks + b) * pb..][..pb];
                // d, then m: each an array of PANEL_ROWS scales.
                for (k, scale) in src[..sb].chunks_exact(w).enumerate() {
                    let at = (k * PANEL_ROWS + r) * w;
                    dst[at..at + w].copy_from_slice(scale);
                }
                let at = format.quants_offset() + r * qb;
                dst[at..at + qb].copy_from_slice(&src[sb..]);
            }
        }
        Panels {
            format,
            blocks,
            count,
            bytes: packed,
        }
    }

    /// Panel `p`'s blocks.
    pub fn panel(&self, p: usize) -> &[u8] {
        let len = self.blocks * self.format.panel_block_bytes();
        &self.bytes[p * len..(p + 1) * len]
    }

    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// `w` (rows of `inp` f32s) in Q8_0 file blocks, rounded as llama.cpp's quantizer does.
pub fn quantize_q8_0(w: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(w.len() / QK * 34);
    let mut qs = [0i8; QK];
    for block in w.chunks_exact(QK) {
        let d = crate::cpu::linear::activations::quantize_block(block, &mut qs);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(qs.iter().map(|q| *q as u8));
    }
    out
}
