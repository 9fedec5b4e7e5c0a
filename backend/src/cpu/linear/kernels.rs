//! Tile kernels: dot products of a panel of quantized weight rows with activation rows.
//!
//! Tile kernels: the dot products of one panel's [`PANEL_ROWS`] weight rows with `X`
//! activation rows (`X` up to [`MAX_X`]), over every block, accumulated in registers and
//! summed once at the end; the weight block is unpacked once and used `X` times, each
//! activation block loaded once and used for every row.
//!
//! Three implementations, chosen once at run time: AVX-512 VNNI (`vpdpbusd` on 256-bit
//! registers, as llama.cpp uses where the CPU has it), AVX2 (`maddubs` + `madd`), and a
//! portable one that the others are tested against.

use half::f16;

use super::panels::{BlockFormat, PANEL_ROWS, QK};

/// Most activation rows per tile.
pub(super) const MAX_X: usize = 4;

/// One tile's activation rows: per row its quants, block scales and (for Q4_1 and Q4_K) block
/// sums.
pub(super) struct Acts<'a> {
    pub qs: [&'a [i8]; MAX_X],
    pub d: [&'a [f32]; MAX_X],
    pub s: [&'a [f32]; MAX_X],
    pub n: usize,
}

/// The instruction set the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Isa {
    /// The best this CPU runs.
    pub(super) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            if avx2 && has!("avx512vnni") && has!("avx512vl") {
                return Isa::Avx512Vnni;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every instruction set this CPU runs, best first.
    #[cfg(test)]
    pub(super) fn available() -> Vec<Isa> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            match Isa::detect() {
                Isa::Avx512Vnni => all.extend([Isa::Avx512Vnni, Isa::Avx2]),
                Isa::Avx2 => all.push(Isa::Avx2),
                Isa::Portable => {}
            }
        }
        all.push(Isa::Portable);
        all
    }
}

/// `out[x][r]`: panel row `r` · activation row `x`, for `x < acts.n`.
pub(super) fn tile(
    isa: Isa,
    format: BlockFormat,
    panel: &[u8],
    blocks: usize,
    acts: &Acts,
) -> [[f32; PANEL_ROWS]; MAX_X] {
    assert!(blocks.is_multiple_of(format.super_blocks()));
    assert!(panel.len() >= format.panel_bytes(blocks));
    assert!((1..=MAX_X).contains(&acts.n));
    for x in 0..acts.n {
        assert!(acts.qs[x].len() >= blocks * QK && acts.d[x].len() >= blocks);
        assert!(!format.needs_sums() || acts.s[x].len() >= blocks);
    }
    match isa {
        Isa::Portable => portable(format, panel, blocks, acts),
        // SAFETY: `detect` found the features; the slices were checked above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::avx2::tile(format, panel, blocks, acts) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { x86::vnni::tile(format, panel, blocks, acts) },
    }
}

/// Row `r`'s two scales for block `b` of `panel`: `d` and `m` (Q4_1, Q4_K), `d` of each half
/// (Q6_K), or `d` and 0. The k-quants' are products of the super-block's f32 and the block's
/// small integers, exact in f32.
fn block_scales(format: BlockFormat, panel: &[u8], b: usize, r: usize) -> (f32, f32) {
    let blk = &panel[format.block_offset(b)..];
    let header = &panel[format.header_offset(b)..];
    let f16_at = |i: usize| f16::from_le_bytes([blk[2 * i], blk[2 * i + 1]]).to_f32();
    let f32_at = |i: usize| f32::from_le_bytes(header[4 * i..4 * i + 4].try_into().unwrap());
    match format {
        BlockFormat::Q4_0 | BlockFormat::Q8_0 => (f16_at(r), 0.0),
        BlockFormat::Q4_1 => (f16_at(r), f16_at(PANEL_ROWS + r)),
        BlockFormat::Q4K => (
            f32_at(r) * blk[r] as f32,
            f32_at(PANEL_ROWS + r) * blk[PANEL_ROWS + r] as f32,
        ),
        BlockFormat::Q6K => (
            f32_at(r) * blk[r] as i8 as f32,
            f32_at(r) * blk[PANEL_ROWS + r] as i8 as f32,
        ),
    }
}

