//! The eBPF probe: run-queue latency, off-CPU time and switches of one process's threads by role.
//!
//! The eBPF probe: run-queue latency, off-CPU time and context switches of one process's
//! threads by role, measured in the kernel (probes/bpf/sched.bpf.c) and read every interval by
//! a thread of its own (`vigil-sched-probe`).
//!
//! The programs are BTF tracepoints (`tp_btf`: no tracefs), relocated by aya against the running
//! kernel's BTF (CO-RE), filtered in the kernel to the target process, and aggregate into
//! per-CPU arrays, so the per-event cost is a few loads and adds (see the numbers in
//! the closing note and `cargo xtask bench-ebpf`).

pub(crate) mod export;
pub(crate) mod follow;
pub(crate) mod maps;
pub(crate) mod report;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aya::maps::PerCpuArray;
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};
use exporter::Exporter;

use crate::status::{self, Probe, State};
use maps::{RoleStats, Snapshot, NR_ROLES};

/// The object build.rs compiled (empty when clang was missing).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sched.bpf.o"));

/// The tracepoints and the programs attached to them (program names are the C functions').
const TRACEPOINTS: [&str; 3] = ["sched_wakeup", "sched_wakeup_new", "sched_switch"];

/// The loaded and attached programs; detached when dropped.
pub struct SchedProbe {
    ebpf: Ebpf,
}

impl SchedProbe {
    /// Loads the programs, filtered to the threads of process `tgid` (0: every process), and
    /// attaches them. The error is the probe's state: why it cannot run here.
    pub fn attach(tgid: u32) -> Result<SchedProbe, State> {
        Self::attach_object(OBJECT, tgid)
    }

    /// [`SchedProbe::attach`] with another compiled object (8-byte aligned, as
    /// `aya::include_bytes_aligned!` gives): the tests load the committed objects this way.
    pub fn attach_object(object: &[u8], tgid: u32) -> Result<SchedProbe, State> {
        if object.is_empty() {
            return Err(State::off(
                "not_built",
                format!(
                    "this binary was built without the eBPF object ({})",
                    env!("VIGIL_SCHED_BPF_BUILD_ERROR")
                ),
            ));
        }
        // Always pass the kernel's BTF: without it aya would load without CO-RE relocation and
        // silently read wrong offsets.
        let btf = Btf::from_sys_fs().map_err(|e| {
            State::off(
                "no_btf",
                format!("kernel BTF unavailable at /sys/kernel/btf/vmlinux ({e}); needs CONFIG_DEBUG_INFO_BTF"),
            )
        })?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            // The task-storage map is created for the programs; aya 0.14 cannot read it, and
            // need not.
            .allow_unsupported_maps()
            .override_global("targ_tgid", &tgid, true)
            .load(object)
            .map_err(|e| classify(&e, "loading the eBPF object"))?;
        for tp in TRACEPOINTS {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(tp)
                .ok_or_else(|| {
                    State::off("failed", format!("program {tp} missing from the object"))
                })?
                .try_into()
                .map_err(|e| classify(&e, tp))?;
            program.load(tp, &btf).map_err(|e| classify(&e, tp))?;
            program.attach().map_err(|e| classify(&e, tp))?;
        }
        Ok(SchedProbe { ebpf })
    }

    /// What the kernel side has counted so far, all CPUs summed.
    pub fn read(&self) -> Result<Snapshot, String> {
        let roles: PerCpuArray<_, RoleStats> =
            PerCpuArray::try_from(self.ebpf.map("roles").ok_or("map roles missing")?)
                .map_err(|e| e.to_string())?;
        let mut snap = Snapshot::default();
        for (role, total) in snap.roles.iter_mut().enumerate().take(NR_ROLES) {
            for cpu in roles
                .get(&(role as u32), 0)
                .map_err(|e| e.to_string())?
                .iter()
            {
                total.add(cpu);
            }
        }
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("stats").ok_or("map stats missing")?)
                .map_err(|e| e.to_string())?;
        snap.missed = stats.get(&0, 0).map_err(|e| e.to_string())?.iter().sum();
        Ok(snap)
    }
}

/// The probe state an aya error means: no privilege, an old kernel, or something else.
fn classify(e: &dyn std::error::Error, what: &str) -> State {
    // aya wraps the syscall's io::Error; its text carries the errno.
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    let reason = if text.contains("Operation not permitted") || text.contains("os error 1)") {
        "no_permission"
    } else if text.contains("Invalid argument") || text.contains("not supported") {
        "unsupported_kernel"
    } else {
        "failed"
    };
    let hint = if reason == "no_permission" {
        " (needs root, or CAP_BPF and CAP_PERFMON)"
    } else {
        ""
    };
    State::off(reason, format!("{what}: {text}{hint}"))
}

/// The running reader thread; dropping it stops the thread and detaches the programs.
pub(crate) struct Poller {
    stop: Arc<AtomicBool>,
}

impl Poller {
    /// Attaches to `tgid`'s threads and exports their numbers every `interval`; `None` (with
    /// the probe's status set to why) when the probe cannot run here.
    pub(crate) fn start(exporter: Exporter, tgid: u32, interval: Duration) -> Option<Poller> {
        let probe = match SchedProbe::attach(tgid) {
            Ok(p) => p,
            Err(state) => {
                status::set(&exporter, Probe::Ebpf, &state);
                return None;
            }
        };
        // Running before the thread starts, so that a failure it meets is not overwritten.
        status::set(&exporter, Probe::Ebpf, &State::Running);
        Poller::spawn(&exporter, interval, move |exporter| {
            probe
                .read()
                .and_then(|s| export::apply(exporter, &s).map_err(|e| e.to_string()))
                .map_err(|e| State::off("failed", e))
        })
    }

    /// Runs `tick` on the probe's own thread every `interval` until the poller is dropped, or
    /// until `tick` fails: the probe's status then says why.
    fn spawn(
        exporter: &Exporter,
        interval: Duration,
        mut tick: impl FnMut(&Exporter) -> Result<(), State> + Send + 'static,
    ) -> Option<Poller> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread_exporter = exporter.clone();
        let spawned = std::thread::Builder::new()
            .name("vigil-sched-probe".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    if let Err(state) = tick(&thread_exporter) {
                        status::set(&thread_exporter, Probe::Ebpf, &state);
                        return;
                    }
                    std::thread::sleep(interval);
                }
            });
        match spawned {
            Ok(_) => Some(Poller { stop }),
            Err(e) => {
                status::set(exporter, Probe::Ebpf, &State::off("failed", e.to_string()));
                None
            }
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
