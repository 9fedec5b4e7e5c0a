//! From the kernel's cumulative aggregates to the catalog's series.

use exporter::catalog::sched::{
    INVOLUNTARY_SWITCHES, OFF_CPU, PROBE_ERRORS, ROLES, RUNQUEUE_LATENCY, VOLUNTARY_SWITCHES,
};
use exporter::{Exporter, SetError};

use super::maps::Snapshot;

/// Sets every series from `snap`. The kernel's slot `k` is the bucket `le=2^(k+1)` µs of
/// [`exporter::BucketFamily::Log2Microseconds`], its last slot `+Inf`, so the counts
/// carry over as they are; the sum is exact (the kernel adds nanoseconds).
pub fn apply(exporter: &Exporter, snap: &Snapshot) -> Result<(), SetError> {
    for (role, stats) in ROLES.iter().zip(&snap.roles) {
        let labels = [("role", (*role).to_owned())];
        exporter.set_histogram_counts(
            &RUNQUEUE_LATENCY,
            &labels,
            &stats.slots,
            stats.runq_ns as f64 * 1e-9,
        )?;
        exporter.set_counter_total(&OFF_CPU, &labels, stats.offcpu_ns as f64 * 1e-9)?;
        exporter.set_counter_total(&INVOLUNTARY_SWITCHES, &labels, stats.involuntary as f64)?;
        exporter.set_counter_total(&VOLUNTARY_SWITCHES, &labels, stats.voluntary as f64)?;
    }
    exporter.set_counter_total(&PROBE_ERRORS, &[], snap.missed as f64)
}
