//! CUDA graphs by stream capture: a capturing stream records its work, a launched graph replays it.
//!
//! Between `cuStreamBeginCapture` and `cuStreamEndCapture`, the work submitted to the capturing
//! stream (kernel launches, cuBLAS GEMMs, copies between device memory and page-locked host
//! memory, memsets, event records) is recorded instead of run, with its arguments as they were
//! at submission (as a GPU's graph nodes keep them). `cuGraphInstantiate` fixes the record;
//! `cuGraphLaunch` runs it in order. What a GPU refuses during a capture fails here too, with
//! `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED`, and invalidates the capture, so that its end fails
//! with `CUDA_ERROR_STREAM_CAPTURE_INVALIDATED`: synchronising the capturing stream, the context
//! or an event, querying the stream or an event, a copy from or to pageable host memory, and any
//! work on the legacy (null) stream while a capture is open (the CUDA Programming Guide's
//! "Prohibited and Unhandled Operations" under stream capture).

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::ffi::c_uint;
use std::sync::{Arc, Mutex};

use crate::driver::{
    CUresult, Handle, CUDA_ERROR_INVALID_HANDLE, CUDA_ERROR_INVALID_VALUE, CUDA_SUCCESS,
};

/// The operation is not permitted while a stream captures.
pub const CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: CUresult = 900;
/// The capture was invalidated by an operation it does not permit.
pub const CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: CUresult = 901;
/// The stream is not in the state the call needs (ending a capture that never began).
pub const CUDA_ERROR_ILLEGAL_STATE: CUresult = 401;

/// `CU_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH`: a graph launched from the device, not simulated.
const INSTANTIATE_DEVICE_LAUNCH: u64 = 4;

/// One recorded piece of work.
pub(crate) type Op = Box<dyn Fn() -> CUresult + Send + Sync>;

struct Capture {
    stream: usize,
    ops: Vec<Op>,
    invalidated: bool,
}

/// Open captures, by stream.
static CAPTURES: Mutex<Vec<Capture>> = Mutex::new(Vec::new());

