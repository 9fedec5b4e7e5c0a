//! From one poll of the GPUs to the `vigil_gpu_*` series, with nothing stale left behind.
//!
//! From a [`Poll`] to the `vigil_gpu_*` series: units converted to the catalog's base units,
//! one series per GPU and field that read, none for a field that did not (and a count of why),
//! nothing stale: a series shown by the previous poll and not by this one is removed.

use std::collections::{HashMap, HashSet};

use exporter::catalog::gpu::{self, *};
use exporter::catalog::MetricDef;
use exporter::Exporter;

use super::reading::{ErrorKind, GpuPoll, Identity, Poll, Reading};

type Labels = Vec<(&'static str, String)>;

/// One value to show.
#[derive(Debug, Clone)]
pub struct Sample {
    pub def: &'static MetricDef,
    pub labels: Labels,
    /// A gauge's value or a counter's total.
    pub value: f64,
}

/// What the series of the GPUs need to remember between polls.
#[derive(Debug, Default)]
pub struct GpuSeries {
    /// Identities seen, by index: a GPU that falls off the bus keeps its labels, so its
    /// `vigil_gpu_up` can say 0 and its errors can be counted.
    known: HashMap<u32, Identity>,
    read_errors: HashMap<(u32, &'static str, ErrorKind), u64>,
    xids: HashMap<(u32, u64), u64>,
    /// The series the last [`GpuSeries::apply`] set, to remove those a poll no longer has.
    shown: HashSet<(&'static str, Labels)>,
}

impl GpuSeries {
    /// Handles for every GPU series, resolved once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets every series of `poll` on `exporter` and removes the ones it no longer has.
    pub fn apply(&mut self, exporter: &Exporter, poll: &Poll) {
        let samples = self.samples(poll);
        let mut shown = HashSet::new();
        for s in &samples {
            let result = match s.def.kind {
                exporter::catalog::Kind::Counter => {
                    exporter.set_counter_total(s.def, &s.labels, s.value)
                }
                _ => exporter.set_gauge(s.def, &s.labels, s.value),
            };
            if let Err(e) = result {
                // A mismatch between this mapping and the catalog: a bug, caught by the tests.
                tracing::error!("{e}");
            }
            shown.insert((s.def.name, s.labels.clone()));
        }
        for (name, labels) in self.shown.difference(&shown) {
            if let Some(def) = exporter::catalog::find(name) {
                exporter.remove_series(def, labels);
            }
        }
        self.shown = shown;
    }

    /// The samples of `poll`, counting its errors and XID events.
    pub fn samples(&mut self, poll: &Poll) -> Vec<Sample> {
        let mut out = Vec::new();
        // The driver's versions: what is known of them (an empty CUDA version where the driver
        // did not say), and why not counted on every GPU's read errors, so that the info
        // series never vanishes without a reason.
        if let Ok(driver) = &poll.driver_version {
            out.push(Sample {
                def: &DRIVER_INFO,
                labels: vec![
                    ("driver_version", driver.clone()),
                    (
                        "cuda_driver_version",
                        poll.cuda_driver_version.clone().unwrap_or_default(),
                    ),
                ],
                value: 1.0,
            });
        }
        let driver_error = poll
            .driver_version
            .as_ref()
            .err()
            .or(poll.cuda_driver_version.as_ref().err());
        if let Some(kind) = driver_error {
            for g in &poll.gpus {
                *self
                    .read_errors
                    .entry((g.index, "driver_version", *kind))
                    .or_default() += 1;
            }
        }
        for gpu in &poll.gpus {
            self.gpu_samples(gpu, &mut out);
        }
        out
    }

    fn gpu_samples(&mut self, g: &GpuPoll, out: &mut Vec<Sample>) {
        let identity = match &g.identity {
            Ok(id) => {
                self.known.insert(g.index, id.clone());
                id.clone()
            }
            Err(kind) => match self.known.get(&g.index) {
                Some(id) => {
                    *self
                        .read_errors
                        .entry((g.index, "device", *kind))
                        .or_default() += 1;
                    id.clone()
                }
                None => {
                    tracing::warn!(
                        gpu = g.index,
                        error = kind.label(),
                        "cannot identify GPU; no series for it"
                    );
                    return;
                }
            },
        };
        let base: Labels = vec![
            ("gpu", g.index.to_string()),
            ("uuid", identity.uuid.clone()),
            ("gpu_model", identity.name.clone()),
            ("pci_bus_id", identity.pci_bus_id.clone()),
        ];
        let with = |extra: (&'static str, String)| {
            let mut l = base.clone();
            l.push(extra);
            l
        };
        let mut any_field = false;
        let mut field = |this: &mut Self, name: &'static str, ok: Result<(), ErrorKind>| match ok {
            Ok(()) => any_field = true,
            Err(kind) => {
                *this.read_errors.entry((g.index, name, kind)).or_default() += 1;
            }
        };
        let mut push = |def: &'static MetricDef, labels: Labels, value: f64| {
            out.push(Sample { def, labels, value })
        };

        field(
            self,
            "memory",
            each(&g.memory, |m| {
                push(&MEMORY_TOTAL, base.clone(), m.total as f64);
                push(&MEMORY_USED, base.clone(), m.used as f64);
                push(&MEMORY_FREE, base.clone(), m.free as f64);
                if let Some(r) = m.reserved {
                    push(&MEMORY_RESERVED, base.clone(), r as f64);
                }
            }),
        );
        field(
            self,
            "processes",
            each(&g.process_memory_bytes, |b| {
                push(&PROCESS_MEMORY, base.clone(), *b as f64)
            }),
        );
        field(
            self,
            "utilization",
            each(&g.utilization, |u| {
                push(&UTILIZATION, base.clone(), f64::from(u.gpu_percent) / 100.0);
                push(
                    &MEMORY_UTILIZATION,
                    base.clone(),
                    f64::from(u.memory_percent) / 100.0,
                );
            }),
        );
        field(
            self,
            "power",
            each(&g.power_milliwatts, |mw| {
                push(&POWER, base.clone(), f64::from(*mw) / 1000.0)
            }),
        );
        field(
            self,
            "power_limit",
            each(&g.power_limit_milliwatts, |mw| {
                push(&POWER_LIMIT, base.clone(), f64::from(*mw) / 1000.0)
            }),
        );
        field(
            self,
            "energy",
            each(&g.energy_millijoules, |mj| {
                push(&ENERGY, base.clone(), *mj as f64 / 1000.0)
            }),
        );
        field(
            self,
            "temperature",
            each(&g.temperature_celsius, |c| {
                push(&TEMPERATURE, base.clone(), f64::from(*c))
            }),
        );
        field(
            self,
            "sm_clock",
            each(&g.sm_clock_mhz, |mhz| {
                push(&SM_CLOCK, base.clone(), f64::from(*mhz) * 1e6)
            }),
        );
        field(
            self,
            "memory_clock",
            each(&g.memory_clock_mhz, |mhz| {
                push(&MEMORY_CLOCK, base.clone(), f64::from(*mhz) * 1e6)
            }),
        );
        field(
            self,
            "clock_events",
            each(&g.clock_event_reasons, |bits| {
                // The catalog lists the reasons in NVML's bit order.
                for (i, reason) in gpu::CLOCK_EVENT_REASONS.iter().enumerate() {
                    let active = bits & (1 << i) != 0;
                    push(
                        &CLOCK_EVENT,
                        with(("reason", (*reason).into())),
                        f64::from(u8::from(active)),
                    );
                }
            }),
        );
        field(
            self,
            "pcie_replays",
            each(&g.pcie_replays, |n| {
                push(&PCIE_REPLAYS, base.clone(), f64::from(*n))
            }),
        );
        field(
            self,
            "ecc_errors",
            each(&g.ecc_errors, |e| {
                push(
                    &ECC_ERRORS,
                    with(("error_type", "corrected".into())),
                    e.corrected as f64,
                );
                push(
                    &ECC_ERRORS,
                    with(("error_type", "uncorrected".into())),
                    e.uncorrected as f64,
                );
            }),
        );
        field(
            self,
            "retired_pages",
            each(&g.retired_pages, |r| {
                let cause = |c: &str| with(("cause", c.into()));
                push(
                    &RETIRED_PAGES,
                    cause("multiple_single_bit_ecc"),
                    r.multiple_single_bit as f64,
                );
                push(&RETIRED_PAGES, cause("double_bit_ecc"), r.double_bit as f64);
            }),
        );
        field(
            self,
            "remapped_rows",
            each(&g.remapped_rows, |r| {
                push(
                    &REMAPPED_ROWS,
                    with(("error_type", "correctable".into())),
                    r.correctable as f64,
                );
                push(
                    &REMAPPED_ROWS,
                    with(("error_type", "uncorrectable".into())),
                    r.uncorrectable as f64,
                );
                push(
                    &ROW_REMAP_PENDING,
                    base.clone(),
                    f64::from(u8::from(r.pending)),
                );
                push(
                    &ROW_REMAP_FAILED,
                    base.clone(),
                    f64::from(u8::from(r.failed)),
                );
            }),
        );

        if let Some(kind) = g.xid_unavailable {
            field(self, "xid_events", Err(kind));
        }
        for xid in &g.xid_events {
            *self.xids.entry((g.index, *xid)).or_default() += 1;
        }
        for ((index, xid), n) in &self.xids {
            if *index == g.index {
                push(&XID_ERRORS, with(("xid", xid.to_string())), *n as f64);
            }
        }
        for ((index, field, kind), n) in &self.read_errors {
            if *index == g.index {
                let mut l = with(("field", (*field).into()));
                l.push(("error", kind.label().into()));
                push(&READ_ERRORS, l, *n as f64);
            }
        }
        let up = g.identity.is_ok() && any_field;
        push(&GPU_UP, base, f64::from(u8::from(up)));
    }
}

/// Runs `f` on the value of a reading, passing its error on.
fn each<T>(r: &Reading<T>, f: impl FnOnce(&T)) -> Result<(), ErrorKind> {
    r.as_ref().map(f).map_err(|e| *e)
}
