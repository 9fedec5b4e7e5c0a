// Writes each token's K and V ([tokens, n_kv_heads * head_dim], rows `stride` elements apart)
// into the paged cache
// ([num_blocks, block_size, n_kv_heads * head_dim]) at its slot (block * block_size + offset);
// a negative slot skips the token. One block per token.
extern "C" __global__ void kv_cache_write(const bf16* k, const bf16* v, bf16* k_cache,
                                          bf16* v_cache, const int* slots, int kv_width,
                                          int stride) {
    int t = blockIdx.x;
    int slot = slots[t];
    if (slot < 0) return;
    for (int i = threadIdx.x; i < kv_width; i += blockDim.x) {
        k_cache[(size_t)slot * kv_width + i] = k[(size_t)t * stride + i];
        v_cache[(size_t)slot * kv_width + i] = v[(size_t)t * stride + i];
    }
}
