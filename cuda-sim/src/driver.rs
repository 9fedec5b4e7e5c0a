//! The CUDA driver API subset cudarc and Vigil call, as `libcuda.so`'s C functions.
//!
//! Work is done when it is submitted, in submission order, so every stream is trivially ordered and
//! an "async" call has finished when it returns; events record the host's clock. A driver function
//! missing here is missing from the library, and cudarc fails loudly with its name.

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::device;
use crate::graph;
pub use crate::graph::{
    cuGraphDestroy, cuGraphExecDestroy, cuGraphInstantiateWithFlags, cuGraphLaunch, cuGraphUpload,
    cuStreamBeginCapture_v2, cuStreamEndCapture, cuStreamIsCapturing, CUDA_ERROR_ILLEGAL_STATE,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
};
use crate::kernels::{self, HostKernel};
use crate::memory;
use crate::ptx;
use crate::threads::{self, Launch};

/// The driver's status code (`CUresult`).
pub type CUresult = c_uint;
/// A device ordinal (`CUdevice`).
pub type CUdevice = c_int;
/// A device address (`CUdeviceptr`).
pub type CUdeviceptr = u64;
/// An opaque handle: context, stream, event, module or function.
pub type Handle = *mut c_void;

/// The call succeeded.
pub const CUDA_SUCCESS: CUresult = 0;
/// An argument is out of range.
pub const CUDA_ERROR_INVALID_VALUE: CUresult = 1;
/// The device's memory cannot hold the allocation.
pub const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
/// `cuInit` has not been called.
pub const CUDA_ERROR_NOT_INITIALIZED: CUresult = 3;
/// No device has that ordinal.
pub const CUDA_ERROR_INVALID_DEVICE: CUresult = 101;
/// The module image is not one this driver loads.
pub const CUDA_ERROR_INVALID_IMAGE: CUresult = 200;
/// The PTX declares kernels the host build lacks, or is malformed.
pub const CUDA_ERROR_INVALID_PTX: CUresult = 218;
/// A null or destroyed handle.
pub const CUDA_ERROR_INVALID_HANDLE: CUresult = 400;
/// A kernel or copy touched memory outside every allocation.
pub const CUDA_ERROR_ILLEGAL_ADDRESS: CUresult = 700;
/// No kernel of that name in the module.
pub const CUDA_ERROR_NOT_FOUND: CUresult = 500;
/// A kernel trapped or failed.
pub const CUDA_ERROR_LAUNCH_FAILED: CUresult = 719;
/// The call is valid but this simulation does not support it.
pub const CUDA_ERROR_NOT_SUPPORTED: CUresult = 801;

static INITIALISED: AtomicBool = AtomicBool::new(false);

/// The primary context of device 0 (the only one); its handle is this static's address.
static PRIMARY_CONTEXT: u8 = 0;

thread_local! {
    static CURRENT_CONTEXT: std::cell::Cell<Handle> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// Says why a call failed, on stderr (as the real driver does not, which is why debugging one
/// is hard), and returns `code`.
fn fail(call: &str, code: CUresult, why: std::fmt::Arguments<'_>) -> CUresult {
    eprintln!("cuda-sim: {call}: {why}");
    code
}

macro_rules! check_init {
    () => {
        if !INITIALISED.load(Ordering::Acquire) {
            return CUDA_ERROR_NOT_INITIALIZED;
        }
    };
}

macro_rules! check_device {
    ($dev:expr) => {
        if $dev != 0 {
            return CUDA_ERROR_INVALID_DEVICE;
        }
    };
}

/// Starts the driver (flags must be 0) and installs the out-of-bounds checker.
#[no_mangle]
pub extern "C" fn cuInit(flags: c_uint) -> CUresult {
    if flags != 0 {
        return CUDA_ERROR_INVALID_VALUE;
    }
    crate::memcheck::install();
    INITIALISED.store(true, Ordering::Release);
    CUDA_SUCCESS
}

/// The CUDA version this driver reports.
#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    *version = device::DRIVER_VERSION;
    CUDA_SUCCESS
}

/// One device.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    check_init!();
    *count = 1;
    CUDA_SUCCESS
}

/// The device of `ordinal` (only 0 exists).
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> CUresult {
    check_init!();
    check_device!(ordinal);
    *device = 0;
    CUDA_SUCCESS
}

