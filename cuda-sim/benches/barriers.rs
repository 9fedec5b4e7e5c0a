//! Why a block's threads are fibers: a barrier on fibers beside one on OS threads.
//!
//! Why a block's threads are fibers: one `__syncthreads` of a 256-thread block on the
//! simulator (fibers switching on one OS thread) beside the same rendezvous of 256 OS threads
//! at a `std::sync::Barrier`, measured in the same run.

use std::ffi::c_void;
use std::sync::Barrier;

use criterion::{criterion_group, criterion_main, Criterion};
use vigil_cuda_sim::{run_grid, Launch};

const THREADS: u32 = 256;
const ROUNDS: i32 = 100;

fn barriers(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("{ROUNDS} barriers of {THREADS} threads"));
    group.sample_size(10);
    let kernel = vigil_cuda_sim::find_kernel("barrier_loop").expect("the fidelity kernels");
    group.bench_function("simulator fibers", |b| {
        let mut out = [0i32; 1];
        let mut out_ptr = out.as_mut_ptr();
        let mut rounds = ROUNDS;
        let mut params = [
            &mut out_ptr as *mut *mut i32 as *mut c_void,
            &mut rounds as *mut i32 as *mut c_void,
        ];
        let launch = Launch {
            kernel,
            grid: [1, 1, 1],
            block: [THREADS, 1, 1],
        };
        b.iter(|| run_grid(launch, params.as_mut_ptr(), || {}).unwrap());
        assert_eq!(out[0], ROUNDS);
    });
    group.bench_function("OS threads", |b| {
        b.iter(|| {
            let barrier = Barrier::new(THREADS as usize);
            std::thread::scope(|s| {
                for _ in 0..THREADS {
                    s.spawn(|| {
                        for _ in 0..ROUNDS {
                            barrier.wait();
                        }
                    });
                }
            });
        })
    });
    group.finish();
}

criterion_group!(benches, barriers);
criterion_main!(benches);
