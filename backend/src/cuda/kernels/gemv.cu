// Products with weights kept as the GGUF stores them: matrix-vector kernels for steps of up to
// GEMV_MAX_TOKENS tokens, and a decoder of whole rows to bf16 for larger steps' cuBLAS GEMMs.
//
// A quantized matrix of `rows` x `k` values (blocks of 32 along k) lies in two planes:
//   qs:     each block's quants, block after block, row after row: 16 bytes a block for Q4_0
//           and Q4_1 (byte i holds value i in its low nibble and value i + 16 in its high one,
//           as in GGUF), 32 signed bytes for Q8_0;
//   scales: each block's f16 scale d in the same order; for Q4_1, d then the offset m; for
//           Q6_K, the scales of its two halves (values 0-15, then 16-31).
// GGUF's own blocks (18, 20 and 34 bytes) are split so at load, so that every quant load is
// one aligned 16-byte word; Q6_K's 6-bit quants are widened to Q8_0's signed bytes (q - 32).
// Values: Q4_0 d*(q - 8), Q4_1 d*q + m, Q8_0 d*q, Q6_K d_half*q.
#define GEMV_THREADS 128
#define GEMV_MAX_TOKENS 8
#define GEMV_ROWS 4
#define DECODE_BLOCKS 8
// The one-token Q4 kernels at 8 CTAs an SM (64 registers a thread; ptxas, sm_90: no spills,
// where the default took 74 and fit 6): a one-token product has only its CTAs in flight to hide
// its loads' latency with. Q8_0's two words a block per row would spill at 64, so it keeps 6.
#define GEMV_ONE_BOUNDS __launch_bounds__(GEMV_THREADS, 8)
#define KIND_Q4_0 0
#define KIND_Q4_1 1
#define KIND_Q8_0 2
#define KIND_Q6_K 3

