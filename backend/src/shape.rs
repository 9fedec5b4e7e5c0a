//! The widths of a layer's activations and attention heads, computed once from the config.
//!
//! Both backends size their buffers and walk their rows with it, and the CUDA kernels' launch
//! arguments take their dimensions from it, so a width is derived in one place.

use model::LlamaConfig;

/// A transformer layer's dimensions, as the forward pass uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerShape {
    /// The residual stream's width (`hidden_size`).
    pub hidden: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (fewer than `n_heads` under grouped-query attention).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// The MLP's inner width (`intermediate_size`).
    pub inter: usize,
    /// Rows of the output projection.
    pub vocab: usize,
}

impl LayerShape {
    /// The shape of `c`'s layers.
    pub fn of(c: &LlamaConfig) -> LayerShape {
        LayerShape {
            hidden: c.hidden_size,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            inter: c.intermediate_size,
            vocab: c.vocab_size,
        }
    }

    /// Width of a token's queries (and of the attention's output).
    pub fn q_width(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of a token's keys (and of its values).
    pub fn kv_width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Width of the fused QKV projection's output: queries, then keys, then values.
    pub fn qkv_width(&self) -> usize {
        self.q_width() + 2 * self.kv_width()
    }
}