/// The simulated device's name, truncated to `len` bytes with a terminating NUL.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    check_init!();
    check_device!(dev);
    let bytes = device::NAME.as_bytes();
    let n = bytes.len().min(len.max(1) as usize - 1);
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), name as *mut u8, n);
    *name.add(n) = 0;
    CUDA_SUCCESS
}

/// One of the device's attributes (an H100's values).
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    value: *mut c_int,
    attribute: c_int,
    dev: CUdevice,
) -> CUresult {
    check_init!();
    check_device!(dev);
    match device::attribute(attribute) {
        Some(v) => {
            *value = v;
            CUDA_SUCCESS
        }
        None => fail(
            "cuDeviceGetAttribute",
            CUDA_ERROR_NOT_SUPPORTED,
            format_args!("attribute {attribute} is not simulated"),
        ),
    }
}

/// The device's memory size.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    check_init!();
    check_device!(dev);
    *bytes = device::total_memory() as usize;
    CUDA_SUCCESS
}

/// The device's UUID.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid: *mut [u8; 16], dev: CUdevice) -> CUresult {
    check_init!();
    check_device!(dev);
    *uuid = *b"vigil-cuda-sim-0";
    CUDA_SUCCESS
}

/// The device's UUID (the `_v2` entry point).
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], dev: CUdevice) -> CUresult {
    cuDeviceGetUuid(uuid, dev)
}

fn primary_context() -> Handle {
    &PRIMARY_CONTEXT as *const u8 as Handle
}

/// The device's primary context (one per process).
#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut Handle, dev: CUdevice) -> CUresult {
    check_init!();
    check_device!(dev);
    *ctx = primary_context();
    CUDA_SUCCESS
}

/// Releases the primary context: nothing to free.
#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    check_init!();
    check_device!(dev);
    CUDA_SUCCESS
}

/// Makes `ctx` current on the calling thread.
#[no_mangle]
pub extern "C" fn cuCtxSetCurrent(ctx: Handle) -> CUresult {
    check_init!();
    if !ctx.is_null() && ctx != primary_context() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    CURRENT_CONTEXT.with(|c| c.set(ctx));
    CUDA_SUCCESS
}

/// The calling thread's current context.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut Handle) -> CUresult {
    check_init!();
    *ctx = CURRENT_CONTEXT.with(|c| c.get());
    CUDA_SUCCESS
}

/// The current context's device.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(dev: *mut CUdevice) -> CUresult {
    check_init!();
    *dev = 0;
    CUDA_SUCCESS
}

/// Waits for the device: work finished when it was submitted.
#[no_mangle]
pub extern "C" fn cuCtxSynchronize() -> CUresult {
    check_init!();
    if let Some(refused) = graph::refuse("cuCtxSynchronize", None) {
        return refused;
    }
    if crate::profile::enabled() {
        crate::profile::sync();
    }
    CUDA_SUCCESS
}

// Streams: work is done on submission, so a stream is only an identity.

/// A new stream: only an identity, since work runs on submission.
#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(stream: *mut Handle, _flags: c_uint) -> CUresult {
    check_init!();
    *stream = Box::into_raw(Box::new(0u8)) as Handle;
    CUDA_SUCCESS
}

/// A new stream; priorities do not matter when work runs on submission.
#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    stream: *mut Handle,
    flags: c_uint,
    _priority: c_int,
) -> CUresult {
    cuStreamCreate(stream, flags)
}

/// Destroys a stream.
#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(stream: Handle) -> CUresult {
    check_init!();
    if stream.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    drop(Box::from_raw(stream as *mut u8));
    CUDA_SUCCESS
}

/// Waits for a stream: its work finished when it was submitted.
#[no_mangle]
pub extern "C" fn cuStreamSynchronize(stream: Handle) -> CUresult {
    check_init!();
    if let Some(refused) = graph::refuse("cuStreamSynchronize", legacy_or(stream)) {
        return refused;
    }
    if crate::profile::enabled() {
        crate::profile::sync();
    }
    CUDA_SUCCESS
}

