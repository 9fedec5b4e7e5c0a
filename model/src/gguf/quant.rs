//! GGML tensor types and their dequantization to `f32`.
//!
//! Block layouts (llama.cpp `ggml-common.h`), 32 elements per block:
//! - `Q4_0`: f16 scale `d`, 16 bytes of nibbles; `x = (q - 8) * d`.
//! - `Q4_1`: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles; `x = q * d + m`.
//! - `Q8_0`: f16 scale `d`, 32 signed bytes; `x = q * d`.
//! - `Q5_0`: f16 `d`, 4 bytes of fifth bits, 16 bytes of nibbles; `x = (q - 16) * d`.
//! - `Q5_1`: f16 `d` and `m`, 4 bytes of fifth bits, 16 bytes of nibbles; `x = q * d + m`.
//!
//! In the 4-bit types byte `j` holds element `j` in its low nibble and element `j + 16` in its
//! high nibble.
//!
//! The k-quants, in super-blocks of 256 elements:
//! - `Q4_K` (144 bytes): f16 `d` and `dmin`, 12 bytes packing eight 6-bit scales and mins, 128
//!   bytes of nibbles; sub-block `j` of 32 is `x = d sc_j q - dmin m_j`.
//! - `Q6_K` (210 bytes): 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 signed 8-bit
//!   scales (one per 16 elements), f16 `d`; `x = d sc (q - 32)`.

use half::{bf16, f16};

/// The tensor types Vigil reads, by GGML's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit floats.
    F32 = 0,
    /// IEEE half precision.
    F16 = 1,
    /// Blocks of 32 4-bit values with an f16 scale.
    Q4_0 = 2,
    /// Blocks of 32 4-bit values with an f16 scale and minimum.
    Q4_1 = 3,
    /// Blocks of 32 5-bit values with an f16 scale.
    Q5_0 = 6,
    /// Blocks of 32 5-bit values with an f16 scale and minimum.
    Q5_1 = 7,
    /// Blocks of 32 8-bit values with an f16 scale.
    Q8_0 = 8,
    /// Super-blocks of 256 4-bit values in 8 groups with 6-bit scales and minimums.
    Q4_K = 12,
    /// Super-blocks of 256 6-bit values in 16 groups with 8-bit scales.
    Q6_K = 14,
    /// bfloat16.
    BF16 = 30,
}

impl GgmlType {
    /// The type of GGML's id `id`, if Vigil reads it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// Elements per block and bytes per block.
    pub const fn block(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_K => (256, 144),
            GgmlType::Q6_K => (256, 210),
        }
    }

    /// Bytes that `n` elements take, if `n` is a whole number of blocks (and the size fits).
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (elems, bytes) = self.block();
        if n.is_multiple_of(elems) {
            (n / elems).checked_mul(bytes)
        } else {
            None
        }
    }
}

