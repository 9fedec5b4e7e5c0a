//! The profiler's counts against what a kernel's source and the driver calls say they move.
//!
//! A test binary of its own: profiling is switched on for the whole process, before its first
//! launch, by `VIGIL_SIM_PROFILE`; its tests take turns, since a profile is the process's.

mod common;

use std::ffi::c_void;
use std::sync::{Mutex, MutexGuard};

use common::*;
use vigil_cuda_sim::{take_profile, CopyKind, CopyProfile, LaunchProfile, SECTOR_BYTES};

/// Profiling on, this test's turn, and the profile so far discarded.
fn profiling() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("VIGIL_SIM_PROFILE", "1");
    take_profile();
    turn
}

/// `float4_sums` has each thread load one `float4` and store one `float`: `n` floats are read
/// as `n / 4` loads of 16 bytes (`4n` bytes, `4n / 32` sectors) and `n / 4` stores of 4 bytes
/// (`n` bytes, `n / 32` sectors); run twice, it counts the same. The copies around it and a
/// synchronisation are counted as the driver was asked for them.
#[test]
fn a_float4_kernel_counts_its_16_byte_loads_and_their_sectors() {
    let _turn = profiling();
    let dev = Device::open();
    let n = 4096u64;
    let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let (input, out) = (dev.upload(&values), dev.upload(&vec![0f32; n as usize / 4]));
    let uploads = take_profile();
    assert_eq!(
        uploads.copies,
        [4 * n, n].map(|bytes| CopyProfile {
            kind: CopyKind::HostToDevice,
            bytes,
            pinned: false,
            in_graph: false,
        })
    );
    let run = || {
        ok(launch_sums(&dev, input, out, n), "launch");
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
    assert_eq!((first.barriers, first.warp_exchanges), (0, 0));
    // Parameters and built-ins are not memory accesses: nothing else was touched.
    let others = [
        &first.shared_loads,
        &first.shared_stores,
        &first.local_loads,
        &first.local_stores,
    ];
    assert_eq!(others.iter().map(|a| a.bytes).sum::<u64>(), 0);
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
            bytes: n,
            pinned: false,
            in_graph: false,
        }]
    );

    // The same record through the C entry point a process that loaded the simulator as
    // libcuda.so calls.
    ok(launch_sums(&dev, input, out, n), "launch");
    let json = vigil_cuda_sim::cuda_sim_profile_take();
    assert!(!json.is_null());
    // SAFETY: a NUL-terminated string from the simulator, freed once below.
    let text = unsafe { std::ffi::CStr::from_ptr(json) }
        .to_str()
        .unwrap()
        .to_owned();
    unsafe { vigil_cuda_sim::cuda_sim_profile_free(json) };
    let profile: serde_json::Value = serde_json::from_str(&text).unwrap();
    let launch = &profile["launches"][0];
    assert_eq!(launch["kernel"], "float4_sums");
    assert_eq!(launch["global_loads"]["by_width"][4], n / 4);
    assert_eq!(launch["global_sectors"], (4 * n + n) / SECTOR_BYTES);
}

/// Launches `float4_sums` over the `n` floats at `input`, 128 threads a block.
fn launch_sums(dev: &Device, input: u64, out: u64, n: u64) -> CUresult {
    let (mut input, mut out) = (input, out);
    dev.launch(
        "float4_sums",
        (n / 4) as u32 / 128,
        128,
        &mut [arg(&mut input), arg(&mut out)],
    )
}

/// `barrier_loop` makes each block pass `rounds` `__syncthreads` and has its thread 0 store one
/// int: 2 blocks and 5 rounds are 10 barriers, no warp exchange, 2 stores of 4 bytes.
#[test]
fn barriers_are_counted_per_block() {
    let _turn = profiling();
    let dev = Device::open();
    let mut out = dev.upload(&[0i32; 2]);
    let mut rounds = 5i32;
    ok(
        dev.launch(
            "barrier_loop",
            2,
            64,
            &mut [arg(&mut out), arg(&mut rounds)],
        ),
        "launch",
    );
    let launch = profiled_launch("barrier_loop");
    assert_eq!((launch.barriers, launch.warp_exchanges), (10, 0));
    assert_eq!(launch.global_stores.by_width, [0, 0, 2, 0, 0]);
}

