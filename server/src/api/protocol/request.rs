//! Request bodies, and their conversion to sampling parameters with vLLM's defaults and limits.
//!
//! Request bodies of the OpenAI-compatible endpoints, and their conversion to sampling
//! parameters with vLLM's defaults and limits.

use serde::Deserialize;

use crate::api::error::ApiError;
use engine::ConstraintSpec;
use engine::SamplingParams;
use model::ChatMessage;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(crate) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct StreamOptions {
    pub include_usage: Option<bool>,
    pub continuous_usage_stats: Option<bool>,
}

/// What a stream reports of usage: a last chunk with the totals (`include_usage`), and the
/// counts so far on every chunk (`continuous_usage_stats`, vLLM's extension).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StreamUsage {
    pub include_usage: bool,
    pub continuous: bool,
}

/// Parameters shared by completions and chat completions.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct CommonParams {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub n: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub stop: Option<OneOrMany>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub include_stop_str_in_output: Option<bool>,
    pub skip_special_tokens: Option<bool>,
    pub add_special_tokens: Option<bool>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub response_format: Option<ResponseFormat>,
    pub structured_outputs: Option<StructuredOutputs>,
    /// vLLM's older names for the fields of `structured_outputs`.
    pub guided_json: Option<serde_json::Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
}

/// OpenAI's `response_format`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct JsonSchemaFormat {
    pub name: Option<String>,
    #[expect(
        dead_code,
        reason = "accepted as the OpenAI API defines it; the model is not told"
    )]
    pub description: Option<String>,
    pub schema: Option<serde_json::Value>,
    #[expect(
        dead_code,
        reason = "accepted as the OpenAI API defines it; schemas always bind"
    )]
    pub strict: Option<bool>,
}

/// vLLM's `structured_outputs`: at most one of its constraints.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StructuredOutputs {
    /// A JSON schema, as an object or as a string holding one.
    pub json: Option<serde_json::Value>,
    pub regex: Option<String>,
    pub choice: Option<Vec<String>>,
    /// A grammar in Lark syntax.
    pub grammar: Option<String>,
    pub json_object: Option<bool>,
}

/// The most choices one request may ask for of each prompt.
pub(crate) const MAX_N: i64 = 128;

/// The most prompts one completions request may list (vLLM's `VLLM_MAX_COMPLETION_PROMPTS`
/// default), before any is tokenized.
pub(crate) const MAX_PROMPTS: usize = 1024;

/// The most choices one request may ask for in all (prompts times `n`): each is an engine
/// request, and one request body must not queue more than the engine's default
/// `--max-num-seqs` four times over.
pub(crate) const MAX_CHOICES: usize = 1024;

impl CommonParams {
    /// Sampling parameters (vLLM's defaults where a field is absent), validated; `logprobs`
    /// comes from the field `logprobs_param` names (chat's `top_logprobs`).
    pub(crate) fn sampling(
        &self,
        logprobs: Option<i64>,
        logprobs_param: &'static str,
    ) -> Result<SamplingParams, ApiError> {
        let d = SamplingParams::default();
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => None,
            Some(k) if k > 0 => Some(k as usize),
            Some(k) => {
                return Err(ApiError::bad_request(
                    format!("top_k must be -1 (disable) or at least 1, got {k}"),
                    Some("top_k"),
                ))
            }
        };
        let logprobs = match logprobs {
            None => None,
            Some(n) if n >= 0 => Some(n as usize),
            Some(n) => {
                return Err(ApiError::bad_request(
                    format!("{logprobs_param} must be non-negative, got {n}"),
                    Some(logprobs_param),
                ))
            }
        };
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k,
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            seed: self.seed,
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            logprobs,
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            structured: None,
        };
        p.validate()
            .map_err(|e| ApiError::bad_request(e.to_string(), Some(e.field)))?;
        Ok(p)
    }

    pub(crate) fn n(&self) -> Result<usize, ApiError> {
        match self.n.unwrap_or(1) {
            n @ 1..=MAX_N => Ok(n as usize),
            n => Err(ApiError::bad_request(
                format!("n must be between 1 and {MAX_N}, got {n}"),
                Some("n"),
            )),
        }
    }

    /// Whether the client asked for a stream.
    pub(crate) fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// The stream's usage reporting when the client asked for a stream; `stream_options`
    /// without `stream: true` is refused, as vLLM refuses it.
    pub(crate) fn streaming(&self) -> Result<Option<StreamUsage>, ApiError> {
        let options = self.stream_options.clone().unwrap_or_default();
        if !self.is_stream() {
            if self.stream_options.is_some() {
                return Err(ApiError::bad_request(
                    "Stream options can only be defined when `stream=True`.",
                    Some("stream_options"),
                ));
            }
            return Ok(None);
        }
        Ok(Some(StreamUsage {
            include_usage: options.include_usage.unwrap_or(false),
            continuous: options.continuous_usage_stats.unwrap_or(false),
        }))
    }

    pub(crate) fn stop_strings(&self) -> Result<Vec<String>, ApiError> {
        let stop = self
            .stop
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::bad_request(
                "stop strings must not be empty",
                Some("stop"),
            ));
        }
        Ok(stop)
    }
}

