//! The tokenizer's side of constrained decoding, built once: every token's bytes in a trie,
//! and the compiler of requests' constraints.

use std::sync::Arc;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{self, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::ParserFactory;
use model::Tokenizer;

use super::constraint::CompiledConstraint;

/// What a request asks its output to be.
#[derive(Debug, Clone, PartialEq)]
pub enum ConstraintSpec {
    /// A JSON value valid under this JSON schema.
    JsonSchema(serde_json::Value),
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// Text matching this regular expression (Rust `regex` syntax, anchored at both ends).
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// Text of this grammar, in llguidance's Lark syntax.
    Lark(String),
}

impl ConstraintSpec {
    /// The kind, as a bounded label value.
    pub fn kind(&self) -> &'static str {
        match self {
            ConstraintSpec::JsonSchema(_) => "json",
            ConstraintSpec::JsonObject => "json_object",
            ConstraintSpec::Regex(_) => "regex",
            ConstraintSpec::Choice(_) => "choice",
            ConstraintSpec::Lark(_) => "grammar",
        }
    }

    fn grammar(&self) -> Result<TopLevelGrammar, ConstraintError> {
        Ok(match self {
            ConstraintSpec::JsonSchema(schema) => TopLevelGrammar::from_json_schema(schema.clone()),
            ConstraintSpec::JsonObject => {
                TopLevelGrammar::from_json_schema(serde_json::json!({"type": "object"}))
            }
            ConstraintSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
            ConstraintSpec::Choice(choices) => {
                if choices.is_empty() {
                    return Err(ConstraintError("the list of choices is empty".into()));
                }
                let alternatives: Vec<String> = choices
                    .iter()
                    .map(|c| serde_json::Value::from(c.as_str()).to_string())
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", alternatives.join(" | ")))
            }
            ConstraintSpec::Lark(grammar) => TopLevelGrammar::from_lark(grammar.clone()),
        })
    }
}

/// Why a constraint cannot be compiled: the schema, expression or grammar is invalid or beyond
/// the limits (the message says which).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConstraintError(pub String);

/// The constraint compiler of one tokenizer.
pub struct Grammars {
    factory: ParserFactory,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").finish_non_exhaustive()
    }
}

impl Grammars {
    /// Builds the token trie of `tokenizer` for rows of `vocab_size` logits (the model's
    /// vocabulary may be larger than the tokenizer's: the extra ids are never allowed).
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize) -> Result<Grammars, ConstraintError> {
        let json = tokenizer
            .to_json()
            .map_err(|e| ConstraintError(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| ConstraintError(e.to_string()))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json)
            .map_err(|e| ConstraintError(format!("reading the tokenizer's tokens: {e}")))?;
        words.resize(vocab_size.max(words.len()), Vec::new());
        let eos = *tokenizer
            .eos_token_ids
            .first()
            .ok_or_else(|| ConstraintError("the tokenizer has no end-of-sequence token".into()))?;
        let info = TokRxInfo::new(words.len() as u32, eos);
        let env = TokenizerAdapter {
            trie: TokTrie::from(&info, &words),
            tokenizer,
        };
        let env: toktrie::TokEnv = Arc::new(env);
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| ConstraintError(format!("building the token trie: {e}")))?;
        factory.quiet();
        *factory.limits_mut() = limits();
        Ok(Grammars { factory })
    }

    /// Compiles `spec`; its errors are the client's (an invalid schema, regex or grammar).
    pub fn compile(&self, spec: &ConstraintSpec) -> Result<CompiledConstraint, ConstraintError> {
        let parser = self
            .factory
            .create_parser(spec.grammar()?)
            .map_err(|e| ConstraintError(e.to_string()))?;
        CompiledConstraint::new(llguidance::Matcher::new(Ok(parser)), spec.kind())
    }
}

/// llguidance's limits, which bound the work one request's grammar can cost per step (so that
/// a hostile schema slows no other request): its defaults, which its authors size for
/// serving.
fn limits() -> ParserLimits {
    ParserLimits::default()
}

/// The tokenizer as llguidance sees it: the trie of token bytes, and encoding for the
/// grammar's literal strings.
struct TokenizerAdapter {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for TokenizerAdapter {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        let text = String::from_utf8_lossy(s);
        self.tokenizer.encode(&text, false).unwrap_or_default()
    }
}
