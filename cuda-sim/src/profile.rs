//! Counting what each launch would move through a GPU's memory, from the profiled kernel build.
//!
//! With `VIGIL_SIM_PROFILE` set (any value), launches run the kernels' profiled build (see
//! build.rs): every load and store calls `__asan_{load,store}{N}_noabort` with its address,
//! implemented here as counters. An access inside a live device allocation is global memory:
//! counted by width (1, 2, 4, 8, 16 bytes) and by the distinct 32-byte sectors it touches (what
//! DRAM would move for the launch before any reuse in L2 across launches). An access within
//! the running fiber's stack is local memory (what a GPU keeps in registers or spills); any
//! other is shared memory (the `__shared__` arrays, thread-locals of the OS thread running the
//! block). The built-ins and the launch's parameters are read uninstrumented, as a GPU reads
//! them from registers and its constant bank. Block barriers and warp-wide
//! exchanges (shuffles, votes) are counted as they complete. Beside the launches: each cuBLAS
//! GEMM (its FLOPs and operand bytes), each copy between host and device, each synchronisation.
//! Off, nothing here runs and the simulator's speed is unchanged.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{c_char, CString};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Access widths counted apart, in bytes.
pub const WIDTHS: [usize; 5] = [1, 2, 4, 8, 16];

/// The bytes of a sector: the unit a GPU's L2 moves to and from DRAM.
pub const SECTOR_BYTES: u64 = 32;

/// Whether launches are profiled: `VIGIL_SIM_PROFILE` set when first asked, until
/// [`cuda_sim_profile_enable`] says otherwise.
pub(crate) fn enabled() -> bool {
    match SWITCH.load(Ordering::Relaxed) {
        UNSET => {
            let on = std::env::var_os("VIGIL_SIM_PROFILE").is_some();
            // A concurrent call of `cuda_sim_profile_enable` wins over the environment.
            let _ = SWITCH.compare_exchange(UNSET, on as u8, Ordering::Relaxed, Ordering::Relaxed);
            SWITCH.load(Ordering::Relaxed) == ON
        }
        state => state == ON,
    }
}

const UNSET: u8 = 2;
const ON: u8 = 1;
static SWITCH: AtomicU8 = AtomicU8::new(UNSET);

/// Switches profiling on (`on` non-zero) or off from now on, whatever `VIGIL_SIM_PROFILE` says:
/// for a process that profiles some steps only (loading a model through the instrumented
/// kernels would take long and measure nothing it wants). Takes effect at the next call.
#[no_mangle]
pub extern "C" fn cuda_sim_profile_enable(on: i32) {
    SWITCH.store(if on != 0 { ON } else { 0 }, Ordering::Relaxed);
}

/// Global-memory accesses of one direction (loads or stores).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Accesses {
    /// Accesses of each width in [`WIDTHS`] (other widths are counted by their bytes only).
    pub by_width: [u64; 5],
    /// Bytes, all widths.
    pub bytes: u64,
}

impl Accesses {
    fn add(&mut self, size: usize) {
        if let Some(i) = WIDTHS.iter().position(|&w| w == size) {
            self.by_width[i] += 1;
        }
        self.bytes += size as u64;
    }

    fn merge(&mut self, other: &Accesses) {
        for (a, b) in self.by_width.iter_mut().zip(other.by_width) {
            *a += b;
        }
        self.bytes += other.bytes;
    }

    /// The mean bytes per access, or 0 without accesses.
    pub fn mean_width(&self) -> f64 {
        let n: u64 = self.by_width.iter().sum();
        if n == 0 {
            0.0
        } else {
            self.bytes as f64 / n as f64
        }
    }
}

/// What one launch did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LaunchProfile {
    /// The entry point.
    pub kernel: &'static str,
    /// Blocks in x, y, z.
    pub grid: [u32; 3],
    /// Threads per block in x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory per block, in bytes.
    pub dynamic_shared_bytes: u32,
    /// Loads of global memory.
    pub global_loads: Accesses,
    /// Stores to global memory.
    pub global_stores: Accesses,
    /// Distinct 32-byte sectors of global memory the launch touched.
    pub global_sectors: u64,
    /// The most global loads one thread made: the longest chain of global-memory round trips
    /// a thread can wait through (shorter where a GPU overlaps independent loads).
    pub max_thread_global_loads: u64,
    /// The global accesses by device allocation, in address order (allocations touched only).
    pub regions: Vec<RegionProfile>,
    /// Loads of shared memory.
    pub shared_loads: Accesses,
    /// Stores to shared memory.
    pub shared_stores: Accesses,
    /// Loads of the thread's own stack (local memory).
    pub local_loads: Accesses,
    /// Stores to the thread's own stack.
    pub local_stores: Accesses,
    /// Block barriers (`__syncthreads`) completed, summed over the blocks.
    pub barriers: u64,
    /// Warp-wide exchanges (shuffles, votes, `__syncwarp`) completed, summed over the warps.
    pub warp_exchanges: u64,
    /// Launched by a graph's replay rather than by `cuLaunchKernel`.
    pub in_graph: bool,
}

