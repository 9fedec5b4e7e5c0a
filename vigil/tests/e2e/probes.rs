//! The hardware probes in the served binary.
//!
//! The hardware probes in the served binary: their status on /metrics, the eBPF probe watching
//! Vigil's own threads by role while it serves, and degrading without privilege or hardware.

use crate::common;

use std::time::Duration;

use common::{http_post, promtool_problems, sample, wait_for, Vigil};

fn complete(vigil: &Vigil) {
    let body = br#"{"prompt": "The capital of France is", "max_tokens": 8}"#;
    let (status, text) = http_post(&vigil.url("/v1/completions"), body, &[]);
    assert_eq!(status, 200, "{text}");
}

#[test]
fn serving_vigil_measures_its_own_threads_by_role() {
    let vigil = Vigil::serve(&["--probe-interval", "0.2"]);
    for _ in 0..3 {
        complete(&vigil);
    }
    // The engine step loop and the HTTP workers both waited on the run queue at least once
    // while serving; their histograms and counters appear once the poller has read them.
    let metrics = wait_for(
        "engine and http run-queue histograms",
        Duration::from_secs(10),
        || {
            let m = vigil.metrics();
            let engine = sample(&m, "vigil_runqueue_latency_seconds_count{role=\"engine\"}")?;
            let http = sample(&m, "vigil_runqueue_latency_seconds_count{role=\"http\"}")?;
            (engine > 0.0 && http > 0.0).then_some(m)
        },
    );
    assert_eq!(
        sample(
            &metrics,
            "vigil_probe_up{probe=\"ebpf\",reason=\"running\"}"
        ),
        Some(1.0)
    );
    // The CPU backend's workers compute the forward passes.
    assert!(
        sample(
            &metrics,
            "vigil_runqueue_latency_seconds_count{role=\"compute\"}"
        ) > Some(0.0)
    );
    // The engine thread sleeps between requests: it left the CPU voluntarily and was off it.
    assert!(
        sample(
            &metrics,
            "vigil_voluntary_context_switches_total{role=\"engine\"}"
        ) > Some(0.0)
    );
    assert!(sample(&metrics, "vigil_off_cpu_seconds_total{role=\"engine\"}") > Some(0.0));
    // Bucket counts are cumulative up to the count.
    let inf = sample(
        &metrics,
        "vigil_runqueue_latency_seconds_bucket{le=\"+Inf\",role=\"engine\"}",
    );
    let count = sample(
        &metrics,
        "vigil_runqueue_latency_seconds_count{role=\"engine\"}",
    );
    assert_eq!(inf, count);
    let problems = promtool_problems(&metrics);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn without_nvml_the_gpu_probe_is_off_and_says_why() {
    // This machine has no NVIDIA driver: the probe is off, one log line says why, Vigil serves.
    let vigil = Vigil::serve(&[]);
    let metrics = vigil.metrics();
    if std::path::Path::new("/dev/nvidiactl").exists() {
        eprintln!("a GPU driver is present; the absent-NVML case cannot be shown here");
        return;
    }
    assert_eq!(
        sample(
            &metrics,
            "vigil_probe_up{probe=\"nvml\",reason=\"no_library\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        !metrics.contains("vigil_gpu_up{"),
        "no GPU series without NVML"
    );
    assert!(vigil.log().contains("libnvidia-ml.so.1 cannot be loaded"));
    complete(&vigil);
}

#[test]
fn without_privilege_the_ebpf_probe_is_off_and_serving_works() {
    // As user nobody with no capabilities, loading BPF is refused; the probe says so.
    let vigil = Vigil::serve_as(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ],
        &[],
    );
    let metrics = vigil.metrics();
    assert_eq!(
        sample(
            &metrics,
            "vigil_probe_up{probe=\"ebpf\",reason=\"no_permission\"}"
        ),
        Some(0.0),
        "{metrics}\n{}",
        vigil.log()
    );
    assert!(
        vigil.log().contains("CAP_BPF and CAP_PERFMON"),
        "{}",
        vigil.log()
    );
    assert!(!metrics.contains("vigil_runqueue_latency_seconds_count"));
    complete(&vigil);
}

#[test]
fn probes_turned_off_on_the_command_line_say_so() {
    let vigil = Vigil::serve(&["--disable-ebpf-probe", "--disable-nvml-probe"]);
    let metrics = vigil.metrics();
    for probe in ["ebpf", "nvml"] {
        assert_eq!(
            sample(
                &metrics,
                &format!("vigil_probe_up{{probe=\"{probe}\",reason=\"disabled\"}}")
            ),
            Some(0.0),
            "{metrics}"
        );
    }
}

#[test]
fn without_kernel_btf_the_ebpf_probe_is_off() {
    // Hide the kernel's BTF in a private mount namespace (as a kernel built without
    // CONFIG_DEBUG_INFO_BTF would look): the probe must refuse rather than load without CO-RE.
    let vigil = Vigil::serve_as(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs none /sys/kernel/btf && exec \"$0\" \"$@\"",
        ],
        &[],
    );
    let metrics = vigil.metrics();
    assert_eq!(
        sample(&metrics, "vigil_probe_up{probe=\"ebpf\",reason=\"no_btf\"}"),
        Some(0.0),
        "{metrics}\n{}",
        vigil.log()
    );
    complete(&vigil);
}
