//! Per-launch device times by CUDA events, for a table of what each kernel of a step costs.
//!
//! Off by default, and then nothing but a check of a flag runs per launch. On, each kernel
//! launch and cuBLAS GEMM is bracketed by two events on the stream, labelled with the kernel's
//! name (`cublas:MxNxK` for a GEMM, cuBLAS's dimensions); after the step's stream synchronised,
//! [`KernelTimer::take`] reads each pair's elapsed time. Two event records per launch add their
//! own small cost to the step, so the step's total is read apart, not summed from these.

use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaContext, CudaEvent, CudaStream};

use super::error::CudaError;

struct Mark {
    label: String,
    start: CudaEvent,
    end: CudaEvent,
}

/// See the module documentation.
pub struct KernelTimer {
    ctx: Arc<CudaContext>,
    /// The marks of the launches timed since the last take, while on.
    marks: Mutex<Option<Vec<Mark>>>,
}

impl KernelTimer {
    pub(crate) fn new(ctx: &Arc<CudaContext>) -> KernelTimer {
        KernelTimer {
            ctx: ctx.clone(),
            marks: Mutex::new(None),
        }
    }

    /// Times launches from now on, or stops (dropping what was not taken).
    pub fn set(&self, on: bool) {
        *self.marks.lock().unwrap() = on.then(Vec::new);
    }

    /// Whether launches are timed now.
    pub(crate) fn is_on(&self) -> bool {
        self.marks.lock().unwrap().is_some()
    }

    /// Runs `launch`, between two events on `stream` while timing is on.
    pub(crate) fn time<R>(
        &self,
        stream: &CudaStream,
        label: impl FnOnce() -> String,
        launch: impl FnOnce() -> Result<R, CudaError>,
    ) -> Result<R, CudaError> {
        if self.marks.lock().unwrap().is_none() {
            return launch();
        }
        let event = || {
            self.ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
        };
        let (start, end) = (event()?, event()?);
        start.record(stream)?;
        let result = launch()?;
        end.record(stream)?;
        if let Some(marks) = self.marks.lock().unwrap().as_mut() {
            marks.push(Mark {
                label: label(),
                start,
                end,
            });
        }
        Ok(result)
    }

    /// After the stream synchronised: each launch timed since the last take, in launch order,
    /// as its label and seconds.
    pub fn take(&self) -> Result<Vec<(String, f64)>, CudaError> {
        let marks = match self.marks.lock().unwrap().as_mut() {
            Some(marks) => std::mem::take(marks),
            None => return Ok(Vec::new()),
        };
        marks
            .into_iter()
            .map(|m| Ok((m.label, f64::from(m.start.elapsed_ms(&m.end)?) / 1e3)))
            .collect()
    }
}
