//! The model's weights on the device, in bf16, uploaded one tensor at a time.
//!
//! The model's weights on the device, in bf16: read from the [`WeightSource`] one tensor at a
//! time (f32, already dequantized from GGUF blocks and un-permuted by the loader), uploaded, and
//! converted on the device by the `convert_f32` kernel; or, when the file stores it quantized
//! (GGUF Q8_0/Q4_0/Q4_1, or f16), uploaded as stored and decoded by the `dequant_*` kernels.
//! Fused as every backend reads them ([`layer_groups`]).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::error::CudaError;
use super::kernels::{ConvertF16, ConvertF32, DequantQ4_0, DequantQ4_1, DequantQ8_0, DevPtr, Grid};
use super::launch::{addr, Kernels};
use crate::host_weights::{has_untied_lm_head, layer_groups, Group};
use model::names;
use model::GgmlType;
use model::{LlamaConfig, WeightSource};

/// bf16 values, carried as their 16 bits.
pub(crate) type Bf16Buf = CudaSlice<u16>;

pub(crate) struct LayerWeights {
    pub attn_norm: Bf16Buf,
    /// `[(n_heads + 2 n_kv_heads) head_dim, hidden]`: Q rows, then K, then V.
    pub qkv: Bf16Buf,
    pub o: Bf16Buf,
    pub ffn_norm: Bf16Buf,
    /// `[2 intermediate, hidden]`: gate rows, then up.
    pub gate_up: Bf16Buf,
    pub down: Bf16Buf,
}

pub(crate) struct DeviceWeights {
    pub embed: Bf16Buf,
    pub layers: Vec<LayerWeights>,
    pub norm: Bf16Buf,
    /// `None` when tied to the embedding.
    lm_head: Option<Bf16Buf>,
    /// Device bytes of all of the above.
    pub bytes: u64,
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
        let mut put = |group: &Group| -> Result<Bf16Buf, CudaError> {
            let buf = match group.encoded(w, DEVICE_DECODED)? {
                Some((kind, encoded)) => decode(stream, kernels, kind, &encoded)?,
                None => to_bf16(stream, kernels, &group.read(w)?)?,
            };
            bytes += 2 * buf.len() as u64;
            Ok(buf)
        };
        let embed = put(&Group::one(names::EMBED, &[c.vocab_size, h]))?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let [attn_norm, qkv, o, ffn_norm, gate_up, down] = layer_groups(c, l);
            layers.push(LayerWeights {
                attn_norm: put(&attn_norm)?,
                qkv: put(&qkv)?,
                o: put(&o)?,
                ffn_norm: put(&ffn_norm)?,
                gate_up: put(&gate_up)?,
                down: put(&down)?,
            });
        }
        let norm = put(&Group::one(names::FINAL_NORM, &[h]))?;
        let lm_head = if has_untied_lm_head(c, w) {
            Some(put(&Group::one(names::LM_HEAD, &[c.vocab_size, h]))?)
        } else {
            None
        };
        Ok(DeviceWeights {
            embed,
            layers,
            norm,
            lm_head,
            bytes,
        })
    }

    /// The LM head: its own matrix, or the embedding when tied.
    pub(crate) fn lm_head(&self) -> &Bf16Buf {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

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
