//! A simulated NVML answering from a node profile.
//!
//! A simulated NVML: the functions Vigil calls through nvml-wrapper, as `libnvidia-ml.so.1`'s C
//! functions, answering from a profile of a node (`VIGIL_NVML_PROFILE`, a JSON file; see
//! `profiles/`). Each GPU has its identity, memory, utilization, power, limits, clocks,
//! temperatures, ECC, retired-page and remapped-row counters, and per field the NVML error it
//! answers instead (`errors`). Values move with time since `nvmlInit`: energy grows with the
//! power drawn, utilization can follow a pattern (one value a second); `events` at given
//! seconds deliver an XID to event sets, lose the GPU (every call then answers
//! `GPU_IS_LOST`) or set clock event reasons.

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde::Deserialize;

pub(crate) type Return = c_uint;
pub(crate) const SUCCESS: Return = 0;
pub(crate) const UNINITIALIZED: Return = 1;
pub(crate) const INVALID_ARGUMENT: Return = 2;
pub(crate) const NOT_SUPPORTED: Return = 3;
pub(crate) const NO_PERMISSION: Return = 4;
pub(crate) const NOT_FOUND: Return = 6;
pub(crate) const INSUFFICIENT_SIZE: Return = 7;
pub(crate) const TIMEOUT: Return = 10;
pub(crate) const GPU_IS_LOST: Return = 15;
pub(crate) const UNKNOWN: Return = 999;

/// One scheduled happening, at `at_s` seconds after `nvmlInit`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Event {
    pub at_s: f64,
    /// A critical XID error delivered to event sets.
    #[serde(default)]
    pub xid: Option<u64>,
    /// The GPU falls off the bus: every call answers GPU_IS_LOST from then on.
    #[serde(default)]
    pub lost: bool,
    /// The clock event (throttle) reasons from then on.
    #[serde(default)]
    pub clock_event_reasons: Option<u64>,
}

/// One GPU of a profile, in NVML's units.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Gpu {
    pub name: String,
    pub uuid: String,
    pub pci_bus_id: String,
    pub memory_total: u64,
    pub memory_used: u64,
    pub memory_reserved: u64,
    pub utilization_gpu: u32,
    pub utilization_memory: u32,
    /// Utilization of each second in turn, repeating (instead of `utilization_gpu`).
    #[serde(default)]
    pub utilization_pattern: Vec<u32>,
    pub power_mw: u32,
    pub power_limit_mw: u32,
    /// Energy at `nvmlInit`; it grows by `power_mw` each second.
    pub energy_mj: u64,
    pub temperature_c: u32,
    pub sm_clock_mhz: u32,
    pub memory_clock_mhz: u32,
    pub max_memory_clock_mhz: u32,
    pub memory_bus_width: u32,
    pub clock_event_reasons: u64,
    pub pcie_replays: u32,
    pub ecc_corrected: u64,
    pub ecc_uncorrected: u64,
    pub retired_pages_sbe: u32,
    pub retired_pages_dbe: u32,
    pub remapped_correctable: u64,
    pub remapped_uncorrectable: u64,
    pub remap_pending: bool,
    pub remap_failed: bool,
    /// Device memory of the calling process (one compute process, the caller).
    pub process_memory: u64,
    /// Field -> the NVML error it answers instead: fields are `identity`, `memory`,
    /// `utilization`, `power`, `power_limit`, `energy`, `temperature`, `clocks`,
    /// `clock_event_reasons`, `pcie_replays`, `ecc`, `retired_pages`, `remapped_rows`,
    /// `processes`, `events`; errors are NVML's names (`NOT_SUPPORTED`, `NO_PERMISSION`,
    /// `GPU_IS_LOST`, `TIMEOUT`, `UNKNOWN`).
    #[serde(default)]
    pub errors: HashMap<String, String>,
    #[serde(default)]
    pub events: Vec<Event>,
}

/// A node: its driver and its GPUs.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Profile {
    pub driver_version: String,
    /// As NVML reports it: 12040 is CUDA 12.4.
    pub cuda_driver_version: i32,
    pub gpus: Vec<Gpu>,
}

struct Node {
    profile: Profile,
    started: Instant,
}

