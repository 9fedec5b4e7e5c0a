// Shared by every kernel (prepended by nvrtc.rs: NVRTC finds no system headers without a
// toolkit, so nothing here includes any). bf16 is carried as its 16 bits; arithmetic is f32.
typedef unsigned short bf16;

// -infinity without math.h.
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf16_to_f32(bf16 h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest even; NaN stays NaN.
__device__ __forceinline__ bf16 f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

// IEEE half bits to f32 (subnormals included), for GGUF block scales.
__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    unsigned int sign = ((unsigned int)h & 0x8000u) << 16;
    unsigned int exp = (h >> 10) & 0x1fu;
    unsigned int man = h & 0x3ffu;
    if (exp == 0) {
        float v = (float)man * 5.9604644775390625e-8f; // 2^-24
        return sign ? -v : v;
    }
    if (exp == 31) return __uint_as_float(sign | 0x7f800000u | (man << 13));
    return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// The 8 bf16 of a 16-byte word as floats.
__device__ __forceinline__ void unpack8(uint4 w, float* f) {
    unsigned int u[4] = {w.x, w.y, w.z, w.w};
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(u[i] << 16);
        f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
}

// 8 floats as the 8 bf16 of a 16-byte word (rounded to nearest even).
__device__ __forceinline__ uint4 pack8(const float* f) {
    uint4 w;
    w.x = (unsigned int)f32_to_bf16(f[0]) | ((unsigned int)f32_to_bf16(f[1]) << 16);
    w.y = (unsigned int)f32_to_bf16(f[2]) | ((unsigned int)f32_to_bf16(f[3]) << 16);
    w.z = (unsigned int)f32_to_bf16(f[4]) | ((unsigned int)f32_to_bf16(f[5]) << 16);
    w.w = (unsigned int)f32_to_bf16(f[6]) | ((unsigned int)f32_to_bf16(f[7]) << 16);
    return w;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
__device__ float block_sum(float v) {
    __shared__ float partial[32];
    __shared__ float total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.0f;
        s = warp_sum(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}
