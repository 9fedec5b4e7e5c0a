//! Canonical (HF) tensor names of a Llama model.

/// The token embedding matrix.
pub const EMBED: &str = "model.embed_tokens.weight";
/// The RMSNorm weight after the last layer.
pub const FINAL_NORM: &str = "model.norm.weight";
/// The output projection (absent when tied to the embedding).
pub const LM_HEAD: &str = "lm_head.weight";

/// A per-layer tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerTensor {
    /// RMSNorm before attention.
    AttnNorm,
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Attention output projection.
    O,
    /// RMSNorm before the MLP.
    FfnNorm,
    /// The MLP's gate projection.
    Gate,
    /// The MLP's up projection.
    Up,
    /// The MLP's down projection.
    Down,
}

impl LayerTensor {
    /// Every tensor of a layer.
    pub const ALL: [LayerTensor; 9] = [
        LayerTensor::AttnNorm,
        LayerTensor::Q,
        LayerTensor::K,
        LayerTensor::V,
        LayerTensor::O,
        LayerTensor::FfnNorm,
        LayerTensor::Gate,
        LayerTensor::Up,
        LayerTensor::Down,
    ];

    /// The HF name in layer `layer`.
    pub fn hf_name(self, layer: usize) -> String {
        let suffix = match self {
            LayerTensor::AttnNorm => "input_layernorm.weight",
            LayerTensor::Q => "self_attn.q_proj.weight",
            LayerTensor::K => "self_attn.k_proj.weight",
            LayerTensor::V => "self_attn.v_proj.weight",
            LayerTensor::O => "self_attn.o_proj.weight",
            LayerTensor::FfnNorm => "post_attention_layernorm.weight",
            LayerTensor::Gate => "mlp.gate_proj.weight",
            LayerTensor::Up => "mlp.up_proj.weight",
            LayerTensor::Down => "mlp.down_proj.weight",
        };
        format!("model.layers.{layer}.{suffix}")
    }

    /// The llama.cpp (GGUF) name in layer `layer`.
    pub fn gguf_name(self, layer: usize) -> String {
        let suffix = match self {
            LayerTensor::AttnNorm => "attn_norm",
            LayerTensor::Q => "attn_q",
            LayerTensor::K => "attn_k",
            LayerTensor::V => "attn_v",
            LayerTensor::O => "attn_output",
            LayerTensor::FfnNorm => "ffn_norm",
            LayerTensor::Gate => "ffn_gate",
            LayerTensor::Up => "ffn_up",
            LayerTensor::Down => "ffn_down",
        };
        format!("blk.{layer}.{suffix}.weight")
    }
}

/// Maps a canonical name to its GGUF name.
pub fn hf_to_gguf(name: &str) -> Option<String> {
    match name {
        EMBED => return Some("token_embd.weight".into()),
        FINAL_NORM => return Some("output_norm.weight".into()),
        LM_HEAD => return Some("output.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, _) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    LayerTensor::ALL
        .into_iter()
        .find(|t| t.hf_name(layer) == name)
        .map(|t| t.gguf_name(layer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_names() {
        assert_eq!(
            hf_to_gguf("model.layers.3.self_attn.k_proj.weight").as_deref(),
            Some("blk.3.attn_k.weight")
        );
        assert_eq!(hf_to_gguf(EMBED).as_deref(), Some("token_embd.weight"));
        assert_eq!(hf_to_gguf("model.layers.x.mlp.up_proj.weight"), None);
    }
}
