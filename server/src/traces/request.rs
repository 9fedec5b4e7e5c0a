//! The span of one client request, from admission to its last choice.
//!
//! The span of one client request: started when the request is admitted (so its trace id is
//! known for the exemplars while it runs), given its attributes and child spans as its choices
//! finish, and ended when the response is dropped (sent, failed or abandoned).
//!
//! Attributes carry both names: OpenTelemetry's GenAI semantic conventions
//! (`gen_ai.request.model`, `gen_ai.usage.input_tokens`, `gen_ai.response.finish_reasons`, ...)
//! and vLLM's own (`gen_ai.usage.prompt_tokens`, `gen_ai.request.id`, `gen_ai.latency.*`).

use std::time::{Instant, SystemTime};

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

use engine::FinishReason;
use engine::Timestamps;

/// What a trace records about the request from the start.
pub(crate) struct TraceRequest<'a> {
    pub request_id: &'a str,
    /// The served name the client asked for.
    pub model: &'a str,
    /// GenAI's `gen_ai.operation.name`: `text_completion` or `chat`.
    pub operation: &'static str,
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub n: usize,
    pub arrival: Instant,
}

/// The span of one client request; ended on drop.
pub(crate) struct RequestTrace {
    tracer: SdkTracer,
    cx: Context,
    trace_id: String,
    arrival: Instant,
    /// Choice 0's moments, for the child spans.
    times: Option<Timestamps>,
    finish_reasons: Vec<&'static str>,
    prompt_tokens: usize,
    completion_tokens: usize,
    errored: bool,
}

/// `traceparent`/`tracestate` from the request's headers.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The wall-clock time of `t` (spans carry wall-clock times).
fn wall(t: Instant) -> SystemTime {
    let now = Instant::now();
    let ago = now.saturating_duration_since(t);
    SystemTime::now() - ago
}

fn secs(a: Option<Instant>, b: Option<Instant>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    }
}

impl RequestTrace {
    /// Starts the span, a child of the caller's when `headers` carry a valid `traceparent`.
    pub(crate) fn start(
        tracer: &SdkTracer,
        headers: &HeaderMap,
        req: &TraceRequest<'_>,
    ) -> RequestTrace {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", req.operation),
            KeyValue::new("gen_ai.request.model", req.model.to_owned()),
            KeyValue::new("gen_ai.response.model", req.model.to_owned()),
            KeyValue::new("gen_ai.request.id", req.request_id.to_owned()),
            KeyValue::new("gen_ai.response.id", req.request_id.to_owned()),
            KeyValue::new("gen_ai.request.temperature", f64::from(req.temperature)),
            KeyValue::new("gen_ai.request.top_p", f64::from(req.top_p)),
            KeyValue::new("gen_ai.request.n", req.n as i64),
            KeyValue::new("gen_ai.request.choice.count", req.n as i64),
        ];
        if let Some(m) = req.max_tokens {
            attributes.push(KeyValue::new("gen_ai.request.max_tokens", m as i64));
        }
        let span = tracer
            .span_builder("llm_request")
            .with_kind(SpanKind::Server)
            .with_start_time(wall(req.arrival))
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        let trace_id = span.span_context().trace_id().to_string();
        RequestTrace {
            tracer: tracer.clone(),
            cx: parent.with_span(span),
            trace_id,
            arrival: req.arrival,
            times: None,
            finish_reasons: Vec::new(),
            prompt_tokens: 0,
            completion_tokens: 0,
            errored: false,
        }
    }

    /// The trace id, 32 hex digits (for the exemplars).
    pub(crate) fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// A choice has finished (`times` is None when the handler ended it on a stop string
    /// before the engine reported back).
    pub(crate) fn choice_finished(
        &mut self,
        index: usize,
        reason: FinishReason,
        times: Option<Timestamps>,
        prompt_tokens: usize,
        completion_tokens: usize,
    ) {
        if index == 0 {
            self.times = times;
        }
        self.finish_reasons.push(reason.as_str());
        self.prompt_tokens = prompt_tokens;
        self.completion_tokens += completion_tokens;
        self.errored |= reason == FinishReason::Error;
    }

    /// A child span of the request span over `[from, to]`.
    fn child(&self, name: &'static str, from: Option<Instant>, to: Option<Instant>) {
        let (Some(from), Some(to)) = (from, to) else {
            return;
        };
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(wall(from))
            .start_with_context(&self.tracer, &self.cx);
        span.end_with_timestamp(wall(to.max(from)));
    }
}

impl Drop for RequestTrace {
    fn drop(&mut self) {
        let end = Instant::now();
        if let Some(t) = self.times {
            self.child("queue", Some(t.queued), t.first_scheduled);
            self.child("prefill", t.first_scheduled, t.first_token);
            self.child("decode", t.first_token, t.last_token);
        }
        let span = self.cx.span();
        let reasons: Vec<StringValue> = self
            .finish_reasons
            .iter()
            .map(|r| StringValue::from(*r))
            .collect();
        let mut attributes = vec![
            KeyValue::new("gen_ai.usage.input_tokens", self.prompt_tokens as i64),
            KeyValue::new("gen_ai.usage.output_tokens", self.completion_tokens as i64),
            KeyValue::new("gen_ai.usage.prompt_tokens", self.prompt_tokens as i64),
            KeyValue::new(
                "gen_ai.usage.completion_tokens",
                self.completion_tokens as i64,
            ),
            KeyValue::new(
                "gen_ai.usage.num_sequences",
                self.finish_reasons.len() as i64,
            ),
            KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(Array::String(reasons)),
            ),
            KeyValue::new(
                "gen_ai.latency.e2e",
                end.saturating_duration_since(self.arrival).as_secs_f64(),
            ),
        ];
        if let Some(t) = self.times {
            attributes.extend([
                KeyValue::new(
                    "gen_ai.latency.time_in_queue",
                    secs(Some(t.queued), t.first_scheduled),
                ),
                KeyValue::new(
                    "gen_ai.latency.time_to_first_token",
                    secs(Some(t.arrival), t.first_token),
                ),
                KeyValue::new(
                    "gen_ai.latency.time_in_model_prefill",
                    secs(t.first_scheduled, t.first_token),
                ),
                KeyValue::new(
                    "gen_ai.latency.time_in_model_decode",
                    secs(t.first_token, t.last_token),
                ),
                KeyValue::new(
                    "gen_ai.latency.time_in_model_inference",
                    secs(t.first_scheduled, t.last_token),
                ),
            ]);
        }
        span.set_attributes(attributes);
        if self.errored {
            span.set_status(Status::error("the engine failed the request"));
        } else if self.finish_reasons.is_empty() {
            span.set_status(Status::error(
                "the response ended before the request finished",
            ));
        }
        span.end_with_timestamp(wall(end));
    }
}
