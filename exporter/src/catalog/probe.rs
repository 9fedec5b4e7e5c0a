//! Whether each hardware probe runs, and why not when it does not.
//!
//! The state of Vigil's hardware probes: one series per probe says whether it runs and, when it
//! does not, why (no GPU, no NVML library, no BTF, no privilege, ...), so a dashboard can tell
//! "no data" from "nothing happened".

use super::{Kind, Label, MetricDef};

/// Values of `probe`.
pub const PROBES: &[&str] = &["nvml", "ebpf"];

/// Values of `reason`: `running` when up, else why the probe is off. A closed set, so the label
/// never carries an error message.
pub const REASONS: &[&str] = &[
    "running",
    "disabled",
    "not_built",
    "no_library",
    "no_driver",
    "no_device",
    "no_btf",
    "no_permission",
    "unsupported_kernel",
    "no_target",
    "failed",
];

/// `vigil_probe_up`: Whether a hardware probe is running (1) or off (0); reason says why it is off.
pub static PROBE_UP: MetricDef = MetricDef::new(
    "vigil_probe_up",
    Kind::Gauge,
    "Whether a hardware probe is running (1) or off (0); reason says why it is off.",
    &[
        Label::OneOf {
            name: "probe",
            values: PROBES,
        },
        Label::OneOf {
            name: "reason",
            values: REASONS,
        },
    ],
);

/// Every series this module defines.
pub static ALL: &[&MetricDef] = &[&PROBE_UP];
