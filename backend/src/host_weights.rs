//! A layer's weights as every backend reads them: fused, shape-checked groups of tensors.
//!
//! A layer's weights as every backend reads them: groups of the [`WeightSource`]'s tensors,
//! checked against the config's shapes, with Q, K and V fused into one matrix (rows: Q heads,
//! then K, then V) and gate and up fused into another (rows: gate, then up), so that each takes
//! one GEMM. A backend reads a group in f32 or as the file encodes it, and turns it into its
//! own format (the file's blocks or Q8 on the CPU, bf16 or the file's blocks on a GPU).

use model::names::{self, LayerTensor};
use model::GgmlType;
use model::{LlamaConfig, LoadError, WeightSource};

/// One matrix (or vector) of a layer as backends use it: the file's tensors, by canonical name
/// and shape, whose rows are stacked in this order.
pub struct Group {
    /// The tensors, by name and shape, in the order they are stacked.
    pub tensors: Vec<(String, Vec<usize>)>,
}

/// Layer `l`'s groups: attention norm, QKV, O, FFN norm, gate/up, down.
pub fn layer_groups(c: &LlamaConfig, l: usize) -> [Group; 6] {
    let (h, hd, nh, nkv, inter) = (
        c.hidden_size,
        c.head_dim,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.intermediate_size,
    );
    let group = |parts: &[(LayerTensor, &[usize])]| Group {
        tensors: parts
            .iter()
            .map(|(t, shape)| (t.hf_name(l), shape.to_vec()))
            .collect(),
    };
    [
        group(&[(LayerTensor::AttnNorm, &[h])]),
        group(&[
            (LayerTensor::Q, &[nh * hd, h]),
            (LayerTensor::K, &[nkv * hd, h]),
            (LayerTensor::V, &[nkv * hd, h]),
        ]),
        group(&[(LayerTensor::O, &[h, nh * hd])]),
        group(&[(LayerTensor::FfnNorm, &[h])]),
        group(&[
            (LayerTensor::Gate, &[inter, h]),
            (LayerTensor::Up, &[inter, h]),
        ]),
        group(&[(LayerTensor::Down, &[h, inter])]),
    ]
}

/// One tensor of a group as the file stores it: its `rows` in `ggml_type`.
pub struct EncodedPart {
    pub ggml_type: GgmlType,
    pub bytes: Vec<u8>,
    pub rows: usize,
}

impl Group {
    /// A group of one tensor.
    pub fn one(name: &str, shape: &[usize]) -> Group {
        Group {
            tensors: vec![(name.to_owned(), shape.to_vec())],
        }
    }

    /// The group as the file stores it, rows stacked, when every tensor of it is stored in the
    /// same encoding ([`WeightSource::encoded`]), one of those in `accept`.
    pub fn encoded(
        &self,
        w: &dyn WeightSource,
        accept: &[GgmlType],
    ) -> Result<Option<(GgmlType, Vec<u8>)>, LoadError> {
        let mut kind = None;
        let mut bytes = Vec::new();
        for (name, shape) in &self.tensors {
            let Some(t) = w.encoded(name, shape)? else {
                return Ok(None);
            };
            if kind.is_some_and(|k| k != t.ggml_type) || !accept.contains(&t.ggml_type) {
                return Ok(None);
            }
            kind = Some(t.ggml_type);
            bytes.extend_from_slice(&t.bytes);
        }
        Ok(kind.map(|k| (k, bytes)))
    }

    /// Each tensor of the group as the file stores it, in order, when every one is stored in
    /// an encoding of `accept`, the same or not.
    pub fn encoded_parts(
        &self,
        w: &dyn WeightSource,
        accept: &[GgmlType],
    ) -> Result<Option<Vec<EncodedPart>>, LoadError> {
        let mut parts = Vec::with_capacity(self.tensors.len());
        for (name, shape) in &self.tensors {
            match w.encoded(name, shape)? {
                Some(t) if accept.contains(&t.ggml_type) => parts.push(EncodedPart {
                    ggml_type: t.ggml_type,
                    bytes: t.bytes.into_owned(),
                    rows: shape[0],
                }),
                _ => return Ok(None),
            }
        }
        Ok(Some(parts))
    }

    /// The group's values in f32, rows stacked.
    pub fn read(&self, w: &dyn WeightSource) -> Result<Vec<f32>, LoadError> {
        let mut out = Vec::new();
        for (name, shape) in &self.tensors {
            out.extend(w.tensor(name, shape)?.data);
        }
        Ok(out)
    }
}

/// Whether the LM head is a matrix of its own (else it is the embedding: tied, or absent from
/// the file).
pub(crate) fn has_untied_lm_head(c: &LlamaConfig, w: &dyn WeightSource) -> bool {
    !c.tie_word_embeddings && w.has(names::LM_HEAD)
}
