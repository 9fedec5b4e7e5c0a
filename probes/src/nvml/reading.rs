//! One poll of the GPUs as plain, serializable data: NVML's values and errors.
//!
//! What one poll of the GPUs read, as plain data: the values NVML returned, in NVML's units, and
//! the errors it returned in their place. Serializable, so a poll of a real GPU can be recorded
//! (`vigil check-gpu --record FILE`) and replayed in tests without one.

use serde::{Deserialize, Serialize};

/// One field's reading: the value, or the kind of error NVML returned for it.
pub(crate) type Reading<T> = Result<T, ErrorKind>;

/// NVML's errors, reduced to the kinds an operator acts on differently (the values of
/// `vigil_gpu_read_errors_total`'s `error` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The GPU or driver does not have this field (`NVML_ERROR_NOT_SUPPORTED`).
    NotSupported,
    /// Needs root or a capability Vigil lacks (`NVML_ERROR_NO_PERMISSION`).
    NoPermission,
    /// The GPU fell off the bus (`NVML_ERROR_GPU_IS_LOST`): it needs a reset.
    GpuLost,
    /// NVML did not answer in time.
    Timeout,
    /// The driver is older than the call (a symbol missing from libnvidia-ml).
    MissingFunction,
    /// Any other NVML error.
    Other,
}

impl ErrorKind {
    /// The value of the series' `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::NotSupported => "not_supported",
            ErrorKind::NoPermission => "no_permission",
            ErrorKind::GpuLost => "gpu_lost",
            ErrorKind::Timeout => "timeout",
            ErrorKind::MissingFunction => "missing_function",
            ErrorKind::Other => "other",
        }
    }
}

/// Every GPU, read once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Poll {
    pub driver_version: Reading<String>,
    /// e.g. `"12.4"`.
    pub cuda_driver_version: Reading<String>,
    pub gpus: Vec<GpuPoll>,
}

/// The stable identity of a GPU: its series' labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub uuid: String,
    /// The product name, e.g. `"NVIDIA H100 80GB HBM3"`.
    pub name: String,
    /// e.g. `"00000000:18:00.0"`.
    pub pci_bus_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub total: u64,
    pub used: u64,
    pub free: u64,
    /// Absent on drivers before `nvmlDeviceGetMemoryInfo_v2`.
    pub reserved: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Utilization {
    /// Percent of the sample period a kernel ran.
    pub gpu_percent: u32,
    /// Percent of the sample period device memory was read or written.
    pub memory_percent: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ecc {
    pub corrected: u64,
    pub uncorrected: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetiredPages {
    pub multiple_single_bit: u64,
    pub double_bit: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RemappedRows {
    pub correctable: u64,
    pub uncorrectable: u64,
    pub pending: bool,
    pub failed: bool,
}

/// One GPU, read once, in NVML's units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuPoll {
    /// NVML's index (the `gpu` label).
    pub index: u32,
    /// Without it the GPU has no labels: its series are dropped and `vigil_gpu_up` cannot be
    /// set either; the error is counted under the index alone in the log.
    pub identity: Reading<Identity>,
    pub memory: Reading<Memory>,
    pub utilization: Reading<Utilization>,
    pub power_milliwatts: Reading<u32>,
    pub power_limit_milliwatts: Reading<u32>,
    pub energy_millijoules: Reading<u64>,
    pub temperature_celsius: Reading<u32>,
    pub sm_clock_mhz: Reading<u32>,
    pub memory_clock_mhz: Reading<u32>,
    /// NVML's clock-event (throttle) reason bits.
    pub clock_event_reasons: Reading<u64>,
    pub pcie_replays: Reading<u32>,
    pub ecc_errors: Reading<Ecc>,
    pub retired_pages: Reading<RetiredPages>,
    pub remapped_rows: Reading<RemappedRows>,
    /// GPU memory of this process on this GPU (0 if it has none there).
    pub process_memory_bytes: Reading<u64>,
    /// Critical XID errors reported since the previous poll, in order.
    #[serde(default)]
    pub xid_events: Vec<u64>,
    /// Why XID events cannot be listened for (the driver lacks event sets or their wait), if
    /// so: counted as a read error of the `xid_events` field at every poll, so a node whose
    /// XIDs go unseen shows it on `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xid_unavailable: Option<ErrorKind>,
}