/// A stream's state: always idle.
#[no_mangle]
pub extern "C" fn cuStreamQuery(stream: Handle) -> CUresult {
    check_init!();
    if let Some(refused) = graph::refuse("cuStreamQuery", legacy_or(stream)) {
        return refused;
    }
    CUDA_SUCCESS
}

/// The stream a capture check concerns: `stream` itself, or every capturing stream for the
/// legacy stream (which synchronises with all others).
fn legacy_or(stream: Handle) -> Option<Handle> {
    (!stream.is_null()).then_some(stream)
}

/// Orders a stream after an event: they are always in order.
#[no_mangle]
pub extern "C" fn cuStreamWaitEvent(_stream: Handle, _event: Handle, _flags: c_uint) -> CUresult {
    check_init!();
    CUDA_SUCCESS
}

// Events: the host's clock when recorded (the work before them is done by then).

struct Event {
    recorded: Mutex<Option<Instant>>,
}

/// A new event, not yet recorded.
#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(event: *mut Handle, _flags: c_uint) -> CUresult {
    check_init!();
    *event = Box::into_raw(Box::new(Event {
        recorded: Mutex::new(None),
    })) as Handle;
    CUDA_SUCCESS
}

/// Destroys an event.
#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(event: Handle) -> CUresult {
    check_init!();
    if event.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    drop(Box::from_raw(event as *mut Event));
    CUDA_SUCCESS
}

/// Records the host's clock in `event` (the work before it is done by then).
#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(event: Handle, stream: Handle) -> CUresult {
    check_init!();
    if event.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    let at = event as usize;
    // SAFETY: an event outlives the graphs that record it, as on a GPU.
    let record = move || unsafe {
        *(*(at as *const Event)).recorded.lock().unwrap() = Some(Instant::now());
        CUDA_SUCCESS
    };
    if let Some(recorded) = graph::record(stream, Box::new(record)) {
        return recorded;
    }
    record()
}

/// Waits for an event: it completed when recorded.
#[no_mangle]
pub extern "C" fn cuEventSynchronize(_event: Handle) -> CUresult {
    check_init!();
    if let Some(refused) = graph::refuse("cuEventSynchronize", None) {
        return refused;
    }
    if crate::profile::enabled() {
        crate::profile::sync();
    }
    CUDA_SUCCESS
}

/// An event's state: always complete once recorded.
#[no_mangle]
pub extern "C" fn cuEventQuery(_event: Handle) -> CUresult {
    check_init!();
    if let Some(refused) = graph::refuse("cuEventQuery", None) {
        return refused;
    }
    CUDA_SUCCESS
}

/// Milliseconds between two recorded events; an unrecorded one is an invalid handle.
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, start: Handle, end: Handle) -> CUresult {
    check_init!();
    if start.is_null() || end.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    let when = |e: Handle| *(*(e as *const Event)).recorded.lock().unwrap();
    match (when(start), when(end)) {
        (Some(a), Some(b)) => {
            *ms = if b >= a {
                (b - a).as_secs_f32() * 1e3
            } else {
                -((a - b).as_secs_f32() * 1e3)
            };
            CUDA_SUCCESS
        }
        // As the driver: an event never recorded has no time.
        _ => CUDA_ERROR_INVALID_HANDLE,
    }
}

/// Milliseconds between two recorded events (the `_v2` entry point).
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(
    ms: *mut f32,
    start: Handle,
    end: Handle,
) -> CUresult {
    cuEventElapsedTime(ms, start, end)
}

// Memory.

/// Free and total device memory.
#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    check_init!();
    let total_bytes = device::total_memory();
    *total = total_bytes as usize;
    *free = total_bytes.saturating_sub(memory::used()) as usize;
    CUDA_SUCCESS
}

/// Allocates `bytes` of guarded device memory.
#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) -> CUresult {
    check_init!();
    if bytes == 0 {
        return CUDA_ERROR_INVALID_VALUE;
    }
    match memory::alloc(bytes) {
        Some(p) => {
            *dptr = p;
            CUDA_SUCCESS
        }
        None => CUDA_ERROR_OUT_OF_MEMORY,
    }
}

/// Allocates at once: stream order is submission order.
#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    _stream: Handle,
) -> CUresult {
    cuMemAlloc_v2(dptr, bytes)
}

