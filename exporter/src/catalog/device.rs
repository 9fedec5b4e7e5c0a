//! The device's own clock per engine step: busy time and the idle gap before it.
//!
//! The device backend's own clock: how long the GPU worked on each engine step, and how long it
//! sat idle between two steps while the engine had work, both measured with CUDA events on the
//! step's stream. A long gap with a short busy time is host-side latency (scheduling, sampling,
//! the engine thread waiting for a CPU): read it next to `vigil_runqueue_latency_seconds`.
//!
//! Only a device backend records these; on the CPU backend they stay empty.

use super::{Kind, Label, MetricDef};
use crate::buckets::BucketFamily;

const L: &[Label] = &[Label::ModelName, Label::Engine];

/// `vigil_device_step_busy_seconds`: GPU time of one engine step, from its first upload to its last
/// copy back (CUDA events).
pub static STEP_BUSY: MetricDef = MetricDef::new(
    "vigil_device_step_busy_seconds",
    Kind::Histogram,
    "GPU time of one engine step, from its first upload to its last copy back (CUDA events).",
    L,
)
.buckets(BucketFamily::Log2Microseconds)
.engine_stat();

/// `vigil_device_step_gap_seconds`: GPU idle time between the end of one engine step and the start
/// of the next, while the engine had work (CUDA events).
pub static STEP_GAP: MetricDef = MetricDef::new(
    "vigil_device_step_gap_seconds",
    Kind::Histogram,
    "GPU idle time between the end of one engine step and the start of the next, while the engine had work (CUDA events).",
    L,
)
.buckets(BucketFamily::Log2Microseconds)
.engine_stat();

/// Every series this module defines.
pub static ALL: &[&MetricDef] = &[&STEP_BUSY, &STEP_GAP];
