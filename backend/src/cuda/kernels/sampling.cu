// Greedy sampling on the device: the index of each row's largest logit (ties: the lowest index,
// as the CPU backend) and its log-probability, -log(sum(exp(x - max))). One block per row (a
// multiple of 32 threads); only ids and log-probabilities go back to the host.
extern "C" __global__ void argmax_rows(const float* logits, int vocab, unsigned int* ids,
                                       float* logprobs) {
    const float* row = logits + (size_t)blockIdx.x * vocab;
    float best = NEG_INF;
    int best_i = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = row[i];
        if (v > best || (v == best && i < best_i)) {
            best = v;
            best_i = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
        if (ov > best || (ov == best && oi < best_i)) {
            best = ov;
            best_i = oi;
        }
    }
    __shared__ float wv[32];
    __shared__ int wi[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        wv[warp] = best;
        wi[warp] = best_i;
    }
    __syncthreads();
    __shared__ float row_max;
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++) {
            if (wv[w] > best || (wv[w] == best && wi[w] < best_i)) {
                best = wv[w];
                best_i = wi[w];
            }
        }
        ids[blockIdx.x] = (unsigned int)best_i;
        row_max = best;
    }
    __syncthreads();
    float m = row_max;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) sum += __expf(row[i] - m);
    sum = block_sum(sum);
    if (threadIdx.x == 0) logprobs[blockIdx.x] = -__logf(sum);
}
