// Paged attention for decode and chunked prefill alike: every query token attends, causally, to
// the first position+1 keys of its sequence, read through the sequence's block table. GQA: query
// head h reads KV head h / (n_heads / n_kv_heads). Query rows are `q_stride` elements apart (they
// live in the fused QKV projection's output); `out` is [tokens, n_heads, head_dim].
//
// Grid (query tokens, n_heads); block MAX_WARPS warps. Each warp takes every MAX_WARPS-th key:
// its lanes split head_dim for the dot product and keep an online softmax (running max, sum and
// weighted V per lane); the warps' partial results are merged through shared memory at the end.
#define MAX_WARPS 4
#define MAX_HEAD_DIM 256
#define PER_LANE (MAX_HEAD_DIM / 32)

extern "C" __global__ void paged_attention(bf16* out, const bf16* q, const bf16* k_cache,
                                           const bf16* v_cache, const int* block_tables,
                                           int max_blocks_per_seq, const int* token_seq,
                                           const int* token_pos, int n_heads, int n_kv_heads,
                                           int head_dim, int block_size, float scale,
                                           int q_stride) {
    int t = blockIdx.x, h = blockIdx.y;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int warps = blockDim.x >> 5;
    int seq = token_seq[t];
    int ctx = token_pos[t] + 1;
    int kv_head = h / (n_heads / n_kv_heads);
    int kv_width = n_kv_heads * head_dim;
    const int* table = block_tables + (size_t)seq * max_blocks_per_seq;
    const bf16* qh = q + (size_t)t * q_stride + (size_t)h * head_dim;

    float qv[PER_LANE], acc[PER_LANE];
    for (int i = 0; i < PER_LANE; i++) {
        int d = lane + 32 * i;
        qv[i] = d < head_dim ? bf16_to_f32(qh[d]) * scale : 0.0f;
        acc[i] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    for (int j = warp; j < ctx; j += warps) {
        int block = table[j / block_size];
        size_t base = ((size_t)block * block_size + (j % block_size)) * kv_width +
                      (size_t)kv_head * head_dim;
        float s = 0.0f;
        for (int i = 0; i < PER_LANE; i++) {
            int d = lane + 32 * i;
            if (d < head_dim) s += qv[i] * bf16_to_f32(k_cache[base + d]);
        }
        s = warp_sum(s);
        float m_new = fmaxf(m, s);
        float correction = __expf(m - m_new);
        float p = __expf(s - m_new);
        l = l * correction + p;
        for (int i = 0; i < PER_LANE; i++) {
            int d = lane + 32 * i;
            float vv = d < head_dim ? bf16_to_f32(v_cache[base + d]) : 0.0f;
            acc[i] = acc[i] * correction + p * vv;
        }
        m = m_new;
    }

    __shared__ float warp_m[MAX_WARPS], warp_l[MAX_WARPS];
    __shared__ float warp_acc[MAX_WARPS * MAX_HEAD_DIM];
    if (lane == 0) {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
    for (int i = 0; i < PER_LANE; i++) {
        int d = lane + 32 * i;
        if (d < head_dim) warp_acc[warp * MAX_HEAD_DIM + d] = acc[i];
    }
    __syncthreads();
    if (warp != 0) return;
    float big = NEG_INF;
    for (int w = 0; w < warps; w++) big = fmaxf(big, warp_m[w]);
    float total = 0.0f;
    for (int w = 0; w < warps; w++) total += warp_l[w] * __expf(warp_m[w] - big);
    bf16* oh = out + ((size_t)t * n_heads + h) * head_dim;
    for (int i = 0; i < PER_LANE; i++) {
        int d = lane + 32 * i;
        if (d >= head_dim) continue;
        float o = 0.0f;
        for (int w = 0; w < warps; w++) o += warp_acc[w * MAX_HEAD_DIM + d] * __expf(warp_m[w] - big);
        oh[d] = f32_to_bf16(o / total);
    }
}
