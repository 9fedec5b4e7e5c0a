//! The NVML probe end to end on a simulated node.
//!
//! The NVML probe end to end on a simulated node: `vigil serve` with the simulated NVML
//! (`cuda-sim`'s `libnvidia-ml.so.1`, linked by `cargo xtask test` in `VIGIL_CUDA_SIM`) answering
//! from a profile (`cuda-sim/profiles/*.json`). nvml-wrapper's calls, the poller thread, the XID
//! listener and the series all run; every expected value is computed here from the profile with
//! NVML's units (milliwatts, millijoules, MHz, percent) converted to the series' base units.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Vigil;
use serde_json::Value;

fn profile(name: &str) -> (String, Value) {
    let path = format!(
        "{}/../cuda-sim/profiles/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    (path, json)
}

/// `vigil serve --device cpu` on the simulated node `profile`, its NVML library taken from
/// `library_dir`.
fn serve_with_nvml(profile: &str, library_dir: &str) -> Vigil {
    let mut env = common::simulated_node(profile);
    for (name, value) in env.iter_mut() {
        if *name == "LD_LIBRARY_PATH" {
            *value = common::library_path_with(library_dir);
        }
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Vigil::serve_env(&["--device", "cpu", "--probe-interval", "0.2"], &env)
}

/// `vigil serve --device cpu` on the simulated node `profile`.
fn serve_on(profile: &str) -> Vigil {
    serve_with_nvml(profile, &common::simulator())
}

/// Every sample of `exposition`: (name, labels) -> value.
type Samples = Vec<(String, BTreeMap<String, String>, f64)>;

fn samples(exposition: &str) -> Samples {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once("=\"")?;
                    Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
                })
                .collect();
            Some((name.to_owned(), labels, value.parse().ok()?))
        })
        .collect()
}

/// The value of `name` for GPU `gpu` with the `extra` labels, if the series is there.
fn value(s: &Samples, name: &str, gpu: usize, extra: &[(&str, &str)]) -> Option<f64> {
    s.iter()
        .find(|(n, labels, _)| {
            n == name
                && labels.get("gpu").map(String::as_str) == Some(&gpu.to_string())
                && extra
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|(_, _, v)| *v)
}

fn u(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("profile field {key}"))
}

/// Waits until a scrape shows every GPU of the profile polled.
fn scrape_when_polled(v: &Vigil, gpus: usize) -> Samples {
    common::wait_for("the GPUs polled", Duration::from_secs(20), || {
        let s = samples(&v.metrics());
        let polled = (0..gpus)
            .filter(|&g| value(&s, "vigil_gpu_up", g, &[]).is_some())
            .count();
        (polled == gpus).then_some(s)
    })
}

