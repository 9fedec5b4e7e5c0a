//! Chat templates, rendered with minijinja the way HF transformers renders them with Jinja2:
//! `trim_blocks` and `lstrip_blocks` on, loop controls, `raise_exception`, and Python string
//! methods (`.strip()`, `.startswith()`, ...) through minijinja-contrib's pycompat.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
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
        env.add_template_owned(NAME, source.to_owned())?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

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

#[cfg(test)]
mod tests {
    use super::*;

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