/// `shared_reverse` has each of 2 x 128 threads load a float from global memory, store it to
/// shared memory, pass one barrier, load another thread's from shared memory and store it to
/// global memory: 256 4-byte accesses of each kind, 2 barriers, nothing on a thread's stack.
#[test]
fn shared_memory_is_counted_apart_from_global_and_local() {
    let _turn = profiling();
    let dev = Device::open();
    let values: Vec<f32> = (0..256).map(|i| i as f32).collect();
    let (mut input, mut out) = (dev.upload(&values), dev.upload(&[0f32; 256]));
    ok(
        dev.launch(
            "shared_reverse",
            2,
            128,
            &mut [arg(&mut input), arg(&mut out)],
        ),
        "launch",
    );
    let reversed: Vec<f32> = dev.download(out, 256);
    assert_eq!((reversed[0], reversed[128]), (127.0, 255.0));
    let launch = profiled_launch("shared_reverse");
    let four_bytes = [0, 0, 256, 0, 0];
    assert_eq!(launch.global_loads.by_width, four_bytes);
    assert_eq!(launch.global_stores.by_width, four_bytes);
    assert_eq!(launch.shared_stores.by_width, four_bytes);
    assert_eq!(launch.shared_loads.by_width, four_bytes);
    assert_eq!(launch.local_loads.bytes + launch.local_stores.bytes, 0);
    assert_eq!(launch.barriers, 2);
}

/// `strided_sum` over 1000 floats with 2 x 64 threads: every thread loads the count, thread 0
/// then floats 0, 128, ..., 896 (1 + 8 loads, the longest chain), threads 104..127 7 floats. Its accesses
/// are told apart by allocation: 4000 bytes loaded of the input (125 sectors), 4 of the count,
/// 512 stored to the output (16 sectors).
#[test]
fn a_threads_chain_of_loads_and_each_allocations_share_are_counted() {
    let _turn = profiling();
    let dev = Device::open();
    let values: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    let input = dev.upload(&values);
    let count = dev.upload(&[1000i32]);
    let out = dev.upload(&[0f32; 128]);
    take_profile();
    let (mut i, mut c, mut o) = (input, count, out);
    ok(
        dev.launch(
            "strided_sum",
            2,
            64,
            &mut [arg(&mut i), arg(&mut c), arg(&mut o)],
        ),
        "launch",
    );
    let launch = profiled_launch("strided_sum");
    assert_eq!(launch.max_thread_global_loads, 9);
    assert_eq!(launch.global_loads.by_width[2], 128 + 1000);
    let region = |start: u64| {
        let r = launch
            .regions
            .iter()
            .find(|r| r.start == start)
            .expect("touched");
        (r.loaded_bytes, r.stored_bytes, r.sectors)
    };
    assert_eq!(region(input), (4000, 0, 125));
    assert_eq!(region(count), (128 * 4, 0, 1));
    assert_eq!(region(out), (0, 512, 16));
    assert_eq!(launch.regions.len(), 3);
}

/// Switched off through the C entry point, launches run unprofiled; switched on, they count
/// again.
#[test]
fn profiling_switches_off_and_on_at_run_time() {
    let _turn = profiling();
    let dev = Device::open();
    let n = 512u64;
    let input = dev.upload(&vec![1f32; n as usize]);
    let out = dev.upload(&vec![0f32; n as usize / 4]);
    take_profile();
    vigil_cuda_sim::cuda_sim_profile_enable(0);
    let off = launch_sums(&dev, input, out, n);
    vigil_cuda_sim::cuda_sim_profile_enable(1);
    ok(off, "launch while off");
    assert!(take_profile().launches.is_empty());
    ok(launch_sums(&dev, input, out, n), "launch while on");
    assert_eq!(profiled_launch("float4_sums").global_loads.bytes, 4 * n);
}

