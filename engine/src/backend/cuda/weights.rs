//! The model's weights on the device, in bf16: read from the [`WeightSource`] one tensor at a
//! time (f32, already dequantized from GGUF blocks and un-permuted by the loader), uploaded, and
//! converted on the device by the `convert_f32` kernel; fused as every backend reads them
//! ([`HostLayer`]).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::error::CudaError;
use super::launch::{addr, Arg, Kernels};
use crate::backend::host_weights::{untied_lm_head, HostLayer};
use crate::model::names;
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
        let h = c.hidden_size;
        let mut bytes = 0u64;
        let mut put = |host: &[f32]| -> Result<Bf16Buf, CudaError> {
            bytes += 2 * host.len() as u64;
            to_bf16(stream, kernels, host)
        };
        let embed = put(&w.tensor(names::EMBED, &[c.vocab_size, h])?.data)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let host = HostLayer::read(c, w, l)?;
            layers.push(LayerWeights {
                attn_norm: put(&host.attn_norm)?,
                qkv: put(&host.qkv)?,
                o: put(&host.o)?,
                ffn_norm: put(&host.ffn_norm)?,
                gate_up: put(&host.gate_up)?,
                down: put(&host.down)?,
            });
        }
        let norm = put(&w.tensor(names::FINAL_NORM, &[h])?.data)?;
        let lm_head = untied_lm_head(c, w)?.map(|m| put(&m)).transpose()?;
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
