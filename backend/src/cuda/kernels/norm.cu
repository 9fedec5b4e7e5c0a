// RMSNorm over each token's hidden vector: out = x * rsqrt(mean(x^2) + eps) * w. One block of
// NORM_THREADS per token, 16-byte words (hidden a multiple of 8, at most NORM_MAX_HIDDEN): each
// thread holds its words between the sum and the scaling, so every element is loaded once.
// With `residual` non-null, x + residual is normalised (its sum of squares taken before bf16
// rounding) and written back to residual first, rounded (the fused add of Llama's pre-norm
// blocks); the output scales the rounded sum.
#define NORM_THREADS 256
#define NORM_MAX_WORDS 4
#define NORM_MAX_HIDDEN (8 * NORM_THREADS * NORM_MAX_WORDS)

extern "C" __global__ void rms_norm(const bf16* x, bf16* residual, const bf16* w, bf16* out,
                                    int hidden, float eps) {
    int t = blockIdx.x;
    int words = hidden / 8;
    const uint4* row = (const uint4*)(x + (size_t)t * hidden);
    uint4* res = residual ? (uint4*)(residual + (size_t)t * hidden) : 0;
    uint4 held[NORM_MAX_WORDS];
    float ss = 0.0f;
    for (int n = 0; n < NORM_MAX_WORDS; n++) {
        int i = threadIdx.x + n * NORM_THREADS;
        if (i >= words) break;
        uint4 word = __ldg(row + i);
        float v[8];
        unpack8(word, v);
        if (res) {
            float r[8];
            unpack8(__ldg(res + i), r);
            for (int j = 0; j < 8; j++) v[j] += r[j];
            word = pack8(v);
            res[i] = word;
        }
        held[n] = word;
        for (int j = 0; j < 8; j++) ss += v[j] * v[j];
    }
    ss = block_sum(ss);
    float scale = rsqrtf(ss / (float)hidden + eps);
    const uint4* weights = (const uint4*)w;
    uint4* to = (uint4*)(out + (size_t)t * hidden);
    for (int n = 0; n < NORM_MAX_WORDS; n++) {
        int i = threadIdx.x + n * NORM_THREADS;
        if (i >= words) break;
        float v[8], g[8];
        unpack8(held[n], v);
        unpack8(__ldg(weights + i), g);
        for (int j = 0; j < 8; j++) v[j] = v[j] * scale * g[j];
        to[i] = pack8(v);
    }
}

// x += y, elementwise (residual connections).
extern "C" __global__ void add_inplace(bf16* x, const bf16* y, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = f32_to_bf16(bf16_to_f32(x[i]) + bf16_to_f32(y[i]));
}
