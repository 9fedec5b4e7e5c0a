// Greedy sampling on the device: the index of each row's largest logit (ties: the lowest index,
// as the CPU backend) and its log-probability, -log(sum(exp(x - max))), in one pass over the
// row: each thread keeps a running maximum, its index and the sum of exp(x - maximum), rescaled
// when the maximum grows (online softmax), read 16 bytes at a time where the row allows. One
// block per row (a multiple of 32 threads); only ids and log-probabilities go back to the host.

// Folds (m2, s2, i2) into (m, s, i): the larger maximum (the lower index on a tie), the sums
// rescaled to it.
__device__ __forceinline__ void argmax_merge(float& m, float& s, int& i, float m2, float s2, int i2) {
    if (m2 == NEG_INF) return;
    if (m == NEG_INF) {
        m = m2;
        s = s2;
        i = i2;
        return;
    }
    float big = fmaxf(m, m2);
    s = s * __expf(m - big) + s2 * __expf(m2 - big);
    if (m2 > m || (m2 == m && i2 < i)) i = i2;
    m = big;
}

// One logit at index `at` into the running state (indices arrive in increasing order); -inf
// (a masked logit) adds nothing.
__device__ __forceinline__ void argmax_add(float& m, float& s, int& i, float v, int at) {
    if (v > m) {
        s = (m == NEG_INF ? 0.0f : s * __expf(m - v)) + 1.0f;
        m = v;
        i = at;
    } else if (v != NEG_INF) {
        s += __expf(v - m);
    }
}

extern "C" __global__ void argmax_rows(const float* logits, int vocab, unsigned int* ids,
                                       float* logprobs) {
    const float* row = logits + (size_t)blockIdx.x * vocab;
    float m = NEG_INF, s = 0.0f;
    int best = 0x7fffffff;
    // Whole float4s from the first 16-byte boundary of the row; the ends one at a time.
    int head = (int)((16 - ((size_t)row & 15)) & 15) / 4;
    if (head > vocab) head = vocab;
    int quads = (vocab - head) / 4;
    for (int i = threadIdx.x; i < head; i += blockDim.x) argmax_add(m, s, best, row[i], i);
    const float4* body = (const float4*)(row + head);
    for (int q = threadIdx.x; q < quads; q += blockDim.x) {
        float4 v = __ldg(body + q);
        int at = head + 4 * q;
        argmax_add(m, s, best, v.x, at);
        argmax_add(m, s, best, v.y, at + 1);
        argmax_add(m, s, best, v.z, at + 2);
        argmax_add(m, s, best, v.w, at + 3);
    }
    for (int i = head + 4 * quads + threadIdx.x; i < vocab; i += blockDim.x) {
        argmax_add(m, s, best, row[i], i);
    }
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        int i2 = __shfl_xor_sync(0xffffffffu, best, o);
        argmax_merge(m, s, best, m2, s2, i2);
    }
    __shared__ float wm[32], ws[32];
    __shared__ int wi[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        wm[warp] = m;
        ws[warp] = s;
        wi[warp] = best;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++) argmax_merge(m, s, best, wm[w], ws[w], wi[w]);
        ids[blockIdx.x] = (unsigned int)best;
        logprobs[blockIdx.x] = -__logf(s);
    }
}
