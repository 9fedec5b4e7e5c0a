//! Dynamo's runtime series for the requests this server handles: the frontend family
//! (`dynamo_frontend_*`, per model) and the component family of the engine's endpoint
//! (`dynamo_component_*`), recorded as Dynamo's frontend and work handler record them.
//!
//! One [`RequestRecord`] follows each request from the moment its model is known to the end of
//! its response (or the client's disconnect, which Dropping it without an outcome means).

use std::time::Instant;

use exporter::catalog::dynamo::*;
use metrics::{counter, gauge, histogram};

use super::error::ApiError;

/// The Dynamo names this server's engine endpoint is published under, sanitized as Dynamo
/// sanitizes label values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoNames {
    pub namespace: String,
    pub component: String,
    pub endpoint: String,
}

impl DynamoNames {
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
pub fn sanitize_label(value: &str) -> String {
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
pub enum Route {
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
pub fn error_type(err: &ApiError) -> &'static str {
    match err.status.as_u16() {
        400 | 413 | 422 => "validation",
        401 | 403 => "validation",
        404 => "not_found",
        429 => "overload",
        503 => "unavailable",
        _ => "internal",
    }
}

/// The life of one request, as Dynamo's frontend (InflightGuard, ResponseCollector) and work
/// handler record it.
pub struct RequestRecord {
    model: String,
    route: Route,
    streaming: bool,
    component: [(&'static str, String); 5],
    start: Instant,
    input_tokens: usize,
    first_token: bool,
    last_token_at: Option<Instant>,
    output_tokens: u64,
    cached_tokens: usize,
    outcome: Option<&'static str>,
    response_bytes: u64,
}

impl RequestRecord {
    /// Starts the record of a request for `model` (a served name: bounded) whose body was
    /// `request_bytes` long.
    pub fn start(
        names: &DynamoNames,
        model: &str,
        route: Route,
        streaming: bool,
        request_bytes: usize,
    ) -> RequestRecord {
        let model = model.to_lowercase();
        let component = [
            ("dynamo_namespace", names.namespace.clone()),
            ("dynamo_component", names.component.clone()),
            ("dynamo_endpoint", names.endpoint.clone()),
            ("model", model.clone()),
            ("model_name", model.clone()),
        ];
        let m = [("model", model.clone())];
        gauge!(FRONTEND_ACTIVE_REQUESTS.name, &m).increment(1.0);
        gauge!(FRONTEND_INFLIGHT_REQUESTS.name, &m).increment(1.0);
        gauge!(FRONTEND_QUEUED_REQUESTS.name, &m).increment(1.0);
        counter!(COMPONENT_REQUESTS.name, &component).increment(1);
        gauge!(COMPONENT_INFLIGHT_REQUESTS.name, &component).increment(1.0);
        counter!(COMPONENT_REQUEST_BYTES.name, &component).increment(request_bytes as u64);
        RequestRecord {
            model,
            route,
            streaming,
            component,
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

    fn model_label(&self) -> [(&'static str, String); 1] {
        [("model", self.model.clone())]
    }

    /// The prompt's length, observed as the input sequence at the first token.
    pub fn set_input_tokens(&mut self, n: usize) {
        self.input_tokens = n;
    }

    pub fn set_cached_tokens(&mut self, n: usize) {
        self.cached_tokens = n;
    }

    /// `n` new output tokens arrived together: the first one is the time to first token;
    /// later arrivals give an inter-token latency of (time since the last arrival) / `n`,
    /// observed `n` times, as Dynamo's response collector does.
    pub fn tokens(&mut self, n: usize) {
        let now = Instant::now();
        let m = self.model_label();
        if !self.first_token {
            self.first_token = true;
            histogram!(FRONTEND_TIME_TO_FIRST_TOKEN.name, &m)
                .record(now.duration_since(self.start).as_secs_f64());
            histogram!(FRONTEND_INPUT_SEQUENCE_TOKENS.name, &m).record(self.input_tokens as f64);
            gauge!(FRONTEND_QUEUED_REQUESTS.name, &m).decrement(1.0);
        } else if let Some(last) = self.last_token_at {
            let itl = now.duration_since(last).as_secs_f64() / n as f64;
            let h = histogram!(FRONTEND_INTER_TOKEN_LATENCY.name, &m);
            for _ in 0..n {
                h.record(itl);
            }
        }
        self.last_token_at = Some(now);
        self.output_tokens += n as u64;
        counter!(FRONTEND_OUTPUT_TOKENS.name, &m).increment(n as u64);
    }

    /// Bytes of the response sent to the client.
    pub fn sent(&mut self, bytes: usize) {
        self.response_bytes += bytes as u64;
    }

    pub fn succeed(&mut self) {
        self.outcome.get_or_insert("");
    }

    pub fn fail(&mut self, err: &ApiError) {
        self.outcome.get_or_insert(error_type(err));
    }

    /// The engine failed while running the request.
    pub fn fail_in_backend(&mut self) {
        if self.outcome.is_none() {
            self.outcome = Some("backend_error");
            counter!(
                COMPONENT_ERRORS.name,
                &[
                    self.component[0].clone(),
                    self.component[1].clone(),
                    self.component[2].clone(),
                    self.component[3].clone(),
                    self.component[4].clone(),
                    ("error_type", "generate".to_owned()),
                ]
            )
            .increment(1);
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let m = self.model_label();
        // No outcome: the response was dropped before it ended, i.e. the client went away.
        let error_type = match self.outcome {
            Some(e) => e,
            None => {
                gauge!(FRONTEND_DISCONNECTED_CLIENTS.name).increment(1.0);
                "cancelled"
            }
        };
        let status = if error_type.is_empty() {
            "success"
        } else {
            "error"
        };
        counter!(
            FRONTEND_REQUESTS.name,
            "model" => self.model.clone(),
            "endpoint" => self.route.label(),
            "request_type" => if self.streaming { "stream" } else { "unary" },
            "status" => status,
            "error_type" => error_type,
        )
        .increment(1);
        let elapsed = self.start.elapsed().as_secs_f64();
        histogram!(FRONTEND_REQUEST_DURATION.name, &m).record(elapsed);
        if self.output_tokens > 0 {
            histogram!(FRONTEND_OUTPUT_SEQUENCE_TOKENS.name, &m).record(self.output_tokens as f64);
        }
        if self.first_token {
            histogram!(FRONTEND_CACHED_TOKENS.name, &m).record(self.cached_tokens as f64);
        } else {
            gauge!(FRONTEND_QUEUED_REQUESTS.name, &m).decrement(1.0);
        }
        gauge!(FRONTEND_ACTIVE_REQUESTS.name, &m).decrement(1.0);
        gauge!(FRONTEND_INFLIGHT_REQUESTS.name, &m).decrement(1.0);
        let c = &self.component;
        histogram!(COMPONENT_REQUEST_DURATION.name, c).record(elapsed);
        gauge!(COMPONENT_INFLIGHT_REQUESTS.name, c).decrement(1.0);
        counter!(COMPONENT_RESPONSE_BYTES.name, c).increment(self.response_bytes);
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
