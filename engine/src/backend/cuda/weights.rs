//! The model's weights on the device, in bf16: read from the [`WeightSource`] one tensor at a
//! time (f32, already dequantized from GGUF blocks and un-permuted by the loader), uploaded, and
//! converted on the device by the `convert_f32` kernel. The same fusions as the CPU backend:
//! Q, K and V in one matrix; gate and up in one.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::error::CudaError;
use super::launch::{addr, Arg, Kernels};
use crate::model::names::{self, LayerTensor};
use crate::model::{LlamaConfig, WeightSource};

/// bf16 values, carried as their 16 bits.
pub type Bf16Buf = CudaSlice<u16>;

pub struct LayerWeights {
    pub attn_norm: Bf16Buf,
    /// `[(n_heads + 2 n_kv_heads) head_dim, hidden]`: Q rows, then K, then V.
    pub qkv: Bf16Buf,
    pub o: Bf16Buf,
    pub ffn_norm: Bf16Buf,
    /// `[2 intermediate, hidden]`: gate rows, then up.
    pub gate_up: Bf16Buf,
    pub down: Bf16Buf,
}

pub struct DeviceWeights {
    pub embed: Bf16Buf,
    pub layers: Vec<LayerWeights>,
    pub norm: Bf16Buf,
    /// `None` when tied to the embedding.
    lm_head: Option<Bf16Buf>,
    /// Device bytes of all of the above.
    pub bytes: u64,
}

impl DeviceWeights {
    pub fn upload(
        stream: &Arc<CudaStream>,
        kernels: &Kernels,
        c: &LlamaConfig,
        w: &dyn WeightSource,
    ) -> Result<DeviceWeights, CudaError> {
        let (h, hd, nh, nkv, inter) = (
            c.hidden_size,
            c.head_dim,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.intermediate_size,
        );
        let mut bytes = 0u64;
        let mut put = |host: &[f32]| -> Result<Bf16Buf, CudaError> {
            bytes += 2 * host.len() as u64;
            to_bf16(stream, kernels, host)
        };
        let embed = put(&w.tensor(names::EMBED, &[c.vocab_size, h])?.data)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let t =
                |lt: LayerTensor, shape: &[usize]| w.tensor(&lt.hf_name(l), shape).map(|t| t.data);
            let mut qkv = t(LayerTensor::Q, &[nh * hd, h])?;
            qkv.extend(t(LayerTensor::K, &[nkv * hd, h])?);
            qkv.extend(t(LayerTensor::V, &[nkv * hd, h])?);
            let mut gate_up = t(LayerTensor::Gate, &[inter, h])?;
            gate_up.extend(t(LayerTensor::Up, &[inter, h])?);
            layers.push(LayerWeights {
                attn_norm: put(&t(LayerTensor::AttnNorm, &[h])?)?,
                qkv: put(&qkv)?,
                o: put(&t(LayerTensor::O, &[h, nh * hd])?)?,
                ffn_norm: put(&t(LayerTensor::FfnNorm, &[h])?)?,
                gate_up: put(&gate_up)?,
                down: put(&t(LayerTensor::Down, &[h, inter])?)?,
            });
        }
        let norm = put(&w.tensor(names::FINAL_NORM, &[h])?.data)?;
        let lm_head = if c.tie_word_embeddings || !w.has(names::LM_HEAD) {
            None
        } else {
            Some(put(&w.tensor(names::LM_HEAD, &[c.vocab_size, h])?.data)?)
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
    pub fn lm_head(&self) -> &Bf16Buf {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

/// Uploads `host` and converts it to bf16 on the device.
pub fn to_bf16(
    stream: &Arc<CudaStream>,
    kernels: &Kernels,
    host: &[f32],
) -> Result<Bf16Buf, CudaError> {
    let staging = stream.clone_htod(host)?;
    // SAFETY: every element is written by the conversion below before anything reads it.
    let out = unsafe { stream.alloc::<u16>(host.len()) }?;
    // convert_f32(const float* in, bf16* out, size_t n)
    kernels.launch_1d(
        stream,
        "convert_f32",
        host.len(),
        &[
            addr(&staging, stream, 0),
            addr(&out, stream, 0),
            Arg::Size(host.len() as u64),
        ],
    )?;
    stream.synchronize()?;
    Ok(out)
}
