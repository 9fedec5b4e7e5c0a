//! The NVML probe's mapping from recorded GPU readings to rendered series.
//!
//! The NVML probe's mapping from readings to series, driven by polls of real shapes (values and
//! the errors NVML returns: not supported, no permission, GPU lost) through the real exporter
//! and its Prometheus rendering.

use exporter::{render, Format};
use exporter::{Exporter, ExporterConfig};
use probes::{GpuSeries, GpuSource, Recorded};

const H100: &str = r#"gpu="0",gpu_model="NVIDIA H100 80GB HBM3",pci_bus_id="00000000:18:00.0",uuid="GPU-6b6e5a5f-2c1d-4e9a-9a0b-3f5c2d1e8a77""#;
const RTX: &str = r#"gpu="1",gpu_model="NVIDIA GeForce RTX 4090",pci_bus_id="00000000:41:00.0",uuid="GPU-0d1f9c3e-77aa-4b21-8c5e-5e2f4a6b9d10""#;

fn recording() -> Recorded {
    Recorded::from_json(include_str!("fixtures/nvml_polls.json")).expect("fixture parses")
}

/// The value of the sample `name{labels}` in a Prometheus text rendering, if present.
fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().expect("a number"))
}

/// `labels` with one more label, in the sorted order the exporter renders.
fn plus(labels: &str, extra: &str) -> String {
    let mut all: Vec<&str> = labels.split("\",").collect();
    let last = all.pop().unwrap().trim_end_matches('"');
    let mut all: Vec<String> = all.iter().map(|l| format!("{l}\"")).collect();
    all.push(format!("{last}\""));
    all.push(extra.to_owned());
    all.sort();
    all.join(",")
}

fn series_of(text: &str, name: &str, gpu: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(gpu))
        .count()
}

#[test]
fn readings_become_series_in_base_units() {
    let exporter = Exporter::new(ExporterConfig::new(2048));
    let mut source = recording();
    let mut series = GpuSeries::new();
    series.apply(&exporter, &source.poll());
    let text = render(&exporter, Format::Prometheus);

    let v = |name: &str, labels: &str| value(&text, name, labels);
    assert_eq!(v("vigil_gpu_memory_total_bytes", H100), Some(85520809984.0));
    assert_eq!(v("vigil_gpu_memory_used_bytes", H100), Some(654311424.0));
    assert_eq!(
        v("vigil_gpu_memory_reserved_bytes", H100),
        Some(539803648.0)
    );
    assert_eq!(v("vigil_gpu_power_watts", H100), Some(69.832));
    assert_eq!(v("vigil_gpu_power_limit_watts", H100), Some(700.0));
    assert_eq!(v("vigil_gpu_energy_joules_total", H100), Some(1234567.89));
    assert_eq!(v("vigil_gpu_sm_clock_hertz", H100), Some(345e6));
    assert_eq!(v("vigil_gpu_memory_clock_hertz", H100), Some(2619e6));
    assert_eq!(v("vigil_gpu_temperature_celsius", H100), Some(31.0));
    assert_eq!(v("vigil_gpu_utilization_ratio", RTX), Some(0.03));
    assert_eq!(
        v("vigil_gpu_memory_copy_utilization_ratio", RTX),
        Some(0.01)
    );
    assert_eq!(v("vigil_gpu_pcie_replays_total", RTX), Some(2.0));
    assert_eq!(v("vigil_gpu_up", H100), Some(1.0));
    assert_eq!(v("vigil_gpu_up", RTX), Some(1.0));
    // Clock events: the idle bit is set, the power cap's is not.
    let reason = |r: &str| plus(H100, &format!("reason=\"{r}\""));
    assert_eq!(
        v("vigil_gpu_clock_event_active", &reason("gpu_idle")),
        Some(1.0)
    );
    assert_eq!(
        v("vigil_gpu_clock_event_active", &reason("sw_power_cap")),
        Some(0.0)
    );
    assert_eq!(
        v(
            "vigil_gpu_driver_info",
            r#"cuda_driver_version="13.0",driver_version="580.95.05""#
        ),
        Some(1.0)
    );

    // Unsupported fields are absent, not zero, and counted with the reason.
    assert_eq!(series_of(&text, "vigil_gpu_ecc_errors_total", RTX), 0);
    assert_eq!(series_of(&text, "vigil_gpu_retired_pages_total", H100), 0);
    assert_eq!(series_of(&text, "vigil_gpu_power_limit_watts", RTX), 0);
    assert_eq!(series_of(&text, "vigil_gpu_ecc_errors_total", H100), 2);
    assert_eq!(series_of(&text, "vigil_gpu_remapped_rows_total", H100), 2);
    assert!(text.contains("field=\"power_limit\"") && text.contains("error=\"no_permission\""));
    // A GPU that could never be identified has no series at all (no labels to give them).
    assert!(!text.contains("gpu=\"2\""), "{text}");
}

