//! Tool calling as vLLM does it: required and named tool choices through structured outputs.
//!
//! Tool calling as vLLM does it: `tool_choice: "required"` and a named function hold the output
//! to a JSON schema built from the tool definitions (structured outputs), and the output is
//! returned as `tool_calls`. `"none"` calls no tool. `"auto"` (the default when tools are given)
//! lets the model decide, in its own format, which the `--tool-call-parser` reads
//! ([`super::tool_parsers`]); without `--enable-auto-tool-choice` it is vLLM's 400.

use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::protocol::{FunctionCallOut, ToolCallOut};
use super::tool_parsers::ToolParser;
use engine::ConstraintSpec;

/// A tool a chat request offers the model.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Tool {
    #[serde(rename = "type")]
    #[expect(
        dead_code,
        reason = "checked by deserializing: \"function\" is the only kind"
    )]
    pub kind: ToolKind,
    pub function: FunctionDef,
}

impl Tool {
    /// The definition as OpenAI's JSON (what chat templates iterate over).
    pub(crate) fn definition(&self) -> Value {
        let f = &self.function;
        let mut function = json!({"name": f.name, "parameters": parameters(f)});
        if let Some(d) = &f.description {
            function["description"] = json!(d);
        }
        if let Some(strict) = f.strict {
            function["strict"] = json!(strict);
        }
        json!({"type": "function", "function": function})
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ToolKind {
    Function,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct FunctionDef {
    pub name: String,
    pub description: Option<String>,
    /// The arguments' JSON schema (absent: any JSON object).
    pub parameters: Option<Value>,
    pub strict: Option<bool>,
}

/// `tool_choice`: a mode, or one named function.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum ToolChoice {
    Mode(String),
    Named(NamedToolChoice),
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct NamedToolChoice {
    #[serde(rename = "type")]
    #[expect(
        dead_code,
        reason = "checked by deserializing: \"function\" is the only kind"
    )]
    pub kind: ToolKind,
    pub function: NamedFunction,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct NamedFunction {
    pub name: String,
}

/// How a request's output becomes tool calls.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ToolCalling {
    /// The model may call tools in its own format, which this parser reads.
    Auto(ToolParser),
    /// The output is a JSON list of `{"name", "parameters"}`, one call each.
    Required,
    /// The output is the arguments of this function.
    Named(String),
}

/// The constraint and the tool calling `tools` and `tool_choice` ask for (`None`: no tool is
/// called), or vLLM's 400.
pub(super) fn plan(
    tools: Option<&[Tool]>,
    choice: Option<&ToolChoice>,
    parallel_tool_calls: Option<bool>,
    auto: Option<ToolParser>,
) -> Result<Option<(Option<ConstraintSpec>, ToolCalling)>, ApiError> {
    let tools = tools.unwrap_or_default();
    let refuse = |message: String| Err(ApiError::bad_request(message, Some("tool_choice")));
    let choice = match choice {
        Some(ToolChoice::Mode(mode)) if mode == "none" => return Ok(None),
        None if tools.is_empty() => return Ok(None),
        None => ToolChoice::Mode("auto".into()),
        Some(c) => c.clone(),
    };
    if tools.is_empty() {
        return refuse("When using `tool_choice`, `tools` must be set.".into());
    }
    match choice {
        ToolChoice::Mode(mode) if mode == "auto" => match auto {
            Some(parser) => Ok(Some((None, ToolCalling::Auto(parser)))),
            None => refuse(
                "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set"
                    .into(),
            ),
        },
        ToolChoice::Mode(mode) if mode == "required" => {
            // Each tool's `$defs` move to the root, where its `#/$defs/...` references then
            // point (as vLLM builds this schema); two tools defining one name differently
            // cannot share it.
            let mut defs = serde_json::Map::new();
            let mut calls = Vec::with_capacity(tools.len());
            for t in tools {
                let mut parameters = parameters(&t.function);
                if let Some(Value::Object(own)) = parameters
                    .as_object_mut()
                    .and_then(|p| p.remove("$defs"))
                {
                    for (name, def) in own {
                        match defs.get(&name) {
                            Some(existing) if *existing != def => {
                                return refuse(format!(
                                    "Tool definition '{name}' has multiple schemas, which is not supported."
                                ))
                            }
                            _ => {
                                defs.insert(name, def);
                            }
                        }
                    }
                }
                // The wrapper is ours: it has exactly these two keys, whatever the default
                // for objects that do not say.
                calls.push(json!({
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "enum": [t.function.name]},
                        "parameters": parameters,
                    },
                    "required": ["name", "parameters"],
                    "additionalProperties": false,
                }));
            }
            let mut schema = json!({"type": "array", "minItems": 1, "items": {"anyOf": calls}});
            if parallel_tool_calls == Some(false) {
                schema["maxItems"] = json!(1);
            }
            if !defs.is_empty() {
                schema["$defs"] = Value::Object(defs);
            }
            Ok(Some((
                Some(ConstraintSpec::JsonSchema(schema)),
                ToolCalling::Required,
            )))
        }
        ToolChoice::Mode(mode) => refuse(format!(
            "tool_choice {mode:?} is not one of \"none\", \"auto\", \"required\" or a named function"
        )),
        ToolChoice::Named(named) => {
            let name = named.function.name;
            let Some(tool) = tools.iter().find(|t| t.function.name == name) else {
                return refuse(format!("Tool '{name}' has not been passed in `tools`."));
            };
            Ok(Some((
                Some(ConstraintSpec::JsonSchema(parameters(&tool.function))),
                ToolCalling::Named(name),
            )))
        }
    }
}

