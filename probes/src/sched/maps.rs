//! Rust mirrors of the kernel side's map values (probes/bpf/sched.h), and their read-out.

use exporter::BucketFamily;

/// Roles in the kernel's order (`ROLE_*`), which is the catalog's [`exporter::catalog::sched::ROLES`].
pub(crate) const NR_ROLES: usize = 4;
/// `NR_SLOTS`: log2 slots of run-queue latency in microseconds.
pub(crate) const NR_SLOTS: usize = BucketFamily::LOG2_SLOTS;

/// `struct role_stats`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleStats {
    /// Run-queue latency histogram: counts per power-of-two microsecond slot.
    pub slots: [u64; NR_SLOTS],
    /// Total run-queue wait, in nanoseconds.
    pub runq_ns: u64,
    /// Total time off the CPU, in nanoseconds.
    pub offcpu_ns: u64,
    /// Context switches the thread did not ask for.
    pub involuntary: u64,
    /// Context switches the thread asked for (it blocked or yielded).
    pub voluntary: u64,
}

// SAFETY: `repr(C)`, only `u64` fields, no padding: any bit pattern is a valid value.
unsafe impl aya::Pod for RoleStats {}

impl Default for RoleStats {
    fn default() -> Self {
        RoleStats {
            slots: [0; NR_SLOTS],
            runq_ns: 0,
            offcpu_ns: 0,
            involuntary: 0,
            voluntary: 0,
        }
    }
}

impl RoleStats {
    /// Adds another CPU's share.
    pub fn add(&mut self, other: &RoleStats) {
        for (a, b) in self.slots.iter_mut().zip(other.slots) {
            *a += b;
        }
        self.runq_ns += other.runq_ns;
        self.offcpu_ns += other.offcpu_ns;
        self.involuntary += other.involuntary;
        self.voluntary += other.voluntary;
    }

    /// Run-queue waits counted.
    pub fn waits(&self) -> u64 {
        self.slots.iter().sum()
    }
}

/// Everything the kernel side has counted so far (cumulative since attach), all CPUs summed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Each role's totals, in `ROLES` order.
    pub roles: [RoleStats; NR_ROLES],
    /// `STAT_NO_STORAGE`: events not accounted.
    pub missed: u64,
}

impl Snapshot {
    /// Adds another snapshot's counts (a process watched before, so that counters carry on
    /// across a change of process instead of going back to zero).
    pub fn add(&mut self, other: &Snapshot) {
        for (a, b) in self.roles.iter_mut().zip(&other.roles) {
            a.add(b);
        }
        self.missed += other.missed;
    }
}