/// A launch's global accesses within one device allocation.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RegionProfile {
    /// The allocation's device address.
    pub start: u64,
    /// The allocation's size in bytes.
    pub size: u64,
    /// Bytes loaded from it.
    pub loaded_bytes: u64,
    /// Bytes stored to it.
    pub stored_bytes: u64,
    /// Distinct 32-byte sectors of it touched.
    pub sectors: u64,
}

impl LaunchProfile {
    /// Adds `block`'s accesses, barriers and warp exchanges to this launch's.
    fn add_block(&mut self, block: &LaunchProfile) {
        self.max_thread_global_loads = self
            .max_thread_global_loads
            .max(block.max_thread_global_loads);
        self.global_loads.merge(&block.global_loads);
        self.global_stores.merge(&block.global_stores);
        self.shared_loads.merge(&block.shared_loads);
        self.shared_stores.merge(&block.shared_stores);
        self.local_loads.merge(&block.local_loads);
        self.local_stores.merge(&block.local_stores);
        self.barriers += block.barriers;
        self.warp_exchanges += block.warp_exchanges;
    }
}

/// One block's counts, kept by the OS thread that runs it.
struct BlockCounts {
    /// Device allocations at the launch's start, `[start, end)` in address order.
    ranges: Arc<[(usize, usize)]>,
    /// The block's accesses, barriers and exchanges (its sectors are kept apart).
    counts: LaunchProfile,
    sectors: HashSet<u64>,
    /// Global loads by thread of the block.
    thread_loads: Vec<u64>,
    /// Bytes loaded and stored by allocation (indexed as `ranges`).
    region_bytes: Vec<(u64, u64)>,
}

/// The launch being profiled: its record and the union of its blocks' sectors.
struct Current {
    record: LaunchProfile,
    sectors: HashSet<u64>,
    ranges: Arc<[(usize, usize)]>,
    /// Bytes loaded and stored by allocation, all blocks (indexed as `ranges`).
    region_bytes: Vec<(u64, u64)>,
}

/// One cuBLAS GEMM, `C (m x n) = op(A) (m x k) · op(B) (k x n)`.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct GemmProfile {
    /// Rows of C.
    pub m: u64,
    /// Columns of C.
    pub n: u64,
    /// The inner dimension.
    pub k: u64,
    /// `2 m n k`.
    pub flops: u64,
    /// Bytes of A, B and C as stored (C counted once, written).
    pub bytes: u64,
    /// Run by a graph's replay.
    pub in_graph: bool,
}

/// Which way a copy went.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum CopyKind {
    /// Host to device.
    HostToDevice,
    /// Device to host.
    DeviceToHost,
    /// Device to device.
    DeviceToDevice,
}

/// One copy.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct CopyProfile {
    /// Which way.
    pub kind: CopyKind,
    /// Bytes moved.
    pub bytes: u64,
    /// Whether the host side is page-locked (`cuMemHostAlloc`): on a GPU such a copy runs
    /// asynchronously at the link's speed, a pageable one is staged and synchronous.
    pub pinned: bool,
    /// Run by a graph's replay.
    pub in_graph: bool,
}

/// What the device was asked to do since the last [`take`].
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Profile {
    /// Kernel launches, in launch order.
    pub launches: Vec<LaunchProfile>,
    /// cuBLAS GEMMs, in call order.
    pub gemms: Vec<GemmProfile>,
    /// Copies, in call order.
    pub copies: Vec<CopyProfile>,
    /// Context, stream and event synchronisations.
    pub syncs: u64,
    /// Graphs launched (their kernels, GEMMs and copies are in the lists above, marked).
    pub graph_launches: u64,
}

static CURRENT: Mutex<Option<Current>> = Mutex::new(None);
static DONE: Mutex<Profile> = Mutex::new(Profile {
    launches: Vec::new(),
    gemms: Vec::new(),
    copies: Vec::new(),
    syncs: 0,
    graph_launches: 0,
});

thread_local! {
    static BLOCK: Cell<*mut BlockCounts> = const { Cell::new(std::ptr::null_mut()) };
}