impl CommonParams {
    /// The constraint the request puts on its output, with the field that asks for it: at most
    /// one of `response_format` (other than text), `structured_outputs`' fields and the
    /// `guided_*` fields, as vLLM allows one.
    pub(crate) fn constraint(&self) -> Result<Option<(ConstraintSpec, &'static str)>, ApiError> {
        let mut found: Vec<(ConstraintSpec, &'static str)> = Vec::new();
        match &self.response_format {
            None | Some(ResponseFormat::Text) => {}
            Some(ResponseFormat::JsonObject) => {
                found.push((ConstraintSpec::JsonObject, "response_format"))
            }
            Some(ResponseFormat::JsonSchema { json_schema }) if json_schema.name.is_none() => {
                return Err(ApiError::bad_request(
                    "response_format.json_schema.name is required",
                    Some("response_format"),
                ))
            }
            Some(ResponseFormat::JsonSchema { json_schema }) => match &json_schema.schema {
                Some(schema) => found.push((
                    ConstraintSpec::JsonSchema(schema.clone()),
                    "response_format",
                )),
                None => {
                    return Err(ApiError::bad_request(
                        "response_format.json_schema.schema is required with type json_schema",
                        Some("response_format"),
                    ))
                }
            },
        }
        let so = self.structured_outputs.clone().unwrap_or_default();
        if let Some(json) = so.json.as_ref().or(self.guided_json.as_ref()) {
            let param = if so.json.is_some() {
                "structured_outputs"
            } else {
                "guided_json"
            };
            found.push((
                ConstraintSpec::JsonSchema(schema_value(json, param)?),
                param,
            ));
        }
        for (value, param) in [
            (&so.regex, "structured_outputs"),
            (&self.guided_regex, "guided_regex"),
        ] {
            if let Some(rx) = value {
                found.push((ConstraintSpec::Regex(rx.clone()), param));
            }
        }
        for (value, param) in [
            (&so.choice, "structured_outputs"),
            (&self.guided_choice, "guided_choice"),
        ] {
            if let Some(choices) = value {
                found.push((ConstraintSpec::Choice(choices.clone()), param));
            }
        }
        for (value, param) in [
            (&so.grammar, "structured_outputs"),
            (&self.guided_grammar, "guided_grammar"),
        ] {
            if let Some(grammar) = value {
                found.push((ConstraintSpec::Lark(grammar.clone()), param));
            }
        }
        if so.json_object == Some(true) {
            found.push((ConstraintSpec::JsonObject, "structured_outputs"));
        }
        if found.len() > 1 {
            let fields: Vec<&str> = found.iter().map(|(_, p)| *p).collect();
            return Err(ApiError::bad_request(
                format!(
                    "only one kind of structured output may be asked for at once (got {})",
                    fields.join(", ")
                ),
                Some(found[1].1),
            ));
        }
        Ok(found.pop())
    }
}

/// A JSON schema given as an object, or as a string holding one (vLLM takes both).
fn schema_value(v: &serde_json::Value, param: &str) -> Result<serde_json::Value, ApiError> {
    match v {
        serde_json::Value::String(s) => serde_json::from_str(s).map_err(|e| {
            ApiError::bad_request(format!("{param}: the schema is not JSON: {e}"), Some(param))
        }),
        other => Ok(other.clone()),
    }
}

/// `prompt`: a string, a list of strings, token ids, or a list of lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// The completion-only fields (the shared ones are parsed separately as [`CommonParams`], so
/// that errors keep the path to the offending field, which `#[serde(flatten)]` would lose).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CompletionRequest {
    pub prompt: Prompt,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
}

/// Message content: a string, or a list of parts of which the text ones are used.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ChatMessageIn {
    pub role: String,
    pub content: Option<Content>,
    /// An assistant's earlier calls (OpenAI's shape, the arguments a JSON string).
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// The call a tool message answers.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

/// The chat-only fields (see [`CompletionRequest`] for why the shared ones are separate).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ChatRequest {
    pub messages: Vec<ChatMessageIn>,
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub add_generation_prompt: Option<bool>,
    pub tools: Option<Vec<crate::api::tools::Tool>>,
    pub tool_choice: Option<crate::api::tools::ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
}

impl ChatRequest {
    /// The tools as the chat template gets them (their JSON, as the client sent it), unless
    /// `tool_choice` is `none`.
    pub(crate) fn tool_definitions(&self) -> Option<Vec<serde_json::Value>> {
        let none = matches!(&self.tool_choice, Some(crate::api::tools::ToolChoice::Mode(m)) if m == "none");
        let tools = self.tools.as_ref().filter(|t| !t.is_empty() && !none)?;
        Some(
            tools
                .iter()
                .map(crate::api::tools::Tool::definition)
                .collect(),
        )
    }

