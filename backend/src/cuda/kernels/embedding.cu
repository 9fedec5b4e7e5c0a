// Embedding gather: out[t, :] = table[ids[t], :]. One block per token.
extern "C" __global__ void embedding_gather(const bf16* table, const unsigned int* ids, bf16* out,
                                            int hidden) {
    int t = blockIdx.x;
    const bf16* row = table + (size_t)ids[t] * hidden;
    bf16* dst = out + (size_t)t * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = row[i];
}
