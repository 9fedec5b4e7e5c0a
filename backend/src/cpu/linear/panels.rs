//! GGUF block weights repacked into panels of rows that kernels read together.
//!
//! Weights in GGUF's block formats, repacked into panels of [`PANEL_ROWS`] rows: block `b` of
//! the panel's rows lies together (their scales, then their quants), so a kernel computing
//! several rows at once reads one contiguous stream, and the same layout serves a single
//! activation row (decode) and many (prefill).
//!
//! A panel block, for 4 rows: `d[4]`, then `m[4]` (Q4_1 and Q4_K), then each row's quants (16
//! bytes of nibbles for the 4-bit formats, 32 signed bytes for Q8_0). For Q4_0, Q4_1 and Q8_0
//! these are the file's bytes, only reordered (scales in f16).
//!
//! The k-quants keep their super-blocks of 256: a panel's super-block is a header of the rows'
//! super-block scales in f32, then its eight blocks of 32, each with one byte per row and scale.
//! Q4_K: header `d[4]`, `-dmin[4]`; block `sc[4]`, `min[4]` (6-bit), then the nibbles regrouped
//! to Q4_1's order, so that `d sc` and `-dmin min` (exact products) make Q4_1's `d` and `m`:
//! 4.75 bits per weight (the file's 4.5). Q6_K: header `d[4]`; block the signed scales of each
//! half (`sc0[4]`, `sc1[4]`), then the 6-bit quants as 16 bytes of low nibbles and 8 of high bit
//! pairs: 6.625 bits per weight (the file's 6.5625).

use half::f16;
use model::GgmlType;

/// Weight rows per panel.
pub(super) const PANEL_ROWS: usize = 4;
/// Elements per block, in every format here.
pub(crate) const QK: usize = 32;

