//! The `vllm:` series after known traffic, checked against vLLM's own definitions.
//!
//! The `vllm:` series after known traffic, every expected value computed here from vLLM's own
//! definitions (written out beside each, with the vLLM source it follows) and from what the
//! API answered (usage), never from Vigil's notion of a step.
//!
//! The definitions (vLLM 0.33):
//! - `vllm/v1/metrics/stats.py`, `IterationStats.update_from_output`: a request's prompt
//!   counts when its first token comes (`is_prefilling`), whole (`prompt_token_stats.total`
//!   to `vllm:prompt_tokens`; `.computed`, the part not read from the prefix cache, and
//!   `.local_cache_hit` to `vllm:prompt_tokens_by_source`); every new token is a generation
//!   token; each later token gives one inter-token latency.
//! - `vllm/v1/metrics/loggers.py`, `PrometheusStatLogger.record`: per engine step with output,
//!   one `vllm:iteration_tokens_total` observation of `prompt computed + generation tokens`.
//! - `IterationStats.update_from_finished_request` and `PrometheusStatLogger.record`: per
//!   finished engine request one observation each of e2e, queue, prefill, decode, inference,
//!   time per output token, prompt tokens, generation tokens, preemptions, prefill KV computed
//!   tokens (`prompt - cached`) and `request_params_max_tokens` (its `sampling_params.max_tokens`:
//!   the client's `max_tokens` capped by the context left, or that room when absent, as
//!   `vllm/entrypoints/utils.py`'s `get_max_tokens` sets it); one
//!   `vllm:request_success_total` for its finish reason.
//! - `vllm/v1/engine/parallel_sampling.py`, `ParentRequest.observe_finished_request`: once per
//!   client request (per prompt), when its last choice finishes, `request_params_n` observes
//!   its `n` (1 included) and `request_max_num_generation_tokens` the most tokens one of its
//!   choices generated.
//! - `vllm/v1/core/kv_cache_manager.py` and `PrefixCacheStats`: at admission a request
//!   queries its whole prompt and hits the full blocks already cached, never its last token
//!   (so `16 * floor((prompt - 1) / 16)` for a prompt sent a second time, blocks of 16).
//! - `vllm/v1/engine/parent_request.py`: `n` choices are `n` engine requests.

use crate::common;

use common::{sample, Vigil};
use serde_json::{json, Value};

const BLOCK: u64 = 16;

fn post(v: &Vigil, path: &str, body: Value) -> Value {
    v.post_ok(path, &body)
}