thread_local! {
    /// Whether this thread is replaying a graph (its launches are counted as the graph's).
    static REPLAYING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the work this thread submits now comes from a graph's replay.
pub(crate) fn replaying() -> bool {
    REPLAYING.with(|r| r.get())
}

/// Records `op` when `stream` captures: `Some(CUDA_SUCCESS)` then, `None` when it does not (the
/// caller runs the work now).
pub(crate) fn record(stream: Handle, op: Op) -> Option<CUresult> {
    if stream.is_null() {
        return None;
    }
    let mut captures = CAPTURES.lock().unwrap();
    let capture = captures.iter_mut().find(|c| c.stream == stream as usize)?;
    capture.ops.push(op);
    Some(CUDA_SUCCESS)
}

/// For work a capture does not permit: when `stream` captures (`None`: when any stream does),
/// invalidates the capture and fails the call, saying why.
pub(crate) fn refuse(call: &str, stream: Option<Handle>) -> Option<CUresult> {
    let mut captures = CAPTURES.lock().unwrap();
    let mut refused = false;
    for c in captures.iter_mut() {
        if stream.is_none_or(|s| c.stream == s as usize) {
            c.invalidated = true;
            refused = true;
        }
    }
    refused.then(|| {
        eprintln!(
            "cuda-sim: {call}: not permitted while a stream captures a graph; the capture is \
             invalidated"
        );
        CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
    })
}

/// Whether `stream` captures.
pub(crate) fn capturing(stream: Handle) -> bool {
    let captures = CAPTURES.lock().unwrap();
    captures.iter().any(|c| c.stream == stream as usize)
}

/// Starts capturing `stream`'s work. The legacy stream cannot capture.
#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCapture_v2(stream: Handle, _mode: c_uint) -> CUresult {
    if stream.is_null() {
        eprintln!("cuda-sim: cuStreamBeginCapture: the legacy stream cannot capture");
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    let mut captures = CAPTURES.lock().unwrap();
    if captures.iter().any(|c| c.stream == stream as usize) {
        return CUDA_ERROR_ILLEGAL_STATE;
    }
    captures.push(Capture {
        stream: stream as usize,
        ops: Vec::new(),
        invalidated: false,
    });
    CUDA_SUCCESS
}

/// A recorded graph.
struct Graph {
    ops: Arc<Vec<Op>>,
}

/// Ends `stream`'s capture: its record as a graph, or the capture's invalidation.
#[no_mangle]
pub unsafe extern "C" fn cuStreamEndCapture(stream: Handle, graph: *mut Handle) -> CUresult {
    if graph.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    let capture = {
        let mut captures = CAPTURES.lock().unwrap();
        let Some(at) = captures.iter().position(|c| c.stream == stream as usize) else {
            return CUDA_ERROR_ILLEGAL_STATE;
        };
        captures.remove(at)
    };
    if capture.invalidated {
        *graph = std::ptr::null_mut();
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    *graph = Box::into_raw(Box::new(Graph {
        ops: Arc::new(capture.ops),
    })) as Handle;
    CUDA_SUCCESS
}

/// Whether `stream` captures: 0 no, 1 yes, 2 its capture was invalidated.
#[no_mangle]
pub unsafe extern "C" fn cuStreamIsCapturing(stream: Handle, status: *mut c_uint) -> CUresult {
    if status.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    let captures = CAPTURES.lock().unwrap();
    *status = match captures.iter().find(|c| c.stream == stream as usize) {
        None => 0,
        Some(c) if c.invalidated => 2,
        Some(_) => 1,
    };
    CUDA_SUCCESS
}

/// An instantiated graph, ready to launch.
struct GraphExec {
    ops: Arc<Vec<Op>>,
}

/// Instantiates `graph`. Device-launched graphs are not simulated.
#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(
    exec: *mut Handle,
    graph: Handle,
    flags: u64,
) -> CUresult {
    if exec.is_null() || graph.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if flags & INSTANTIATE_DEVICE_LAUNCH != 0 {
        eprintln!("cuda-sim: cuGraphInstantiateWithFlags: device launch is not simulated");
        return CUDA_ERROR_INVALID_VALUE;
    }
    let graph = &*(graph as *const Graph);
    *exec = Box::into_raw(Box::new(GraphExec {
        ops: Arc::clone(&graph.ops),
    })) as Handle;
    CUDA_SUCCESS
}

/// Runs an instantiated graph's work in recorded order (recorded in turn when `stream`
/// captures).
#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch(exec: Handle, stream: Handle) -> CUresult {
    if exec.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if stream.is_null() {
        if let Some(refused) = refuse("cuGraphLaunch on the legacy stream", None) {
            return refused;
        }
    }
    let ops = Arc::clone(&(*(exec as *const GraphExec)).ops);
    if capturing(stream) {
        record(stream, Box::new(move || replay(&ops))).unwrap_or(CUDA_SUCCESS)
    } else {
        replay(&ops)
    }
}

/// Runs `ops` in order, counted as one graph launch; stops at the first failure.
fn replay(ops: &[Op]) -> CUresult {
    if crate::profile::enabled() {
        crate::profile::graph_launch();
    }
    let outer = REPLAYING.with(|r| r.replace(true));
    let result = ops
        .iter()
        .map(|op| op())
        .find(|&r| r != CUDA_SUCCESS)
        .unwrap_or(CUDA_SUCCESS);
    REPLAYING.with(|r| r.set(outer));
    result
}

/// Uploads a graph's resources ahead of its launch: nothing to do here.
#[no_mangle]
pub unsafe extern "C" fn cuGraphUpload(exec: Handle, _stream: Handle) -> CUresult {
    if exec.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    CUDA_SUCCESS
}

/// Destroys an instantiated graph.
#[no_mangle]
pub unsafe extern "C" fn cuGraphExecDestroy(exec: Handle) -> CUresult {
    if exec.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    drop(Box::from_raw(exec as *mut GraphExec));
    CUDA_SUCCESS
}

/// Destroys a graph (its instantiations live on).
#[no_mangle]
pub unsafe extern "C" fn cuGraphDestroy(graph: Handle) -> CUresult {
    if graph.is_null() {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    drop(Box::from_raw(graph as *mut Graph));
    CUDA_SUCCESS
}