/// The block formats computed without dequantizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BlockFormat {
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
    pub(super) fn from_ggml(t: GgmlType) -> Option<BlockFormat> {
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

    /// Bytes of one scale in a block: f16, or one byte for the k-quants' small integers.
    pub(super) const fn scale_width(self) -> usize {
        match self {
            BlockFormat::Q4K | BlockFormat::Q6K => 1,
            _ => 2,
        }
    }

    /// Scales per row and block: `d`, then `m` where there is one (Q6_K: `d` of each half).
    const fn scales(self) -> usize {
        match self {
            BlockFormat::Q4_1 | BlockFormat::Q4K | BlockFormat::Q6K => 2,
            _ => 1,
        }
    }

    /// Bytes of one row's block in a panel: scales, then quants.
    const fn unit_bytes(self) -> usize {
        self.scales() * self.scale_width() + self.quant_bytes()
    }

    /// Bytes of one row's quants in a block.
    pub(super) const fn quant_bytes(self) -> usize {
        match self {
            BlockFormat::Q8_0 => 32,
            BlockFormat::Q6K => 24,
            _ => 16,
        }
    }

    /// Bytes of one panel block.
    pub(super) const fn panel_block_bytes(self) -> usize {
        PANEL_ROWS * self.unit_bytes()
    }

    /// Offset of the quants in a panel block.
    pub(super) const fn quants_offset(self) -> usize {
        PANEL_ROWS * self.scales() * self.scale_width()
    }

    /// Blocks per super-block: 8 for the k-quants, whose super-blocks carry a header.
    pub(super) const fn super_blocks(self) -> usize {
        match self {
            BlockFormat::Q4K | BlockFormat::Q6K => 8,
            _ => 1,
        }
    }

    /// Bytes of a super-block's header: f32 scales per row (Q4_K `d` and `-dmin`, Q6_K `d`).
    pub(super) const fn header_bytes(self) -> usize {
        match self {
            BlockFormat::Q4K => 2 * 4 * PANEL_ROWS,
            BlockFormat::Q6K => 4 * PANEL_ROWS,
            _ => 0,
        }
    }

    /// Bytes of a panel's super-block: header and blocks.
    pub(super) const fn super_bytes(self) -> usize {
        self.header_bytes() + self.super_blocks() * self.panel_block_bytes()
    }

    /// Offset of block `b` in a panel.
    pub(super) const fn block_offset(self, b: usize) -> usize {
        let n = self.super_blocks();
        b / n * self.super_bytes() + self.header_bytes() + b % n * self.panel_block_bytes()
    }

    /// Offset of the header of block `b`'s super-block in a panel.
    pub(super) const fn header_offset(self, b: usize) -> usize {
        b / self.super_blocks() * self.super_bytes()
    }

    /// Bytes of a panel of `blocks` blocks (a whole number of super-blocks).
    pub(super) const fn panel_bytes(self, blocks: usize) -> usize {
        blocks / self.super_blocks() * self.super_bytes()
    }

    /// Whether the activations need their per-block sums (`d Σq`), Q8_1 rather than Q8_0.
    pub(super) fn needs_sums(self) -> bool {
        matches!(self, BlockFormat::Q4_1 | BlockFormat::Q4K)
    }

    /// One row's super-blocks as the panels hold them: per super-block its header (one f32
    /// per header scale), then per block of 32 its scales (`scale_width` bytes each) and quants.
    fn units(self, row: &[u8]) -> Vec<u8> {
        match self {
            // The file's blocks are already scales then quants.
            BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q8_0 => row.to_vec(),
            BlockFormat::Q4K => {
                let mut out = Vec::with_capacity(row.len() / 144 * (8 + 8 * self.unit_bytes()));
                for b in row.chunks_exact(144) {
                    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                    let dmin = f16::from_le_bytes([b[2], b[3]]).to_f32();
                    out.extend(d.to_le_bytes());
                    out.extend((-dmin).to_le_bytes());
                    let (scales, qs) = (&b[4..16], &b[16..]);
                    for j in 0..8 {
                        let (sc, min) = model::q4k_scale_min(j, scales);
                        out.extend([sc, min]);
                        // Sub-block j is the low (even j) or high (odd j) nibbles of 32 bytes.
                        let q = &qs[32 * (j / 2)..][..32];
                        let nibble = |i: usize| if j % 2 == 0 { q[i] & 0x0f } else { q[i] >> 4 };
                        out.extend((0..16).map(|i| nibble(i) | (nibble(i + 16) << 4)));
                    }
                }
                out
            }
            BlockFormat::Q6K => {
                let mut out = Vec::with_capacity(row.len() / 210 * (4 + 8 * self.unit_bytes()));
                for b in row.chunks_exact(210) {
                    let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
                    let d = f16::from_le_bytes([b[208], b[209]]).to_f32();
                    out.extend(d.to_le_bytes());
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
                        out.extend([sc[2 * j], sc[2 * j + 1]]);
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
pub(super) struct Panels {
    pub format: BlockFormat,
    /// Blocks per row.
    pub blocks: usize,
    pub count: usize,
    bytes: Vec<u8>,
}

impl Panels {
    /// Repacks `bytes`, `out` rows of `inp / 32` blocks of `format` as a GGUF file stores them.
    pub(super) fn from_file_blocks(
        format: BlockFormat,
        bytes: &[u8],
        out: usize,
        inp: usize,
    ) -> Panels {
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
        let (w, qb, ub) = (
            format.scale_width(),
            format.quant_bytes(),
            format.unit_bytes(),
        );
        let sb = ub - qb;
        let (hb, per_super) = (format.header_bytes(), format.super_blocks());
        // Header scales per row: the header is that many arrays of PANEL_ROWS f32s.
        let hs = hb / (4 * PANEL_ROWS);
        let panel_bytes = format.panel_bytes(blocks);
        let mut packed = vec![0u8; count * panel_bytes];
        for (row, file_row) in bytes.chunks_exact(row_bytes).enumerate() {
            let (p, r) = (row / PANEL_ROWS, row % PANEL_ROWS);
            let panel = &mut packed[p * panel_bytes..(p + 1) * panel_bytes];
            let units = format.units(file_row);
            let mut src = &units[..];
            for b in 0..blocks {
                if b % per_super == 0 && hb > 0 {
                    let header = &mut panel[format.header_offset(b)..][..hb];
                    for k in 0..hs {
                        let at = (k * PANEL_ROWS + r) * 4;
                        header[at..at + 4].copy_from_slice(&src[4 * k..4 * k + 4]);
                    }
                    src = &src[4 * hs..];
                }
                let dst = &mut panel[format.block_offset(b)..][..format.panel_block_bytes()];
                // d, then m: each an array of PANEL_ROWS scales.
                for (k, scale) in src[..sb].chunks_exact(w).enumerate() {
                    let at = (k * PANEL_ROWS + r) * w;
                    dst[at..at + w].copy_from_slice(scale);
                }
                let at = format.quants_offset() + r * qb;
                dst[at..at + qb].copy_from_slice(&src[sb..ub]);
                src = &src[ub..];
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
    pub(super) fn panel(&self, p: usize) -> &[u8] {
        let len = self.format.panel_bytes(self.blocks);
        &self.bytes[p * len..(p + 1) * len]
    }

    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes.len()
    }
}