/// Frees an allocation (0 is ignored, as the driver does).
#[no_mangle]
pub extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    check_init!();
    if dptr == 0 {
        return CUDA_SUCCESS;
    }
    if memory::free(dptr) {
        CUDA_SUCCESS
    } else {
        fail(
            "cuMemFree",
            CUDA_ERROR_INVALID_VALUE,
            format_args!("{dptr:#x} is not the start of a live allocation"),
        )
    }
}

/// Frees at once: stream order is submission order.
#[no_mangle]
pub extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, _stream: Handle) -> CUresult {
    cuMemFree_v2(dptr)
}

/// Checks that `[addr, addr + len)` is device memory for `call`.
fn device_range(call: &str, addr: CUdeviceptr, len: usize) -> Result<(), CUresult> {
    if len == 0 || memory::contains(addr, len) {
        Ok(())
    } else {
        Err(fail(
            call,
            CUDA_ERROR_INVALID_VALUE,
            format_args!("[{addr:#x}, +{len}) is not inside one device allocation"),
        ))
    }
}

/// A copy of `len` bytes from `src` to `dst` by `call` on `stream` (null: the legacy stream of
/// the synchronous calls). `device` lists its device ranges, checked; `host` its host side, if
/// any, page-locked or not. On a capturing stream it is recorded when its host side is
/// page-locked or absent, and refused when pageable (a GPU cannot replay a staged copy).
unsafe fn copy(
    call: &'static str,
    dst: *mut u8,
    src: *const u8,
    len: usize,
    device: &[(u64, usize)],
    host: Option<*const u8>,
    stream: Handle,
) -> CUresult {
    check_init!();
    for &(addr, n) in device {
        if let Err(e) = device_range(call, addr, n) {
            return e;
        }
    }
    let pinned = host.is_some_and(|h| pinned::contains(h as usize, len));
    if stream.is_null() || (host.is_some() && !pinned) {
        if let Some(refused) = graph::refuse(call, legacy_or(stream)) {
            return refused;
        }
    }
    let (dst, src) = (dst as usize, src as usize);
    let run = move || {
        // SAFETY: the ranges were checked at submission and outlive the graph, as on a GPU.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, len) };
        if crate::profile::enabled() {
            crate::profile::copy(call, len, pinned);
        }
        CUDA_SUCCESS
    };
    if let Some(recorded) = graph::record(stream, Box::new(run)) {
        return recorded;
    }
    run()
}

/// Copies host memory to the device, checking the device range.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    len: usize,
) -> CUresult {
    cuMemcpyHtoDAsync_v2(dst, src, len, std::ptr::null_mut())
}

/// Copies host memory to the device, done when it returns.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    len: usize,
    stream: Handle,
) -> CUresult {
    let name = if stream.is_null() {
        "cuMemcpyHtoD"
    } else {
        "cuMemcpyHtoDAsync"
    };
    let host = src as *const u8;
    copy(
        name,
        dst as *mut u8,
        host,
        len,
        &[(dst, len)],
        Some(host),
        stream,
    )
}

/// Copies device memory to the host, checking the device range.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    len: usize,
) -> CUresult {
    cuMemcpyDtoHAsync_v2(dst, src, len, std::ptr::null_mut())
}

/// Copies device memory to the host, done when it returns.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    len: usize,
    stream: Handle,
) -> CUresult {
    let name = if stream.is_null() {
        "cuMemcpyDtoH"
    } else {
        "cuMemcpyDtoHAsync"
    };
    let host = dst as *mut u8;
    copy(
        name,
        host,
        src as *const u8,
        len,
        &[(src, len)],
        Some(host),
        stream,
    )
}

/// Copies between device ranges, checking both.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    len: usize,
) -> CUresult {
    cuMemcpyDtoDAsync_v2(dst, src, len, std::ptr::null_mut())
}

/// Copies between device ranges, done when it returns.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    len: usize,
    stream: Handle,
) -> CUresult {
    let name = if stream.is_null() {
        "cuMemcpyDtoD"
    } else {
        "cuMemcpyDtoDAsync"
    };
    copy(
        name,
        dst as *mut u8,
        src as *const u8,
        len,
        &[(dst, len), (src, len)],
        None,
        stream,
    )
}

