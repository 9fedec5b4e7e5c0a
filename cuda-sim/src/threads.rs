//! Running a grid: blocks on the host's cores, a block's threads as fibers.
//!
//! Running a grid: blocks in parallel on the host's cores (rayon), and within a block, each CUDA
//! thread as a fiber (a corosensei coroutine) on one OS thread. A fiber runs until it waits for
//! others (`__syncthreads`, a shuffle, a vote) or returns; the scheduler then runs the next one.
//! A barrier completes when every thread of its scope that has not exited has arrived, as on
//! Volta and later; a pass in which no fiber can move is a deadlock and fails the launch.
//!
//! Why fibers: a shuffle is a rendezvous of 32 threads, and the attention kernel makes several
//! per key. Switching a fiber costs a few nanoseconds, an OS thread's switch microseconds.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;

use corosensei::stack::DefaultStack;
use corosensei::trap::CoroutineTrapHandler;
use corosensei::{Coroutine, CoroutineResult, Yielder};

use crate::kernels::HostKernel;

/// Stack of one CUDA thread: kernels keep their locals in registers on a GPU and on this stack
/// here; 64 KiB is far more than any of ours needs, and untouched pages cost nothing.
pub(crate) const FIBER_STACK: usize = 64 * 1024;

/// Where a launch runs: its kernel, grid and block.
#[derive(Debug, Clone, Copy)]
pub struct Launch {
    /// The kernel.
    pub kernel: &'static HostKernel,
    /// Blocks in x, y, z.
    pub grid: [u32; 3],
    /// Threads per block in x, y, z.
    pub block: [u32; 3],
}

/// What the fault handler tells about the thread that faulted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Running {
    pub kernel: &'static str,
    pub block: [u32; 3],
    pub thread: [u32; 3],
}

thread_local! {
    /// The block this OS thread is running, while it runs one. Everything else the built-ins
    /// and the fault handler need is in its state: a thread-local read costs a call in a shared
    /// library, and the scheduler switches fibers millions of times a second.
    static BLOCK: Cell<*mut BlockState> = const { Cell::new(std::ptr::null_mut()) };
    static STACKS: RefCell<Vec<DefaultStack>> = const { RefCell::new(Vec::new()) };
}

/// The state of the block this OS thread runs, while one of its fibers runs.
fn in_fiber() -> Option<&'static mut BlockState> {
    let block = BLOCK.with(|b| b.get());
    // SAFETY: set by `run_block` for the duration of the block, on this OS thread only; the
    // fault handler interrupts the fiber that runs, and nothing else touches the state then.
    let state = unsafe { block.as_mut()? };
    state.in_fiber.then_some(state)
}

/// The running fiber's trap handler, taken (for the fault handler: it ends the fiber with it
/// at most once).
pub(crate) fn take_trap_handler() -> Option<CoroutineTrapHandler<()>> {
    let state = in_fiber()?;
    state.traps[state.current].take()
}

/// Tells the block's scheduler that the fiber it resumed was ended by the fault handler.
pub(crate) fn mark_faulted() {
    if let Some(state) = in_fiber() {
        state.faulted = true;
    }
}

/// The index within its block of the CUDA thread running on this OS thread (0 outside one).
pub(crate) fn current_thread() -> usize {
    in_fiber().map_or(0, |state| state.current)
}

/// The CUDA thread running on this OS thread, if any (for the fault handler).
pub(crate) fn running() -> Option<Running> {
    let state = in_fiber()?;
    Some(Running {
        kernel: state.kernel,
        block: state.block,
        thread: state.coords(state.current),
    })
}

extern "C" {
    fn cuda_sim_set_thread(x: u32, y: u32, z: u32);
    fn cuda_sim_set_block(block: *const u32, block_dim: *const u32, grid_dim: *const u32);
}

/// What a waiting fiber waits for: a generation of the block's barrier or of its warp's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Block(u64),
    Warp(u64),
}

#[derive(Default)]
struct Barrier {
    /// Threads of the scope that have not exited.
    live: usize,
    arrived: usize,
    generation: u64,
}

impl Barrier {
    /// One thread arrives; true if it completed the barrier.
    fn arrive(&mut self) -> bool {
        self.arrived += 1;
        self.complete_if_all_arrived()
    }