#[test]
fn every_gpu_series_of_an_eight_h100_node_equals_the_profile() {
    let (_, node) = profile("h100x8");
    let v = serve_on("h100x8");
    let s = scrape_when_polled(&v, 8);
    let gpus = node["gpus"].as_array().unwrap();
    for (i, g) in gpus.iter().enumerate() {
        let identity = [
            ("uuid", g["uuid"].as_str().unwrap()),
            ("gpu_model", g["name"].as_str().unwrap()),
            ("pci_bus_id", g["pci_bus_id"].as_str().unwrap()),
        ];
        let at = |name: &str, extra: &[(&str, &str)]| {
            let mut labels = identity.to_vec();
            labels.extend_from_slice(extra);
            value(&s, name, i, &labels).unwrap_or_else(|| panic!("GPU {i}: no {name} {extra:?}"))
        };
        assert_eq!(at("vigil_gpu_up", &[]), 1.0);
        // nvmlMemory_v2_t: free = total - used - reserved.
        let (total, used, reserved) = (
            u(g, "memory_total"),
            u(g, "memory_used"),
            u(g, "memory_reserved"),
        );
        assert_eq!(at("vigil_gpu_memory_total_bytes", &[]), total);
        assert_eq!(at("vigil_gpu_memory_used_bytes", &[]), used);
        assert_eq!(at("vigil_gpu_memory_reserved_bytes", &[]), reserved);
        assert_eq!(
            at("vigil_gpu_memory_free_bytes", &[]),
            total - used - reserved
        );
        assert_eq!(
            at("vigil_gpu_process_memory_used_bytes", &[]),
            u(g, "process_memory")
        );
        // Percent to ratio; milliwatts to watts; MHz to Hz.
        assert_eq!(
            at("vigil_gpu_utilization_ratio", &[]),
            u(g, "utilization_gpu") / 100.0
        );
        assert_eq!(
            at("vigil_gpu_memory_copy_utilization_ratio", &[]),
            u(g, "utilization_memory") / 100.0
        );
        assert_eq!(at("vigil_gpu_power_watts", &[]), u(g, "power_mw") / 1000.0);
        assert_eq!(
            at("vigil_gpu_power_limit_watts", &[]),
            u(g, "power_limit_mw") / 1000.0
        );
        assert_eq!(
            at("vigil_gpu_temperature_celsius", &[]),
            u(g, "temperature_c")
        );
        assert_eq!(
            at("vigil_gpu_sm_clock_hertz", &[]),
            u(g, "sm_clock_mhz") * 1e6
        );
        assert_eq!(
            at("vigil_gpu_memory_clock_hertz", &[]),
            u(g, "memory_clock_mhz") * 1e6
        );
        // Millijoules to joules; the simulated GPU draws its power since NVML started.
        let energy = at("vigil_gpu_energy_joules_total", &[]);
        let start = u(g, "energy_mj") / 1000.0;
        assert!(
            energy >= start && energy <= start + u(g, "power_mw") / 1000.0 * 60.0,
            "{energy}"
        );
        assert_eq!(
            at("vigil_gpu_pcie_replays_total", &[]),
            u(g, "pcie_replays")
        );
        assert_eq!(
            at("vigil_gpu_ecc_errors_total", &[("error_type", "corrected")]),
            u(g, "ecc_corrected")
        );
        assert_eq!(
            at(
                "vigil_gpu_ecc_errors_total",
                &[("error_type", "uncorrected")]
            ),
            u(g, "ecc_uncorrected")
        );
        assert_eq!(
            at(
                "vigil_gpu_remapped_rows_total",
                &[("error_type", "correctable")]
            ),
            u(g, "remapped_correctable")
        );
        assert_eq!(at("vigil_gpu_row_remap_pending", &[]), 0.0);
        assert_eq!(at("vigil_gpu_row_remap_failed", &[]), 0.0);
        // NVML's clocks-event reason bits: 0x1 is gpu_idle.
        let idle = u(g, "clock_event_reasons") as u64 & 1;
        assert_eq!(
            at("vigil_gpu_clock_event_active", &[("reason", "gpu_idle")]),
            idle as f64
        );
        // Retired pages are NOT_SUPPORTED on these GPUs (row remapping replaced them): no
        // series, and the error counted by field.
        assert_eq!(value(&s, "vigil_gpu_retired_pages_total", i, &[]), None);
        assert!(
            at(
                "vigil_gpu_read_errors_total",
                &[("field", "retired_pages"), ("error", "not_supported")]
            ) >= 1.0
        );
    }
    let driver = s
        .iter()
        .find(|(n, _, _)| n == "vigil_gpu_driver_info")
        .expect("driver info");
    assert_eq!(
        driver.1["driver_version"],
        node["driver_version"].as_str().unwrap()
    );
    // 13000 is CUDA 13.0.
    assert_eq!(driver.1["cuda_driver_version"], "13.0");
}

