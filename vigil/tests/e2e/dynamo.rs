//! Dynamo's series from Vigil's own serving, checked against known traffic.

use crate::common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::{http_post, promtool_problems, sample, wait_for, Vigil};
use serde_json::{json, Value};

const FRONTEND: &str = "model=\"smol\"";

fn post(v: &Vigil, path: &str, body: &Value) -> (u16, String) {
    http_post(&v.url(path), body.to_string().as_bytes(), &[])
}

/// The completion tokens a streamed response reported in its usage chunk.
fn streamed_usage(text: &str) -> Value {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .find(|c| !c["usage"].is_null())
        .expect("a usage chunk")["usage"]
        .clone()
}

#[test]
fn frontend_and_component_series_count_the_traffic() {
    let v = Vigil::serve(&[
        "--served-model-name",
        "Smol",
        "--dynamo-namespace",
        "my-ns.v1",
    ]);
    let mut prompt_tokens = 0.0;
    let mut completion_tokens = 0.0;
    let mut request_bytes = 0.0;
    // Two unary completions.
    for (prompt, n) in [("The capital of France is", 5), ("One, two, three,", 7)] {
        let body = json!({"model": "Smol", "prompt": prompt, "max_tokens": n, "ignore_eos": true});
        request_bytes += body.to_string().len() as f64;
        let (status, text) = post(&v, "/v1/completions", &body);
        assert_eq!(status, 200, "{text}");
        let usage = &serde_json::from_str::<Value>(&text).unwrap()["usage"];
        prompt_tokens += usage["prompt_tokens"].as_f64().unwrap();
        completion_tokens += usage["completion_tokens"].as_f64().unwrap();
        assert_eq!(usage["completion_tokens"], n);
    }
    // One streamed chat completion.
    let body = json!({"model": "Smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6,
                      "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
    request_bytes += body.to_string().len() as f64;
    let (status, text) = post(&v, "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{text}");
    let usage = streamed_usage(&text);
    prompt_tokens += usage["prompt_tokens"].as_f64().unwrap();
    completion_tokens += usage["completion_tokens"].as_f64().unwrap();
    // One invalid request for a served model: a validation error.
    let body = json!({"model": "Smol", "prompt": "x", "max_tokens": -1});
    request_bytes += body.to_string().len() as f64;
    assert_eq!(post(&v, "/v1/completions", &body).0, 400);
    // One for an unknown model: 404, and no series (its name is the client's, not ours).
    assert_eq!(
        post(
            &v,
            "/v1/completions",
            &json!({"model": "other", "prompt": "x"})
        )
        .0,
        404
    );

    let m = v.metrics();
    let requests =
        |labels: &str| sample(&m, &format!("dynamo_frontend_requests_total{{{labels}}}"));
    assert_eq!(
        requests("endpoint=\"completions\",error_type=\"\",model=\"smol\",request_type=\"unary\",status=\"success\""),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        requests("endpoint=\"chat_completions\",error_type=\"\",model=\"smol\",request_type=\"stream\",status=\"success\""),
        Some(1.0)
    );
    assert_eq!(
        requests("endpoint=\"completions\",error_type=\"validation\",model=\"smol\",request_type=\"unary\",status=\"error\""),
        Some(1.0)
    );
    assert!(!m.contains("model=\"other\""));
    let f = |name: &str| sample(&m, &format!("{name}{{{FRONTEND}}}"));
    assert_eq!(f("dynamo_frontend_active_requests"), Some(0.0));
    assert_eq!(f("dynamo_frontend_inflight_requests"), Some(0.0));
    assert_eq!(f("dynamo_frontend_queued_requests"), Some(0.0));
    assert_eq!(
        f("dynamo_frontend_output_tokens_total"),
        Some(completion_tokens)
    );
    assert_eq!(
        f("dynamo_frontend_request_duration_seconds_count"),
        Some(4.0)
    );
    assert_eq!(
        f("dynamo_frontend_time_to_first_token_seconds_count"),
        Some(3.0)
    );
    assert_eq!(f("dynamo_frontend_input_sequence_tokens_count"), Some(3.0));
    assert_eq!(
        f("dynamo_frontend_input_sequence_tokens_sum"),
        Some(prompt_tokens)
    );
    assert_eq!(f("dynamo_frontend_output_sequence_tokens_count"), Some(3.0));
    assert_eq!(
        f("dynamo_frontend_output_sequence_tokens_sum"),
        Some(completion_tokens)
    );
    assert_eq!(f("dynamo_frontend_cached_tokens_count"), Some(3.0));
    // One inter-token latency per token after each request's first.
    assert_eq!(
        f("dynamo_frontend_inter_token_latency_seconds_count"),
        Some(completion_tokens - 3.0)
    );
    // Dynamo's log buckets, written as Dynamo's Rust exporter writes them: `le` after the
    // other labels, Rust's shortest numbers, `_sum` before `_count`, no `_created`.
    assert!(m.contains(
        "dynamo_frontend_time_to_first_token_seconds_bucket{model=\"smol\",le=\"0.0022\"}"
    ));
    assert!(
        m.contains("dynamo_frontend_request_duration_seconds_bucket{model=\"smol\",le=\"510\"}")
    );
    assert!(m.contains("dynamo_frontend_model_kv_cache_block_size{model=\"smol\"} 16\n"));
    let lines: Vec<&str> = m.lines().collect();
    let sum = lines
        .iter()
        .position(|l| l.starts_with("dynamo_frontend_request_duration_seconds_sum{"))
        .unwrap();
    assert!(lines[sum + 1].starts_with("dynamo_frontend_request_duration_seconds_count{"));
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("dynamo_") && l.contains("_created")),
        "Dynamo writes no _created series"
    );
    // vLLM's families keep prometheus_client's `_created`.
    assert!(m.contains("vllm:prompt_tokens_created{"));
    // The model's configuration.
    assert_eq!(f("dynamo_frontend_model_context_length"), Some(8192.0));
    assert_eq!(f("dynamo_frontend_model_kv_cache_block_size"), Some(16.0));
    assert_eq!(f("dynamo_frontend_model_max_num_seqs"), Some(256.0));
    // The CPU backend's step budget.
    assert_eq!(
        f("dynamo_frontend_model_max_num_batched_tokens"),
        Some(256.0)
    );
    // 1 GiB of f16 K and V (16 tokens x 30 layers x 2 x 3 heads x 64 dims x 2 bytes a block).
    assert_eq!(f("dynamo_frontend_model_total_kv_blocks"), Some(2912.0));
    // One engine: requests never migrate (Dynamo's own HTTP metrics test asserts the series).
    assert_eq!(f("dynamo_frontend_model_migration_limit"), Some(0.0));

    // The engine endpoint, as a Dynamo component (namespace sanitized as Dynamo does).
    let c = "dynamo_component=\"backend\",dynamo_endpoint=\"generate\",dynamo_namespace=\"my_ns_v1\",model=\"smol\",model_name=\"smol\"";
    let comp = |name: &str| sample(&m, &format!("{name}{{{c}}}"));
    assert_eq!(comp("dynamo_component_requests_total"), Some(4.0), "{m}");
    assert_eq!(comp("dynamo_component_inflight_requests"), Some(0.0));
    assert_eq!(
        comp("dynamo_component_request_duration_seconds_count"),
        Some(4.0)
    );
    assert_eq!(
        comp("dynamo_component_request_bytes_total"),
        Some(request_bytes)
    );
    assert!(comp("dynamo_component_response_bytes_total") > Some(0.0));
    assert!(sample(&m, "dynamo_component_uptime_seconds ") > Some(0.0));
    let problems = promtool_problems(&m);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn a_disconnect_counts_as_cancelled() {
    let v = Vigil::serve(&["--served-model-name", "smol"]);
    let body = json!({"prompt": "Tell me a long story.", "max_tokens": 2000, "stream": true, "ignore_eos": true}).to_string();
    let stream = common::stream_until_first_event(v.addr, &body);
    stream.shutdown(std::net::Shutdown::Both).unwrap();
    let m = wait_for(
        "the cancellation to be counted",
        Duration::from_secs(30),
        || {
            let m = v.metrics();
            (sample(&m, "dynamo_frontend_requests_total{endpoint=\"completions\",error_type=\"cancelled\",model=\"smol\",request_type=\"stream\",status=\"error\"}") == Some(1.0))
            .then_some(m)
        },
    );
    assert_eq!(
        sample(&m, "dynamo_frontend_disconnected_clients "),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "dynamo_frontend_active_requests{model=\"smol\"}"),
        Some(0.0)
    );
}

