//! Command-line errors name the flag and the reason, and exit non-zero without serving.

use crate::common;

use std::process::Command;

use common::{http_post, require_model, Vigil, VIGIL};
use exporter::MinorVersion;

fn fails(args: &[&str]) -> String {
    let out = Command::new(VIGIL)
        .arg("serve")
        .args(args)
        .output()
        .expect("run vigil");
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn show_hidden_flag_lists_every_accepted_value() {
    // vLLM 0.33's operators pass 0.32 (the catalog follows vLLM 0.33); Vigil's own series follow
    // Vigil's version.
    let vigil_prev = MinorVersion::running().previous().unwrap();
    for value in ["0.0", "9.9", "abc", "0.32.0", "v0.32", "0.33", ""] {
        let err = fails(&["--show-hidden-metrics-for-version", value]);
        assert!(
            err.contains("--show-hidden-metrics-for-version"),
            "{value:?}: {err}"
        );
        assert!(err.contains("0.32 (the vllm: series"), "{value:?}: {err}");
        assert!(
            err.contains(&format!("{vigil_prev} (Vigil's own series")),
            "{value:?}: {err}"
        );
    }
}

#[test]
fn bad_values_name_their_flag() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--max-model-len", "0"],
            "--max-model-len",
            "whole number of tokens",
        ),
        (
            &["--max-model-len", "lots"],
            "--max-model-len",
            "not a token count",
        ),
        (
            &["--custom-histogram-buckets", "{\"nope\": [1]}"],
            "--custom-histogram-buckets",
            "unknown histogram bucket family",
        ),
        (
            &[
                "--custom-histogram-buckets",
                "{\"request_latency\": [2, 1]}",
            ],
            "--custom-histogram-buckets",
            "strictly increasing",
        ),
        (
            &["--custom-histogram-buckets", "not json"],
            "--custom-histogram-buckets",
            "not JSON",
        ),
        (
            &["--structured-outputs-config", "guidance"],
            "--structured-outputs-config",
            "not a JSON object",
        ),
        (
            &["--structured-outputs-config", "{\"backend\": \"outlines\"}"],
            "--structured-outputs-config",
            "llguidance",
        ),
        (
            &[
                "--structured-outputs-config",
                "{\"disable_any_whitespace\": true}",
            ],
            "--structured-outputs-config",
            "disable_any_whitespace is not supported",
        ),
        (
            &["--structured-outputs-config", "{\"backnd\": \"guidance\"}"],
            "--structured-outputs-config",
            "unknown key \"backnd\"",
        ),
        (
            &["--gpu-memory-utilization", "1.5"],
            "--gpu-memory-utilization",
            "(0, 1]",
        ),
        (&["--port", "70000"], "--port", "70000"),
        // The model name is a label of every series and a word of every log line: bounded, and
        // never empty or carrying control characters.
        (
            &["--served-model-name", ""],
            "--served-model-name",
            "cannot be empty",
        ),
        (
            &["--served-model-name", "a\nb"],
            "--served-model-name",
            "control characters",
        ),
        (
            &["--served-model-name", &"x".repeat(100_000)],
            "--served-model-name",
            "longer than 256",
        ),
        (&["--host", "not-an-ip"], "--host", "not-an-ip"),
    ];
    for (args, flag, reason) in cases {
        let err = fails(args);
        assert!(
            err.contains(flag) && err.contains(reason),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let err = fails(&[require_model(), "--host", "127.0.0.1", "--port", &port]);
    assert!(
        err.contains("--port") && err.contains("cannot listen"),
        "{err}"
    );
}

/// `DYN_SYSTEM_PORT` equal to `--port` is refused before the model loads, naming both.
#[test]
fn the_system_server_on_the_api_port_is_refused_before_loading() {
    let port = common::free_port().to_string();
    let out = Command::new(VIGIL)
        .args([
            "serve",
            require_model(),
            "--host",
            "127.0.0.1",
            "--port",
            &port,
        ])
        .env("DYN_SYSTEM_PORT", &port)
        .env("RUST_LOG", "info")
        .output()
        .expect("run vigil");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "DYN_SYSTEM_PORT={port} and --port {port} name the same port"
        )),
        "{err}"
    );
    assert!(
        !err.contains("model loaded"),
        "refused only after loading: {err}"
    );
}