/// A stream's captured work runs only when its graph launches, each launch the same kernels
/// over the data as it is then (a graph keeps its nodes' parameters, not the memory they point
/// at); the profile counts each replay's launch as a direct launch would, marked as a graph's.
#[test]
fn a_captured_graph_replays_the_same_launches_when_launched() {
    let _turn = profiling();
    let dev = Device::open();
    let n = 512u64;
    let input = dev.upload(&vec![1f32; n as usize]);
    let out = dev.upload(&vec![0f32; n as usize / 4]);
    ok(launch_sums(&dev, input, out, n), "a direct launch");
    let direct = profiled_launch("float4_sums");
    dev.upload_to(out, &vec![0f32; n as usize / 4]);
    let stream = new_stream();
    // SAFETY: plain driver calls with live handles and out-pointers.
    let exec = unsafe {
        ok(cuStreamBeginCapture_v2(stream, 0), "begin capture");
        let (mut i, mut o) = (input, out);
        ok(
            dev.launch_on(
                stream,
                "float4_sums",
                1,
                128,
                &mut [arg(&mut i), arg(&mut o)],
            ),
            "a captured launch",
        );
        let mut graph = std::ptr::null_mut();
        ok(cuStreamEndCapture(stream, &mut graph), "end capture");
        let mut exec = std::ptr::null_mut();
        ok(
            cuGraphInstantiateWithFlags(&mut exec, graph, 0),
            "instantiate",
        );
        ok(cuGraphDestroy(graph), "destroy the graph");
        exec
    };
    let captured = take_profile();
    assert!(captured.launches.is_empty(), "captured work does not run");
    assert_eq!(dev.download::<f32>(out, 1), [0.0]);
    dev.upload_to(input, &vec![2f32; n as usize]);
    take_profile();
    // SAFETY: as above.
    unsafe {
        ok(cuGraphLaunch(exec, stream), "launch");
        ok(cuGraphLaunch(exec, stream), "launch again");
    }
    assert_eq!(
        dev.download::<f32>(out, 1),
        [8.0],
        "the data as it is at the launch"
    );
    let replayed = take_profile();
    assert_eq!(replayed.graph_launches, 2);
    assert_eq!(replayed.launches.len(), 2);
    for launch in replayed.launches {
        assert!(launch.in_graph);
        assert_eq!(
            LaunchProfile {
                in_graph: false,
                ..launch
            },
            direct
        );
    }
    // SAFETY: as above.
    unsafe { ok(cuGraphExecDestroy(exec), "destroy the instance") };
}

/// What a GPU refuses inside a capture fails, and invalidates the capture: synchronising the
/// capturing stream, and a copy from pageable host memory. A copy from page-locked memory is
/// captured, and counted as pinned when its graph runs.
#[test]
fn a_sync_or_a_pageable_copy_inside_a_capture_fails_and_invalidates_it() {
    let _turn = profiling();
    let dev = Device::open();
    let stream = new_stream();
    let device = dev.upload(&[0u32; 4]);
    let pageable = [7u32; 4];
    // SAFETY: plain driver calls with live handles, buffers and out-pointers.
    unsafe {
        let refused = |during: &dyn Fn() -> CUresult| {
            ok(cuStreamBeginCapture_v2(stream, 0), "begin capture");
            assert_eq!(during(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
            let mut status = 0;
            ok(cuStreamIsCapturing(stream, &mut status), "status");
            assert_eq!(status, 2, "invalidated");
            let mut graph = std::ptr::null_mut();
            assert_eq!(
                cuStreamEndCapture(stream, &mut graph),
                CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
            );
            assert!(graph.is_null());
        };
        refused(&|| cuStreamSynchronize(stream));
        refused(&|| cuCtxSynchronize());
        refused(&|| cuMemcpyHtoDAsync_v2(device, pageable.as_ptr() as *const c_void, 16, stream));

        let mut pinned = std::ptr::null_mut();
        ok(cuMemHostAlloc(&mut pinned, 16, 0), "pinned allocation");
        std::slice::from_raw_parts_mut(pinned as *mut u32, 4).fill(9);
        ok(cuStreamBeginCapture_v2(stream, 0), "begin capture");
        ok(
            cuMemcpyHtoDAsync_v2(device, pinned, 16, stream),
            "a pinned copy",
        );
        let mut graph = std::ptr::null_mut();
        ok(cuStreamEndCapture(stream, &mut graph), "end capture");
        assert_eq!(dev.download::<u32>(device, 4), [0; 4], "not run at capture");
        let mut exec = std::ptr::null_mut();
        ok(
            cuGraphInstantiateWithFlags(&mut exec, graph, 0),
            "instantiate",
        );
        take_profile();
        ok(cuGraphLaunch(exec, stream), "launch");
        assert_eq!(dev.download::<u32>(device, 4), [9; 4]);
        let copies = take_profile().copies;
        assert!(copies[0].pinned && copies[0].in_graph, "{copies:?}");
        ok(cuGraphExecDestroy(exec), "destroy the instance");
        ok(cuGraphDestroy(graph), "destroy the graph");
        ok(cuMemFreeHost(pinned), "free");
    }
}

fn new_stream() -> Handle {
    let mut stream = std::ptr::null_mut();
    // SAFETY: an out-pointer.
    ok(unsafe { cuStreamCreate(&mut stream, 0) }, "stream");
    stream
}

/// The profile's launch of `kernel`, taken with the rest of the profile.
fn profiled_launch(kernel: &str) -> LaunchProfile {
    take_profile()
        .launches
        .into_iter()
        .find(|l| l.kernel == kernel)
        .unwrap_or_else(|| panic!("{kernel} was profiled"))
}
