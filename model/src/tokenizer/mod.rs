//! Tokenizers and chat templates: HF's `tokenizers` for text, minijinja for templates.
//!
//! Tokenizers and chat templates: HF's `tokenizers` crate for encoding and decoding (built from
//! `tokenizer.json`, or from GGUF metadata), and minijinja for chat templates.

pub(crate) mod chat_template;
mod from_gguf;
mod from_hf;

use std::path::Path;

pub use chat_template::{ChatMessage, ChatTemplate};

use crate::error::LoadError;

/// A model's tokenizer with its special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The beginning-of-sequence token's text.
    pub bos_token: Option<String>,
    /// The end-of-sequence token's text.
    pub eos_token: Option<String>,
    /// Tokens that end generation (EOS, plus `generation_config.json`'s list).
    pub eos_token_ids: Vec<u32>,
    /// Prepend BOS when encoding a prompt.
    pub add_bos: bool,
    /// The model's chat template, if it has one.
    pub chat_template: Option<ChatTemplate>,
    /// [`Tokenizer::max_token_bytes`], computed on first use.
    max_token_bytes: std::sync::OnceLock<usize>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token_ids", &self.eos_token_ids)
            .finish_non_exhaustive()
    }
}

/// Why encoding or decoding failed.
#[derive(Debug, thiserror::Error)]
#[error("tokenizer: {0}")]
pub struct TokenizerError(pub String);

impl Tokenizer {
    /// Wraps a `tokenizers` tokenizer, with no special tokens or template known.
    pub fn new(inner: tokenizers::Tokenizer) -> Tokenizer {
        Tokenizer {
            inner,
            bos_token: None,
            eos_token: None,
            eos_token_ids: Vec::new(),
            add_bos: false,
            chat_template: None,
            max_token_bytes: std::sync::OnceLock::new(),
        }
    }

    /// From an HF folder's `tokenizer.json`, `tokenizer_config.json` and
    /// `generation_config.json`.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, LoadError> {
        from_hf::load(dir)
    }

    /// From GGUF `tokenizer.ggml.*` metadata (byte-level BPE).
    pub fn from_gguf(file: &crate::gguf::GgufFile) -> Result<Tokenizer, LoadError> {
        from_gguf::load(file)
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// An upper bound on the bytes of text one token stands for: the longest vocabulary entry
    /// in UTF-8 (byte-level BPE's `Ġ`, SentencePiece's `▁` and byte-fallback `<0x41>` all take
    /// more bytes in the vocabulary than the text they decode to). A text longer than
    /// `n` times this cannot be fewer than `n` tokens.
    pub fn max_token_bytes(&self) -> usize {
        *self.max_token_bytes.get_or_init(|| {
            self.inner
                .get_vocab(true)
                .keys()
                .map(String::len)
                .max()
                .unwrap_or(1)
                .max(1)
        })
    }

    /// The tokenizer as HF's `tokenizer.json` (for tools that read that format, such as the
    /// constrained decoder's token table).
    pub fn to_json(&self) -> Result<String, TokenizerError> {
        self.inner
            .to_string(false)
            .map_err(|e| TokenizerError(e.to_string()))
    }

    /// The id of `token`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of token `id`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Encodes `text`; special tokens written in the text are recognised. BOS is prepended when
    /// the model wants it and `add_special_tokens` is set (and the text does not start with it).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special_tokens && self.add_bos {
            if let Some(bos) = self.bos_token.as_deref().and_then(|b| self.token_to_id(b)) {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(ids)
    }

    /// The text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError(e.to_string()))
    }

    /// Renders the chat template over `messages`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.apply_chat_template_with_tools(messages, add_generation_prompt, None)
    }

    /// Renders the chat template over `messages`, with the request's tool definitions.
    pub fn apply_chat_template_with_tools(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&[serde_json::Value]>,
    ) -> Result<String, TokenizerError> {
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| TokenizerError("the model has no chat template".into()))?;
        template
            .render_with_tools(
                messages,
                add_generation_prompt,
                self.bos_token.as_deref(),
                self.eos_token.as_deref(),
                tools,
            )
            .map_err(|e| TokenizerError(e.to_string()))
    }
}

/// Incremental detokenization of one sequence: turns generated token ids into text pieces as
/// they arrive, holding back incomplete UTF-8. It owns a handle on the tokenizer so it can live
/// in a request's task.
pub struct DecodeStream {
    tokenizer: std::sync::Arc<Tokenizer>,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl DecodeStream {
    /// A stream over `tokenizer`.
    pub fn new(tokenizer: std::sync::Arc<Tokenizer>, skip_special_tokens: bool) -> Self {
        DecodeStream {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix: String::new(),
            prefix_index: 0,
        }
    }

    /// The text `id` completes, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        tokenizers::step_decode_stream(
            &self.tokenizer.inner,
            vec![id],
            self.skip_special_tokens,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(|e| TokenizerError(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
