//! Server-sent events for streaming responses, as vLLM writes them.
//!
//! Server-sent events for streaming responses: one `data:` line per chunk, an optional usage
//! chunk, and `data: [DONE]`. An error mid-stream is sent as `data: {"error": ...}` followed by
//! `[DONE]`, as vLLM does. Dropping the stream (client gone) drops the generation, which aborts
//! its requests in the engine.

use std::convert::Infallible;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::Serialize;

use super::generate::Generation;
use super::generation_api::GenerationApi;
use super::protocol::{Head, StreamUsage};

enum Phase<C> {
    Preamble(std::vec::IntoIter<C>),
    Tokens,
    Usage,
    Done,
    End,
}

/// Streams `generation` as `A`'s chunks.
pub(super) fn sse<A: GenerationApi>(
    generation: Generation,
    head: Head,
    usage: StreamUsage,
) -> Response {
    let continuous =
        move |g: &Generation, tokens: usize| usage.continuous.then(|| g.usage_so_far(tokens));
    let preamble = A::preamble(&head, generation.n(), continuous(&generation, 0));
    let init = (generation, head, Phase::Preamble(preamble.into_iter()));
    let events = stream::unfold(init, move |(mut generation, mut head, phase)| async move {
        let (event, next) = match phase {
            Phase::Preamble(mut chunks) => match chunks.next() {
                Some(chunk) => (Some(data(&mut generation, &chunk)), Phase::Preamble(chunks)),
                None => (None, Phase::Tokens),
            },
            Phase::Tokens => match generation.next().await {
                Some(Ok(delta)) => {
                    let so_far = continuous(&generation, delta.completion_tokens);
                    let chunk = A::chunk(&mut head, delta, so_far);
                    (chunk.map(|c| data(&mut generation, &c)), Phase::Tokens)
                }
                Some(Err(err)) => (Some(data(&mut generation, &err.body())), Phase::Done),
                None if usage.include_usage => (None, Phase::Usage),
                None => (None, Phase::Done),
            },
            Phase::Usage => {
                let chunk = A::usage_chunk(&head, generation.usage);
                (Some(data(&mut generation, &chunk)), Phase::Done)
            }
            Phase::Done => {
                generation.delivered(DONE.len());
                (Some(Event::default().data(DONE)), Phase::End)
            }
            Phase::End => return None,
        };
        Some((event, (generation, head, next)))
    });
    Sse::new(filter_some(events)).into_response()
}

const DONE: &str = "[DONE]";

/// A whole (non-streaming) JSON response, counted as delivered.
pub(super) fn delivered(generation: &mut Generation, body: &impl Serialize) -> Response {
    let text = to_json(body);
    generation.delivered(text.len());
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}

/// An SSE `data:` event, counted as sent.
fn data(generation: &mut Generation, v: &impl Serialize) -> Event {
    let text = to_json(v);
    generation.sent(text.len());
    Event::default().data(text)
}

/// The protocol's types hold only strings, numbers and maps with string keys, which always
/// serialize.
fn to_json(v: &impl Serialize) -> String {
    serde_json::to_string(v).expect("protocol types serialize")
}

fn filter_some(
    s: impl Stream<Item = Option<Event>> + Send + 'static,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    use futures_util::StreamExt;
    s.filter_map(|e| async move { e.map(Ok) })
}