#[test]
fn a_failing_node_loses_one_gpu_without_blanking_the_others() {
    let (_, node) = profile("failing-node");
    let v = serve_on("failing-node");
    let gpus = node["gpus"].as_array().unwrap().len();
    // GPU 1 reports XID 79 at 2 s and falls off the bus at 3 s; GPU 2 throttles from 1 s.
    let s = common::wait_for("GPU 1 lost", Duration::from_secs(20), || {
        let s = samples(&v.metrics());
        (value(&s, "vigil_gpu_up", 1, &[]) == Some(0.0)).then_some(s)
    });
    for g in [0, 2, 3] {
        assert_eq!(value(&s, "vigil_gpu_up", g, &[]), Some(1.0), "GPU {g}");
        assert!(
            value(&s, "vigil_gpu_power_watts", g, &[]).is_some(),
            "GPU {g}"
        );
    }
    assert_eq!(gpus, 4);
    // The lost GPU's fields are counted as gpu_lost; its last readings are gone.
    assert!(
        value(
            &s,
            "vigil_gpu_read_errors_total",
            1,
            &[("field", "power"), ("error", "gpu_lost")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(value(&s, "vigil_gpu_power_watts", 1, &[]), None);
    assert_eq!(
        value(&s, "vigil_gpu_xid_errors_total", 1, &[("xid", "79")]),
        Some(1.0)
    );
    // 0x08 hw_slowdown and 0x40 hw_thermal_slowdown.
    for reason in ["hw_slowdown", "hw_thermal_slowdown"] {
        assert_eq!(
            value(&s, "vigil_gpu_clock_event_active", 2, &[("reason", reason)]),
            Some(1.0),
            "{reason}"
        );
    }
    assert_eq!(
        value(
            &s,
            "vigil_gpu_clock_event_active",
            2,
            &[("reason", "sw_power_cap")]
        ),
        Some(0.0)
    );
    assert_eq!(value(&s, "vigil_gpu_row_remap_pending", 3, &[]), Some(1.0));
    assert_eq!(
        value(
            &s,
            "vigil_gpu_ecc_errors_total",
            1,
            &[("error_type", "uncorrected")]
        ),
        None
    );
}

#[test]
fn a_workstation_without_permission_or_ecc_reports_what_it_can() {
    let v = serve_on("rtx4090");
    let s = scrape_when_polled(&v, 1);
    assert_eq!(value(&s, "vigil_gpu_up", 0, &[]), Some(1.0));
    assert_eq!(value(&s, "vigil_gpu_power_watts", 0, &[]), Some(45.0));
    assert_eq!(value(&s, "vigil_gpu_power_limit_watts", 0, &[]), None);
    for (field, error) in [
        ("power_limit", "no_permission"),
        ("ecc_errors", "not_supported"),
        ("remapped_rows", "not_supported"),
        ("pcie_replays", "not_supported"),
    ] {
        assert!(
            value(
                &s,
                "vigil_gpu_read_errors_total",
                0,
                &[("field", field), ("error", error)]
            )
            .is_some_and(|n| n >= 1.0),
            "{field} {error}"
        );
    }
    // Utilization follows the profile's pattern of 0, 50, 100, 50 percent.
    let ratio = value(&s, "vigil_gpu_utilization_ratio", 0, &[]).unwrap();
    assert!([0.0, 0.5, 1.0].contains(&ratio), "{ratio}");
}

/// An older driver's NVML (R470-era) lacks functions Vigil calls (memory info v2, the CUDA
/// driver version v2, compute processes v3, the event wait v2): the poller reads memory and
/// the CUDA version through the v1 calls such a driver has (its memory info has no reserved
/// figure: reserved memory counts as used, as that driver reports it), keeps every other
/// field, and counts what has no older call as `missing_function` at each poll.
#[test]
fn an_older_driver_without_some_functions_keeps_the_probe_running() {
    let (_, node) = profile("h100x8");
    let v = serve_with_nvml("h100x8", &format!("{}/old-driver", common::simulator()));
    let s = common::wait_for("polls counted", Duration::from_secs(20), || {
        let s = samples(&v.metrics());
        let polls = value(
            &s,
            "vigil_gpu_read_errors_total",
            7,
            &[("field", "processes")],
        );
        polls.is_some_and(|n| n >= 3.0).then_some(s)
    });
    let m = v.metrics();
    assert!(
        m.lines().any(|l| l.starts_with("vigil_gpu_driver_info{")
            && l.contains(&format!(
                "driver_version=\"{}\"",
                node["driver_version"].as_str().unwrap()
            ))),
        "{m}"
    );
    for (i, g) in node["gpus"].as_array().unwrap().iter().enumerate() {
        assert_eq!(value(&s, "vigil_gpu_up", i, &[]), Some(1.0), "GPU {i}");
        assert_eq!(
            value(&s, "vigil_gpu_power_watts", i, &[]),
            Some(u(g, "power_mw") / 1000.0)
        );
        assert_eq!(
            value(&s, "vigil_gpu_memory_used_bytes", i, &[]),
            Some(u(g, "memory_used") + u(g, "memory_reserved")),
            "GPU {i}"
        );
        assert_eq!(
            value(&s, "vigil_gpu_memory_total_bytes", i, &[]),
            Some(u(g, "memory_total")),
            "GPU {i}"
        );
        assert_eq!(value(&s, "vigil_gpu_memory_reserved_bytes", i, &[]), None);
        assert_eq!(
            value(&s, "vigil_gpu_read_errors_total", i, &[("field", "memory")]),
            None,
            "GPU {i}: memory is read"
        );
        for field in ["processes", "xid_events"] {
            let n = value(
                &s,
                "vigil_gpu_read_errors_total",
                i,
                &[("field", field), ("error", "missing_function")],
            );
            assert!(n.is_some_and(|n| n >= 1.0), "GPU {i}: {field} {n:?}");
        }
    }
}

/// The GPU alerts of `prometheus/rules/vigil-alerts.yml`, evaluated by a real Prometheus
/// scraping `vigil serve` on the failing node: the XID (a counter whose series first appears
/// at 1) pages at once, and so does the failed row remap; the lost GPU and the throttling one
/// are pending, their `for:` not yet passed.
#[test]
fn gpu_alerts_fire_through_prometheus_on_the_failing_node() {
    use common::prometheus::Prometheus;
    let v = serve_on("failing-node");
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../prometheus/rules/vigil-alerts.yml")
        .canonicalize()
        .unwrap();
    let prometheus = Prometheus::start_with_rules(&[("vigil", v.addr.to_string())], &[rules]);
    prometheus.wait_up(&["vigil"]);
    // (alert, labels it carries, states that count)
    type Wanted<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let wanted: [Wanted; 5] = [
        (
            "VigilGPUXidError",
            &[("gpu", "1"), ("xid", "79")],
            &["firing"],
        ),
        ("VigilGPUUncorrectedECC", &[("gpu", "3")], &["firing"]),
        ("VigilGPULost", &[("gpu", "1")], &["pending", "firing"]),
        (
            "VigilGPUThrottled",
            &[("gpu", "2"), ("reason", "hw_slowdown")],
            &["pending", "firing"],
        ),
        (
            "VigilGPUThrottled",
            &[("gpu", "2"), ("reason", "hw_thermal_slowdown")],
            &["pending", "firing"],
        ),
    ];
    let alerts = common::wait_for("the GPU alerts", Duration::from_secs(60), || {
        let alerts = prometheus.api("/api/v1/alerts")["alerts"]
            .as_array()
            .unwrap()
            .clone();
        let found = |(name, labels, states): &Wanted| {
            alerts.iter().any(|a| {
                a["labels"]["alertname"] == *name
                    && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
                    && states.contains(&a["state"].as_str().unwrap_or(""))
            })
        };
        wanted.iter().all(found).then_some(alerts)
    });
    // Healthy GPUs raise nothing.
    for a in &alerts {
        let gpu = a["labels"]["gpu"].as_str().unwrap_or("");
        assert!(gpu != "0", "GPU 0 is healthy: {a}");
    }

    // The pending ones fire once their `for:` has passed: promtool's unit test over the series
    // Prometheus scraped, with their real labels and values, held for ten minutes.
    let mut input = String::new();
    for metric in ["vigil_gpu_up", "vigil_gpu_clock_event_active"] {
        for series in prometheus.query(metric) {
            let labels: Vec<String> = series["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap()))
                .collect();
            let value = series["value"][1].as_str().unwrap();
            input.push_str(&format!(
                "      - series: '{{{}}}'\n        values: '{value}x10'\n",
                labels.join(",")
            ));
        }
    }
    let test = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    \
         input_series:\n{input}    alert_rule_test:\n      - eval_time: 10m\n        \
         alertname: VigilGPULost\n        exp_alerts:\n          - exp_labels: {{{lost}}}\n            \
         exp_annotations:\n              summary: \"GPU 1 of {instance} stopped answering NVML\"\n",
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../prometheus/rules/vigil-alerts.yml")
            .canonicalize()
            .unwrap()
            .display(),
        lost = labels_of(&prometheus, "vigil_gpu_up == 0", &[("severity", "page")]),
        instance = v.addr,
    );
    let throttled = ["hw_slowdown", "hw_thermal_slowdown"]
        .map(|reason| {
            let labels = labels_of(
                &prometheus,
                &format!(
                    "max by (instance, gpu, uuid, reason) \
                     (vigil_gpu_clock_event_active{{reason=\"{reason}\"}}) == 1"
                ),
                &[("severity", "warning")],
            );
            format!(
                "          - exp_labels: {{{labels}}}\n            exp_annotations:\n              \
                 summary: \"GPU 2 of {} throttled ({reason})\"\n              description: \
                 \"Clocks are held down by heat or power: tokens come slower than the hardware \
                 can.\"\n",
                v.addr
            )
        })
        .concat();
    let test = format!(
        "{test}      - eval_time: 10m\n        alertname: VigilGPUThrottled\n        exp_alerts:\n{throttled}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scraped.test.yml");
    std::fs::write(&file, &test).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The labels of the one series `promql` returns, with `extra`, as a YAML flow map's body.
fn labels_of(
    prometheus: &common::prometheus::Prometheus,
    promql: &str,
    extra: &[(&str, &str)],
) -> String {
    let result = prometheus.query(promql);
    assert_eq!(result.len(), 1, "{promql}: {result:?}");
    let mut labels: Vec<String> = result[0]["metric"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__name__")
        .map(|(k, v)| format!("{k}: \"{}\"", v.as_str().unwrap()))
        .collect();
    labels.extend(extra.iter().map(|(k, v)| format!("{k}: \"{v}\"")));
    labels.join(", ")
}

/// `vigil check-gpu --only nvml` on the simulated node, against a stand-in `nvidia-smi`
/// (`cuda-sim/bin/nvidia-smi`) that reads the same profile independently: the comparison
/// passes field by field (a field the GPU refuses is absent on both sides), records its polls,
/// and fails when the two disagree.
#[test]
fn check_gpu_compares_nvml_with_nvidia_smi_on_the_simulated_node() {
    let bin = format!("{}/../cuda-sim/bin", env!("CARGO_MANIFEST_DIR"));
    let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
    let check =
        |profile_name: &str, smi_profile: Option<&str>, record: Option<&std::path::Path>| {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"));
            command
                .args(["check-gpu", "--only", "nvml"])
                .env("PATH", &path);
            if let Some(record) = record {
                command.arg("--record").arg(record);
            }
            for (k, v) in common::simulated_node(profile_name) {
                command.env(k, v);
            }
            if let Some(other) = smi_profile {
                command.env("VIGIL_NVIDIA_SMI_PROFILE", profile(other).0);
            }
            let out = command.output().unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("polls.json");
    let (ok, report) = check("h100x8", None, Some(&record));
    assert!(ok, "{report}");
    assert_eq!(report.matches("GPU ").count(), 8, "{report}");
    assert!(
        report.contains("PASS NVML readings = nvidia-smi"),
        "{report}"
    );
    let polls: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    assert_eq!(polls.len(), 2);
    assert_eq!(polls[0]["gpus"].as_array().unwrap().len(), 8);

    let (ok, report) = check("rtx4090", None, None);
    assert!(ok, "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.contains("power.limit") && l.contains("(absent)") && l.ends_with("ok")),
        "{report}"
    );

    // NVML sees the 8 x H100 node, nvidia-smi the failing one: the check must fail.
    let (ok, report) = check("h100x8", Some("failing-node"), None);
    assert!(!ok, "{report}");
    assert!(report.contains("MISMATCH"), "{report}");
}

/// `vigil probe`, the node agent beside an engine Vigil does not run, polls the simulated node
/// with the same probe: every GPU there, with the profile's values.
#[test]
fn the_node_agent_shows_the_simulated_gpus() {
    let (_, node) = profile("h100x8");
    let engine = Vigil::serve(&["--device", "cpu", "--disable-nvml-probe"]);
    let mut command = common::agent_command(&engine.url("/metrics"));
    for (k, v) in common::simulated_node("h100x8") {
        command.env(k, v);
    }
    let agent = Vigil::spawn(command);
    let s = scrape_when_polled(&agent, 8);
    for (i, g) in node["gpus"].as_array().unwrap().iter().enumerate() {
        assert_eq!(value(&s, "vigil_gpu_up", i, &[]), Some(1.0));
        assert_eq!(
            value(&s, "vigil_gpu_power_watts", i, &[]),
            Some(u(g, "power_mw") / 1000.0)
        );
        assert_eq!(
            value(&s, "vigil_gpu_memory_used_bytes", i, &[]),
            Some(u(g, "memory_used"))
        );
    }
}
