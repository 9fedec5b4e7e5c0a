//! The profiler's counts against what a kernel's source and the driver calls say they move.
//!
//! A test binary of its own: profiling is switched on for the whole process, before its first
//! launch, by `VIGIL_SIM_PROFILE`.

mod common;

use common::*;
use vigil_cuda_sim::{take_profile, CopyKind, CopyProfile, SECTOR_BYTES};

/// `float4_sums` has each thread load one `float4` and store one `float`: `n` floats are read
/// as `n / 4` loads of 16 bytes (`4n` bytes, `4n / 32` sectors) and `n / 4` stores of 4 bytes
/// (`n` bytes, `n / 32` sectors); run twice, it counts the same. The copies around it and a
/// synchronisation are counted as the driver was asked for them.
#[test]
fn a_float4_kernel_counts_its_16_byte_loads_and_their_sectors() {
    std::env::set_var("VIGIL_SIM_PROFILE", "1");
    let dev = Device::open();
    let n = 4096u64;
    let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let (input, out) = (dev.upload(&values), dev.upload(&vec![0f32; n as usize / 4]));
    let uploads = take_profile();
    assert_eq!(
        uploads.copies,
        [4 * n, n].map(|bytes| CopyProfile {
            kind: CopyKind::HostToDevice,
            bytes
        })
    );
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
        let profile = take_profile();
        assert_eq!(profile.launches.len(), 1, "{profile:?}");
        profile.launches.into_iter().next().unwrap()
    };
    let first = run();
    assert_eq!(first.kernel, "float4_sums");
    assert_eq!((first.grid, first.block), ([8, 1, 1], [128, 1, 1]));
    // Widths 1, 2, 4, 8, 16 bytes.
    assert_eq!(first.global_loads.by_width, [0, 0, 0, 0, n / 4]);
    assert_eq!(first.global_loads.bytes, 4 * n);
    assert_eq!(first.global_loads.mean_width(), 16.0);
    assert_eq!(first.global_stores.by_width, [0, 0, n / 4, 0, 0]);
    assert_eq!(first.global_stores.bytes, n);
    assert_eq!(first.global_sectors, (4 * n + n) / SECTOR_BYTES);
    assert_eq!(run(), first);

    ok(cuCtxSynchronize(), "sync");
    let sums: Vec<f32> = dev.download(out, n as usize / 4);
    assert_eq!(sums[1], 4.0 + 5.0 + 6.0 + 7.0);
    let after = take_profile();
    assert_eq!(after.syncs, 1);
    assert_eq!(
        after.copies,
        [CopyProfile {
            kind: CopyKind::DeviceToHost,
            bytes: n
        }]
    );
}
