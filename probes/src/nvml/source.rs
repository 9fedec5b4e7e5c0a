//! Where polls come from: [`GpuSource`] is the seam between NVML and the mapping to series.
//!
//! [`NvmlSource`] reads real GPUs; [`Recorded`] replays polls recorded from them (tests, and `vigil
//! check-gpu --record`'s files).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, RetirementCause, TemperatureSensor,
};
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::Nvml;

use super::reading::*;
use crate::status::State;

/// Something that can read every GPU once.
pub trait GpuSource: Send {
    /// Reads every GPU once.
    fn poll(&mut self) -> Poll;
}

/// Polls recorded earlier, replayed in order (the last one repeats).
pub struct Recorded {
    polls: Vec<Poll>,
    next: usize,
}

impl Recorded {
    /// A source that answers `polls` in turn, then the last one again.
    pub fn new(polls: Vec<Poll>) -> Recorded {
        assert!(!polls.is_empty(), "a recording has at least one poll");
        Recorded { polls, next: 0 }
    }

    /// A recording as `vigil check-gpu --record` writes it: a JSON array of polls.
    pub fn from_json(json: &str) -> serde_json::Result<Recorded> {
        serde_json::from_str(json).map(Recorded::new)
    }
}

impl GpuSource for Recorded {
    fn poll(&mut self) -> Poll {
        let poll = self.polls[self.next.min(self.polls.len() - 1)].clone();
        self.next += 1;
        poll
    }
}

/// The error kinds of [`ErrorKind`] from NVML's errors.
pub(crate) fn kind_of(e: &NvmlError) -> ErrorKind {
    match e {
        NvmlError::NotSupported => ErrorKind::NotSupported,
        NvmlError::NoPermission => ErrorKind::NoPermission,
        NvmlError::GpuLost => ErrorKind::GpuLost,
        NvmlError::Timeout => ErrorKind::Timeout,
        NvmlError::FailedToLoadSymbol(_) | NvmlError::FunctionNotFound => {
            ErrorKind::MissingFunction
        }
        _ => ErrorKind::Other,
    }
}

/// A GPU's memory: NVML's v2 call (R510 and later drivers; it reports reserved memory too), or
/// on an older driver, which lacks it, the v1 call every driver has.
fn memory_info(nvml: &Nvml, d: &nvml_wrapper::Device<'_>) -> Result<Memory, NvmlError> {
    match d.memory_info() {
        Ok(m) => Ok(Memory {
            total: m.total,
            used: m.used,
            free: m.free,
            reserved: (m.version >= 2).then_some(m.reserved),
        }),
        Err(NvmlError::FailedToLoadSymbol(_)) => {
            /// NVML's `nvmlMemory_t`.
            #[repr(C)]
            #[derive(Default)]
            struct MemoryV1 {
                total: u64,
                free: u64,
                used: u64,
            }
            let v1 = nvml_wrapper::error::nvml_sym(nvml.lib().nvmlDeviceGetMemoryInfo.as_ref())?;
            let mut m = MemoryV1::default();
            // SAFETY: the handle is the live device's, and `m` has nvmlMemory_t's layout.
            nvml_wrapper::error::nvml_try(unsafe {
                v1(d.handle(), &mut m as *mut MemoryV1 as *mut _)
            })?;
            Ok(Memory {
                total: m.total,
                used: m.used,
                free: m.free,
                reserved: None,
            })
        }
        Err(e) => Err(e),
    }
}

/// The CUDA version the driver supports: NVML's v2 call, or the v1 call of older drivers.
fn cuda_driver_version(nvml: &Nvml) -> Result<i32, NvmlError> {
    match nvml.sys_cuda_driver_version() {
        Err(NvmlError::FailedToLoadSymbol(_)) => {
            let v1 =
                nvml_wrapper::error::nvml_sym(nvml.lib().nvmlSystemGetCudaDriverVersion.as_ref())?;
            let mut version = 0;
            // SAFETY: v1 writes one int through a valid pointer.
            nvml_wrapper::error::nvml_try(unsafe { v1(&mut version) })?;
            Ok(version)
        }
        answer => answer,
    }
}

/// A reading from an NVML result.
fn r<T>(res: Result<T, NvmlError>) -> Reading<T> {
    res.map_err(|e| kind_of(&e))
}

/// Why NVML cannot be used at all, as the probe's state.
pub(crate) fn init_failure(e: &NvmlError) -> State {
    match e {
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound => State::off(
            "no_library",
            format!("libnvidia-ml.so.1 cannot be loaded ({e}); no NVIDIA driver on this host"),
        ),
        NvmlError::DriverNotLoaded => State::off(
            "no_driver",
            format!("the NVIDIA driver is not loaded ({e})"),
        ),
        NvmlError::NoPermission => State::off("no_permission", e.to_string()),
        _ => State::off("failed", format!("NVML init failed: {e}")),
    }
}

