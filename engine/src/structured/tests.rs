//! Constraints compiled and applied on the default model's tokenizer.

use std::sync::Arc;

use rand::{Rng, SeedableRng};

use super::{ConstraintSpec, Grammars};
use crate::sampling::{Sampler, SamplingParams};

/// The byte-level test tokenizer (token id = byte), with byte 0 as end of sequence.
fn grammars() -> Grammars {
    let mut tokenizer = model::testing::byte_tokenizer();
    tokenizer.eos_token_ids = vec![0];
    Grammars::new(Arc::new(tokenizer), 256, Default::default()).expect("a trie of 256 byte tokens")
}

/// Samples until end of sequence (or `max` tokens) from random logits, at temperature 1: what
/// comes out is only what the constraint allows.
fn sample_text(grammars: &Grammars, spec: ConstraintSpec, seed: u64, max: usize) -> String {
    let params = SamplingParams {
        seed: Some(seed),
        structured: Some(grammars.compile(&spec).expect("compiles")),
        ..SamplingParams::default()
    };
    let mut sampler = Sampler::new(params, &[]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for _ in 0..max {
        let logits: Vec<f32> = (0..256).map(|_| rng.random_range(-5.0..5.0)).collect();
        let token = sampler.sample(&logits).token;
        if token == 0 {
            break;
        }
        out.push(token as u8);
    }
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn random_logits_yield_only_what_the_constraint_allows() {
    let grammars = grammars();
    for seed in 0..20 {
        let choice = sample_text(
            &grammars,
            ConstraintSpec::Choice(vec!["yes".into(), "no".into(), "maybe so".into()]),
            seed,
            50,
        );
        assert!(
            ["yes", "no", "maybe so"].contains(&choice.as_str()),
            "{choice:?}"
        );

        let phone = sample_text(
            &grammars,
            ConstraintSpec::Regex("[0-9]{3}-[0-9]{4}".into()),
            seed,
            50,
        );
        assert_eq!(phone.len(), 8, "{phone:?}");
        assert!(phone.chars().enumerate().all(|(i, c)| if i == 3 {
            c == '-'
        } else {
            c.is_ascii_digit()
        }));

        let schema = serde_json::json!({
            "type": "object",
            "properties": {"n": {"type": "integer"}, "k": {"enum": ["a", "b"]}},
            "required": ["n", "k"],
            "additionalProperties": false
        });
        let json = sample_text(&grammars, ConstraintSpec::JsonSchema(schema), seed, 400);
        let value: serde_json::Value = serde_json::from_str(&json).expect(&json);
        assert!(value["n"].is_i64(), "{json}");
        assert!(value["k"] == "a" || value["k"] == "b", "{json}");
        assert_eq!(value.as_object().unwrap().len(), 2, "{json}");
    }
}

#[test]
fn invalid_constraints_are_refused_with_the_reason() {
    let grammars = grammars();
    for (spec, words) in [
        (ConstraintSpec::Regex("[0-9".into()), "unclosed"),
        (ConstraintSpec::Choice(vec![]), "empty"),
        (
            ConstraintSpec::Lark("start: undefined_rule".into()),
            "undefined_rule",
        ),
        (
            ConstraintSpec::JsonSchema(serde_json::json!({"type": "no-such-type"})),
            "no-such-type",
        ),
    ] {
        let err = grammars.compile(&spec).expect_err(&format!("{spec:?}"));
        assert!(err.0.contains(words), "{spec:?}: {err}");
    }
}

#[test]
fn a_request_with_a_constraint_needs_its_whole_row() {
    let grammars = grammars();
    let mut params = SamplingParams::greedy();
    assert!(params.is_plain_greedy());
    params.structured = Some(grammars.compile(&ConstraintSpec::JsonObject).unwrap());
    assert!(!params.is_plain_greedy());
}

/// A schema's object that does not say `additionalProperties` has only its listed properties
/// (vLLM's default, xgrammar's strict mode): random logits, which under JSON Schema's open
/// default soon add keys of their own, never do here; nested objects alike.
#[test]
fn objects_that_do_not_say_additional_properties_are_closed() {
    let grammars = grammars();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"a": {"type": "integer"},
                       "b": {"type": "object", "properties": {"c": {"type": "boolean"}}}},
        "required": ["a"]
    });
    for seed in 0..20 {
        let json = sample_text(
            &grammars,
            ConstraintSpec::JsonSchema(schema.clone()),
            seed,
            400,
        );
        let value: serde_json::Value = serde_json::from_str(&json).expect(&json);
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert!(keys.iter().all(|k| *k == "a" || *k == "b"), "{json}");
        if let Some(b) = value.get("b") {
            assert!(b.as_object().unwrap().keys().all(|k| k == "c"), "{json}");
        }
    }
}