static NODE: OnceLock<Result<Node, String>> = OnceLock::new();

fn node() -> Result<&'static Node, Return> {
    match NODE.get() {
        Some(Ok(node)) => Ok(node),
        _ => Err(UNINITIALIZED),
    }
}

fn seconds(node: &Node) -> f64 {
    node.started.elapsed().as_secs_f64()
}

fn error_code(name: &str) -> Return {
    match name {
        "NOT_SUPPORTED" => NOT_SUPPORTED,
        "NO_PERMISSION" => NO_PERMISSION,
        "GPU_IS_LOST" => GPU_IS_LOST,
        "TIMEOUT" => TIMEOUT,
        _ => UNKNOWN,
    }
}

/// GPU `index` as the profile has it now, or the error a call about `field` answers.
fn gpu(index: usize, field: &str) -> Result<(&'static Gpu, f64), Return> {
    let node = node()?;
    let g = node.profile.gpus.get(index).ok_or(INVALID_ARGUMENT)?;
    let t = seconds(node);
    if g.events.iter().any(|e| e.lost && e.at_s <= t) {
        return Err(GPU_IS_LOST);
    }
    if let Some(e) = g.errors.get(field) {
        return Err(error_code(e));
    }
    Ok((g, t))
}

/// The device handle of GPU `index` is `index + 1` (never null).
fn index_of(device: *mut c_void) -> usize {
    (device as usize).wrapping_sub(1)
}

macro_rules! answer {
    ($device:expr, $field:literal, |$g:ident, $t:ident| $body:block) => {
        match gpu(index_of($device), $field) {
            Ok(($g, $t)) => {
                let _ = $t;
                $body;
                SUCCESS
            }
            Err(e) => e,
        }
    };
}

unsafe fn write_str(out: *mut c_char, len: c_uint, s: &str) -> Return {
    if (len as usize) < s.len() + 1 {
        return INSUFFICIENT_SIZE;
    }
    std::ptr::copy_nonoverlapping(s.as_ptr(), out as *mut u8, s.len());
    *out.add(s.len()) = 0;
    SUCCESS
}

#[no_mangle]
pub(crate) extern "C" fn nvmlInit_v2() -> Return {
    let loaded = NODE.get_or_init(|| {
        let path = std::env::var("VIGIL_NVML_PROFILE")
            .map_err(|_| "VIGIL_NVML_PROFILE names no profile".to_owned())?;
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        let profile = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
        Ok(Node {
            profile,
            started: Instant::now(),
        })
    });
    match loaded {
        Ok(_) => SUCCESS,
        Err(why) => {
            eprintln!("simulated NVML: {why}");
            UNKNOWN
        }
    }
}

#[no_mangle]
pub(crate) extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Return {
    nvmlInit_v2()
}

#[no_mangle]
pub(crate) extern "C" fn nvmlShutdown() -> Return {
    SUCCESS
}

