//! Server-sent events for streaming responses: one `data:` line per chunk, an optional usage
//! chunk, and `data: [DONE]`. An error mid-stream is sent as `data: {"error": ...}` followed by
//! `[DONE]`, as vLLM does. Dropping the stream (client gone) drops the generation, which aborts
//! its requests in the engine.

use std::convert::Infallible;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde_json::Value;

use super::generate::{Delta, Generation, Usage};
use super::protocol::StreamUsage;

/// How an endpoint shapes its chunks.
pub trait ChunkFormat: Send + 'static {
    /// Chunks sent before any token (chat's role chunks).
    fn preamble(&self, n: usize) -> Vec<Value>;
    fn chunk(&self, delta: &Delta) -> Value;
    fn usage_chunk(&self, usage: &Usage) -> Value;
}

enum Phase {
    Preamble(Vec<Value>),
    Tokens,
    Usage,
    Done,
    End,
}

pub fn sse<F: ChunkFormat>(generation: Generation, format: F, usage: StreamUsage) -> Response {
    let mut preamble = format.preamble(generation.n());
    if usage.continuous {
        for chunk in &mut preamble {
            chunk["usage"] = generation.usage_so_far(0).to_json();
        }
    }
    let include_usage = usage.include_usage;
    let init = (generation, format, Phase::Preamble(preamble), include_usage);
    let events = stream::unfold(
        init,
        move |(mut generation, format, phase, include_usage)| async move {
            match phase {
                Phase::Preamble(mut chunks) => {
                    if chunks.is_empty() {
                        return Some((None, (generation, format, Phase::Tokens, include_usage)));
                    }
                    let first = chunks.remove(0);
                    Some((
                        Some(data(&mut generation, &first)),
                        (generation, format, Phase::Preamble(chunks), include_usage),
                    ))
                }
                Phase::Tokens => match generation.next().await {
                    Some(Ok(delta)) => {
                        let mut chunk = format.chunk(&delta);
                        if usage.continuous {
                            chunk["usage"] =
                                generation.usage_so_far(delta.completion_tokens).to_json();
                        }
                        Some((
                            Some(data(&mut generation, &chunk)),
                            (generation, format, Phase::Tokens, include_usage),
                        ))
                    }
                    Some(Err(err)) => Some((
                        Some(data(&mut generation, &err.body())),
                        (generation, format, Phase::Done, include_usage),
                    )),
                    None => {
                        let next = if include_usage {
                            Phase::Usage
                        } else {
                            Phase::Done
                        };
                        Some((None, (generation, format, next, include_usage)))
                    }
                },
                Phase::Usage => {
                    let chunk = format.usage_chunk(&generation.usage);
                    Some((
                        Some(data(&mut generation, &chunk)),
                        (generation, format, Phase::Done, include_usage),
                    ))
                }
                Phase::Done => {
                    generation.delivered(DONE.len());
                    Some((
                        Some(Event::default().data(DONE)),
                        (generation, format, Phase::End, include_usage),
                    ))
                }
                Phase::End => None,
            }
        },
    );
    let events = filter_some(events);
    Sse::new(events).into_response()
}

const DONE: &str = "[DONE]";

/// A whole (non-streaming) JSON response, counted as delivered.
pub fn delivered(generation: &mut Generation, body: &Value) -> Response {
    let text = body.to_string();
    generation.delivered(text.len());
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}

/// An SSE `data:` event, counted as sent.
fn data(generation: &mut Generation, v: &Value) -> Event {
    let text = v.to_string();
    generation.sent(text.len());
    Event::default().data(text)
}

fn filter_some(
    s: impl Stream<Item = Option<Event>> + Send + 'static,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    use futures_util::StreamExt;
    s.filter_map(|e| async move { e.map(Ok) })
}
