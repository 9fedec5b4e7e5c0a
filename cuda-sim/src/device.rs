//! The simulated device: an H100-like GPU with a memory size of our choosing.
//!
//! The simulated device: an H100-like GPU (compute capability 9.0, its limits and clocks), with
//! a memory size of our choosing, since its memory is the host's.

/// The name the driver reports. It says plainly that the device is simulated, so every log line
/// and report that prints the device's name says so too.
pub(crate) const NAME: &str = "NVIDIA H100 80GB HBM3 (simulated by vigil-cuda-sim)";

/// The CUDA version the driver claims (12.8, what cudarc is built against).
pub(crate) const DRIVER_VERSION: i32 = 12080;

/// Device memory, in bytes: `CUDA_SIM_MEMORY_MIB` (default 2048). An H100 has 80 GiB; the
/// host running the tests does not, and allocations are real host memory.
pub(crate) fn total_memory() -> u64 {
    std::env::var("CUDA_SIM_MEMORY_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(2048)
        << 20
}

pub(crate) const MAX_THREADS_PER_BLOCK: u32 = 1024;
pub(crate) const MAX_BLOCK_DIM: [u32; 3] = [1024, 1024, 64];
pub(crate) const MAX_GRID_DIM: [u32; 3] = [i32::MAX as u32, 65535, 65535];
/// Static plus dynamic shared memory a block may use without opting in.
pub(crate) const MAX_SHARED_PER_BLOCK: u64 = 48 * 1024;

/// `cuDeviceGetAttribute`: the H100 SXM's values, `None` for attributes not simulated (the
/// call then fails with the attribute's number).
pub(crate) fn attribute(attribute: i32) -> Option<i32> {
    Some(match attribute {
        1 => MAX_THREADS_PER_BLOCK as i32,
        2..=4 => MAX_BLOCK_DIM[(attribute - 2) as usize] as i32,
        5..=7 => MAX_GRID_DIM[(attribute - 5) as usize] as i32,
        8 => MAX_SHARED_PER_BLOCK as i32,
        9 => 64 * 1024,
        10 => 32,
        12 => 64 * 1024,
        13 => 1_980_000,
        16 => 132,
        18 => 0,
        36 => 2_619_000,
        37 => 5120,
        38 => 50 * 1024 * 1024,
        39 => 2048,
        41 => 1,
        75 => 9,
        76 => 0,
        97 => 227 * 1024,
        115 => 1,
        _ => return None,
    })
}