/// Dequantizes `data` (a whole number of blocks of `ty`) into `out`, which must hold exactly the
/// elements `data` encodes.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    let (elems, bytes) = ty.block();
    let (elems, bytes) = (elems as usize, bytes as usize);
    assert_eq!(
        data.len() / bytes * elems,
        out.len(),
        "dequantize: size mismatch"
    );
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes(b.try_into().unwrap());
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(18)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                for j in 0..16 {
                    o[j] = ((b[2 + j] & 0x0f) as i32 - 8) as f32 * d;
                    o[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(20)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                let m = f16::from_le_bytes([b[2], b[3]]).to_f32();
                for j in 0..16 {
                    o[j] = (b[4 + j] & 0x0f) as f32 * d + m;
                    o[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(34)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                for j in 0..32 {
                    o[j] = b[2 + j] as i8 as f32 * d;
                }
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (bytes, offset) = if ty == GgmlType::Q5_0 {
                (22, 16)
            } else {
                (24, 0)
            };
            for (o, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(bytes)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                let (m, rest) = if ty == GgmlType::Q5_0 {
                    (0.0, &b[2..])
                } else {
                    (f16::from_le_bytes([b[2], b[3]]).to_f32(), &b[4..])
                };
                let qh = u32::from_le_bytes(rest[..4].try_into().unwrap());
                let qs = &rest[4..];
                for j in 0..16 {
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    let x0 = ((qs[j] & 0x0f) as u32 | h0) as i32 - offset;
                    let x1 = ((qs[j] >> 4) as u32 | h1) as i32 - offset;
                    o[j] = x0 as f32 * d + m;
                    o[j + 16] = x1 as f32 * d + m;
                }
            }
        }
        GgmlType::Q4_K => {
            for (o, b) in out.chunks_exact_mut(256).zip(data.chunks_exact(144)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                let dmin = f16::from_le_bytes([b[2], b[3]]).to_f32();
                let (scales, qs) = (&b[4..16], &b[16..]);
                // 64 elements per pass: 32 low nibbles, then 32 high nibbles of the same bytes.
                for (pass, (o, q)) in o.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
                    let (sc0, m0) = q4k_scale_min(2 * pass, scales);
                    let (sc1, m1) = q4k_scale_min(2 * pass + 1, scales);
                    let (d0, d1) = (d * sc0 as f32, d * sc1 as f32);
                    let (m0, m1) = (dmin * m0 as f32, dmin * m1 as f32);
                    for l in 0..32 {
                        o[l] = d0 * (q[l] & 0x0f) as f32 - m0;
                        o[32 + l] = d1 * (q[l] >> 4) as f32 - m1;
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for (o, b) in out.chunks_exact_mut(256).zip(data.chunks_exact(210)) {
                let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
                let d = f16::from_le_bytes([b[208], b[209]]).to_f32();
                // Two halves of 128: each reads 64 bytes of ql, 32 of qh and 8 scales.
                for half in 0..2 {
                    let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                    let (sc, o) = (&sc[8 * half..], &mut o[128 * half..]);
                    for l in 0..32 {
                        let is = l / 16;
                        let q = [
                            (ql[l] & 0x0f) | ((qh[l] & 3) << 4),
                            (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4),
                            (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                            (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                        ];
                        for (k, q) in q.into_iter().enumerate() {
                            let scale = sc[is + 2 * k] as i8 as f32;
                            o[l + 32 * k] = d * scale * (q as i32 - 32) as f32;
                        }
                    }
                }
            }
        }
    }
}

/// Q4_K's scale and min of sub-block `j` (0..8), 6 bits each, packed into 12 bytes
/// (llama.cpp's `get_scale_min_k4`).
pub fn q4k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::gguf::GgufFile;

    /// `model/tests/fixtures/quant.gguf` holds one tensor per type, quantized by the `gguf` Python
    /// package; `quant.json` holds what that package's dequantizer returns for each.
    #[test]
    fn dequantization_matches_the_gguf_python_package() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let file = GgufFile::open(&dir.join("quant.gguf")).unwrap();
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("quant.json")).unwrap())
                .unwrap();
        let tensors = expected["tensors"].as_object().unwrap();
        assert_eq!(tensors.len(), 10);
        for (name, want) in tensors {
            let info = file
                .tensor(name)
                .unwrap_or_else(|| panic!("{name} in quant.gguf"));
            assert_eq!(format!("{:?}", info.ggml_type), *name);
            let shape: Vec<u64> = expected["shapes"][name]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            assert_eq!(info.dims, vec![shape[1], shape[0]]);
            let mut got = vec![0f32; (shape[0] * shape[1]) as usize];
            dequantize(info.ggml_type, file.tensor_bytes(info).unwrap(), &mut got);
            for (i, (g, w)) in got.iter().zip(want.as_array().unwrap()).enumerate() {
                let w = w.as_f64().unwrap() as f32;
                assert!(
                    *g == w || (g - w).abs() <= 1e-6 * w.abs(),
                    "{name}[{i}]: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn block_sizes() {
        assert_eq!(GgmlType::Q4_1.bytes_for(64), Some(40));
        assert_eq!(GgmlType::Q8_0.bytes_for(33), None);
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q6_K.bytes_for(255), None);
        assert_eq!(GgmlType::Q5_0.bytes_for(64), Some(44));
        assert_eq!(GgmlType::from_id(13), None, "Q5_K is not supported");
    }
}
