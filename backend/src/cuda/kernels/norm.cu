// RMSNorm over each token's hidden vector: out = x * rsqrt(mean(x^2) + eps) * w. One block per
// token. With `residual` non-null, x + residual is normalised and written back to residual first
// (the fused add of Llama's pre-norm blocks).
extern "C" __global__ void rms_norm(const bf16* x, bf16* residual, const bf16* w, bf16* out,
                                    int hidden, float eps) {
    int t = blockIdx.x;
    const bf16* row = x + (size_t)t * hidden;
    bf16* res = residual ? residual + (size_t)t * hidden : 0;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = bf16_to_f32(row[i]);
        if (res) {
            v += bf16_to_f32(res[i]);
            res[i] = f32_to_bf16(v);
        }
        ss += v * v;
    }
    ss = block_sum(ss);
    float scale = rsqrtf(ss / (float)hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = res ? bf16_to_f32(res[i]) : bf16_to_f32(row[i]);
        out[(size_t)t * hidden + i] = f32_to_bf16(v * scale * bf16_to_f32(w[i]));
    }
}

// x += y, elementwise (residual connections).
extern "C" __global__ void add_inplace(bf16* x, const bf16* y, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = f32_to_bf16(bf16_to_f32(x[i]) + bf16_to_f32(y[i]));
}