#[no_mangle]
pub(crate) extern "C" fn nvmlErrorString(result: Return) -> *const c_char {
    match result {
        SUCCESS => c"Success",
        UNINITIALIZED => c"Uninitialized",
        INVALID_ARGUMENT => c"Invalid Argument",
        NOT_SUPPORTED => c"Not Supported",
        NO_PERMISSION => c"Insufficient Permissions",
        NOT_FOUND => c"Not Found",
        INSUFFICIENT_SIZE => c"Insufficient Size",
        TIMEOUT => c"Timeout",
        GPU_IS_LOST => c"GPU is lost",
        _ => c"Unknown Error",
    }
    .as_ptr()
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlSystemGetDriverVersion(
    out: *mut c_char,
    len: c_uint,
) -> Return {
    match node() {
        Ok(n) => write_str(out, len, &n.profile.driver_version),
        Err(e) => e,
    }
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) -> Return {
    match node() {
        Ok(n) => {
            *version = n.profile.cuda_driver_version;
            SUCCESS
        }
        Err(e) => e,
    }
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(version: *mut c_int) -> Return {
    nvmlSystemGetCudaDriverVersion_v2(version)
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Return {
    match node() {
        Ok(n) => {
            *count = n.profile.gpus.len() as c_uint;
            SUCCESS
        }
        Err(e) => e,
    }
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut *mut c_void,
) -> Return {
    match gpu(index as usize, "identity") {
        // A handle is had even for a GPU whose identity fails; not for a lost one.
        Ok(_) | Err(NOT_SUPPORTED | NO_PERMISSION | TIMEOUT | UNKNOWN) => {
            *device = (index as usize + 1) as *mut c_void;
            SUCCESS
        }
        Err(e) => e,
    }
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetIndex(
    device: *mut c_void,
    index: *mut c_uint,
) -> Return {
    *index = index_of(device) as c_uint;
    SUCCESS
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetUUID(
    device: *mut c_void,
    out: *mut c_char,
    len: c_uint,
) -> Return {
    match gpu(index_of(device), "identity") {
        Ok((g, _)) => write_str(out, len, &g.uuid),
        Err(e) => e,
    }
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetName(
    device: *mut c_void,
    out: *mut c_char,
    len: c_uint,
) -> Return {
    match gpu(index_of(device), "identity") {
        Ok((g, _)) => write_str(out, len, &g.name),
        Err(e) => e,
    }
}

#[repr(C)]
pub(crate) struct PciInfo {
    bus_id_legacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
    bus_id: [c_char; 32],
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: *mut c_void,
    pci: *mut PciInfo,
) -> Return {
    answer!(device, "identity", |g, t| {
        let p = &mut *pci;
        p.bus_id = [0; 32];
        p.bus_id_legacy = [0; 16];
        for (i, b) in g.pci_bus_id.bytes().take(31).enumerate() {
            p.bus_id[i] = b as c_char;
        }
        p.pci_device_id = 0x2330_10de;
    })
}

#[repr(C)]
pub(crate) struct MemoryV2 {
    version: c_uint,
    total: c_ulonglong,
    reserved: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: *mut c_void,
    memory: *mut MemoryV2,
) -> Return {
    answer!(device, "memory", |g, t| {
        let m = &mut *memory;
        m.total = g.memory_total;
        m.reserved = g.memory_reserved;
        m.used = g.memory_used;
        m.free = g
            .memory_total
            .saturating_sub(g.memory_used)
            .saturating_sub(g.memory_reserved);
    })
}

/// NVML's `nvmlMemory_t`, of the v1 call older drivers have (no reserved memory: it counts as
/// used, as those drivers report it).
#[repr(C)]
pub(crate) struct MemoryV1 {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: *mut c_void,
    memory: *mut MemoryV1,
) -> Return {
    answer!(device, "memory", |g, t| {
        let m = &mut *memory;
        m.total = g.memory_total;
        m.used = g.memory_used.saturating_add(g.memory_reserved);
        m.free = g.memory_total.saturating_sub(m.used);
    })
}

#[repr(C)]
pub(crate) struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: *mut c_void,
    out: *mut Utilization,
) -> Return {
    answer!(device, "utilization", |g, t| {
        (*out).gpu = if g.utilization_pattern.is_empty() {
            g.utilization_gpu
        } else {
            g.utilization_pattern[t as usize % g.utilization_pattern.len()]
        };
        (*out).memory = g.utilization_memory;
    })
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetPowerUsage(
    device: *mut c_void,
    mw: *mut c_uint,
) -> Return {
    answer!(device, "power", |g, t| { *mw = g.power_mw })
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetEnforcedPowerLimit(
    device: *mut c_void,
    mw: *mut c_uint,
) -> Return {
    answer!(device, "power_limit", |g, t| { *mw = g.power_limit_mw })
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    device: *mut c_void,
    mj: *mut c_ulonglong,
) -> Return {
    // Power (mW) for t seconds is t * power millijoules.
    answer!(device, "energy", |g, t| {
        *mj = g.energy_mj + (t * f64::from(g.power_mw)) as u64
    })
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: *mut c_void,
    sensor: c_int,
    celsius: *mut c_uint,
) -> Return {
    if sensor != 0 {
        return NOT_SUPPORTED;
    }
    answer!(device, "temperature", |g, t| { *celsius = g.temperature_c })
}

/// NVML_CLOCK_GRAPHICS 0, SM 1, MEM 2.
#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetClockInfo(
    device: *mut c_void,
    clock: c_int,
    mhz: *mut c_uint,
) -> Return {
    answer!(device, "clocks", |g, t| {
        *mhz = match clock {
            0 | 1 => g.sm_clock_mhz,
            2 => g.memory_clock_mhz,
            _ => return NOT_SUPPORTED,
        }
    })
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetMaxClockInfo(
    device: *mut c_void,
    clock: c_int,
    mhz: *mut c_uint,
) -> Return {
    answer!(device, "clocks", |g, t| {
        *mhz = match clock {
            2 => g.max_memory_clock_mhz,
            _ => g.sm_clock_mhz,
        }
    })
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetMemoryBusWidth(
    device: *mut c_void,
    bits: *mut c_uint,
) -> Return {
    answer!(device, "clocks", |g, t| { *bits = g.memory_bus_width })
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetCurrentClocksThrottleReasons(
    device: *mut c_void,
    reasons: *mut c_ulonglong,
) -> Return {
    answer!(device, "clock_event_reasons", |g, t| {
        *reasons = g
            .events
            .iter()
            .filter(|e| e.at_s <= t)
            .filter_map(|e| e.clock_event_reasons)
            .next_back()
            .unwrap_or(g.clock_event_reasons)
    })
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetPcieReplayCounter(
    device: *mut c_void,
    count: *mut c_uint,
) -> Return {
    answer!(device, "pcie_replays", |g, t| { *count = g.pcie_replays })
}

/// NVML_MEMORY_ERROR_TYPE_CORRECTED 0, UNCORRECTED 1.
#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    device: *mut c_void,
    kind: c_int,
    _counter: c_int,
    count: *mut c_ulonglong,
) -> Return {
    answer!(device, "ecc", |g, t| {
        *count = if kind == 0 {
            g.ecc_corrected
        } else {
            g.ecc_uncorrected
        }
    })
}

/// NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS 0, DOUBLE_BIT_ECC_ERROR 1.
#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetRetiredPages_v2(
    device: *mut c_void,
    cause: c_int,
    count: *mut c_uint,
    addresses: *mut c_ulonglong,
    timestamps: *mut c_ulonglong,
) -> Return {
    match gpu(index_of(device), "retired_pages") {
        Ok((g, _)) => {
            let n = if cause == 0 {
                g.retired_pages_sbe
            } else {
                g.retired_pages_dbe
            };
            let room = *count;
            *count = n;
            if room < n {
                return if room == 0 && addresses.is_null() {
                    SUCCESS
                } else {
                    INSUFFICIENT_SIZE
                };
            }
            for i in 0..n as usize {
                if !addresses.is_null() {
                    *addresses.add(i) = 0x1000 * (i as u64 + 1);
                }
                if !timestamps.is_null() {
                    *timestamps.add(i) = 0;
                }
            }
            SUCCESS
        }
        Err(e) => e,
    }
}

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetRetiredPages(
    device: *mut c_void,
    cause: c_int,
    count: *mut c_uint,
    addresses: *mut c_ulonglong,
) -> Return {
    nvmlDeviceGetRetiredPages_v2(device, cause, count, addresses, std::ptr::null_mut())
}

#[repr(C)]
pub(crate) struct FieldValue {
    field_id: c_uint,
    scope_id: c_uint,
    timestamp: i64,
    latency_usec: i64,
    value_type: c_uint,
    nvml_return: Return,
    value: u64,
}

/// Row remapping through field values: NVML_FI_DEV_REMAPPED_COR 142, UNC 143, PENDING 144,
/// FAILURE 145, each an unsigned long long.
#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetFieldValues(
    device: *mut c_void,
    count: c_int,
    values: *mut FieldValue,
) -> Return {
    let read = gpu(index_of(device), "remapped_rows");
    if let Err(GPU_IS_LOST) = read {
        return GPU_IS_LOST;
    }
    for i in 0..count.max(0) as usize {
        let v = &mut *values.add(i);
        v.value_type = 3;
        match read {
            Ok((g, _)) => {
                v.nvml_return = SUCCESS;
                v.value = match v.field_id {
                    142 => g.remapped_correctable,
                    143 => g.remapped_uncorrectable,
                    144 => u64::from(g.remap_pending),
                    145 => u64::from(g.remap_failed),
                    _ => {
                        v.nvml_return = NOT_SUPPORTED;
                        0
                    }
                };
            }
            Err(e) => v.nvml_return = e,
        }
    }
    SUCCESS
}

#[repr(C)]
pub(crate) struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// One compute process: the caller, with the profile's `process_memory`.
#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: *mut c_void,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> Return {
    match gpu(index_of(device), "processes") {
        Ok((g, _)) => {
            let room = *count;
            *count = 1;
            if room < 1 || infos.is_null() {
                return INSUFFICIENT_SIZE;
            }
            *infos = ProcessInfo {
                pid: std::process::id(),
                used_gpu_memory: g.process_memory,
                gpu_instance_id: u32::MAX,
                compute_instance_id: u32::MAX,
            };
            SUCCESS
        }
        Err(e) => e,
    }
}

/// An event set: the GPUs registered, and the XIDs already delivered.
struct EventSet {
    gpus: Vec<usize>,
    delivered: Vec<(usize, usize)>,
}

static EVENT_SETS: Mutex<Vec<Option<EventSet>>> = Mutex::new(Vec::new());

#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlEventSetCreate(set: *mut *mut c_void) -> Return {
    if let Err(e) = node() {
        return e;
    }
    let mut sets = EVENT_SETS.lock().unwrap();
    sets.push(Some(EventSet {
        gpus: Vec::new(),
        delivered: Vec::new(),
    }));
    *set = sets.len() as *mut c_void;
    SUCCESS
}

#[no_mangle]
pub(crate) extern "C" fn nvmlEventSetFree(set: *mut c_void) -> Return {
    if let Some(slot) = EVENT_SETS
        .lock()
        .unwrap()
        .get_mut((set as usize).wrapping_sub(1))
    {
        *slot = None;
    }
    SUCCESS
}

/// nvmlEventTypeXidCriticalError.
const XID_CRITICAL: u64 = 0x8;

#[no_mangle]
pub(crate) extern "C" fn nvmlDeviceRegisterEvents(
    device: *mut c_void,
    types: c_ulonglong,
    set: *mut c_void,
) -> Return {
    let index = index_of(device);
    if let Err(e) = gpu(index, "events") {
        return e;
    }
    if types & !XID_CRITICAL != 0 {
        return NOT_SUPPORTED;
    }
    match EVENT_SETS
        .lock()
        .unwrap()
        .get_mut((set as usize).wrapping_sub(1))
    {
        Some(Some(s)) => {
            s.gpus.push(index);
            SUCCESS
        }
        _ => INVALID_ARGUMENT,
    }
}

#[repr(C)]
pub(crate) struct EventData {
    device: *mut c_void,
    event_type: c_ulonglong,
    event_data: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// The next due XID of the set's GPUs, waiting up to `timeout_ms` for one.
#[no_mangle]
pub(crate) unsafe extern "C" fn nvmlEventSetWait_v2(
    set: *mut c_void,
    data: *mut EventData,
    timeout_ms: c_uint,
) -> Return {
    let Ok(node) = node() else {
        return UNINITIALIZED;
    };
    let deadline = Instant::now() + std::time::Duration::from_millis(timeout_ms.into());
    loop {
        let t = seconds(node);
        {
            let mut sets = EVENT_SETS.lock().unwrap();
            let Some(Some(s)) = sets.get_mut((set as usize).wrapping_sub(1)) else {
                return INVALID_ARGUMENT;
            };
            let due = s.gpus.iter().find_map(|&g| {
                node.profile.gpus[g]
                    .events
                    .iter()
                    .enumerate()
                    .find(|(i, e)| {
                        e.xid.is_some() && e.at_s <= t && !s.delivered.contains(&(g, *i))
                    })
                    .map(|(i, e)| (g, i, e.xid.unwrap()))
            });
            if let Some((g, i, xid)) = due {
                s.delivered.push((g, i));
                *data = EventData {
                    device: (g + 1) as *mut c_void,
                    event_type: XID_CRITICAL,
                    event_data: xid,
                    gpu_instance_id: u32::MAX,
                    compute_instance_id: u32::MAX,
                };
                return SUCCESS;
            }
        }
        if Instant::now() >= deadline {
            return TIMEOUT;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
