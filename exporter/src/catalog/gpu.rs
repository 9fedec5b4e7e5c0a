//! GPU telemetry read through NVML by the probes' poller, one series per GPU.
//!
//! Names follow Prometheus conventions with base units (`_bytes`, `_watts`, `_joules_total`,
//! `_celsius`, `_hertz`, `_ratio`), unlike dcgm-exporter's verbatim DCGM field names. The GPU's
//! product name is the label `gpu_model`: `model_name` is vLLM's label for the served model.
//!
//! A field a GPU cannot read (not supported, no permission, GPU lost) is absent, never zero or
//! stale, and `vigil_gpu_read_errors_total` counts why; one failing GPU never blanks the others.

use super::{Kind, Label, MetricDef};

use Kind::*;

/// `gpu` (index), `uuid`, `gpu_model`, `pci_bus_id`: the identity of one GPU.
pub const GPU: &[Label] = &[
    Label::Device("gpu"),
    Label::Device("uuid"),
    Label::Device("gpu_model"),
    Label::Device("pci_bus_id"),
];

/// The readings a poll takes, as the values of `vigil_gpu_read_errors_total`'s `field`.
pub const FIELDS: &[&str] = &[
    "device",
    "memory",
    "utilization",
    "power",
    "power_limit",
    "energy",
    "temperature",
    "sm_clock",
    "memory_clock",
    "clock_events",
    "pcie_replays",
    "ecc_errors",
    "retired_pages",
    "remapped_rows",
    "processes",
    "xid_events",
    "driver_version",
];

/// NVML's error kinds, as the values of `vigil_gpu_read_errors_total`'s `error`.
pub const ERRORS: &[&str] = &[
    "not_supported",
    "no_permission",
    "gpu_lost",
    "timeout",
    "missing_function",
    "other",
];

/// Clock-event (throttle) reasons NVML reports, as the values of `reason`.
pub const CLOCK_EVENT_REASONS: &[&str] = &[
    "gpu_idle",
    "applications_clocks_setting",
    "sw_power_cap",
    "hw_slowdown",
    "sync_boost",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
    "display_clock_setting",
];

