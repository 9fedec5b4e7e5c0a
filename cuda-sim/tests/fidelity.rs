//! The simulator against known answers, through the simulated driver.
//!
//! The simulator against known answers: kernels from `tests/kernels/fidelity.cu`, compiled to
//! PTX by the real NVRTC (as the engine's are) and launched through the simulated driver's C
//! functions. Each states what a GPU does, independent of how the simulator does it.

mod common;

use std::ffi::c_void;

use common::*;

#[test]
fn a_shuffle_reduction_sums_each_warp() {
    let dev = Device::open();
    let values: Vec<f32> = (0..256).map(|i| i as f32).collect();
    let (mut input, mut out) = (dev.upload(&values), dev.upload(&[0f32; 8]));
    ok(
        dev.launch(
            "warp_shuffle_sum",
            2,
            128,
            &mut [arg(&mut input), arg(&mut out)],
        ),
        "launch",
    );
    let sums: Vec<f32> = dev.download(out, 8);
    // Warp w holds 32w .. 32w+31: their sum is 32·32w + 31·32/2.
    let expected: Vec<f32> = (0..8).map(|w| (1024 * w + 496) as f32).collect();
    assert_eq!(sums, expected);
}

#[test]
fn syncthreads_orders_shared_memory_writes_before_reads() {
    let dev = Device::open();
    for (with_barrier, token) in [(1i32, 1i32), (0, 2), (1, 3)] {
        let mut out = dev.upload(&[0i32; 512]);
        let (mut flag, mut tok) = (with_barrier, token);
        ok(
            dev.launch(
                "barrier_order",
                2,
                256,
                &mut [arg(&mut out), arg(&mut flag), arg(&mut tok)],
            ),
            "launch",
        );
        let got: Vec<i32> = dev.download(out, 512);
        let neighbours: Vec<i32> = (0..512)
            .map(|i| token * 10000 + (i % 256 + 1) % 256)
            .collect();
        if with_barrier == 1 {
            // Every thread sees its neighbour's write of this launch.
            assert_eq!(got, neighbours);
        } else {
            // Without the barrier some thread reads before its neighbour wrote: the simulator
            // must not hide a missing barrier.
            assert_ne!(got, neighbours, "a missing __syncthreads went unnoticed");
        }
    }
}

#[test]
fn atomics_from_every_block_count_exactly() {
    let dev = Device::open();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut expected = vec![0u32; 256];
    for &b in &data {
        expected[b as usize] += 1;
    }
    let (mut d, mut bins) = (dev.upload(&data), dev.upload(&[0u32; 256]));
    let mut n = data.len();
    let blocks = data.len().div_ceil(256) as u32;
    ok(
        dev.launch(
            "atomic_histogram",
            blocks,
            256,
            &mut [arg(&mut d), arg(&mut n), arg(&mut bins)],
        ),
        "launch",
    );
    assert_eq!(dev.download::<u32>(bins, 256), expected);
}

#[test]
fn votes_and_shuffles_follow_their_lanes() {
    let dev = Device::open();
    let values: Vec<i32> = (0..64).map(|i| i * 3).collect();
    let mut input = dev.upload(&values);
    let mut ballots = dev.upload(&[0u32; 2]);
    let (mut from3, mut down1, mut up1) = (
        dev.upload(&[0i32; 64]),
        dev.upload(&[0i32; 64]),
        dev.upload(&[0i32; 64]),
    );
    ok(
        dev.launch(
            "warp_votes",
            1,
            64,
            &mut [
                arg(&mut input),
                arg(&mut ballots),
                arg(&mut from3),
                arg(&mut down1),
                arg(&mut up1),
            ],
        ),
        "launch",
    );
    // i*3 is odd exactly when i is odd: lanes 1, 3, 5, ...
    assert_eq!(dev.download::<u32>(ballots, 2), vec![0xaaaa_aaaa; 2]);
    let from3: Vec<i32> = dev.download(from3, 64);
    assert!(from3[..32].iter().all(|&v| v == 9) && from3[32..].iter().all(|&v| v == 105));
    let down1: Vec<i32> = dev.download(down1, 64);
    let up1: Vec<i32> = dev.download(up1, 64);
    for i in 0..64 {
        let lane = i % 32;
        // Past the warp's edge a lane keeps its own value.
        let d = if lane == 31 { values[i] } else { values[i + 1] };
        let u = if lane == 0 { values[i] } else { values[i - 1] };
        assert_eq!((down1[i], up1[i]), (d, u), "lane {i}");
    }
}

#[test]
fn launches_beyond_the_devices_limits_fail_as_on_a_gpu() {
    let dev = Device::open();
    let mut out = dev.upload(&[0f32; 8]);
    let mut input = dev.upload(&[0f32; 8]);
    // 2048 threads per block: an H100 takes at most 1024.
    let code = dev.launch(
        "warp_shuffle_sum",
        1,
        2048,
        &mut [arg(&mut input), arg(&mut out)],
    );
    assert_eq!(code, CUDA_ERROR_INVALID_VALUE);
    assert!(check_launch_config([1, 1, 1], [1024, 1, 1], 48 * 1024).is_ok());
    assert!(check_launch_config([1, 1, 1], [32, 1, 1], 48 * 1024 + 1).is_err());
    assert!(check_launch_config([1, 65536, 1], [32, 1, 1], 0).is_err());
}

