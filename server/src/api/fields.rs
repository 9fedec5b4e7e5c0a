//! Every request field vLLM accepts, and whether Vigil serves it or refuses it by name.
//!
//! Every request field vLLM's `CompletionRequest` and `ChatCompletionRequest`
//! (`vllm/entrypoints/openai/protocol.py`) accept, and what Vigil does with each: it works, or
//! it is refused with a 400 that names it, unless the request leaves it at vLLM's default. No
//! field vLLM acts on is ignored silently. Fields vLLM does not know, or takes and does nothing
//! with (`best_of`, OpenAI's legacy `functions`), are ignored with a warning in the log, as
//! vLLM ignores them (clients send their own extras, and frameworks send these by default).

use serde_json::Value;

use super::error::ApiError;

/// Which endpoint a body was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Completions,
    Chat,
}

enum Support {
    /// Implemented (parsed and validated by the endpoint).
    Works,
    /// Refused unless absent, `null`, or one of these JSON values (vLLM's defaults, and values
    /// that ask for nothing).
    Refused {
        defaults: &'static [&'static str],
        why: &'static str,
    },
    /// Taken and ignored, as vLLM ignores it (with a warning in the log).
    Ignored,
}

use Support::{Ignored, Refused, Works};

const BOTH: &[Endpoint] = &[Endpoint::Completions, Endpoint::Chat];
const COMPLETIONS: &[Endpoint] = &[Endpoint::Completions];
const CHAT: &[Endpoint] = &[Endpoint::Chat];

const NOT_YET: &str = "is not supported by this server";

/// The fields, with the endpoints that take them.
const FIELDS: &[(&str, &[Endpoint], Support)] = &[
    ("model", BOTH, Works),
    ("prompt", COMPLETIONS, Works),
    ("messages", CHAT, Works),
    ("max_tokens", BOTH, Works),
    ("max_completion_tokens", CHAT, Works),
    ("temperature", BOTH, Works),
    ("top_p", BOTH, Works),
    ("top_k", BOTH, Works),
    ("min_p", BOTH, Works),
    ("seed", BOTH, Works),
    ("n", BOTH, Works),
    ("presence_penalty", BOTH, Works),
    ("frequency_penalty", BOTH, Works),
    ("repetition_penalty", BOTH, Works),
    ("stop", BOTH, Works),
    ("stop_token_ids", BOTH, Works),
    ("ignore_eos", BOTH, Works),
    ("include_stop_str_in_output", BOTH, Works),
    ("skip_special_tokens", BOTH, Works),
    ("add_special_tokens", BOTH, Works),
    ("stream", BOTH, Works),
    ("stream_options", BOTH, Works),
    ("logprobs", BOTH, Works),
    ("top_logprobs", CHAT, Works),
    ("echo", COMPLETIONS, Works),
    ("add_generation_prompt", CHAT, Works),
    // OpenAI's end-user id: vLLM takes it and does nothing with it either.
    ("user", BOTH, Works),
    (
        "suffix",
        COMPLETIONS,
        Refused {
            defaults: &["\"\""],
            why: "is not currently supported",
        },
    ),
    (
        "echo",
        CHAT,
        Refused {
            defaults: &["false"],
            why: NOT_YET,
        },
    ),
    // vLLM's v1 engine takes `best_of` and does nothing with it.
    ("best_of", BOTH, Ignored),
    // OpenAI's legacy function calling: not vLLM's fields; `tools` is.
    ("functions", CHAT, Ignored),
    ("function_call", CHAT, Ignored),
    (
        "use_beam_search",
        BOTH,
        Refused {
            defaults: &["false"],
            why: NOT_YET,
        },
    ),
    (
        "length_penalty",
        BOTH,
        Refused {
            defaults: &["1", "1.0"],
            why: "only applies to beam search, which is not supported by this server",
        },
    ),
    (
        "logit_bias",
        BOTH,
        Refused {
            defaults: &["{}"],
            why: NOT_YET,
        },
    ),
    (
        "allowed_token_ids",
        BOTH,
        Refused {
            defaults: &[],
            why: NOT_YET,
        },
    ),
    (
        "bad_words",
        BOTH,
        Refused {
            defaults: &["[]"],
            why: NOT_YET,
        },
    ),
    (
        "min_tokens",
        BOTH,
        Refused {
            defaults: &["0"],
            why: NOT_YET,
        },
    ),
    (
        "truncate_prompt_tokens",
        BOTH,
        Refused {
            defaults: &[],
            why: NOT_YET,
        },
    ),
    (
        "spaces_between_special_tokens",
        BOTH,
        Refused {
            defaults: &["true"],
            why: NOT_YET,
        },
    ),
    (
        "priority",
        BOTH,
        Refused {
            defaults: &["0"],
            why: "needs priority scheduling, which is not enabled",
        },
    ),
    (
        "request_id",
        BOTH,
        Refused {
            defaults: &[],
            why: NOT_YET,
        },
    ),
    (
        "logits_processors",
        BOTH,
        Refused {
            defaults: &["[]"],
            why: NOT_YET,
        },
    ),
    (
        "return_tokens_as_token_ids",
        BOTH,
        Refused {
            defaults: &["false"],
            why: NOT_YET,
        },
    ),
    (
        "return_token_ids",
        BOTH,
        Refused {
            defaults: &["false"],
            why: NOT_YET,
        },
    ),
    (
        "cache_salt",
        BOTH,
        Refused {
            defaults: &[],
            why: NOT_YET,
        },
    ),
    (
        "kv_transfer_params",
        BOTH,
        Refused {
            defaults: &[],
            why: "needs a KV connector, which this server does not have",
        },
    ),
    (
        "vllm_xargs",
        BOTH,
        Refused {
            defaults: &["{}"],
            why: NOT_YET,
        },
    ),
    (
        "prompt_logprobs",
        BOTH,
        Refused {
            defaults: &[],
            why: NOT_YET,
        },
    ),
    (
        "prompt_embeds",
        COMPLETIONS,
        Refused {
            defaults: &[],
            why: NOT_YET,
        },
    ),
    // Structured outputs: read and compiled by the endpoint (`CommonParams::constraint`).
    ("response_format", BOTH, Works),
    ("structured_outputs", BOTH, Works),
    ("guided_json", BOTH, Works),
    ("guided_regex", BOTH, Works),
    ("guided_choice", BOTH, Works),
    ("guided_grammar", BOTH, Works),
    (
        "guided_decoding_backend",
        BOTH,
        Refused {
            defaults: &["\"auto\"", "\"guidance\"", "\"llguidance\""],
            why: "names a backend this server does not have: it constrains output with llguidance",
        },
    ),
    (
        "guided_whitespace_pattern",
        BOTH,
        Refused {
            defaults: &[],
            why: "is not supported by this server: JSON output uses llguidance's whitespace rules",
        },
    ),
    // Tools: read by the chat endpoint (`tools::plan`).
    ("tools", CHAT, Works),
    ("tool_choice", CHAT, Works),
    ("parallel_tool_calls", CHAT, Works),
    (
        "reasoning_effort",
        CHAT,
        Refused {
            defaults: &[],
            why: "needs a reasoning parser, which this server does not have",
        },
    ),
    (
        "include_reasoning",
        CHAT,
        Refused {
            defaults: &["true"],
            why: "needs a reasoning parser, which this server does not have",
        },
    ),
    (
        "continue_final_message",
        CHAT,
        Refused {
            defaults: &["false"],
            why: NOT_YET,
        },
    ),
    (
        "documents",
        CHAT,
        Refused {
            defaults: &["[]"],
            why: NOT_YET,
        },
    ),
    (
        "chat_template",
        CHAT,
        Refused {
            defaults: &[],
            why: NOT_YET,
        },
    ),
    (
        "chat_template_kwargs",
        CHAT,
        Refused {
            defaults: &["{}"],
            why: NOT_YET,
        },
    ),
    (
        "mm_processor_kwargs",
        CHAT,
        Refused {
            defaults: &["{}"],
            why: "multi-modal input is not supported by this server",
        },
    ),
];