/// Reads real GPUs through libnvidia-ml (loaded at run time).
pub struct NvmlSource {
    nvml: Arc<Nvml>,
    pid: u32,
    xids: mpsc::Receiver<(u32, u64)>,
    /// Set by the XID listener when it cannot listen (see [`GpuPoll::xid_unavailable`]).
    xids_unavailable: Arc<std::sync::Mutex<Option<ErrorKind>>>,
    stop: Arc<AtomicBool>,
}

impl NvmlSource {
    /// Loads NVML and finds the GPUs; the state says why not when there are none.
    pub fn open() -> Result<NvmlSource, State> {
        let nvml = Arc::new(Nvml::init().map_err(|e| init_failure(&e))?);
        match nvml.device_count() {
            Ok(0) => return Err(State::off("no_device", "NVML sees no GPU")),
            Ok(_) => {}
            Err(e) => return Err(State::off("failed", format!("NVML device count: {e}"))),
        }
        let (tx, xids) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let xids_unavailable = Arc::new(std::sync::Mutex::new(None));
        spawn_xid_listener(
            Arc::clone(&nvml),
            tx,
            Arc::clone(&xids_unavailable),
            Arc::clone(&stop),
        );
        Ok(NvmlSource {
            nvml,
            pid: std::process::id(),
            xids,
            xids_unavailable,
            stop,
        })
    }

    fn read_gpu(&self, index: u32) -> GpuPoll {
        let device = self.nvml.device_by_index(index);
        let d = match &device {
            Ok(d) => d,
            Err(e) => return GpuPoll::unreadable(index, kind_of(e)),
        };
        let identity = (|| {
            Ok(Identity {
                uuid: d.uuid()?,
                name: d.name()?,
                pci_bus_id: d.pci_info()?.bus_id,
            })
        })();
        GpuPoll {
            index,
            identity: r(identity),
            memory: r(memory_info(&self.nvml, d)),
            utilization: r(d.utilization_rates().map(|u| Utilization {
                gpu_percent: u.gpu,
                memory_percent: u.memory,
            })),
            power_milliwatts: r(d.power_usage()),
            power_limit_milliwatts: r(d.enforced_power_limit()),
            energy_millijoules: r(d.total_energy_consumption()),
            temperature_celsius: r(d.temperature(TemperatureSensor::Gpu)),
            sm_clock_mhz: r(d.clock_info(Clock::SM)),
            memory_clock_mhz: r(d.clock_info(Clock::Memory)),
            clock_event_reasons: r(d.current_throttle_reasons().map(|b| b.bits())),
            pcie_replays: r(d.pcie_replay_counter()),
            ecc_errors: (|| {
                Ok(Ecc {
                    corrected: d.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)?,
                    uncorrected: d
                        .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)?,
                })
            })()
            .map_err(|e: NvmlError| kind_of(&e)),
            retired_pages: (|| {
                Ok(RetiredPages {
                    multiple_single_bit: d
                        .retired_pages(RetirementCause::MultipleSingleBitEccErrors)?
                        .len() as u64,
                    double_bit: d.retired_pages(RetirementCause::DoubleBitEccError)?.len() as u64,
                })
            })()
            .map_err(|e: NvmlError| kind_of(&e)),
            remapped_rows: remapped_rows(d),
            process_memory_bytes: r(d.running_compute_processes().map(|procs| {
                procs
                    .iter()
                    .filter(|p| p.pid == self.pid)
                    .map(|p| match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => b,
                        UsedGpuMemory::Unavailable => 0,
                    })
                    .sum()
            })),
            xid_events: Vec::new(),
            xid_unavailable: *self
                .xids_unavailable
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        }
    }
}

impl Drop for NvmlSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl GpuSource for NvmlSource {
    fn poll(&mut self) -> Poll {
        let count = self.nvml.device_count().unwrap_or(0);
        let mut gpus: Vec<GpuPoll> = (0..count).map(|i| self.read_gpu(i)).collect();
        while let Ok((index, xid)) = self.xids.try_recv() {
            if let Some(g) = gpus.iter_mut().find(|g| g.index == index) {
                g.xid_events.push(xid);
            }
        }
        Poll {
            driver_version: self.nvml.sys_driver_version().map_err(|e| kind_of(&e)),
            cuda_driver_version: cuda_driver_version(&self.nvml)
                .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10))
                .map_err(|e| kind_of(&e)),
            gpus,
        }
    }
}