/// Fills `[dst, +n * width)` with `value`'s `width` bytes, on `stream` as [`copy`] would.
unsafe fn memset(
    call: &str,
    dst: CUdeviceptr,
    value: u32,
    width: usize,
    n: usize,
    stream: Handle,
) -> CUresult {
    check_init!();
    if let Err(e) = device_range(call, dst, n * width) {
        return e;
    }
    if stream.is_null() {
        if let Some(refused) = graph::refuse(call, None) {
            return refused;
        }
    }
    let run = move || {
        // SAFETY: the range was checked at submission and outlives the graph, as on a GPU.
        unsafe {
            match width {
                1 => std::ptr::write_bytes(dst as *mut u8, value as u8, n),
                _ => std::slice::from_raw_parts_mut(dst as *mut u32, n).fill(value),
            }
        }
        CUDA_SUCCESS
    };
    if let Some(recorded) = graph::record(stream, Box::new(run)) {
        return recorded;
    }
    run()
}

/// Sets `n` bytes of device memory to `value`.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8_v2(dst: CUdeviceptr, value: u8, n: usize) -> CUresult {
    memset("cuMemsetD8", dst, value as u32, 1, n, std::ptr::null_mut())
}

/// Sets `n` bytes of device memory to `value`, done when it returns.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8Async(
    dst: CUdeviceptr,
    value: u8,
    n: usize,
    stream: Handle,
) -> CUresult {
    memset("cuMemsetD8Async", dst, value as u32, 1, n, stream)
}

/// Sets `n` 32-bit words of device memory to `value`.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32_v2(dst: CUdeviceptr, value: c_uint, n: usize) -> CUresult {
    memset("cuMemsetD32", dst, value, 4, n, std::ptr::null_mut())
}

/// Sets `n` 32-bit words of device memory to `value`, done when it returns.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32Async(
    dst: CUdeviceptr,
    value: c_uint,
    n: usize,
    stream: Handle,
) -> CUresult {
    memset("cuMemsetD32Async", dst, value, 4, n, stream)
}

// Page-locked host memory.

/// Page-locked host allocations by address, with their sizes: ordinary host memory here, told
/// apart so that copies from and to it count as pinned, and may be captured in a graph.
mod pinned {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    static LIVE: Mutex<BTreeMap<usize, usize>> = Mutex::new(BTreeMap::new());

    pub(super) fn insert(addr: usize, len: usize) {
        LIVE.lock().unwrap().insert(addr, len);
    }

    pub(super) fn remove(addr: usize) -> Option<usize> {
        LIVE.lock().unwrap().remove(&addr)
    }

    /// Whether `[addr, addr + len)` lies in one page-locked allocation.
    pub(super) fn contains(addr: usize, len: usize) -> bool {
        let live = LIVE.lock().unwrap();
        live.range(..=addr)
            .next_back()
            .is_some_and(|(&start, &size)| addr + len <= start + size)
    }
}

