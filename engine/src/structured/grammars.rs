//! The tokenizer's side of constrained decoding, built once.
//!
//! The tokenizer's side of constrained decoding, built once: every token's bytes in a trie,
//! and the compiler of requests' constraints.

use std::sync::Arc;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{self, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::ParserFactory;
use model::Tokenizer;

use super::constraint::CompiledConstraint;
use super::spec::{ConstraintError, ConstraintSpec};

impl ConstraintSpec {
    fn grammar(&self, objects: ObjectDefault) -> Result<TopLevelGrammar, ConstraintError> {
        Ok(match self {
            ConstraintSpec::JsonSchema(schema) => {
                let mut schema = schema.clone();
                if objects == ObjectDefault::Closed {
                    close_objects(&mut schema);
                }
                TopLevelGrammar::from_json_schema(schema)
            }
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

/// What a JSON schema's object that does not say `additionalProperties` allows besides its
/// listed properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ObjectDefault {
    /// Nothing: as vLLM's default backend (xgrammar, strict) and its `guidance` backend with
    /// `disable_additional_properties` read such a schema, and as the clients that send them
    /// (pydantic, instructor, LangChain) mean it.
    #[default]
    Closed,
    /// Any other key, JSON Schema's own default (vLLM's `guidance` backend as it comes).
    Open,
}

/// Writes `"additionalProperties": false` into every object schema of `schema` that lists
/// `properties` or `patternProperties` and says nothing of others (vLLM's walk for its
/// `guidance` backend). Recursion follows the schema's nesting, which [`super::bounds`] checks
/// first.
fn close_objects(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(fields) => {
            for value in fields.values_mut() {
                close_objects(value);
            }
            if !fields.contains_key("additionalProperties")
                && (fields.contains_key("properties") || fields.contains_key("patternProperties"))
            {
                fields.insert("additionalProperties".into(), false.into());
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// The constraint compiler of one tokenizer.
pub struct Grammars {
    factory: ParserFactory,
    objects: ObjectDefault,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").finish_non_exhaustive()
    }
}

impl Grammars {
    /// Builds the token trie of `tokenizer` for rows of `vocab_size` logits (the model's
    /// vocabulary may be larger than the tokenizer's: the extra ids are never allowed).
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        vocab_size: usize,
        objects: ObjectDefault,
    ) -> Result<Grammars, ConstraintError> {
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
        Ok(Grammars { factory, objects })
    }

    /// Compiles `spec`; its errors are the client's (an invalid schema, regex or grammar, or
    /// one past the bounds of `super::bounds`). Run it on a thread with a stack of
    /// [`super::COMPILE_STACK_BYTES`]: within the bounds, the compiler's recursion fits there.
    pub fn compile(&self, spec: &ConstraintSpec) -> Result<CompiledConstraint, ConstraintError> {
        super::bounds::check(spec)?;
        let parser = self
            .factory
            .create_parser(spec.grammar(self.objects)?)
            .map_err(|e| ConstraintError::from_llguidance(e.to_string()))?;
        CompiledConstraint::new(llguidance::Matcher::new(Ok(parser)), spec.kind())
    }
}

/// llguidance's limits, which bound the work one request's grammar can cost per step (so that
/// a hostile schema slows no other request): its defaults, which its authors size for
/// serving, but for the parser's state and grammar in its errors (kilobytes a client would
/// get in its error body).
fn limits() -> ParserLimits {
    ParserLimits {
        verbose_errors: false,
        ..ParserLimits::default()
    }
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
