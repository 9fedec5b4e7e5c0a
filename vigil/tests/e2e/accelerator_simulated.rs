//! The CUDA backend end to end on the simulated GPU.
//!
//! The CUDA backend end to end on the simulated GPU (`cuda-sim/`, built and linked by `cargo
//! xtask test`, which names its folder in `VIGIL_CUDA_SIM`): `vigil check-gpu` and `vigil serve
//! --device cuda` run with the simulator first on `LD_LIBRARY_PATH`, so the CUDA backend's own
//! code, kernels and cuBLAS calls execute, on the CPU.
//!
//! These are the longest tests of the binary, and libtest starts tests in the order of their
//! names: the module's name sorts first so that they start first, beside each other, rather
//! than last, where they would be the run's tail.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{http_post, sample, Vigil};
use serde_json::{json, Value};

/// `LD_LIBRARY_PATH` with the simulator first.
fn simulated_library_path() -> String {
    common::library_path_with(&common::simulator())
}

/// Runs `vigil check-gpu --only SECTIONS` on the simulated device and checks that it passed,
/// said the device is simulated, and printed each of `checks` as a PASS.
fn check_gpu_passes(sections: &str, checks: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["check-gpu", "--only", sections])
        .args(["--model", common::require_model()])
        .env("LD_LIBRARY_PATH", simulated_library_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("NOTE: this device is SIMULATED"),
        "{stdout}"
    );
    assert!(
        stdout.contains("checks passed on a SIMULATED device"),
        "{stdout}"
    );
    for check in checks {
        assert!(
            stdout.lines().any(|l| l.starts_with(check)),
            "{check}:\n{stdout}"
        );
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

/// `vigil check-gpu`'s kernels against their CPU references, and the model's greedy decoding
/// against the CPU backend's.
/// Also each kernel of a decode step timed beside the profile's prediction (the calibration a
/// GPU runs), and a step captured as a CUDA graph through cudarc and replayed.
#[test]
fn check_gpu_kernels_and_model_pass_on_the_simulated_device() {
    check_gpu_passes(
        "kernels,model,kernel-times",
        &[
            "PASS kernel rope_kv_write + paged_attention",
            "PASS cuBLAS linear",
            "PASS CUDA graph: captured rms_norm + cuBLAS replay = direct",
            "PASS prompt 3 greedy 64 steps = CPU",
            "PASS default-b1-ctx512: every kernel timed beside its prediction",
        ],
    );
}

/// `vigil check-gpu`'s serving section: `vigil serve --device cuda` over HTTP.
#[test]
fn check_gpu_serving_passes_on_the_simulated_device() {
    check_gpu_passes("serving", &["PASS serving: 32 concurrent requests"]);
}

fn complete(v: &Vigil, body: Value) -> Value {
    v.post_ok("/v1/completions", &body)
}

/// The scheduler's paths on the device: a KV cache of 12 blocks (192 tokens) that four
/// requests of 80 tokens each outgrow (preemption and recompute), a prompt served twice (prefix
/// cache), a stream whose client leaves (abort), structured outputs, and the device series in
/// `/metrics`.
#[test]
fn serve_on_the_simulated_device_preempts_caches_prefixes_and_aborts() {
    let path = simulated_library_path();
    let v = Vigil::serve_env(
        &[
            "--device",
            "cuda",
            "--num-gpu-blocks-override",
            "12",
            "--max-model-len",
            "160",
        ],
        &[("LD_LIBRARY_PATH", path.as_str())],
    );
    let prompt = "Write a short story about a lighthouse keeper who finds a message in a bottle \
                  washed up on the rocks below the tower, one stormy night in late November.";
    let alone = complete(
        &v,
        json!({"prompt": prompt, "max_tokens": 60, "temperature": 0, "ignore_eos": true}),
    );
    let expected = alone["choices"][0]["text"].as_str().unwrap().to_owned();

    // Prefix cache: the same prompt again reads its full blocks from the cache.
    let again = complete(
        &v,
        json!({"prompt": prompt, "max_tokens": 60, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(again["choices"][0]["text"], expected.as_str());
    let cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let prompt_tokens = again["usage"]["prompt_tokens"].as_u64().unwrap();
    // vLLM's rule: the full blocks of all but the last prompt token.
    assert_eq!(cached, 16 * ((prompt_tokens - 1) / 16), "{again}");
    assert!(cached >= 16, "{again}");

    // Structured output on the device: a constrained request takes its whole row back and is
    // masked on the host, sampled or greedy.
    for temperature in [0.0, 1.0] {
        let held = complete(
            &v,
            json!({"prompt": prompt, "max_tokens": 20, "temperature": temperature, "seed": 1,
                   "structured_outputs": {"regex": "(yes|no|[0-9]{3}-[0-9]{4})"}}),
        );
        let text = held["choices"][0]["text"].as_str().unwrap();
        let phone = text.len() == 8
            && text
                .char_indices()
                .all(|(i, c)| if i == 3 { c == '-' } else { c.is_ascii_digit() });
        assert!(text == "yes" || text == "no" || phone, "{held}");
        assert_eq!(held["choices"][0]["finish_reason"], "stop", "{held}");
    }

    // Four at once need 4 x 5 blocks of 12: some are preempted, and all finish.
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let url = v.url("/v1/completions");
            let body = json!({
                "prompt": format!("{prompt} Chapter {i}."), "max_tokens": 60,
                "temperature": 0, "ignore_eos": true,
            });
            std::thread::spawn(move || http_post(&url, body.to_string().as_bytes(), &[]))
        })
        .collect();
    for c in clients {
        let (status, text) = c.join().unwrap();
        assert_eq!(status, 200, "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["usage"]["completion_tokens"], 60, "{body}");
    }
    let metrics = v.metrics();
    let preemptions = sample(&metrics, "vllm:num_preemptions_total{").unwrap();
    assert!(
        preemptions >= 1.0,
        "no preemption with 12 blocks:\n{metrics}"
    );
    assert!(sample(&metrics, "vllm:prefix_cache_hits_total{").unwrap() >= 16.0);

    // A stream whose client leaves is aborted, and its blocks come back.
    let stream = common::stream_until_first_event(
        v.addr,
        r#"{"prompt": "Count to a thousand:", "max_tokens": 140, "stream": true, "ignore_eos": true}"#,
    );
    drop(stream);
    common::wait_for(
        "the aborted request to leave",
        Duration::from_secs(30),
        || {
            let m = v.metrics();
            let running = sample(&m, "vllm:num_requests_running{").unwrap_or(1.0);
            let usage = sample(&m, "vllm:kv_cache_usage_perc{").unwrap_or(1.0);
            (running == 0.0 && usage == 0.0).then_some(())
        },
    );

    // The device's own series, timed by CUDA events on the simulated stream.
    let metrics = v.metrics();
    assert!(sample(&metrics, "vigil_device_step_busy_seconds_count{").unwrap() > 0.0);
    assert!(sample(&metrics, "vigil_device_step_gap_seconds_count{").unwrap() > 0.0);
    assert!(metrics.contains("vllm:cache_config_info{"), "{metrics}");
    assert!(metrics.contains("num_gpu_blocks=\"12\""), "{metrics}");
    assert!(
        v.log().contains("simulated by vigil-cuda-sim"),
        "{}",
        v.log()
    );
    // Decode steps replay graphs captured at start-up (vLLM's default), and the log says so.
    assert!(
        v.log().contains("captured CUDA graphs of decode steps"),
        "{}",
        v.log()
    );
}

/// `--enforce-eager` (vLLM's flag) serves without CUDA graphs, and says so at start-up.
#[test]
fn enforce_eager_serves_without_graphs() {
    let path = simulated_library_path();
    let v = Vigil::serve_env(
        &[
            "--device",
            "cuda",
            "--enforce-eager",
            "--num-gpu-blocks-override",
            "12",
            "--max-model-len",
            "160",
        ],
        &[("LD_LIBRARY_PATH", path.as_str())],
    );
    let body = complete(
        &v,
        json!({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0,
               "ignore_eos": true}),
    );
    assert_eq!(body["usage"]["completion_tokens"], 8, "{body}");
    let log = v.log();
    assert!(
        log.contains("--enforce-eager: decode steps run without CUDA graphs"),
        "{log}"
    );
    assert!(!log.contains("captured CUDA graphs"), "{log}");
}

/// The CUDA backend keeps its KV cache in bfloat16: another `--kv-cache-dtype` is refused by
/// name with `--device cuda` (it is not silently ignored).
#[test]
fn cuda_refuses_a_kv_cache_dtype_it_does_not_keep() {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["serve", common::require_model(), "--device", "cuda"])
        .args(["--kv-cache-dtype", "float16", "--port", "0"])
        .env("LD_LIBRARY_PATH", simulated_library_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr
            .contains("--kv-cache-dtype float16: the CUDA backend keeps its KV cache in bfloat16"),
        "{stderr}"
    );
}

/// Runs `vigil gpu-profile --case CASE` on the simulated device (profiling on) and returns its
/// JSON line.
fn gpu_profile(case: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["gpu-profile", "--case", case])
        .args(["--model", common::require_model()])
        .env("LD_LIBRARY_PATH", simulated_library_path())
        .env("VIGIL_SIM_PROFILE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("PREDICTED"), "{stdout}");
    let line = stdout.lines().last().expect("a JSON line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// The profile of a decode step counts what the CUDA backend is built to do: at batch 1 the
/// attention is split across CTAs (3 KV heads fill 3 of the simulated device's 132 SMs), so
/// each of the 30 layers launches 8 kernels (RMSNorm twice, RoPE with the KV write, attention,
/// whose last CTA of each split group merges the group, 4 matrix-vector products over the Q4_1 weights as the file stores them, the
/// last taking SiLU·mul of its input as it loads it) and the step 4 more (embedding, final
/// norm, the LM head over the hidden state as it is, since a decode step's rows are all wanted
/// in order, and the argmax, which a graph runs on every row, sampled or greedy); all of them
/// replayed from one CUDA graph captured at start-up; each K/V byte is read once,
/// for all 3 query heads of its GQA group, in 16-byte loads, and the matrix-vector kernels load
/// at least 8 bytes at a time on average; the plan goes up and
/// the results (greedy tokens with their log-probabilities, or a sampled row whole) come back
/// in one copy each through page-locked memory, and the step synchronises once. Its counts are
/// the same from run to run, so the JSON line is too.
#[test]
fn gpu_profile_counts_a_decode_step_the_same_every_run() {
    let first = gpu_profile("default-b1-ctx512");
    assert_eq!(first, gpu_profile("default-b1-ctx512"), "deterministic");
    let cases = first["cases"].as_array().unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["default-b1-ctx512", "default-b1-ctx512-sampled"]);
    let (greedy, sampled) = (&cases[0], &cases[1]);
    assert_eq!(greedy["launches_per_step"], 30 * 8 + 4);
    assert_eq!(sampled["launches_per_step"], 30 * 8 + 4);
    assert_eq!(
        greedy["launches_by_kernel"].get("paged_attention_merge"),
        None
    );
    assert_eq!(greedy["launches_by_kernel"]["gemv_one_q4_1"], 30 * 4);
    assert_eq!(greedy["launches_by_kernel"].get("silu_and_mul"), None);
    for case in cases {
        assert_eq!(case["kv_read_redundancy"], 1.0, "{case}");
        assert_eq!(case["graph_launches_per_step"], 1, "{case}");
        // One upload and one download through page-locked memory, one synchronisation.
        assert_eq!(case["syncs_per_step"], 1, "{case}");
        assert_eq!(case["copies_per_step"], 2, "{case}");
        assert_eq!(case["pageable_copies_per_step"], 0, "{case}");
        let (step, roofline) = (
            case["predicted_step_us"].as_f64().unwrap(),
            case["roofline_us"].as_f64().unwrap(),
        );
        assert!(roofline > 0.0 && step > roofline, "{case}");
        let share = case["roofline_share"].as_f64().unwrap();
        assert!((share - roofline / step).abs() < 1e-3, "{case}");
        let widths = case["mean_access_bytes"].as_object().unwrap();
        let attention = widths["paged_attention"].as_f64().unwrap();
        assert!(
            attention >= 8.0,
            "attention's mean access: {attention} bytes"
        );
        let gemv = widths["gemv_one_q4_1"].as_f64().unwrap();
        assert!(
            gemv >= 8.0,
            "the matrix-vector kernel's mean access: {gemv} bytes"
        );
        for (kernel, bytes) in widths {
            let bytes = bytes.as_f64().unwrap();
            assert!((1.0..=16.0).contains(&bytes), "{kernel}: {bytes}");
        }
    }
}