#[test]
fn a_module_from_other_sources_is_refused() {
    // SAFETY: plain driver calls with valid pointers.
    unsafe {
        ok(cuInit(0), "init");
        let ptx = c".version 8.8\n.target sm_90\n.address_size 64\n.visible .entry warp_shuffle_sum(\n.param .u64 p0\n)\n{\nret;\n}\n";
        let mut module = std::ptr::null_mut();
        let code = cuModuleLoadData(&mut module, ptx.as_ptr() as *const c_void);
        assert_eq!(
            code, CUDA_ERROR_INVALID_PTX,
            "one parameter where the source has two"
        );
        let ptx = c".version 8.8\n.target sm_100\n.address_size 64\n";
        assert_eq!(
            cuModuleLoadData(&mut module, ptx.as_ptr() as *const c_void),
            CUDA_ERROR_INVALID_PTX
        );
    }
}

/// PTX that carries the digest of its source (as the backend's does) is refused when the
/// simulator was built from another version of that source: a stale host build of a kernel
/// cannot pass for the current one. The same PTX with the digest of the source the simulator
/// has loads.
#[test]
fn ptx_from_another_version_of_the_source_is_refused() {
    use sha2::Digest;
    let with_digest = |digest: &str| {
        ptx(format!(
            "{SOURCE}\nextern \"C\" __device__ const char vigil_source_digest[] = \"{digest}\";\n"
        ))
    };
    let current: String = sha2::Sha256::digest(SOURCE.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let other: String = current.chars().rev().collect();
    // SAFETY: plain driver calls with valid pointers.
    unsafe {
        ok(cuInit(0), "init");
        let mut module = std::ptr::null_mut();
        let stale = with_digest(&other);
        assert_eq!(
            cuModuleLoadData(&mut module, stale.as_ptr() as *const c_void),
            CUDA_ERROR_INVALID_PTX
        );
        let fresh = with_digest(&current);
        ok(
            cuModuleLoadData(&mut module, fresh.as_ptr() as *const c_void),
            "the current source's PTX",
        );
    }
}

/// Runs `kernel`'s out-of-bounds case in a child process (where a memcheck report could still
/// end the process: the fiber cannot always be ended) and returns its exit status and its
/// output, stdout then stderr.
fn bad_access_in_a_child(kernel: &str) -> (Option<i32>, String) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "bad_access_child",
            "--nocapture",
            "--include-ignored",
        ])
        .env("CUDA_SIM_BAD_ACCESS", kernel)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The child's part of the out-of-bounds tests.
#[test]
#[ignore = "run by the out-of-bounds tests in a child process"]
fn bad_access_child() {
    let Ok(kernel) = std::env::var("CUDA_SIM_BAD_ACCESS") else {
        return;
    };
    let dev = Device::open();
    let mut buf = dev.upload(&[0f32; 100]);
    let mut out = dev.upload(&[0f32; 1]);
    let mut n = 100i32;
    let code = match kernel.as_str() {
        "write_past_end" => dev.launch(&kernel, 4, 32, &mut [arg(&mut buf), arg(&mut n)]),
        "write_before_start" => dev.launch(&kernel, 1, 32, &mut [arg(&mut buf)]),
        _ => dev.launch(
            &kernel,
            1,
            32,
            &mut [arg(&mut buf), arg(&mut out), arg(&mut n)],
        ),
    };
    // CUDA's illegal address, and the simulated device goes on: the next launch runs.
    assert_eq!(code, CUDA_ERROR_ILLEGAL_ADDRESS, "the launch's error");
    let mut sums = dev.upload(&[0f32; 2]);
    let mut values = dev.upload(&(0..64).map(|i| i as f32).collect::<Vec<_>>());
    assert_eq!(
        dev.launch(
            "warp_shuffle_sum",
            1,
            64,
            &mut [arg(&mut values), arg(&mut sums)]
        ),
        CUDA_SUCCESS,
        "a launch after the fault"
    );
    println!("the launch failed with 700, and the next one ran");
}

#[test]
fn an_out_of_bounds_write_is_caught_with_its_kernel_block_and_thread() {
    let (code, stderr) = bad_access_in_a_child("write_past_end");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("the launch failed with 700, and the next one ran"),
        "{stderr}"
    );
    // Thread 99 is block 3's thread 3 (32 threads a block); float 100 is 0 bytes past the end.
    assert!(
        stderr.contains(
            "invalid write of device memory in kernel `write_past_end`, block [3, 0, 0], thread [3, 0, 0]"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("is 0 bytes past the end of a 400-byte allocation"),
        "{stderr}"
    );
}

#[test]
fn an_out_of_bounds_read_is_caught() {
    let (code, stderr) = bad_access_in_a_child("read_past_end");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("the launch failed with 700, and the next one ran"),
        "{stderr}"
    );
    assert!(
        stderr.contains("invalid read of device memory in kernel `read_past_end`, block [0, 0, 0], thread [0, 0, 0]"),
        "{stderr}"
    );
}

#[test]
fn a_write_before_the_start_is_caught_by_the_guard_bytes() {
    let (code, stderr) = bad_access_in_a_child("write_before_start");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("the launch failed with 700, and the next one ran"),
        "{stderr}"
    );
    assert!(
        stderr.contains("invalid write of device memory in kernel `write_before_start`")
            && stderr.contains("4 bytes before the start of a 400-byte allocation"),
        "{stderr}"
    );
}
