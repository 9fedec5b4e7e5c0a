//! Chat templates rendered with minijinja the way transformers renders them with Jinja2.
//!
//! Chat templates, rendered with minijinja the way HF transformers renders them with Jinja2:
//! `trim_blocks` and `lstrip_blocks` on, loop controls, `raise_exception`, and Python string
//! methods (`.strip()`, `.startswith()`, ...) through minijinja-contrib's pycompat.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

/// One chat message, with the fields of tool turns that templates of tool-calling models render
/// (Qwen's, Llama 3's): an assistant's `tool_calls` (each `{"id", "type", "function": {"name",
/// "arguments"}}`, the arguments an object, as transformers expects them) and a tool message's
/// `tool_call_id`; `name` where the client gave one. Absent fields are absent in the template
/// too (`is defined` is false).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
    /// An assistant message's tool calls, as the OpenAI API writes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The participant's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    /// A message of `role` with `content` and nothing else.
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            ..ChatMessage::default()
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .finish()
    }
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported with its line.
    pub fn new(source: &str) -> Result<ChatTemplate, Error> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_filter("tojson", python_tojson);
        env.add_template_owned(NAME, source.to_owned())?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
        })
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages` as the model expects its prompt.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<String, Error> {
        self.render_with_tools(messages, add_generation_prompt, bos_token, eos_token, None)
    }

    /// [`ChatTemplate::render`], with the request's tool definitions as `tools` (as
    /// transformers passes them; templates of tool-calling models describe them to the model).
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
        tools: Option<&[serde_json::Value]>,
    ) -> Result<String, Error> {
        self.env.get_template(NAME)?.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token.unwrap_or(""),
            eos_token => eos_token.unwrap_or(""),
            tools => minijinja::Value::from_serialize(tools),
        })
    }
}

/// transformers' `tojson` filter: Python's `json.dumps(value, ensure_ascii=False, indent=...,
/// sort_keys=...)`, whose separators are `", "` and `": "` (minijinja's own filter writes
/// compact JSON and escapes `<`, `>`, `&` and `'` for HTML, which a model trained on
/// transformers' prompts never saw).
fn python_tojson(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> Result<minijinja::Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    if sort_keys == Some(true) {
        sort_object_keys(&mut json);
    }
    let mut out = Vec::new();
    let written = match indent {
        Some(width) => {
            let pad = vec![b' '; width];
            let mut ser = serde_json::Serializer::with_formatter(
                &mut out,
                serde_json::ser::PrettyFormatter::with_indent(&pad),
            );
            serde::Serialize::serialize(&json, &mut ser)
        }
        None => {
            let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonSeparators);
            serde::Serialize::serialize(&json, &mut ser)
        }
    };
    written.map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    let text = String::from_utf8(out)
        .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    Ok(minijinja::Value::from_safe_string(text))
}

fn sort_object_keys(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = std::mem::take(map).into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, mut v) in entries {
                sort_object_keys(&mut v);
                map.insert(key, v);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(sort_object_keys),
        _ => {}
    }
}

/// JSON on one line with Python's default separators: `", "` between items, `": "` after keys.
struct PythonSeparators;

impl PythonSeparators {
    /// `", "` before every item of an array or object but the first.
    fn item<W: ?Sized + std::io::Write>(writer: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }
}

impl serde_json::ser::Formatter for PythonSeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        Self::item(writer, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        Self::item(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Python's `json.dumps` writes (transformers' `tojson`), not minijinja's compact,
    /// HTML-escaped JSON.
    #[test]
    fn tojson_writes_what_python_writes() {
        let m = [ChatMessage {
            tool_calls: Some(vec![serde_json::json!({"b": [1, 2], "a": "<x> & 'y' é"})]),
            ..ChatMessage::new("assistant", "")
        }];
        let render = |src: &str| {
            ChatTemplate::new(src)
                .unwrap()
                .render(&m, false, None, None)
                .unwrap()
        };
        assert_eq!(
            render("{{ messages[0].tool_calls[0] | tojson }}"),
            r#"{"b": [1, 2], "a": "<x> & 'y' é"}"#
        );
        assert_eq!(
            render("{{ messages[0].tool_calls[0] | tojson(sort_keys=true) }}"),
            r#"{"a": "<x> & 'y' é", "b": [1, 2]}"#
        );
        assert_eq!(
            render("{{ messages[0].tool_calls[0] | tojson(indent=2) }}"),
            "{\n  \"b\": [\n    1,\n    2\n  ],\n  \"a\": \"<x> & 'y' é\"\n}"
        );
    }

    /// SmolLM2's template (ChatML with a default system prompt), as its GGUF carries it.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn tools_reach_the_template() {
        let t = ChatTemplate::new(
            "{% if tools %}{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% endif %}{{ messages[0].content }}",
        )
        .unwrap();
        let tools = [serde_json::json!({"type": "function", "function": {"name": "get_weather"}})];
        let m = [ChatMessage::new("user", "hi")];
        assert_eq!(
            t.render_with_tools(&m, false, None, None, Some(&tools))
                .unwrap(),
            "[get_weather]hi"
        );
        assert_eq!(t.render(&m, false, None, None).unwrap(), "hi");
    }

    #[test]
    fn renders_chatml() {
        let t = ChatTemplate::new(SMOLLM2).unwrap();
        let out = t
            .render(&[ChatMessage::new("user", "Hi")], true, None, None)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_trim_blocks_and_raise_exception() {
        let src = "{% for m in messages %}\n  {{ m.content.strip() | upper }}{% if m.role == 'bad' %}{{ raise_exception('no bad roles') }}{% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(src).unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  a  ")], false, None, None)
                .unwrap(),
            "  A" // as Jinja2 renders it with trim_blocks and lstrip_blocks
        );
        let err = t
            .render(&[ChatMessage::new("bad", "x")], false, None, None)
            .unwrap_err();
        assert!(err.to_string().contains("no bad roles"), "{err}");
        assert!(ChatTemplate::new("{% for %}").is_err());
    }
}
