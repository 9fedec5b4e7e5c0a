// CUDA's built-ins for kernels compiled for the host, so the engine's own `.cu` sources run
// unchanged on the simulated device. Force-included before each kernel file (clang++ -include);
// nothing else is included, so a kernel that uses a built-in missing here fails to compile.
//
// A block's threads are fibers on one OS thread (see src/threads.rs): `threadIdx` and friends
// are thread-locals the scheduler sets before it resumes a fiber, `__shared__` variables are
// thread-locals (one block runs on an OS thread at a time), and every operation that waits for
// other threads (__syncthreads, shuffles, votes) calls into the scheduler, which switches fibers
// until the barrier is complete.
#pragma once

typedef __SIZE_TYPE__ size_t;

struct uint3 {
    unsigned int x, y, z;
};
typedef uint3 dim3;

// CUDA's vector types, with their sizes and alignments: clang's vector types have `.x`..`.w`
// and load and store whole, so a `float4` access is one 16-byte access here as on a GPU.
typedef float float2 __attribute__((ext_vector_type(2)));
typedef float float4 __attribute__((ext_vector_type(4)));
typedef int int2 __attribute__((ext_vector_type(2)));
typedef int int4 __attribute__((ext_vector_type(4)));
typedef unsigned int uint2 __attribute__((ext_vector_type(2)));
typedef unsigned int uint4 __attribute__((ext_vector_type(4)));

// CUDA's read-only loads: one access of the type's width. The host compiler may split a plain
// vector load whose lanes are used apart into scalar loads (a GPU's compiler keeps it one
// `ld.global.v4`); a volatile load it keeps whole, so the profile counts it as the GPU would.
template <typename T> static inline __attribute__((always_inline)) T __ldg(const T* p) {
    return *(const volatile T*)p;
}
// Loads cached in L2 only (data other CTAs of the launch wrote): the same here.
template <typename T> static inline __attribute__((always_inline)) T __ldcg(const T* p) {
    return *(const volatile T*)p;
}

extern "C" {
extern thread_local uint3 cuda_sim_threadIdx;
extern thread_local uint3 cuda_sim_blockIdx;
extern thread_local uint3 cuda_sim_blockDim;
extern thread_local uint3 cuda_sim_gridDim;
void cuda_sim_syncthreads(void);
void cuda_sim_syncwarp(unsigned mask);
// One lane's 32 bits exchanged across its warp: `kind` 0 = from lane `arg`, 1 = from lane - arg,
// 2 = from lane + arg, 3 = from lane ^ arg, within segments of `width` lanes.
unsigned cuda_sim_shfl(unsigned mask, unsigned bits, int kind, int arg, int width);
unsigned cuda_sim_ballot(unsigned mask, int predicate);
unsigned cuda_sim_activemask(void);
}

#ifdef CUDA_SIM_PROFILED
// The profiled build counts every memory access; the built-ins are registers on a GPU, so they
// are read here by functions the sanitizer leaves alone.
#define CUDA_SIM_BUILTIN(name, var)                                                                 \
    __attribute__((no_sanitize("kernel-address"), noinline)) static uint3 name() { return var; }
CUDA_SIM_BUILTIN(cuda_sim_thread_idx, cuda_sim_threadIdx)
CUDA_SIM_BUILTIN(cuda_sim_block_idx, cuda_sim_blockIdx)
CUDA_SIM_BUILTIN(cuda_sim_block_dim, cuda_sim_blockDim)
CUDA_SIM_BUILTIN(cuda_sim_grid_dim, cuda_sim_gridDim)
#define threadIdx (cuda_sim_thread_idx())
#define blockIdx (cuda_sim_block_idx())
#define blockDim (cuda_sim_block_dim())
#define gridDim (cuda_sim_grid_dim())
#else
#define threadIdx cuda_sim_threadIdx
#define blockIdx cuda_sim_blockIdx
#define blockDim cuda_sim_blockDim
#define gridDim cuda_sim_gridDim
#endif
#define warpSize 32

#define __global__
#define __host__
#define __device__ static
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __shared__ static thread_local
#define __restrict__ __restrict
#define __launch_bounds__(...)

__device__ __forceinline__ void __syncthreads() { cuda_sim_syncthreads(); }
__device__ __forceinline__ void __syncwarp(unsigned mask = 0xffffffffu) { cuda_sim_syncwarp(mask); }
__device__ __forceinline__ unsigned __activemask() { return cuda_sim_activemask(); }
__device__ __forceinline__ unsigned __ballot_sync(unsigned mask, int p) {
    return cuda_sim_ballot(mask, p);
}
__device__ __forceinline__ int __any_sync(unsigned mask, int p) { return cuda_sim_ballot(mask, p) != 0; }
__device__ __forceinline__ int __all_sync(unsigned mask, int p) {
    return cuda_sim_ballot(mask, p) == (cuda_sim_ballot(mask, 1));
}

