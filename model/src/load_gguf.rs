//! A Llama model from a GGUF file: config, weights and tokenizer from its metadata.
//!
//! A Llama model from a GGUF file: config from `llama.*` metadata, weights dequantized tensor by
//! tensor (with llama.cpp's Q/K permutation undone), tokenizer from `tokenizer.ggml.*`.

use std::path::Path;

use crate::error::check_shape;
use crate::gguf::reader::TensorInfo;
use crate::gguf::{quant, GgufFile};
use crate::names;
use crate::tokenizer::Tokenizer;
use crate::{EncodedTensor, HostTensor, LlamaConfig, LoadError, Model, WeightSource};

pub(crate) fn load(path: &Path) -> Result<Model, LoadError> {
    let file = GgufFile::open(path)?;
    let config = LlamaConfig::from_gguf(&file)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    Ok(Model {
        path: path.to_owned(),
        config: config.clone(),
        weights: Box::new(GgufWeights { file, config }),
        tokenizer,
    })
}

struct GgufWeights {
    file: GgufFile,
    config: LlamaConfig,
}

impl WeightSource for GgufWeights {
    fn has(&self, name: &str) -> bool {
        names::hf_to_gguf(name).is_some_and(|g| self.file.tensor(&g).is_some())
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<HostTensor, LoadError> {
        let (info, bytes) = self.stored(name, shape)?;
        let mut data = vec![0f32; info.n_elements() as usize];
        quant::dequantize(info.ggml_type, bytes, &mut data);
        if let Some(heads) = self.permuted_heads(name) {
            data = unpermute_rows(&data, heads, shape[0] / heads, shape[1]);
        }
        Ok(HostTensor {
            shape: shape.to_vec(),
            data,
        })
    }

    fn encoded(&self, name: &str, shape: &[usize]) -> Result<Option<EncodedTensor<'_>>, LoadError> {
        use quant::GgmlType::*;
        let (info, bytes) = self.stored(name, shape)?;
        if !matches!(info.ggml_type, Q8_0 | Q4_0 | Q4_1 | Q4_K | Q6_K | F16) {
            return Ok(None);
        }
        let bytes = match self.permuted_heads(name) {
            // Rows are whole blocks, so reordering rows of the encoded bytes is exact.
            Some(heads) => {
                let row_bytes = bytes.len() / shape[0];
                unpermute_rows(bytes, heads, shape[0] / heads, row_bytes).into()
            }
            None => bytes.into(),
        };
        Ok(Some(EncodedTensor {
            ggml_type: info.ggml_type,
            bytes,
        }))
    }
}

impl GgufWeights {
    /// The tensor's entry and bytes in the file, its shape checked.
    fn stored(&self, name: &str, shape: &[usize]) -> Result<(&TensorInfo, &[u8]), LoadError> {
        let path = &self.file.path;
        let gguf_name = names::hf_to_gguf(name).unwrap_or_else(|| name.to_owned());
        let info = self
            .file
            .tensor(&gguf_name)
            .ok_or_else(|| LoadError::Tensor {
                file: path.clone(),
                tensor: gguf_name.clone(),
                what: "missing".into(),
            })?;
        let got: Vec<usize> = info.dims.iter().rev().map(|d| *d as usize).collect();
        check_shape(path, &gguf_name, &got, shape)?;
        Ok((info, self.file.tensor_bytes(info)?))
    }

    /// For Q and K: the heads whose rows llama.cpp permuted.
    fn permuted_heads(&self, name: &str) -> Option<usize> {
        if name.ends_with("self_attn.q_proj.weight") {
            Some(self.config.num_attention_heads)
        } else if name.ends_with("self_attn.k_proj.weight") {
            Some(self.config.num_key_value_heads)
        } else {
            None
        }
    }
}

/// Undoes llama.cpp's Q/K permutation: its converter reorders each head's rows from HF's
/// half-split RoPE layout to interleaved pairs. Row `h*hd + 2i + j` of the GGUF tensor is row
/// `h*hd + j*hd/2 + i` of the HF tensor.
pub(crate) fn unpermute_rows<T: Copy + Default>(
    data: &[T],
    heads: usize,
    head_dim: usize,
    cols: usize,
) -> Vec<T> {
    let mut out = vec![T::default(); data.len()];
    let half = head_dim / 2;
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_dim + 2 * i + j;
                let dst = h * head_dim + j * half + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp's convert: w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (heads, hd, cols) = (2, 4, 3);
        let hf: Vec<f32> = (0..heads * hd * cols).map(|x| x as f32).collect();
        let mut permuted = vec![0f32; hf.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    let src_row = h * hd + j * (hd / 2) + i; // [h, j, i]
                    let dst_row = h * hd + i * 2 + j; // [h, i, j]
                    permuted[dst_row * cols..(dst_row + 1) * cols]
                        .copy_from_slice(&hf[src_row * cols..(src_row + 1) * cols]);
                }
            }
        }
        assert_ne!(permuted, hf);
        assert_eq!(unpermute_rows(&permuted, heads, hd, cols), hf);
    }
}
