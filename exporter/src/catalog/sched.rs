//! How the host scheduled Vigil's own threads, by role, as the eBPF probe measures it.
//!
//! Host scheduling of Vigil's own threads, measured in the kernel by the eBPF probe
//! (probes/bpf/sched.bpf.c): how long runnable threads waited for a CPU, how long they were off
//! CPU, and how often they were switched out, by thread role.
//!
//! Roles come from thread names: `vigil-engine` (the step loop), `vigil-http` (tokio workers
//! serving the API), `vigil-compute` (the CPU backend's worker pool), `other`.

use super::{Kind, Label, MetricDef};
use crate::buckets::BucketFamily;

/// Values of `role`, in the order of the kernel's role indices (`ROLE_*` in probes/bpf/sched.h).
pub const ROLES: &[&str] = &["engine", "http", "compute", "other"];

const ROLE: &[Label] = &[Label::OneOf {
    name: "role",
    values: ROLES,
}];

/// `vigil_runqueue_latency_seconds`: Time Vigil's threads spent runnable but waiting for a CPU
/// (wakeup or preemption to switch-in), by thread role.
pub static RUNQUEUE_LATENCY: MetricDef = MetricDef::new(
    "vigil_runqueue_latency_seconds",
    Kind::Histogram,
    "Time Vigil's threads spent runnable but waiting for a CPU (wakeup or preemption to switch-in), by thread role.",
    ROLE,
)
.buckets(BucketFamily::Log2Microseconds);

/// `vigil_off_cpu_seconds`: Time Vigil's threads spent off CPU (from switch-out to the next
/// switch-in: blocked or waiting to run), by thread role.
pub static OFF_CPU: MetricDef = MetricDef::new(
    "vigil_off_cpu_seconds",
    Kind::Counter,
    "Time Vigil's threads spent off CPU (from switch-out to the next switch-in: blocked or waiting to run), by thread role.",
    ROLE,
);

/// `vigil_involuntary_context_switches`: Times Vigil's threads were switched out while still
/// runnable (preempted), by thread role.
pub static INVOLUNTARY_SWITCHES: MetricDef = MetricDef::new(
    "vigil_involuntary_context_switches",
    Kind::Counter,
    "Times Vigil's threads were switched out while still runnable (preempted), by thread role.",
    ROLE,
);

/// `vigil_voluntary_context_switches`: Times Vigil's threads left the CPU to sleep or block, by
/// thread role.
pub static VOLUNTARY_SWITCHES: MetricDef = MetricDef::new(
    "vigil_voluntary_context_switches",
    Kind::Counter,
    "Times Vigil's threads left the CPU to sleep or block, by thread role.",
    ROLE,
);

/// `vigil_sched_probe_missed_events`: Scheduler events the eBPF probe could not account (no task
/// storage available).
pub static PROBE_ERRORS: MetricDef = MetricDef::new(
    "vigil_sched_probe_missed_events",
    Kind::Counter,
    "Scheduler events the eBPF probe could not account (no task storage available).",
    &[],
);

/// Every series this module defines.
pub static ALL: &[&MetricDef] = &[
    &RUNQUEUE_LATENCY,
    &OFF_CPU,
    &INVOLUNTARY_SWITCHES,
    &VOLUNTARY_SWITCHES,
    &PROBE_ERRORS,
];