template <typename T> __device__ __forceinline__ T cuda_sim_shfl_any(unsigned mask, T v, int kind, int arg, int width) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffles move 4 or 8 bytes");
    unsigned words[sizeof(T) / 4];
    __builtin_memcpy(words, &v, sizeof(T));
    for (unsigned i = 0; i < sizeof(T) / 4; i++) words[i] = cuda_sim_shfl(mask, words[i], kind, arg, width);
    T out;
    __builtin_memcpy(&out, words, sizeof(T));
    return out;
}
template <typename T> __device__ __forceinline__ T __shfl_sync(unsigned m, T v, int src, int w = 32) {
    return cuda_sim_shfl_any(m, v, 0, src, w);
}
template <typename T> __device__ __forceinline__ T __shfl_up_sync(unsigned m, T v, unsigned d, int w = 32) {
    return cuda_sim_shfl_any(m, v, 1, (int)d, w);
}
template <typename T> __device__ __forceinline__ T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32) {
    return cuda_sim_shfl_any(m, v, 2, (int)d, w);
}
template <typename T> __device__ __forceinline__ T __shfl_xor_sync(unsigned m, T v, int lane_mask, int w = 32) {
    return cuda_sim_shfl_any(m, v, 3, lane_mask, w);
}

// Bit casts.
__device__ __forceinline__ float __int_as_float(int i) { float f; __builtin_memcpy(&f, &i, 4); return f; }
__device__ __forceinline__ float __uint_as_float(unsigned i) { float f; __builtin_memcpy(&f, &i, 4); return f; }
__device__ __forceinline__ int __float_as_int(float f) { int i; __builtin_memcpy(&i, &f, 4); return i; }
__device__ __forceinline__ unsigned __float_as_uint(float f) { unsigned i; __builtin_memcpy(&i, &f, 4); return i; }

// Math. The fast intrinsics (__expf, __logf) are approximations on a GPU; here they are the
// accurate functions, one of the differences a simulator cannot remove.
__device__ __forceinline__ float expf(float x) { return __builtin_expf(x); }
__device__ __forceinline__ float __expf(float x) { return __builtin_expf(x); }
__device__ __forceinline__ float logf(float x) { return __builtin_logf(x); }
__device__ __forceinline__ float __logf(float x) { return __builtin_logf(x); }
__device__ __forceinline__ float sqrtf(float x) { return __builtin_sqrtf(x); }
__device__ __forceinline__ float rsqrtf(float x) { return 1.0f / __builtin_sqrtf(x); }
__device__ __forceinline__ float fmaxf(float a, float b) { return __builtin_fmaxf(a, b); }
__device__ __forceinline__ float fminf(float a, float b) { return __builtin_fminf(a, b); }
__device__ __forceinline__ float fabsf(float x) { return __builtin_fabsf(x); }
__device__ __forceinline__ float tanhf(float x) { return __builtin_tanhf(x); }
__device__ __forceinline__ float __fdividef(float a, float b) { return a / b; }
__device__ __forceinline__ int min(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int max(int a, int b) { return a > b ? a : b; }

// Atomics: blocks run in parallel on several OS threads, so these are real atomic operations.
#define CUDA_SIM_ATOMIC_INT(T)                                                                       \
    __device__ __forceinline__ T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); } \
    __device__ __forceinline__ T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); } \
    __device__ __forceinline__ T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); } \
    __device__ __forceinline__ T atomicCAS(T* p, T expected, T v) {                                 \
        __atomic_compare_exchange_n(p, &expected, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);     \
        return expected;                                                                             \
    }                                                                                                \
    __device__ __forceinline__ T atomicMax(T* p, T v) {                                              \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                                \
        while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} \
        return old;                                                                                  \
    }                                                                                                \
    __device__ __forceinline__ T atomicMin(T* p, T v) {                                              \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                                \
        while (old > v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} \
        return old;                                                                                  \
    }
CUDA_SIM_ATOMIC_INT(int)
CUDA_SIM_ATOMIC_INT(unsigned int)
CUDA_SIM_ATOMIC_INT(unsigned long long)
#undef CUDA_SIM_ATOMIC_INT

__device__ __forceinline__ float atomicAdd(float* p, float v) {
    unsigned* bits = (unsigned*)p;
    unsigned old = __atomic_load_n(bits, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(bits, &old, __float_as_uint(__uint_as_float(old) + v), true,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return __uint_as_float(old);
}

__device__ __forceinline__ void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
__device__ __forceinline__ void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