/// What [`spawn_with_system_server`] returns.
struct Spawned {
    child: std::process::Child,
    /// The system server's address, as soon as it listens.
    system: String,
    /// The log lines before that.
    early_log: Vec<String>,
    /// The later log lines, as they come.
    log: std::sync::mpsc::Receiver<String>,
}

/// `vigil serve` with the system status server on a free port.
fn spawn_with_system_server(extra_env: &[(&str, &str)]) -> Spawned {
    let mut cmd = std::process::Command::new(common::VIGIL);
    cmd.args([
        "serve",
        common::require_model(),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ])
    .env("DYN_SYSTEM_PORT", "0")
    .env_remove("DYN_SYSTEM_HOST")
    .env("RUST_LOG", "info")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn vigil");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut early_log = Vec::new();
    let system = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the system status server starts");
        if let Some(rest) = line
            .split("system status server listening on http://")
            .nth(1)
        {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
        early_log.push(line);
    };
    Spawned {
        child,
        system,
        early_log,
        log: rx,
    }
}

fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, what: &str) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no log line with {what:?}"));
        if line.contains(what) {
            return line;
        }
    }
}

#[test]
fn the_system_status_server_tells_the_truth_about_readiness() {
    let Spawned {
        mut child,
        system: sys,
        log: rx,
        ..
    } = spawn_with_system_server(&[]);
    // Without DYN_SYSTEM_HOST it listens where the API does (--host 127.0.0.1), not on every
    // interface.
    assert!(sys.starts_with("127.0.0.1:"), "{sys}");
    let get = |path: &str| common::http_get(&format!("http://{sys}{path}"), None);
    // Loading: not ready yet (the model loads and a warm-up step runs after this listener).
    let (status, _, body) = get("/health");
    assert_eq!(status, 503, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "notready");
    let api = wait_for_line(&rx, "listening on http://");
    let api = api
        .split("listening on http://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    // Serving: ready, on both routes, with Dynamo's body.
    for path in ["/health", "/live"] {
        let (status, _, body) = get(path);
        assert_eq!(status, 200, "{path}: {body}");
        let h: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(h["status"], "ready");
        assert_eq!(h["endpoints"]["generate"], "ready");
        assert!(
            h["uptime"]["secs"].is_u64() && h["uptime"]["nanos"].is_u64(),
            "{h}"
        );
    }
    // The same exporter: vllm:, dynamo_ and probe series.
    let (status, _, metrics) = get("/metrics");
    assert_eq!(status, 200);
    for family in [
        "vllm:num_requests_running",
        "dynamo_frontend_model_context_length",
        "dynamo_component_uptime_seconds",
        "vigil_probe_up",
    ] {
        assert!(metrics.contains(family), "{family} missing");
    }
    let (status, _, body) = get("/nope");
    assert_eq!((status, body.as_str()), (404, "Route not found"));

    // Draining: a request in flight, then SIGTERM: not ready while it finishes.
    let body = json!({"prompt": "Count to a thousand:", "max_tokens": 200, "ignore_eos": true, "stream": true}).to_string();
    let stream = common::stream_until_first_event(&api, &body);
    // SAFETY: kill only sends a signal to our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_for_line(&rx, "draining");
    let (status, _, body) = get("/health");
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "notready"
    );
    drop(stream);
    let _ = child.wait();
}

#[test]
fn the_deprecated_enable_flag_warns() {
    let mut s = spawn_with_system_server(&[("DYN_SYSTEM_ENABLED", "true")]);
    let _ = s.child.kill();
    let _ = s.child.wait();
    assert!(
        s.early_log
            .iter()
            .any(|l| l.contains("DYN_SYSTEM_ENABLED is deprecated")),
        "{:?}",
        s.early_log
    );
}
