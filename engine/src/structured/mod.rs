//! Structured outputs: output held to a schema, regex, choice list or grammar by token masks.
//!
//! Structured outputs: a request's output held to a JSON schema, a regular expression, a list of
//! choices or a Lark grammar, by masking at every step the tokens that could not continue it
//! (llguidance computes the masks; vLLM and llama.cpp use the same library).
//!
//! A [`Grammars`] is built once per tokenizer; it compiles a request's [`ConstraintSpec`] into a
//! [`CompiledConstraint`] before the request is queued (a bad schema is the client's error, not
//! the engine's), and each sampler then runs its own [`Constraint`] from it.

mod bounds;
mod constraint;
mod grammars;
mod spec;

pub use bounds::COMPILE_STACK_BYTES;
pub use constraint::CompiledConstraint;
pub(crate) use constraint::Constraint;
pub use grammars::{Grammars, ObjectDefault};
pub use spec::ConstraintSpec;

#[cfg(test)]
mod tests;
