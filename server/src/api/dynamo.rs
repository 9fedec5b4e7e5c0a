//! Dynamo's frontend and component series for the requests this server handles.
//!
//! Dynamo's runtime series for the requests this server handles: the frontend family
//! (`dynamo_frontend_*`, per model) and the component family of the engine's endpoint
//! (`dynamo_component_*`), recorded as Dynamo's frontend and work handler record them.
//!
//! One [`RequestRecord`] follows each request from the moment its model is known to the end of
//! its response (or the client's disconnect, which Dropping it without an outcome means).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use exporter::catalog::dynamo::*;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use super::error::ApiError;

/// The Dynamo names this server's engine endpoint is published under, sanitized as Dynamo
/// sanitizes label values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoNames {
    /// Dynamo's namespace (`DYN_NAMESPACE`).
    pub namespace: String,
    /// Dynamo's component.
    pub component: String,
    /// Dynamo's endpoint.
    pub endpoint: String,
}

impl DynamoNames {
    /// The names Dynamo's labels carry.
    pub fn new(namespace: &str, component: &str, endpoint: &str) -> Self {
        DynamoNames {
            namespace: sanitize_label(namespace),
            component: sanitize_label(component),
            endpoint: sanitize_label(endpoint),
        }
    }
}

/// Dynamo's `sanitize_prometheus_label`: every character outside `[a-zA-Z0-9_]` becomes `_`, a
/// leading digit gets a `_` in front, and a leading `__` (reserved) is stripped.
pub(crate) fn sanitize_label(value: &str) -> String {
    let mut s: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    while s.starts_with("__") {
        s.drain(..2);
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// Keeps `dynamo_component_uptime_seconds` (time since `started`) current: Dynamo updates it at
/// each scrape, and so does this, through the exporter's render hook.
pub fn export_uptime(exporter: &exporter::Exporter, started: Instant) {
    exporter.on_render(move |e| {
        let _ = e.set_gauge(&COMPONENT_UPTIME, &[], started.elapsed().as_secs_f64());
    });
}

/// Which OpenAI route a request came in on (Dynamo's `endpoint` label).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route {
    Completions,
    ChatCompletions,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Completions => "completions",
            Route::ChatCompletions => "chat_completions",
        }
    }
}

/// Dynamo's `error_type` for an API error.
pub(crate) fn error_type(err: &ApiError) -> &'static str {
    match err.status.as_u16() {
        400 | 413 | 422 => "validation",
        401 | 403 => "validation",
        404 => "not_found",
        429 => "overload",
        503 => "unavailable",
        _ => "internal",
    }
}

/// The ways a request can end, as Dynamo's `error_type` label says them ("" is success).
const OUTCOMES: [&str; 8] = [
    "",
    "validation",
    "not_found",
    "overload",
    "unavailable",
    "internal",
    "backend_error",
    "cancelled",
];

/// A metric handle resolved from the registry the first time it is used, then kept: a series
/// appears in `/metrics` when Dynamo would first record it, and no later use looks it up again.
struct Lazy<T>(OnceLock<T>);

impl<T> Lazy<T> {
    const fn new() -> Self {
        Lazy(OnceLock::new())
    }

    fn get(&self, resolve: impl FnOnce() -> T) -> &T {
        self.0.get_or_init(resolve)
    }
}

/// An accessor per handle of [`ModelSeries`]: the handle, resolved from its catalog entry and
/// the series' labels the first time it is asked for. Each field and its metric are paired here
/// once, not at every use.
macro_rules! handles {
    ($($field:ident: $kind:ident!($def:ident, $labels:ident)),* $(,)?) => {
        $(
            fn $field(&self) -> &handles!(@type $kind) {
                self.$field.get(|| $kind!($def.name, &self.$labels()))
            }
        )*
    };
    (@type gauge) => { Gauge };
    (@type histogram) => { Histogram };
    (@type counter) => { Counter };
}