    fn complete_if_all_arrived(&mut self) -> bool {
        if self.arrived > 0 && self.arrived >= self.live {
            self.arrived = 0;
            self.generation += 1;
            true
        } else {
            false
        }
    }
}

#[derive(Default)]
struct Warp {
    barrier: Barrier,
    /// Each lane's 32 bits of the current exchange, double-buffered by generation.
    slots: [[u32; 32]; 2],
    /// Lanes that have not exited.
    active: u32,
    /// Lanes that wrote a value in the exchange of each parity: a lane's value is read from
    /// here even after the lane has exited.
    written: [u32; 2],
}

impl Warp {
    /// Completes the barrier if every live lane arrived, and readies the next exchange.
    fn complete_if_all_arrived(&mut self) -> bool {
        let done = self.barrier.complete_if_all_arrived();
        if done {
            self.written[(self.barrier.generation & 1) as usize] = 0;
        }
        done
    }
}

struct BlockState {
    barrier: Barrier,
    warps: Vec<Warp>,
    waits: Vec<Option<Wait>>,
    yielders: Vec<*const Yielder<(), ()>>,
    /// Each fiber's trap handler, for the fault handler to end it with.
    traps: Vec<Option<CoroutineTrapHandler<()>>>,
    current: usize,
    /// Whether `current` runs (rather than the scheduler between fibers).
    in_fiber: bool,
    /// Set by the fault handler when it ended the running fiber at an invalid access.
    faulted: bool,
    kernel: &'static str,
    block: [u32; 3],
    /// The block's shape, for a thread's coordinates.
    dims: [u32; 3],
    /// Whether the launch is profiled: barriers and warp exchanges are counted.
    profiled: bool,
}

impl BlockState {
    /// The coordinates of thread `t` in the block.
    fn coords(&self, t: usize) -> [u32; 3] {
        let t = t as u32;
        let [bx, by, _] = self.dims;
        [t % bx, t / bx % by, t / (bx * by)]
    }

    fn released(&self, thread: usize, wait: Wait) -> bool {
        match wait {
            Wait::Block(g) => self.barrier.generation != g,
            Wait::Warp(g) => self.warps[thread / 32].barrier.generation != g,
        }
    }

    /// Suspends the current fiber until `wait` is released.
    fn suspend(&mut self, wait: Wait) {
        let me = self.current;
        self.waits[me] = Some(wait);
        let yielder = self.yielders[me];
        // SAFETY: the yielder lives on this fiber's stack for as long as the fiber runs.
        unsafe { (*yielder).suspend(()) };
    }
}

fn with_block<T>(f: impl FnOnce(&mut BlockState) -> T) -> T {
    let block = BLOCK.with(|b| b.get());
    assert!(!block.is_null(), "a CUDA built-in called outside a kernel");
    // SAFETY: set by `run_block` for the duration of the block, on this OS thread only; fibers
    // of the block run one at a time.
    f(unsafe { &mut *block })
}

#[no_mangle]
pub(crate) extern "C" fn cuda_sim_syncthreads() {
    with_block(|b| {
        let generation = b.barrier.generation;
        if !b.barrier.arrive() {
            b.suspend(Wait::Block(generation));
        } else if b.profiled {
            crate::profile::barrier_completed();
        }
    });
}

/// A rendezvous of the current thread's warp: every active lane stores its value, and each
/// gets the values of all once the last has arrived.
fn warp_exchange(value: u32) -> ([u32; 32], u32, usize) {
    with_block(|b| {
        let me = b.current;
        let (w, lane) = (me / 32, me % 32);
        let generation = b.warps[w].barrier.generation;
        let parity = (generation & 1) as usize;
        let warp = &mut b.warps[w];
        warp.slots[parity][lane] = value;
        warp.written[parity] |= 1 << lane;
        warp.barrier.arrived += 1;
        if !warp.complete_if_all_arrived() {
            b.suspend(Wait::Warp(generation));
        } else if b.profiled {
            crate::profile::warp_exchange_completed();
        }
        (b.warps[w].slots[parity], b.warps[w].written[parity], lane)
    })
}

#[no_mangle]
pub(crate) extern "C" fn cuda_sim_syncwarp(_mask: u32) {
    warp_exchange(0);
}

