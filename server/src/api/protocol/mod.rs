//! The OpenAI-compatible protocol as types, with vLLM's extensions.
//!
//! The OpenAI-compatible protocol as types: what clients send ([`request`]) and what Vigil
//! answers ([`response`]), with vLLM's extensions (`stop_reason`, `prompt_tokens_details`,
//! continuous usage in streams).

mod request;
mod response;

pub(crate) use request::*;
pub(crate) use response::*;