// The sum of 8 values as a fixed tree: the same order on every device, and one a host compiler
// can vectorise (a running sum it must keep in order).
__device__ __forceinline__ float sum8(const float* v) {
    return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// Block `b`'s quants (the words of its 16 or 32 bytes) and the scale and offset of each half
// of it (values 0-15 and 16-31; the same for all but Q6_K): Q4_0's offset -8 d and Q8_0's and
// Q6_K's 0 in `m`, so that every kind's value is d * q + m with q its raw quant.
template <int KIND>
__device__ __forceinline__ void load_block(const unsigned char* qs, const unsigned short* scales,
                                           size_t b, uint4* q, float* d, float* m) {
    if (KIND == KIND_Q6_K) {
        q[0] = __ldg((const uint4*)(qs + b * 32));
        q[1] = __ldg((const uint4*)(qs + b * 32 + 16));
        unsigned int dd = __ldg((const unsigned int*)scales + b);
        d[0] = f16_to_f32((unsigned short)(dd & 0xffffu));
        d[1] = f16_to_f32((unsigned short)(dd >> 16));
        m[0] = m[1] = 0.0f;
        return;
    }
    if (KIND == KIND_Q8_0) {
        q[0] = __ldg((const uint4*)(qs + b * 32));
        q[1] = __ldg((const uint4*)(qs + b * 32 + 16));
    } else {
        q[0] = __ldg((const uint4*)(qs + b * 16));
    }
    if (KIND == KIND_Q4_1) {
        unsigned int dm = __ldg((const unsigned int*)scales + b);
        d[0] = f16_to_f32((unsigned short)(dm & 0xffffu));
        m[0] = f16_to_f32((unsigned short)(dm >> 16));
    } else {
        d[0] = f16_to_f32(__ldg(scales + b));
        m[0] = KIND == KIND_Q4_0 ? -8.0f * d[0] : 0.0f;
    }
    d[1] = d[0];
    m[1] = m[0];
}

// Raw quants of values 8c..8c+7 of a block as floats. Q4: values 0-15 are the low nibbles of
// bytes 0-15 and values 16-31 their high nibbles; Q8_0: one signed byte each.
template <int KIND>
__device__ __forceinline__ void chunk_quants(const uint4* q, int c, float* f) {
    unsigned int lo, hi;
    if (KIND == KIND_Q8_0 || KIND == KIND_Q6_K) {
        uint4 w = q[c >> 1];
        lo = (c & 1) ? w.z : w.x;
        hi = (c & 1) ? w.w : w.y;
        for (int j = 0; j < 4; j++) {
            f[j] = (float)(signed char)(lo >> (8 * j));
            f[4 + j] = (float)(signed char)(hi >> (8 * j));
        }
    } else {
        lo = (c & 1) ? q[0].z : q[0].x;
        hi = (c & 1) ? q[0].w : q[0].y;
        int shift = (c >> 1) * 4;
        for (int j = 0; j < 4; j++) {
            f[j] = (float)((lo >> (8 * j + shift)) & 0x0fu);
            f[4 + j] = (float)((hi >> (8 * j + shift)) & 0x0fu);
        }
    }
}

// y[t, row] = x[t, :] . W[row, :] for `tokens` <= GEMV_MAX_TOKENS tokens. A group of `lanes`
// threads (a power of two dividing GEMV_THREADS) serves GEMV_ROWS rows together: lane j takes
// blocks j, j + lanes, ... of all of them, so each load of x serves GEMV_ROWS rows and a
// group's lanes read consecutive 16-byte words. Each block contributes d * (q . x) + m * sum(x),
// computed 8 values at a time. Partial sums meet in shared memory, one barrier, and are added
// in lane order. Output bf16 into `y`, or f32 into `y_f32` when it is not null (logits).
// With `gated` non-zero, x is the gate/up projection's output ([tokens, 2 k]: gate, then up) and
// the product is taken with silu(gate) * up, the SwiGLU activation fused into the load.
template <int KIND, int MAX_TOKENS>
__device__ __forceinline__ void gemv(const unsigned char* qs, const unsigned short* scales,
                                     const bf16* x, bf16* y, float* y_f32, int rows,
                                     int k_blocks, int tokens, int lanes, int gated) {
    __shared__ float partial[GEMV_ROWS * MAX_TOKENS * GEMV_THREADS];
    int groups = GEMV_THREADS / lanes;
    int lane = threadIdx.x % lanes, group = threadIdx.x / lanes;
    int row0 = (blockIdx.x * groups + group) * GEMV_ROWS;
    int n_rows = min(GEMV_ROWS, rows - row0);
    size_t k = (size_t)k_blocks * 32;
    float acc[GEMV_ROWS][MAX_TOKENS];
    for (int r = 0; r < GEMV_ROWS; r++)
        for (int t = 0; t < MAX_TOKENS; t++) acc[r][t] = 0.0f;
    for (int b = lane; n_rows > 0 && b < k_blocks; b += lanes) {
        uint4 q[GEMV_ROWS][2];
        float d[GEMV_ROWS][2], m[GEMV_ROWS][2];
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) {
            if (r < n_rows) load_block<KIND>(qs, scales, (size_t)(row0 + r) * k_blocks + b, q[r], d[r], m[r]);
        }
#pragma unroll
        for (int c = 0; c < 4; c++) {
            // Several tokens share each row's decoded chunk; one token decodes it as it goes
            // (fewer registers live).
            float qf[GEMV_ROWS][8];
            if (MAX_TOKENS > 1)
                for (int r = 0; r < GEMV_ROWS; r++)
                    if (r < n_rows) chunk_quants<KIND>(q[r], c, qf[r]);
#pragma unroll
            for (int t = 0; t < MAX_TOKENS; t++) {
                if (t >= tokens) continue;
                float xf[8];
                if (gated) {
                    // x = silu(gate) * up, rounded to bf16 as `silu_and_mul` writes it.
                    const bf16* at = x + (size_t)t * 2 * k + (size_t)b * 32 + 8 * c;
                    float g[8], u[8];
                    unpack8(__ldg((const uint4*)at), g);
                    unpack8(__ldg((const uint4*)(at + k)), u);
                    for (int i = 0; i < 8; i++)
                        xf[i] = bf16_to_f32(f32_to_bf16(g[i] / (1.0f + __expf(-g[i])) * u[i]));
                } else {
                    unpack8(__ldg((const uint4*)(x + (size_t)t * k + (size_t)b * 32 + 8 * c)), xf);
                }
                float xsum = sum8(xf);
#pragma unroll
                for (int r = 0; r < GEMV_ROWS; r++) {
                    if (r >= n_rows) continue;
                    float one[8];
                    if (MAX_TOKENS == 1) chunk_quants<KIND>(q[r], c, one);
                    const float* qv = MAX_TOKENS == 1 ? one : qf[r];
                    float p[8];
                    for (int i = 0; i < 8; i++) p[i] = qv[i] * xf[i];
                    float s = sum8(p);
                    acc[r][t] += d[r][c >> 1] * s + m[r][c >> 1] * xsum;
                }
            }
        }
    }
    for (int r = 0; r < GEMV_ROWS; r++)
        for (int t = 0; t < tokens; t++)
            partial[(r * MAX_TOKENS + t) * GEMV_THREADS + threadIdx.x] = acc[r][t];
    __syncthreads();
    int per_cta = groups * GEMV_ROWS;
    for (int i = threadIdx.x; i < per_cta * tokens; i += GEMV_THREADS) {
        int local = i % per_cta, t = i / per_cta;
        int g = local / GEMV_ROWS, r = local % GEMV_ROWS;
        int out_row = blockIdx.x * per_cta + local;
        if (out_row >= rows) continue;
        const float* p = partial + (r * MAX_TOKENS + t) * GEMV_THREADS + g * lanes;
        float s = 0.0f;
        for (int j = 0; j < lanes; j++) s += p[j];
        size_t at = (size_t)t * rows + out_row;
        if (y_f32) y_f32[at] = s;
        else y[at] = f32_to_bf16(s);
    }
}