#[no_mangle]
pub(crate) extern "C" fn cuda_sim_shfl(
    _mask: u32,
    bits: u32,
    kind: i32,
    arg: i32,
    width: i32,
) -> u32 {
    let (values, active, lane) = warp_exchange(bits);
    let width = width.clamp(1, 32);
    let lane = lane as i32;
    let segment = lane - lane % width;
    let source = match kind {
        0 => segment + arg.rem_euclid(width),
        1 => lane - arg,
        2 => lane + arg,
        _ => lane ^ arg,
    };
    let inside = source >= segment && source < segment + width;
    if inside && active & (1 << source) != 0 {
        values[source as usize]
    } else {
        bits
    }
}

#[no_mangle]
pub(crate) extern "C" fn cuda_sim_ballot(_mask: u32, predicate: i32) -> u32 {
    let (values, active, _) = warp_exchange(u32::from(predicate != 0));
    (0..32)
        .filter(|&l| active & (1 << l) != 0 && values[l] != 0)
        .fold(0, |m, l| m | (1 << l))
}

#[no_mangle]
pub(crate) extern "C" fn cuda_sim_activemask() -> u32 {
    with_block(|b| b.warps[b.current / 32].active)
}

/// Why a launch failed inside the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchError {
    Deadlock {
        block: [u32; 3],
        waiting: usize,
    },
    /// A thread of the block touched memory outside its allocations (the report is on
    /// stderr): CUDA's illegal address.
    IllegalAddress {
        block: [u32; 3],
    },
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaunchError::Deadlock { block, waiting } => write!(
                f,
                "block {block:?}: {waiting} thread(s) wait at a barrier the others never reach"
            ),
            LaunchError::IllegalAddress { block } => write!(
                f,
                "block {block:?}: an invalid access of device memory (memcheck's report is above)"
            ),
        }
    }
}

/// Runs every block of `launch` with `params` (cuLaunchKernel's array, valid for the call),
/// calling `prepare_thread` on each OS thread before it runs a block (the memory checker's
/// fault handler is set up so, without this module knowing of it). Profiled launches run their
/// blocks one after another in grid order, so that what depends on the order blocks finish in
/// (the last CTA of a group doing a group's closing work) is counted the same in every run.
pub fn run_grid(
    launch: Launch,
    params: *mut *mut c_void,
    prepare_thread: fn(),
) -> Result<(), LaunchError> {
    use rayon::prelude::*;
    let [gx, gy, gz] = launch.grid;
    let blocks = gx as u64 * gy as u64 * gz as u64;
    let params = params as usize;
    let one = |i: u64| {
        let block = [
            (i % gx as u64) as u32,
            (i / gx as u64 % gy as u64) as u32,
            (i / (gx as u64 * gy as u64)) as u32,
        ];
        prepare_thread();
        run_block(launch, block, params as *mut *mut c_void)
    };
    if crate::profile::enabled() {
        (0..blocks).try_for_each(one)
    } else {
        (0..blocks).into_par_iter().try_for_each(one)
    }
}

