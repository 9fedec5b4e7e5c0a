//! The OpenAI-compatible API of `vigil serve` over real HTTP, and the series it moves.
//!
//! The OpenAI-compatible API of `vigil serve` with the default model, over real HTTP, and the
//! vllm: series it moves.

use crate::common;

use std::time::Duration;

use common::{http_post, sample, wait_for, Vigil};
use serde_json::{json, Value};

fn post(v: &Vigil, path: &str, body: Value) -> (u16, Value) {
    v.post_json(path, &body)
}

fn assert_error(status: u16, body: &Value, want_status: u16, needle: &str) {
    assert_eq!(status, want_status, "{body}");
    let e = &body["error"];
    assert_eq!(e["code"], want_status, "{body}");
    assert!(
        e["type"].is_string() && e["message"].as_str().unwrap().contains(needle),
        "{body}"
    );
}

/// Sends `request` as is (from another thread, ignoring write errors: the server may answer and
/// close before reading it all) and returns the whole response.
fn raw_http(v: &Vigil, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(v.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let request = request.as_bytes().to_vec();
    let w = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let _ = w.join();
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn greedy_completion_and_its_metrics() {
    let v = Vigil::serve(&["--served-model-name", "smol"]);
    let (status, body) = post(
        &v,
        "/v1/completions",
        json!({"model": "smol", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert!(
        body["choices"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Paris"),
        "{body}"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["prompt_tokens"], 5);
    assert_eq!(body["usage"]["completion_tokens"], 6);
    let m = v.metrics();
    let l = "{engine=\"0\",model_name=\"smol\"}";
    assert_eq!(
        sample(
            &m,
            "vllm:request_success_total{engine=\"0\",finished_reason=\"length\""
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, &format!("vllm:prompt_tokens_total{l}")),
        Some(5.0)
    );
    assert_eq!(
        sample(&m, &format!("vllm:generation_tokens_total{l}")),
        Some(6.0)
    );
    assert_eq!(
        sample(&m, &format!("vllm:time_to_first_token_seconds_count{l}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, &format!("vllm:inter_token_latency_seconds_count{l}")),
        Some(5.0)
    );
    assert_eq!(
        sample(&m, &format!("vllm:e2e_request_latency_seconds_count{l}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, &format!("vllm:request_generation_tokens_sum{l}")),
        Some(6.0)
    );
    assert_eq!(
        sample(&m, &format!("vllm:request_prompt_tokens_sum{l}")),
        Some(5.0)
    );
    assert_eq!(
        sample(&m, &format!("vllm:request_params_max_tokens_sum{l}")),
        Some(6.0)
    );
    // vLLM's iteration tokens: six steps made a token each; the first also counts the 5
    // prompt tokens it computed (`prompt_token_stats.computed + num_generation_tokens`).
    assert_eq!(
        sample(&m, &format!("vllm:iteration_tokens_total_sum{l}")),
        Some(11.0)
    );
    assert_eq!(
        sample(&m, &format!("vllm:iteration_tokens_total_count{l}")),
        Some(6.0)
    );
    assert_eq!(
        sample(&m, &format!("vllm:num_requests_running{l}")),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, &format!("vllm:kv_cache_usage_perc{l}")),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, &format!("vllm:prefix_cache_queries_total{l}")),
        Some(5.0)
    );

    // The same prompt again: its first (and only full) block... is not full at 5 tokens, so no
    // hit; a 40-token prompt shares two full blocks the second time.
    let long = "one two three four five six seven eight nine ten ".repeat(4);
    for _ in 0..2 {
        let (status, _) = post(
            &v,
            "/v1/completions",
            json!({"prompt": long, "max_tokens": 1}),
        );
        assert_eq!(status, 200);
    }
    let m = v.metrics();
    assert!(sample(&m, &format!("vllm:prefix_cache_hits_total{l}")).unwrap() >= 16.0);
}

#[test]
fn chat_streaming_and_not() {
    let v = Vigil::serve(&["--served-model-name", "smol"]);
    let msg = json!([{"role": "user", "content": "Say hello."}]);
    let (status, body) = post(
        &v,
        "/v1/chat/completions",
        json!({"messages": msg, "max_tokens": 5, "n": 2, "seed": 1}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"].as_array().unwrap().len(), 2);
    assert_eq!(body["choices"][1]["message"]["role"], "assistant");
    assert_eq!(body["usage"]["completion_tokens"], 10);

    let req = json!({"messages": msg, "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}});
    let (status, text) = http_post(
        &v.url("/v1/chat/completions"),
        req.to_string().as_bytes(),
        &[],
    );
    assert_eq!(status, 200);
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let finish = chunks
        .iter()
        .find(|c| !c["choices"][0]["finish_reason"].is_null())
        .unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 4);
}

/// The `data:` chunks of an SSE response, after checking it ends with `[DONE]`.
fn sse_chunks(text: &str) -> Vec<Value> {
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// A request that ends on a stop string ends in the engine at the token that completed it: its
/// response says which stop ended it (`stop_reason`), and its usage, its cached tokens and the
/// counters come from the engine's finish event, complete when the response arrives.
#[test]
fn stop_strings_and_stop_tokens_end_with_stop_and_their_reason() {
    let v = Vigil::serve(&["--served-model-name", "m"]);
    let l = "{engine=\"0\",model_name=\"m\"}";
    let prompt =
        "one two three four five six seven eight nine ten ".repeat(4) + "The capital of France is";
    let (_, tokenized) = post(&v, "/tokenize", json!({"prompt": prompt}));
    let prompt_len = tokenized["count"].as_u64().unwrap();
    let mut generated = 0;
    for round in 0..2u64 {
        let (status, body) = post(
            &v,
            "/v1/completions",
            json!({"prompt": prompt, "max_tokens": 30, "temperature": 0, "stop": ["."]}),
        );
        assert_eq!(status, 200, "{body}");
        let c = &body["choices"][0];
        assert_eq!(c["finish_reason"], "stop", "{body}");
        assert_eq!(c["stop_reason"], ".", "{body}");
        assert!(!c["text"].as_str().unwrap().contains('.'), "{body}");
        // vLLM's prefix cache serves whole blocks of 16 tokens, and never the last prompt token.
        let cached = if round == 0 {
            0
        } else {
            (prompt_len - 1) / 16 * 16
        };
        assert_eq!(
            body["usage"]["prompt_tokens_details"]["cached_tokens"], cached,
            "{body}"
        );
        generated += body["usage"]["completion_tokens"].as_u64().unwrap();
        // Counted by the time the response arrives, and only up to the stop string's token.
        let m = v.metrics();
        assert_eq!(
            sample(
                &m,
                "vllm:request_success_total{engine=\"0\",finished_reason=\"stop\""
            ),
            Some((round + 1) as f64)
        );
        assert_eq!(
            sample(&m, &format!("vllm:generation_tokens_total{l}")),
            Some(generated as f64)
        );
        assert_eq!(
            sample(&m, "dynamo_frontend_cached_tokens_sum{model=\"m\"}"),
            Some(cached as f64),
            "the second request's cached tokens"
        );
    }

    // The stop string kept in the output, when asked.
    let (_, body) = post(
        &v,
        "/v1/completions",
        json!({"prompt": "The capital of France is", "max_tokens": 30, "temperature": 0,
               "stop": ["."], "include_stop_str_in_output": true}),
    );
    assert!(
        body["choices"][0]["text"].as_str().unwrap().ends_with('.'),
        "{body}"
    );
    assert_eq!(body["choices"][0]["stop_reason"], ".");

    // A stop token id: the token that ended it is the stop reason. The greedy continuation's
    // second token is made a stop token.
    let (_, first) = post(
        &v,
        "/v1/completions",
        json!({"prompt": [1, 504, 3575, 282, 4649, 314], "max_tokens": 2, "temperature": 0}),
    );
    let (_, ids) = post(
        &v,
        "/tokenize",
        json!({"prompt": first["choices"][0]["text"], "add_special_tokens": false}),
    );
    assert_eq!(
        ids["count"], 2,
        "the two tokens' text tokenizes back to them: {ids}"
    );
    let stop_id = ids["tokens"][1].as_u64().unwrap();
    let (_, body) = post(
        &v,
        "/v1/completions",
        json!({"prompt": [1, 504, 3575, 282, 4649, 314], "max_tokens": 10, "temperature": 0,
               "stop_token_ids": [stop_id]}),
    );
    let c = &body["choices"][0];
    assert_eq!(c["finish_reason"], "stop", "{body}");
    assert_eq!(c["stop_reason"], stop_id, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 2, "{body}");
    // Running out of tokens has no stop reason.
    let (_, body) = post(
        &v,
        "/v1/completions",
        json!({"prompt": "Hi", "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert!(body["choices"][0]["stop_reason"].is_null(), "{body}");
}

/// Streams as vLLM sends them: the finish reason rides on the chunk with the last text (no
/// empty chunk after it), `continuous_usage_stats` puts the counts so far on every chunk, and
/// `stream_options` without `stream: true` is refused.
#[test]
fn streams_finish_on_their_last_content_chunk_with_continuous_usage() {
    let v = Vigil::serve(&[]);
    for (path, body) in [
        (
            "/v1/completions",
            json!({"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 5, "temperature": 0}),
        ),
    ] {
        let mut req = body.clone();
        req["stream"] = json!(true);
        req["stream_options"] = json!({"include_usage": true, "continuous_usage_stats": true});
        let (status, text) = http_post(&v.url(path), req.to_string().as_bytes(), &[]);
        assert_eq!(status, 200, "{text}");
        let chunks = sse_chunks(&text);
        let (usage_chunk, content) = chunks.split_last().unwrap();
        assert!(usage_chunk["choices"].as_array().unwrap().is_empty());
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);
        let last = content.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "length", "{text}");
        let piece = |c: &Value| {
            let ch = &c["choices"][0];
            ch.get("text")
                .or_else(|| ch["delta"].get("content"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        assert!(
            !piece(last).is_empty(),
            "the last chunk carries text: {text}"
        );
        // Only the last content chunk finishes.
        assert!(content[..content.len() - 1]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null()));
        // Every chunk has the usage so far; completion tokens never go down and end at 5.
        let mut previous = 0;
        for c in content {
            let u = &c["usage"];
            let done = u["completion_tokens"].as_u64().unwrap();
            assert!(done >= previous, "{text}");
            assert_eq!(
                u["total_tokens"].as_u64().unwrap(),
                u["prompt_tokens"].as_u64().unwrap() + done
            );
            previous = done;
        }
        assert_eq!(previous, 5);
        // The same text as without streaming.
        let (_, whole) = post(&v, path, body.clone());
        let whole_text = whole["choices"][0]
            .get("text")
            .or_else(|| whole["choices"][0]["message"].get("content"))
            .and_then(Value::as_str)
            .unwrap()
            .to_owned();
        let streamed: String = content.iter().map(piece).collect();
        assert_eq!(streamed, whole_text);

        let mut bad = body.clone();
        bad["stream_options"] = json!({"include_usage": true});
        let (status, err) = post(&v, path, bad);
        assert_error(status, &err, 400, "stream=True");
    }
}

#[test]
fn bad_requests_get_openai_errors() {
    let v = Vigil::serve(&["--served-model-name", "smol", "--max-model-len", "64"]);
    let (s, b) = post(
        &v,
        "/v1/completions",
        json!({"model": "gpt-4", "prompt": "x"}),
    );
    // vLLM 0.34's words for it, naming the field.
    assert_error(
        s,
        &b,
        404,
        "The model `gpt-4` does not exist. Valid aliases: smol.",
    );
    assert_eq!(b["error"]["param"], "model", "{b}");
    // Each refusal names the field the client sent.
    let msg = json!([{"role": "user", "content": "Hi"}]);
    for (body, field) in [
        (
            json!({"messages": msg, "logprobs": true, "top_logprobs": -1}),
            "top_logprobs",
        ),
        (
            json!({"messages": msg, "max_completion_tokens": 0}),
            "max_completion_tokens",
        ),
        (json!({"messages": msg, "max_tokens": 0}), "max_tokens"),
    ] {
        let (s, b) = post(&v, "/v1/chat/completions", body);
        assert_error(s, &b, 400, field);
        assert_eq!(b["error"]["param"], field, "{b}");
    }
    // `json_schema` must have a name (vLLM's `JsonSchemaResponseFormat`).
    let (s, b) = post(
        &v,
        "/v1/completions",
        json!({"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}}),
    );
    assert_error(s, &b, 400, "json_schema.name is required");
    assert_eq!(b["error"]["param"], "response_format", "{b}");
    let (s, b) = post(
        &v,
        "/v1/completions",
        json!({"prompt": "word ".repeat(100), "max_tokens": 4}),
    );
    assert_error(s, &b, 400, "maximum context length is 64 tokens");
    assert_eq!(b["error"]["param"], "input_tokens");
    let (s, b) = post(
        &v,
        "/v1/completions",
        json!({"prompt": "x", "max_tokens": "many"}),
    );
    assert_error(s, &b, 400, "max_tokens");
    let (s, b) = post(
        &v,
        "/v1/completions",
        json!({"prompt": "x", "max_tokens": -3}),
    );
    assert_error(s, &b, 400, "max_tokens");
    let (s, b) = post(
        &v,
        "/v1/completions",
        json!({"prompt": "x", "temperature": -1}),
    );
    assert_error(s, &b, 400, "temperature");
    let (s, b) = post(&v, "/v1/completions", json!({"prompt": "x", "n": 0}));
    assert_error(s, &b, 400, "n must be");
    let (s, b) = post(&v, "/v1/completions", json!({"prompt": [999999]}));
    assert_error(s, &b, 400, "outside the vocabulary");
    let (s, b) = post(&v, "/v1/chat/completions", json!({"messages": []}));
    assert_error(s, &b, 400, "messages");
    // One JSON value per body: trailing bytes are refused, trailing whitespace is not.
    for (path, body) in [
        (
            "/v1/completions",
            &br#"{"prompt":"hi","max_tokens":2} xyz"#[..],
        ),
        (
            "/v1/chat/completions",
            br#"{"messages":[{"role":"user","content":"hi"}]}{}"#,
        ),
        ("/tokenize", br#"{"prompt":"hi"} 1"#),
    ] {
        let (s, text) = http_post(&v.url(path), body, &[]);
        assert_error(s, &serde_json::from_str(&text).unwrap(), 400, "trailing");
    }
    let (s, _) = http_post(
        &v.url("/v1/completions"),
        b"{\"prompt\":\"hi\",\"max_tokens\":2} \n",
        &[],
    );
    assert_eq!(s, 200);
    let (s, text) = http_post(&v.url("/v1/completions"), b"{not json", &[]);
    assert_error(
        s,
        &serde_json::from_str(&text).unwrap(),
        400,
        "invalid JSON",
    );
    let (s, text) = http_post(
        &v.url("/v1/completions"),
        b"{\"prompt\": \"\xff\xfe\"}",
        &[],
    );
    assert_error(s, &serde_json::from_str(&text).unwrap(), 400, "");
    // Bodies are size-limited, and the refusal is an API error too.
    let huge = format!("{{\"prompt\": \"{}\"}}", "a".repeat(9 << 20));
    let head = format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", huge.len());
    // The server answers before reading the whole body and closes; depending on timing the
    // reset can beat the answer to the client, so try a few times.
    let request = head + &huge;
    let response = (0..5)
        .map(|_| raw_http(&v, &request))
        .find(|r| r.starts_with("HTTP/1.1"))
        .unwrap_or_default();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    assert_error(413, &serde_json::from_str(body).unwrap(), 413, "");
    // Nothing leaked: the engine is idle and the cache empty.
    let m = v.metrics();
    assert_eq!(sample(&m, "vllm:num_requests_running{"), Some(0.0));
    assert_eq!(sample(&m, "vllm:kv_cache_usage_perc{"), Some(0.0));
}

#[test]
fn api_key_protects_v1() {
    let v = Vigil::serve(&["--api-key", "sekret"]);
    let body = json!({"prompt": "x", "max_tokens": 1}).to_string();
    let (s, text) = http_post(&v.url("/v1/completions"), body.as_bytes(), &[]);
    assert_error(
        s,
        &serde_json::from_str(&text).unwrap(),
        401,
        "Unauthorized",
    );
    let (s, _) = http_post(
        &v.url("/v1/completions"),
        body.as_bytes(),
        &[("Authorization", "Bearer sekret")],
    );
    assert_eq!(s, 200);
    // The scheme is matched in any case (RFC 9110), the key exactly.
    for scheme in ["bearer", "BEARER"] {
        let auth = format!("{scheme} sekret");
        let (s, _) = http_post(
            &v.url("/v1/completions"),
            body.as_bytes(),
            &[("Authorization", &auth)],
        );
        assert_eq!(s, 200, "{scheme}");
    }
    let (s, _) = http_post(
        &v.url("/v1/completions"),
        body.as_bytes(),
        &[("Authorization", "Bearer SEKRET")],
    );
    assert_eq!(s, 401);
    // A CORS preflight carries no credentials: the key check lets OPTIONS through.
    let reply = raw_http(
        &v,
        "OPTIONS /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(!reply.starts_with("HTTP/1.1 401"), "{reply}");
    // Health and metrics stay open.
    assert_eq!(v.get("/health", None).0, 200);
    assert_eq!(v.get("/metrics", None).0, 200);

    // An empty key is no key, as in vLLM.
    let open = Vigil::serve(&["--api-key", ""]);
    let (s, _) = http_post(&open.url("/v1/completions"), body.as_bytes(), &[]);
    assert_eq!(s, 200);
}

/// Unknown routes and wrong methods answer in vLLM's JSON error envelope (its HTTPException
/// handler: the status phrase as message and type).
#[test]
fn routing_errors_are_json() {
    let v = Vigil::serve(&[]);
    let (s, _, body) = v.get("/v1/nothing-here", None);
    let b: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s, 404);
    assert_eq!(
        b,
        json!({"error": {"message": "Not Found", "type": "Not Found", "param": null, "code": 404}})
    );
    let (s, _, body) = v.get("/v1/completions", None);
    let b: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s, 405);
    assert_eq!(
        b,
        json!({"error": {"message": "Method Not Allowed", "type": "Method Not Allowed", "param": null, "code": 405}})
    );
}

/// `echo` puts the prompt before the output; with `logprobs`, the prompt tokens' own
/// log-probabilities lead the list, the first `null` (lm-eval-harness scores loglikelihood
/// from exactly these). Each prompt token's log-probability is checked against the model's
/// distribution after the tokens before it, asked for by a plain request.
#[test]
fn echo_returns_the_prompt_and_its_logprobs() {
    let v = Vigil::serve(&[]);
    let prompt = [504u32, 3575, 282, 4649, 314];
    let (s, b) = post(
        &v,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 2, "temperature": 0, "echo": true, "logprobs": 1}),
    );
    assert_eq!(s, 200, "{b}");
    let (_, plain) = post(
        &v,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 2, "temperature": 0, "logprobs": 1}),
    );
    let c = &b["choices"][0];
    let text = c["text"].as_str().unwrap();
    let plain_text = plain["choices"][0]["text"].as_str().unwrap();
    assert_eq!(text, format!("The capital of France is{plain_text}"), "{b}");
    let lp = &c["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), prompt.len() + 2, "{b}");
    assert_eq!(tokens[0], "The");
    assert!(lp["token_logprobs"][0].is_null(), "{b}");
    assert!(lp["top_logprobs"][0].is_null(), "{b}");
    // The text offsets walk the tokens' texts.
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    for k in 1..tokens.len() {
        let len = tokens[k - 1].as_str().unwrap().len() as u64;
        assert_eq!(offsets[k], offsets[k - 1] + len);
    }
    // Prompt token k's log-probability is the model's for it after tokens 0..k, read from the
    // top 20 of a plain request for that prefix (every position where the token is there; the
    // sentence is predictable enough that most are).
    let sentence = "The capital of France is Paris. The capital of Germany is Berlin.";
    let (_, echoed) = post(
        &v,
        "/v1/completions",
        json!({"prompt": sentence, "max_tokens": 1, "temperature": 0, "echo": true, "logprobs": 1}),
    );
    let ids = post(&v, "/tokenize", json!({"prompt": sentence})).1["tokens"].clone();
    let ids: Vec<u64> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    let elp = &echoed["choices"][0]["logprobs"];
    let mut checked = 0;
    for k in 1..ids.len() {
        let (_, next) = post(
            &v,
            "/v1/completions",
            json!({"prompt": &ids[..k], "max_tokens": 1, "temperature": 0, "logprobs": 20}),
        );
        let top = &next["choices"][0]["logprobs"]["top_logprobs"][0];
        if let Some(want) = top[elp["tokens"][k].as_str().unwrap()].as_f64() {
            let got = elp["token_logprobs"][k].as_f64().unwrap();
            // Batches of different shapes round differently (Q8 weights and activations: a
            // few hundredths of a nat here; a row off by one position is off by whole nats).
            assert!((got - want).abs() < 0.15, "token {k}: {got} vs {want}");
            checked += 1;
        }
    }
    assert!(
        checked * 2 >= ids.len(),
        "only {checked} of {} positions",
        ids.len()
    );
    // The generated tokens' log-probabilities are those of the plain request.
    let plain_lp = &plain["choices"][0]["logprobs"]["token_logprobs"];
    for j in 0..2 {
        let got = lp["token_logprobs"][prompt.len() + j].as_f64().unwrap();
        let want = plain_lp[j].as_f64().unwrap();
        assert!((got - want).abs() < 0.15, "output {j}: {got} vs {want}");
    }
    // Echo without logprobs, streamed: the first chunk leads with the prompt.
    let req = json!({"prompt": "The capital of France is", "max_tokens": 2, "temperature": 0, "echo": true, "stream": true});
    let (_, streamed) = http_post(&v.url("/v1/completions"), req.to_string().as_bytes(), &[]);
    let chunks = sse_chunks(&streamed);
    assert!(chunks[0]["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("The capital of France is"));
    let whole: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(whole, text);

    // `max_tokens: 0` with `echo` scores the prompt (lm-eval-harness's loglikelihood requests):
    // vLLM answers the prompt alone with its tokens' log-probabilities, generating one token it
    // does not show (and counts), finished by `length`.
    let scored = json!({"prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 1});
    let (s, b) = post(&v, "/v1/completions", scored.clone());
    assert_eq!(s, 200, "{b}");
    let c = &b["choices"][0];
    assert_eq!(c["text"], "The capital of France is", "{b}");
    assert_eq!(c["finish_reason"], "length", "{b}");
    let scored_lp = &c["logprobs"]["token_logprobs"];
    assert_eq!(scored_lp.as_array().unwrap().len(), prompt.len(), "{b}");
    assert!(scored_lp[0].is_null(), "{b}");
    for k in 1..prompt.len() {
        let (got, want) = (
            scored_lp[k].as_f64().unwrap(),
            lp["token_logprobs"][k].as_f64().unwrap(),
        );
        assert!(
            (got - want).abs() < 0.15,
            "prompt token {k}: {got} vs {want}"
        );
    }
    assert_eq!(b["usage"]["prompt_tokens"], prompt.len(), "{b}");
    assert_eq!(b["usage"]["completion_tokens"], 1, "{b}");
    let mut streamed = scored;
    streamed["stream"] = json!(true);
    let (_, body) = http_post(
        &v.url("/v1/completions"),
        streamed.to_string().as_bytes(),
        &[],
    );
    let whole: String = sse_chunks(&body)
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(whole, "The capital of France is", "{body}");
    // Without `echo`, `max_tokens: 0` asks for nothing: still vLLM's 400.
    let (s, b) = post(
        &v,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 0}),
    );
    assert_error(s, &b, 400, "max_tokens");
}

/// A list of prompts (strings, or lists of token ids): each prompt gets `n` choices, indexed
/// prompt by prompt (vLLM: choice `i` of prompt `p` is `p * n + i`), and usage counts each
/// prompt once.
#[test]
fn a_list_of_prompts_gets_n_choices_each() {
    let v = Vigil::serve(&[]);
    let prompts = ["The capital of France is", "def fibonacci(n):"];
    let single: Vec<(String, u64)> = prompts
        .iter()
        .map(|p| {
            let (_, b) = post(
                &v,
                "/v1/completions",
                json!({"prompt": p, "max_tokens": 4, "temperature": 0}),
            );
            (
                b["choices"][0]["text"].as_str().unwrap().to_owned(),
                b["usage"]["prompt_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    let token_lists: Vec<Value> = prompts
        .iter()
        .map(|p| post(&v, "/tokenize", json!({"prompt": p})).1["tokens"].clone())
        .collect();
    for prompt in [json!(prompts), json!(token_lists)] {
        let (s, b) = post(
            &v,
            "/v1/completions",
            json!({"prompt": prompt, "max_tokens": 4, "temperature": 0, "n": 2}),
        );
        assert_eq!(s, 200, "{b}");
        let choices = b["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 4, "{b}");
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i);
            assert_eq!(c["text"], single[i / 2].0, "{b}");
        }
        let prompt_tokens: u64 = single.iter().map(|s| s.1).sum();
        assert_eq!(b["usage"]["prompt_tokens"], prompt_tokens, "{b}");
        assert_eq!(b["usage"]["completion_tokens"], 16, "{b}");
    }
    // One body may not fan out without bound: at most 1,024 prompts (vLLM's default bound),
    // and 1,024 choices in all (prompts times n); an 8 KB body once queued 128,000.
    let many = vec!["a"; 1025];
    let (s, b) = post(
        &v,
        "/v1/completions",
        json!({"prompt": many, "max_tokens": 1}),
    );
    assert_error(s, &b, 400, "exceeds the maximum allowed count of 1024");
    assert_eq!(b["error"]["param"], "prompt", "{b}");
    let (s, b) = post(
        &v,
        "/v1/completions",
        json!({"prompt": vec![[1u32]; 1000], "max_tokens": 1, "n": 128}),
    );
    assert_error(s, &b, 400, "128000 choices");
    assert_eq!(b["error"]["param"], "n", "{b}");
    let (s, _) = post(
        &v,
        "/v1/completions",
        json!({"prompt": vec![[1u32]; 8], "max_tokens": 1, "n": 128}),
    );
    assert_eq!(s, 200);
    let m = v.metrics();
    assert!(
        common::sample(&m, "vllm:num_requests_waiting").is_some_and(|w| w == 0.0),
        "{m}"
    );
}

/// Request fields vLLM acts on that Vigil does not implement are refused by name (never
/// ignored), unless left at vLLM's default; so are invalid values of those it implements.
#[test]
fn unsupported_fields_are_refused_by_name() {
    let v = Vigil::serve(&[]);
    let msg = json!([{"role": "user", "content": "Hi"}]);
    let tools =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    for (path, body, field) in [
        (
            "/v1/completions",
            json!({"prompt": "x", "suffix": "y"}),
            "suffix",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msg, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}}),
            "response_format",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msg, "tools": tools}),
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msg, "tools": tools, "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            "tool_choice",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "guided_regex": "a+", "guided_whitespace_pattern": " *"}),
            "guided_whitespace_pattern",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "logit_bias": {"5": 3}}),
            "logit_bias",
        ),
    ] {
        let (s, b) = post(&v, path, body);
        let needle = if field == "tool_choice" {
            "tool"
        } else {
            field
        };
        assert_error(s, &b, 400, needle);
        assert_eq!(b["error"]["param"], field, "{b}");
    }
    // Defaults, and tools that will not be called, are fine.
    for (path, body) in [
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 1, "suffix": null, "response_format": {"type": "text"}, "best_of": 1, "logit_bias": {}}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msg, "max_tokens": 1, "tools": tools, "tool_choice": "none"}),
        ),
        // What vLLM takes and ignores: `best_of`, OpenAI's legacy `functions`.
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 1, "best_of": 3}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msg, "max_tokens": 1, "functions": [{"name": "f"}], "function_call": "auto"}),
        ),
    ] {
        let (s, b) = post(&v, path, body);
        assert_eq!(s, 200, "{b}");
    }
}

#[test]
fn a_client_that_disconnects_is_aborted_and_its_blocks_freed() {
    let v = Vigil::serve(&["--served-model-name", "smol"]);
    let body = json!({"prompt": "Tell me a long story.", "max_tokens": 2000, "stream": true, "ignore_eos": true}).to_string();
    // Read until the first data event arrives, then hang up.
    let stream = common::stream_until_first_event(v.addr, &body);
    stream.shutdown(std::net::Shutdown::Both).unwrap();
    let m = wait_for("the abort to be counted", Duration::from_secs(30), || {
        let m = v.metrics();
        (sample(
            &m,
            "vllm:request_success_total{engine=\"0\",finished_reason=\"abort\"",
        ) == Some(1.0))
        .then_some(m)
    });
    assert_eq!(sample(&m, "vllm:num_requests_running{"), Some(0.0));
    assert_eq!(sample(&m, "vllm:kv_cache_usage_perc{"), Some(0.0));
    assert!(sample(&m, "vllm:generation_tokens_total{").unwrap() < 2000.0);
}

#[test]
fn exemplars_carry_the_request_id() {
    let v = Vigil::serve(&["--enable-exemplars"]);
    let (status, body) = post(
        &v,
        "/v1/completions",
        json!({"prompt": "Hi", "max_tokens": 2}),
    );
    assert_eq!(status, 200);
    let id = body["id"].as_str().unwrap();
    let (_, _, om) = v.get("/metrics", Some("application/openmetrics-text"));
    let line = om
        .lines()
        .find(|l| l.starts_with("vllm:e2e_request_latency_seconds_bucket{") && l.contains(" # {"))
        .unwrap_or_else(|| panic!("no exemplar in {om}"));
    assert!(line.contains(&format!("request_id=\"{id}\"")), "{line}");
}

#[test]
fn models_tokenize_detokenize() {
    let v = Vigil::serve(&["--served-model-name", "smol", "alias"]);
    let (s, _, body) = v.get("/v1/models", None);
    assert_eq!(s, 200);
    let b: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = b["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["smol", "alias"]);
    // vLLM's card: owned by "vllm", with one permission of vLLM's values.
    let card = &b["data"][0];
    assert_eq!(card["owned_by"], "vllm", "{card}");
    let permission = &card["permission"][0];
    assert!(
        permission["id"].as_str().unwrap().starts_with("modelperm-"),
        "{card}"
    );
    assert_eq!(permission["object"], "model_permission");
    for (field, value) in [
        ("allow_create_engine", json!(false)),
        ("allow_sampling", json!(true)),
        ("allow_logprobs", json!(true)),
        ("allow_search_indices", json!(false)),
        ("allow_view", json!(true)),
        ("allow_fine_tuning", json!(false)),
        ("organization", json!("*")),
        ("group", json!(null)),
        ("is_blocking", json!(false)),
    ] {
        assert_eq!(permission[field], value, "{field}: {card}");
    }
    let (s, b) = post(
        &v,
        "/tokenize",
        json!({"prompt": "The capital of France is"}),
    );
    assert_eq!(s, 200);
    assert_eq!(b["tokens"], json!([504, 3575, 282, 4649, 314]));
    assert_eq!(b["token_strs"], json!(null));
    // The vocabulary's own strings of the tokens (byte-level BPE marks a space with Ġ).
    let (_, b) = post(
        &v,
        "/tokenize",
        json!({"prompt": "The capital of France is", "return_token_strs": true}),
    );
    assert_eq!(
        b["token_strs"],
        json!(["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]),
        "{b}"
    );
    let (s, b) = post(
        &v,
        "/detokenize",
        json!({"tokens": [504, 3575, 282, 4649, 314]}),
    );
    assert_eq!(s, 200);
    assert_eq!(b["prompt"], "The capital of France is");
    // One model's card, or vLLM's 404.
    let (s, _, body) = v.get("/v1/models/alias", None);
    assert_eq!(s, 200);
    let card: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(card["id"], "alias");
    assert_eq!(card["object"], "model");
    let (s, _, body) = v.get("/v1/models/other", None);
    assert_error(s, &serde_json::from_str(&body).unwrap(), 404, "other");
    // Tokenizing chat messages gives the tokens a chat request with them runs on.
    let msg = json!([{"role": "user", "content": "Say hello."}]);
    let (s, b) = post(&v, "/tokenize", json!({"messages": msg}));
    assert_eq!(s, 200, "{b}");
    let (_, chat) = post(
        &v,
        "/v1/chat/completions",
        json!({"messages": msg, "max_tokens": 1}),
    );
    assert_eq!(b["count"], chat["usage"]["prompt_tokens"], "{b} {chat}");
    let (_, without) = post(
        &v,
        "/tokenize",
        json!({"messages": msg, "add_generation_prompt": false}),
    );
    assert!(without["count"].as_u64() < b["count"].as_u64(), "{without}");
    let (s, b) = post(
        &v,
        "/v1/completions",
        json!({"model": "alias", "prompt": "x", "max_tokens": 1}),
    );
    assert_eq!(s, 200, "{b}");
}

/// K concurrent requests with known lengths on a deliberately tiny KV cache: the totals are
/// exact, preemption happens and is counted, and everything returns to idle.
#[test]
fn known_traffic_gives_exact_totals_and_a_tiny_cache_preempts() {
    // 12 blocks of 16 tokens (one is the null block): four requests of 32 + 48 tokens need 20.
    // The context is what the cache holds (a longer one refuses to start).
    let v = Vigil::serve(&[
        "--served-model-name",
        "m",
        "--num-gpu-blocks-override",
        "12",
        "--max-model-len",
        "176",
        "--no-enable-prefix-caching",
    ]);
    let k = 4;
    let (prompt_len, output_len) = (32, 48);
    let handles: Vec<_> = (0..k)
        .map(|i| {
            let url = v.url("/v1/completions");
            let prompt: Vec<u32> = (0..prompt_len).map(|t| 1000 + t * 7 + i * 13).collect();
            let body = json!({"prompt": prompt, "max_tokens": output_len, "ignore_eos": true, "temperature": 0}).to_string();
            std::thread::spawn(move || http_post(&url, body.as_bytes(), &[]))
        })
        .collect();
    for h in handles {
        let (status, text) = h.join().unwrap();
        assert_eq!(status, 200, "{text}");
        let b: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(b["usage"]["completion_tokens"], output_len);
        assert_eq!(b["choices"][0]["finish_reason"], "length");
    }
    let m = v.metrics();
    let l = "{engine=\"0\",model_name=\"m\"}";
    let k = k as f64;
    assert_eq!(
        sample(
            &m,
            "vllm:request_success_total{engine=\"0\",finished_reason=\"length\""
        ),
        Some(k)
    );
    assert_eq!(
        sample(&m, &format!("vllm:prompt_tokens_total{l}")),
        Some(k * prompt_len as f64)
    );
    assert_eq!(
        sample(&m, &format!("vllm:generation_tokens_total{l}")),
        Some(k * output_len as f64)
    );
    for h in [
        "e2e_request_latency_seconds",
        "time_to_first_token_seconds",
        "request_queue_time_seconds",
        "request_prompt_tokens",
        "request_generation_tokens",
        "request_num_preemptions",
    ] {
        assert_eq!(sample(&m, &format!("vllm:{h}_count{l}")), Some(k), "{h}");
    }
    assert_eq!(
        sample(&m, &format!("vllm:request_generation_tokens_sum{l}")),
        Some(k * output_len as f64)
    );
    let preemptions = sample(&m, &format!("vllm:num_preemptions_total{l}")).unwrap();
    assert!(preemptions > 0.0, "a 12-block cache must preempt");
    assert_eq!(
        sample(&m, &format!("vllm:request_num_preemptions_sum{l}")),
        Some(preemptions)
    );
    assert_eq!(
        sample(&m, &format!("vllm:num_requests_running{l}")),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, &format!("vllm:num_requests_waiting{l}")),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, &format!("vllm:kv_cache_usage_perc{l}")),
        Some(0.0)
    );
}

/// One access-log line per request, as vLLM's server writes one: 4xx answers and aborted
/// streams included, with the request id and token counts of generation requests; off with
/// vLLM's `--disable-uvicorn-access-log` (or `--disable-log-requests`).
#[test]
fn every_request_gets_an_access_log_line() {
    let v = Vigil::serve(&[]);
    let (_, ok) = post(
        &v,
        "/v1/completions",
        json!({"prompt": "Hi", "max_tokens": 3, "ignore_eos": true}),
    );
    let id = ok["id"].as_str().unwrap().to_owned();
    let _ = post(
        &v,
        "/v1/completions",
        json!({"prompt": "Hi", "max_tokens": -3}),
    );
    let _ = v.get("/no/such/route", None);
    let gone = common::stream_until_first_event(
        v.addr,
        r#"{"prompt": "Hi", "max_tokens": 1000, "ignore_eos": true, "stream": true}"#,
    );
    // Four more token chunks reach the client before it goes away: five tokens at least.
    let mut reader = std::io::BufReader::new(gone.try_clone().unwrap());
    let mut chunks = 1;
    while chunks < 5 {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut reader, &mut line).unwrap() > 0);
        chunks += usize::from(line.starts_with("data: "));
    }
    drop((reader, gone));
    // The stream's abort done, so that the next request is the only one running and every
    // token counted from here is its own.
    let generated = wait_for(
        "the aborted stream to leave",
        Duration::from_secs(10),
        || {
            let m = v.metrics();
            common::sample(&m, "vllm:num_requests_running")
                .filter(|n| *n == 0.0)
                .and_then(|_| common::sample(&m, "vllm:generation_tokens_total"))
        },
    );
    // A client that leaves a request that is not streamed before its answer.
    {
        use std::io::Write;
        let body = r#"{"prompt": "Hi", "max_tokens": 1000, "ignore_eos": true}"#;
        let mut left = std::net::TcpStream::connect(v.addr).unwrap();
        write!(
            left,
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        wait_for("its first tokens", Duration::from_secs(10), || {
            let m = v.metrics();
            common::sample(&m, "vllm:num_requests_running")
                .filter(|n| *n > 0.0)
                .and_then(|_| {
                    common::sample(&m, "vllm:generation_tokens_total")
                        .filter(|n| *n > generated + 2.0)
                })
        });
    }
    let lines = wait_for("the access lines", Duration::from_secs(15), || {
        let log = v.log();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("vigil::access"))
            .map(str::to_owned)
            .collect();
        lines.iter().any(|l| l.contains("\" 499")).then_some(lines)
    });
    let find = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle}: {lines:#?}"))
            .clone()
    };
    let line = find(&id);
    assert!(
        line.contains("\"POST /v1/completions HTTP/1.1\" 200"),
        "{line}"
    );
    assert!(line.contains("output_tokens=3"), "{line}");
    assert!(line.contains("complete=true"), "{line}");
    assert!(find("\" 400").contains("POST /v1/completions"));
    assert!(find("\" 404").contains("GET /no/such/route"));
    let aborted = lines
        .iter()
        .find(|l| l.contains("complete=false") && l.contains("\" 200"))
        .unwrap_or_else(|| panic!("no aborted stream: {lines:#?}"));
    assert!(aborted.contains("request_id=\"cmpl-"), "{aborted}");
    let delivered: usize = aborted
        .split("output_tokens=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{aborted}"));
    assert!(delivered >= 5, "{aborted}");
    let left = find("\" 499");
    assert!(left.contains("POST /v1/completions"), "{left}");
    assert!(left.contains("complete=false"), "{left}");
    assert!(left.contains("request_id=\"cmpl-"), "{left}");

    for flag in ["--disable-uvicorn-access-log", "--disable-log-requests"] {
        let quiet = Vigil::serve(&[flag]);
        let _ = post(
            &quiet,
            "/v1/completions",
            json!({"prompt": "Hi", "max_tokens": 1}),
        );
        std::thread::sleep(Duration::from_millis(200));
        assert!(!quiet.log().contains("vigil::access"), "{flag}");
    }
}
