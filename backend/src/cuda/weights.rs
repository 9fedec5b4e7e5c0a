//! The model's weights on the device: matrices as the GGUF stores them where it can, the rest bf16.
//!
//! The model's weights on the device, read from the [`WeightSource`] one group at a time and
//! fused as every backend reads them ([`layer_groups`]). A layer's matrix (and an untied LM
//! head) whose tensors the GGUF stores in one of Q4_0, Q4_1, Q8_0, Q4_K or Q6_K stays so
//! ([`QuantMatrix`], multiplied by `super::quantized`; Q4_K as Q4_1 blocks of its sub-blocks,
//! Q6_K widened to a byte a value). Everything else is bf16: f32 values
//! (already dequantized and un-permuted by the loader) converted by `convert_f32`, or, when the
//! file stores them as Q8_0/Q4_0/Q4_1 or f16 (the embedding, a matrix whose tensors mix
//! encodings), uploaded as stored and decoded by the `dequant_*` kernels.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::error::CudaError;
use super::kernels::{ConvertF16, ConvertF32, DequantQ4_0, DequantQ4_1, DequantQ8_0, DevPtr, Grid};
use super::launch::{addr, Kernels};
use super::quantized::{Planes, QuantMatrix};
use crate::host_weights::{has_untied_lm_head, layer_groups, Group};
use model::names;
use model::GgmlType;
use model::{LlamaConfig, WeightSource};

/// bf16 values, carried as their 16 bits.
pub(crate) type Bf16Buf = CudaSlice<u16>;

/// A weight matrix on the device: bf16, or quantized as the file stores it.
pub(crate) enum DeviceMatrix {
    Bf16(Bf16Buf),
    Quantized(QuantMatrix),
}

/// A [`DeviceMatrix`]'s addresses, as a product takes them.
#[derive(Clone, Copy)]
pub(crate) enum MatrixAt {
    Bf16(super::kernels::DevPtr<super::kernels::Bf16>),
    Quantized(Planes),
}

impl DeviceMatrix {
    fn bytes(&self) -> u64 {
        match self {
            DeviceMatrix::Bf16(b) => 2 * b.len() as u64,
            DeviceMatrix::Quantized(q) => q.bytes(),
        }
    }

    pub(crate) fn at(&self, stream: &CudaStream) -> MatrixAt {
        match self {
            DeviceMatrix::Bf16(b) => MatrixAt::Bf16(addr(b, stream, 0)),
            DeviceMatrix::Quantized(q) => MatrixAt::Quantized(q.planes(stream)),
        }
    }
}

pub(crate) struct LayerWeights {
    pub attn_norm: Bf16Buf,
    /// `[(n_heads + 2 n_kv_heads) head_dim, hidden]`: Q rows, then K, then V.
    pub qkv: DeviceMatrix,
    pub o: DeviceMatrix,
    pub ffn_norm: Bf16Buf,
    /// `[2 intermediate, hidden]`: gate rows, then up.
    pub gate_up: DeviceMatrix,
    pub down: DeviceMatrix,
}

pub(crate) struct DeviceWeights {
    pub embed: Bf16Buf,
    pub layers: Vec<LayerWeights>,
    pub norm: Bf16Buf,
    /// `None` when tied to the embedding.
    lm_head: Option<DeviceMatrix>,
    /// Device bytes of all of the above.
    pub bytes: u64,
    /// Values of the largest quantized matrix (0 when none is): what a large step's decoded
    /// tiles may need.
    pub largest_quantized: usize,
}