    pub(crate) fn messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        chat_messages(&self.messages)
    }
}

/// The messages a chat template renders, with their text parts joined.
pub(crate) fn chat_messages(messages: &[ChatMessageIn]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "messages must not be empty",
            Some("messages"),
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut out = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => out.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::bad_request(
                                    format!(
                                    "messages[{i}].content: unsupported content part type {kind:?}"
                                ),
                                    Some("messages"),
                                ))
                            }
                        }
                    }
                    out
                }
            };
            let tool_calls = match (m.role.as_str(), &m.tool_calls) {
                ("assistant", Some(calls)) => template_tool_calls(i, calls)?,
                _ => None,
            };
            Ok(ChatMessage {
                role: m.role.clone(),
                content,
                tool_calls,
                tool_call_id: m.tool_call_id.clone().filter(|_| m.role == "tool"),
                name: m.name.clone(),
            })
        })
        .collect()
}

/// An assistant's `tool_calls` as chat templates take them (vLLM's `_postprocess_messages`):
/// none when the list is empty, each call's `arguments` parsed into an object (a string that
/// is not a JSON object, which would fail every later turn of the conversation, becomes `{}`),
/// and anything but function calls refused.
fn template_tool_calls(
    i: usize,
    calls: &[serde_json::Value],
) -> Result<Option<Vec<serde_json::Value>>, ApiError> {
    use serde_json::Value;
    if calls.is_empty() {
        return Ok(None);
    }
    let refuse = |why: &str| {
        Err(ApiError::bad_request(
            format!("messages[{i}].tool_calls: {why}"),
            Some("tool_calls"),
        ))
    };
    let mut out = Vec::with_capacity(calls.len());
    for call in calls {
        let Some(fields) = call.as_object() else {
            return refuse("assistant tool_calls entries must be objects.");
        };
        let is_function = fields.get("type").is_none_or(|t| t == "function");
        let mut call = fields.clone();
        let Some(Value::Object(function)) = call.get_mut("function").filter(|_| is_function) else {
            return refuse(
                "chat completions only support assistant tool_calls of type 'function'.",
            );
        };
        let arguments = match function.get("arguments") {
            Some(Value::Object(object)) => Value::Object(object.clone()),
            Some(Value::String(text)) if !text.is_empty() => {
                match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(object)) => Value::Object(object),
                    _ => {
                        tracing::warn!(
                            "a tool call's arguments are not a JSON object ({} bytes); the template gets {{}}",
                            text.len()
                        );
                        Value::Object(Default::default())
                    }
                }
            }
            _ => Value::Object(Default::default()),
        };
        function.insert("arguments".into(), arguments);
        out.push(Value::Object(call));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(value: serde_json::Value) -> Result<Vec<ChatMessage>, ApiError> {
        chat_messages(&serde_json::from_value::<Vec<ChatMessageIn>>(value).unwrap())
    }

    /// Qwen2.5's template, its assistant and tool turns as it ships them.
    const QWEN_TOOL_TURNS: &str = r#"{%- for message in messages %}
    {%- if message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {{- '<|im_start|>user\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response><|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}"#;

    #[test]
    fn tool_turns_reach_the_chat_template() {
        let conversation = messages(json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        ]))
        .unwrap();
        let rendered = model::ChatTemplate::new(QWEN_TOOL_TURNS)
            .unwrap()
            .render(&conversation, false, None, None)
            .unwrap();
        assert_eq!(
            rendered,
            "<|im_start|>user\nWeather in Paris?<|im_end|>\n\
             <|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n\
             <|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>\n"
        );
        let ids = model::ChatTemplate::new(
            "{% for m in messages %}{% if m.tool_call_id is defined %}[{{ m.tool_call_id }}]{% endif %}{% endfor %}",
        )
        .unwrap()
        .render(&conversation, false, None, None)
        .unwrap();
        assert_eq!(ids, "[call_1]");
    }

    #[test]
    fn tool_call_arguments_become_objects_and_bad_calls_are_refused() {
        let calls = |calls: serde_json::Value| {
            messages(json!([{"role": "assistant", "content": "", "tool_calls": calls}]))
        };
        // Not JSON, or JSON but not an object: {} (a bad turn in the history must not fail
        // every later turn); empty: the template's plain assistant path.
        for arguments in [json!("{\"city\": "), json!("[1]"), json!(""), json!(null)] {
            let m = calls(
                json!([{"type": "function", "function": {"name": "f", "arguments": arguments}}]),
            )
            .unwrap();
            assert_eq!(
                m[0].tool_calls.as_ref().unwrap()[0]["function"]["arguments"],
                json!({})
            );
        }
        assert_eq!(calls(json!([])).unwrap()[0].tool_calls, None);
        for bad in [
            json!(["call"]),
            json!([{"type": "code", "function": {"name": "f"}}]),
        ] {
            let err = calls(bad).unwrap_err();
            assert_eq!(err.param.as_deref(), Some("tool_calls"), "{}", err.message);
        }
    }
}
