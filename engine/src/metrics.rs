//! Recording the engine's `vllm:` series at the moments vLLM records them.
//!
//! Recording the engine's vllm: series at the moments vLLM records them: per step (scheduler
//! state, KV usage, iteration tokens, generation tokens, preemptions, prefix-cache lookups), per
//! token (TTFT, inter-token latency), at prefill completion (prompt tokens by source) and at
//! finish (request histograms, with the request id as exemplar).
//!
//! Handles are created once, for this engine's `model_name` and `engine` labels; names come
//! from the catalog.

use std::time::Instant;

use exporter::catalog::structured;
use exporter::catalog::vllm as cat;
use exporter::with_request;
use metrics::{Counter, Gauge, Histogram};

use crate::scheduler::{FinishReason, FirstToken, Request, StepStats};

/// The engine's `vllm:` series, with handles resolved once.
pub struct EngineMetrics {
    running: Gauge,
    waiting: Gauge,
    waiting_capacity: Gauge,
    kv_usage: Gauge,
    prefix_queries: Counter,
    prefix_hits: Counter,
    preemptions: Counter,
    prompt_tokens: Counter,
    prompt_local_compute: Counter,
    prompt_local_cache_hit: Counter,
    prompt_cached: Counter,
    prompt_cached_device: Counter,
    generation_tokens: Counter,
    success: Vec<(FinishReason, Counter)>,
    iteration_tokens: Histogram,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue: Histogram,
    inference: Histogram,
    prefill: Histogram,
    decode: Histogram,
    tpot: Histogram,
    request_prompt_tokens: Histogram,
    request_generation_tokens: Histogram,
    /// `request_max_num_generation_tokens`: the longest choice of a client request.
    request_max_tokens: Histogram,
    params_max_tokens: Histogram,
    params_n: Histogram,
    request_preemptions: Histogram,
    prefill_kv_computed: Histogram,
    device_busy: Histogram,
    device_gap: Histogram,
    /// Finished constrained requests, by kind of constraint.
    structured: Vec<(&'static str, Counter)>,
    /// Constrained requests ended by their constraint's failure, by kind.
    structured_failed: Vec<(&'static str, Counter)>,
    mask_seconds: Histogram,
    /// Requests aborted because their client stopped reading (`vigil_slow_client_aborts`).
    slow_client_aborts: Counter,
}

impl EngineMetrics {
    /// Handles for one engine; call after the exporter is installed.
    pub fn new(model_name: &str, engine: &str) -> EngineMetrics {
        let m = model_name.to_owned();
        let e = engine.to_owned();
        let labels = || [("model_name", m.clone()), ("engine", e.clone())];
        let counter = |name: &'static str| metrics::counter!(name, &labels());
        let gauge = |name: &'static str| metrics::gauge!(name, &labels());
        let histogram = |name: &'static str| metrics::histogram!(name, &labels());
        let with = |name: &'static str, key: &'static str, value: &'static str| {
            metrics::counter!(
                name,
                &[
                    ("model_name", m.clone()),
                    ("engine", e.clone()),
                    (key, value.to_owned())
                ]
            )
        };
        EngineMetrics {
            running: gauge(cat::NUM_REQUESTS_RUNNING.name),
            waiting: gauge(cat::NUM_REQUESTS_WAITING.name),
            waiting_capacity: metrics::gauge!(
                cat::NUM_REQUESTS_WAITING_BY_REASON.name,
                &[
                    ("model_name", m.clone()),
                    ("engine", e.clone()),
                    ("reason", "capacity".to_owned())
                ]
            ),
            kv_usage: gauge(cat::KV_CACHE_USAGE_PERC.name),
            prefix_queries: counter(cat::PREFIX_CACHE_QUERIES.name),
            prefix_hits: counter(cat::PREFIX_CACHE_HITS.name),
            preemptions: counter(cat::NUM_PREEMPTIONS.name),
            prompt_tokens: counter(cat::PROMPT_TOKENS.name),
            prompt_local_compute: with(
                cat::PROMPT_TOKENS_BY_SOURCE.name,
                "source",
                "local_compute",
            ),
            prompt_local_cache_hit: with(
                cat::PROMPT_TOKENS_BY_SOURCE.name,
                "source",
                "local_cache_hit",
            ),
            prompt_cached: counter(cat::PROMPT_TOKENS_CACHED.name),
            prompt_cached_device: with(
                cat::PROMPT_TOKENS_CACHED_BY_SOURCE.name,
                "source",
                "device",
            ),
            generation_tokens: counter(cat::GENERATION_TOKENS.name),
            success: [
                FinishReason::Stop,
                FinishReason::Length,
                FinishReason::Abort,
                FinishReason::Error,
            ]
            .into_iter()
            .map(|r| {
                (
                    r,
                    with(cat::REQUEST_SUCCESS.name, "finished_reason", r.as_str()),
                )
            })
            .collect(),
            iteration_tokens: histogram(cat::ITERATION_TOKENS.name),
            ttft: histogram(cat::TIME_TO_FIRST_TOKEN_SECONDS.name),
            itl: histogram(cat::INTER_TOKEN_LATENCY_SECONDS.name),
            e2e: histogram(cat::E2E_REQUEST_LATENCY_SECONDS.name),
            queue: histogram(cat::REQUEST_QUEUE_TIME_SECONDS.name),
            inference: histogram(cat::REQUEST_INFERENCE_TIME_SECONDS.name),
            prefill: histogram(cat::REQUEST_PREFILL_TIME_SECONDS.name),
            decode: histogram(cat::REQUEST_DECODE_TIME_SECONDS.name),
            tpot: histogram(cat::REQUEST_TIME_PER_OUTPUT_TOKEN_SECONDS.name),
            request_prompt_tokens: histogram(cat::REQUEST_PROMPT_TOKENS.name),
            request_generation_tokens: histogram(cat::REQUEST_GENERATION_TOKENS.name),
            request_max_tokens: histogram(cat::REQUEST_MAX_NUM_GENERATION_TOKENS.name),
            params_max_tokens: histogram(cat::REQUEST_PARAMS_MAX_TOKENS.name),
            params_n: histogram(cat::REQUEST_PARAMS_N.name),
            request_preemptions: histogram(cat::REQUEST_NUM_PREEMPTIONS.name),
            prefill_kv_computed: histogram(cat::REQUEST_PREFILL_KV_COMPUTED_TOKENS.name),
            device_busy: histogram(exporter::catalog::device::STEP_BUSY.name),
            device_gap: histogram(exporter::catalog::device::STEP_GAP.name),
            structured: structured::KINDS
                .iter()
                .map(|kind| (*kind, with(structured::REQUESTS.name, "kind", kind)))
                .collect(),
            structured_failed: structured::KINDS
                .iter()
                .map(|kind| (*kind, with(structured::FAILED.name, "kind", kind)))
                .collect(),
            mask_seconds: histogram(structured::MASK_SECONDS.name),
            slow_client_aborts: metrics::counter!(
                exporter::catalog::service::SLOW_CLIENT_ABORTS.name
            ),
        }
    }

    /// Scheduler state: after every step, and when the engine goes idle.
    pub fn record_state(&self, running: usize, waiting: usize, kv_usage: f64) {
        self.running.set(running as f64);
        self.waiting.set(waiting as f64);
        self.waiting_capacity.set(waiting as f64);
        self.kv_usage.set(kv_usage);
    }

    /// After every step: the step's counters.
    pub fn record_step(&self, stats: &StepStats) {
        self.prefix_queries.increment(stats.prefix_queries as u64);
        self.prefix_hits.increment(stats.prefix_hits as u64);
        self.preemptions.increment(stats.num_preempted as u64);
        self.generation_tokens.increment(stats.num_generated as u64);
        // vLLM observes a step only when it produced output (`IterationStats` exists only for
        // steps with outputs): a step of prefill chunks alone is not an iteration here.
        if stats.num_generated > 0 {
            self.iteration_tokens.record(stats.iteration_tokens as f64);
        }
    }

    /// A request was aborted because its client stopped reading its events.
    pub fn record_slow_client_abort(&self) {
        self.slow_client_aborts.increment(1);
    }

    /// After a step with constrained requests: the time their token masks took.
    pub fn record_mask_time(&self, seconds: f64) {
        self.mask_seconds.record(seconds);
    }

    /// After a step on a device backend: its GPU busy time and the gap before it.
    pub fn record_device_step(&self, timing: backend::StepTiming) {
        self.device_busy.record(timing.busy.as_secs_f64());
        if let Some(gap) = timing.gap {
            self.device_gap.record(gap.as_secs_f64());
        }
    }

    /// The last choice of a client request (one prompt of it) finished: its `n`, and the most
    /// tokens one of its choices generated (vLLM's `ParentRequest.observe_finished_request`,
    /// which observes these once per client request, `n = 1` included).
    pub fn record_parent_finished(&self, n: usize, max_generated: usize) {
        self.params_n.record(n as f64);
        self.request_max_tokens.record(max_generated as f64);
    }

    /// A request's first token: TTFT, and its prompt tokens by source.
    pub fn record_first_token(&self, id: &str, trace_id: Option<&str>, first: &FirstToken) {
        with_request(id, trace_id, || self.ttft.record(first.ttft.as_secs_f64()));
        let cached = first.cached_tokens as u64;
        let prompt = first.prompt_tokens as u64;
        self.prompt_tokens.increment(prompt);
        self.prompt_local_compute
            .increment(prompt - cached.min(prompt));
        self.prompt_local_cache_hit.increment(cached);
        self.prompt_cached.increment(cached);
        self.prompt_cached_device.increment(cached);
    }

    /// A later token: the time since the previous one.
    pub fn record_inter_token(&self, id: &str, trace_id: Option<&str>, seconds: f64) {
        with_request(id, trace_id, || self.itl.record(seconds));
    }

    /// A finished engine request (any reason, aborts included): vLLM's
    /// `PrometheusStatLogger.record` over `finished_requests`. `request_params_max_tokens` is
    /// the request's `max_tokens` as it ran (vLLM's `sampling_params.max_tokens`: what the
    /// client gave, capped by the context left, or that room when it gave none).
    pub fn record_finished(&self, req: &Request, reason: FinishReason) {
        if let Some((_, c)) = self.success.iter().find(|(r, _)| *r == reason) {
            c.increment(1);
        }
        if let Some(constraint) = &req.params.structured {
            let of_kind = |counters: &[(&'static str, Counter)]| {
                counters
                    .iter()
                    .find(|(k, _)| *k == constraint.kind())
                    .map(|(_, c)| c.clone())
            };
            if let Some(c) = of_kind(&self.structured) {
                c.increment(1);
            }
            if let Some(crate::scheduler::RequestError::ConstraintFailed(_)) = req.error {
                if let Some(c) = of_kind(&self.structured_failed) {
                    c.increment(1);
                }
            }
        }
        let now = Instant::now();
        let t = &req.times;
        let secs = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) if b >= a => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let generated = req.num_output_tokens();
        with_request(&req.id, req.trace_id.as_deref(), || {
            self.e2e.record((now - t.arrival).as_secs_f64());
            self.queue.record(secs(Some(t.queued), t.first_scheduled));
            self.prefill.record(secs(t.first_scheduled, t.first_token));
            self.decode.record(secs(t.first_token, t.last_token));
            self.inference.record(secs(t.first_scheduled, t.last_token));
            let decode = secs(t.first_token, t.last_token);
            self.tpot.record(if generated > 1 {
                decode / (generated - 1) as f64
            } else {
                0.0
            });
            self.request_prompt_tokens.record(req.prompt_len as f64);
            self.request_generation_tokens.record(generated as f64);
            self.params_max_tokens.record(req.max_tokens as f64);
            self.request_preemptions.record(req.num_preemptions as f64);
            let cached = req.num_cached_tokens.unwrap_or(0);
            self.prefill_kv_computed
                .record(req.prompt_len.saturating_sub(cached) as f64);
        });
    }
}
