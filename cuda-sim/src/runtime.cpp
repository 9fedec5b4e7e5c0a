// The built-in variables' storage, and the setters the fiber scheduler calls before it resumes
// a CUDA thread (src/threads.rs).
extern "C" {
thread_local uint3 cuda_sim_threadIdx;
thread_local uint3 cuda_sim_blockIdx;
thread_local uint3 cuda_sim_blockDim;
thread_local uint3 cuda_sim_gridDim;

void cuda_sim_set_thread(unsigned x, unsigned y, unsigned z) { cuda_sim_threadIdx = {x, y, z}; }

void cuda_sim_set_block(const unsigned* block, const unsigned* block_dim, const unsigned* grid_dim) {
    cuda_sim_blockIdx = {block[0], block[1], block[2]};
    cuda_sim_blockDim = {block_dim[0], block_dim[1], block_dim[2]};
    cuda_sim_gridDim = {grid_dim[0], grid_dim[1], grid_dim[2]};
}
}
