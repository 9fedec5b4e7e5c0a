//! The NVML probe: a poller thread that reads every GPU and sets the `vigil_gpu_*` series.
//!
//! The NVML probe: a poller thread (`vigil-nvml`, off the engine's threads) that reads every
//! GPU each interval and sets the `vigil_gpu_*` series.

pub(crate) mod check;
pub(crate) mod export;
pub(crate) mod reading;
pub(crate) mod source;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use exporter::Exporter;

use crate::status::{self, Probe, State};
pub use export::GpuSeries;
pub use source::{GpuSource, NvmlSource, Recorded};

/// The running poller; dropping it stops the thread.
pub(crate) struct Poller {
    stop: Arc<AtomicBool>,
}

impl Poller {
    /// Opens NVML and starts polling; `None` (with the probe's status set to why) when NVML or
    /// a GPU is missing.
    pub(crate) fn start(exporter: Exporter, interval: Duration) -> Option<Poller> {
        match NvmlSource::open() {
            Ok(source) => Self::with_source(exporter, Box::new(source), interval),
            Err(state) => {
                status::set(&exporter, Probe::Nvml, &state);
                None
            }
        }
    }

    /// Polls `source` every `interval` on a thread of its own.
    pub(crate) fn with_source(
        exporter: Exporter,
        mut source: Box<dyn GpuSource>,
        interval: Duration,
    ) -> Option<Poller> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        status::set(&exporter, Probe::Nvml, &State::Running);
        let spawned = std::thread::Builder::new()
            .name("vigil-nvml".into())
            .spawn({
                let exporter = exporter.clone();
                move || {
                    let mut series = GpuSeries::new();
                    while !stopped.load(Ordering::Relaxed) {
                        series.apply(&exporter, &source.poll());
                        std::thread::sleep(interval);
                    }
                }
            });
        match spawned {
            Ok(_) => Some(Poller { stop }),
            Err(e) => {
                status::set(&exporter, Probe::Nvml, &State::off("failed", e.to_string()));
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
