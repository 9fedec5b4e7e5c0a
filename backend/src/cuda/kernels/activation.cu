// SwiGLU: out[t, i] = silu(gate_up[t, i]) * gate_up[t, inter + i], gate and up projections
// stored side by side per token.
extern "C" __global__ void silu_and_mul(const bf16* gate_up, bf16* out, int inter, size_t tokens) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= tokens * (size_t)inter) return;
    size_t t = idx / inter, i = idx % inter;
    float g = bf16_to_f32(gate_up[t * 2 * inter + i]);
    float u = bf16_to_f32(gate_up[t * 2 * inter + inter + i]);
    out[idx] = f32_to_bf16(g / (1.0f + __expf(-g)) * u);
}
