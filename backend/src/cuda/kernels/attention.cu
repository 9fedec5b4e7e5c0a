// Paged attention for decode and chunked prefill alike: every query token attends, causally, to
// the first position+1 keys of its sequence, read through the sequence's block table. Query rows
// are `q_stride` elements apart (they live in the fused QKV projection's output); `out` is
// [tokens, n_heads, head_dim].
//
// Grid (query tokens, KV heads x head chunks, splits); ATT_THREADS threads. One CTA serves every
// query head of a GQA group (up to MAX_GROUP at a time) for one token, so each K/V byte is loaded
// once per token and KV head, not once per query head. Its threads form key groups of
// `lanes_per_key` threads (head_dim / 8, rounded up to a power of two); each thread loads 8
// elements of a key's K and V row at once (16 bytes), so that a CTA keeps ATT_THREADS /
// lanes_per_key keys in flight. The block table is staged in shared memory a chunk of blocks at
// a time, read once per block. Split-KV (flash-decoding): with `splits` > 1 a token's keys are
// cut into partitions of max(`partition`, ceil(keys / splits)) keys, each CTA takes one and
// writes its normalised partial output and its softmax's (max, sum) to `part_acc` / `part_ml`;
// the last of a (token, head group)'s CTAs to finish (counted in `split_counts`, which it resets
// to 0 for the next launch) combines them into `out`, so that no second kernel is launched.
// With `splits` == 1 a CTA writes `out` itself. Each token sizes its own partitions, so a launch
// whose splits are fixed in advance (a CUDA graph's, made for the longest context) spreads a
// short context over as many CTAs as its keys fill; a CTA past the token's keys writes an empty
// partial (max -inf, sum 0).
#define ATT_THREADS 128
#define MAX_GROUP 4
#define MAX_HEAD_DIM 256
#define TABLE_CHUNK 64
#define MERGE_MAX_SPLITS 1024

