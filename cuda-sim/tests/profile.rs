//! The profiler's counts against what a kernel's source says it moves.
//!
//! A test binary of its own: profiling is switched on for the whole process, before its first
//! launch, by `VIGIL_SIM_PROFILE`.

mod common;

use common::*;

/// `float4_sums` has each thread load one `float4` and store one `float`: `n` floats are read
/// as `n / 4` loads of 16 bytes (`4n` bytes, `4n / 32` sectors) and `n / 4` stores of 4 bytes
/// (`n` bytes, `n / 32` sectors); run twice, it counts the same.
#[test]
fn a_float4_kernel_counts_its_16_byte_loads_and_their_sectors() {
    std::env::set_var("VIGIL_SIM_PROFILE", "1");
    let dev = Device::open();
    let n = 4096u64;
    let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let (input, out) = (dev.upload(&values), dev.upload(&vec![0f32; n as usize / 4]));
    let run = || {
        let (mut input, mut out) = (input, out);
        let threads = 128;
        let blocks = (n / 4) as u32 / threads;
        ok(
            dev.launch(
                "float4_sums",
                blocks,
                threads,
                &mut [arg(&mut input), arg(&mut out)],
            ),
            "launch",
        );
        let profiles = vigil_cuda_sim::take_profile();
        assert_eq!(profiles.len(), 1, "{profiles:?}");
        profiles.into_iter().next().unwrap()
    };
    let first = run();
    let sums: Vec<f32> = dev.download(out, n as usize / 4);
    assert_eq!(sums[1], 4.0 + 5.0 + 6.0 + 7.0);

    assert_eq!(first.kernel, "float4_sums");
    assert_eq!((first.grid, first.block), ([8, 1, 1], [128, 1, 1]));
    // Widths 1, 2, 4, 8, 16 bytes.
    assert_eq!(first.global_loads.by_width, [0, 0, 0, 0, n / 4]);
    assert_eq!(first.global_loads.bytes, 4 * n);
    assert_eq!(first.global_loads.mean_width(), 16.0);
    assert_eq!(first.global_stores.by_width, [0, 0, n / 4, 0, 0]);
    assert_eq!(first.global_stores.bytes, n);
    assert_eq!(
        first.global_sectors,
        (4 * n + n) / vigil_cuda_sim::SECTOR_BYTES
    );
    assert_eq!(run(), first);
}
