//! Vigil's hardware probes: GPU (NVML) and host scheduling (eBPF) series beside the engine's.
//!
//! Vigil's hardware probes: the series that tell an operator whether a slow token came from the
//! GPU or from the host CPU, in the same `/metrics` as the engine's.
//!
//! - `nvml`: a poller per process that reads every GPU through NVML (loaded at run time) and
//!   sets the `vigil_gpu_*` series of the catalog.
//! - `sched`: eBPF programs (C, compiled by clang at build time, loaded with aya) that measure
//!   run-queue latency, off-CPU time and context switches of Vigil's own threads by role.
//! - `status`: `vigil_probe_up{probe,reason}`: each probe says whether it runs, and why not.
//!
//! Missing hardware degrades, never crashes: no NVML, no GPU, no BTF or no privilege turns that
//! probe off with one log line and its status series, and everything else runs.

mod nvml;
mod sched;
mod status;

pub use nvml::check::run as check_nvml;
pub use nvml::reading::ErrorKind as NvmlErrorKind;
pub use nvml::source::peak_memory_bandwidth;
pub use nvml::{GpuSeries, GpuSource, NvmlSource, Recorded};
pub use sched::export::apply as export_sched_snapshot;
pub use sched::maps::{RoleStats, Snapshot as SchedSnapshot};
pub use sched::report::format as format_sched_report;
pub use sched::SchedProbe;

use std::sync::Arc;
use std::time::Duration;

use exporter::Exporter;

/// What [`start`] runs.
#[derive(Clone)]
pub struct ProbeConfig {
    /// How often the pollers read NVML and the kernel's aggregates.
    pub interval: Duration,
    /// Run the NVML poller.
    pub nvml: bool,
    /// Run the eBPF scheduler probe.
    pub ebpf: bool,
    /// The process whose threads the eBPF probe watches.
    pub target: Target,
}

/// The process the eBPF probe watches.
#[derive(Clone)]
pub enum Target {
    /// This one, for good (Vigil watching itself).
    Pid(u32),
    /// Whichever process this names, asked again whenever the one watched is gone (an engine
    /// a node agent fronts, which may start later or restart).
    Follow(Arc<dyn Fn() -> Option<u32> + Send + Sync>),
}

/// The running probes; dropping them stops their threads.
pub struct Probes {
    _nvml: Option<nvml::Poller>,
    _sched: Option<sched::Poller>,
}

/// Starts the probes `config` asks for, each on its own thread (off the engine's), and sets
/// their status series. Never fails: a probe that cannot run is off and says why.
pub fn start(exporter: &Exporter, config: &ProbeConfig) -> Probes {
    let nvml = if config.nvml {
        nvml::Poller::start(exporter.clone(), config.interval)
    } else {
        status::set(exporter, status::Probe::Nvml, &status::State::disabled());
        None
    };
    let sched = if config.ebpf {
        match &config.target {
            Target::Pid(pid) => sched::Poller::start(exporter.clone(), *pid, config.interval),
            Target::Follow(find) => {
                let find = Arc::clone(find);
                sched::Poller::follow(exporter.clone(), move || find(), config.interval)
            }
        }
    } else {
        status::set(exporter, status::Probe::Ebpf, &status::State::disabled());
        None
    };
    Probes {
        _nvml: nvml,
        _sched: sched,
    }
}