#[test]
fn a_missing_model_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    // The default model path is relative: run where it does not exist.
    let out = Command::new(VIGIL)
        .arg("serve")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let looked = dir.path().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        err.contains(&format!("looked at {}", looked.display())),
        "{err}"
    );
    assert!(err.contains("cargo xtask fetch-model"), "{err}");
    let err = fails(&["/nonexistent/model.gguf"]);
    assert!(err.contains("looked at /nonexistent/model.gguf"), "{err}");
}

#[test]
fn bad_model_files_fail_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.gguf");
    std::fs::write(&path, b"GGUF\x03\0\0\0truncated").unwrap();
    let err = fails(&[path.to_str().unwrap()]);
    assert!(
        err.contains("broken.gguf") && err.contains("truncated"),
        "{err}"
    );
    let folder = dir.path().join("hf");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("config.json"), r#"{"architectures":["MistralForCausalLM"],"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":1,"vocab_size":8}"#).unwrap();
    let err = fails(&[folder.to_str().unwrap()]);
    assert!(
        err.contains("config.json") && err.contains("MistralForCausalLM"),
        "{err}"
    );
}

#[test]
fn max_model_len_above_the_models_is_refused() {
    let err = fails(&[require_model(), "--max-model-len", "16k"]);
    assert!(
        err.contains("--max-model-len 16000") && err.contains("8192"),
        "{err}"
    );
}

#[test]
fn probe_flags_are_checked() {
    let err = fails(&["--probe-interval", "0"]);
    assert!(
        err.contains("--probe-interval") && err.contains("between 0.01 and 3600"),
        "{err}"
    );
    let err = fails(&["--probe-interval", "soon"]);
    assert!(
        err.contains("--probe-interval") && err.contains("not a number"),
        "{err}"
    );
}

#[test]
fn check_gpu_without_a_gpu_says_why_and_fails() {
    if std::path::Path::new("/dev/nvidiactl").exists() {
        eprintln!("a GPU driver is present: run `vigil check-gpu` itself");
        return;
    }
    let out = Command::new(VIGIL)
        .arg("check-gpu")
        .output()
        .expect("run vigil");
    assert!(!out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("FAIL NVML readings = nvidia-smi"),
        "{stdout}"
    );
    assert!(stdout.contains("NVML probe off (no_library"), "{stdout}");
    assert!(
        stdout.contains("FAIL CUDA backend") && stdout.contains("libcuda.so.1 cannot be loaded"),
        "{stdout}"
    );
    assert!(stderr.contains("2 of 2 checks failed"), "{stderr}");
    // One section: only its verdict.
    let out = Command::new(VIGIL)
        .args(["check-gpu", "--only", "kernels"])
        .output()
        .expect("run vigil");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("NVML"), "{stdout}");
    assert!(stdout.contains("FAIL CUDA backend"), "{stdout}");
    let out = Command::new(VIGIL)
        .args(["check-gpu", "--only", "everything"])
        .output()
        .expect("run vigil");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--only"),
        "{stderr}"
    );
}

