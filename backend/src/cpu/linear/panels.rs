//! Weights in GGUF's block formats, repacked into panels of [`PANEL_ROWS`] rows: block `b` of
//! the panel's rows lies together (their scales, then their quants), so a kernel computing
//! several rows at once reads one contiguous stream, and the same layout serves a single
//! activation row (decode) and many (prefill).
//!
//! A panel block, for 4 rows: `d[4]` (f16), then `m[4]` (f16, Q4_1 only), then each row's
//! quants as the file stores them (16 bytes of nibbles for Q4_0/Q4_1, 32 signed bytes for
//! Q8_0). The values are the file's, bit for bit; only their order changes.

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
}

impl BlockFormat {
    pub fn from_ggml(t: GgmlType) -> Option<BlockFormat> {
        match t {
            GgmlType::Q4_0 => Some(BlockFormat::Q4_0),
            GgmlType::Q4_1 => Some(BlockFormat::Q4_1),
            GgmlType::Q8_0 => Some(BlockFormat::Q8_0),
            _ => None,
        }
    }

    /// Bytes of one block in the file: scales, then quants.
    fn file_block_bytes(self) -> usize {
        self.scale_bytes() + self.quant_bytes()
    }

    /// Bytes of one row's scales in a block: `d`, and `m` for Q4_1.
    fn scale_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_1 => 4,
            _ => 2,
        }
    }

    /// Bytes of one row's quants in a block.
    pub fn quant_bytes(self) -> usize {
        match self {
            BlockFormat::Q8_0 => 32,
            _ => 16,
        }
    }

    /// Bytes of one panel block.
    pub fn panel_block_bytes(self) -> usize {
        PANEL_ROWS * self.file_block_bytes()
    }

    /// Offset of the quants in a panel block.
    pub fn quants_offset(self) -> usize {
        PANEL_ROWS * self.scale_bytes()
    }

    /// Whether the activations need their per-block sums (`d Σq`), Q8_1 rather than Q8_0.
    pub fn needs_sums(self) -> bool {
        self == BlockFormat::Q4_1
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
        assert!(inp.is_multiple_of(QK), "rows of whole blocks");
        let blocks = inp / QK;
        let fb = format.file_block_bytes();
        assert_eq!(
            bytes.len(),
            out * blocks * fb,
            "block bytes for [{out}, {inp}]"
        );
        let count = out.div_ceil(PANEL_ROWS);
        let (sb, qb, pb) = (
            format.scale_bytes(),
            format.quant_bytes(),
            format.panel_block_bytes(),
        );
        let mut packed = vec![0u8; count * blocks * pb];
        for row in 0..out {
            let (p, r) = (row / PANEL_ROWS, row % PANEL_ROWS);
            for b in 0..blocks {
                let src = &bytes[(row * blocks + b) * fb..][..fb];
                let dst = &mut packed[(p * blocks + b) * pb..][..pb];
                // d, then m: each an array of PANEL_ROWS f16s.
                for (k, half) in src[..sb].chunks_exact(2).enumerate() {
                    let at = k * 2 * PANEL_ROWS + 2 * r;
                    dst[at..at + 2].copy_from_slice(half);
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