/// Allocates `bytes` of page-locked host memory (page-aligned, as the driver's are).
#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(
    p: *mut *mut c_void,
    bytes: usize,
    _flags: c_uint,
) -> CUresult {
    check_init!();
    if p.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    let len = bytes.max(1);
    let map = libc::mmap(
        std::ptr::null_mut(),
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    if map == libc::MAP_FAILED {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    pinned::insert(map as usize, len);
    *p = map;
    CUDA_SUCCESS
}

/// Allocates `bytes` of page-locked host memory.
#[no_mangle]
pub unsafe extern "C" fn cuMemAllocHost_v2(p: *mut *mut c_void, bytes: usize) -> CUresult {
    cuMemHostAlloc(p, bytes, 0)
}

/// Frees page-locked host memory.
#[no_mangle]
pub unsafe extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    check_init!();
    match pinned::remove(p as usize) {
        Some(len) => {
            libc::munmap(p, len);
            CUDA_SUCCESS
        }
        None => CUDA_ERROR_INVALID_VALUE,
    }
}

// Modules and functions.

/// A loaded entry point: the host kernel compiled from its source, and what the PTX declares.
struct Function {
    kernel: &'static HostKernel,
    static_shared: u64,
}

struct Module {
    functions: HashMap<String, Box<Function>>,
}

/// Checks a PTX module against the kernels compiled for the host: same target family, for
/// every entry point a host kernel of that name with the same parameter sizes, and where the
/// PTX carries its source's digest (the backend's always do), the same source: a simulator
/// built from another version of a kernel file would otherwise run its old code silently.
fn load_ptx(text: &str) -> Result<Module, String> {
    let module = ptx::parse(text)?;
    let arch: u32 = module
        .target
        .trim_start_matches("sm_")
        .trim_end_matches(['a', 'f'])
        .parse()
        .map_err(|_| format!("unknown target {}", module.target))?;
    let (major, minor) = (
        device::attribute(75).unwrap(),
        device::attribute(76).unwrap(),
    );
    if arch > (major * 10 + minor) as u32 {
        return Err(format!(
            "PTX for {} cannot run on a compute capability {major}.{minor} device",
            module.target
        ));
    }
    let mut functions = HashMap::new();
    for entry in module.entries {
        let kernel = kernels::find(&entry.name).ok_or_else(|| {
            format!(
                "entry point `{}` has no kernel compiled for the host (cuda-sim compiles \
                 backend/src/cuda/kernels/*.cu and its own tests/kernels/*.cu)",
                entry.name
            )
        })?;
        if let Some(digest) = &module.source_digest {
            if digest != kernel.digest {
                return Err(format!(
                    "entry point `{}`: the PTX was compiled from another version of {} than \
                     this simulator was built from (source digest {digest}, the simulator's \
                     {}): rebuild it (`cargo build -p vigil-cuda-sim`, or `cargo xtask test`)",
                    entry.name, kernel.file, kernel.digest
                ));
            }
        }
        if kernel.param_sizes != entry.param_sizes.as_slice() {
            return Err(format!(
                "entry point `{}`: the PTX's parameters ({:?} bytes) differ from those of {} \
                 compiled for the host ({:?}): not the same source",
                entry.name, entry.param_sizes, kernel.file, kernel.param_sizes
            ));
        }
        functions.insert(
            entry.name,
            Box::new(Function {
                kernel,
                static_shared: entry.static_shared,
            }),
        );
    }
    Ok(Module { functions })
}

/// Loads a module from NVRTC's PTX: its entry points bind to the host-compiled kernels.
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut Handle, image: *const c_void) -> CUresult {
    check_init!();
    let bytes = image as *const u8;
    if std::slice::from_raw_parts(bytes, 4) == b"\x7fELF" {
        return fail(
            "cuModuleLoadData",
            CUDA_ERROR_INVALID_IMAGE,
            format_args!("a cubin: only PTX (from NVRTC) is simulated"),
        );
    }
    let Ok(text) = CStr::from_ptr(image as *const c_char).to_str() else {
        return fail(
            "cuModuleLoadData",
            CUDA_ERROR_INVALID_PTX,
            format_args!("not UTF-8 PTX"),
        );
    };
    match load_ptx(text) {
        Ok(m) => {
            *module = Box::into_raw(Box::new(m)) as Handle;
            CUDA_SUCCESS
        }
        Err(why) => fail(
            "cuModuleLoadData",
            CUDA_ERROR_INVALID_PTX,
            format_args!("{why}"),
        ),
    }
}

/// Unloads a module.
#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(module: Handle) -> CUresult {
    check_init!();
    if module.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    drop(Box::from_raw(module as *mut Module));
    CUDA_SUCCESS
}

/// The kernel `name` of a module.
#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    function: *mut Handle,
    module: Handle,
    name: *const c_char,
) -> CUresult {
    check_init!();
    if module.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    let module = &*(module as *const Module);
    let name = CStr::from_ptr(name).to_string_lossy();
    match module.functions.get(name.as_ref()) {
        Some(f) => {
            *function = &**f as *const Function as Handle;
            CUDA_SUCCESS
        }
        None => CUDA_ERROR_NOT_FOUND,
    }
}

/// An attribute of a kernel (registers, shared memory, threads per block).
#[no_mangle]
pub unsafe extern "C" fn cuFuncGetAttribute(
    value: *mut c_int,
    attribute: c_int,
    function: Handle,
) -> CUresult {
    check_init!();
    if function.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    let f = &*(function as *const Function);
    *value = match attribute {
        0 => device::MAX_THREADS_PER_BLOCK as c_int,
        1 => f.static_shared as c_int,
        _ => {
            return fail(
                "cuFuncGetAttribute",
                CUDA_ERROR_NOT_SUPPORTED,
                format_args!("attribute {attribute} is not simulated"),
            )
        }
    };
    CUDA_SUCCESS
}