fn run_block(launch: Launch, block: [u32; 3], params: *mut *mut c_void) -> Result<(), LaunchError> {
    let threads = launch.block.iter().product::<u32>() as usize;
    let warps = threads.div_ceil(32);
    let profiled = crate::profile::enabled();
    let state = Box::into_raw(Box::new(BlockState {
        barrier: Barrier {
            live: threads,
            ..Default::default()
        },
        warps: (0..warps)
            .map(|w| {
                let lanes = (threads - w * 32).min(32);
                Warp {
                    barrier: Barrier {
                        live: lanes,
                        ..Default::default()
                    },
                    active: if lanes == 32 {
                        u32::MAX
                    } else {
                        (1 << lanes) - 1
                    },
                    ..Default::default()
                }
            })
            .collect(),
        waits: vec![None; threads],
        yielders: vec![std::ptr::null(); threads],
        traps: vec![None; threads],
        current: 0,
        in_fiber: false,
        faulted: false,
        kernel: launch.kernel.name,
        block,
        dims: launch.block,
        profiled,
    }));
    // The block's state is reached through this pointer, by the scheduler between fibers and
    // by the built-ins inside them, never by both at once: fibers run one at a time.
    // SAFETY: `state` is live until it is freed at the end of this function.
    let st = || unsafe { &mut *state };
    // SAFETY: three-element arrays, copied by the callee.
    unsafe { cuda_sim_set_block(block.as_ptr(), launch.block.as_ptr(), launch.grid.as_ptr()) };
    BLOCK.with(|b| b.set(state));
    let launcher = if profiled {
        crate::profile::begin_block();
        launch.kernel.launch_profiled
    } else {
        launch.kernel.launch
    };
    let params_addr = params as usize;
    let state_addr = state as usize;
    let mut fibers: Vec<Option<Coroutine<(), (), (), DefaultStack>>> = (0..threads)
        .map(|t| {
            let stack = STACKS
                .with(|s| s.borrow_mut().pop())
                .unwrap_or_else(|| DefaultStack::new(FIBER_STACK).expect("a fiber stack"));
            Some(Coroutine::with_stack(
                stack,
                move |yielder: &Yielder<(), ()>, ()| {
                    // SAFETY: the block state outlives every fiber of the block (they finish, or
                    // are leaked on deadlock, before run_block returns).
                    unsafe { (&mut *(state_addr as *mut BlockState)).yielders[t] = yielder };
                    // SAFETY: the launcher reads the parameters cuLaunchKernel was given.
                    unsafe { launcher(params_addr as *mut *mut c_void) };
                },
            ))
        })
        .collect();
    for (trap, fiber) in st().traps.iter_mut().zip(&fibers) {
        *trap = fiber.as_ref().map(|f| f.trap_handler());
    }
    let mut result = Ok(());
    let mut remaining = threads;
    while remaining > 0 {
        let mut moved = false;
        for (t, slot) in fibers.iter_mut().enumerate() {
            let Some(fiber) = slot.as_mut() else {
                continue;
            };
            if let Some(wait) = st().waits[t] {
                if !st().released(t, wait) {
                    continue;
                }
                st().waits[t] = None;
            }
            let state = st();
            state.current = t;
            let [x, y, z] = state.coords(t);
            // SAFETY: plain stores to this OS thread's built-in variables.
            unsafe { cuda_sim_set_thread(x, y, z) };
            moved = true;
            state.in_fiber = true;
            let resumed = fiber.resume(());
            let state = st();
            state.in_fiber = false;
            if state.faulted {
                result = Err(LaunchError::IllegalAddress { block });
                break;
            }
            if let CoroutineResult::Return(()) = resumed {
                let done = slot.take().expect("a running fiber");
                STACKS.with(|s| s.borrow_mut().push(done.into_stack()));
                remaining -= 1;
                let state = st();
                state.barrier.live -= 1;
                // A thread that returns may complete a barrier the others wait at.
                if state.barrier.complete_if_all_arrived() && profiled {
                    crate::profile::barrier_completed();
                }
                let warp = &mut state.warps[t / 32];
                warp.barrier.live -= 1;
                warp.active &= !(1 << (t % 32));
                if warp.complete_if_all_arrived() && profiled {
                    crate::profile::warp_exchange_completed();
                }
            }
        }
        if result.is_err() {
            // The fault handler ended a fiber at an invalid access: the block cannot go on,
            // and its other fibers are left suspended (leaked, as on a deadlock).
            for fiber in fibers.iter_mut().filter_map(Option::take) {
                std::mem::forget(fiber);
            }
            break;
        }
        if !moved {
            result = Err(LaunchError::Deadlock {
                block,
                waiting: remaining,
            });
            // Suspended fibers cannot be unwound through the kernels' C++ frames: their
            // stacks are leaked, as a GPU's hung block is never reclaimed either.
            for fiber in fibers.iter_mut().filter_map(Option::take) {
                std::mem::forget(fiber);
            }
            break;
        }
    }
    BLOCK.with(|b| b.set(std::ptr::null_mut()));
    if profiled {
        crate::profile::end_block();
    }
    if result.is_ok() {
        // SAFETY: every fiber finished; nothing refers to the state any more. (After a
        // deadlock the leaked fibers still point at it, so it is leaked with them.)
        drop(unsafe { Box::from_raw(state) });
    }
    result
}
