// Kernels with known answers, for the simulator's own tests (tests/fidelity.rs).

// Every lane's value summed across its warp by xor shuffles; lane 0 writes the warp's sum.
extern "C" __global__ void warp_shuffle_sum(const float* in, float* out) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = in[i];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) out[i / 32] = v;
}

// Each thread writes its slot of shared memory (a value unique to this launch's `token`), then
// reads its neighbour's: with the barrier between them (`with_barrier`), every neighbour has
// written; without it, a thread that reads first sees what the slot held before.
extern "C" __global__ void barrier_order(int* out, int with_barrier, int token) {
    __shared__ int slots[1024];
    unsigned t = threadIdx.x;
    slots[t] = token * 10000 + (int)t;
    if (with_barrier) __syncthreads();
    out[blockIdx.x * blockDim.x + t] = slots[(t + 1) % blockDim.x];
}

// A histogram of byte values by atomicAdd from every block at once.
extern "C" __global__ void atomic_histogram(const unsigned char* data, size_t n, unsigned int* bins) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(&bins[data[i]], 1u);
}

// Votes and the other shuffles: per warp, the ballot of odd values, and each lane's value
// broadcast from lane 3, shifted down by one and up by one.
extern "C" __global__ void warp_votes(const int* in, unsigned* ballots, int* from3, int* down1, int* up1) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    int v = in[i];
    unsigned b = __ballot_sync(0xffffffffu, v & 1);
    if ((threadIdx.x & 31) == 0) ballots[i / 32] = b;
    from3[i] = __shfl_sync(0xffffffffu, v, 3);
    down1[i] = __shfl_down_sync(0xffffffffu, v, 1);
    up1[i] = __shfl_up_sync(0xffffffffu, v, 1);
}

// Writes one element past the end of `out` from the last thread of the last block.
extern "C" __global__ void write_past_end(float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = 1.0f;
    if (i == n - 1) out[n] = 2.0f;
}

// Writes one element before the start of `out`.
extern "C" __global__ void write_before_start(float* out) {
    if (threadIdx.x == 0) out[-1] = 3.0f;
}

// Reads one element past the end of `in`.
extern "C" __global__ void read_past_end(const float* in, float* out, int n) {
    if (threadIdx.x == 0) out[0] = in[n];
}

// `rounds` barriers in a row, for the benchmark of the simulator's barrier against OS threads.
extern "C" __global__ void barrier_loop(int* out, int rounds) {
    for (int r = 0; r < rounds; r++) __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = rounds;
}

// Each thread loads one float4 and stores the sum of its lanes.
extern "C" __global__ void float4_sums(const float4* in, float* out) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float4 v = in[i];
    out[i] = v.x + v.y + v.z + v.w;
}

// Thread t of the grid reads the count n and sums floats t, t + threads, ... below n.
extern "C" __global__ void strided_sum(const float* in, const int* n, float* out) {
    int threads = gridDim.x * blockDim.x, t = blockIdx.x * blockDim.x + threadIdx.x;
    int count = *n;
    float sum = 0.0f;
    for (int i = t; i < count; i += threads) sum += in[i];
    out[t] = sum;
}

// Each block of 128 threads reverses its 128 floats through shared memory.
extern "C" __global__ void shared_reverse(const float* in, float* out) {
    __shared__ float tile[128];
    int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    tile[t] = in[i];
    __syncthreads();
    out[i] = tile[blockDim.x - 1 - t];
}
