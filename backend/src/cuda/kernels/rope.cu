// Rotary position embedding in the HF layout (rotate_half: element j pairs with j + head_dim/2)
// fused with the paged KV cache's write. q [tokens, n_heads, head_dim] is rotated in place; k
// [tokens, n_kv_heads, head_dim] is rotated on its way into the cache and v copied beside it,
// at the token's slot (block * block_size + offset) of k_cache / v_cache ([num_blocks,
// block_size, n_kv_heads * head_dim]); a negative slot skips the cache (q is still rotated).
// q, k and v rows are `stride` elements apart (they live in the fused QKV projection's output).
// cos/sin tables [max_positions, head_dim/2] are computed on the host, where Llama-3 and linear
// rope scaling are applied to the frequencies. Grid (tokens, CTAs a token): a token's heads are
// shared by its CTAs, so that a decode step of one token is not one CTA's chain of loads; where
// head_dim / 2 is a multiple of 8, each thread takes 8 pairs at once in 16-byte words.
extern "C" __global__ void rope_kv_write(bf16* q, const bf16* k, const bf16* v, bf16* k_cache,
                                         bf16* v_cache, const unsigned int* positions,
                                         const int* slots, const float* cos_table,
                                         const float* sin_table, int n_heads, int n_kv_heads,
                                         int head_dim, int stride) {
    int t = blockIdx.x;
    int first = blockIdx.y * blockDim.x, step = gridDim.y * blockDim.x;
    int half = head_dim / 2;
    unsigned int pos = positions[t];
    int slot = slots[t];
    int heads = slot < 0 ? n_heads : n_heads + n_kv_heads;
    size_t kv_width = (size_t)n_kv_heads * head_dim;
    if (half % 8 == 0) {
        // 8 pairs at a time: 16-byte words of q/k, two float4 each of cos and sin.
        int units = half / 8;
        const float* cos_row = cos_table + (size_t)pos * half;
        const float* sin_row = sin_table + (size_t)pos * half;
        for (int i = first + threadIdx.x; i < heads * units; i += step) {
            int h = i / units, j = (i % units) * 8;
            const bf16* from;
            bf16* to;
            if (h < n_heads) {
                to = q + (size_t)t * stride + (size_t)h * head_dim;
                from = to;
            } else {
                size_t head = (size_t)(h - n_heads) * head_dim;
                from = k + (size_t)t * stride + head;
                to = k_cache + (size_t)slot * kv_width + head;
            }
            float4 c0 = __ldg((const float4*)(cos_row + j)), c1 = __ldg((const float4*)(cos_row + j + 4));
            float4 s0 = __ldg((const float4*)(sin_row + j)), s1 = __ldg((const float4*)(sin_row + j + 4));
            float c[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
            float sn[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
            float x1[8], x2[8], o1[8], o2[8];
            unpack8(__ldg((const uint4*)(from + j)), x1);
            unpack8(__ldg((const uint4*)(from + j + half)), x2);
            for (int e = 0; e < 8; e++) {
                o1[e] = x1[e] * c[e] - x2[e] * sn[e];
                o2[e] = x2[e] * c[e] + x1[e] * sn[e];
            }
            *(uint4*)(to + j) = pack8(o1);
            *(uint4*)(to + j + half) = pack8(o2);
        }
    } else {
        // One pair at a time (head sizes whose half is not a multiple of 8).
        for (int i = first + threadIdx.x; i < heads * half; i += step) {
            int h = i / half, j = i % half;
            float c = cos_table[(size_t)pos * half + j];
            float s = sin_table[(size_t)pos * half + j];
            if (h < n_heads) {
                bf16* row = q + (size_t)t * stride + (size_t)h * head_dim;
                float x1 = bf16_to_f32(row[j]), x2 = bf16_to_f32(row[j + half]);
                row[j] = f32_to_bf16(x1 * c - x2 * s);
                row[j + half] = f32_to_bf16(x2 * c + x1 * s);
            } else {
                size_t head = (size_t)(h - n_heads) * head_dim;
                const bf16* row = k + (size_t)t * stride + head;
                bf16* out = k_cache + (size_t)slot * kv_width + head;
                float x1 = bf16_to_f32(row[j]), x2 = bf16_to_f32(row[j + half]);
                out[j] = f32_to_bf16(x1 * c - x2 * s);
                out[j + half] = f32_to_bf16(x2 * c + x1 * s);
            }
        }
    }
    if (slot < 0) return;
    // V as it is, 8 elements (16 bytes) at a time: head sizes are multiples of 8.
    const uint4* from = (const uint4*)(v + (size_t)t * stride);
    uint4* to = (uint4*)(v_cache + (size_t)slot * kv_width);
    for (int i = first + threadIdx.x; i < (int)(kv_width / 8); i += step) to[i] = __ldg(from + i);
}
