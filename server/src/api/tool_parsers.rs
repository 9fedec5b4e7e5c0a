//! `tool_choice: "auto"`: tool calls parsed out of the model's output.
//!
//! `tool_choice: "auto"`: the model decides whether to call a tool, in its own format, and a
//! parser (`--tool-call-parser`, as vLLM names them) reads the calls out of the output. The
//! whole output is parsed when it is complete; a stream sends content as long as it cannot be the
//! start of a call, and the calls when the choice ends.

/// The formats Vigil reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolParser {
    /// Hermes (NousResearch; also Qwen's): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
    /// any number, after optional content.
    Hermes,
    /// Llama 3.x's JSON calls: the output is `{"name": ..., "parameters": {...}}` (optionally
    /// after `<|python_tag|>`), several separated by `;`.
    Llama3Json,
}

/// An output read by a parser: its content (what is not a call), and its calls as (name,
/// arguments as JSON text).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub content: Option<String>,
    pub calls: Vec<(String, String)>,
}

const HERMES_START: &str = "<tool_call>";
const HERMES_END: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";

impl ToolParser {
    /// The names `--tool-call-parser` takes.
    pub const NAMES: &'static [&'static str] = &["hermes", "llama3_json"];

    /// The parser vLLM's `--tool-call-parser` names `name`.
    pub fn from_name(name: &str) -> Option<ToolParser> {
        match name {
            "hermes" => Some(ToolParser::Hermes),
            "llama3_json" => Some(ToolParser::Llama3Json),
            _ => None,
        }
    }

    /// Reads a whole output. An output whose calls do not parse is content, as vLLM returns it.
    pub fn parse(self, text: &str) -> Parsed {
        let calls = match self {
            ToolParser::Hermes => hermes_calls(text),
            ToolParser::Llama3Json => llama3_calls(text),
        };
        match calls {
            Some((content_end, calls)) if !calls.is_empty() => Parsed {
                content: Some(text[..content_end].to_owned()).filter(|c| !c.trim().is_empty()),
                calls,
            },
            _ => Parsed {
                content: Some(text.to_owned()),
                calls: Vec::new(),
            },
        }
    }

    /// How much of a stream's output so far is content for sure: it cannot turn into (part of)
    /// a call whatever comes next.
    pub fn settled_content(self, text: &str) -> usize {
        match self {
            ToolParser::Hermes => match text.find(HERMES_START) {
                Some(start) => start,
                None => text.len() - partial_suffix(text, HERMES_START),
            },
            ToolParser::Llama3Json => {
                let body = text.trim_start();
                if body.is_empty()
                    || body.starts_with('{')
                    || body.starts_with(PYTHON_TAG)
                    || PYTHON_TAG.starts_with(body)
                {
                    0
                } else {
                    text.len()
                }
            }
        }
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `marker`.
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len())
        .rev()
        .find(|&n| text.ends_with(&marker[..n]))
        .unwrap_or(0)
}

/// Hermes calls: where the content ends (the first `<tool_call>`), and each call.
fn hermes_calls(text: &str) -> Option<(usize, Vec<(String, String)>)> {
    let first = text.find(HERMES_START)?;
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(start) = rest.find(HERMES_START) {
        let body = &rest[start + HERMES_START.len()..];
        let (json, after) = match body.find(HERMES_END) {
            Some(end) => (&body[..end], &body[end + HERMES_END.len()..]),
            None => (body, ""),
        };
        calls.push(call_from(json.trim(), "arguments")?);
        rest = after;
    }
    Some((first, calls))
}

/// Llama 3 JSON calls: the whole output, after an optional `<|python_tag|>`.
fn llama3_calls(text: &str) -> Option<(usize, Vec<(String, String)>)> {
    let body = text.trim_start();
    let body = body.strip_prefix(PYTHON_TAG).unwrap_or(body).trim_start();
    if !body.starts_with('{') {
        return None;
    }
    let mut calls = Vec::new();
    let mut rest = body;
    loop {
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<serde_json::Value>();
        let value = values.next()?.ok()?;
        let name = value.get("name")?.as_str()?.to_owned();
        let args = value.get("parameters").or_else(|| value.get("arguments"))?;
        calls.push((name, arguments_text(args)));
        // Calls are separated by `;`.
        let tail = rest[values.byte_offset()..].trim_start();
        if tail.is_empty() {
            break;
        }
        rest = tail.strip_prefix(';')?.trim_start();
    }
    Some((0, calls))
}

/// A `{"name": ..., <arguments key>: ...}` call.
fn call_from(json: &str, key: &str) -> Option<(String, String)> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let name = value.get("name")?.as_str()?.to_owned();
    let args = value.get(key)?;
    Some((name, arguments_text(args)))
}

/// Arguments as JSON text (a string given as such is taken as the text).
fn arguments_text(args: &serde_json::Value) -> String {
    match args {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{Parsed, ToolParser};

    fn call(name: &str, args: &str) -> (String, String) {
        (name.to_owned(), args.to_owned())
    }

    #[test]
    fn hermes_reads_calls_after_content() {
        let out = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>";
        assert_eq!(
            ToolParser::Hermes.parse(out),
            Parsed {
                content: Some("Let me check.\n".into()),
                calls: vec![
                    call("get_weather", r#"{"city":"Paris"}"#),
                    call("get_time", "{}")
                ],
            }
        );
        // No call, a call cut short, a call that is not JSON: content.
        for text in [
            "Just text.",
            "<tool_call>{\"name\": \"f\", \"argu",
            "<tool_call>nope</tool_call>",
        ] {
            assert_eq!(ToolParser::Hermes.parse(text).calls, vec![], "{text}");
            assert_eq!(
                ToolParser::Hermes.parse(text).content.as_deref(),
                Some(text)
            );
        }
        // An unclosed last call is read to the end, as vLLM's regex does.
        let open = "<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}";
        assert_eq!(
            ToolParser::Hermes.parse(open).calls,
            vec![call("f", r#"{"x":1}"#)]
        );
        assert_eq!(ToolParser::Hermes.parse(open).content, None);
    }

    #[test]
    fn llama3_json_reads_one_or_several_calls() {
        let one = r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#;
        assert_eq!(
            ToolParser::Llama3Json.parse(one).calls,
            vec![call("get_weather", r#"{"city":"Paris"}"#)]
        );
        let two = r#"<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "arguments": {"k": 2}}"#;
        assert_eq!(
            ToolParser::Llama3Json.parse(two).calls,
            vec![call("a", "{}"), call("b", r#"{"k":2}"#)]
        );
        assert_eq!(ToolParser::Llama3Json.parse(two).content, None);
        for text in ["Paris is sunny.", "{\"name\": \"a\"", "{\"no_name\": 1}"] {
            assert_eq!(ToolParser::Llama3Json.parse(text).calls, vec![], "{text}");
        }
    }

    #[test]
    fn a_stream_holds_back_only_what_may_start_a_call() {
        let h = ToolParser::Hermes;
        assert_eq!(h.settled_content("Hello"), 5);
        assert_eq!(h.settled_content("Hello <tool"), 6);
        assert_eq!(h.settled_content("Hello <tool_call>{"), 6);
        assert_eq!(h.settled_content("a < b"), 5);
        let l = ToolParser::Llama3Json;
        assert_eq!(l.settled_content("  {\"name\""), 0);
        assert_eq!(l.settled_content("<|python"), 0);
        assert_eq!(l.settled_content("Sure, "), 6);
    }
}
