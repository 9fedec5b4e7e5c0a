//! Structured outputs end to end with the official `openai` Python client.
//!
//! Structured outputs end to end with the official `openai` Python client (installed by
//! `cargo xtask test` into the folder `VIGIL_TEST_PYTHONPATH` names): JSON schemas on 20 prompts
//! at temperature 1.0 validated with `jsonschema`, `json_object`, regex, choice and Lark
//! grammars through every field name vLLM takes, whole and streamed, greedy outputs unchanged
//! where the constraint allows them, tool calls with `tool_choice` `required`, a named function
//! and `auto` read by the hermes parser, and invalid constraints refused with a 400 naming the
//! field. The checks are in `clients/structured_outputs.py`.

use crate::common;

use std::process::Command;

use common::{require_model, Vigil};

#[test]
fn the_openai_client_gets_outputs_that_meet_their_constraints() {
    require_model();
    let pythonpath = std::env::var("VIGIL_TEST_PYTHONPATH").expect(
        "VIGIL_TEST_PYTHONPATH names the folder with the openai and jsonschema packages: run \
         `cargo xtask test`, which installs them",
    );
    let v = Vigil::serve(&[
        "--served-model-name",
        "smol",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
    ]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/structured_outputs.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(v.url(""))
        .arg("smol")
        .env("PYTHONPATH", pythonpath)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        v.log()
    );
    assert!(
        stdout.contains("all structured-output checks passed"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("ok   json_schema").count(), 20, "{stdout}");
}

/// The frameworks people wire to an OpenAI-compatible server, each on its default path, extract
/// a small pydantic model (with a nested one, which pydantic puts in `$defs`) from the default
/// model: instructor's `Mode.TOOLS` (a named function), LangChain's `bind_tools(...,
/// tool_choice="any")` and litellm's `tool_choice="required"` (the list of calls), and
/// pydantic-ai's default structured output (its output tool). Each runs from its own folder of
/// packages (`cargo xtask test` installs them; their pins conflict).
#[test]
fn frameworks_extract_a_model_on_their_default_paths() {
    require_model();
    let root = std::env::var("VIGIL_TEST_FRAMEWORKS").expect(
        "VIGIL_TEST_FRAMEWORKS names the folder with a folder of packages per framework: run \
         `cargo xtask test`, which installs them",
    );
    let v = Vigil::serve(&["--served-model-name", "smol"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/frameworks.py");
    for framework in ["instructor", "langchain", "litellm", "pydantic-ai"] {
        let out = Command::new("python3")
            .args([script, &v.url(""), "smol", framework])
            .env("PYTHONPATH", format!("{root}/{framework}"))
            .output()
            .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("ok {framework} ")),
            "{framework}: {stdout}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            v.log()
        );
    }
}

/// Constrained requests on a deliberately tiny KV cache with chunked prefill: they are
/// preempted and recomputed mid-output, and each output still matches its constraint (the
/// sampler keeps the constraint's state across the preemption); they are counted by kind and
/// their mask time is recorded.
#[test]
fn constraints_hold_across_preemption_and_chunked_prefill() {
    use common::{http_post, sample};
    // 12 blocks of 16 tokens (one is the null block): four requests of 32 + 41 tokens need 20.
    let v = Vigil::serve(&[
        "--served-model-name",
        "m",
        "--num-gpu-blocks-override",
        "12",
        "--max-model-len",
        "176",
        "--max-num-batched-tokens",
        "16",
        "--no-enable-prefix-caching",
    ]);
    let digits = regex_lite_digits(40);
    let handles: Vec<_> = (0..4u32)
        .map(|i| {
            let url = v.url("/v1/completions");
            let prompt: Vec<u32> = (0..32).map(|t| 1000 + t * 7 + i * 13).collect();
            let body = serde_json::json!({"prompt": prompt, "max_tokens": 60, "temperature": 1.0,
                "seed": i, "structured_outputs": {"regex": digits}})
            .to_string();
            std::thread::spawn(move || http_post(&url, body.as_bytes(), &[]))
        })
        .collect();
    for h in handles {
        let (status, text) = h.join().unwrap();
        assert_eq!(status, 200, "{text}");
        let b: serde_json::Value = serde_json::from_str(&text).unwrap();
        let out = b["choices"][0]["text"].as_str().unwrap();
        assert!(
            out.len() == 40 && out.bytes().all(|c| c.is_ascii_digit()),
            "{out:?} does not match {digits}"
        );
        assert_eq!(b["choices"][0]["finish_reason"], "stop", "{text}");
    }
    let m = v.metrics();
    let l = "{engine=\"0\",model_name=\"m\"}";
    let preemptions = sample(&m, &format!("vllm:num_preemptions_total{l}")).unwrap();
    assert!(preemptions > 0.0, "a 12-block cache must preempt");
    assert_eq!(
        sample(
            &m,
            "vigil_structured_output_requests_total{engine=\"0\",kind=\"regex\",model_name=\"m\"}"
        ),
        Some(4.0),
        "{m}"
    );
    let masks = sample(
        &m,
        &format!("vigil_structured_output_mask_seconds_count{l}"),
    )
    .unwrap();
    assert!(masks >= 40.0, "{masks} steps with masks");
}

/// A regular expression for exactly `n` digits.
fn regex_lite_digits(n: usize) -> String {
    format!("[0-9]{{{n}}}")
}

/// A constraint that would recurse too deep in the compiler, overflow its stack and abort the
/// whole server (a JSON schema's chain of 650 or more `$ref`s, a Lark grammar's chain of 490
/// rules), or one that would hold a compile thread for seconds (100,000 choices, a regular
/// expression that unrolls to a million units or is a 4 MB literal, 400 `patternProperties`),
/// is refused with a 400 naming the field and the bound; the server lives on, answers a plain
/// request, and counts the refused compiles.
#[test]
fn hostile_constraints_are_refused_and_the_server_lives_on() {
    use common::{http_post, sample};
    use serde_json::{json, Value};
    let v = Vigil::serve(&["--served-model-name", "m"]);
    let post = |body: Value| {
        let (status, text) = http_post(&v.url("/v1/completions"), body.to_string().as_bytes(), &[]);
        (
            status,
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
        )
    };
    let ref_chain = |n: usize| {
        let mut defs = serde_json::Map::new();
        for i in 0..n {
            defs.insert(
                format!("d{i}"),
                json!({"$ref": format!("#/$defs/d{}", i + 1)}),
            );
        }
        defs.insert(format!("d{n}"), json!({"type": "string"}));
        json!({"$defs": defs, "$ref": "#/$defs/d0"})
    };
    let rule_chain = |n: usize| {
        let mut grammar = String::from("start: r0\n");
        for i in 0..n {
            grammar.push_str(&format!("r{i}: r{}\n", i + 1));
        }
        grammar + &format!("r{n}: \"x\"\n")
    };
    let patterns: serde_json::Map<String, Value> = (0..400)
        .map(|i| (format!("^k{i}[a-z]+$"), json!({"type": "integer"})))
        .collect();
    let base = json!({"prompt": "Hello", "max_tokens": 4});
    let with = |field: &str, value: Value| {
        let mut body = base.clone();
        body[field] = value;
        body
    };
    let cases = [
        (
            with(
                "response_format",
                json!({"type": "json_schema", "json_schema": {"name": "chain", "schema": ref_chain(650)}}),
            ),
            "response_format",
            "256 levels",
        ),
        (
            with("guided_json", ref_chain(5000)),
            "guided_json",
            "256 levels",
        ),
        (
            with("structured_outputs", json!({"grammar": rule_chain(490)})),
            "structured_outputs",
            "256 levels",
        ),
        (
            with(
                "guided_choice",
                json!((0..100_000).map(|i| i.to_string()).collect::<Vec<_>>()),
            ),
            "guided_choice",
            "4096",
        ),
        (
            with("guided_regex", json!("(a{1000}){1000}")),
            "guided_regex",
            "unrolled",
        ),
        (
            with("guided_regex", json!("a".repeat(4 << 20))),
            "guided_regex",
            "unrolled",
        ),
        (
            with(
                "guided_json",
                json!({"type": "object", "patternProperties": patterns}),
            ),
            "guided_json",
            "patternProperties",
        ),
    ];
    for (body, param, words) in &cases {
        let (status, b) = post(body.clone());
        assert_eq!(status, 400, "{param}: {b}\nserver log:\n{}", v.log());
        assert_eq!(b["error"]["param"], *param, "{b}");
        let message = b["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{param}: {message}");
    }
    let (status, b) = post(base.clone());
    assert_eq!(status, 200, "{b}\nserver log:\n{}", v.log());
    let m = v.metrics();
    let refused = |kind: &str| {
        sample(
            &m,
            &format!(
                "vigil_structured_output_compile_seconds_count{{kind=\"{kind}\",outcome=\"refused\"}}"
            ),
        )
    };
    assert_eq!(refused("json"), Some(3.0), "{m}");
    assert_eq!(refused("grammar"), Some(1.0), "{m}");
    assert_eq!(refused("regex"), Some(2.0), "{m}");
}

/// A grammar so ambiguous that llguidance's parser reaches its limit of items per row a few
/// tokens into the answer: the request ends there with vLLM's error body naming the field (a
/// stream with an error event), never with output that stopped following the grammar, and the
/// failure is counted.
#[test]
fn a_constraint_that_fails_mid_answer_ends_the_request_with_an_error() {
    use common::{http_post, sample};
    use serde_json::{json, Value};
    let v = Vigil::serve(&["--served-model-name", "m"]);
    let concatenations: Vec<String> = (2..=24).map(|k| vec!["s"; k].join(" ")).collect();
    let grammar = format!("start: s\ns: {} | \"x\"", concatenations.join(" | "));
    let body = json!({"prompt": "xxxx", "max_tokens": 200, "temperature": 1.0, "seed": 3,
        "guided_grammar": grammar, "ignore_eos": true});
    let (status, text) = http_post(&v.url("/v1/completions"), body.to_string().as_bytes(), &[]);
    let b: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status, 400, "{b}");
    assert_eq!(b["error"]["param"], "guided_grammar", "{b}");
    let message = b["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("could not be held to its structured-output constraint"),
        "{message}"
    );
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, text) = http_post(
        &v.url("/v1/completions"),
        streamed.to_string().as_bytes(),
        &[],
    );
    assert_eq!(status, 200);
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let output: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert!(output.bytes().all(|c| c == b'x'), "{output:?}");
    let last = events.last().unwrap();
    assert_eq!(last["error"]["param"], "guided_grammar", "{text}");
    let m = v.metrics();
    assert_eq!(
        sample(
            &m,
            "vigil_structured_output_failures_total{engine=\"0\",kind=\"grammar\",model_name=\"m\"}"
        ),
        Some(2.0),
        "{m}"
    );
}