#[test]
fn later_polls_update_drop_and_count() {
    let exporter = Exporter::new(ExporterConfig::new(2048));
    let mut source = recording();
    let mut series = GpuSeries::new();
    series.apply(&exporter, &source.poll());
    series.apply(&exporter, &source.poll());
    let text = render(&exporter, Format::Prometheus);
    let v = |name: &str, labels: &str| value(&text, name, labels);

    // Values move with the GPU.
    assert_eq!(v("vigil_gpu_utilization_ratio", H100), Some(0.87));
    assert_eq!(
        v("vigil_gpu_process_memory_used_bytes", H100),
        Some(71303168000.0)
    );
    assert_eq!(v("vigil_gpu_energy_joules_total", H100), Some(1234880.34));
    // An XID counts once per event, by code.
    assert_eq!(
        v("vigil_gpu_xid_errors_total", &plus(H100, "xid=\"119\"")),
        Some(1.0)
    );
    // The lost GPU keeps its labels: up is 0, its readings are gone (not frozen), the loss is
    // counted, and its XID too.
    assert_eq!(v("vigil_gpu_up", RTX), Some(0.0));
    assert_eq!(series_of(&text, "vigil_gpu_memory_used_bytes", RTX), 0);
    assert_eq!(series_of(&text, "vigil_gpu_temperature_celsius", RTX), 0);
    assert_eq!(series_of(&text, "vigil_gpu_xid_errors_total", RTX), 1);
    let lost = text
        .lines()
        .find(|l| {
            l.starts_with("vigil_gpu_read_errors_total{")
                && l.contains("gpu=\"1\"")
                && l.contains("field=\"device\"")
                && l.contains("error=\"gpu_lost\"")
        })
        .expect("the loss is counted");
    assert!(lost.ends_with(" 1.0"), "{lost}");
    // Errors accumulate across polls: power_limit failed twice (once no_permission, once lost).
    let no_perm = text
        .lines()
        .find(|l| l.contains("field=\"power_limit\"") && l.contains("no_permission"))
        .unwrap();
    assert!(no_perm.ends_with(" 1.0"), "{no_perm}");
    // The healthy GPU is untouched by its neighbour's failure.
    assert_eq!(v("vigil_gpu_up", H100), Some(1.0));
}

/// The driver's versions: an info series with what is known of them, and why not counted on
/// every GPU, so that `vigil_gpu_driver_info` never vanishes without a reason.
#[test]
fn a_driver_version_that_cannot_be_read_is_counted() {
    let exporter = Exporter::new(ExporterConfig::new(2048));
    let mut poll = recording().poll();
    poll.cuda_driver_version = Err(probes::NvmlErrorKind::MissingFunction);
    let mut series = GpuSeries::new();
    series.apply(&exporter, &poll);
    let text = render(&exporter, Format::Prometheus);
    let driver = poll.driver_version.clone().unwrap();
    assert_eq!(
        value(
            &text,
            "vigil_gpu_driver_info",
            &format!("cuda_driver_version=\"\",driver_version=\"{driver}\"")
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("vigil_gpu_read_errors_total{")
                && l.contains("field=\"driver_version\"")
                && l.contains("error=\"missing_function\"")
                && l.contains("gpu=\"0\"")),
        "{text}"
    );
    poll.driver_version = Err(probes::NvmlErrorKind::Other);
    series.apply(&exporter, &poll);
    let text = render(&exporter, Format::Prometheus);
    assert!(!text.contains("vigil_gpu_driver_info{"), "{text}");
}