fn parameters(f: &FunctionDef) -> Value {
    f.parameters
        .clone()
        .unwrap_or_else(|| json!({"type": "object"}))
}

/// A whole output read as tool calls: the content beside them (`auto` keeps the text before
/// the calls, `null` when there is none; the constrained modes have none) and the calls.
/// `None` when the output is not calls: `required`'s cut short by `max_tokens`, or, with
/// `auto`, calling no tool. A named function's output is its arguments even when cut short
/// (as vLLM returns it: the client sees the call and the `length` finish).
pub(super) fn read_calls(
    calling: &ToolCalling,
    text: &str,
) -> Option<(Option<String>, Vec<ToolCallOut>)> {
    match calling {
        ToolCalling::Auto(parser) => {
            let parsed = parser.parse(text);
            if parsed.calls.is_empty() {
                return None;
            }
            let calls = parsed
                .calls
                .into_iter()
                .map(|(name, arguments)| call(name, arguments))
                .collect();
            Some((parsed.content, calls))
        }
        ToolCalling::Named(name) => Some((
            Some(String::new()),
            vec![call(name.clone(), text.to_owned())],
        )),
        ToolCalling::Required => {
            #[derive(Deserialize)]
            struct Call {
                name: String,
                parameters: Value,
            }
            let calls: Vec<Call> = serde_json::from_str(text).ok()?;
            let calls = calls
                .into_iter()
                .map(|c| call(c.name, c.parameters.to_string()))
                .collect();
            Some((Some(String::new()), calls))
        }
    }
}

/// vLLM's finish reason for an output read as tool calls: `tool_calls` for `auto`, and for
/// `required` when it ended as the constraint allows; a named function keeps its own (`stop`).
pub(super) fn finish_reason(
    calling: &ToolCalling,
    finish: Option<&'static str>,
) -> Option<&'static str> {
    match (calling, finish) {
        (ToolCalling::Auto(_), _) | (ToolCalling::Required, Some("stop")) => Some("tool_calls"),
        _ => finish,
    }
}

/// A fresh call id (vLLM's `chatcmpl-tool-` ids).
pub(super) fn call_id() -> String {
    super::request_id("chatcmpl-tool")
}

/// A call with a fresh id.
pub(super) fn call(name: String, arguments: String) -> ToolCallOut {
    ToolCallOut {
        id: call_id(),
        kind: "function",
        function: FunctionCallOut { name, arguments },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, parameters: Value) -> Tool {
        serde_json::from_value(json!({"type": "function",
            "function": {"name": name, "parameters": parameters}}))
        .unwrap()
    }

    fn required_schema(tools: &[Tool]) -> Result<Value, ApiError> {
        let choice = ToolChoice::Mode("required".into());
        match plan(Some(tools), Some(&choice), None, None)? {
            Some((Some(ConstraintSpec::JsonSchema(schema)), ToolCalling::Required)) => Ok(schema),
            other => panic!("{other:?}"),
        }
    }

    /// What pydantic writes for a model with a nested model: the nested one in `$defs`,
    /// referred to from the root of the parameters.
    fn nested(name: &str, inner: &str) -> Tool {
        tool(
            name,
            json!({"type": "object", "properties": {"x": {"$ref": format!("#/$defs/{inner}")}},
                "required": ["x"],
                "$defs": {inner: {"type": "object", "properties": {"n": {"type": "integer"}}}}}),
        )
    }

    #[test]
    fn required_moves_each_tools_defs_to_the_root_where_its_refs_point() {
        let schema = required_schema(&[nested("a", "Inner"), nested("b", "Other")]).unwrap();
        for (i, def) in ["Inner", "Other"].iter().enumerate() {
            let reference = schema["items"]["anyOf"][i]["properties"]["parameters"]["properties"]
                ["x"]["$ref"]
                .as_str()
                .unwrap();
            let target = schema.pointer(reference.strip_prefix('#').unwrap());
            assert_eq!(target, Some(&schema["$defs"][def]), "{schema}");
            assert!(schema["items"]["anyOf"][i]["properties"]["parameters"]
                .get("$defs")
                .is_none());
        }
        // Two tools sharing a definition share it; two defining one name apart are refused.
        required_schema(&[nested("a", "Inner"), nested("b", "Inner")]).unwrap();
        let mut clash = nested("b", "Inner");
        clash.function.parameters.as_mut().unwrap()["$defs"]["Inner"] = json!({"type": "string"});
        let err = required_schema(&[nested("a", "Inner"), clash]).unwrap_err();
        assert!(
            err.message.contains("'Inner' has multiple schemas"),
            "{}",
            err.message
        );
    }

    #[test]
    fn required_allows_no_key_but_name_and_parameters() {
        let schema = required_schema(&[tool("a", json!({"type": "object"}))]).unwrap();
        assert_eq!(schema["items"]["anyOf"][0]["additionalProperties"], false);
    }

    #[test]
    fn a_named_functions_output_cut_short_is_still_its_call() {
        let calling = ToolCalling::Named("get_weather".into());
        let (content, calls) = read_calls(&calling, r#"{"city": "Par"#).unwrap();
        assert_eq!(content.as_deref(), Some(""));
        assert_eq!(calls[0].function.name, "get_weather");
        assert_eq!(calls[0].function.arguments, r#"{"city": "Par"#);
    }
}
