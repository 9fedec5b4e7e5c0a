//! The Llama forward pass, defined once over the steps each backend supplies.
//!
//! The Llama forward pass, defined once: embed the new tokens, then per layer attention and the
//! MLP, then the final norm and the LM head on the rows that want logits. Each backend supplies
//! these four steps on its own memory ([`LlamaStep`]), so the CPU's and CUDA's passes read side
//! by side and cannot walk the layers differently.
//!
//! Both keep the residual stream `x` and compute, per layer,
//! `x += o(attn(rope(qkv(rms_norm(x)))))`, then `x += down(silu(gate) * up)` over
//! `gate_up(rms_norm(x))`; they differ in where the adds happen (the CUDA kernels fuse each add
//! into the next norm) and in the precision of the weights and activations.

/// One step of the forward pass on one backend's memory.
pub(crate) trait LlamaStep {
    type Error;

    /// Writes the new tokens' embeddings into the residual stream.
    fn embed(&mut self) -> Result<(), Self::Error>;

    /// Layer `layer`'s attention block: norm, QKV projection, RoPE, writing the new K/V into the
    /// paged cache, attention over the cache, output projection into the residual stream.
    fn attention(&mut self, layer: usize) -> Result<(), Self::Error>;

    /// Layer `layer`'s MLP block: norm, gate and up projections, SiLU(gate) * up, down
    /// projection into the residual stream.
    fn mlp(&mut self, layer: usize) -> Result<(), Self::Error>;

    /// The final norm and the LM head, on the rows that want logits.
    fn lm_head(&mut self) -> Result<(), Self::Error>;
}

/// Runs the forward pass of a model of `num_layers` layers.
pub(crate) fn forward<S: LlamaStep>(step: &mut S, num_layers: usize) -> Result<(), S::Error> {
    step.embed()?;
    for layer in 0..num_layers {
        step.attention(layer)?;
        step.mlp(layer)?;
    }
    step.lm_head()
}