/// Starts the record of a launch; its blocks count into it until [`end_launch`].
pub(crate) fn begin_launch(
    kernel: &'static str,
    grid: [u32; 3],
    block: [u32; 3],
    dynamic_shared_bytes: u32,
) {
    // Each block reads its own handle on them without a lock.
    let ranges: Arc<[(usize, usize)]> = crate::memory::ranges().into();
    *CURRENT.lock().unwrap() = Some(Current {
        record: LaunchProfile {
            kernel,
            grid,
            block,
            dynamic_shared_bytes,
            in_graph: crate::graph::replaying(),
            ..Default::default()
        },
        sectors: HashSet::new(),
        region_bytes: vec![(0, 0); ranges.len()],
        ranges,
    });
}

/// Ends the launch's record and keeps it for [`take`].
pub(crate) fn end_launch() {
    if let Some(mut current) = CURRENT.lock().unwrap().take() {
        current.record.global_sectors = current.sectors.len() as u64;
        let mut sectors_by_region = vec![0u64; current.ranges.len()];
        for &sector in &current.sectors {
            // Allocations are 16-byte aligned, so a sector may begin before one's start; each
            // lies in a mapping of its own, so no sector reaches two. Its last byte tells which.
            let last = ((sector + 1) * SECTOR_BYTES - 1) as usize;
            let at = current.ranges.partition_point(|&(start, _)| start <= last);
            sectors_by_region[at.max(1) - 1] += 1;
        }
        current.record.regions = current
            .ranges
            .iter()
            .zip(&current.region_bytes)
            .zip(sectors_by_region)
            .filter(|((_, bytes), _)| **bytes != (0, 0))
            .map(
                |((&(start, end), &(loaded, stored)), sectors)| RegionProfile {
                    start: start as u64,
                    size: (end - start) as u64,
                    loaded_bytes: loaded,
                    stored_bytes: stored,
                    sectors,
                },
            )
            .collect();
        DONE.lock().unwrap().launches.push(current.record);
    }
}

/// Counts the accesses of the block this OS thread is about to run.
pub(crate) fn begin_block() {
    let ranges = CURRENT
        .lock()
        .unwrap()
        .as_ref()
        .map_or_else(|| Arc::from([]), |c| Arc::clone(&c.ranges));
    let counts = Box::new(BlockCounts {
        region_bytes: vec![(0, 0); ranges.len()],
        ranges,
        counts: LaunchProfile::default(),
        sectors: HashSet::new(),
        thread_loads: Vec::new(),
    });
    BLOCK.with(|b| b.set(Box::into_raw(counts)));
}

/// Adds the block this OS thread ran to its launch's record.
pub(crate) fn end_block() {
    let counts = BLOCK.with(|b| b.replace(std::ptr::null_mut()));
    if counts.is_null() {
        return;
    }
    // SAFETY: made by `begin_block` on this thread, and no longer reachable from `BLOCK`.
    let mut counts = unsafe { Box::from_raw(counts) };
    counts.counts.max_thread_global_loads = counts.thread_loads.iter().copied().max().unwrap_or(0);
    if let Some(current) = CURRENT.lock().unwrap().as_mut() {
        current.record.add_block(&counts.counts);
        current.sectors.extend(counts.sectors);
        for (all, block) in current.region_bytes.iter_mut().zip(&counts.region_bytes) {
            all.0 += block.0;
            all.1 += block.1;
        }
    }
}

/// Records a cuBLAS GEMM of `m x n x k` whose operands take `bytes`.
pub(crate) fn gemm(m: usize, n: usize, k: usize, bytes: usize) {
    let (m, n, k) = (m as u64, n as u64, k as u64);
    DONE.lock().unwrap().gemms.push(GemmProfile {
        m,
        n,
        k,
        flops: 2 * m * n * k,
        bytes: bytes as u64,
        in_graph: crate::graph::replaying(),
    });
}

/// Records a copy made by the driver call `call` (`cuMemcpyHtoD...`, `...DtoH...`, `...DtoD...`),
/// its host side page-locked or not.
pub(crate) fn copy(call: &str, bytes: usize, pinned: bool) {
    let kind = if call.contains("HtoD") {
        CopyKind::HostToDevice
    } else if call.contains("DtoH") {
        CopyKind::DeviceToHost
    } else {
        CopyKind::DeviceToDevice
    };
    DONE.lock().unwrap().copies.push(CopyProfile {
        kind,
        bytes: bytes as u64,
        pinned,
        in_graph: crate::graph::replaying(),
    });
}

/// Records a graph's launch.
pub(crate) fn graph_launch() {
    DONE.lock().unwrap().graph_launches += 1;
}

/// Records a synchronisation of the context, a stream or an event.
pub(crate) fn sync() {
    DONE.lock().unwrap().syncs += 1;
}