/// Checks every field of a request body against what Vigil does with it.
pub(super) fn check(body: &Value, endpoint: Endpoint) -> Result<(), ApiError> {
    let Some(fields) = body.as_object() else {
        return Ok(()); // the endpoint's own parse reports a body that is not an object
    };
    let mut ignored = Vec::new();
    for (name, value) in fields {
        let known = FIELDS
            .iter()
            .find(|(n, endpoints, _)| n == name && endpoints.contains(&endpoint));
        match known {
            Some((_, _, Works)) => {}
            Some((_, _, Ignored)) => ignored.push(name.as_str()),
            Some((_, _, Refused { defaults, why })) => {
                let is_default = value.is_null()
                    || defaults
                        .iter()
                        .any(|d| serde_json::from_str::<Value>(d).ok().as_ref() == Some(value));
                if !is_default {
                    return Err(ApiError::bad_request(
                        format!("`{name}` {why}"),
                        Some(name.as_str()),
                    ));
                }
            }
            None => ignored.push(name.as_str()),
        }
    }
    if !ignored.is_empty() {
        tracing::warn!(
            fields = ?ignored,
            "The following fields were present in the request but ignored"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{check, Endpoint, FIELDS};

    #[test]
    fn defaults_pass_and_anything_else_is_refused_by_name() {
        let ok = json!({"prompt": "x", "suffix": null, "best_of": 1, "logit_bias": {}, "min_tokens": 0,
                        "response_format": {"type": "text"}, "priority": 0, "user": "u", "some_client_extra": 1});
        assert!(check(&ok, Endpoint::Completions).is_ok());
        for (field, value) in [
            ("suffix", json!("!")),
            ("logit_bias", json!({"5": 10})),
            ("min_tokens", json!(3)),
            ("guided_decoding_backend", json!("xgrammar")),
            ("guided_whitespace_pattern", json!(" *")),
            ("priority", json!(1)),
        ] {
            let err = check(&json!({"prompt": "x", field: value}), Endpoint::Completions)
                .expect_err(field);
            assert_eq!(err.param.as_deref(), Some(field), "{field}");
        }
        let err = check(
            &json!({"prompt": "x", "suffix": "!"}),
            Endpoint::Completions,
        )
        .unwrap_err();
        assert_eq!(err.message, "`suffix` is not currently supported");
    }

    /// vLLM takes `best_of` and OpenAI's legacy `functions` and does nothing with them; clients
    /// (LangChain, litellm) send them by default.
    #[test]
    fn fields_vllm_ignores_are_accepted() {
        let body = json!({"prompt": "x", "best_of": 3});
        assert!(check(&body, Endpoint::Completions).is_ok());
        let body = json!({"messages": [], "best_of": 2, "functions": [{"name": "f"}],
                          "function_call": "auto"});
        assert!(check(&body, Endpoint::Chat).is_ok());
    }

    #[test]
    fn every_field_is_listed_once_per_endpoint() {
        for e in [Endpoint::Completions, Endpoint::Chat] {
            let mut names: Vec<&str> = FIELDS
                .iter()
                .filter(|(_, es, _)| es.contains(&e))
                .map(|(n, _, _)| *n)
                .collect();
            let before = names.len();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), before, "{e:?}");
        }
    }
}
