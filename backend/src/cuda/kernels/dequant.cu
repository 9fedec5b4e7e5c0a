// Dequantization of GGUF weights to bf16 at load time, one thread per 32-value block. Block
// layouts (ggml): Q8_0 = f16 d, 32 x i8 (v = d*q); Q4_0 = f16 d, 16 bytes (low nibbles are
// values 0-15, high nibbles 16-31; v = d*(q-8)); Q4_1 = f16 d, f16 m, 16 bytes (v = d*q + m).
// Blocks are byte-packed and unaligned, so fields are read byte by byte.
__device__ __forceinline__ unsigned short read_u16(const unsigned char* p) {
    return (unsigned short)(p[0] | (p[1] << 8));
}

extern "C" __global__ void dequant_q8_0(const unsigned char* blocks, bf16* out, size_t n_blocks) {
    size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) return;
    const unsigned char* p = blocks + b * 34;
    float d = f16_to_f32(read_u16(p));
    for (int i = 0; i < 32; i++) out[b * 32 + i] = f32_to_bf16(d * (float)(signed char)p[2 + i]);
}

extern "C" __global__ void dequant_q4_0(const unsigned char* blocks, bf16* out, size_t n_blocks) {
    size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) return;
    const unsigned char* p = blocks + b * 18;
    float d = f16_to_f32(read_u16(p));
    for (int i = 0; i < 16; i++) {
        unsigned char q = p[2 + i];
        out[b * 32 + i] = f32_to_bf16(d * (float)((int)(q & 0x0f) - 8));
        out[b * 32 + 16 + i] = f32_to_bf16(d * (float)((int)(q >> 4) - 8));
    }
}

extern "C" __global__ void dequant_q4_1(const unsigned char* blocks, bf16* out, size_t n_blocks) {
    size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) return;
    const unsigned char* p = blocks + b * 20;
    float d = f16_to_f32(read_u16(p));
    float m = f16_to_f32(read_u16(p + 2));
    for (int i = 0; i < 16; i++) {
        unsigned char q = p[4 + i];
        out[b * 32 + i] = f32_to_bf16(d * (float)(q & 0x0f) + m);
        out[b * 32 + 16 + i] = f32_to_bf16(d * (float)(q >> 4) + m);
    }
}

// f16 and f32 weights to bf16.
extern "C" __global__ void convert_f16(const unsigned short* in, bf16* out, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_bf16(f16_to_f32(in[i]));
}

extern "C" __global__ void convert_f32(const float* in, bf16* out, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_bf16(in[i]);
}