/// Weight row `r`'s 32 quants in block `blk` as integers (`q - 8` for Q4_0).
fn weight_quants(format: BlockFormat, blk: &[u8], r: usize) -> [i32; QK] {
    let qs = &blk[format.quants_offset() + r * format.quant_bytes()..][..format.quant_bytes()];
    let mut w = [0i32; QK];
    match format {
        BlockFormat::Q8_0 => {
            for (w, q) in w.iter_mut().zip(qs) {
                *w = *q as i8 as i32;
            }
        }
        BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q4K | BlockFormat::Q6K => {
            let offset = match format {
                BlockFormat::Q4_0 => 8,
                BlockFormat::Q6K => 32,
                _ => 0,
            };
            // Q6_K's high bit pairs: byte i holds elements i, i + 8, i + 16, i + 24.
            let high = |e: usize| match format {
                BlockFormat::Q6K => (((qs[16 + e % 8] >> (2 * (e / 8))) & 3) << 4) as i32,
                _ => 0,
            };
            for j in 0..16 {
                w[j] = ((qs[j] & 0x0f) as i32 | high(j)) - offset;
                w[j + 16] = ((qs[j] >> 4) as i32 | high(j + 16)) - offset;
            }
        }
    }
    w
}

// `r` and `x` index the weights, the activations and the results alike.
#[allow(clippy::needless_range_loop)]
fn portable(
    format: BlockFormat,
    panel: &[u8],
    blocks: usize,
    acts: &Acts,
) -> [[f32; PANEL_ROWS]; MAX_X] {
    let mut out = [[0f32; PANEL_ROWS]; MAX_X];
    for b in 0..blocks {
        let blk = &panel[format.block_offset(b)..][..format.panel_block_bytes()];
        for r in 0..PANEL_ROWS {
            let w = weight_quants(format, blk, r);
            let (dw, second) = block_scales(format, panel, b, r);
            for x in 0..acts.n {
                let xq = &acts.qs[x][b * QK..(b + 1) * QK];
                let dot = |range: std::ops::Range<usize>| -> i32 {
                    range.map(|i| w[i] * xq[i] as i32).sum()
                };
                if format == BlockFormat::Q6K {
                    // A scale per half block.
                    out[x][r] += dot(0..16) as f32 * (dw * acts.d[x][b]);
                    out[x][r] += dot(16..32) as f32 * (second * acts.d[x][b]);
                    continue;
                }
                out[x][r] += dot(0..QK) as f32 * (dw * acts.d[x][b]);
                if format.needs_sums() {
                    out[x][r] += second * acts.s[x][b];
                }
            }
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    /// The AVX2 tile kernel, with `$dot(a: unsigned bytes, b: signed bytes)` giving eight i32
    /// sums of four products each.
    macro_rules! tile_kernel {
        ($features:literal, $dot:path) => {
            use std::arch::x86_64::*;

            use super::super::{Acts, BlockFormat, MAX_X, PANEL_ROWS, QK};

            /// # Safety
            /// The CPU has `$features`; `tile` checked the slices.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn tile(
                format: BlockFormat,
                panel: &[u8],
                blocks: usize,
                acts: &Acts,
            ) -> [[f32; PANEL_ROWS]; MAX_X] {
                let (p, b) = (panel.as_ptr(), blocks);
                match (format, acts.n) {
                    (BlockFormat::Q4_0, 1) => run::<1, 0>(p, b, acts),
                    (BlockFormat::Q4_0, 2) => run::<2, 0>(p, b, acts),
                    (BlockFormat::Q4_0, 3) => run::<3, 0>(p, b, acts),
                    (BlockFormat::Q4_0, _) => run::<4, 0>(p, b, acts),
                    (BlockFormat::Q4_1, 1) => run::<1, 1>(p, b, acts),
                    (BlockFormat::Q4_1, 2) => run::<2, 1>(p, b, acts),
                    (BlockFormat::Q4_1, 3) => run::<3, 1>(p, b, acts),
                    (BlockFormat::Q4_1, _) => run::<4, 1>(p, b, acts),
                    (BlockFormat::Q8_0, 1) => run::<1, 2>(p, b, acts),
                    (BlockFormat::Q8_0, 2) => run::<2, 2>(p, b, acts),
                    (BlockFormat::Q8_0, 3) => run::<3, 2>(p, b, acts),
                    (BlockFormat::Q8_0, _) => run::<4, 2>(p, b, acts),
                    (BlockFormat::Q4K, 1) => run::<1, 3>(p, b, acts),
                    (BlockFormat::Q4K, 2) => run::<2, 3>(p, b, acts),
                    (BlockFormat::Q4K, 3) => run::<3, 3>(p, b, acts),
                    (BlockFormat::Q4K, _) => run::<4, 3>(p, b, acts),
                    (BlockFormat::Q6K, 1) => run::<1, 4>(p, b, acts),
                    (BlockFormat::Q6K, 2) => run::<2, 4>(p, b, acts),
                    (BlockFormat::Q6K, 3) => run::<3, 4>(p, b, acts),
                    (BlockFormat::Q6K, _) => run::<4, 4>(p, b, acts),
                }
            }

            const Q4_0: u8 = 0;
            const Q4_1: u8 = 1;
            const Q8_0: u8 = 2;
            /// Q4_K as blocks of 32: Q4_1 with `d sc` and `-dmin min` for scales.
            const Q4K: u8 = 3;
            /// Q6_K as blocks of 32: 6-bit quants, `d sc` for each half block.
            const Q6K: u8 = 4;

            /// The kernel's constant format, whose layout (`BlockFormat`'s const methods) the
            /// kernel reads.
            const fn format(f: u8) -> BlockFormat {
                match f {
                    Q4_0 => BlockFormat::Q4_0,
                    Q4_1 => BlockFormat::Q4_1,
                    Q8_0 => BlockFormat::Q8_0,
                    Q4K => BlockFormat::Q4K,
                    _ => BlockFormat::Q6K,
                }
            }

            /// Four bytes at `p` as f32s, unsigned or signed.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn bytes_ps(p: *const u8, signed: bool) -> __m128 {
                let v = _mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32));
                _mm_cvtepi32_ps(if signed {
                    _mm_cvtepi8_epi32(v)
                } else {
                    _mm_cvtepu8_epi32(v)
                })
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn run<const X: usize, const F: u8>(
                panel: *const u8,
                blocks: usize,
                acts: &Acts,
            ) -> [[f32; PANEL_ROWS]; MAX_X] {
                let mut acc = [[_mm256_setzero_ps(); X]; PANEL_ROWS];
                let mut mins = [_mm_setzero_ps(); X];
                let low128 = _mm_set1_epi8(0x0f);
                let eight = _mm256_set1_epi8(8);
                let xq: [*const i8; X] = std::array::from_fn(|x| acts.qs[x].as_ptr());
                let xd: [*const f32; X] = std::array::from_fn(|x| acts.d[x].as_ptr());
                let xs: [*const f32; X] = std::array::from_fn(|x| acts.s[x].as_ptr());
                for b in 0..blocks {
                    let blk = panel.add(format(F).block_offset(b));
                    // The k-quants' super-block scales, one f32 per row.
                    let header = panel.add(format(F).header_offset(b)) as *const f32;
                    let dw = lanes(if F == Q4K || F == Q6K {
                        _mm_mul_ps(_mm_loadu_ps(header), bytes_ps(blk, F == Q6K))
                    } else {
                        _mm_cvtph_ps(_mm_loadl_epi64(blk as *const __m128i))
                    });
                    let xv: [__m256i; X] = std::array::from_fn(|x| {
                        _mm256_loadu_si256(xq[x].add(b * QK) as *const __m256i)
                    });
                    // The activation rows' scales, broadcast once per block: each weight row's
                    // product with them is then one vector multiplication.
                    let dx: [__m256; X] = std::array::from_fn(|x| _mm256_set1_ps(*xd[x].add(b)));
                    if F == Q4_1 || F == Q4K {
                        let m = if F == Q4K {
                            _mm_mul_ps(_mm_loadu_ps(header.add(4)), bytes_ps(blk.add(4), false))
                        } else {
                            _mm_cvtph_ps(_mm_loadl_epi64(blk.add(8) as *const __m128i))
                        };
                        for x in 0..X {
                            mins[x] = _mm_fmadd_ps(m, _mm_set1_ps(*xs[x].add(b)), mins[x]);
                        }
                    }
                    let qs = blk.add(format(F).quants_offset());
                    // Q6_K's second scale of each row: the half block's lanes 4..8.
                    let dw2 = if F == Q6K {
                        lanes(_mm_mul_ps(_mm_loadu_ps(header), bytes_ps(blk.add(4), true)))
                    } else {
                        [0.0; 4]
                    };
                    for r in 0..PANEL_ROWS {
                        let dwr = if F == Q6K {
                            _mm256_set_m128(_mm_set1_ps(dw2[r]), _mm_set1_ps(dw[r]))
                        } else {
                            _mm256_set1_ps(dw[r])
                        };
                        let w = if F == Q8_0 {
                            _mm256_loadu_si256(qs.add(r * 32) as *const __m256i)
                        } else if F == Q6K {
                            let row = qs.add(r * 24);
                            let q = _mm_loadu_si128(row as *const __m128i);
                            let lo = _mm_and_si128(q, low128);
                            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low128);
                            // Byte i of the 8 holds the high pairs of elements i + 8k in bits
                            // 2k..2k+2: 64-bit lane k shifted by 2k puts them in order.
                            let bits = std::ptr::read_unaligned(row.add(16) as *const i64);
                            let pairs = _mm256_srlv_epi64(
                                _mm256_set1_epi64x(bits),
                                _mm256_set_epi64x(6, 4, 2, 0),
                            );
                            let pairs = _mm256_and_si256(pairs, _mm256_set1_epi8(3));
                            let q = _mm256_or_si256(
                                _mm256_set_m128i(hi, lo),
                                _mm256_slli_epi16(pairs, 4),
                            );
                            _mm256_sub_epi8(q, _mm256_set1_epi8(32))
                        } else {
                            let q = _mm_loadu_si128(qs.add(r * 16) as *const __m128i);
                            let lo = _mm_and_si128(q, low128);
                            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low128);
                            let w = _mm256_set_m128i(hi, lo);
                            if F == Q4_0 {
                                _mm256_sub_epi8(w, eight)
                            } else {
                                w
                            }
                        };
                        // Q4_1's and Q4_K's quants are unsigned already; signed ones move their
                        // sign onto the activations.
                        let unsigned = F == Q4_1 || F == Q4K;
                        let a = if unsigned { w } else { _mm256_sign_epi8(w, w) };
                        for x in 0..X {
                            let bx = if unsigned {
                                xv[x]
                            } else {
                                _mm256_sign_epi8(xv[x], w)
                            };
                            let dot = $dot(a, bx);
                            let d = _mm256_mul_ps(dwr, dx[x]);
                            acc[r][x] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), d, acc[r][x]);
                        }
                    }
                }
                let mut out = [[0f32; PANEL_ROWS]; MAX_X];
                for x in 0..X {
                    let m = lanes(mins[x]);
                    for r in 0..PANEL_ROWS {
                        out[x][r] = hsum(acc[r][x]) + m[r];
                    }
                }
                out
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn lanes(v: __m128) -> [f32; 4] {
                let mut out = [0f32; 4];
                _mm_storeu_ps(out.as_mut_ptr(), v);
                out
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn hsum(v: __m256) -> f32 {
                let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                _mm_cvtss_f32(s)
            }
        };
    }

    pub(super) mod avx2 {
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn dot(
            a: std::arch::x86_64::__m256i,
            b: std::arch::x86_64::__m256i,
        ) -> std::arch::x86_64::__m256i {
            use std::arch::x86_64::*;
            // Pairs of products fit in i16: |q| <= 127 and weights <= 15 or |w| <= 127.
            _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))
        }
        tile_kernel!("avx2,fma,f16c", dot);
    }

    pub(super) mod vnni {
        #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
        #[inline]
        unsafe fn dot(
            a: std::arch::x86_64::__m256i,
            b: std::arch::x86_64::__m256i,
        ) -> std::arch::x86_64::__m256i {
            use std::arch::x86_64::*;
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b)
        }
        tile_kernel!("avx2,fma,f16c,avx512vnni,avx512vl", dot);
    }
}