/// `--structured-outputs-config '{"backend": "guidance"}'`: JSON Schema's own default, where
/// such an object takes other keys too.
#[test]
fn the_open_default_admits_other_keys() {
    let mut tokenizer = model::testing::byte_tokenizer();
    tokenizer.eos_token_ids = vec![0];
    let open = Grammars::new(Arc::new(tokenizer), 256, super::ObjectDefault::Open).unwrap();
    let schema = serde_json::json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    let extra = (0..40).any(|seed| {
        let json = sample_text(&open, ConstraintSpec::JsonSchema(schema.clone()), seed, 400);
        serde_json::from_str::<serde_json::Value>(&json)
            .is_ok_and(|v| v.as_object().is_some_and(|o| o.keys().any(|k| k != "a")))
    });
    assert!(
        extra,
        "40 random outputs of an open object all kept to its one key"
    );
}

/// llguidance reports a panic of its own as `panic: MESSAGE` with a backtrace: the client gets a
/// plain sentence (the backtrace belongs in the log), while its ordinary errors pass as they are.
#[test]
fn the_compilers_panics_do_not_reach_the_client() {
    use super::spec::ConstraintError;
    let panic = "panic: index out of bounds: the len is 3 but the index is 7\n<backtrace>\n   0: llguidance::earley::parser::Parser::new\n             at /root/.cargo/registry/src/llguidance-1.9.1/src/earley/parser.rs:412:9\n</backtrace>";
    let err = ConstraintError::from_llguidance(panic);
    assert!(!err.0.contains("backtrace"), "{err}");
    assert!(!err.0.contains("parser.rs"), "{err}");
    assert!(!err.0.contains("index out of bounds"), "{err}");
    assert!(err.0.contains("internal error"), "{err}");
    let plain = "unknown type: no-such-type";
    assert_eq!(ConstraintError::from_llguidance(plain).0, plain);
}

/// A grammar so ambiguous that llguidance's parser reaches its limit of items per row within a
/// few tokens: `s` is a concatenation of 2 to 24 `s`, or `x`.
pub(crate) fn too_ambiguous() -> String {
    let concatenations: Vec<String> = (2..=24).map(|k| vec!["s"; k].join(" ")).collect();
    format!("start: s\ns: {} | \"x\"", concatenations.join(" | "))
}

/// When the constraint fails mid-answer (llguidance reaches one of its limits), the sampler
/// says so, once, and holds no constraint after it: the request is to end with the failure,
/// never to go on unconstrained as if nothing happened.
#[test]
fn a_constraint_that_fails_mid_answer_is_reported() {
    let grammars = grammars();
    let params = SamplingParams {
        seed: Some(1),
        structured: Some(
            grammars
                .compile(&ConstraintSpec::Lark(too_ambiguous()))
                .unwrap(),
        ),
        ..SamplingParams::default()
    };
    let mut sampler = Sampler::new(params, &[]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut failure = None;
    for step in 0..100 {
        let mut logits: Vec<f32> = (0..256).map(|_| rng.random_range(-5.0..5.0)).collect();
        logits[0] = -50.0; // the output goes on (end of sequence is allowed after each `x`)
        let token = sampler.sample(&logits).token;
        if let Some(why) = sampler.take_constraint_failure() {
            failure = Some((step, why));
            break;
        }
        assert_eq!(token, u32::from(b'x'), "step {step}");
    }
    let (step, why) = failure.expect("the parser's limit is reached within 100 tokens");
    assert!(step < 50, "at token {step}");
    assert!(why.contains("max is 2000"), "{why}");
    // Without the parser's state and grammar: a client reads this.
    assert!(
        !why.contains("<state>") && !why.contains("<grammar>"),
        "{why}"
    );
    assert!(!sampler.is_constrained());
    assert_eq!(sampler.take_constraint_failure(), None);
}
