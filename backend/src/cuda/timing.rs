//! A step's busy time and idle gap on the device, from CUDA events.
//!
//! A step's time on the device, by CUDA events recorded on the step's stream: busy time from
//! the step's first operation to its last, and the idle gap since the previous step ended (none
//! after the engine went idle, when the wait was for requests, not for the host).

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{result, sys, CudaContext, CudaEvent, CudaStream};

use super::error::CudaError;
use crate::StepTiming;

pub(crate) struct StepClock {
    start: CudaEvent,
    end: CudaEvent,
    /// The previous step's end, while the engine has had work since.
    previous_end: Option<CudaEvent>,
    ctx: Arc<CudaContext>,
}

fn timing_event(ctx: &Arc<CudaContext>) -> Result<CudaEvent, CudaError> {
    Ok(ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?)
}

fn ms(v: f32) -> Duration {
    Duration::from_secs_f64(f64::from(v.max(0.0)) / 1e3)
}

impl StepClock {
    pub(crate) fn new(ctx: &Arc<CudaContext>) -> Result<StepClock, CudaError> {
        Ok(StepClock {
            start: timing_event(ctx)?,
            end: timing_event(ctx)?,
            previous_end: None,
            ctx: ctx.clone(),
        })
    }

    pub(crate) fn begin(&self, stream: &CudaStream) -> Result<(), CudaError> {
        Ok(self.start.record(stream)?)
    }

    pub(crate) fn end(&self, stream: &CudaStream) -> Result<(), CudaError> {
        Ok(self.end.record(stream)?)
    }

    /// After the step's stream synchronised: its timing. This step's end becomes the previous
    /// end for the next one. (cudarc's `elapsed_ms` would synchronise both events again.)
    pub(crate) fn read(&mut self) -> Result<StepTiming, CudaError> {
        let elapsed = |from: &CudaEvent, to: &CudaEvent| -> Result<Duration, CudaError> {
            // SAFETY: two events of this context, recorded on the stream that synchronised.
            Ok(ms(unsafe {
                result::event::elapsed(from.cu_event(), to.cu_event())
            }?))
        };
        let busy = elapsed(&self.start, &self.end)?;
        let gap = match &self.previous_end {
            Some(previous) => Some(elapsed(previous, &self.start)?),
            None => None,
        };
        let next_end = match self.previous_end.take() {
            Some(e) => e,
            None => timing_event(&self.ctx)?,
        };
        self.previous_end = Some(std::mem::replace(&mut self.end, next_end));
        Ok(StepTiming { busy, gap })
    }

    /// The engine ran out of work: the next step has no gap to report.
    pub(crate) fn idle(&mut self) {
        self.previous_end = None;
    }
}