/// Dynamo's series of one served model (frontend family) and of the engine's endpoint for it
/// (component family): the handles every request for that model records through.
pub(crate) struct ModelSeries {
    /// The `model` label: the served name, lowercased as Dynamo's frontend does.
    model: String,
    component: [(&'static str, String); 5],
    active: Lazy<Gauge>,
    inflight: Lazy<Gauge>,
    queued: Lazy<Gauge>,
    disconnected: Lazy<Gauge>,
    duration: Lazy<Histogram>,
    input_tokens: Lazy<Histogram>,
    output_sequence_tokens: Lazy<Histogram>,
    cached_tokens: Lazy<Histogram>,
    ttft: Lazy<Histogram>,
    itl: Lazy<Histogram>,
    output_tokens: Lazy<Counter>,
    /// `dynamo_frontend_requests_total`, by route, streaming, then outcome (index of
    /// [`OUTCOMES`]).
    requests: [[[Lazy<Counter>; OUTCOMES.len()]; 2]; 2],
    component_requests: Lazy<Counter>,
    component_inflight: Lazy<Gauge>,
    component_request_bytes: Lazy<Counter>,
    component_response_bytes: Lazy<Counter>,
    component_duration: Lazy<Histogram>,
    component_generate_errors: Lazy<Counter>,
}

impl ModelSeries {
    fn new(names: &DynamoNames, served_name: &str) -> ModelSeries {
        let model = served_name.to_lowercase();
        ModelSeries {
            component: [
                ("dynamo_namespace", names.namespace.clone()),
                ("dynamo_component", names.component.clone()),
                ("dynamo_endpoint", names.endpoint.clone()),
                ("model", model.clone()),
                ("model_name", model.clone()),
            ],
            model,
            active: Lazy::new(),
            inflight: Lazy::new(),
            queued: Lazy::new(),
            disconnected: Lazy::new(),
            duration: Lazy::new(),
            input_tokens: Lazy::new(),
            output_sequence_tokens: Lazy::new(),
            cached_tokens: Lazy::new(),
            ttft: Lazy::new(),
            itl: Lazy::new(),
            output_tokens: Lazy::new(),
            requests: std::array::from_fn(|_| {
                std::array::from_fn(|_| std::array::from_fn(|_| Lazy::new()))
            }),
            component_requests: Lazy::new(),
            component_inflight: Lazy::new(),
            component_request_bytes: Lazy::new(),
            component_response_bytes: Lazy::new(),
            component_duration: Lazy::new(),
            component_generate_errors: Lazy::new(),
        }
    }

    fn model_labels(&self) -> [(&'static str, String); 1] {
        [("model", self.model.clone())]
    }

    fn component_labels(&self) -> [(&'static str, String); 5] {
        self.component.clone()
    }

    handles! {
        active: gauge!(FRONTEND_ACTIVE_REQUESTS, model_labels),
        inflight: gauge!(FRONTEND_INFLIGHT_REQUESTS, model_labels),
        queued: gauge!(FRONTEND_QUEUED_REQUESTS, model_labels),
        duration: histogram!(FRONTEND_REQUEST_DURATION, model_labels),
        input_tokens: histogram!(FRONTEND_INPUT_SEQUENCE_TOKENS, model_labels),
        output_sequence_tokens: histogram!(FRONTEND_OUTPUT_SEQUENCE_TOKENS, model_labels),
        cached_tokens: histogram!(FRONTEND_CACHED_TOKENS, model_labels),
        ttft: histogram!(FRONTEND_TIME_TO_FIRST_TOKEN, model_labels),
        itl: histogram!(FRONTEND_INTER_TOKEN_LATENCY, model_labels),
        output_tokens: counter!(FRONTEND_OUTPUT_TOKENS, model_labels),
        component_requests: counter!(COMPONENT_REQUESTS, component_labels),
        component_inflight: gauge!(COMPONENT_INFLIGHT_REQUESTS, component_labels),
        component_request_bytes: counter!(COMPONENT_REQUEST_BYTES, component_labels),
        component_response_bytes: counter!(COMPONENT_RESPONSE_BYTES, component_labels),
        component_duration: histogram!(COMPONENT_REQUEST_DURATION, component_labels),
    }

    fn disconnected(&self) -> &Gauge {
        self.disconnected
            .get(|| gauge!(FRONTEND_DISCONNECTED_CLIENTS.name))
    }

    fn request_counter(&self, route: Route, streaming: bool, outcome: usize) -> &Counter {
        self.requests[route as usize][usize::from(streaming)][outcome].get(|| {
            let error_type = OUTCOMES[outcome];
            counter!(
                FRONTEND_REQUESTS.name,
                "model" => self.model.clone(),
                "endpoint" => route.label(),
                "request_type" => if streaming { "stream" } else { "unary" },
                "status" => if error_type.is_empty() { "success" } else { "error" },
                "error_type" => error_type,
            )
        })
    }
}

/// Dynamo's series of every served model name, made once for the server.
pub(crate) struct DynamoSeries {
    models: Vec<(String, Arc<ModelSeries>)>,
}

impl DynamoSeries {
    /// The series of `served_model_names` (bounded: the server's own names), published under
    /// `names`.
    pub(crate) fn new(names: &DynamoNames, served_model_names: &[String]) -> DynamoSeries {
        DynamoSeries {
            models: served_model_names
                .iter()
                .map(|n| (n.clone(), Arc::new(ModelSeries::new(names, n))))
                .collect(),
        }
    }

    /// The series of a served model name (checked by the caller).
    pub(crate) fn model(&self, served_name: &str) -> Option<&Arc<ModelSeries>> {
        self.models
            .iter()
            .find(|(n, _)| n == served_name)
            .map(|(_, s)| s)
    }
}

/// The life of one request, as Dynamo's frontend (InflightGuard, ResponseCollector) and work
/// handler record it.
pub(crate) struct RequestRecord {
    series: Arc<ModelSeries>,
    route: Route,
    streaming: bool,
    start: Instant,
    input_tokens: usize,
    first_token: bool,
    last_token_at: Option<Instant>,
    output_tokens: u64,
    cached_tokens: usize,
    /// The index in [`OUTCOMES`] of how the request ended, once known.
    outcome: Option<usize>,
    response_bytes: u64,
}

impl RequestRecord {
    /// Starts the record of a request for the model of `series` whose body was
    /// `request_bytes` long.
    pub(crate) fn start(
        series: &Arc<ModelSeries>,
        route: Route,
        streaming: bool,
        request_bytes: usize,
    ) -> RequestRecord {
        let s = series;
        s.active().increment(1.0);
        s.inflight().increment(1.0);
        s.queued().increment(1.0);
        s.component_requests().increment(1);
        s.component_inflight().increment(1.0);
        s.component_request_bytes().increment(request_bytes as u64);
        RequestRecord {
            series: Arc::clone(series),
            route,
            streaming,
            start: Instant::now(),
            input_tokens: 0,
            first_token: false,
            last_token_at: None,
            output_tokens: 0,
            cached_tokens: 0,
            outcome: None,
            response_bytes: 0,
        }
    }

    /// The prompt's length, observed as the input sequence at the first token.
    pub(crate) fn set_input_tokens(&mut self, n: usize) {
        self.input_tokens = n;
    }

    pub(crate) fn set_cached_tokens(&mut self, n: usize) {
        self.cached_tokens = n;
    }

    /// `n` new output tokens arrived together: the first one is the time to first token;
    /// later arrivals give an inter-token latency of (time since the last arrival) / `n`,
    /// observed `n` times, as Dynamo's response collector does.
    pub(crate) fn tokens(&mut self, n: usize) {
        let now = Instant::now();
        let s = &*self.series;
        if !self.first_token {
            self.first_token = true;
            s.ttft()
                .record(now.duration_since(self.start).as_secs_f64());
            s.input_tokens().record(self.input_tokens as f64);
            s.queued().decrement(1.0);
        } else if let Some(last) = self.last_token_at {
            let itl = now.duration_since(last).as_secs_f64() / n as f64;
            let h = s.itl();
            for _ in 0..n {
                h.record(itl);
            }
        }
        self.last_token_at = Some(now);
        self.output_tokens += n as u64;
        s.output_tokens().increment(n as u64);
    }

    /// Bytes of the response sent to the client.
    pub(crate) fn sent(&mut self, bytes: usize) {
        self.response_bytes += bytes as u64;
    }

    pub(crate) fn succeed(&mut self) {
        self.outcome.get_or_insert(0);
    }

    pub(crate) fn fail(&mut self, err: &ApiError) {
        let error_type = error_type(err);
        self.outcome
            .get_or_insert_with(|| outcome_index(error_type));
    }

    /// The engine failed while running the request.
    pub(crate) fn fail_in_backend(&mut self) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome_index("backend_error"));
            let s = &*self.series;
            s.component_generate_errors
                .get(|| {
                    let mut labels = s.component.to_vec();
                    labels.push(("error_type", "generate".to_owned()));
                    counter!(COMPONENT_ERRORS.name, &labels)
                })
                .increment(1);
        }
    }
}

/// The index of `error_type` in [`OUTCOMES`] (every value [`error_type`] gives is there).
fn outcome_index(error_type: &str) -> usize {
    OUTCOMES
        .iter()
        .position(|o| *o == error_type)
        .expect("a Dynamo error type")
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let s = &*self.series;
        // No outcome: the response was dropped before it ended, i.e. the client went away.
        let outcome = match self.outcome {
            Some(o) => o,
            None => {
                s.disconnected().increment(1.0);
                outcome_index("cancelled")
            }
        };
        s.request_counter(self.route, self.streaming, outcome)
            .increment(1);
        let elapsed = self.start.elapsed().as_secs_f64();
        s.duration().record(elapsed);
        if self.output_tokens > 0 {
            s.output_sequence_tokens().record(self.output_tokens as f64);
        }
        if self.first_token {
            s.cached_tokens().record(self.cached_tokens as f64);
        } else {
            s.queued().decrement(1.0);
        }
        s.active().decrement(1.0);
        s.inflight().decrement(1.0);
        s.component_duration().record(elapsed);
        s.component_inflight().decrement(1.0);
        s.component_response_bytes().increment(self.response_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sanitized_as_dynamo_does() {
        assert_eq!(sanitize_label("dynamo"), "dynamo");
        assert_eq!(sanitize_label("my-ns.v1"), "my_ns_v1");
        assert_eq!(sanitize_label("9lives"), "_9lives");
        assert_eq!(sanitize_label("__reserved"), "reserved");
    }
}