// Keys [first, last) of token t for query heads h0..h0 + heads: the normalised output into
// `out`, or with `splits` > 1 into this split's partial.
__device__ __forceinline__ void attend(bf16* out, float* part_acc, float* part_ml,
                                       const bf16* q, const bf16* k_cache, const bf16* v_cache,
                                       const int* block_tables, int max_blocks_per_seq, int seq,
                                       int t, int first, int last, int h0, int heads,
                                       int kv_head, int n_heads, int n_kv_heads, int head_dim,
                                       int block_size, float scale, int q_stride, int split,
                                       int splits) {
    int lanes_per_key = 1;
    while (lanes_per_key * 8 < head_dim) lanes_per_key <<= 1;
    int keys_at_once = ATT_THREADS / lanes_per_key;
    int key_slot = threadIdx.x / lanes_per_key, sub = threadIdx.x % lanes_per_key;
    int d0 = sub * 8;
    bool has_dims = d0 < head_dim;
    int kv_width = n_kv_heads * head_dim;
    const int* table = block_tables + (size_t)seq * max_blocks_per_seq;

    // This thread's 8 dimensions of each query head, pre-scaled.
    float qv[MAX_GROUP][8];
    for (int h = 0; h < MAX_GROUP; h++) {
        float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (h < heads && has_dims) {
            unpack8(__ldg((const uint4*)(q + (size_t)t * q_stride + (size_t)(h0 + h) * head_dim + d0)), f);
        }
        for (int i = 0; i < 8; i++) qv[h][i] = f[i] * scale;
    }
    float m[MAX_GROUP], l[MAX_GROUP], acc[MAX_GROUP][8];
    for (int h = 0; h < MAX_GROUP; h++) {
        m[h] = NEG_INF;
        l[h] = 0.0f;
        for (int i = 0; i < 8; i++) acc[h][i] = 0.0f;
    }

    __shared__ int s_blocks[TABLE_CHUNK];
    int chunk_keys = TABLE_CHUNK * block_size;
    for (int chunk_start = first; chunk_start < last; chunk_start += chunk_keys) {
        int chunk_end = min(last, chunk_start + chunk_keys);
        int first_block = chunk_start / block_size;
        int n_blocks = (chunk_end - 1) / block_size - first_block + 1;
        __syncthreads();
        for (int i = threadIdx.x; i < n_blocks; i += ATT_THREADS) s_blocks[i] = table[first_block + i];
        __syncthreads();
        // Every thread runs the same iterations (the shuffles below need the whole warp); a key
        // past the chunk's end is loaded by nobody and changes nothing.
        for (int base = chunk_start; base < chunk_end; base += keys_at_once) {
            int j = base + key_slot;
            bool valid = j < chunk_end;
            float kf[8] = {0, 0, 0, 0, 0, 0, 0, 0}, vf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (valid && has_dims) {
                int block = s_blocks[j / block_size - first_block];
                size_t at = ((size_t)block * block_size + (j % block_size)) * kv_width +
                            (size_t)kv_head * head_dim + d0;
                uint4 kw = __ldg((const uint4*)(k_cache + at));
                uint4 vw = __ldg((const uint4*)(v_cache + at));
                unpack8(kw, kf);
                unpack8(vw, vf);
            }
            for (int h = 0; h < MAX_GROUP; h++) {
                if (h >= heads) break;
                float s = 0.0f;
                for (int i = 0; i < 8; i++) s += qv[h][i] * kf[i];
                for (int o = lanes_per_key >> 1; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                if (!valid) continue;
                float m_new = fmaxf(m[h], s);
                float correction = __expf(m[h] - m_new);
                float p = __expf(s - m_new);
                l[h] = l[h] * correction + p;
                for (int i = 0; i < 8; i++) acc[h][i] = acc[h][i] * correction + p * vf[i];
                m[h] = m_new;
            }
        }
    }

    // Merge the key slots: each slot's (max, sum) and its threads' 8 dimensions of each head.
    __shared__ float s_m[ATT_THREADS][MAX_GROUP], s_l[ATT_THREADS][MAX_GROUP];
    __shared__ float s_acc[MAX_GROUP][ATT_THREADS * 8];
    __syncthreads();
    for (int h = 0; h < heads; h++) {
        if (sub == 0) {
            s_m[key_slot][h] = m[h];
            s_l[key_slot][h] = l[h];
        }
        if (has_dims) {
            for (int i = 0; i < 8; i++) s_acc[h][key_slot * lanes_per_key * 8 + d0 + i] = acc[h][i];
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < heads * head_dim; idx += ATT_THREADS) {
        int h = idx / head_dim, d = idx % head_dim;
        float big = NEG_INF;
        for (int k = 0; k < keys_at_once; k++) big = fmaxf(big, s_m[k][h]);
        float total = 0.0f, o = 0.0f;
        if (big != NEG_INF) {
            for (int k = 0; k < keys_at_once; k++) {
                float w = __expf(s_m[k][h] - big);
                total += s_l[k][h] * w;
                o += s_acc[h][k * lanes_per_key * 8 + d] * w;
            }
        }
        float value = total > 0.0f ? o / total : 0.0f;
        int head = h0 + h;
        if (splits == 1) {
            out[((size_t)t * n_heads + head) * head_dim + d] = f32_to_bf16(value);
        } else {
            size_t row = ((size_t)t * n_heads + head) * splits + split;
            part_acc[row * head_dim + d] = value;
            if (d == 0) {
                part_ml[2 * row] = big;
                part_ml[2 * row + 1] = total;
            }
        }
    }
}

// Combines the `splits` partial outputs of one head of token t into `out`: each split's output
// weighted by its softmax sum, rescaled to the largest of the splits' maxima. The splits'
// weights are computed once into shared memory; then groups of threads take a share of the
// splits each, 4 dimensions (a float4) a thread, and the groups' sums meet in shared memory.
// The partials were written by other CTAs of this launch, so they are read through L2 (not the
// read-only cache).
__device__ __forceinline__ void merge_head(bf16* out, const float* part_acc,
                                           const float* part_ml, int t, int head, int n_heads,
                                           int head_dim, int splits) {
    __shared__ float weight[MERGE_MAX_SPLITS];
    __shared__ float4 partial[ATT_THREADS];
    __shared__ float warp_best[ATT_THREADS / 32];
    size_t row0 = ((size_t)t * n_heads + head) * splits;
    const float2* ml = (const float2*)part_ml + row0;
    // The largest maximum of the splits that saw keys (sum > 0).
    float best = NEG_INF;
    for (int s = threadIdx.x; s < splits; s += ATT_THREADS) {
        float2 m = __ldcg(ml + s);
        if (m.y > 0.0f) best = fmaxf(best, m.x);
    }
    best = warp_max(best);
    if (threadIdx.x % 32 == 0) warp_best[threadIdx.x / 32] = best;
    __syncthreads();
    for (int w = 0; w < ATT_THREADS / 32; w++) best = fmaxf(best, warp_best[w]);
    float total = 0.0f;
    for (int s = threadIdx.x; s < splits; s += ATT_THREADS) {
        float2 m = __ldcg(ml + s);
        float w = m.y > 0.0f ? m.y * __expf(m.x - best) : 0.0f;
        weight[s] = w;
        total += w;
    }
    total = block_sum(total);  // its barriers also publish `weight`
    int units = head_dim / 4, groups = ATT_THREADS / units;
    int g = threadIdx.x / units, u = threadIdx.x % units;
    float4 o = {0.0f, 0.0f, 0.0f, 0.0f};
    if (g < groups) {
        for (int s = g; s < splits; s += groups) {
            float w = weight[s];
            if (w == 0.0f) continue;
            float4 a = __ldcg((const float4*)(part_acc + (row0 + s) * head_dim) + u);
            o.x += a.x * w;
            o.y += a.y * w;
            o.z += a.z * w;
            o.w += a.w * w;
        }
    }
    partial[threadIdx.x] = o;
    __syncthreads();
    if ((int)threadIdx.x < units) {
        float4 sum = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int j = 0; j < groups; j++) {
            float4 p = partial[j * units + threadIdx.x];
            sum.x += p.x;
            sum.y += p.y;
            sum.z += p.z;
            sum.w += p.w;
        }
        float f[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (total > 0.0f) {
            f[0] = sum.x / total;
            f[1] = sum.y / total;
            f[2] = sum.z / total;
            f[3] = sum.w / total;
        }
        uint2 word;
        word.x = (unsigned int)f32_to_bf16(f[0]) | ((unsigned int)f32_to_bf16(f[1]) << 16);
        word.y = (unsigned int)f32_to_bf16(f[2]) | ((unsigned int)f32_to_bf16(f[3]) << 16);
        *((uint2*)(out + ((size_t)t * n_heads + head) * head_dim) + threadIdx.x) = word;
    }
    // The shared buffers serve the next head.
    __syncthreads();
}

extern "C" __global__ void paged_attention(bf16* out, float* part_acc, float* part_ml,
                                           int* split_counts, const bf16* q,
                                           const bf16* k_cache, const bf16* v_cache,
                                           const int* block_tables, int max_blocks_per_seq,
                                           const int* token_seq, const int* token_pos,
                                           int n_heads, int n_kv_heads, int head_dim,
                                           int block_size, float scale, int q_stride,
                                           int partition, int splits) {
    int t = blockIdx.x, split = blockIdx.z;
    int group = n_heads / n_kv_heads;
    int chunks = (group + MAX_GROUP - 1) / MAX_GROUP;
    int kv_head = blockIdx.y / chunks;
    int h0 = kv_head * group + (blockIdx.y % chunks) * MAX_GROUP;
    int heads = min(MAX_GROUP, kv_head * group + group - h0);
    int seq = token_seq[t];
    int ctx = token_pos[t] + 1;
    int keys = max(partition, (ctx + splits - 1) / splits);
    int first = split * keys, last = min(ctx, first + keys);
    if (splits == 1 || first < ctx) {
        attend(out, part_acc, part_ml, q, k_cache, v_cache, block_tables, max_blocks_per_seq, seq,
               t, first, last, h0, heads, kv_head, n_heads, n_kv_heads, head_dim, block_size,
               scale, q_stride, split, splits);
    } else if ((int)threadIdx.x < heads) {
        // No keys here: an empty partial, which the merge weighs by its sum of 0.
        size_t row = ((size_t)t * n_heads + h0 + threadIdx.x) * splits + split;
        part_ml[2 * row] = NEG_INF;
        part_ml[2 * row + 1] = 0.0f;
    }
    if (splits == 1) return;

    // The last CTA of the group to finish merges. Each thread's partial stores are made visible
    // device-wide before the group's count goes up (the CUDA samples' threadFenceReduction).
    __shared__ int s_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int* count = split_counts + (size_t)t * gridDim.y + blockIdx.y;
        s_last = atomicAdd(count, 1) == splits - 1;
        if (s_last) *count = 0;
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    for (int h = 0; h < heads; h++) {
        merge_head(out, part_acc, part_ml, t, h0 + h, n_heads, head_dim, splits);
    }
}
