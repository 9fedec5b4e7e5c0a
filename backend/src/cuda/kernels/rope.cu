// Rotary position embedding in the HF layout (rotate_half: element j pairs with j + head_dim/2),
// applied in place to q [tokens, n_heads, head_dim] and k [tokens, n_kv_heads, head_dim], whose
// rows are `stride` elements apart (both live in the fused QKV projection's output).
// cos/sin tables [max_positions, head_dim/2] are computed on the host, where Llama-3 and linear
// rope scaling are applied to the frequencies. One block per token.
extern "C" __global__ void rope(bf16* q, bf16* k, const unsigned int* positions,
                                const float* cos_table, const float* sin_table, int n_heads,
                                int n_kv_heads, int head_dim, int stride) {
    int t = blockIdx.x;
    int half = head_dim / 2;
    unsigned int pos = positions[t];
    int total = (n_heads + n_kv_heads) * half;
    for (int i = threadIdx.x; i < total; i += blockDim.x) {
        int h = i / half, j = i % half;
        bf16* v = h < n_heads ? q + (size_t)t * stride + (size_t)h * head_dim
                              : k + (size_t)t * stride + (size_t)(h - n_heads) * head_dim;
        float c = cos_table[(size_t)pos * half + j];
        float s = sin_table[(size_t)pos * half + j];
        float x1 = bf16_to_f32(v[j]), x2 = bf16_to_f32(v[j + half]);
        v[j] = f32_to_bf16(x1 * c - x2 * s);
        v[j + half] = f32_to_bf16(x2 * c + x1 * s);
    }
}