const fn gpu_with(labels: &'static [Label; 5]) -> &'static [Label] {
    labels
}

/// `vigil_gpu_up`: 1 if the last poll of this GPU read its identity and at least one field, else 0.
pub static GPU_UP: MetricDef = MetricDef::new(
    "vigil_gpu_up",
    Gauge,
    "1 if the last poll of this GPU read its identity and at least one field, else 0.",
    GPU,
);

/// `vigil_gpu_read_errors`: Polls in which a field of this GPU could not be read, by field and NVML
/// error kind.
pub static READ_ERRORS: MetricDef = MetricDef::new(
    "vigil_gpu_read_errors",
    Counter,
    "Polls in which a field of this GPU could not be read, by field and NVML error kind.",
    &[
        Label::Device("gpu"),
        Label::Device("uuid"),
        Label::Device("gpu_model"),
        Label::Device("pci_bus_id"),
        Label::OneOf {
            name: "field",
            values: FIELDS,
        },
        Label::OneOf {
            name: "error",
            values: ERRORS,
        },
    ],
);

/// `vigil_gpu_driver_info`: The NVIDIA driver and the CUDA version it supports (value 1).
pub static DRIVER_INFO: MetricDef = MetricDef::new(
    "vigil_gpu_driver_info",
    Gauge,
    "The NVIDIA driver and the CUDA version it supports (value 1).",
    &[
        Label::Device("driver_version"),
        Label::Device("cuda_driver_version"),
    ],
);

/// `vigil_gpu_memory_used_bytes`: GPU memory in use, all processes (bytes).
pub static MEMORY_USED: MetricDef = MetricDef::new(
    "vigil_gpu_memory_used_bytes",
    Gauge,
    "GPU memory in use, all processes (bytes).",
    GPU,
);

/// `vigil_gpu_memory_free_bytes`: GPU memory free (bytes).
pub static MEMORY_FREE: MetricDef = MetricDef::new(
    "vigil_gpu_memory_free_bytes",
    Gauge,
    "GPU memory free (bytes).",
    GPU,
);

/// `vigil_gpu_memory_total_bytes`: GPU memory installed (bytes).
pub static MEMORY_TOTAL: MetricDef = MetricDef::new(
    "vigil_gpu_memory_total_bytes",
    Gauge,
    "GPU memory installed (bytes).",
    GPU,
);

/// `vigil_gpu_memory_reserved_bytes`: GPU memory reserved by the driver and firmware (bytes).
pub static MEMORY_RESERVED: MetricDef = MetricDef::new(
    "vigil_gpu_memory_reserved_bytes",
    Gauge,
    "GPU memory reserved by the driver and firmware (bytes).",
    GPU,
);

/// `vigil_gpu_process_memory_used_bytes`: GPU memory used by this Vigil process (bytes).
pub static PROCESS_MEMORY: MetricDef = MetricDef::new(
    "vigil_gpu_process_memory_used_bytes",
    Gauge,
    "GPU memory used by this Vigil process (bytes).",
    GPU,
);

/// `vigil_gpu_utilization_ratio`: Fraction of the last sample period in which a kernel ran on the
/// GPU (0-1).
pub static UTILIZATION: MetricDef = MetricDef::new(
    "vigil_gpu_utilization_ratio",
    Gauge,
    "Fraction of the last sample period in which a kernel ran on the GPU (0-1).",
    GPU,
);

/// `vigil_gpu_memory_copy_utilization_ratio`: Fraction of the last sample period in which device
/// memory was read or written (0-1).
pub static MEMORY_UTILIZATION: MetricDef = MetricDef::new(
    "vigil_gpu_memory_copy_utilization_ratio",
    Gauge,
    "Fraction of the last sample period in which device memory was read or written (0-1).",
    GPU,
);

/// `vigil_gpu_power_watts`: Power draw of the GPU board (watts).
pub static POWER: MetricDef = MetricDef::new(
    "vigil_gpu_power_watts",
    Gauge,
    "Power draw of the GPU board (watts).",
    GPU,
);

/// `vigil_gpu_power_limit_watts`: Power limit the driver enforces (watts).
pub static POWER_LIMIT: MetricDef = MetricDef::new(
    "vigil_gpu_power_limit_watts",
    Gauge,
    "Power limit the driver enforces (watts).",
    GPU,
);

/// `vigil_gpu_energy_joules`: Energy the GPU consumed since the driver was loaded (joules).
pub static ENERGY: MetricDef = MetricDef::new(
    "vigil_gpu_energy_joules",
    Counter,
    "Energy the GPU consumed since the driver was loaded (joules).",
    GPU,
);

/// `vigil_gpu_temperature_celsius`: GPU core temperature (degrees Celsius).
pub static TEMPERATURE: MetricDef = MetricDef::new(
    "vigil_gpu_temperature_celsius",
    Gauge,
    "GPU core temperature (degrees Celsius).",
    GPU,
);

/// `vigil_gpu_sm_clock_hertz`: Current SM clock (hertz).
pub static SM_CLOCK: MetricDef = MetricDef::new(
    "vigil_gpu_sm_clock_hertz",
    Gauge,
    "Current SM clock (hertz).",
    GPU,
);

/// `vigil_gpu_memory_clock_hertz`: Current memory clock (hertz).
pub static MEMORY_CLOCK: MetricDef = MetricDef::new(
    "vigil_gpu_memory_clock_hertz",
    Gauge,
    "Current memory clock (hertz).",
    GPU,
);

/// `vigil_gpu_clock_event_active`: 1 while the reason holds the GPU's clocks down (throttling),
/// else 0.
pub static CLOCK_EVENT: MetricDef = MetricDef::new(
    "vigil_gpu_clock_event_active",
    Gauge,
    "1 while the reason holds the GPU's clocks down (throttling), else 0.",
    gpu_with(&[
        Label::Device("gpu"),
        Label::Device("uuid"),
        Label::Device("gpu_model"),
        Label::Device("pci_bus_id"),
        Label::OneOf {
            name: "reason",
            values: CLOCK_EVENT_REASONS,
        },
    ]),
);

/// `vigil_gpu_pcie_replays`: PCIe replays (retransmissions after link errors).
pub static PCIE_REPLAYS: MetricDef = MetricDef::new(
    "vigil_gpu_pcie_replays",
    Counter,
    "PCIe replays (retransmissions after link errors).",
    GPU,
);

/// `vigil_gpu_ecc_errors`: ECC memory errors since the driver was loaded (volatile counters),
/// corrected or uncorrected.
pub static ECC_ERRORS: MetricDef = MetricDef::new(
    "vigil_gpu_ecc_errors",
    Counter,
    "ECC memory errors since the driver was loaded (volatile counters), corrected or uncorrected.",
    gpu_with(&[
        Label::Device("gpu"),
        Label::Device("uuid"),
        Label::Device("gpu_model"),
        Label::Device("pci_bus_id"),
        Label::OneOf {
            name: "error_type",
            values: &["corrected", "uncorrected"],
        },
    ]),
);

/// `vigil_gpu_retired_pages`: Memory pages retired for ECC errors (GPUs before Ampere), by cause.
pub static RETIRED_PAGES: MetricDef = MetricDef::new(
    "vigil_gpu_retired_pages",
    Counter,
    "Memory pages retired for ECC errors (GPUs before Ampere), by cause.",
    gpu_with(&[
        Label::Device("gpu"),
        Label::Device("uuid"),
        Label::Device("gpu_model"),
        Label::Device("pci_bus_id"),
        Label::OneOf {
            name: "cause",
            values: &["multiple_single_bit_ecc", "double_bit_ecc"],
        },
    ]),
);

/// `vigil_gpu_remapped_rows`: Memory rows remapped for ECC errors (Ampere and later), correctable
/// or uncorrectable.
pub static REMAPPED_ROWS: MetricDef = MetricDef::new(
    "vigil_gpu_remapped_rows",
    Counter,
    "Memory rows remapped for ECC errors (Ampere and later), correctable or uncorrectable.",
    gpu_with(&[
        Label::Device("gpu"),
        Label::Device("uuid"),
        Label::Device("gpu_model"),
        Label::Device("pci_bus_id"),
        Label::OneOf {
            name: "error_type",
            values: &["correctable", "uncorrectable"],
        },
    ]),
);

/// `vigil_gpu_row_remap_failed`: 1 if a row remapping has failed (the GPU needs service), else 0.
pub static ROW_REMAP_FAILED: MetricDef = MetricDef::new(
    "vigil_gpu_row_remap_failed",
    Gauge,
    "1 if a row remapping has failed (the GPU needs service), else 0.",
    GPU,
);

/// `vigil_gpu_row_remap_pending`: 1 if a row remapping waits for a GPU reset, else 0.
pub static ROW_REMAP_PENDING: MetricDef = MetricDef::new(
    "vigil_gpu_row_remap_pending",
    Gauge,
    "1 if a row remapping waits for a GPU reset, else 0.",
    GPU,
);

/// `vigil_gpu_xid_errors`: Critical XID errors the driver reported for this GPU since Vigil
/// started, by XID code.
pub static XID_ERRORS: MetricDef = MetricDef::new(
    "vigil_gpu_xid_errors",
    Counter,
    "Critical XID errors the driver reported for this GPU since Vigil started, by XID code.",
    gpu_with(&[
        Label::Device("gpu"),
        Label::Device("uuid"),
        Label::Device("gpu_model"),
        Label::Device("pci_bus_id"),
        Label::Device("xid"),
    ]),
);

/// Every series this module defines.
pub static ALL: &[&MetricDef] = &[
    &GPU_UP,
    &READ_ERRORS,
    &DRIVER_INFO,
    &MEMORY_USED,
    &MEMORY_FREE,
    &MEMORY_TOTAL,
    &MEMORY_RESERVED,
    &PROCESS_MEMORY,
    &UTILIZATION,
    &MEMORY_UTILIZATION,
    &POWER,
    &POWER_LIMIT,
    &ENERGY,
    &TEMPERATURE,
    &SM_CLOCK,
    &MEMORY_CLOCK,
    &CLOCK_EVENT,
    &PCIE_REPLAYS,
    &ECC_ERRORS,
    &RETIRED_PAGES,
    &REMAPPED_ROWS,
    &ROW_REMAP_FAILED,
    &ROW_REMAP_PENDING,
    &XID_ERRORS,
];
