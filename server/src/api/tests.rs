//! The API in-process over a real socket, with a backend that fails on purpose.
//!
//! The API served in-process over a real socket, with a backend that fails on purpose: what a
//! client sees when the engine breaks in the middle of its request.

use std::sync::Arc;

use backend::testing::FakeBackend;
use backend::Backend;
use engine::KvCacheManager;
use engine::{Scheduler, SchedulerConfig};
use model::testing::{byte_tokenizer, tiny_config};

use super::AppState;

/// Always prefers byte `b'a'`; refuses every step after the first `ok_steps`.
fn fails_after(ok_steps: usize) -> FakeBackend {
    FakeBackend::new(tiny_config(), 4, 32)
        .preferring(u32::from(b'a'))
        .failing_after(ok_steps)
}

/// Always prefers byte `b'a'` and never fails.
fn never_fails() -> FakeBackend {
    FakeBackend::new(tiny_config(), 4, 32).preferring(u32::from(b'a'))
}

/// Serves the API over `backend` on a free local port; returns its base URL.
fn serve(backend: FakeBackend) -> String {
    let scheduler = Scheduler::new(
        SchedulerConfig {
            max_num_batched_tokens: 64,
            max_num_seqs: 4,
            max_model_len: 64,
            chunked_prefill: true,
        },
        KvCacheManager::new(
            backend.kv_geometry().num_blocks,
            backend.kv_geometry().block_size,
            true,
        ),
        vec![],
    );
    let names = super::dynamo::DynamoNames::new("dynamo", "backend", "generate");
    let state = Arc::new(AppState {
        engine: engine::spawn(Box::new(backend), scheduler, None),
        tokenizer: Arc::new(byte_tokenizer()),
        served_model_names: vec!["tiny".into()],
        max_model_len: 64,
        api_key: None,
        created: 0,
        dynamo: names.clone(),
        dynamo_series: super::dynamo::DynamoSeries::new(&names, &["tiny".to_owned()]),
        drain: crate::lifecycle::drain::Drain::new(),
        traces: None,
        cpu: crate::api::cpu_pool::CpuPool::new("request", 1, 2 << 20),
        grammar_cpu: crate::api::cpu_pool::CpuPool::new("grammar", 1, 2 << 20),
        grammars: Err("no grammars in these tests".into()),
        auto_tool_parser: None,
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, super::router(state)).await.unwrap();
        });
    });
    format!("http://{addr}")
}

fn post(base: &str, path: &str, body: serde_json::Value) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(&format!("{base}{path}"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap())
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect()
}

#[test]
fn an_engine_failure_mid_stream_arrives_as_an_error_event_then_done() {
    for (path, body) in [
        (
            "/v1/completions",
            serde_json::json!({"prompt": "hello", "max_tokens": 10, "stream": true, "temperature": 0}),
        ),
        (
            "/v1/chat/completions",
            serde_json::json!({"messages": [{"role": "user", "content": "hello"}],
                               "max_tokens": 10, "stream": true, "temperature": 0}),
        ),
    ] {
        // Step 1 prefills and samples a token, step 2 decodes one more, step 3 fails.
        let base = serve(fails_after(2));
        let (status, body) = post(&base, path, body);
        // The stream had started (200) before the failure.
        assert_eq!(status, 200, "{path}: {body}");
        let data = sse_data(&body);
        assert_eq!(data.last(), Some(&"[DONE]"), "{path}: {body}");
        let error: serde_json::Value = serde_json::from_str(data[data.len() - 2]).unwrap();
        assert_eq!(error["error"]["type"], "InternalServerError", "{body}");
        assert!(error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("engine failed"));
        // Tokens that were produced before the failure were delivered first.
        let text: String = data[..data.len() - 2]
            .iter()
            .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
            .map(|c| {
                let ch = &c["choices"][0];
                ch["text"]
                    .as_str()
                    .or(ch["delta"]["content"].as_str())
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        assert!(text.starts_with("aa"), "{path}: {body}");
    }
}

#[test]
fn an_engine_failure_without_streaming_answers_503_with_the_error_envelope() {
    let base = serve(fails_after(2));
    let (status, body) = post(
        &base,
        "/v1/completions",
        serde_json::json!({"prompt": "hello", "max_tokens": 10}),
    );
    assert_eq!(status, 503, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], 503, "{body}");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("engine failed"));
}

/// Hostile bodies through the real router: any JSON (and non-JSON) a client may send to any
/// route gets an answer below 500, and every refusal is vLLM's error envelope.
mod bodies {
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    use super::{never_fails, post, serve};

    /// Any JSON value, nested a little.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-3i64..300).prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Field names requests use (vLLM's and OpenAI's), and some nobody knows.
    const KEYS: &[&str] = &[
        "model",
        "prompt",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "n",
        "stop",
        "stop_token_ids",
        "ignore_eos",
        "stream",
        "stream_options",
        "logprobs",
        "top_logprobs",
        "echo",
        "suffix",
        "response_format",
        "tools",
        "tool_choice",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "include_stop_str_in_output",
        "skip_special_tokens",
        "add_special_tokens",
        "add_generation_prompt",
        "best_of",
        "logit_bias",
        "min_tokens",
        "tokens",
        "user",
        "whatever",
    ];

    /// A request-shaped body: some known fields with any values (and sometimes plausible ones).
    fn body() -> impl Strategy<Value = Value> {
        let value = prop_oneof![
            any_json(),
            Just(json!("hi")),
            Just(json!([1, 2, 3])),
            Just(json!([{"role": "user", "content": "hi"}])),
            Just(json!(2)),
            Just(json!(true)),
        ];
        prop::collection::vec((prop::sample::select(KEYS), value), 0..8).prop_map(|pairs| {
            let mut m = Map::new();
            for (k, v) in pairs {
                m.insert(k.to_owned(), v);
            }
            Value::Object(m)
        })
    }

    fn check(status: u16, text: &str, what: &str) {
        assert!(status < 500, "{status} for {what}: {text}");
        if status >= 400 {
            let v: Value = serde_json::from_str(text)
                .unwrap_or_else(|_| panic!("not JSON for {what}: {text}"));
            let e = &v["error"];
            assert!(e["message"].is_string(), "{what}: {text}");
            assert!(e["type"].is_string(), "{what}: {text}");
            assert_eq!(e["code"], status, "{what}: {text}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn no_body_gets_a_5xx_or_a_malformed_error(body in body(), route in 0usize..4) {
            thread_local! {
                static BASE: String = serve(never_fails());
            }
            let path = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"][route];
            let (status, text) = BASE.with(|base| post(base, path, body.clone()));
            check(status, &text, &format!("{path} {body}"));
        }
    }
}
