//! What makes a generation endpoint itself, as a trait the request path is generic over.
//!
//! What makes a generation endpoint itself, as a trait the one request path
//! ([`super::endpoint`]) and the stream ([`super::stream`]) are generic over: `/v1/completions`
//! and `/v1/chat/completions` each implement it.

use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::dynamo::Route;
use super::error::ApiError;
use super::fields::Endpoint;
use super::generate::{Collected, Delta, GenRequest, Usage};
use super::protocol::{CommonParams, Head};
use super::AppState;

/// What makes a generation endpoint itself: its request fields, how they become engine
/// requests, and the shape of its answers.
pub(super) trait GenerationApi: Send + Sync + 'static {
    /// The endpoint's own fields (the shared ones are [`CommonParams`]).
    type Request: DeserializeOwned + Send + 'static;
    type Response: Serialize;
    type Chunk: Serialize + Send + 'static;

    /// Which fields the endpoint takes ([`fields::check`]).
    const ENDPOINT: Endpoint;
    /// Dynamo's route label.
    const ROUTE: Route;
    /// GenAI's operation name for the trace (`text_completion`, `chat`).
    const OPERATION: &'static str;

    /// Checks the request (with its shared fields) and turns it into what the engine runs.
    fn prepare(
        state: &AppState,
        common: &CommonParams,
        request: &Self::Request,
        arrival: Instant,
    ) -> Result<GenRequest, ApiError>;

    /// The whole response, once every choice has finished.
    fn response(head: Head, out: Collected, usage: Usage, logprobs: bool) -> Self::Response;

    /// Chunks sent before any token (chat's role chunks), one per choice.
    fn preamble(head: &Head, n: usize, usage: Option<Usage>) -> Vec<Self::Chunk>;

    /// A choice's new output; `None` when there is nothing to send yet (output held back
    /// until it can be read as tool calls).
    fn chunk(head: &mut Head, delta: Delta, usage: Option<Usage>) -> Option<Self::Chunk>;

    /// The last chunk of a stream that asked for usage: no choices, the totals.
    fn usage_chunk(head: &Head, usage: Usage) -> Self::Chunk;
}