extern "C" __global__ void gemv_q4_0(const unsigned char* qs, const unsigned short* scales,
                                     const bf16* x, bf16* y, float* y_f32, int rows,
                                     int k_blocks, int tokens, int lanes, int gated) {
    gemv<KIND_Q4_0, GEMV_MAX_TOKENS>(qs, scales, x, y, y_f32, rows, k_blocks, tokens, lanes, gated);
}

// One token: registers for one column of sums only, so more CTAs fit an SM.
extern "C" __global__ void GEMV_ONE_BOUNDS gemv_one_q4_0(const unsigned char* qs, const unsigned short* scales,
                                         const bf16* x, bf16* y, float* y_f32, int rows,
                                         int k_blocks, int tokens, int lanes, int gated) {
    gemv<KIND_Q4_0, 1>(qs, scales, x, y, y_f32, rows, k_blocks, tokens, lanes, gated);
}

extern "C" __global__ void gemv_q4_1(const unsigned char* qs, const unsigned short* scales,
                                     const bf16* x, bf16* y, float* y_f32, int rows,
                                     int k_blocks, int tokens, int lanes, int gated) {
    gemv<KIND_Q4_1, GEMV_MAX_TOKENS>(qs, scales, x, y, y_f32, rows, k_blocks, tokens, lanes, gated);
}

// One token: registers for one column of sums only, so more CTAs fit an SM.
extern "C" __global__ void GEMV_ONE_BOUNDS gemv_one_q4_1(const unsigned char* qs, const unsigned short* scales,
                                         const bf16* x, bf16* y, float* y_f32, int rows,
                                         int k_blocks, int tokens, int lanes, int gated) {
    gemv<KIND_Q4_1, 1>(qs, scales, x, y, y_f32, rows, k_blocks, tokens, lanes, gated);
}