#[test]
fn sched_latency_prints_runqlat_style_histograms_of_a_process() {
    // Watch this test process while a thread of it sleeps and wakes.
    let child = Command::new(VIGIL)
        .args([
            "sched-latency",
            "--pid",
            &std::process::id().to_string(),
            "--duration",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run vigil");
    let sleeper = std::thread::Builder::new()
        .name("vigil-engine".into())
        .spawn(|| {
            for _ in 0..400 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
        .unwrap();
    sleeper.join().unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("role = engine: "), "{text}");
    assert!(
        text.contains("usecs               : count    distribution"),
        "{text}"
    );
}

/// Without a GPU (CI: no NVIDIA driver library either), `--device cuda` refuses to start and says
/// why, and `--device auto` (the default) serves on the CPU and logs why. (On a GPU host,
/// `vigil check-gpu` tests serving on the device instead.)
#[test]
fn device_cuda_without_a_gpu_is_a_start_up_error_and_auto_falls_back_to_the_cpu() {
    if std::path::Path::new("/dev/nvidiactl").exists() {
        eprintln!("a GPU host: this test is for hosts without one (see vigil check-gpu)");
        return;
    }
    let err = fails(&[require_model(), "--port", "0", "--device", "cuda"]);
    assert!(
        err.contains("--device cuda: libcuda.so.1 cannot be loaded"),
        "{err}"
    );
    let vigil = Vigil::serve(&["--device", "auto"]);
    let said =
        "no CUDA: libcuda.so.1 cannot be loaded (no NVIDIA driver on this host); serving on the CPU";
    assert!(vigil.log().contains(said), "{}", vigil.log());
    let (status, _) = http_post(
        &vigil.url("/v1/completions"),
        br#"{"prompt": "Hi", "max_tokens": 2}"#,
        &[],
    );
    assert_eq!(status, 200);
}

/// vLLM's chunked-prefill flags start Vigil: `--no-enable-chunked-prefill` turns chunking off
/// (the default budget then holds a whole prompt of `--max-model-len`, as vLLM's), and a budget
/// given below the context length is refused naming both flags.
#[test]
fn chunked_prefill_flags_follow_vllm() {
    require_model();
    for flag in ["--enable-chunked-prefill", "--no-enable-chunked-prefill"] {
        let v = Vigil::serve(&[flag, "--max-model-len", "4096"]);
        let (status, body) = http_post(
            &v.url("/v1/completions"),
            br#"{"prompt": "The capital of France is", "max_tokens": 2}"#,
            &[],
        );
        assert_eq!(status, 200, "{flag}: {body}");
        let metrics = v.metrics();
        // With chunking, the CPU backend's step budget; without, a whole prompt's.
        let budget = if flag == "--enable-chunked-prefill" {
            256
        } else {
            4096
        };
        let line = metrics
            .lines()
            .find(|l| l.starts_with("dynamo_frontend_model_max_num_batched_tokens{"))
            .unwrap_or_else(|| panic!("{metrics}"));
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(value, budget as f64, "{flag}: {line}");
    }
    let err = fails(&[
        require_model(),
        "--no-enable-chunked-prefill",
        "--max-model-len",
        "4096",
        "--max-num-batched-tokens",
        "1024",
    ]);
    assert!(err.contains("--max-num-batched-tokens (1024)"), "{err}");
    assert!(err.contains("--no-enable-chunked-prefill"), "{err}");
    assert!(err.contains("--max-model-len (4096)"), "{err}");
}

/// A KV cache that cannot hold one request of `--max-model-len` refuses to start, as vLLM's
/// does, naming both numbers and the flags to change (`--num-gpu-blocks-override 1` used to
/// panic, `0` to fail in the warm-up, `4` to start and spin on the first long prompt); so does a
/// CPU cache larger than the memory this process can take (it used to start, then be OOM-killed
/// under traffic).
#[test]
fn a_cache_that_cannot_serve_refuses_to_start() {
    let model = require_model();
    for (blocks, needle) in [
        ("0", "needs at least 2"),
        ("1", "needs at least 2"),
        ("4", "holds 48 tokens (4 blocks of 16"),
    ] {
        let err = fails(&[model, "--num-gpu-blocks-override", blocks]);
        assert!(err.contains(needle), "{blocks}: {err}");
        assert!(err.contains("--num-gpu-blocks-override"), "{blocks}: {err}");
        assert!(!err.contains("panicked"), "{blocks}: {err}");
    }
    let err = fails(&[model, "--num-gpu-blocks-override", "4"]);
    assert!(err.contains("--max-model-len 8192"), "{err}");
    assert!(err.contains("lower --max-model-len to at most 48"), "{err}");
    // What fits serves.
    let v = Vigil::serve(&["--num-gpu-blocks-override", "4", "--max-model-len", "48"]);
    let (status, _) = http_post(
        &v.url("/v1/completions"),
        br#"{"prompt": "Hi", "max_tokens": 2}"#,
        &[],
    );
    assert_eq!(status, 200);
    let err = fails(&[model, "--kv-cache-memory-bytes", "4096G"]);
    assert!(err.contains("the KV cache needs 4096.00 GiB"), "{err}");
    assert!(err.contains("--kv-cache-memory-bytes"), "{err}");
}