/// Why a launch configuration is refused, as a GPU refuses it.
pub fn check_launch_config(grid: [u32; 3], block: [u32; 3], shared: u64) -> Result<(), String> {
    let threads = block.iter().map(|&b| b as u64).product::<u64>();
    if grid.contains(&0) || block.contains(&0) {
        return Err(format!(
            "grid {grid:?} or block {block:?} has a zero dimension"
        ));
    }
    for i in 0..3 {
        if grid[i] > device::MAX_GRID_DIM[i] {
            return Err(format!(
                "grid {grid:?} exceeds the device's {:?}",
                device::MAX_GRID_DIM
            ));
        }
        if block[i] > device::MAX_BLOCK_DIM[i] {
            return Err(format!(
                "block {block:?} exceeds the device's {:?}",
                device::MAX_BLOCK_DIM
            ));
        }
    }
    if threads > device::MAX_THREADS_PER_BLOCK as u64 {
        return Err(format!(
            "{threads} threads per block exceed the device's {}",
            device::MAX_THREADS_PER_BLOCK
        ));
    }
    if shared > device::MAX_SHARED_PER_BLOCK {
        return Err(format!(
            "{shared} bytes of shared memory per block exceed the device's {}",
            device::MAX_SHARED_PER_BLOCK
        ));
    }
    Ok(())
}

/// Runs a kernel's grid to completion on the host's cores, checking its launch limits.
#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    function: Handle,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    shared_bytes: c_uint,
    stream: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    check_init!();
    if function.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    let f = &*(function as *const Function);
    let name = f.kernel.name;
    if !extra.is_null() {
        return fail(
            "cuLaunchKernel",
            CUDA_ERROR_NOT_SUPPORTED,
            format_args!("{name}: `extra` parameters are not simulated"),
        );
    }
    if shared_bytes > 0 {
        return fail(
            "cuLaunchKernel",
            CUDA_ERROR_NOT_SUPPORTED,
            format_args!("{name}: dynamic shared memory is not simulated"),
        );
    }
    let (grid, block) = ([grid_x, grid_y, grid_z], [block_x, block_y, block_z]);
    if let Err(why) = check_launch_config(grid, block, f.static_shared + shared_bytes as u64) {
        return fail(
            "cuLaunchKernel",
            CUDA_ERROR_INVALID_VALUE,
            format_args!("{name}: {why}"),
        );
    }
    let n = f.kernel.param_sizes.len();
    if n > 0 && params.is_null() {
        return fail(
            "cuLaunchKernel",
            CUDA_ERROR_INVALID_VALUE,
            format_args!("{name}: no parameters given, {n} expected"),
        );
    }
    if stream.is_null() {
        if let Some(refused) = graph::refuse("cuLaunchKernel on the legacy stream", None) {
            return refused;
        }
    }
    if graph::capturing(stream) {
        // A graph's node keeps its parameters' values as they were at the launch.
        let values: Vec<Vec<u8>> = f
            .kernel
            .param_sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                std::slice::from_raw_parts(*params.add(i) as *const u8, size as usize).to_vec()
            })
            .collect();
        let function = function as usize;
        let replay = move || {
            let mut values = values.clone();
            let mut pointers: Vec<*mut c_void> = values
                .iter_mut()
                .map(|v| v.as_mut_ptr() as *mut c_void)
                .collect();
            // SAFETY: the function outlives the graphs that launch it, as on a GPU; the
            // parameters are the values it was given, in their sizes.
            unsafe {
                run_launch(
                    &*(function as *const Function),
                    (grid, block, shared_bytes),
                    pointers.as_mut_ptr(),
                )
            }
        };
        return graph::record(stream, Box::new(replay)).unwrap_or(CUDA_SUCCESS);
    }
    run_launch(f, (grid, block, shared_bytes), params)
}

