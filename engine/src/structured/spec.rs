//! What a request asks its output to be, and why a constraint cannot be had.
//!
//! What a request asks its output to be, and why a constraint cannot be had: the words the
//! bounds check, the compiler and the running constraint share.

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
}

/// Why a constraint cannot be compiled: the schema, expression or grammar is invalid or beyond
/// the limits (the message says which).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConstraintError(pub String);

impl ConstraintError {
    /// An error llguidance reported, fit for a client: llguidance turns a panic of its own into
    /// an error whose text is `panic: MESSAGE` and a `<backtrace>`; that is the server's
    /// trouble, not the request's, so the client gets a plain sentence and the log the rest.
    pub fn from_llguidance(text: impl Into<String>) -> ConstraintError {
        let text = text.into();
        let internal = text.starts_with("panic:") || text.contains("<backtrace>");
        if !internal {
            return ConstraintError(text);
        }
        tracing::warn!(error = %text, "the constraint compiler failed");
        ConstraintError(
            "the constraint compiler failed on it (an internal error; the server log has the details)"
                .into(),
        )
    }
}
