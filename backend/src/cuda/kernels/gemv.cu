// Products with weights kept as the GGUF stores them: matrix-vector kernels for steps of up to
// GEMV_MAX_TOKENS tokens, and a decoder of whole rows to bf16 for larger steps' cuBLAS GEMMs.
//
// A quantized matrix of `rows` x `k` values (blocks of 32 along k) lies in two planes:
//   qs:     each block's quants, block after block, row after row: 16 bytes a block for Q4_0
//           and Q4_1 (byte i holds value i in its low nibble and value i + 16 in its high one,
//           as in GGUF), 32 signed bytes for Q8_0;
//   scales: each block's f16 scale d in the same order; for Q4_1, d then the offset m.
// GGUF's own blocks (18, 20 and 34 bytes) are split so at load, so that every quant load is
// one aligned 16-byte word. Values: Q4_0 d*(q - 8), Q4_1 d*q + m, Q8_0 d*q.
#define GEMV_THREADS 128
#define GEMV_MAX_TOKENS 8
#define KIND_Q4_0 0
#define KIND_Q4_1 1
#define KIND_Q8_0 2

// Block `b`'s 32 values as floats.
template <int KIND>
__device__ __forceinline__ void dequant_block(const unsigned char* qs,
                                              const unsigned short* scales, size_t b, float* w) {
    if (KIND == KIND_Q8_0) {
        uint4 q0 = __ldg((const uint4*)(qs + b * 32));
        uint4 q1 = __ldg((const uint4*)(qs + b * 32 + 16));
        float d = f16_to_f32(__ldg(scales + b));
        unsigned int u[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
        for (int i = 0; i < 8; i++)
            for (int j = 0; j < 4; j++) w[4 * i + j] = d * (float)(signed char)(u[i] >> (8 * j));
    } else {
        uint4 q = __ldg((const uint4*)(qs + b * 16));
        unsigned int u[4] = {q.x, q.y, q.z, q.w};
        if (KIND == KIND_Q4_1) {
            unsigned int dm = __ldg((const unsigned int*)scales + b);
            float d = f16_to_f32((unsigned short)(dm & 0xffffu));
            float m = f16_to_f32((unsigned short)(dm >> 16));
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) {
                    unsigned int byte = (u[i] >> (8 * j)) & 0xffu;
                    w[4 * i + j] = d * (float)(byte & 0x0fu) + m;
                    w[16 + 4 * i + j] = d * (float)(byte >> 4) + m;
                }
        } else {
            float d = f16_to_f32(__ldg(scales + b));
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) {
                    unsigned int byte = (u[i] >> (8 * j)) & 0xffu;
                    w[4 * i + j] = d * (float)((int)(byte & 0x0fu) - 8);
                    w[16 + 4 * i + j] = d * (float)((int)(byte >> 4) - 8);
                }
        }
    }
}

// y[t, row] = x[t, :] . W[row, :] for `tokens` <= GEMV_MAX_TOKENS tokens. A CTA serves
// GEMV_THREADS / lanes rows, `lanes` threads a row (a power of two dividing GEMV_THREADS):
// lane j takes blocks j, j + lanes, ..., so a row's lanes read consecutive 16-byte words. Each
// weight is decoded once and used for every token. Partial sums meet in shared memory, one
// barrier, and are added in lane order. Output bf16 into `y`, or f32 into `y_f32` when it is
// not null (the LM head's logits).
template <int KIND>
__device__ __forceinline__ void gemv(const unsigned char* qs, const unsigned short* scales,
                                     const bf16* x, bf16* y, float* y_f32, int rows,
                                     int k_blocks, int tokens, int lanes) {
    __shared__ float partial[GEMV_MAX_TOKENS * GEMV_THREADS];
    int per_cta = GEMV_THREADS / lanes;
    int lane = threadIdx.x % lanes;
    int row = blockIdx.x * per_cta + threadIdx.x / lanes;
    size_t k = (size_t)k_blocks * 32;
    float acc[GEMV_MAX_TOKENS];
    for (int t = 0; t < GEMV_MAX_TOKENS; t++) acc[t] = 0.0f;
    if (row < rows) {
        for (int b = lane; b < k_blocks; b += lanes) {
            float w[32];
            dequant_block<KIND>(qs, scales, (size_t)row * k_blocks + b, w);
            for (int t = 0; t < GEMV_MAX_TOKENS; t++) {
                if (t >= tokens) break;
                const bf16* xb = x + (size_t)t * k + (size_t)b * 32;
                float s = 0.0f;
                for (int c = 0; c < 4; c++) {
                    float f[8];
                    unpack8(__ldg((const uint4*)(xb + 8 * c)), f);
                    for (int i = 0; i < 8; i++) s += w[8 * c + i] * f[i];
                }
                acc[t] += s;
            }
        }
    }
    for (int t = 0; t < tokens; t++) partial[t * GEMV_THREADS + threadIdx.x] = acc[t];
    __syncthreads();
    for (int i = threadIdx.x; i < per_cta * tokens; i += GEMV_THREADS) {
        int r = i % per_cta, t = i / per_cta;
        int out_row = blockIdx.x * per_cta + r;
        if (out_row >= rows) continue;
        float s = 0.0f;
        for (int j = 0; j < lanes; j++) s += partial[t * GEMV_THREADS + r * lanes + j];
        size_t at = (size_t)t * rows + out_row;
        if (y_f32) y_f32[at] = s;
        else y[at] = f32_to_bf16(s);
    }
}

extern "C" __global__ void gemv_q4_0(const unsigned char* qs, const unsigned short* scales,
                                     const bf16* x, bf16* y, float* y_f32, int rows,
                                     int k_blocks, int tokens, int lanes) {
    gemv<KIND_Q4_0>(qs, scales, x, y, y_f32, rows, k_blocks, tokens, lanes);
}

extern "C" __global__ void gemv_q4_1(const unsigned char* qs, const unsigned short* scales,
                                     const bf16* x, bf16* y, float* y_f32, int rows,
                                     int k_blocks, int tokens, int lanes) {
    gemv<KIND_Q4_1>(qs, scales, x, y, y_f32, rows, k_blocks, tokens, lanes);
}

extern "C" __global__ void gemv_q8_0(const unsigned char* qs, const unsigned short* scales,
                                     const bf16* x, bf16* y, float* y_f32, int rows,
                                     int k_blocks, int tokens, int lanes) {
    gemv<KIND_Q8_0>(qs, scales, x, y, y_f32, rows, k_blocks, tokens, lanes);
}

// Blocks `first`..`first + n_blocks` of the planes to bf16 at `out` (32 values a block), four
// blocks a thread, each block stored as four 16-byte words.
template <int KIND>
__device__ __forceinline__ void decode_planes(const unsigned char* qs,
                                              const unsigned short* scales, bf16* out,
                                              size_t first, size_t n_blocks) {
    size_t at = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    for (size_t b = at; b < at + 4 && b < n_blocks; b++) {
        float w[32];
        dequant_block<KIND>(qs, scales, first + b, w);
        for (int c = 0; c < 4; c++) {
            unsigned int u[4];
            for (int i = 0; i < 4; i++)
                u[i] = (unsigned int)f32_to_bf16(w[8 * c + 2 * i]) |
                       ((unsigned int)f32_to_bf16(w[8 * c + 2 * i + 1]) << 16);
            uint4 word;
            word.x = u[0];
            word.y = u[1];
            word.z = u[2];
            word.w = u[3];
            *(uint4*)(out + b * 32 + 8 * c) = word;
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