impl GpuPoll {
    /// A GPU whose handle could not even be had: every field carries the error.
    pub fn unreadable(index: u32, kind: ErrorKind) -> GpuPoll {
        GpuPoll {
            index,
            identity: Err(kind),
            memory: Err(kind),
            utilization: Err(kind),
            power_milliwatts: Err(kind),
            power_limit_milliwatts: Err(kind),
            energy_millijoules: Err(kind),
            temperature_celsius: Err(kind),
            sm_clock_mhz: Err(kind),
            memory_clock_mhz: Err(kind),
            clock_event_reasons: Err(kind),
            pcie_replays: Err(kind),
            ecc_errors: Err(kind),
            retired_pages: Err(kind),
            remapped_rows: Err(kind),
            process_memory_bytes: Err(kind),
            xid_events: Vec::new(),
            xid_unavailable: None,
        }
    }
}

/// Row remapping (Ampere and later) through NVML's field values (`nvmlDeviceGetRemappedRows`
/// is not wrapped by nvml-wrapper): NVML_FI_DEV_REMAPPED_COR/UNC/PENDING/FAILURE.
fn remapped_rows(d: &nvml_wrapper::Device<'_>) -> Reading<RemappedRows> {
    const IDS: [u32; 4] = [142, 143, 144, 145];
    let ids = IDS.map(FieldId);
    let values = d.field_values_for(&ids).map_err(|e| kind_of(&e))?;
    let mut out = [0u64; 4];
    for (slot, v) in out.iter_mut().zip(values) {
        let sample = v.map_err(|e| kind_of(&e))?;
        *slot = match sample.value.map_err(|e| kind_of(&e))? {
            SampleValue::U32(x) => u64::from(x),
            SampleValue::U64(x) => x,
            SampleValue::I64(x) => x.max(0) as u64,
            SampleValue::F64(x) => x.max(0.0) as u64,
        };
    }
    Ok(RemappedRows {
        correctable: out[0],
        uncorrectable: out[1],
        pending: out[2] != 0,
        failed: out[3] != 0,
    })
}

/// Waits for critical XID events on every GPU on its own thread (NVML's wait blocks) and sends
/// `(gpu index, xid)` to the poller, which counts them. When it cannot listen, it says why in
/// `unavailable` (and the log) and ends.
fn spawn_xid_listener(
    nvml: Arc<Nvml>,
    tx: mpsc::Sender<(u32, u64)>,
    unavailable: Arc<std::sync::Mutex<Option<ErrorKind>>>,
    stop: Arc<AtomicBool>,
) {
    let give_up = move |e: &NvmlError| {
        *unavailable.lock().unwrap_or_else(|p| p.into_inner()) = Some(kind_of(e));
    };
    let spawned = std::thread::Builder::new()
        .name("vigil-nvml-xid".into())
        .spawn(move || {
            let mut set = match nvml.create_event_set() {
                Ok(set) => set,
                Err(e) => {
                    tracing::warn!("NVML event sets unavailable ({e}): XID errors are not counted");
                    give_up(&e);
                    return;
                }
            };
            let count = nvml.device_count().unwrap_or(0);
            for i in 0..count {
                let Ok(d) = nvml.device_by_index(i) else {
                    continue;
                };
                set = match d.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(gpu = i, "XID events unavailable: {}", e.error);
                        match nvml.create_event_set() {
                            Ok(s) => s,
                            Err(_) => return,
                        }
                    }
                };
            }
            while !stop.load(Ordering::Relaxed) {
                match set.wait(1000) {
                    Ok(event) => {
                        let index = event.device.index().unwrap_or(u32::MAX);
                        let xid = match event.event_data {
                            Some(XidError::Value(x)) => x,
                            _ => 0,
                        };
                        if tx.send((index, xid)).is_err() {
                            return;
                        }
                    }
                    Err(NvmlError::Timeout) => {}
                    Err(e) => {
                        tracing::warn!(
                            "waiting for NVML events failed: {e}; XIDs no longer counted"
                        );
                        give_up(&e);
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the XID listener: {e}");
    }
}

/// Peak DRAM bandwidth of GPU `index` in bytes/s, from NVML's maximum memory clock and bus
/// width (double data rate), for the CUDA backend's benchmark where the driver no longer
/// reports the memory clock. `None` without NVML or the readings.
pub fn peak_memory_bandwidth(index: u32) -> Option<f64> {
    use nvml_wrapper::enum_wrappers::device::Clock;
    let nvml = Nvml::init().ok()?;
    let device = nvml.device_by_index(index).ok()?;
    let mhz = device.max_clock_info(Clock::Memory).ok()?;
    let bits = device.memory_bus_width().ok()?;
    (mhz > 0 && bits > 0).then(|| 2.0 * f64::from(mhz) * 1e6 * f64::from(bits) / 8.0)
}