extern "C" __global__ void gemv_q8_0(const unsigned char* qs, const unsigned short* scales,
                                     const bf16* x, bf16* y, float* y_f32, int rows,
                                     int k_blocks, int tokens, int lanes, int gated) {
    gemv<KIND_Q8_0, GEMV_MAX_TOKENS>(qs, scales, x, y, y_f32, rows, k_blocks, tokens, lanes, gated);
}

// One token: registers for one column of sums only, so more CTAs fit an SM.
extern "C" __global__ void gemv_one_q8_0(const unsigned char* qs, const unsigned short* scales,
                                         const bf16* x, bf16* y, float* y_f32, int rows,
                                         int k_blocks, int tokens, int lanes, int gated) {
    gemv<KIND_Q8_0, 1>(qs, scales, x, y, y_f32, rows, k_blocks, tokens, lanes, gated);
}

extern "C" __global__ void gemv_q6_k(const unsigned char* qs, const unsigned short* scales,
                                     const bf16* x, bf16* y, float* y_f32, int rows,
                                     int k_blocks, int tokens, int lanes, int gated) {
    gemv<KIND_Q6_K, GEMV_MAX_TOKENS>(qs, scales, x, y, y_f32, rows, k_blocks, tokens, lanes, gated);
}

// One token; Q6_K's 32 bytes a block per row keep it at Q8_0's registers.
extern "C" __global__ void gemv_one_q6_k(const unsigned char* qs, const unsigned short* scales,
                                         const bf16* x, bf16* y, float* y_f32, int rows,
                                         int k_blocks, int tokens, int lanes, int gated) {
    gemv<KIND_Q6_K, 1>(qs, scales, x, y, y_f32, rows, k_blocks, tokens, lanes, gated);
}

// Blocks `first`..`first + n_blocks` of the planes to bf16 at `out` (32 values a block),
// DECODE_BLOCKS consecutive blocks a thread, each block stored as four 16-byte words.
template <int KIND>
__device__ __forceinline__ void decode_planes(const unsigned char* qs,
                                              const unsigned short* scales, bf16* out,
                                              size_t first, size_t n_blocks) {
    size_t at = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * DECODE_BLOCKS;
    for (size_t b = at; b < at + DECODE_BLOCKS && b < n_blocks; b++) {
        uint4 q[2];
        float d[2], m[2];
        load_block<KIND>(qs, scales, first + b, q, d, m);
        for (int c = 0; c < 4; c++) {
            float w[8];
            chunk_quants<KIND>(q, c, w);
            for (int i = 0; i < 8; i++) w[i] = d[c >> 1] * w[i] + m[c >> 1];
            *(uint4*)(out + b * 32 + 8 * c) = pack8(w);
        }
    }
}

extern "C" __global__ void decode_planes_q4_0(const unsigned char* qs, const unsigned short* scales,
                                              bf16* out, size_t first, size_t n_blocks) {
    decode_planes<KIND_Q4_0>(qs, scales, out, first, n_blocks);
}

extern "C" __global__ void decode_planes_q4_1(const unsigned char* qs, const unsigned short* scales,
                                              bf16* out, size_t first, size_t n_blocks) {
    decode_planes<KIND_Q4_1>(qs, scales, out, first, n_blocks);
}

extern "C" __global__ void decode_planes_q8_0(const unsigned char* qs, const unsigned short* scales,
                                              bf16* out, size_t first, size_t n_blocks) {
    decode_planes<KIND_Q8_0>(qs, scales, out, first, n_blocks);
}

extern "C" __global__ void decode_planes_q6_k(const unsigned char* qs, const unsigned short* scales,
                                              bf16* out, size_t first, size_t n_blocks) {
    decode_planes<KIND_Q6_K>(qs, scales, out, first, n_blocks);
}