/// What the device was asked to do since the last call: for a caller that takes it after each
/// engine step, that step's profile.
pub fn take() -> Profile {
    std::mem::take(&mut DONE.lock().unwrap())
}

/// [`take`] for a process that loaded the simulator as `libcuda.so` (looked up with `dlsym`):
/// the profile as a JSON object, NUL-terminated, to be given back to
/// [`cuda_sim_profile_free`]. Null when profiling is off.
#[no_mangle]
pub extern "C" fn cuda_sim_profile_take() -> *mut c_char {
    if !enabled() {
        return std::ptr::null_mut();
    }
    let json = serde_json::to_string(&take()).expect("a profile serializes");
    CString::new(json).expect("JSON has no NUL").into_raw()
}

/// Frees what [`cuda_sim_profile_take`] returned.
///
/// # Safety
/// `json` is null or came from [`cuda_sim_profile_take`], and is freed once.
#[no_mangle]
pub unsafe extern "C" fn cuda_sim_profile_free(json: *mut c_char) {
    if !json.is_null() {
        // SAFETY: made by `CString::into_raw` in `cuda_sim_profile_take`, per the contract.
        drop(unsafe { CString::from_raw(json) });
    }
}

/// The counts of the block this OS thread runs, while it is profiled.
fn block_counts() -> Option<&'static mut BlockCounts> {
    let counts = BLOCK.with(|b| b.get());
    // SAFETY: set by `begin_block` for the block this OS thread runs and cleared by `end_block`
    // before it is freed; its fibers run one at a time, so nothing else touches the counts
    // meanwhile.
    unsafe { counts.as_mut() }
}

/// Counts a block barrier that completed.
pub(crate) fn barrier_completed() {
    if let Some(block) = block_counts() {
        block.counts.barriers += 1;
    }
}

/// Counts a warp-wide exchange that completed.
pub(crate) fn warp_exchange_completed() {
    if let Some(block) = block_counts() {
        block.counts.warp_exchanges += 1;
    }
}

fn record(addr: usize, size: usize, store: bool) {
    let Some(block) = block_counts() else {
        return;
    };
    let at = block.ranges.partition_point(|&(start, _)| start <= addr);
    let global = at > 0 && addr + size <= block.ranges[at - 1].1;
    // The kernel's frames lie between this callback's frame and the base of the fiber's stack,
    // at most a stack's size above it; the `__shared__` thread-locals lie elsewhere.
    let here = &at as *const usize as usize;
    let local = !global && addr >= here && addr < here + crate::threads::FIBER_STACK;
    let accesses = match (global, local, store) {
        (true, _, false) => &mut block.counts.global_loads,
        (true, _, true) => &mut block.counts.global_stores,
        (false, true, false) => &mut block.counts.local_loads,
        (false, true, true) => &mut block.counts.local_stores,
        (false, false, false) => &mut block.counts.shared_loads,
        (false, false, true) => &mut block.counts.shared_stores,
    };
    accesses.add(size);
    if global {
        let region = &mut block.region_bytes[at - 1];
        if store {
            region.1 += size as u64;
        } else {
            region.0 += size as u64;
            let thread = crate::threads::current_thread();
            if block.thread_loads.len() <= thread {
                block.thread_loads.resize(thread + 1, 0);
            }
            block.thread_loads[thread] += 1;
        }
        let first = addr as u64 / SECTOR_BYTES;
        let last = (addr + size.max(1) - 1) as u64 / SECTOR_BYTES;
        block.sectors.extend(first..=last);
    }
}

macro_rules! callbacks {
    ($($load:ident $store:ident $size:literal;)*) => {
        $(
            #[no_mangle]
            extern "C" fn $load(addr: usize) {
                record(addr, $size, false);
            }
            #[no_mangle]
            extern "C" fn $store(addr: usize) {
                record(addr, $size, true);
            }
        )*
    };
}

callbacks! {
    __asan_load1_noabort __asan_store1_noabort 1;
    __asan_load2_noabort __asan_store2_noabort 2;
    __asan_load4_noabort __asan_store4_noabort 4;
    __asan_load8_noabort __asan_store8_noabort 8;
    __asan_load16_noabort __asan_store16_noabort 16;
}

/// An access of a size without a callback of its own.
#[no_mangle]
extern "C" fn __asan_loadN_noabort(addr: usize, size: usize) {
    record(addr, size, false);
}

/// A store of a size without a callback of its own.
#[no_mangle]
extern "C" fn __asan_storeN_noabort(addr: usize, size: usize) {
    record(addr, size, true);
}

/// Called before a function that does not return (a trap): nothing to undo here.
#[no_mangle]
extern "C" fn __asan_handle_no_return() {}
