//! A runqlat-style text report of a scheduling snapshot, for `vigil sched-latency`.
//!
//! A runqlat-style text report of a [`Snapshot`]: one log2 histogram per thread role, for
//! `vigil sched-latency`.

use std::fmt::Write as _;

use exporter::catalog::sched::ROLES;

use super::maps::{RoleStats, Snapshot};

/// Formats the run-queue latency histograms and counters of every role that saw events.
pub fn format(snap: &Snapshot) -> String {
    let mut out = String::new();
    for (role, stats) in ROLES.iter().zip(&snap.roles) {
        if stats.waits() == 0 && stats.voluntary == 0 && stats.involuntary == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "role = {role}: {} waits, mean {:.1} us; off CPU {:.3} s; switches {} voluntary, {} involuntary",
            stats.waits(),
            stats.runq_ns as f64 / 1000.0 / stats.waits().max(1) as f64,
            stats.offcpu_ns as f64 * 1e-9,
            stats.voluntary,
            stats.involuntary
        );
        histogram(&mut out, stats);
    }
    if snap.missed > 0 {
        let _ = writeln!(
            out,
            "events not accounted (no task storage): {}",
            snap.missed
        );
    }
    out
}

fn histogram(out: &mut String, stats: &RoleStats) {
    let last = stats.slots.iter().rposition(|n| *n > 0).unwrap_or(0);
    let max = stats.slots.iter().copied().max().unwrap_or(0).max(1);
    let _ = writeln!(out, "     usecs               : count    distribution");
    for (k, n) in stats.slots.iter().enumerate().take(last + 1) {
        let (low, high) = if k == 0 {
            (0, 1)
        } else {
            (1u64 << k, (1u64 << (k + 1)) - 1)
        };
        let bar = "*".repeat((n * 40 / max) as usize);
        let range = if k == stats.slots.len() - 1 {
            format!("{low} -> ...")
        } else {
            format!("{low} -> {high}")
        };
        let _ = writeln!(out, "{range:>24} : {n:<8} |{bar:<40}|");
    }
}