/// Runs a checked launch of `f` to completion with `params`, then checks the canaries of the
/// allocations its 8-byte parameters may point into.
unsafe fn run_launch(
    f: &Function,
    (grid, block, shared_bytes): ([u32; 3], [u32; 3], c_uint),
    params: *mut *mut c_void,
) -> CUresult {
    let name = f.kernel.name;
    // Every 8-byte parameter may be a device address: their allocations' canaries are checked.
    let addresses: Vec<u64> = f
        .kernel
        .param_sizes
        .iter()
        .enumerate()
        .filter(|(_, &s)| s == 8)
        .map(|(i, _)| *(*params.add(i) as *const u64))
        .collect();
    let launch = Launch {
        kernel: f.kernel,
        grid,
        block,
    };
    // Profiled launches run one at a time, whichever host threads launch them: each is one
    // record.
    static PROFILED_LAUNCH: Mutex<()> = Mutex::new(());
    let profiled = crate::profile::enabled();
    let one_at_a_time = profiled.then(|| PROFILED_LAUNCH.lock().unwrap_or_else(|e| e.into_inner()));
    if profiled {
        crate::profile::begin_launch(f.kernel.name, grid, block, shared_bytes);
    }
    let ran = threads::run_grid(launch, params, crate::memcheck::prepare_this_thread);
    if profiled {
        crate::profile::end_launch();
    }
    drop(one_at_a_time);
    if let Err(e) = ran {
        let code = match e {
            threads::LaunchError::IllegalAddress { .. } => CUDA_ERROR_ILLEGAL_ADDRESS,
            threads::LaunchError::Deadlock { .. } => CUDA_ERROR_LAUNCH_FAILED,
        };
        return fail("cuLaunchKernel", code, format_args!("{name}: {e}"));
    }
    if let Some(damage) = memory::check_canaries(addresses) {
        let side = if damage.offset < 0 {
            "before the start"
        } else {
            "past the end"
        };
        eprintln!(
            "cuda-sim memcheck: invalid write of device memory in kernel `{name}` (grid {grid:?}, \
             block {block:?}): {} bytes {side} of a {}-byte allocation at {:#x} (found after the \
             launch by its guard bytes, so the thread is not known)",
            damage.offset.unsigned_abs(),
            damage.size,
            damage.data
        );
        return fail(
            "cuLaunchKernel",
            CUDA_ERROR_ILLEGAL_ADDRESS,
            format_args!("{name}: an invalid write of device memory"),
        );
    }
    CUDA_SUCCESS
}

// Errors by name, as cudarc prints them.

/// The name of a status code.
#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(error: CUresult, name: *mut *const c_char) -> CUresult {
    let text: &'static CStr = match error {
        0 => c"CUDA_SUCCESS",
        1 => c"CUDA_ERROR_INVALID_VALUE",
        2 => c"CUDA_ERROR_OUT_OF_MEMORY",
        3 => c"CUDA_ERROR_NOT_INITIALIZED",
        101 => c"CUDA_ERROR_INVALID_DEVICE",
        200 => c"CUDA_ERROR_INVALID_IMAGE",
        218 => c"CUDA_ERROR_INVALID_PTX",
        400 => c"CUDA_ERROR_INVALID_HANDLE",
        500 => c"CUDA_ERROR_NOT_FOUND",
        700 => c"CUDA_ERROR_ILLEGAL_ADDRESS",
        719 => c"CUDA_ERROR_LAUNCH_FAILED",
        801 => c"CUDA_ERROR_NOT_SUPPORTED",
        401 => c"CUDA_ERROR_ILLEGAL_STATE",
        900 => c"CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
        901 => c"CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
        _ => return CUDA_ERROR_INVALID_VALUE,
    };
    *name = text.as_ptr();
    CUDA_SUCCESS
}

/// The description of a status code.
#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(error: CUresult, text: *mut *const c_char) -> CUresult {
    cuGetErrorName(error, text)
}

/// The driver's private tables (NVRTC asks for one when libcuda is present): none is
/// simulated, and callers fall back as they do on a driver that lacks the table.
#[no_mangle]
pub unsafe extern "C" fn cuGetExportTable(
    table: *mut *const c_void,
    _id: *const c_void,
) -> CUresult {
    if !table.is_null() {
        *table = std::ptr::null();
    }
    CUDA_ERROR_NOT_SUPPORTED
}