/// What vLLM's definitions make of one engine request.
#[derive(Default)]
struct Expected {
    engine_requests: u64,
    client_requests: u64,
    prompt: u64,
    cached: u64,
    generated: u64,
    /// Inter-token latencies: every token after a request's first.
    itl: u64,
    /// Effective `max_tokens` summed over engine requests.
    params_max_tokens: u64,
    /// The longest choice of each client request, summed.
    max_generation: u64,
    params_n: u64,
    by_reason: [(&'static str, u64); 2],
    /// Engine steps with output (known exactly while requests run one at a time).
    steps: u64,
}

impl Expected {
    /// One engine request: its prompt, cached prompt tokens, tokens generated, effective
    /// `max_tokens`, finish reason.
    fn engine_request(&mut self, prompt: u64, cached: u64, generated: u64, max: u64, reason: &str) {
        self.engine_requests += 1;
        self.prompt += prompt;
        self.cached += cached;
        self.generated += generated;
        self.itl += generated.saturating_sub(1);
        self.params_max_tokens += max;
        let slot = self
            .by_reason
            .iter_mut()
            .find(|(r, _)| *r == reason)
            .unwrap();
        slot.1 += 1;
    }

    /// One client request with `n` choices, the longest of which generated `longest` tokens.
    fn client_request(&mut self, n: u64, longest: u64) {
        self.client_requests += 1;
        self.params_n += n;
        self.max_generation += longest;
    }
}

#[test]
fn known_traffic_gives_vllms_values_for_every_determined_series() {
    let v = Vigil::serve(&["--served-model-name", "m", "--block-size", "16"]);
    let l = "{engine=\"0\",model_name=\"m\"}";
    let max_model_len = serde_json::from_str::<Value>(&v.get("/v1/models", None).2).unwrap()
        ["data"][0]["max_model_len"]
        .as_u64()
        .unwrap();
    let mut e = Expected {
        by_reason: [("length", 0), ("stop", 0)],
        ..Expected::default()
    };

    // 1. Ten requests of a 9-token prompt and 10 output tokens, one at a time. Nine tokens
    //    fill no block: nothing is cached. Each is 10 steps with output, the first with the
    //    9 prompt tokens: 19 iteration tokens a request (190 for the ten).
    for i in 0..10u32 {
        let prompt: Vec<u32> = (0..9).map(|t| 2000 + 50 * i + t).collect();
        let b = post(
            &v,
            "/v1/completions",
            json!({"prompt": prompt, "max_tokens": 10, "ignore_eos": true, "temperature": 0}),
        );
        assert_eq!(b["usage"]["completion_tokens"], 10);
        e.engine_request(9, 0, 10, 10, "length");
        e.client_request(1, 10);
        e.steps += 10;
    }
    // 2. A 40-token prompt twice: the second reads 32 tokens (two full blocks) from the cache.
    let long: Vec<u32> = (0..40).map(|t| 3000 + 7 * t).collect();
    for round in 0..2 {
        let b = post(
            &v,
            "/v1/completions",
            json!({"prompt": long, "max_tokens": 3, "ignore_eos": true, "temperature": 0}),
        );
        let cached = if round == 0 { 0 } else { BLOCK * (39 / BLOCK) };
        assert_eq!(b["usage"]["prompt_tokens_details"]["cached_tokens"], cached);
        e.engine_request(40, cached, 3, 3, "length");
        e.client_request(1, 3);
        e.steps += 3;
    }
    // 3. A stop string, and a chat request without max_tokens (its effective max_tokens is
    //    what the context leaves); their lengths come from the usage the API reported.
    let b = post(
        &v,
        "/v1/completions",
        json!({"prompt": "The capital of France is", "max_tokens": 30, "temperature": 0, "stop": ["."]}),
    );
    assert_eq!(b["choices"][0]["finish_reason"], "stop");
    let (p, g) = usage(&b);
    e.engine_request(p, 0, g, 30, "stop");
    e.client_request(1, g);
    e.steps += g;
    let b = post(
        &v,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Name a colour."}], "temperature": 0, "seed": 3}),
    );
    let (p, g) = usage(&b);
    let reason = b["choices"][0]["finish_reason"].as_str().unwrap();
    let reason = if reason == "stop" { "stop" } else { "length" };
    e.engine_request(p, 0, g, max_model_len - p, reason);
    e.client_request(1, g);
    e.steps += g;

    check(&v.metrics(), l, &e, true);

    // 4. n = 2: two engine requests of one client request, in steps together (how many
    //    steps is the scheduler's business; everything else is still determined).
    let prompt: Vec<u32> = (0..9).map(|t| 4000 + t).collect();
    let b = post(
        &v,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 4, "ignore_eos": true, "temperature": 0.8, "seed": 5, "n": 2}),
    );
    assert_eq!(b["usage"]["completion_tokens"], 8);
    for _ in 0..2 {
        e.engine_request(9, 0, 4, 4, "length");
    }
    e.client_request(2, 4);
    // Between 4 steps (together throughout) and 8 (one after the other).
    e.steps += 4;
    check(&v.metrics(), l, &e, false);
    let count = sample(
        &v.metrics(),
        &format!("vllm:iteration_tokens_total_count{l}"),
    )
    .unwrap() as u64;
    assert!(
        (e.steps..=e.steps + 4).contains(&count),
        "{count} steps with output"
    );
}