impl DeviceWeights {
    pub(crate) fn upload(
        stream: &Arc<CudaStream>,
        kernels: &Kernels,
        c: &LlamaConfig,
        w: &dyn WeightSource,
    ) -> Result<DeviceWeights, CudaError> {
        let h = c.hidden_size;
        let mut bytes = 0u64;
        let mut largest_quantized = 0;
        let bf16 = |group: &Group| -> Result<Bf16Buf, CudaError> {
            Ok(match group.encoded(w, DEVICE_DECODED)? {
                Some((kind, encoded)) => decode(stream, kernels, kind, &encoded)?,
                None => to_bf16(stream, kernels, &group.read(w)?)?,
            })
        };
        let mut vector = |group: &Group| -> Result<Bf16Buf, CudaError> {
            let buf = bf16(group)?;
            bytes += 2 * buf.len() as u64;
            Ok(buf)
        };
        let embed = vector(&Group::one(names::EMBED, &[c.vocab_size, h]))?;
        let norm = vector(&Group::one(names::FINAL_NORM, &[h]))?;
        let norms = (0..c.num_hidden_layers)
            .map(|l| {
                let [attn_norm, _, _, ffn_norm, _, _] = layer_groups(c, l);
                Ok((vector(&attn_norm)?, vector(&ffn_norm)?))
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        let mut matrix = |group: &Group| -> Result<DeviceMatrix, CudaError> {
            let m = match group.encoded(w, QUANTIZED)? {
                Some((ty, encoded)) => {
                    let rows = group.tensors.iter().map(|(_, s)| s[0]).sum();
                    let inp = group.tensors[0].1[1];
                    let q = QuantMatrix::upload(stream, ty, &encoded, rows, inp)?;
                    largest_quantized = largest_quantized.max(q.elements());
                    DeviceMatrix::Quantized(q)
                }
                None => DeviceMatrix::Bf16(bf16(group)?),
            };
            bytes += m.bytes();
            Ok(m)
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for (l, (attn_norm, ffn_norm)) in norms.into_iter().enumerate() {
            let [_, qkv, o, _, gate_up, down] = layer_groups(c, l);
            layers.push(LayerWeights {
                attn_norm,
                qkv: matrix(&qkv)?,
                o: matrix(&o)?,
                ffn_norm,
                gate_up: matrix(&gate_up)?,
                down: matrix(&down)?,
            });
        }
        let lm_head = if has_untied_lm_head(c, w) {
            Some(matrix(&Group::one(names::LM_HEAD, &[c.vocab_size, h]))?)
        } else {
            None
        };
        stream.synchronize()?;
        Ok(DeviceWeights {
            embed,
            layers,
            norm,
            lm_head,
            bytes,
            largest_quantized,
        })
    }

    /// The LM head: its own matrix, or the embedding when tied.
    pub(crate) fn lm_head(&self, stream: &CudaStream) -> MatrixAt {
        match &self.lm_head {
            Some(m) => m.at(stream),
            None => MatrixAt::Bf16(addr(&self.embed, stream, 0)),
        }
    }
}

/// The GGUF encodings a matrix stays in on the device.
pub const QUANTIZED: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

/// Uploads `host` and converts it to bf16 on the device.
pub(crate) fn to_bf16(
    stream: &Arc<CudaStream>,
    kernels: &Kernels,
    host: &[f32],
) -> Result<Bf16Buf, CudaError> {
    let staging = stream.clone_htod(host)?;
    // SAFETY: every element is written by the conversion below before anything reads it.
    let out = unsafe { stream.alloc::<u16>(host.len()) }?;
    kernels.run(
        stream,
        Grid::Elements(host.len()),
        ConvertF32 {
            r#in: addr(&staging, stream, 0),
            out: addr(&out, stream, 0),
            n: host.len() as u64,
        },
    )?;
    stream.synchronize()?;
    Ok(out)
}

/// Uploads GGUF-encoded rows and decodes them to bf16 on the device: the quantized bytes cross
/// the bus, not f32.
/// The encodings `decode` turns into bf16 on the device.
pub const DEVICE_DECODED: &[GgmlType] = &[
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::F16,
];

pub(crate) fn decode(
    stream: &Arc<CudaStream>,
    kernels: &Kernels,
    kind: GgmlType,
    encoded: &[u8],
) -> Result<Bf16Buf, CudaError> {
    let (per_block, block_bytes) = kind.block();
    let blocks = encoded.len() / block_bytes as usize;
    let elements = blocks * per_block as usize;
    if !DEVICE_DECODED.contains(&kind) {
        return Err(CudaError::Unsupported(format!(
            "{kind:?} is not decoded on the device"
        )));
    }
    let staging = stream.clone_htod(encoded)?;
    // SAFETY: every element is written by the kernel below before anything reads it.
    let out_buf = unsafe { stream.alloc::<u16>(elements) }?;
    let (blocks_at, out) = (addr(&staging, stream, 0), addr(&out_buf, stream, 0));
    // One thread per 32-value block; f16 one per element (a "block" of one).
    let grid = Grid::Elements(blocks);
    let n_blocks = blocks as u64;
    match kind {
        GgmlType::Q8_0 => kernels.run(
            stream,
            grid,
            DequantQ8_0 {
                blocks: blocks_at,
                out,
                n_blocks,
            },
        ),
        GgmlType::Q4_0 => kernels.run(
            stream,
            grid,
            DequantQ4_0 {
                blocks: blocks_at,
                out,
                n_blocks,
            },
        ),
        GgmlType::Q4_1 => kernels.run(
            stream,
            grid,
            DequantQ4_1 {
                blocks: blocks_at,
                out,
                n_blocks,
            },
        ),
        // The staging bytes are the f16 values, two bytes each.
        _ => kernels.run(
            stream,
            grid,
            ConvertF16 {
                r#in: DevPtr::new(blocks_at.addr()),
                out,
                n: n_blocks,
            },
        ),
    }?;
    stream.synchronize()?;
    Ok(out_buf)
}