/// Prompt and completion tokens of a one-choice response.
fn usage(b: &Value) -> (u64, u64) {
    (
        b["usage"]["prompt_tokens"].as_u64().unwrap(),
        b["usage"]["completion_tokens"].as_u64().unwrap(),
    )
}

fn check(m: &str, l: &str, e: &Expected, steps_known: bool) {
    let get = |name: &str| {
        sample(m, &format!("{name}{l}")).unwrap_or_else(|| panic!("no {name}{l}")) as u64
    };
    let with = |name: &str, key: &str, value: &str| {
        // Labels are written in name order.
        let mut labels = [("engine", "0"), ("model_name", "m"), (key, value)];
        labels.sort();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let prefix = format!("{name}{{{}}}", labels.join(","));
        sample(m, &prefix).unwrap_or_else(|| panic!("no {prefix}")) as u64
    };
    let computed = e.prompt - e.cached;
    // Counters.
    assert_eq!(get("vllm:prompt_tokens_total"), e.prompt, "prompt tokens");
    assert_eq!(
        get("vllm:generation_tokens_total"),
        e.generated,
        "generation"
    );
    assert_eq!(
        with(
            "vllm:prompt_tokens_by_source_total",
            "source",
            "local_compute"
        ),
        computed
    );
    assert_eq!(
        with(
            "vllm:prompt_tokens_by_source_total",
            "source",
            "local_cache_hit"
        ),
        e.cached
    );
    assert_eq!(get("vllm:prompt_tokens_cached_total"), e.cached);
    assert_eq!(get("vllm:prefix_cache_queries_total"), e.prompt, "queries");
    assert_eq!(get("vllm:prefix_cache_hits_total"), e.cached, "hits");
    assert_eq!(get("vllm:num_preemptions_total"), 0);
    for (reason, n) in e.by_reason {
        assert_eq!(
            with("vllm:request_success_total", "finished_reason", reason),
            n,
            "{reason}"
        );
    }
    // Iteration tokens: the sum is determined by the traffic alone.
    assert_eq!(
        get("vllm:iteration_tokens_total_sum"),
        computed + e.generated,
        "iteration tokens"
    );
    if steps_known {
        assert_eq!(get("vllm:iteration_tokens_total_count"), e.steps, "steps");
    }
    // Per token.
    assert_eq!(
        get("vllm:time_to_first_token_seconds_count"),
        e.engine_requests
    );
    assert_eq!(get("vllm:inter_token_latency_seconds_count"), e.itl, "ITL");
    // Per finished engine request.
    for h in [
        "e2e_request_latency_seconds",
        "request_queue_time_seconds",
        "request_prefill_time_seconds",
        "request_decode_time_seconds",
        "request_inference_time_seconds",
        "request_time_per_output_token_seconds",
        "request_num_preemptions",
    ] {
        assert_eq!(
            get(&format!("vllm:{h}_count")),
            e.engine_requests,
            "{h} count"
        );
    }
    for (h, sum) in [
        ("request_prompt_tokens", e.prompt),
        ("request_generation_tokens", e.generated),
        ("request_params_max_tokens", e.params_max_tokens),
        ("request_prefill_kv_computed_tokens", computed),
        ("request_num_preemptions", 0),
    ] {
        assert_eq!(
            get(&format!("vllm:{h}_count")),
            e.engine_requests,
            "{h} count"
        );
        assert_eq!(get(&format!("vllm:{h}_sum")), sum, "{h} sum");
    }
    // Per client request.
    assert_eq!(get("vllm:request_params_n_count"), e.client_requests);
    assert_eq!(get("vllm:request_params_n_sum"), e.params_n);
    assert_eq!(
        get("vllm:request_max_num_generation_tokens_count"),
        e.client_requests
    );
    assert_eq!(
        get("vllm:request_max_num_generation_tokens_sum"),
        e.max_generation
    );
    // Idle again.
    assert_eq!(get("vllm:num_requests_running"), 0);
    assert_eq!(get("vllm:num_requests_waiting"), 0);
}
